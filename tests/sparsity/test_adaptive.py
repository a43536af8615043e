"""The adaptive rule of Section 3: probabilities, limits, counts, new-weight initialisation, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from topo.errors import ConfigError
from topo.sparsity import Adaptive, AdaptiveConfig, adapt_layer, grow_probability, prune_probability
from topo.sparsity.adaptive import grow_exponent, prune_exponent

from ..conftest import DEVICES, mlp
from .test_common import train


def test_prune_probability_is_half_at_k_times_mean():
    cfg = AdaptiveConfig(density=0.3, k=0.25, g=7.0, s=3.0)
    mean = 0.8
    p = prune_probability(torch.tensor([0.25 * mean]), mean, 0.3, cfg)
    assert p.item() == pytest.approx(0.5)


def test_prune_probability_hand_worked():
    # g=2, k=0.5, W̄=1, a-α=0.1, s=1: x = |w|/0.5 - 1 - 0.1; |w|=1 → x=0.9 → P = 1/(1+e^1.8)
    cfg = AdaptiveConfig(density=0.2, k=0.5, g=2.0, s=1.0)
    p = prune_probability(torch.tensor([1.0]), 1.0, 0.3, cfg)
    assert p.item() == pytest.approx(1 / (1 + math.exp(1.8)), rel=1e-6)


def test_prune_probability_falls_with_magnitude_and_rises_with_excess_density():
    cfg = AdaptiveConfig(density=0.3, k=0.5, g=4.0, s=5.0)
    w = torch.linspace(0.01, 2, 50)
    p = prune_probability(w, 1.0, 0.3, cfg)
    assert torch.all(p[1:] < p[:-1])
    assert torch.all(prune_probability(w, 1.0, 0.5, cfg) > p)


def test_g_infinite_is_a_step_function():
    cfg = AdaptiveConfig(density=0.3, k=0.5, g=math.inf)
    w = torch.tensor([0.1, 0.49, 0.5, 0.51, 2.0])
    assert prune_probability(w, 1.0, 0.3, cfg).tolist() == [1.0, 1.0, 0.5, 0.0, 0.0]
    sharp = AdaptiveConfig(density=0.3, k=0.5, g=1e4)
    assert torch.allclose(prune_probability(w[[0, 1, 3, 4]], 1.0, 0.3, sharp), torch.tensor([1.0, 1.0, 0.0, 0.0]))


def test_grow_probability_is_half_at_l_times_mean_gradient():
    cfg = AdaptiveConfig(density=0.3, l=2.0, g=3.0, s=10.0)
    p = grow_probability(torch.tensor([2.0 * 0.7]), 0.7, 0.3, cfg)
    assert p.item() == pytest.approx(0.5)


def test_grow_probability_rises_with_gradient_and_falls_with_excess_density():
    cfg = AdaptiveConfig(density=0.3, l=1.0, g=3.0, s=2.0)
    grad = torch.linspace(0.05, 5, 40)
    p = grow_probability(grad, 1.0, 0.3, cfg)
    assert torch.all(p[1:] > p[:-1])
    assert torch.all(grow_probability(grad, 1.0, 0.6, cfg) < p)


def test_zero_gradient_never_grows():
    cfg = AdaptiveConfig(density=0.3, g=3.0, s=2.0)
    assert grow_probability(torch.zeros(3), 1.0, 0.1, cfg).tolist() == [0.0, 0.0, 0.0]
    assert torch.isinf(grow_exponent(torch.zeros(1), 1.0, 0.3, cfg)).all()


def test_deterministic_thresholds_prune_exactly_below_k_mean():
    torch.manual_seed(0)
    weight = torch.randn(40, 30)
    mask = torch.rand(40, 30) < 0.4
    weight *= mask
    grad = torch.randn(40, 30)
    cfg = AdaptiveConfig(density=0.4, k=0.5)
    mean = weight.abs()[mask].mean()
    dropped = mask & (weight.abs() < 0.5 * mean)
    # growth reads every inactive weight after pruning, the dropped ones included: the largest |∇J| first
    inactive_after_prune = ~(mask & ~dropped)
    order = torch.where(inactive_after_prune, grad.abs(), -1.0).flatten().sort(descending=True).indices
    regrown = torch.zeros(1200, dtype=torch.bool)
    regrown[order[: int(dropped.sum())]] = True
    regrown = regrown.view(40, 30)
    kept_anyway = dropped & regrown
    assert kept_anyway.any()  # the case the convention is about
    before = weight.clone()
    after_mask = mask.clone()
    pruned, grown = adapt_layer(weight, after_mask, grad, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(pruned, dropped & ~regrown) and torch.equal(grown, regrown & ~dropped)
    assert torch.equal(after_mask, (mask & ~dropped) | regrown)
    assert torch.equal(weight[kept_anyway], before[kept_anyway])  # dropped and regrown: keeps its weight
    assert grown.sum() == pruned.sum()


@pytest.mark.parametrize("g", [math.inf, 5.0])
def test_s_infinite_keeps_every_layer_count(g):
    torch.manual_seed(1)
    model = mlp((48, 24))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp = Adaptive(model, opt, density=0.2, k=0.5, g=g, every=1, unit="step", seed=3)
    before = sp.counts()
    changed = 0
    for _ in range(6):
        loss = model(torch.randn(32, 64)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()
        assert sp.counts() == before
        changed += sum(p for p, _ in sp.pop_changes().values())
    assert changed > 0


def test_finite_s_moves_density_towards_target():
    torch.manual_seed(2)
    weight = torch.randn(100, 100)
    mask = torch.rand(100, 100) < 0.6
    weight *= mask
    grad = torch.randn(100, 100)
    cfg = AdaptiveConfig(density=0.3, k=0.5, g=10.0, s=2.0, l=2.0)
    adapt_layer(weight, mask, grad, cfg, torch.Generator().manual_seed(0))
    assert mask.float().mean() < 0.55
    low = torch.rand(100, 100) < 0.1
    adapt_layer(torch.randn(100, 100) * low, low, grad, cfg, torch.Generator().manual_seed(0))
    assert low.float().mean() > 0.12


def test_finite_g_prunes_half_at_threshold():
    weight = torch.full((200, 200), 0.3)
    mask = torch.ones(200, 200, dtype=torch.bool)
    cfg = AdaptiveConfig(density=1.0, k=1.0, g=2.0, s=0.0, l=1e9)
    pruned, grown = adapt_layer(weight, mask, torch.zeros(200, 200), cfg, torch.Generator().manual_seed(5))
    assert pruned.float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert grown.sum() == 0


def test_new_weights_lie_within_radius_plus_gradient_term():
    torch.manual_seed(3)
    weight = torch.randn(60, 60)
    mask = torch.rand(60, 60) < 0.3
    weight *= mask
    grad = torch.randn(60, 60)
    cfg = AdaptiveConfig(density=0.3, k=0.5, r=0.05, cg=0.7)
    pruned, grown = adapt_layer(weight, mask, grad, cfg, torch.Generator().manual_seed(1))
    assert grown.any()
    noise = weight[grown] - 0.7 * grad[grown]
    assert noise.abs().max() <= 0.05 + 1e-6
    assert noise.std() > 0.01


def test_default_radius_is_two_k_mean_magnitude():
    torch.manual_seed(4)
    weight = torch.randn(80, 80)
    mask = torch.rand(80, 80) < 0.3
    weight *= mask
    k = 0.25
    mean = weight.abs()[mask].mean().item()
    cfg = AdaptiveConfig(density=0.3, k=k)
    _, grown = adapt_layer(weight, mask, torch.randn(80, 80), cfg, torch.Generator().manual_seed(1))
    assert weight[grown].abs().max().item() <= 2 * k * mean + 1e-6
    assert weight[grown].abs().max().item() > 1.5 * k * mean


def test_sampling_fraction_beta1_limits_pruning():
    torch.manual_seed(5)
    weight = torch.rand(100, 100) * 0.01
    weight[:, :50] = 1.0
    mask = torch.ones(100, 100, dtype=torch.bool)
    mask[:, 90:] = False
    weight *= mask
    grad = torch.zeros(100, 100)
    grad[:, 90:] = 1.0 + torch.rand(100, 10)  # growth prefers these to any just-pruned weight
    cfg = AdaptiveConfig(density=0.9, k=0.5, beta1=0.2)
    pruned, _ = adapt_layer(weight, mask, grad, cfg, torch.Generator().manual_seed(0))
    assert pruned[:, 50:90].float().mean().item() == pytest.approx(0.2, abs=0.03)
    assert not pruned[:, :50].any()


def test_epoch_schedule_adapts_at_first_step_after_every_nth_epoch():
    torch.manual_seed(6)
    model = mlp((32,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp = Adaptive(model, opt, density=0.3, every=2, unit="epoch")
    changes = []
    for epoch in range(4):
        for _ in range(3):
            loss = model(torch.randn(8, 64)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sp.step()
        changes.append(sum(p for p, _ in sp.pop_changes().values()))
        sp.end_epoch(epoch)
    assert changes[0] == 0 and changes[1] == 0 and changes[2] > 0 and changes[3] == 0


def test_same_seed_same_masks_and_different_seed_differs():
    def run(seed, global_seed=0):
        torch.manual_seed(0)
        model = mlp((32,))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sp = Adaptive(model, opt, density=0.3, every=2, unit="step", seed=seed, g=4.0, s=1.0, beta0=0.5,
                      beta1=0.5)
        torch.manual_seed(global_seed)  # every draw comes from the sparsifier's own generator, not this one
        data = torch.Generator().manual_seed(1)
        for _ in range(6):
            loss = model(torch.randn(8, 64, generator=data)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sp.step()
        return {n: m.clone() for n, m in sp.masks.items()}

    a, b, c = run(7), run(7, global_seed=1), run(8)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


@pytest.mark.parametrize(
    "bad",
    [dict(density=0.0), dict(density=1.5), dict(density=0.3, k=0), dict(density=0.3, g=-1), dict(density=0.3, s=-1),
     dict(density=0.3, beta1=0), dict(density=0.3, beta0=2), dict(density=0.3, every=0),
     dict(density=0.3, unit="hour"), dict(density=0.3, r=-1.0)],
)
def test_bad_hyperparameters_name_the_culprit(bad):
    name = [k for k in bad if k != "density"] or ["density"]
    with pytest.raises(ConfigError, match=name[0]):
        Adaptive(mlp(), density=bad.pop("density"), **bad)


def test_unknown_hyperparameter_is_rejected():
    with pytest.raises(ConfigError, match="gamma"):
        Adaptive(mlp(), density=0.3, gamma=2)


def test_prune_exponent_formula():
    cfg = AdaptiveConfig(density=0.25, k=2.0, s=4.0, g=1.0)
    x = prune_exponent(torch.tensor([3.0]), 0.5, 0.5, cfg)
    assert x.item() == pytest.approx(3.0 / 1.0 - 1 - 4.0 * 0.25)


@pytest.mark.parametrize("device", DEVICES)
def test_the_fused_pass_gives_the_per_layer_masks_and_weights(device):
    from topo.sparsity.adaptive import adapt_layers_fused

    generator = torch.Generator().manual_seed(0)
    shapes = [(64, 48), (48, 48), (10, 48), (4 * 16, 16)]
    weights = [torch.randn(s, generator=generator).to(device) for s in shapes]
    masks = [(torch.rand(s, generator=generator) < 0.3).to(device) for s in shapes]
    grads = [torch.randn(s, generator=generator).to(device) for s in shapes]
    grads[2][:, :10] = 0.0  # ties: many zero gradients, broken alike (the lower position first)
    weights = [w * m for w, m in zip(weights, masks, strict=True)]
    configs = [AdaptiveConfig(density=0.3, k=k) for k in (0.5, 0.25, 0.75, 0.5)]
    configs[3] = AdaptiveConfig(density=0.3, k=0.5, r=0.01, cg=0.5)
    one = [(w.clone(), m.clone()) for w, m in zip(weights, masks, strict=True)]
    two = [(w.clone(), m.clone()) for w, m in zip(weights, masks, strict=True)]
    per_layer = [adapt_layer(w, m, g, cfg, torch.Generator(device=device).manual_seed(7))
                 for (w, m), g, cfg in zip(one, grads, configs, strict=True)]
    fused = adapt_layers_fused([w for w, _ in two], [m for _, m in two], grads, configs,
                               torch.Generator(device=device).manual_seed(7))
    for (_, m1), (_, m2), (p1, g1), (p2, g2) in zip(one, two, per_layer, fused, strict=True):
        assert torch.equal(m1, m2) and torch.equal(p1, p2) and torch.equal(g1, g2)
        assert p1.any() and g1.any()
    # the noise of new weights comes from one generator in layer order: the per-layer pass with one generator
    sequential = [(w.clone(), m.clone()) for w, m in zip(weights, masks, strict=True)]
    shared = torch.Generator(device=device).manual_seed(3)
    for (w, m), g, cfg in zip(sequential, grads, configs, strict=True):
        adapt_layer(w, m, g, cfg, shared)
    three = [(w.clone(), m.clone()) for w, m in zip(weights, masks, strict=True)]
    adapt_layers_fused([w for w, _ in three], [m for _, m in three], grads, configs,
                       torch.Generator(device=device).manual_seed(3))
    for (w1, _), (w2, _) in zip(sequential, three, strict=True):
        assert torch.allclose(w1, w2, rtol=0, atol=1e-7)


def test_adaptive_uses_the_fused_pass_for_the_presets_only(monkeypatch):
    import topo.sparsity.adaptive as adaptive

    calls = []
    real = adaptive.adapt_layers_fused
    monkeypatch.setattr(adaptive, "adapt_layers_fused", lambda *a: calls.append(1) or real(*a))
    for options, fused in (({}, True), ({"g": 5.0}, False), ({"beta0": 0.5}, False)):
        torch.manual_seed(0)
        model = mlp((32,))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        sp = Adaptive(model, optimizer, density=0.3, every=1, unit="step", seed=0, **options)
        calls.clear()
        model(torch.randn(8, 64)).sum().backward()
        optimizer.step()
        sp.step()
        assert bool(calls) == fused, options


def test_an_adaptation_pending_at_a_checkpoint_is_pending_after_resuming():
    sp = Adaptive(mlp((16,)), density=0.3, seed=0, unit="epoch", every=1)
    sp.end_epoch(0)
    assert sp.adaptation_due
    resumed = Adaptive(mlp((16,)), density=0.3, seed=1, unit="epoch", every=1)
    assert not resumed.adaptation_due
    resumed.load_state_dict(sp.state_dict())
    assert resumed.adaptation_due


@pytest.mark.parametrize("fused", [False, True])
def test_in_the_g_limit_a_weight_exactly_at_the_threshold_stays(fused):
    from topo.sparsity.adaptive import adapt_layers_fused

    cfg = AdaptiveConfig(density=0.5, k=1.0, g=math.inf, s=math.inf)
    mask = torch.arange(16).view(4, 4) < 8
    weight = torch.where(mask, 0.5, 0.0)  # |w| = k·W̄ exactly: x = 0, not below it
    grad = (~mask).float()  # a weight pruned here would be replaced by an inactive one, not grown back
    generator = torch.Generator().manual_seed(0)
    if fused:
        [(pruned, grown)] = adapt_layers_fused([weight], [mask], [grad], [cfg], generator)
    else:
        pruned, grown = adapt_layer(weight, mask, grad, cfg, generator)
    assert not pruned.any() and not grown.any()


@pytest.mark.parametrize("fused", [False, True])
def test_in_the_s_limit_equal_gradients_regrow_the_lowest_positions_first(fused):
    from topo.sparsity.adaptive import adapt_layers_fused

    cfg = AdaptiveConfig(density=0.5, k=1.0, g=math.inf, s=math.inf)
    mask = torch.arange(256).view(16, 16) < 128
    weight = torch.where(mask, 1.0, 0.0)
    weight.view(-1)[:10] = 0.01  # the ten weights below k·W̄, at the lowest positions
    generator = torch.Generator().manual_seed(0)
    # zero gradients tie every inactive weight: the lowest positions, the ten just pruned, are grown back first
    if fused:
        [(pruned, grown)] = adapt_layers_fused([weight], [mask.clone()], [torch.zeros(16, 16)], [cfg], generator)
    else:
        pruned, grown = adapt_layer(weight, mask.clone(), torch.zeros(16, 16), cfg, generator)
    assert not pruned.any() and not grown.any()


def test_masked_means_divide_by_the_count_of_selected_values():
    from topo.sparsity.adaptive import _masked_mean

    values = torch.tensor([3.0, 5.0, 7.0])
    assert _masked_mean(values, torch.tensor([True, False, False])) == 3.0
    assert _masked_mean(values, torch.tensor([True, False, True])) == 5.0
    assert _masked_mean(values, torch.zeros(3, dtype=torch.bool)) == 0.0


def test_a_zero_gradient_never_grows_even_when_every_gradient_is_zero():
    cfg = AdaptiveConfig(density=0.3, k=0.5, g=4.0, s=1.0)
    assert grow_probability(torch.zeros(3), 0.0, 0.3, cfg).tolist() == [0.0, 0.0, 0.0]


def test_layer_options_and_each_layers_own_density_reach_the_rule():
    torch.manual_seed(0)
    model = mlp((64, 64))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = Adaptive(model, optimizer, density=0.2, distribution="erk", params=["0.weight", "4.weight"], s=5.0,
                  g=math.inf, every=1, unit="step", seed=0)
    assert sp.sparse_layers == ["0.weight", "4.weight"]
    assert sp.layer_density["4.weight"] > sp.layer_density["0.weight"] + 0.3  # ERK: 0.54 and 0.15
    train(model, optimizer, sp, 10, data_seed=1)
    # the bias s(a − α) of each layer pulls towards its own α: the layer of the larger α stays the denser
    assert sp.masks["4.weight"].float().mean() > sp.masks["0.weight"].float().mean() + 0.1


def test_an_unknown_hyperparameter_error_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown adaptive hyperparameter\(s\) \['gamma'\]; valid: \['beta0'"):
        Adaptive(mlp(), density=0.3, gamma=1.0)
