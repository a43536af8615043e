"""Backbones of dense weighted layers: exact counts, deterministic ties, the disparity filter by hand."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
import torch

from topo.errors import ConfigError
from topo.graph import bipartite_graph, mean_shortest_path, square_graph
from topo.graph.backbone import GlobalMagnitude, disparity_backbone, magnitude_backbone
from topo.graph.metrics import sampled_shortest_path
from topo.options import parse_backbone


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.37, 1.0])
def test_magnitude_keeps_exactly_round_f_n_largest(fraction):
    weight = torch.randn(37, 23)
    mask = magnitude_backbone(weight, fraction)
    count = round(fraction * weight.numel())
    assert int(mask.sum()) == count
    if 0 < count < weight.numel():
        assert weight.abs()[mask].min() >= weight.abs()[~mask].max()


def test_magnitude_ties_broken_by_position():
    weight = torch.tensor([[1.0, -2.0, 2.0], [2.0, 0.5, -2.0]])
    assert magnitude_backbone(weight, 3 / 6).tolist() == [[False, True, True], [True, False, False]]


def test_global_magnitude_matches_one_pass_over_the_whole_model():
    torch.manual_seed(0)
    layers = [torch.randn(8, 5), torch.randn(3, 4, 3, 3).round(decimals=1), torch.randn(20, 2) * 3]
    flat = torch.cat([w.reshape(-1) for w in layers])
    overall = GlobalMagnitude(0.2, flat.numel())
    for w in layers:
        overall.observe(w)
    masks = [overall.mask(w) for w in layers]
    expected = magnitude_backbone(flat, 0.2)
    assert torch.equal(torch.cat([m.reshape(-1) for m in masks]), expected)
    assert sum(int(m.sum()) for m in masks) == round(0.2 * flat.numel())


def disparity_by_hand(weight: np.ndarray, alpha: float) -> np.ndarray:
    """Serrano, Boguñá & Vespignani (2009), eq. 2, edge by edge."""
    w = np.abs(weight)
    keep = np.zeros(w.shape, bool)
    for o in range(w.shape[0]):
        for i in range(w.shape[1]):
            if w[o, i] == 0:
                continue
            for strengths, degree in ((w[o].sum(), (w[o] > 0).sum()), (w[:, i].sum(), (w[:, i] > 0).sum())):
                p = w[o, i] / strengths
                if (1 - p) ** (degree - 1) < alpha:
                    keep[o, i] = True
    return keep


def test_disparity_filter_worked_by_hand():
    # output 0: weights 8, 1, 1 (strength 10, k = 3): shares 0.8 → α = 0.2² = 0.04, and 0.1 → 0.81
    # output 1: weights 1, 1 (k = 2): α = 0.5 each;  input 0: weights 8, 1 (k = 2): α = 1/9 and 8/9
    # input 1: weights 1, 1: α = 0.5 each;  input 2: one edge (k = 1): α = 1, never significant from there
    weight = torch.tensor([[8.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    assert disparity_backbone(weight, 0.05).tolist() == [[True, False, False], [False, False, False]]
    assert disparity_backbone(weight, 0.2).tolist() == [[True, False, False], [False, False, False]]
    assert disparity_backbone(weight, 0.6).tolist() == [[True, True, False], [True, True, False]]
    rng = np.random.default_rng(0)
    for alpha in (0.01, 0.1, 0.3):
        w = rng.lognormal(size=(9, 7)) * (rng.random((9, 7)) < 0.7)
        assert disparity_backbone(torch.from_numpy(w), alpha).numpy().tolist() == disparity_by_hand(w, alpha).tolist()


def test_disparity_on_a_convolution_keeps_whole_kernels():
    weight = torch.zeros(2, 3, 3, 3)
    weight[0, 1] = 5.0
    weight[0, 0, 0, 0] = 0.1
    weight[1, 2] = 1.0
    mask = disparity_backbone(weight, 0.5)
    assert mask.shape == weight.shape and bool(mask[0, 1].all()) and not bool(mask[0, 0].any())


@pytest.mark.parametrize("text,message", [("magnitude:2", "in \\(0, 1\\]"), ("magnitude:x", "with a number"),
                                          ("disparity:1", "in \\(0, 1\\)"), ("top:0.1", "unknown backbone")])
def test_bad_backbones_name_the_argument(text, message):
    with pytest.raises(ConfigError, match=f"--backbone '{text}'.*{message}"):
        parse_backbone(text)


def test_sampled_path_length_estimates_the_exact_value():
    graph = nx.connected_watts_strogatz_graph(600, 6, 0.1, seed=0)
    g = square_graph(nx.to_numpy_array(graph).astype(bool))
    exact = mean_shortest_path(g).mean
    estimate = sampled_shortest_path(g, 64, seed=1)
    assert estimate.standard_error > 0
    assert abs(estimate.mean - exact) < 4 * estimate.standard_error
    everything = sampled_shortest_path(g, 600)
    assert everything.mean == pytest.approx(exact) and everything.standard_error == 0
    layer = bipartite_graph(np.random.default_rng(0).random((50, 40)) < 0.1)
    sampled = sampled_shortest_path(layer, 30, seed=0)
    assert math.isfinite(sampled.mean) and 0 < sampled.reachable_fraction <= 1


def test_backbones_refuse_out_of_range_levels_at_the_boundaries():
    weight = torch.ones(2, 2)
    for fraction in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="fraction kept must be in"):
            magnitude_backbone(weight, fraction)
        with pytest.raises(ConfigError, match="fraction kept must be in"):
            GlobalMagnitude(fraction, 10)
    for alpha in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="significance level must be in"):
            disparity_backbone(weight, alpha)
    assert magnitude_backbone(weight, 1.0).all()


def test_magnitude_backbone_counts_zero_and_one_and_reads_nan_as_zero():
    weight = torch.tensor([[float("nan"), 0.5, 0.2], [0.1, -0.3, 0.05]])
    none = magnitude_backbone(weight, 0.05)  # round(0.3) = 0 weights
    assert none.dtype == torch.bool and none.shape == weight.shape and not none.any()
    assert magnitude_backbone(weight, 1 / 6).tolist() == [[False, True, False], [False, False, False]]
    assert magnitude_backbone(weight, 5 / 6)[0, 0].item() is False  # NaN is the smallest magnitude, 0
    assert not disparity_backbone(weight, 0.9)[0, 0]


def test_global_magnitude_breaks_ties_across_layers_in_order():
    layers = [torch.tensor([[3.0, 1.0], [1.0, 0.0]]), torch.tensor([[1.0, 1.0, 2.0]])]
    overall = GlobalMagnitude(4 / 7, 7)  # keep 4: 3 and 2 above the threshold 1, then the first two 1s
    for w in layers:
        overall.observe(w)
    first, second = overall.mask(layers[0]), overall.mask(layers[1])
    assert first.tolist() == [[True, True], [True, False]] and second.tolist() == [[False, False, True]]
    nothing = GlobalMagnitude(0.01, 7)  # round(0.07) = 0
    for w in layers:
        nothing.observe(w)
    assert nothing.threshold == float("inf") and not any(nothing.mask(w).any() for w in layers)


def test_disparity_filter_with_weights_below_one_and_a_level_met_exactly():
    weight = torch.tensor([[8.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # α exactly 0.5 for output 1's two equal edges and input 1's: not significant (α must be below the level)
    assert disparity_backbone(weight, 0.5).tolist() == [[True, False, False], [False, False, False]]
    small = weight / 100  # shares, hence the filter, do not depend on the scale
    assert torch.equal(disparity_backbone(small, 0.6), disparity_backbone(weight, 0.6))


def test_disparity_on_a_convolution_is_the_channel_filter_spread_over_the_kernel():
    torch.manual_seed(2)
    weight = torch.randn(4, 3, 5, 5) * (torch.rand(4, 3, 5, 5) < 0.4)
    channels = disparity_backbone(weight.abs().sum((2, 3)), 0.3)
    expected = channels[:, :, None, None].expand(weight.shape)
    assert torch.equal(disparity_backbone(weight, 0.3), expected) and channels.any() and not channels.all()


def test_disparity_on_a_one_dimensional_convolution_and_in_half_precision():
    torch.manual_seed(3)
    conv1d = torch.randn(5, 4, 3) * (torch.rand(5, 4, 3) < 0.5)  # (out, in, taps)
    channels = disparity_backbone(conv1d.abs().sum(2), 0.4)
    assert torch.equal(disparity_backbone(conv1d, 0.4), channels[:, :, None].expand(conv1d.shape))
    half = (torch.rand(40, 30) * 2).half()
    assert torch.equal(disparity_backbone(half, 0.3), disparity_backbone(half.double(), 0.3))
