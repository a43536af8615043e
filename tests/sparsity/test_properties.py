"""Property tests (hypothesis): mask invariants over random shapes, densities and hyperparameters."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from topo.sparsity import Adaptive, AdaptiveConfig, MagnitudePruning, active_count, adapt_layer, random_mask

shapes = st.lists(st.integers(1, 12), min_size=1, max_size=4)
densities = st.floats(0.01, 1.0)


@given(shape=shapes, density=densities, seed=st.integers(0, 2**31))
@settings(max_examples=80, deadline=None)
def test_random_mask_has_exact_count(shape, density, seed):
    mask = random_mask(torch.Size(shape), density, torch.Generator().manual_seed(seed), torch.device("cpu"))
    assert mask.shape == torch.Size(shape) and mask.dtype == torch.bool
    assert mask.sum() == active_count(math.prod(shape), density)


@given(
    shape=shapes, density=densities, seed=st.integers(0, 2**31), k=st.floats(0.05, 2.0),
    g=st.sampled_from([math.inf, 0.5, 5.0]), beta=st.floats(0.1, 1.0),
)
@settings(max_examples=80, deadline=None)
def test_adaptation_with_s_infinite_keeps_count_and_consistency(shape, density, seed, k, g, beta):
    gen = torch.Generator().manual_seed(seed)
    mask = random_mask(torch.Size(shape), density, gen, torch.device("cpu"))
    weight = torch.randn(shape, generator=gen) * mask
    grad = torch.randn(shape, generator=gen)
    before = mask.clone()
    cfg = AdaptiveConfig(density=density, k=k, g=g, beta1=beta, beta0=beta)
    pruned, grown = adapt_layer(weight, mask, grad, cfg, gen)
    assert mask.sum() == before.sum()
    assert not (pruned & ~before).any()
    assert torch.count_nonzero(weight[~mask]) == 0
    assert torch.equal(mask, (before & ~pruned) | grown)


@given(
    shape=shapes, density=densities, seed=st.integers(0, 2**31), s=st.floats(0.0, 10.0),
    g=st.sampled_from([math.inf, 1.0, 10.0]), cg=st.floats(-1, 1), r=st.floats(0, 0.5),
)
@settings(max_examples=80, deadline=None)
def test_adaptation_with_finite_s_keeps_weights_consistent_and_bounded(shape, density, seed, s, g, cg, r):
    gen = torch.Generator().manual_seed(seed)
    mask = random_mask(torch.Size(shape), density, gen, torch.device("cpu"))
    weight = torch.randn(shape, generator=gen) * mask
    grad = torch.randn(shape, generator=gen)
    cfg = AdaptiveConfig(density=density, s=s, g=g, cg=cg, r=r)
    pruned, grown = adapt_layer(weight, mask, grad, cfg, gen)
    assert torch.count_nonzero(weight[~mask]) == 0
    assert ((weight - cg * grad)[grown].abs() <= r + 1e-6).all()


@given(shape=st.lists(st.integers(1, 10), min_size=2, max_size=2), density=densities)
@settings(max_examples=50, deadline=None)
def test_pruning_keeps_exact_count(shape, density):
    model = torch.nn.Linear(shape[1], shape[0])
    sp = MagnitudePruning(model, density=density, prune_after=[0], params=["weight"])
    sp.end_epoch(0)
    assert sp.masks["weight"].sum() == active_count(shape[0] * shape[1], density)


@given(
    rows=st.integers(1, 24), cols=st.integers(1, 24), density=st.floats(0.05, 1.0), seed=st.integers(0, 2**31),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    beta0=st.sampled_from([1.0, 0.5, 0.05]), beta1=st.sampled_from([1.0, 0.3]),
    g=st.sampled_from([math.inf, 0.5, 5.0]), s=st.sampled_from([math.inf, 0.0, 3.0]),
    scale=st.sampled_from([1e-3, 1.0, 300.0]),
)
@settings(max_examples=120, deadline=None)
def test_adaptive_training_in_any_dtype_keeps_every_invariant(rows, cols, density, seed, dtype, beta0, beta1, g, s,
                                                               scale):
    torch.manual_seed(seed)
    model = torch.nn.Linear(cols, rows, bias=False).to(dtype)
    with torch.no_grad():
        model.weight.mul_(scale)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    sp = Adaptive(model, opt, density=density, unit="step", every=1, g=g, s=s, beta0=beta0, beta1=beta1,
                  seed=seed)
    expected = active_count(rows * cols, density)
    for _ in range(3):
        x = torch.randn(4, cols, dtype=dtype)
        loss = model(x).float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()
        weight, mask = model.weight.detach(), sp.masks["weight"]
        assert torch.isfinite(weight).all()
        assert torch.count_nonzero(weight[~mask]) == 0
        if math.isinf(s):
            assert mask.sum() == expected
