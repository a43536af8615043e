"""Null models: their invariants, their mixing, and z-scores that are standard normal for random masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from topo.errors import ConfigError
from topo.graph import metrics_table
from topo.graph.compare import nnstd, nnstd_random
from topo.graph.null import degree_masks, er_masks, null_masks
from topo.sparsity.structure import nm_pattern


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(2, 30), cols=st.integers(2, 30), density=st.floats(0.05, 0.9), seed=st.integers(0, 999))
def test_nulls_keep_their_invariants(rows, cols, density, seed):
    block = torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed)) < density
    generator = torch.Generator().manual_seed(seed)
    er = er_masks(block, 4, generator)
    assert er.shape == (4, rows, cols) and (er.sum((1, 2)) == block.sum()).all()
    degree, rounds = degree_masks(block, 4, generator)
    assert (degree.sum(2) == block.sum(1)).all() and (degree.sum(1) == block.sum(0)).all()
    assert 1 <= rounds <= 200


def test_curveball_mixes_to_the_overlap_of_a_random_mask():
    torch.manual_seed(0)
    block = torch.zeros(200, 300, dtype=torch.bool)
    block[:, :60] = torch.rand(200, 60) < 0.8  # concentrated on the first columns; degrees allow mixing among them
    block[:, 60:] = torch.rand(200, 240) < 0.05
    masks, rounds = degree_masks(block, 8, torch.Generator().manual_seed(1))
    kept = (masks & block).sum((1, 2)).float() / block.sum()
    # the degree-preserving chain mixes within the margins: the kept fraction settles near what random masks with
    # these margins share, far from the 1.0 it starts at
    expected = (block.sum(1, keepdim=True).float() * block.sum(0, keepdim=True).float() / block.sum()
                * block.float()).sum() / block.sum()
    assert rounds < 200 and abs(float(kept.mean()) - float(expected)) < 0.05


def test_nm_null_draws_random_nm_masks_and_applies_only_to_nm_blocks():
    block = torch.zeros(16, 16, dtype=torch.bool)
    block[:, ::2] = True  # 2:4
    masks = null_masks("nm", block, 5, seed=0)
    assert all(nm_pattern(m) == "2:4" for m in masks) and not all(torch.equal(m, block) for m in masks)
    generator = torch.Generator().manual_seed(0)
    assert all(null_masks("nm", torch.rand(8, 16, generator=generator) < 0.1, 5) is None for _ in range(20))
    with pytest.raises(ConfigError, match="valid: er, degree, nm"):
        null_masks("config", block, 5)


def test_nm_null_keeps_every_groups_observed_count():
    # a 2:4 layer with some kept weights at zero (RigL's regrown zeros read back): the null keeps its edge count
    generator = torch.Generator().manual_seed(0)
    block = torch.zeros(16, 32, dtype=torch.bool)
    keys = torch.rand(16, 8, 4, generator=generator)
    block = block.reshape(16, 8, 4).scatter_(-1, keys.topk(2, -1).indices, True).reshape(16, 32)
    block[torch.rand(16, 32, generator=generator) < 0.2] = False
    masks = null_masks("nm", block, 6, seed=1)
    counts = block.reshape(16, 8, 4).sum(-1)
    assert (masks.reshape(6, 16, 8, 4).sum(-1) == counts).all()
    assert not all(torch.equal(m, block) for m in masks)


def test_nm_null_of_a_convolution_keeps_counts_along_input_channels():
    generator = torch.Generator().manual_seed(0)
    rows = torch.rand(3 * 3 * 8, 8, generator=generator)
    keep = torch.zeros(72, 2, 4, dtype=torch.bool).scatter_(-1, rows.reshape(72, 2, 4).topk(2, -1).indices, True)
    conv = keep.reshape(3, 3, 8, 8).permute(2, 3, 0, 1)  # (out 8, in 8, 3, 3), 2:4 along input channels
    block = conv.reshape(8, -1)  # as graphs see it: out x in·taps
    assert null_masks("nm", block, 4, seed=0) is None  # without the layer's shape its groups are unknown
    masks = null_masks("nm", block, 4, seed=0, shape=(8, 8, 3, 3))
    per_channel_group = masks.reshape(4, 8, 2, 4, 3, 3).sum(3)
    assert (per_channel_group == conv.reshape(8, 2, 4, 3, 3).sum(2)).all()
    assert not all(torch.equal(m, block) for m in masks)
    table = metrics_table({"conv.weight": conv.numpy()}, null="nm", null_samples=4, progress=False)
    assert "fan_in_gini_null_mean" in set(table.metric)  # the table passes the layer's shape to its null too


def test_z_scores_of_random_masks_are_standard_normal():
    rng = np.random.default_rng(0)
    observed = {f"l{i}.weight": rng.random((24, 32)) < 0.15 for i in range(80)}
    table = metrics_table(observed, null="er", null_samples=30, progress=False)
    for metric in ("bipartite_clustering_z", "spectral_gap_z", "fan_in_gini_z"):
        z = table[table.metric == metric].value.to_numpy()
        assert len(z) == 80
        assert abs(z.mean()) < 0.35 and 0.7 < z.std() < 1.4, (metric, z.mean(), z.std())


def test_a_block_structured_mask_has_a_large_clustering_z():
    block = np.zeros((40, 60), dtype=bool)
    for group in range(4):
        block[group * 10:(group + 1) * 10, group * 15:(group + 1) * 15] = np.random.default_rng(group).random(
            (10, 15)) < 0.6
    table = metrics_table({"fc.weight": block}, null="er", null_samples=20, progress=False).set_index("metric")
    assert table.loc["bipartite_clustering_z", "value"] > 10
    degree = metrics_table({"fc.weight": block}, null="degree", null_samples=20, progress=False)
    assert "fan_in_gini_z" not in set(degree.metric) and "fan_in_gini_null_std" in set(degree.metric)


def test_independent_random_masks_land_within_0_05_of_the_nnstd_baseline():
    rng = np.random.default_rng(3)
    a = [rng.random((64, 100)) < 0.1, rng.random((10, 64)) < 0.1]
    b = [rng.random((64, 100)) < 0.1, rng.random((10, 64)) < 0.1]
    observed = nnstd(a, b)
    mean, std = nnstd_random(a, b, samples=10, seed=1)
    assert all(abs(o - m) < 0.05 for o, m in zip(observed, mean, strict=True))
    assert 0.7 < mean[0] < 0.9 < 1 - 0.1 / 1.9  # matched: well below the unmatched 1 − d/(2 − d)
    assert all(s > 0 for s in std)


@pytest.mark.parametrize("kind", ["er", "degree", "nm"])
def test_nulls_are_seeded_and_their_samples_differ(kind):
    generator = torch.Generator().manual_seed(4)
    block = torch.zeros(12, 16, dtype=torch.bool).reshape(12, 4, 4)
    block = block.scatter_(-1, torch.rand(12, 4, 4, generator=generator).topk(2, -1).indices, True).reshape(12, 16)
    first, again, other = (null_masks(kind, block, 4, seed=s) for s in (7, 7, 8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert all(not torch.equal(first[0], first[i]) for i in range(1, 4))  # every sample a draw of its own


def test_one_curveball_round_trades_between_two_rows():
    from topo.graph.null import _curveball_round

    block = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    masks = block.unsqueeze(0).repeat(64, 1, 1)
    _curveball_round(masks, torch.Generator().manual_seed(0))
    assert (masks.sum(2) == 2).all() and (masks.sum(1) == 1).all()  # margins kept
    assert not all(torch.equal(m, block) for m in masks)  # the pair traded in some samples


def test_degree_null_stops_when_the_overlap_settles_after_the_minimum_rounds(monkeypatch):
    import topo.graph.null as null

    stuck = torch.ones(6, 5, dtype=torch.bool)  # identical rows: nothing to trade, the overlap never moves
    assert degree_masks(stuck, 3, torch.Generator().manual_seed(0))[1] == null.MIN_ROUNDS
    monkeypatch.setattr(null, "MIXING_TOLERANCE", 0.0)  # a change below 0 never comes: the chain runs to the end
    assert degree_masks(stuck, 3, torch.Generator().manual_seed(0))[1] == null.MAX_ROUNDS


def test_degree_null_is_the_curveball_chain_run_for_the_rounds_it_reports():
    from topo.graph.null import _curveball_round

    generator = torch.Generator().manual_seed(9)
    block = torch.rand(100, 120, generator=generator) < 0.3  # 3 · 3,600 weights: overlap changes below 0.002 show
    masks, rounds = degree_masks(block, 3, torch.Generator().manual_seed(1))
    replay = block.unsqueeze(0).repeat(3, 1, 1)
    chain = torch.Generator().manual_seed(1)
    overlaps = []
    for _ in range(rounds):
        _curveball_round(replay, chain)
        overlaps.append(float((replay & block).sum()) / (int(block.sum()) * 3))
    assert torch.equal(masks, replay) and rounds > 5
    changes = [abs(a - b) for a, b in zip(overlaps[4:-1], overlaps[5:], strict=True)]
    assert changes[-1] < 0.002 and all(change >= 0.002 for change in changes[:-1])


def test_nm_null_draws_positions_at_random_in_a_single_row_layer_too():
    block = torch.zeros(1, 160, dtype=torch.bool)
    block[0, ::2] = True  # 2:4 in 40 groups of one output
    masks = null_masks("nm", block, 6, seed=2)
    assert (masks.reshape(6, 40, 4).sum(-1) == 2).all()
    assert len({tuple(m.flatten().tolist()) for m in masks}) == 6 and not masks[:, 0, ::2].all()


def test_z_scores_by_hand():
    from topo.graph.null import z_scores

    null = [{"n_edges": 9, "gini": 1.0, "path": 2.0, "path_se": 0.1}, {"n_edges": 9, "gini": 2.0, "path": 2.0,
                                                                       "path_se": 0.2},
            {"n_edges": 9, "gini": 3.0, "path": float("nan")}]
    rows = z_scores({"n_edges": 10, "path_se": 0.3, "gini": 5.0, "path": 4.0}, null)
    # gini: mean 2, sample std 1 (n − 1 in the denominator), z = (5 − 2) / 1; path: two finite samples, std 0
    assert rows == {"gini_null_mean": 2.0, "gini_null_std": 1.0, "gini_z": 3.0,
                    "path_null_mean": 2.0, "path_null_std": 0.0}
    assert z_scores({"gini": 5.0}, null[:2])["gini_z"] == pytest.approx(3.5 / 0.5 ** 0.5)  # two samples suffice
    assert z_scores({"gini": 5.0}, null[:1]) == {}  # one sample has no spread
    assert z_scores({"gini": float("inf"), "path": 4.0}, null) == {"path_null_mean": 2.0, "path_null_std": 0.0}
    # a spread is a spread relative to the mean's size: 1e-7 around 1e6 is none, 1.5e-12 around 0.5 is one
    assert "x_z" not in z_scores({"x": 1e6}, [{"x": 1e6}, {"x": 1e6 + 1.4e-7}])
    assert "x_z" in z_scores({"x": 0.5}, [{"x": 0.5}, {"x": 0.5 + 2.2e-12}])


def test_er_masks_are_boolean_and_empty_blocks_give_empty_masks():
    generator = torch.Generator().manual_seed(0)
    masks = er_masks(torch.rand(6, 5) < 0.4, 3, generator)
    assert masks.dtype == torch.bool and masks.shape == (3, 6, 5)
    empty = er_masks(torch.zeros(4, 4, dtype=torch.bool), 2, generator)
    assert empty.dtype == torch.bool and not empty.any() and empty.shape == (2, 4, 4)


def test_null_masks_take_two_samples_or_more_and_seed_zero_by_default():
    block = torch.rand(8, 8, generator=torch.Generator().manual_seed(0)) < 0.4
    assert null_masks("er", block, 2).shape == (2, 8, 8)
    with pytest.raises(ConfigError, match="at least 2 samples"):
        null_masks("er", block, 1)
    assert torch.equal(null_masks("degree", block, 3), null_masks("degree", block, 3, seed=0))


def test_the_nm_null_places_a_groups_weights_uniformly_within_it():
    from topo.graph.null import nm_masks

    block = torch.zeros(1, 16, dtype=torch.bool)
    block[0, ::4] = True  # one active weight in each of four groups of four
    masks = nm_masks(block, 4, 4000, torch.Generator().manual_seed(0))
    assert (masks.view(4000, 4, 4).sum(-1) == 1).all()
    frequency = masks.float().mean(0).view(4, 4)  # each position of each group: 1/4 (binomial sd 0.007)
    assert torch.allclose(frequency, torch.full((4, 4), 0.25), atol=0.03)



def test_null_graphs_estimate_their_paths_from_as_many_sources_as_the_observed_graph(monkeypatch, tmp_path):
    import topo.analyze as analyze
    from topo.graph import bipartite_graph, metrics
    from topo.graph.build import GraphSource

    calls = []
    summarize = metrics.summarize
    monkeypatch.setattr(metrics, "summarize", lambda graph, *a, **k: calls.append(k.get("path_sources"))
                        or summarize(graph, *a, **k))
    mask = np.random.default_rng(3).random((12, 20)) < 0.4
    source = GraphSource(mask, bipartite_graph)
    observed = metrics.summarize(bipartite_graph(mask), path_sources=8)
    calls.clear()
    rows = metrics.null_rows(source, observed, "er", 3, seed=1, path_sources=8)
    assert calls == [8, 8, 8] and np.isfinite(rows["mean_shortest_path_z"])
    calls.clear()
    metrics.null_rows(source, observed, "er", 2, seed=1)
    assert calls == [None, None]  # exact unless told
    monkeypatch.setattr(analyze, "EXACT_PATH_LIMIT", 16)  # the layer's 32 nodes are "large": sampled, nulls too
    monkeypatch.setattr(analyze, "DEFAULT_PATH_SOURCES", 5)
    calls.clear()
    analyze.analyze_model(torch.nn.Sequential(torch.nn.Linear(20, 12)), null="er", null_samples=2, progress=False)
    assert calls == [5, 5]  # its two null graphs, sampled as the observed graph is


def test_a_groups_ranks_are_a_stable_sorts_with_ties_by_position():
    from topo.graph.null import _ranks_within

    keys = torch.rand(500, 8, generator=torch.Generator().manual_seed(0))
    keys[0] = torch.tensor([0.5, 0.5, 0.1, 0.5, 0.9, 0.1, 0.2, 0.5])  # ties: the earlier position ranks first
    assert _ranks_within(keys[0]).tolist() == [3, 4, 0, 5, 7, 1, 2, 6]
    assert torch.equal(_ranks_within(keys).long(), keys.argsort(dim=-1, stable=True).argsort(dim=-1))
    assert _ranks_within(keys).dtype == torch.uint8  # a byte a rank: N:M groups of a 4096 × 11008 matrix
    wide = torch.rand(5, 7, 16, generator=torch.Generator().manual_seed(1))  # past the pairwise size: argsort,
    assert torch.equal(_ranks_within(wide), wide.argsort(dim=-1, stable=True).argsort(dim=-1))  # along the last


def test_node_blocks_are_the_longest_runs_within_the_entry_bound():
    from topo.graph.bitsets import _node_blocks

    indptr = np.array([0, 3, 5, 9, 10, 10, 16])  # neighbour counts 3, 2, 4, 1, 0, 6
    # 3 + 2 fill five entries; 4 + 1 + 0 fill five; the last node's six exceed the bound and go alone
    assert _node_blocks(indptr, 5) == [(0, 2), (2, 5), (5, 6)]
    assert _node_blocks(indptr, 100) == [(0, 6)] and _node_blocks(indptr, 1) == [(0, 1), (1, 2), (2, 3), (3, 5),
                                                                                    (5, 6)]


@pytest.mark.parametrize("kind", ["er", "nm"])
def test_null_masks_drawn_in_batches_are_the_masks_drawn_at_once(kind):
    from topo.graph.null import iter_null_masks

    block = torch.zeros(24, 32, dtype=torch.bool).reshape(24, 8, 4)
    block = block.scatter_(-1, torch.rand(24, 8, 4, generator=torch.Generator().manual_seed(2)).topk(2, -1).indices,
                           True).reshape(24, 32)
    batches = list(iter_null_masks(kind, block, 7, seed=5, per_batch=3))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert torch.equal(torch.cat(batches), null_masks(kind, block, 7, seed=5))


def test_degree_null_batches_each_run_their_own_chain_keeping_the_margins():
    from topo.graph.null import iter_null_masks

    block = torch.rand(20, 30, generator=torch.Generator().manual_seed(3)) < 0.3
    batches = list(iter_null_masks("degree", block, 5, seed=1, per_batch=2))
    masks = torch.cat(batches)
    assert [len(b) for b in batches] == [2, 2, 1]
    assert (masks.sum(2) == block.sum(1)).all() and (masks.sum(1) == block.sum(0)).all()
    assert torch.equal(batches[0], degree_masks(block, 2, torch.Generator().manual_seed(1))[0])
    with pytest.raises(ConfigError, match="per_batch=0"):
        iter_null_masks("degree", block, 5, per_batch=0)
    assert torch.equal(torch.cat(list(iter_null_masks("er", block, 3))), null_masks("er", block, 3, seed=0))


def test_null_rows_on_the_cpu_hold_one_null_graph_at_a_time(monkeypatch):
    from topo.graph import bipartite_graph, metrics
    from topo.graph.build import GraphSource

    block = np.zeros((16, 32), dtype=bool).reshape(16, 8, 4)
    np.put_along_axis(block, np.random.default_rng(4).random((16, 8, 4)).argsort(-1)[..., :2], True, -1)
    source = GraphSource(block.reshape(16, 32), bipartite_graph)
    observed = metrics.summarize(bipartite_graph(source.block))
    at_once = metrics.null_rows(source, observed, "nm", 4, seed=3)
    sizes, draw = [], metrics.iter_null_masks

    def recorded(*args):
        for batch in draw(*args):
            sizes.append(len(batch))
            yield batch
    monkeypatch.setattr(metrics, "iter_null_masks", recorded)
    monkeypatch.setattr(metrics, "NULL_BATCH_BYTES", 512 * metrics.NULL_BYTES_PER_WEIGHT)  # one 512-weight block
    assert metrics.null_rows(source, observed, "nm", 4, seed=3) == at_once and sizes == [1, 1, 1, 1]
    sizes.clear()
    monkeypatch.setattr(metrics, "NULL_BATCH_BYTES", 3 * 512 * metrics.NULL_BYTES_PER_WEIGHT)
    metrics.null_rows(source, observed, "nm", 4, seed=3)
    assert sizes == [3, 1]
