"""The Figure-5 metrics against networkx and hand-worked values, on both backends."""

from __future__ import annotations

import math
import warnings

import networkx as nx
import numpy as np
import pytest
import torch

from topo.errors import ConfigError, EmptyGraphWarning
from topo.graph import (
    METRICS,
    Graph,
    algebraic_connectivity,
    bipartite_clustering,
    bipartite_graph,
    degree_gini,
    global_clustering,
    mean_shortest_path,
    small_world,
    square_graph,
    summarize,
)
from topo.graph.backends import TorchBackend


def from_nx(graph: nx.Graph, name: str = "") -> Graph:
    n = graph.number_of_nodes()
    adjacency = np.zeros((n, n), bool)
    index = {v: i for i, v in enumerate(graph.nodes)}
    for u, v in graph.edges:
        if u != v:
            adjacency[index[u], index[v]] = adjacency[index[v], index[u]] = True
    return Graph(adjacency, name)


def reference_path(graph: nx.Graph) -> tuple[float, float]:
    """networkx's average shortest path per component, weighted by ordered pairs; and the reachable fraction."""
    n = graph.number_of_nodes()
    total, pairs = 0.0, 0
    for nodes in nx.connected_components(graph):
        s = len(nodes)
        if s > 1:
            total += nx.average_shortest_path_length(graph.subgraph(nodes)) * s * (s - 1)
            pairs += s * (s - 1)
    return (total / pairs if pairs else math.nan), pairs / (n * (n - 1))


def reference_gini(graph: nx.Graph) -> float:
    d = np.array([deg for _, deg in graph.degree()], dtype=float)
    return np.abs(d[:, None] - d[None, :]).sum() / (2 * len(d) * d.sum())


def graphs() -> list[tuple[str, nx.Graph]]:
    cases = [
        ("complete", nx.complete_graph(12)),
        ("star", nx.star_graph(15)),
        ("path", nx.path_graph(20)),
        ("ring-lattice", nx.watts_strogatz_graph(30, 4, 0.0, seed=0)),
        ("small-world", nx.watts_strogatz_graph(60, 6, 0.2, seed=1)),
        ("two-components", nx.disjoint_union(nx.complete_graph(5), nx.cycle_graph(7))),
        ("with-isolated", nx.disjoint_union(nx.path_graph(6), nx.empty_graph(3))),
        ("edgeless", nx.empty_graph(8)),
        ("barbell", nx.barbell_graph(6, 3)),
        ("triangle", nx.complete_graph(3)),
    ]
    rng = np.random.default_rng(0)
    for i in range(45):
        n = int(rng.integers(5, 90))
        p = float(rng.choice([0.02, 0.05, 0.1, 0.3, 0.7]))
        cases.append((f"gnp-{i}", nx.gnp_random_graph(n, p, seed=int(rng.integers(1e9)))))
    return cases


CASES = graphs()
BACKENDS = ["cpu", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,graph", CASES, ids=[c[0] for c in CASES])
def test_metrics_equal_networkx(name, graph, backend):
    ours = from_nx(graph, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyGraphWarning)
        lam = algebraic_connectivity(ours, backend)
        gini = degree_gini(ours)
        clustering = global_clustering(ours, backend)
        path = mean_shortest_path(ours, backend)
    expected_lambda = nx.algebraic_connectivity(graph, method="lanczos", tol=1e-12, seed=0)
    assert lam == pytest.approx(expected_lambda, rel=1e-6, abs=1e-9)
    assert clustering == pytest.approx(nx.transitivity(graph), rel=1e-6, abs=1e-12)
    mean, fraction = reference_path(graph)
    assert fraction == pytest.approx(path.reachable_fraction, rel=1e-12)
    if math.isnan(mean):
        assert math.isnan(path.mean)
    else:
        assert path.mean == pytest.approx(mean, rel=1e-6)
    if graph.number_of_edges():
        assert gini == pytest.approx(reference_gini(graph), rel=1e-6, abs=1e-12)
    else:
        assert math.isnan(gini)


def test_hand_worked_path_graph_of_four_nodes():
    g = from_nx(nx.path_graph(4))
    # Laplacian eigenvalues of P4 are 2 - 2cos(kπ/4): λ2 = 2 - √2.
    assert algebraic_connectivity(g) == pytest.approx(2 - math.sqrt(2), rel=1e-12)
    # degrees 1,2,2,1: Σ|di-dj| = 8 over ordered pairs, / (2·4·6) = 1/6.
    assert degree_gini(g) == pytest.approx(1 / 6, rel=1e-12)
    # distances 1,2,3,1,2,1 over 6 pairs: 10/6.
    assert mean_shortest_path(g).mean == pytest.approx(10 / 6)
    assert global_clustering(g) == 0.0


def test_hand_worked_triangle_with_pendant():
    g = square_graph(np.array([[0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]], dtype=bool))
    # one triangle; triples Σ d(d-1)/2 = 1 + 1 + 3 + 0 = 5 → 3/5.
    assert global_clustering(g) == pytest.approx(3 / 5)
    assert summarize(g)["n_edges"] == 4


def test_star_gini_and_complete_gini():
    assert degree_gini(from_nx(nx.complete_graph(7))) == pytest.approx(0.0, abs=1e-12)
    # star with n nodes: hub degree n-1, leaves 1 → G = (n-2)/(2(n-1))·... check against the definition.
    star = nx.star_graph(9)
    assert degree_gini(from_nx(star)) == pytest.approx(reference_gini(star))


def test_empty_graph_gives_nan_with_warning_never_a_crash():
    empty = Graph(np.zeros((0, 0), bool), "empty")
    with pytest.warns(EmptyGraphWarning, match="empty"):
        result = summarize(empty)
    assert math.isnan(result["algebraic_connectivity"]) and math.isnan(result["degree_gini"])
    assert math.isnan(result["mean_shortest_path"])
    edgeless = Graph(np.zeros((5, 5), bool), "edgeless")
    with pytest.warns(EmptyGraphWarning):
        result = summarize(edgeless)
    assert result["algebraic_connectivity"] == 0.0
    assert result["reachable_fraction"] == 0.0 and math.isnan(result["mean_shortest_path"])


def test_disconnected_graph_has_zero_connectivity_exactly():
    g = from_nx(nx.disjoint_union(nx.complete_graph(30), nx.complete_graph(30)))
    assert algebraic_connectivity(g) == 0.0
    assert algebraic_connectivity(g, "torch") == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("n,p", [(700, 0.05), (900, 0.01)])
def test_large_graph_paths_agree_with_dense_solution(n, p):
    graph = nx.gnp_random_graph(n, p, seed=3)
    g = from_nx(graph)
    adjacency = g.adjacency.astype(float)
    laplacian = np.diag(adjacency.sum(1)) - adjacency
    expected = np.linalg.eigvalsh(laplacian)[1] if nx.is_connected(graph) else 0.0
    assert algebraic_connectivity(g, "cpu") == pytest.approx(expected, rel=1e-6, abs=1e-9)
    lobpcg = TorchBackend(dense_limit=100)
    if nx.is_connected(graph):
        assert lobpcg.lambda2(torch.from_numpy(g.adjacency)) == pytest.approx(expected, rel=1e-6)


def test_torch_and_cpu_backends_agree_on_summaries():
    rng = np.random.default_rng(7)
    for _ in range(5):
        n = int(rng.integers(50, 300))
        mask = rng.random((n, n)) < rng.choice([0.01, 0.05, 0.2])
        cpu = summarize(square_graph(mask), "cpu")
        gpu_style = summarize(square_graph(torch.from_numpy(mask)), "torch")
        for key, value in cpu.items():
            assert gpu_style[key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), key


def test_small_world_of_watts_strogatz_graph():
    lattice_like = from_nx(nx.watts_strogatz_graph(200, 8, 0.05, seed=0))
    random_graph = from_nx(nx.gnm_random_graph(200, 800, seed=0))
    sw = small_world(lattice_like, n_random=5, seed=0)
    rnd = small_world(random_graph, n_random=5, seed=0)
    assert sw["sigma"] > 2.0 > rnd["sigma"]
    assert rnd["omega"] > 0.7 and abs(sw["omega"]) < 0.5  # ω: −1 lattice, 0 small world, +1 random
    assert small_world(lattice_like, n_random=3, seed=4) == small_world(lattice_like, n_random=3, seed=4)


def random_bipartite_masks() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    masks = [np.ones((2, 2), bool), np.ones((3, 2), bool), np.eye(4, dtype=bool), np.zeros((3, 4), bool)]
    for _ in range(20):
        n_out, n_in = (int(v) for v in rng.integers(2, 40, 2))
        masks.append(rng.random((n_out, n_in)) < float(rng.choice([0.05, 0.2, 0.5, 0.9])))
    return masks


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index", range(24))
def test_bipartite_metrics_equal_networkx(index, backend):
    mask = random_bipartite_masks()[index]
    graph = bipartite_graph(mask, f"layer{index}")
    n_out, n_in = mask.shape
    reference = nx.Graph()
    reference.add_nodes_from(range(n_in + n_out))
    reference.add_edges_from((n_in + o, i) for o, i in zip(*np.nonzero(mask), strict=True))
    expected = nx.bipartite.robins_alexander_clustering(reference)
    assert bipartite_clustering(graph, backend) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyGraphWarning)
        summary = summarize(graph, backend)
    assert set(summary) == {*METRICS["bipartite"], "mask_density"} and "global_clustering" not in summary
    assert summary["bipartite_clustering"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert summary["density"] == pytest.approx(mask.sum() / mask.size)
    if mask.any():
        fan_in = mask.sum(1).astype(float)
        expected_gini = np.abs(fan_in[:, None] - fan_in[None, :]).sum() / (2 * len(fan_in) * fan_in.sum())
        assert summary["fan_in_gini"] == pytest.approx(expected_gini, rel=1e-9, abs=1e-12)
        fan_out = mask.sum(0).astype(float)
        expected_gini = np.abs(fan_out[:, None] - fan_out[None, :]).sum() / (2 * len(fan_out) * fan_out.sum())
        assert summary["fan_out_gini"] == pytest.approx(expected_gini, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("shape", [(23, 40), (40, 23)])
def test_bipartite_four_cycles_counted_in_bands_from_the_diagonal_equal_networkx(shape, monkeypatch):
    from topo.graph import backends

    monkeypatch.setattr(backends, "ROWS_PER_CHUNK", 5)  # bands of the smaller side's Gram matrix, a short last one
    mask = np.random.default_rng(sum(shape)).random(shape) < 0.3
    reference = nx.Graph()
    reference.add_nodes_from(range(sum(shape)))
    reference.add_edges_from((shape[1] + o, i) for o, i in zip(*np.nonzero(mask), strict=True))
    expected = nx.bipartite.robins_alexander_clustering(reference)
    assert bipartite_clustering(bipartite_graph(mask), "cpu") == pytest.approx(expected, rel=1e-12)


def test_bipartite_clustering_hand_worked():
    # K_{2,3}: 3 four-cycles (a pair of inputs shared by both outputs); 6 edges × (3-1)(2-1) = 12 three-paths
    assert bipartite_clustering(bipartite_graph(np.ones((2, 3), bool))) == pytest.approx(1.0)
    # a path of four nodes: one 3-path, no 4-cycle
    path = np.array([[1, 1], [0, 1]], bool)  # out0–in0, out0–in1, out1–in1
    assert bipartite_clustering(bipartite_graph(path)) == 0.0
    # K_{2,2} plus a pendant input on output 0: 1 four-cycle; 3-paths: 4 + 2 through the pendant = 6... counted:
    mask = np.array([[1, 1, 1], [1, 1, 0]], bool)
    # edges (d_o − 1)(d_i − 1): o0 (deg 3) with i0, i1 (deg 2): 2 each; with i2 (deg 1): 0; o1 (deg 2): 1 each
    assert bipartite_clustering(bipartite_graph(mask)) == pytest.approx(4 * 1 / (2 + 2 + 0 + 1 + 1))
    with pytest.raises(ConfigError, match="bipartite clustering of graph sq: defined for bipartite graphs"):
        bipartite_clustering(square_graph(np.ones((3, 3), bool), "sq"))


def test_fan_in_and_fan_out_gini_by_hand_and_as_summarize_reports_them():
    from topo.graph import bipartite_graph, fan_in_gini, fan_out_gini

    mask = np.array([[1, 1, 1, 1], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]], bool)  # fan-in 4, 1, 1, 1
    graph = bipartite_graph(mask)
    # Gini of (1, 1, 1, 4): Σ|xi − xj| / (2 n² mean) = (2 · 3 · 3) / (2 · 16 · 7/4) = 18 / 56
    assert fan_in_gini(graph) == pytest.approx(18 / 56)
    assert fan_out_gini(graph) == pytest.approx(18 / 56)  # fan-out of the inputs: 4, 1, 1, 1 too
    lopsided = bipartite_graph(np.array([[1, 1, 0, 0], [1, 1, 0, 0]], bool))  # fan-in 2, 2; fan-out 2, 2, 0, 0
    assert fan_in_gini(lopsided) == 0.0 and fan_out_gini(lopsided) == pytest.approx(0.5)
    summary = summarize(lopsided)
    assert summary["fan_in_gini"] == fan_in_gini(lopsided) and summary["fan_out_gini"] == fan_out_gini(lopsided)
    for gini, metric in ((fan_in_gini, "fan-in Gini"), (fan_out_gini, "fan-out Gini")):
        with pytest.raises(ConfigError, match=f"{metric} of graph sq: defined for bipartite graphs"):
            gini(square_graph(np.eye(3, dtype=bool), "sq"))
        with pytest.warns(EmptyGraphWarning, match="degree Gini of graph fc is undefined"):
            assert math.isnan(gini(bipartite_graph(np.zeros((2, 3), bool), "fc")))


def _sampled_reference(graph: nx.Graph, sources: int, seed: int) -> tuple[float, float, float]:
    """sampled_shortest_path restated from its docstring with networkx's distances, the same sources drawn."""
    n = graph.number_of_nodes()
    chosen = np.sort(np.random.default_rng(seed).choice(n, size=min(sources, n), replace=False))
    lengths = [nx.single_source_shortest_path_length(graph, int(c)) for c in chosen]
    d = np.array([sum(v for k, v in ls.items() if k != c) for c, ls in zip(chosen, lengths, strict=True)], float)
    r = np.array([len(ls) - 1 for ls in lengths], float)
    s = len(chosen)
    mean = d.sum() / r.sum()
    variance = ((d - mean * r) ** 2).sum() / (s * (s - 1)) / r.mean() ** 2 * (1 - s / n)
    return mean, r.sum() / (s * (n - 1)), math.sqrt(variance)


def test_sampled_shortest_path_is_the_ratio_estimator_with_its_standard_error():
    from topo.graph.metrics import sampled_shortest_path

    lollipop = nx.lollipop_graph(6, 9)  # a clique and a long tail: distances vary a lot between sources
    lollipop.add_nodes_from([15, 16])  # two isolated nodes: some pairs unreachable
    graph = from_nx(lollipop)
    for sources, seed in ((2, 1), (5, 0), (8, 3), (12, 7)):
        mean, fraction, error = _sampled_reference(lollipop, sources, seed)
        got = sampled_shortest_path(graph, sources, seed=seed)
        assert got.mean == pytest.approx(mean) and got.reachable_fraction == pytest.approx(fraction)
        assert got.standard_error == pytest.approx(error) and 0 < got.reachable_fraction < 1
    assert sampled_shortest_path(graph, 6) == sampled_shortest_path(graph, 6, seed=0)  # seeded by default
    whole = sampled_shortest_path(graph, 100)  # every node a source: the exact value, no error
    assert whole.standard_error == 0.0 and whole.mean == pytest.approx(mean_shortest_path(graph).mean)
    single = sampled_shortest_path(graph, 1, seed=2)
    assert math.isnan(single.standard_error) and single.mean > 0


def test_sampled_shortest_path_from_more_sources_than_one_word_holds():
    from topo.graph.metrics import sampled_shortest_path

    graph = nx.connected_watts_strogatz_graph(150, 4, 0.2, seed=3)
    for sources in (64, 65, 129):  # one, two and three 64-bit words of sources
        mean, fraction, error = _sampled_reference(graph, sources, 5)
        got = sampled_shortest_path(from_nx(graph), sources, seed=5)
        assert (got.mean, got.reachable_fraction, got.standard_error) == pytest.approx((mean, fraction, error))


def test_sampled_shortest_path_of_graphs_without_paths_is_nan_with_a_warning():
    from topo.graph.metrics import sampled_shortest_path

    with pytest.warns(EmptyGraphWarning, match="mean shortest path of graph tiny is undefined \\(1 node\\(s\\)\\)"):
        one = sampled_shortest_path(Graph(np.zeros((1, 1), bool), "tiny"), 4)
    assert math.isnan(one.mean) and math.isnan(one.reachable_fraction) and math.isnan(one.standard_error)
    with pytest.warns(EmptyGraphWarning, match="mean shortest path of graph isolated is undefined .no reachable pair"):
        none = sampled_shortest_path(Graph(np.zeros((5, 5), bool), "isolated"), 3)
    assert math.isnan(none.mean) and none.reachable_fraction == 0.0 and math.isnan(none.standard_error)
    pair = Graph(np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], bool))  # 2 of 6 ordered pairs reachable, at 1
    exact = sampled_shortest_path(pair, 3)
    assert exact.mean == 1.0 and exact.reachable_fraction == pytest.approx(2 / 6) and exact.standard_error == 0.0
    edge = sampled_shortest_path(Graph(np.array([[0, 1], [1, 0]], bool)), 2)  # the smallest graph with a path
    assert (edge.mean, edge.reachable_fraction, edge.standard_error) == (1.0, 1.0, 0.0)


def test_small_world_coefficients_follow_their_formulas():
    import random

    import igraph

    graph = from_nx(nx.watts_strogatz_graph(60, 6, 0.1, seed=1))
    got = small_world(graph, n_random=3, seed=5)
    base = graph.to_igraph()
    igraph.set_random_number_generator(random.Random(5))  # the same rewirings: σ and ω restated by hand
    try:
        rewired = []
        for _ in range(3):
            copy = base.copy()
            copy.rewire(10 * copy.ecount(), "simple")
            rewired.append(copy)
    finally:
        igraph.set_random_number_generator(random)
    c_r = np.mean([g.transitivity_undirected(mode="zero") for g in rewired])
    l_r = np.mean([g.average_path_length(directed=False, unconn=True) for g in rewired])
    c, length = global_clustering(graph), mean_shortest_path(graph).mean
    k = max(4, 2 * round(2 * graph.n_edges / graph.n_nodes / 2))  # mean degree 6: the lattice of K = 6
    assert got["sigma"] == pytest.approx((c / c_r) / (length / l_r))
    assert got["omega"] == pytest.approx(l_r / length - c / (3 * (k - 2) / (4 * (k - 1))))
    assert small_world(graph, n_random=3) == small_world(graph, n_random=3, seed=0)
    empty = small_world(Graph(np.zeros((4, 4), bool)), n_random=2)
    assert math.isnan(empty["sigma"]) and math.isnan(empty["omega"])


def test_gini_of_a_layer_without_edges_is_nan_and_a_square_graph_has_no_fan_in():
    from topo.graph import fan_in_gini, fan_out_gini

    empty = bipartite_graph(np.zeros((3, 4), bool), "dead")
    with pytest.warns(EmptyGraphWarning, match="graph dead"):
        assert math.isnan(fan_in_gini(empty))
    with pytest.warns(EmptyGraphWarning, match="graph dead"):
        assert math.isnan(fan_out_gini(empty))
    with pytest.raises(ConfigError, match="^fan-in Gini of graph <unnamed>: defined for bipartite"):
        fan_in_gini(square_graph(np.eye(3, dtype=bool)))
    with pytest.raises(ConfigError, match="^fan-out Gini of graph <unnamed>: defined for bipartite"):
        fan_out_gini(square_graph(np.eye(3, dtype=bool)))


def test_components_by_the_search_from_one_node_or_by_scipy_equal_networkx(monkeypatch):
    from topo.graph import backends

    path_with_isolated = nx.path_graph(10)
    path_with_isolated.add_nodes_from(range(10, 13))
    star_with_tail = nx.star_graph(5)
    star_with_tail.add_edge(1, 6)  # reached only through the first band of the frontier of leaves
    monkeypatch.setattr(backends, "REACH_ROWS", 2)  # frontiers of more than one band
    cases = [nx.path_graph(40), star_with_tail, path_with_isolated,
             nx.disjoint_union(nx.complete_graph(3), nx.complete_graph(4)), nx.empty_graph(5),
             nx.complete_bipartite_graph(3, 4)]
    for graph in cases:
        adjacency = nx.to_numpy_array(graph, dtype=bool)
        assert backends.CPU.n_components(adjacency) == nx.number_connected_components(graph)
    labelled = []
    scipy_labels = backends.scipy.sparse.csgraph.connected_components
    monkeypatch.setattr(backends.scipy.sparse.csgraph, "connected_components",
                        lambda *args, **kwargs: labelled.append(1) or scipy_labels(*args, **kwargs))
    for connected in (path_with_isolated, nx.path_graph(40), star_with_tail):
        backends.CPU.n_components(nx.to_numpy_array(connected, dtype=bool))
    assert not labelled  # one component and isolated nodes: told by the search alone
    backends.CPU.n_components(nx.to_numpy_array(nx.empty_graph(3), dtype=bool))
    backends.CPU.n_components(nx.to_numpy_array(cases[3], dtype=bool))
    assert len(labelled) == 2  # no edge, or several components: labelled by scipy


def test_the_csr_form_of_a_dense_mask_equals_scipys_across_bands(monkeypatch):
    import scipy.sparse

    from topo.graph import bitsets

    monkeypatch.setattr(bitsets, "CSR_BAND_ROWS", 3)  # bands end inside the matrix, and a last short band
    rng = np.random.default_rng(5)
    for shape, density in [((10, 7), 0.4), ((11, 11), 0.0), ((1, 5), 1.0), ((0, 4), 0.5)]:
        dense = rng.random(shape) < density
        for matrix in (dense, dense[:, ::-1]):  # a strided view too
            got, expected = bitsets._dense_to_csr(matrix), scipy.sparse.csr_array(matrix)
            assert got.shape == expected.shape and got.has_sorted_indices
            np.testing.assert_array_equal(got.indptr, expected.indptr)
            np.testing.assert_array_equal(got.indices, expected.indices)
            assert got.indptr.dtype == got.indices.dtype == expected.indices.dtype == np.int32  # scipy's width
            assert got.data.all() and got.data.dtype == bool


def test_sampled_breadth_first_search_from_more_than_64_sources():
    from topo.graph.bitsets import sampled_bfs

    graph = nx.connected_watts_strogatz_graph(150, 4, 0.2, seed=1)
    adjacency = nx.to_numpy_array(graph, dtype=bool)
    sources = np.arange(0, 150, 2)  # 75 sources: two machine words of them
    distances, reach = sampled_bfs(adjacency, sources)
    for index, source in enumerate(sources):
        lengths = nx.single_source_shortest_path_length(graph, int(source))
        assert distances[index] == sum(lengths.values()) and reach[index] == len(lengths) - 1


def test_all_pairs_search_in_small_node_blocks_with_isolated_nodes_and_hubs(monkeypatch):
    from topo.graph import bitsets

    graph = nx.connected_watts_strogatz_graph(140, 4, 0.3, seed=2)
    graph.add_edges_from((0, v) for v in range(2, 140, 3))  # a hub: its neighbour list alone fills several blocks
    graph.add_nodes_from(range(140, 150))                    # isolated nodes, among them the last
    adjacency = nx.to_numpy_array(graph, nodelist=range(150), dtype=bool)
    lengths = dict(nx.all_pairs_shortest_path_length(graph))
    expected = (sum(d for row in lengths.values() for d in row.values()), sum(len(row) - 1 for row in lengths.values()))
    for entries in (5, 1, 1 << 18):  # blocks of a few neighbours, of one node each, and one block for all
        monkeypatch.setattr(bitsets, "FRONTIER_BLOCK_ENTRIES", entries)
        assert bitsets.all_pairs_bfs(adjacency) == expected  # 150 sources: three words, each column on its own


def test_sampled_shortest_path_with_two_sources_and_two_nodes():
    from topo.graph.metrics import sampled_shortest_path

    path = nx.path_graph(7)
    mean, fraction, error = _sampled_reference(path, 2, 4)
    got = sampled_shortest_path(from_nx(path), 2, seed=4)
    assert got.mean == pytest.approx(mean) and got.standard_error == pytest.approx(error) and error > 0
    pair = sampled_shortest_path(Graph(np.array([[0, 1], [1, 0]], bool)), 2)
    assert pair.mean == 1.0 and pair.reachable_fraction == 1.0 and pair.standard_error == 0.0
    with pytest.warns(EmptyGraphWarning, match=r"^mean shortest path of graph two is undefined \(no reachable pair\)"):
        sampled_shortest_path(Graph(np.zeros((2, 2), bool), "two"), 2)


def test_small_world_of_complete_sparse_and_disconnected_graphs():
    import random

    import igraph

    complete = from_nx(nx.complete_graph(5))  # nothing to rewire: σ = 1 and ω = 1 − 1/C_ℓ(K = 4) = −1
    assert small_world(complete, n_random=2) == pytest.approx({"sigma": 1.0, "omega": -1.0})
    ring = from_nx(nx.cycle_graph(12))  # mean degree 2: the lattice of K = 4 still, C_ℓ = 1/2
    found = small_world(ring, n_random=2)
    assert math.isnan(found["sigma"]) or found["sigma"] == 0.0  # C = 0 (NaN where the rewirings have none either)
    assert math.isfinite(found["omega"]) and found["omega"] > 0  # ω = L_r / L − 0
    two_triangles = nx.disjoint_union(nx.complete_graph(3), nx.complete_graph(3))
    split = small_world(from_nx(two_triangles), n_random=2)  # unreachable pairs are left out of L and L_r
    # L = 1 and C = 1; each rewiring is two triangles again (L_r = 1) or a 6-cycle (L_r = 9/5), so ω = L_r − 1/C_ℓ
    assert round(split["omega"] + 2.0, 9) in {1.0, 1.4, 1.8}
    random.seed(1)  # igraph draws from Python's random module again once small_world is done
    first = igraph.Graph.Erdos_Renyi(30, 0.2).get_edgelist()
    random.seed(1)
    assert igraph.Graph.Erdos_Renyi(30, 0.2).get_edgelist() == first


def test_metrics_table_of_a_run_adds_turnover_and_exploration_and_reads_weights_as_the_run_did(tmp_path):
    import topo.sparsity as ts
    from topo.families import Family, detect
    from topo.graph import metrics_table
    from topo.record import Recorder, RunReader

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = ts.make_sparsifier("set", model, optimizer, density=0.3, zeta=0.5, seed=0)
    with Recorder(tmp_path / "run", sparsifier) as recorder:
        for epoch in range(3):
            recorder.snapshot(epoch, {})
            sparsifier.end_epoch(epoch)
    table = metrics_table(RunReader(tmp_path / "run"), run="r", progress=False)
    assert set(table.run) == {"r"}
    topology = table[table.metric.isin(["turnover", "exploration"])]
    assert sorted(topology.groupby("metric").size().items()) == [("exploration", 6), ("turnover", 4)]
    assert (topology[topology.metric == "turnover"].value > 0).all()  # SET changed every layer at every epoch
    assert set(metrics_table({"fc.weight": torch.rand(4, 4) < 0.5}, progress=False).run) == {""}

    class Stored:
        """Any object with iter_masks() is a source; its family says how its weights are read."""

        epochs = [0]
        family = detect({"h.0.attn.c_attn.weight": (8, 24)}, conv1d=["h.0.attn.c_attn.weight"])

        def iter_masks(self):
            yield 0, {"h.0.attn.c_attn.weight": torch.rand(8, 24) < 0.5}

    graphs = set(metrics_table(Stored(), progress=False).graph)
    assert graphs == {f"h.0.attn.c_attn.weight[{part}]" for part in "qkv"}
    # a family given decides over the source's; heads split only when asked
    assert set(metrics_table(Stored(), progress=False, family=Family(heads=2)).graph) == {
        "h.0.attn.c_attn.weight"}
    per_head = metrics_table({"l.q_proj.weight": torch.rand(8, 8) < 0.5}, progress=False,
                             family=Family(heads=2))
    assert set(per_head.graph) == {"l.q_proj.weight"}
    assert set(metrics_table({"l.q_proj.weight": torch.rand(8, 8) < 0.5}, progress=False, heads=True,
                             family=Family(heads=2)).graph) == {
        "l.q_proj.weight[q.h0]", "l.q_proj.weight[q.h1]"}


def test_small_world_defaults_to_ten_random_graphs():
    from topo.graph import small_world

    graph = square_graph(torch.rand(30, 30, generator=torch.Generator().manual_seed(1)) < 0.2)
    assert small_world(graph) == small_world(graph, n_random=10, seed=0)
    assert small_world(graph) != small_world(graph, n_random=11, seed=0)


def test_run_tables_name_the_run_as_asked_and_nothing_by_default(tmp_path):
    import topo.sparsity as ts
    from topo.graph.compare import degree_distributions, run_topology
    from topo.record import Recorder, RunReader

    model = torch.nn.Sequential(torch.nn.Linear(6, 6))
    sparsifier = ts.make_sparsifier("random-fixed", model, None, density=0.5, seed=0)
    with Recorder(tmp_path / "run", sparsifier) as recorder:
        recorder.snapshot(0, {})
        recorder.snapshot(1, {})
    run = RunReader(tmp_path / "run")
    for table in (run_topology(run), degree_distributions(run)):
        assert set(table.run) == {""}
    assert set(run_topology(run, "mine").run) == {"mine"}


def test_the_blas_triangle_count_of_a_dense_graph_is_exact():
    from topo.graph import backends

    upper = np.triu(np.random.default_rng(0).random((700, 700)) < 0.6, 1)
    adjacency = upper | upper.T  # 7.4e7 closed walks: past float32's exact integers, so they are summed in float64
    exact = adjacency.astype(np.int64)
    degrees = exact.sum(1)
    expected = int(((exact @ exact) * exact).sum()) / int((degrees * (degrees - 1)).sum())
    assert backends.CPU.transitivity(adjacency) == expected


def test_lambda2_of_a_dense_bipartite_graph_with_unequal_sides_equals_the_dense_solve():
    # 450 nodes: Lanczos, with the 250 × 200 block held dense (density 0.6), split at the inputs' side
    mask = np.random.default_rng(3).random((250, 200)) < 0.6
    graph = bipartite_graph(mask)
    adjacency = graph.adjacency.astype(np.float64)
    expected = np.linalg.eigvalsh(np.diag(adjacency.sum(1)) - adjacency)[1]
    assert graph.parts == (200, 250) and algebraic_connectivity(graph) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(("graph", "expected"), [
    (nx.cycle_graph(301), 2 * (1 - math.cos(2 * math.pi / 301))),  # λ2 of a cycle C_n: 2 − 2cos(2π/n), twice
    (nx.grid_2d_graph(20, 20), 2 * (1 - math.cos(math.pi / 20))),  # of a grid P_s × P_s: the path's, twice
    (nx.grid_2d_graph(17, 17, periodic=True), 2 * (1 - math.cos(2 * math.pi / 17))),  # of a torus: the cycle's, ×4
], ids=["cycle", "grid", "torus"])
def test_lambda2_of_graphs_whose_lambda2_is_repeated_is_lambda2_through_lanczos(graph, expected):
    # above the dense limit (256 nodes) λ2 comes from ARPACK, which finds one copy of a repeated eigenvalue only
    adjacency = nx.to_numpy_array(graph, dtype=bool)
    assert adjacency.shape[0] > 256
    assert algebraic_connectivity(Graph(adjacency, built=True), backend="cpu") == pytest.approx(expected, rel=1e-9)
