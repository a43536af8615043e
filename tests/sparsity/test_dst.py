"""SET, RigL and SNIP on hand-made tensors; per-layer density distributions; their bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from topo.errors import ConfigError
from topo.sparsity import SET, SNIP, RigL, active_count, layer_densities, make_sparsifier, select_parameters

from ..conftest import mlp


def one_layer(rows: int = 40, cols: int = 50) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(cols, rows, bias=False))


def hand_layer(values: list[float], inactive: int) -> nn.Module:
    """One 1×n Linear layer whose first len(values) weights are ``values`` and the last ``inactive`` are zero."""
    model = nn.Sequential(nn.Linear(len(values) + inactive, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([values + [0.0] * inactive]))
    return model


def with_mask(sp, mask: torch.Tensor, values: list[float]):
    """``sp`` with its one layer's weights set to ``values`` (zeros beyond) and its mask to ``mask``."""
    with torch.no_grad():
        weight = sp.weights["0.weight"]
        weight.zero_()
        weight[0, : len(values)] = torch.tensor(values)
    sp.masked.set_mask("0.weight", mask.view(1, -1))
    sp.pop_changes()
    return sp


# ζ = 0.3 of these 12 active weights, by the SET authors' thresholds worked by hand: the value nearest zero is 0.01
# at sorted position 5 (f = 5, z = 6); the negative threshold is v[⌊0.7·5⌋] = v[3] = −0.2 and the positive one
# v[⌊6 + 0.3·6⌋] = v[7] = 0.2. Dropped: −0.2, −0.05 (2 of the 5 negatives) and 0.01, 0.1, 0.2 (3 of 7 positives).
SET_VALUES = [-0.9, 0.6, -0.5, 0.2, -0.3, 0.01, -0.2, 0.1, -0.05, 0.4, 0.8, 1.0]
SET_DROPPED_PER_SIGN = {3, 5, 6, 7, 8}
SET_DROPPED_MAGNITUDE = {5, 8, 7}  # ⌊0.3·12⌋ = 3 smallest |w| (google-research/rigl's SET truncates)


@pytest.mark.parametrize("drop,expected", [("per-sign", SET_DROPPED_PER_SIGN), ("magnitude", SET_DROPPED_MAGNITUDE)])
def test_set_drops_by_the_authors_thresholds_or_by_magnitude(drop, expected):
    model = hand_layer(SET_VALUES, inactive=30)
    sp = with_mask(SET(model, density=0.5, zeta=0.3, drop=drop, seed=0), torch.arange(42) < 12, SET_VALUES)
    before = model[0].weight.detach().clone().flatten()
    chosen = sp.dropped(model[0].weight, sp.masks["0.weight"]).flatten()
    assert set(torch.nonzero(chosen).flatten().tolist()) == expected
    sp.adapt()
    mask = sp.masks["0.weight"].flatten()
    kept = set(range(12)) - expected
    assert all(mask[i] for i in kept) and int(mask.sum()) == 12
    weight = model[0].weight.detach().flatten()
    assert torch.equal(weight[sorted(kept)], before[sorted(kept)])
    regrown_same = [i for i in expected if mask[i]]
    assert torch.equal(weight[regrown_same], before[regrown_same])  # dropped and regrown at once: kept as it was
    gone = [i for i in expected if not mask[i]]
    assert (weight[gone] == 0).all()
    new = [i for i in range(12, 42) if mask[i]]
    assert len(new) == len(expected) - len(regrown_same) and (weight[new] != 0).all()
    assert sp.pop_changes()["0.weight"] == (len(gone), len(new)) and len(gone) > 0  # connections moved


def test_set_magnitude_drop_count_is_google_research_rigls_truncation():
    from topo.sparsity.dst import set_drop_count

    # int(float32(n_ones) * drop_fraction): truncated, never rounded (sparse_learning would take ceil)
    assert [set_drop_count(n, 0.3) for n in (1, 3, 4, 12, 13, 100)] == [0, 0, 1, 3, 3, 30]
    assert set_drop_count(10, 0.7) == 7 and set_drop_count(7, 0.5) == 3
    tie = hand_layer([0.5, -0.2, 0.2, 0.9], inactive=4)  # 0.3 of 4: one weight; -0.2 and 0.2 tie: the lower goes
    sp = with_mask(SET(tie, density=0.5, zeta=0.3, drop="magnitude", seed=0), torch.arange(8) < 4,
                   [0.5, -0.2, 0.2, 0.9])
    assert torch.nonzero(sp.dropped(tie[0].weight, sp.masks["0.weight"]).flatten()).flatten().tolist() == [1]


def test_set_per_sign_rule_on_a_large_asymmetric_layer_matches_a_direct_restatement():
    torch.manual_seed(3)
    model = one_layer(100, 100)
    with torch.no_grad():
        model[0].weight.add_(0.02)  # more positive than negative weights: the two rules part ways
    sp = SET(model, density=0.3, zeta=0.3, seed=1)
    mask = sp.masks["0.weight"].clone()
    w = model[0].weight.detach().clone()
    values = np.sort(w[mask].numpy().astype(np.float64))
    first = int(np.argmin(np.abs(values)))
    after_last = len(values) - int(np.argmin(np.abs(values)[::-1]))
    low = values[int((1 - 0.3) * first)]
    high = values[int(min(len(values) - 1, after_last + 0.3 * (len(values) - after_last)))]
    keep = mask & ((w.double() < low) | (w.double() > high))
    dropped = sp.dropped(model[0].weight, mask)
    assert torch.equal(dropped, mask & ~keep)
    sp.adapt()
    assert (sp.masks["0.weight"] & keep).sum() == keep.sum()
    negatives, positives = int((mask & (w < 0)).sum()), int((mask & (w > 0)).sum())
    dropped_neg, dropped_pos = int((dropped & (w < 0)).sum()), int((dropped & (w > 0)).sum())
    assert abs(dropped_neg - 0.3 * negatives) <= 2 and abs(dropped_pos - 0.3 * positives) <= 2
    assert dropped_pos > dropped_neg  # more positive weights: more of them go


def test_set_regrown_values_follow_the_authors_normal_or_the_options():
    torch.manual_seed(0)
    for init, check in (("normal", lambda v: abs(v.std().item() - 0.1) < 0.01 and abs(v.mean().item()) < 0.01),
                        ("uniform", lambda v: v.abs().max() <= 0.05 and v.abs().max() > 0.045),
                        ("zero", lambda v: bool((v == 0).all()))):
        model = one_layer(200, 200)
        sp = SET(model, density=0.3, zeta=0.5, init=init, init_scale=0.1 if init == "normal" else 0.05, seed=0)
        before = sp.masks["0.weight"].clone()
        sp.adapt()
        new = sp.masks["0.weight"] & ~before
        assert new.sum() > 4000 and check(model[0].weight.detach()[new]), init


def test_set_reinit_when_same_gives_regrown_positions_new_values_as_the_authors_code():
    model = hand_layer(SET_VALUES, inactive=0)  # no inactive position: every dropped weight is regrown in place
    sp = SET(model, density=0.5, zeta=0.3, seed=0, reinit_when_same=True)
    sp = with_mask(sp, torch.ones(12, dtype=bool), SET_VALUES)
    before = model[0].weight.detach().clone().flatten()
    sp.adapt()
    after = model[0].weight.detach().flatten()
    changed = {i for i in range(12) if after[i] != before[i]}
    assert changed == SET_DROPPED_PER_SIGN and sp.pop_changes()["0.weight"] == (5, 5)
    model = hand_layer(SET_VALUES, inactive=0)
    sp = with_mask(SET(model, density=0.5, zeta=0.3, seed=0), torch.ones(12, dtype=bool), SET_VALUES)
    sp.adapt()
    assert torch.equal(model[0].weight.detach().flatten(), before) and sp.pop_changes()["0.weight"] == (0, 0)


def test_set_regrowth_is_uniform_over_inactive_positions():
    counts = np.zeros(10)
    expected = np.zeros(10)
    for seed in range(8):
        model = one_layer(100, 100)
        sp = SET(model, density=0.3, zeta=0.5, seed=seed)
        before = sp.masks["0.weight"].clone()
        sp.adapt()
        grown = sp.masks["0.weight"] & ~before
        counts += grown.view(10, 1000).sum(1).numpy()
        inactive = ~before
        expected += inactive.view(10, 1000).sum(1).numpy() * grown.sum().item() / inactive.sum().item()
    assert scipy.stats.chisquare(counts, expected).pvalue > 1e-3


def test_rigl_cosine_schedule():
    sp = RigL(one_layer(), density=0.3, alpha_drop=0.3, t_end=1000)
    assert sp.drop_fraction(0) == pytest.approx(0.3)
    assert sp.drop_fraction(500) == pytest.approx(0.15)
    assert sp.drop_fraction(1000) == 0.0 and sp.drop_fraction(5000) == 0.0
    assert RigL(one_layer(), density=0.3, total_steps=400).t_end == 300


def test_rigl_grows_where_the_dense_gradient_is_largest_and_resets_state():
    model = one_layer()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp = RigL(model, opt, density=0.2, alpha_drop=0.5, delta_t=1, t_end=100)
    x = torch.randn(8, 50)
    model(x).pow(2).sum().backward()
    dense_grad = model[0].weight.grad.detach().clone()
    opt.step()
    weights_after_step = model[0].weight.detach().clone()
    before = sp.masks["0.weight"].clone()
    sp.step()  # update at step t = 1: drop ⌊(0.5/2)(1 + cos(π/100)) · 400⌋ = ⌊199.95⌋ = 199, truncated
    count = 199
    assert sp.drop_count(1, 400) == count
    mask = sp.masks["0.weight"]
    order = torch.where(before, weights_after_step.abs(), math.inf).flatten().sort(stable=True).indices[:count]
    expected_drop = torch.zeros(2000, dtype=torch.bool)
    expected_drop[order] = True
    expected_drop = expected_drop.view(40, 50)
    not_kept = ~(before & ~expected_drop)
    best = torch.where(not_kept, dense_grad.abs(), -math.inf).flatten().sort(descending=True, stable=True)
    regrown = torch.zeros(2000, dtype=torch.bool)
    regrown[best.indices[:count]] = True
    regrown = regrown.view(40, 50)
    assert torch.equal(mask, (before & ~expected_drop) | regrown)
    pruned, new = expected_drop & ~regrown, regrown & ~expected_drop
    assert int(mask.sum()) == 400 and sp.pop_changes()["0.weight"] == (int(pruned.sum()), int(new.sum()))
    assert torch.count_nonzero(model[0].weight.detach()[new]) == 0
    state = opt.state[model[0].weight]
    assert torch.count_nonzero(state["exp_avg"][pruned | new]) == 0


def test_rigl_position_dropped_and_regrown_keeps_weight_and_optimizer_state():
    # active [0.1, 0.5, −0.9, 0.05] and two inactive; ⌊0.3·(1 + cos(π/1000)) · 4⌋ = 2 dropped: positions 3 and 0
    model = hand_layer([0.1, 0.5, -0.9, 0.05], inactive=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    sp = with_mask(RigL(model, opt, density=0.5, alpha_drop=0.6, delta_t=1, t_end=1000, seed=0),
                   torch.tensor([True, True, True, True, False, False]), [0.1, 0.5, -0.9, 0.05])
    model[0].weight.grad = torch.tensor([[9.0, 0.0, 0.0, 1.0, 7.0, 0.0]])  # grow 0 (just dropped) and 4
    opt.step()
    buffer = opt.state[model[0].weight]["momentum_buffer"].clone()
    sp.step()
    assert sp.masks["0.weight"].flatten().tolist() == [True, True, True, False, True, False]
    assert model[0].weight.detach().flatten().tolist() == pytest.approx([0.1, 0.5, -0.9, 0.0, 0.0, 0.0])
    state = opt.state[model[0].weight]["momentum_buffer"].flatten()
    assert state[0] == buffer.flatten()[0] != 0 and state[3] == 0 and state[4] == 0
    assert sp.pop_changes()["0.weight"] == (1, 1)  # position 0 counts as neither pruned nor grown


def test_rigl_keeps_dense_gradients_only_on_update_steps():
    model = one_layer()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = RigL(model, opt, density=0.2, delta_t=3, t_end=100)
    kept = []
    for _ in range(6):
        opt.zero_grad()
        model(torch.randn(4, 50)).sum().backward()
        dense = model[0].weight.grad.clone()
        sp.mask_grads()
        kept.append(sp._stashed is not None)
        if sp._stashed is not None:  # the unmasked gradient, inactive positions included, not the masked one
            inactive = ~sp.masks["0.weight"]
            assert torch.equal(sp._stashed["0.weight"], dense)
            assert torch.count_nonzero(sp._stashed["0.weight"][inactive]) == int(inactive.sum())
            assert torch.count_nonzero(model[0].weight.grad[inactive]) == 0
        opt.step()
        sp.step()
    assert kept == [False, False, True, False, False, True]


def test_snip_keeps_the_largest_sensitivity():
    model = nn.Sequential(nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -4.0, 0.5], [2.0, 0.1, -3.0]]))
    # loss = Σ outputs with x = (1, 2, 3): ∂loss/∂w_oi = x_i, so |g ⊙ w| = |w_oi| · x_i
    batch = (torch.tensor([[1.0, 2.0, 3.0]]), None)
    sp = SNIP(model, density=0.5, batch=batch, loss=lambda m, b: m(b[0]).sum())
    # sensitivities [[1, 8, 1.5], [2, 0.2, 9]]: the top three are 9, 8, 2
    assert sp.masks["0.weight"].tolist() == [[False, True, False], [True, False, True]]
    assert model[0].weight[0, 0] == 0 and model[0].weight[1, 2] == -3.0


def test_snip_global_and_per_layer_scopes():
    torch.manual_seed(0)
    model = mlp((32,))
    batch = (torch.randn(16, 64), torch.randint(0, 10, (16,)))
    per_layer = SNIP(model, density=0.2, batch=batch, scope="layer", distribution="erk")
    for name, mask in per_layer.masks.items():
        assert int(mask.sum()) == active_count(mask.numel(), per_layer.layer_density[name])
    model = mlp((32,))
    overall = SNIP(model, density=0.2, batch=batch)
    assert sum(int(m.sum()) for m in overall.masks.values()) == active_count(32 * 64 + 10 * 32, 0.2)
    with pytest.raises(ConfigError, match="scope='layer'"):
        SNIP(mlp((32,)), density=0.2, batch=batch, distribution="erk")


def test_snip_scoring_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.Linear(16, 3))
    model.eval()
    model[1].train()  # a mixed mode, to be kept as it is
    batch = (torch.randn(32, 8) * 5 + 3, torch.randint(0, 3, (32,)))
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    SNIP(model, density=0.3, batch=batch, seed=0)
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)


def test_erk_worked_by_hand_with_a_layer_made_dense():
    # budget 0.5 · (100 + 10,000) = 5,050; raw ERK 0.2 and 0.02: ε = 5,050 / 220 makes the small layer 4.6 > 1,
    # so it is dense and ε = (5,050 − 100) / (0.02 · 10,000) = 24.75 gives the large one 0.495
    densities = layer_densities({"small": (10, 10), "large": (100, 100)}, 0.5, "erk")
    assert densities == {"small": 1.0, "large": pytest.approx(0.495)}


@pytest.mark.parametrize("distribution", ["uniform", "er", "erk"])
def test_distributions_keep_the_uniform_budget_on_conv_and_linear_stacks(distribution):
    from topo.experiments.models import ResNet

    for model, density in ((ResNet(depth=20), 0.1), (mlp((300, 100), n_in=784), 0.05), (mlp((8,)), 0.9)):
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if p.dim() >= 2}
        densities = layer_densities(model, density, distribution)
        assert set(densities) == set(shapes) and all(0 < d <= 1 for d in densities.values())
        active = sum(round(densities[n] * math.prod(s)) for n, s in shapes.items())
        budget = density * sum(math.prod(s) for s in shapes.values())
        assert abs(active - budget) <= len(shapes)
        if distribution == "erk":
            sparse = {n: d for n, d in densities.items() if d < 1}
            raw = {n: sum(shapes[n]) / math.prod(shapes[n]) for n in sparse}
            ratios = {round(sparse[n] / raw[n], 6) for n in sparse}
            assert len(ratios) <= 1  # one ε for every layer that is not dense


def reference_erdos_renyi(shapes: dict, sparsity: float, custom: set, include_kernel: bool) -> dict:
    """google-research/rigl's ``get_sparsities_erdos_renyi`` restated from its rules (our own code): shapes in the
    reference's TensorFlow layout (kernel dims first, then in, out); whole zeros ⌊sparsity·n⌋ per layer; returns
    sparsities. With topo's one stated difference: a product within float error of a whole number is that number
    (the reference's float product floors 0.09999999999999998 · 1000 to 99, topo counts 100 zeros)."""
    dense: set = set()
    while True:
        divisor, rhs, raw = 0.0, 0, {}
        for name, shape in shapes.items():
            n = int(np.prod(shape))
            product = sparsity * n
            zeros = round(product) if abs(product - round(product)) < 1e-9 else int(np.floor(product))
            if name in dense:
                rhs -= zeros
            elif name not in custom:
                rhs += n - zeros
                raw[name] = np.sum(shape) / np.prod(shape) if include_kernel else \
                    (shape[-2] + shape[-1]) / (shape[-2] * shape[-1])
                divisor += raw[name] * n
        eps = rhs / divisor
        peak = max(raw.values())
        if peak * eps > 1:
            dense |= {name for name, p in raw.items() if p == peak}
        else:
            break
    return {name: 0.0 if name in custom or name in dense else 1.0 - eps * raw[name] for name in shapes}


def tf_layout(shape: tuple) -> tuple:
    """A torch weight shape (out, in, *kernel) in TensorFlow's layout (*kernel, in, out)."""
    return (*shape[2:], shape[1], shape[0])


@pytest.mark.parametrize("distribution", ["er", "erk"])
def test_er_and_erk_densities_equal_google_research_rigl_for_every_model_and_density(distribution):
    from topo.experiments.models import CNN, MLP, VAE, CharLSTM, ResNet

    models = [MLP((64, 64, 64)), MLP((300, 100)), VAE((256, 10, 256)), CharLSTM((512,)), CNN((32, 64, 64)),
              ResNet(depth=20), ResNet(depth=110)]
    cases = 0
    for model in models:
        shapes = {n: tuple(p.shape) for n, p in select_parameters(model).items()}
        names = list(shapes)
        for density in (0.01, 0.05, 10 ** -1.5, 0.1, 0.2, 10 ** -0.5, 0.5, 0.9):
            for ends in (set(), {names[0], names[-1]}):
                ours = layer_densities(shapes, density, distribution, dense=ends)
                theirs = reference_erdos_renyi({n: tf_layout(s) for n, s in shapes.items()}, 1.0 - density, ends,
                                               include_kernel=distribution == "erk")
                for name, shape in shapes.items():
                    n = math.prod(shape)
                    assert ours[name] == pytest.approx(1.0 - theirs[name], rel=1e-12, abs=1e-15), (name, density)
                    assert active_count(n, ours[name]) == n - math.floor(theirs[name] * n) or \
                        abs(theirs[name] * n - round(theirs[name] * n)) < 1e-9  # float ties at whole counts
                cases += 1
    assert cases == len(models) * 16


def test_every_sparse_method_leaves_its_dense_layers_dense_through_training():
    from ..sparsity.test_common import train as run_steps

    batch = (torch.randn(16, 64), torch.randint(0, 10, (16,)))
    erk = {"distribution": "erk"}
    cases = [("random-fixed", erk), ("adaptive", {**erk, "every": 1, "unit": "step"}), ("set", erk),
             ("rigl", {**erk, "delta_t": 2, "t_end": 100}), ("pruning", {**erk, "prune_after": [0, 1]}),
             ("pruning", {"prune_after": [0, 1], "scope": "global"}), ("snip", {"batch": batch}),
             ("snip", {**erk, "batch": batch, "scope": "layer"})]
    for method, kwargs in cases:
        torch.manual_seed(0)
        model = mlp((32, 32))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        sp = make_sparsifier(method, model, opt, density=0.2, dense_first_last=True, seed=0, **kwargs)
        names = sp.masked.names
        first, last, middle = names[0], names[-1], names[1:-1]
        assert sp.sparse_layers == middle
        start = sp.weights[first].detach().clone()
        for epoch in range(3):
            run_steps(model, opt, sp, 6, data_seed=epoch, epoch_every=1000)
            sp.end_epoch(epoch)
            for name in (first, last):
                assert sp.masks[name].all(), (method, name, epoch)
                assert torch.count_nonzero(sp.weights[name]) == sp.weights[name].numel(), (method, name)
        changes = sp.pop_changes()
        assert changes[first] == (0, 0) and changes[last] == (0, 0), method
        assert not torch.equal(start, sp.weights[first].detach())  # trained, not frozen
        active = sum(int(sp.masks[n].sum()) for n in middle)
        if kwargs.get("scope") == "global":
            assert active == active_count(sum(sp.masks[n].numel() for n in middle), 0.2), method
        else:
            assert active == sum(active_count(sp.masks[n].numel(), sp.layer_density[n]) for n in middle), method


def test_adaptive_never_adapts_a_dense_layer():
    torch.manual_seed(0)
    model = mlp((32, 32))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = make_sparsifier("adaptive", model, opt, density=0.2, dense_first_last=True, every=1, unit="step", seed=0)
    first = sp.masked.names[0]
    before = sp.weights[first].detach().clone()
    model(torch.randn(8, 64)).sum().backward()
    opt.step()
    stepped = sp.weights[first].detach().clone()
    sp.step()  # an adaptation: the dense first layer keeps every value the optimizer gave it
    assert torch.equal(sp.weights[first].detach(), stepped) and not torch.equal(stepped, before)


def test_global_scope_with_a_distribution_is_an_error():
    with pytest.raises(ConfigError, match="scope='layer'"):
        make_sparsifier("pruning", mlp((8,)), density=0.3, scope="global", distribution="erk")


def test_a_sparsifier_without_seed_follows_torch_manual_seed_and_records_it():
    masks, seeds = [], []
    for seed in (1, 2, 1):
        torch.manual_seed(seed)
        sp = make_sparsifier("random-fixed", mlp((32,)), density=0.2)
        masks.append(sp.masks["0.weight"].clone())
        seeds.append(sp.config()["seed"])
    assert not torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])
    assert seeds[0] != seeds[1] and seeds[0] == seeds[2] and seeds[0] != 0
    again = make_sparsifier("random-fixed", mlp((32,)), density=0.2, seed=seeds[0])
    assert torch.equal(again.masks["0.weight"], masks[0])


@pytest.mark.parametrize("make,message", [
    (lambda m: make_sparsifier("lottery", m), "valid: adaptive"),
    (lambda m: make_sparsifier("set", m, density=0.3, distribution="zipf"), "valid: uniform, er, erk"),
    (lambda m: SET(m, density=0.3, zeta=1.0), "zeta"),
    (lambda m: SET(m, density=0.3, zeta=0.0), "zeta"),
    (lambda m: RigL(m, density=0.3, alpha_drop=1.5, t_end=10), "alpha_drop"),
    (lambda m: RigL(m, density=0.3, t_end=0), "t_end"),
    (lambda m: RigL(m, density=0.3), "total_steps"),
    (lambda m: SNIP(m, density=0.3), "batch="),
])
def test_bad_dst_configuration_is_one_clear_error(make, message):
    with pytest.raises(ConfigError, match=message):
        make(mlp((8,)))


def test_ties_go_to_the_lower_position_in_every_top_k():
    from topo.sparsity.dst import largest
    from topo.sparsity.srigl import _top_per_row

    scores = torch.zeros(2000)
    assert torch.equal(largest(scores, torch.ones(2000, dtype=torch.bool), 10).nonzero().flatten(), torch.arange(10))
    rows = _top_per_row(torch.zeros(8, 600), 5)
    assert torch.equal(rows, torch.arange(600).expand(8, -1) < 5)


def test_snip_scopes_and_distribution_set_the_layer_densities():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 30), torch.nn.ReLU(), torch.nn.Linear(30, 30), torch.nn.ReLU(),
                                torch.nn.Linear(30, 5))
    batch = (torch.randn(16, 40), torch.randint(0, 5, (16,)))

    def densities(**options):
        snip = make_sparsifier("snip", model, None, density=0.3, batch=batch, seed=0, **options)
        return [round(float(mask.float().mean()), 3) for mask in snip.masks.values()]

    assert densities(scope="layer") == [0.3, 0.3, 0.3]
    erk = densities(scope="layer", distribution="erk")
    assert erk != [0.3, 0.3, 0.3] and erk[-1] > erk[0]  # ERK gives the small last layer more
    assert len(set(densities(scope="global"))) > 1  # one ranking over all layers: densities differ per layer


def test_snip_records_its_scope():
    model = torch.nn.Sequential(torch.nn.Linear(6, 4))
    snip = make_sparsifier("snip", model, None, density=0.5, batch=(torch.randn(3, 6), torch.randint(0, 4, (3,))),
                           seed=0, scope="layer")
    assert snip.config()["scope"] == "layer"


def test_set_per_sign_drop_when_every_active_weight_is_negative():
    """The weight nearest zero is the largest: the upper threshold is the last value (index n − 1), which drops it."""
    from topo.sparsity.dst import per_sign_smallest

    weight = -torch.arange(1.0, 11.0)  # −1 … −10, all active
    dropped = per_sign_smallest(weight.reshape(1, -1), torch.ones(1, 10, dtype=torch.bool), 0.3)
    # ascending −10 … −1; the nearest zero (−1) sits at f = 9: the lower threshold is v[⌊0.7·9⌋] = v[6] = −4
    assert sorted(weight.reshape(1, -1)[dropped].tolist()) == [-4.0, -3.0, -2.0, -1.0]


@pytest.mark.parametrize("init", ["normal", "uniform"])
def test_set_regrowth_follows_the_sparsifiers_own_seed_not_torchs_global_generator(init):
    masks, weights = [], []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)  # the same SET seed under two global states: the same topology
        model = mlp((32,))
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(torch.linspace(-1, 1, parameter.numel()).reshape(parameter.shape))
        sp = SET(model, density=0.3, seed=5, zeta=0.3, init=init)
        sp.end_epoch(0)
        masks.append({n: m.clone() for n, m in sp.masks.items()})
        weights.append({n: w.detach().clone() for n, w in sp.weights.items()})
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])  # regrown values too


def test_snip_scores_a_weight_the_loss_does_not_use_as_zero():
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 2, bias=False))
    batch = (torch.ones(1, 3), None)
    sp = SNIP(model, density=0.5, batch=batch, loss=lambda m, b: m[0](b[0]).sum())  # layer 1 is never used
    scores = sp.sensitivity(batch, lambda m, b: m[0](b[0]).sum())
    assert torch.equal(scores["1.weight"], torch.zeros(2, 2)) and scores["0.weight"].abs().sum() > 0


def test_rigl_refuses_an_update_without_a_layers_gradient():
    sp = RigL(mlp((16,)), density=0.3, seed=0, delta_t=5, total_steps=100)
    with pytest.raises(ConfigError, match="no gradient for layer"):
        sp.adapt({}, step=5)


def test_snip_sparsifies_only_the_parameters_named():
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False))
    batch = (torch.ones(2, 3), None)
    sp = SNIP(model, density=0.5, batch=batch, loss=lambda m, b: m(b[0]).sum(), params=["1.weight"])
    assert list(sp.masks) == ["1.weight"] and torch.count_nonzero(model[0].weight) == 12


def test_set_drops_a_lone_active_weight_and_nothing_from_an_empty_layer():
    from topo.sparsity.dst import per_sign_smallest

    weight = torch.tensor([[0.0, -0.7], [0.0, 0.0]])
    assert per_sign_smallest(weight, weight != 0, 0.3).tolist() == [[False, True], [False, False]]
    assert not per_sign_smallest(weight, torch.zeros(2, 2, dtype=torch.bool), 0.3).any()


@pytest.mark.parametrize(("method", "options", "culprit"), [
    ("rigl", {"delta_t": 2.5, "t_end": 10}, "delta_t"),
    ("rigl", {"alpha_drop": 1.5, "t_end": 10}, r"^alpha_drop \(α_drop\) must be"),
    ("set", {"every": 1.5}, "every"), ("set", {"init_scale": math.inf}, "init_scale"),
    ("set", {"init_scale": -0.1}, "init_scale")])
def test_dst_options_out_of_range_name_the_culprit(method, options, culprit):
    with pytest.raises(ConfigError, match=culprit):
        make_sparsifier(method, mlp(), density=0.3, **options)


def test_dst_options_at_their_bounds_are_accepted_and_reach_the_method():
    assert RigL(mlp(), density=0.3, t_end=1).t_end == 1
    sparsifier = SET(mlp((32,)), density=0.3, init="normal", init_scale=0, params=["0.weight"])
    assert sparsifier.init_scale == 0 and sparsifier.sparse_layers == ["0.weight"]
