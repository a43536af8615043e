"""Batched whole-run analysis and the torch kernels: same numbers as the per-graph CPU backend, closed forms."""

from __future__ import annotations

import math
import warnings

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import torch

from topo.errors import ConfigError, EmptyGraphWarning
from topo.graph import metrics_table, summarize
from topo.graph.backends import TorchBackend
from topo.graph.batched import all_pairs_bfs, batch_size, closed_walks, count_batch, triangle_dtype
from topo.graph.build import Graph
from topo.graph.spectral import lambda2_batch, lambda2_dense, lambda2_lanczos


def random_snapshots(epochs: int, seed: int = 0) -> list[tuple[int, dict[str, np.ndarray]]]:
    """A small LSTM-and-MLP-like run: gate blocks, a bipartite layer, a convolution, with sparse and empty cases."""
    rng = np.random.default_rng(seed)
    snapshots = []
    for epoch in range(epochs):
        density = 0.3 / (epoch + 1)
        snapshots.append((epoch, {
            "lstm.weight_hh_l0": rng.random((4 * 40, 40)) < density,
            "fc.weight": rng.random((12, 30)) < 2 * density,
            "conv.weight": rng.random((6, 5, 3, 3)) < density / 3,
            "empty.weight_hh_l0": np.zeros((3 * 7, 7), bool),
        }))
    return snapshots


def test_batched_table_equals_per_graph_cpu_table():
    snapshots = random_snapshots(6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyGraphWarning)
        per_graph = metrics_table(snapshots, backend="cpu", progress=False)
        # a small batch budget splits every graph size into several batches
        batched = metrics_table(snapshots, device="cpu", batch_bytes=200_000, progress=False)
    pd.testing.assert_frame_equal(per_graph[["run", "epoch", "layer", "graph", "metric"]],
                                  batched[["run", "epoch", "layer", "graph", "metric"]])
    np.testing.assert_allclose(batched["value"], per_graph["value"], rtol=1e-6, atol=1e-9)
    assert per_graph["value"].isna().sum() == batched["value"].isna().sum() > 0


def test_batched_table_warns_like_the_per_graph_one():
    with pytest.warns(EmptyGraphWarning, match="empty.weight_hh_l0"):
        metrics_table({"empty.weight_hh_l0": np.zeros((7, 7), bool)}, device="cpu", progress=False)


def test_batch_size_respects_the_memory_budget():
    assert batch_size(1024, 1 << 30) == (1 << 30) // (12 * 1024 * 1024)
    assert batch_size(100_000, 1 << 20) == 1


def test_bfs_counts_and_components_on_a_batch():
    graphs = [nx.path_graph(9), nx.disjoint_union(nx.complete_graph(4), nx.cycle_graph(5)), nx.empty_graph(9)]
    adjacency = torch.stack([torch.from_numpy(nx.to_numpy_array(g).astype(bool)) for g in graphs])
    bfs = all_pairs_bfs(adjacency)
    assert bfs.n_components.tolist() == [1, 2, 9]
    path_sum = sum(abs(i - j) for i in range(9) for j in range(9))
    cycle_sum = 2 * 5 * (1 + 2)  # each of 5 nodes: two at distance 1, two at distance 2
    assert bfs.distance_sum.tolist() == [path_sum, 12 + cycle_sum, 0]
    assert bfs.reachable_pairs.tolist() == [72, 12 + 20, 0]


def closed_form_graphs() -> list[tuple[str, nx.Graph, float]]:
    """Graphs whose λ2 is known exactly (Chung 1997): path, cycle, complete, star; barbell by dense solve."""
    barbell = nx.barbell_graph(30, 10)
    laplacian = nx.laplacian_matrix(barbell).toarray().astype(float)
    return [
        ("path-2100", nx.path_graph(2100), 2 * (1 - math.cos(math.pi / 2100))),
        ("cycle-700", nx.cycle_graph(700), 2 * (1 - math.cos(2 * math.pi / 700))),
        ("complete-300", nx.complete_graph(300), 300.0),
        ("star-400", nx.star_graph(399), 1.0),
        ("barbell", barbell, float(np.linalg.eigvalsh(laplacian)[1])),
    ]


@pytest.mark.parametrize("name,graph,expected", closed_form_graphs(), ids=[c[0] for c in closed_form_graphs()])
def test_torch_lambda2_never_returns_an_unconverged_value(name, graph, expected):
    adjacency = torch.from_numpy(nx.to_numpy_array(graph).astype(bool))
    assert TorchBackend().lambda2(adjacency) == pytest.approx(expected, rel=1e-6)
    assert lambda2_batch(adjacency[None], dense_limit=0)[0] == pytest.approx(expected, rel=1e-6)


def test_lanczos_reports_the_path_graph_unconverged_rather_than_a_wrong_value():
    adjacency = torch.from_numpy(nx.to_numpy_array(nx.path_graph(2100)).astype(bool))
    values, converged = lambda2_lanczos(adjacency[None], max_iter=100)
    assert not converged[0] and math.isnan(values[0])


@pytest.mark.slow
def test_lanczos_agrees_with_dense_solve_on_random_batches():
    rng = np.random.default_rng(5)
    for n, density in [(120, 0.05), (300, 0.2), (257, 0.01)]:
        masks = rng.random((6, n, n)) < density
        adjacency = torch.from_numpy(masks | masks.transpose(0, 2, 1))
        adjacency &= ~torch.eye(n, dtype=torch.bool)
        connected = [i for i in range(6) if nx.is_connected(nx.from_numpy_array(adjacency[i].numpy()))]
        batch = adjacency[connected]
        np.testing.assert_allclose(lambda2_batch(batch, dense_limit=0), lambda2_dense(batch).numpy(), rtol=1e-8)


@pytest.mark.slow
def test_triangle_counts_exact_above_2048_nodes():
    n = 2053
    adjacency = ~torch.eye(n, dtype=torch.bool)
    exact = n * (n - 1) * (n - 2)
    # the dtype the CUDA path uses at this size, run here on the CPU
    assert float(closed_walks(adjacency[None], triangle_dtype(torch.device("cuda"), n))[0]) == exact
    assert triangle_dtype(torch.device("cuda"), n) == torch.float32
    assert triangle_dtype(torch.device("cuda"), 2048) == torch.float16
    assert summarize(Graph(adjacency), "torch")["global_clustering"] == 1.0


def test_count_batch_on_graphs_of_one_and_zero_nodes():
    one = count_batch(torch.zeros(2, 1, 1, dtype=torch.bool))
    assert one.n_components.tolist() == [1, 1] and np.isnan(one.lambda2).all()
    zero = count_batch(torch.zeros(1, 0, 0, dtype=torch.bool))
    assert zero.reachable_pairs.tolist() == [0]
    edge = torch.tensor([[[False, True], [True, False]], [[False, False], [False, False]]])
    two = count_batch(edge)  # one edge: λ2 = 2; no edge: two components, λ2 undefined
    assert two.n_components.tolist() == [1, 2] and two.lambda2[0] == pytest.approx(2.0) and np.isnan(two.lambda2[1])
    assert two.degrees.tolist() == [[1, 1], [0, 0]] and two.reachable_pairs.tolist() == [2, 0]


def test_batched_table_equals_per_graph_with_nulls_small_worlds_and_input_gates():
    rng = np.random.default_rng(3)
    snapshots = [(epoch, {"lstm.weight_ih_l0": rng.random((4 * 12, 10)) < 0.3,
                          "lstm.weight_hh_l0": rng.random((4 * 12, 12)) < 0.3,
                          "fc.weight": nm_mask(rng, 16, 16)}) for epoch in range(2)]
    for null in ("er", "nm"):
        per_graph = metrics_table(snapshots, backend="cpu", progress=False, null=null, null_samples=3,
                                  small_world_graphs=2, seed=5)
        batched = metrics_table(snapshots, device="cpu", batch_bytes=50_000, progress=False, null=null,
                                null_samples=3, small_world_graphs=2, seed=5)
        pd.testing.assert_frame_equal(per_graph[["run", "epoch", "layer", "graph", "metric"]],
                                      batched[["run", "epoch", "layer", "graph", "metric"]])
        np.testing.assert_allclose(batched["value"], per_graph["value"], rtol=1e-6, atol=1e-9)
        graphs = set(batched["graph"])
        assert "lstm.weight_ih_l0[f]" in graphs and "lstm.weight_hh_l0[o]" in graphs  # the input weight by gate
        assert {"sigma", "omega"} <= set(batched["metric"])
        assert batched["metric"].str.endswith("_z").any()
        if null == "nm":  # only the 2:4 layer has an nm null
            assert set(batched[batched["metric"].str.endswith("_null_mean")]["graph"]) == {"fc.weight"}


def nm_mask(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    keys = rng.random((rows, cols // 4, 4))
    keep = np.argsort(keys, axis=-1)[..., :2]
    mask = np.zeros((rows, cols // 4, 4), bool)
    np.put_along_axis(mask, keep, True, axis=-1)
    return mask.reshape(rows, cols)


def test_batched_table_reads_weights_as_their_family_says():
    from topo.families import Family

    rng = np.random.default_rng(8)
    family = Family(transposed=frozenset({"h.0.attn.c_attn.weight"}), heads=2)
    snapshots = [(0, {"h.0.attn.c_attn.weight": rng.random((8, 24)) < 0.4})]  # Conv1D (in 8, out 24)
    per_graph = metrics_table(snapshots, backend="cpu", progress=False, family=family, heads=True)
    batched = metrics_table(snapshots, device="cpu", progress=False, family=family, heads=True)
    pd.testing.assert_frame_equal(per_graph, batched, check_exact=False, rtol=1e-6)
    assert set(batched["graph"]) == {f"h.0.attn.c_attn.weight[{p}.h{h}]" for p in "qkv" for h in (0, 1)}


def test_the_cpu_batch_budget_is_512_mib():
    from topo.graph.metrics import default_batch_bytes

    assert default_batch_bytes(torch.device("cpu")) == 512 * 2**20


def test_four_cycles_of_a_large_complete_bipartite_graph_are_exact():
    from math import comb

    from topo.graph.batched import bipartite_cycle_counts

    n_in, n_out = 257, 301  # C(257, 2)·C(301, 2) = 1,485,254,400 four-cycles: beyond float32's exact integers
    adjacency = torch.zeros(1, n_in + n_out, n_in + n_out, dtype=torch.bool)
    adjacency[0, n_in:, :n_in] = adjacency[0, :n_in, n_in:] = True
    cycles, paths = bipartite_cycle_counts(adjacency, n_in)
    assert cycles.item() == comb(n_in, 2) * comb(n_out, 2)
    assert paths.item() == n_in * n_out * (n_in - 1) * (n_out - 1)  # every edge, one more edge at each end


def test_summarize_many_equals_summarize_graph_by_graph_across_sizes_and_kinds():
    from topo.graph import bipartite_graph, square_graph, summarize_many

    rng = np.random.default_rng(7)
    heads = [bipartite_graph(rng.random((8, 40)) < p) for p in (0.3, 0.05, 0.0)]  # one sparse, one empty
    squares = [square_graph(rng.random((50, 50)) < 0.08) for _ in range(2)]
    twin = np.kron(np.eye(2, dtype=bool), rng.random((25, 25)) < 0.3)  # two components
    graphs = [g.torch() for g in [*heads, squares[0], bipartite_graph(rng.random((12, 30)) < 0.2), squares[1],
                                  square_graph(twin)]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyGraphWarning)
        expected = [summarize(g, "torch") for g in graphs]
        got = summarize_many(graphs, batch_bytes=3 * 50 * 50 * 8)  # the squares in batches of one and two
    for theirs, ours in zip(expected, got, strict=True):
        assert ours.keys() == theirs.keys()
        assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12, nan_ok=True)


def test_the_per_graph_table_uses_the_backend_it_is_given():
    snapshot = {"w": np.random.default_rng(0).random((12, 12)) < 0.3}
    with pytest.raises(ConfigError, match="unknown graph backend 'gpu'"):
        metrics_table(snapshot, backend="gpu", progress=False)
    torch_rows = metrics_table(snapshot, backend="torch", progress=False)
    assert torch_rows["value"].tolist() == pytest.approx(metrics_table(snapshot, backend="cpu", progress=False)[
        "value"].tolist(), nan_ok=True)


def test_a_null_table_defaults_to_20_samples_of_seed_0():
    snapshot = {"w": np.random.default_rng(1).random((12, 12)) < 0.3}
    default = metrics_table(snapshot, null="er", progress=False)
    assert default.equals(metrics_table(snapshot, null="er", null_samples=20, seed=0, progress=False))
    assert not default.equals(metrics_table(snapshot, null="er", null_samples=21, seed=0, progress=False))
    assert not default.equals(metrics_table(snapshot, null="er", null_samples=20, seed=1, progress=False))


def test_closed_walks_are_float64_and_exact_beyond_float32_integers():
    n = 1000
    complete = ~torch.eye(n, dtype=torch.bool)
    walks = closed_walks(complete[None])
    assert walks.dtype == torch.float64 and walks.item() == n * (n - 1) * (n - 2)  # 997,002,000 > 2²⁴
