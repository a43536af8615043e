"""SET, RigL and SNIP on hand-made tensors; per-layer density distributions; their bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from topo.errors import ConfigError
from topo.sparsity import SET, SNIP, RigL, layer_densities, make_sparsifier

from ..conftest import mlp


def one_layer(rows: int = 40, cols: int = 50) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(cols, rows, bias=False))


def test_set_drops_the_smallest_zeta_and_regrows_as_many_at_zero():
    model = one_layer()
    sp = SET(model, density=0.2, zeta=0.3)
    weight, mask = sp.weights["0.weight"], sp.masks["0.weight"]
    before = mask.clone()
    magnitudes = weight.detach().abs()[before]
    threshold = magnitudes.sort().values[round(0.3 * 400) - 1]
    sp.adapt()
    dropped, grown = before & ~mask, mask & ~before
    assert int(mask.sum()) == 400 and int(dropped.sum()) == int(grown.sum()) <= 120
    assert sp.pop_changes()["0.weight"] == (120, 120)  # regrowth may land on a just-dropped position
    kept = before & mask
    assert (weight.detach().abs()[before & ~kept] <= threshold).all()
    assert torch.count_nonzero(weight.detach()[grown]) == 0


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
    sp.step()  # update at step t = 1: drop fraction (0.5/2)(1 + cos(π/100))
    count = round(sp.drop_fraction(1) * 400)
    mask = sp.masks["0.weight"]
    dropped, grown = before & ~mask, mask & ~before
    assert int(mask.sum()) == 400 and sp.pop_changes()["0.weight"] == (count, count)
    order = torch.where(before, weights_after_step.abs(), math.inf).flatten().sort(stable=True).indices[:count]
    expected_drop = torch.zeros(2000, dtype=torch.bool)
    expected_drop[order] = True
    not_kept = ~(before & ~expected_drop.view(40, 50))
    best = torch.where(not_kept, dense_grad.abs(), -math.inf).flatten().sort(descending=True, stable=True)
    expected_mask = (before & ~expected_drop.view(40, 50)).flatten().clone()
    expected_mask[best.indices[:count]] = True
    assert torch.equal(mask.flatten(), expected_mask)
    assert torch.count_nonzero(model[0].weight.detach()[grown]) == 0
    state = opt.state[model[0].weight]
    assert torch.count_nonzero(state["exp_avg"][dropped | grown]) == 0


def test_rigl_keeps_dense_gradients_only_on_update_steps():
    model = one_layer()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = RigL(model, opt, density=0.2, delta_t=3, t_end=100)
    kept = []
    for _ in range(6):
        opt.zero_grad()
        model(torch.randn(4, 50)).sum().backward()
        sp.mask_grads()
        kept.append(sp._stashed is not None)
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
        assert int(mask.sum()) == round(per_layer.layer_density[name] * mask.numel())
    model = mlp((32,))
    overall = SNIP(model, density=0.2, batch=batch)
    assert sum(int(m.sum()) for m in overall.masks.values()) == round(0.2 * (32 * 64 + 10 * 32))


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


def test_dense_first_last_and_distribution_on_every_sparse_method():
    for method in ("random-fixed", "adaptive", "set", "random-channelwise"):
        model = mlp((32, 32))
        sp = make_sparsifier(method, model, density=0.2, distribution="erk", dense_first_last=True)
        names = sp.masked.names
        assert sp.masks[names[0]].all() and sp.masks[names[-1]].all()
        assert int(sp.masks[names[1]].sum()) == round(sp.layer_density[names[1]] * sp.masks[names[1]].numel())
        assert sp.config()["distribution"] == "erk"


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
