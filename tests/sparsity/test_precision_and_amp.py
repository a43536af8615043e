"""Half precision, AMP loss scaling, fused optimizers, skipped steps, gradient clipping, optimizer-state resets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from topo.sparsity import Adaptive, AdaptiveConfig, adapt_layer, random_mask

from ..conftest import mlp


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_layer_adapts_like_float32(dtype):
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(2048, 2048, generator=g) < 0.5
    weight = ((torch.randn(2048, 2048, generator=g) * 0.05) * mask).to(dtype)
    grad = torch.randn(2048, 2048, generator=g) * 1e-3
    cfg = AdaptiveConfig(density=0.5, k=0.5)
    results = {}
    for name, w in (("half", weight.clone()), ("float", weight.float())):
        m = mask.clone()
        pruned, _ = adapt_layer(w, m, grad, cfg, torch.Generator().manual_seed(1))
        assert torch.isfinite(w).all(), name
        results[name] = (m, pruned.sum().item())
    assert results["half"][1] == pytest.approx(results["float"][1], rel=1e-3)
    assert 0.05 < results["half"][1] / mask.sum().item() < 0.5  # a sensible share, not 99.96 %
    assert (results["half"][0] != results["float"][0]).sum() <= 10  # ties at the threshold only


def true_weight_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    loss = nn.functional.cross_entropy(model(x), y)
    return list(torch.autograd.grad(loss, [p for n, p in model.named_parameters() if n.endswith("weight")]))


OPTIMIZERS = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
    "adam-foreach": lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True),
    "adam-fused": lambda p: torch.optim.Adam(p, lr=1e-3, fused=True),
    "adamw-fused": lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True),
    "sgd-fused": lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9, fused=True),
}


@pytest.mark.parametrize("scaling", ["none", "scaler", "scaler-unscale"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_grow_rule_reads_unscaled_gradients(optimizer, scaling):
    torch.manual_seed(0)
    model = mlp((48,))
    opt = OPTIMIZERS[optimizer](model.parameters())
    # Cg = 1, r = 0: a grown weight is its gradient, so the gradient the rule read is visible
    sp = Adaptive(model, opt, density=0.3, unit="step", every=1, cg=1.0, r=0.0)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    expected = true_weight_gradients(model, x, y)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, enabled=scaling != "none")
    opt.zero_grad()
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    if scaling == "scaler-unscale":
        scaler.unscale_(opt)
        sp.mask_grads()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e6)
    scaler.step(opt)
    scaler.update()
    masks_before = {n: m.clone() for n, m in sp.masks.items()}
    sp.step()
    assert sp.step_count == 1
    for (name, weight), grad in zip(sp.weights.items(), expected, strict=True):
        new = sp.masks[name] & ~masks_before[name]
        assert new.sum() > 0
        # the new weights hold the true gradient, not the gradient times the loss scale
        torch.testing.assert_close(weight.detach()[new], grad[new], rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("optimizer", ["adam", "adam-fused"])
def test_steps_skipped_by_the_scaler_are_not_counted_or_adapted(optimizer):
    torch.manual_seed(0)
    model = mlp((16,))
    opt = OPTIMIZERS[optimizer](model.parameters())
    sp = Adaptive(model, opt, density=0.3, unit="step", every=1)
    scaler = torch.amp.GradScaler("cpu")
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    before = {n: m.clone() for n, m in sp.masks.items()}
    opt.zero_grad()
    scaler.scale(nn.functional.cross_entropy(model(x), y) * math.inf).backward()
    scaler.step(opt)
    scaler.update()
    sp.step()
    assert sp.step_count == 0
    assert all(torch.equal(before[n], m) for n, m in sp.masks.items())
    assert sum(p + g for p, g in sp.pop_changes().values()) == 0
    opt.zero_grad()
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    scaler.step(opt)
    scaler.update()
    sp.step()
    assert sp.step_count == 1 and sum(p for p, _ in sp.pop_changes().values()) > 0


def test_optimizer_step_that_never_ran_is_not_counted():
    model = mlp((8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = Adaptive(model, opt, density=0.5, unit="step", every=1)
    sp.step()
    assert sp.step_count == 0


def test_mask_grads_before_clipping_clips_the_applied_gradient():
    torch.manual_seed(0)
    model = mlp((32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = Adaptive(model, opt, density=0.1, unit="step", every=1)
    nn.functional.cross_entropy(model(torch.randn(16, 64)), torch.randint(0, 10, (16,))).backward()
    dense_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    sp.mask_grads()
    stash = {n: g.clone() for n, g in sp._stashed_grads.items()}
    masked = [p.grad.clone() for p in model.parameters()]
    sp.mask_grads()  # idempotent: grads and the kept dense gradient unchanged
    assert all(torch.equal(a, p.grad) for a, p in zip(masked, model.parameters(), strict=True))
    assert all(torch.equal(stash[n], g) for n, g in sp._stashed_grads.items())
    clipped_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e6)
    expected = torch.sqrt(sum(g.pow(2).sum() for g in masked))
    assert clipped_norm == pytest.approx(float(expected), rel=1e-6)
    assert clipped_norm < dense_norm
    for name, mask in sp.masks.items():
        assert torch.count_nonzero(sp.weights[name].grad[~mask]) == 0


def test_top_up_of_growth_is_uniform_and_reproducible():
    """s = ∞, β0 < 1: when the sample holds too few candidates, the rest are uniform over unsampled inactive."""
    counts = np.zeros(10)
    expected = np.zeros(10)
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        mask = random_mask(torch.Size([100, 100]), 0.5, g, torch.device("cpu"))
        weight = torch.randn(100, 100, generator=g) * mask
        grad = torch.randn(100, 100, generator=g)
        cfg = AdaptiveConfig(density=0.5, k=1.5, beta0=0.02)
        inactive_before = ~mask
        m = mask.clone()
        pruned, grown = adapt_layer(weight.clone(), m, grad, cfg, torch.Generator().manual_seed(seed))
        again = mask.clone()
        _, grown_again = adapt_layer(weight.clone(), again, grad, cfg, torch.Generator().manual_seed(seed))
        assert torch.equal(grown, grown_again)
        assert grown.sum() == pruned.sum() > 1000
        # among positions inactive before the adaptation, growth is spread in proportion to their number
        counts += (grown & inactive_before).view(10, 1000).sum(1).numpy()
        expected += inactive_before.view(10, 1000).sum(1).numpy() * (grown & inactive_before).sum().item() \
            / inactive_before.sum().item()
    assert scipy.stats.chisquare(counts, expected).pvalue > 1e-3


def adam_like_state(opt: torch.optim.Optimizer, param: nn.Parameter) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in opt.state[param].items() if torch.is_tensor(v) and v.shape == param.shape}


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.Adam(p, lr=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9),
    lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5),
], ids=["adam", "adamw", "sgd-momentum", "rmsprop"])
def test_optimizer_state_reset_exactly_at_changed_positions(make):
    torch.manual_seed(0)
    model = mlp((32,))
    opt = make(model.parameters())
    sp = Adaptive(model, opt, density=0.3, unit="step", every=4, k=1.0)
    changed: dict[str, torch.Tensor] = {}
    record = sp._record_change
    sp._record_change = lambda name, pruned, grown: (changed.__setitem__(name, pruned | grown),
                                                     record(name, pruned, grown))
    g = torch.Generator().manual_seed(0)
    for step in range(4):
        x, y = torch.randn(16, 64, generator=g), torch.randint(0, 10, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if step == 3:
            before = {n: adam_like_state(opt, p) for n, p in sp.weights.items()}
        sp.step()
    for name, param in sp.weights.items():
        assert changed[name].any()
        state = adam_like_state(opt, param)
        assert state, name
        for key, value in state.items():
            assert torch.count_nonzero(value[changed[name]]) == 0, (name, key)
            assert torch.equal(value[~changed[name]], before[name][key][~changed[name]]), (name, key)


def test_a_rigl_update_after_a_skipped_step_uses_the_next_steps_gradients():
    from topo.sparsity import RigL

    torch.manual_seed(0)
    model = mlp((16,))
    opt = torch.optim.Adam(model.parameters())
    sp = RigL(model, opt, density=0.3, delta_t=1, t_end=100)
    scaler = torch.amp.GradScaler("cpu")
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    for loss_factor in (math.inf, 1.0):  # the first step is skipped: its stashed gradients are dropped
        opt.zero_grad()
        scaler.scale(nn.functional.cross_entropy(model(x), y) * loss_factor).backward()
        scaler.step(opt)
        scaler.update()
        sp.step()
    assert sp.step_count == 1 and sum(p for p, _ in sp.pop_changes().values()) > 0
