"""Sparse products on every core (topo.graph.products) against scipy's, and the solvers that use them."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse
import torch

from topo.graph.bitsets import csr_index_dtype, csr_of
from topo.graph.products import csr_product


def test_the_product_equals_scipys_for_vectors_and_blocks_whatever_the_threads(monkeypatch):
    import topo.graph.products as products

    monkeypatch.setattr(products, "THREADED_FROM", 0)  # torch's kernel even for this small matrix
    matrix = scipy.sparse.random(300, 200, density=0.1, format="csr", random_state=0)
    rng = np.random.default_rng(0)
    vector, block = rng.standard_normal(200), rng.standard_normal((200, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's beta and invariant-check warnings are not the user's
        product = csr_product(matrix)
    assert np.allclose(product(vector), matrix @ vector, rtol=1e-13, atol=1e-13)
    assert np.allclose(product(block), matrix @ block, rtol=1e-13, atol=1e-13)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = product(vector)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(alone, product(vector))  # one thread per row: the same sums on any number of threads
    assert product(vector.astype(np.float32)).dtype == np.float64


def test_the_csr_index_width_is_int32_exactly_while_every_offset_and_index_fits_below_two_to_the_31(monkeypatch):
    # int32's largest value is 2³¹ − 1: a row offset can reach nnz, an index the width − 1, indptr's length rows + 1
    assert csr_index_dtype(2**31 - 1, (10, 10)) == np.int32
    assert csr_index_dtype(2**31, (10, 10)) == np.int64
    assert csr_index_dtype(5, (2**31 - 1, 2**31 - 1)) == np.int32
    assert csr_index_dtype(5, (2**31, 3)) == np.int64
    assert csr_index_dtype(5, (3, 2**31)) == np.int64
    from topo.graph import bitsets, products

    mask = np.random.default_rng(0).random((300, 200)) < 0.1
    monkeypatch.setattr(bitsets, "csr_index_dtype", lambda nnz, shape: np.int64)  # as above 2³¹ non-zeros
    wide = csr_of(mask)
    assert wide.indptr.dtype == wide.indices.dtype == np.int64
    monkeypatch.setattr(products, "THREADED_FROM", 0)  # torch's kernel takes int64 indices as they are
    vector = np.random.default_rng(1).standard_normal(200)
    np.testing.assert_allclose(csr_product(wide)(vector), mask @ vector, rtol=1e-12)


def test_products_keep_the_shape_of_a_matrix_whose_last_row_and_column_are_empty(monkeypatch):
    import topo.graph.products as products

    monkeypatch.setattr(products, "THREADED_FROM", 0)  # torch's kernel: its CSR tensor takes the shape given
    dense = np.random.default_rng(2).random((40, 30)) < 0.2
    dense[-1], dense[:, -1] = False, False  # nothing in the last row or column to infer the shape from
    vector = np.random.default_rng(3).standard_normal(30)
    np.testing.assert_allclose(csr_product(scipy.sparse.csr_array(dense))(vector), dense @ vector, rtol=1e-13)


def test_a_dense_square_graphs_product_is_its_adjacency_times_the_vector():
    from topo.graph.products import adjacency_product

    upper = np.triu(np.random.default_rng(5).random((60, 60)) < 0.7, 1)
    adjacency = upper | upper.T  # dense enough to be held dense were it bipartite, but it is not: no split
    vector = np.random.default_rng(6).standard_normal(60)
    np.testing.assert_allclose(adjacency_product(adjacency)(vector), adjacency @ vector, rtol=1e-13)


def test_the_search_by_products_finds_the_bit_parallel_searchs_distances():
    from topo.graph import bitsets
    from topo.graph.products import sampled_bfs_by_products, sampled_bfs_by_products_torch

    rng = np.random.default_rng(1)
    for n_in, n_out, density in ((30, 20, 0.05), (30, 20, 0.4), (64, 64, 0.02)):
        block = rng.random((n_out, n_in)) < density
        n = n_in + n_out
        adjacency = np.zeros((n, n), dtype=bool)
        adjacency[n_in:, :n_in], adjacency[:n_in, n_in:] = block, block.T
        sources = np.sort(rng.choice(n, size=17, replace=False))
        expected = bitsets.sampled_bfs(adjacency, sources)
        for split in (n_in, None):  # as a bipartite block, and as any square adjacency
            found = sampled_bfs_by_products(adjacency, sources, split)
            assert all(np.array_equal(a, b) for a, b in zip(found, expected, strict=True))
            on_torch = sampled_bfs_by_products_torch(torch.from_numpy(adjacency), sources, split)
            assert all(np.array_equal(a, b) for a, b in zip(on_torch, expected, strict=True))


def test_dense_graphs_are_searched_by_products_with_the_same_estimate(monkeypatch):
    import topo.graph.metrics as metrics
    from topo.graph import layered_graph

    block = np.random.default_rng(2).random((40, 60)) < 0.5
    graph = layered_graph([block])
    by_products = metrics.sampled_shortest_path(graph, sources=30)
    monkeypatch.setattr(metrics, "PRODUCTS_FROM", 2.0)  # never: the bit-parallel search
    assert metrics.sampled_shortest_path(graph, sources=30) == by_products
    calls = []
    monkeypatch.setattr(metrics, "PRODUCTS_FROM", 0.3)
    monkeypatch.setattr(metrics, "sampled_bfs_by_products",
                        lambda *args: calls.append(args) or (np.ones(30), np.ones(30)))
    metrics.sampled_shortest_path(graph, sources=30)
    assert len(calls) == 1 and calls[0][2] == 60  # the biadjacency block, inputs first


def test_below_the_threshold_the_product_is_scipys_exactly():
    matrix = scipy.sparse.random(30, 20, density=0.2, format="csr", random_state=1)
    vector = np.arange(20.0)
    assert np.array_equal(csr_product(matrix)(vector), matrix @ vector)  # scipy's own sums, bit for bit


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_graph_is_searched_on_its_device_with_the_same_estimate(monkeypatch):
    import topo.graph.metrics as metrics
    from topo.graph import layered_graph

    block = np.random.default_rng(3).random((300, 500)) < 0.02
    graph = layered_graph([block])
    expected = metrics.sampled_shortest_path(graph, sources=64)
    monkeypatch.setattr(metrics, "sampled_bfs_by_products", None)  # the host searches are not called
    monkeypatch.setattr(metrics.bitsets, "sampled_bfs", None)
    assert metrics.sampled_shortest_path(graph.torch("cuda"), sources=64) == expected


def test_a_dense_bipartite_blocks_products_equal_the_csr_products_and_the_same_lambda2(monkeypatch):
    from topo.graph import products
    from topo.graph.spectral import lambda2_scipy

    rng = np.random.default_rng(4)
    for n_out, n_in, density in ((180, 140, 0.5), (180, 140, 0.2)):  # held dense, and through CSR
        block = rng.random((n_out, n_in)) < density
        n = n_in + n_out
        adjacency = np.zeros((n, n), dtype=bool)
        adjacency[n_in:, :n_in], adjacency[:n_in, n_in:] = block, block.T
        vector = rng.standard_normal(n)
        expected = adjacency.astype(np.float64) @ vector
        np.testing.assert_allclose(products.adjacency_product(adjacency, n_in)(vector), expected, rtol=1e-12)
        forward, backward = products.dense_or_csr_products(block)
        np.testing.assert_allclose(forward(vector[:n_in]), block @ vector[:n_in], rtol=1e-12)
        np.testing.assert_allclose(backward(vector[n_in:]), block.T @ vector[n_in:], rtol=1e-12)
        assert lambda2_scipy(adjacency, 64, n_in) == pytest.approx(lambda2_scipy(adjacency, 64), rel=1e-10)
        assert lambda2_scipy(adjacency, 64, n_in) == pytest.approx(lambda2_scipy(adjacency, n), rel=1e-9)
    calls = []
    original = products.csr_product
    monkeypatch.setattr(products, "csr_product", lambda matrix: calls.append(1) or original(matrix))
    for density, through_csr in ((0.5, False), (0.2, True)):  # either side of DENSE_BLOCK_FROM
        block = rng.random((30, 20)) < density
        adjacency = np.zeros((50, 50), dtype=bool)
        adjacency[20:, :20], adjacency[:20, 20:] = block, block.T
        for build, argument in ((products.dense_or_csr_products, (block,)),
                                (products.adjacency_product, (adjacency, 20))):
            calls.clear()
            build(*argument)
            assert bool(calls) == through_csr


def test_lambda2_of_a_path_comes_from_the_shift_invert_solve_and_then_from_the_dense_one(monkeypatch):
    # a path's small eigenvalues 2(1 − cos(πk/n)) cluster near 0: plain Lanczos does not converge in its restarts
    import scipy.sparse.linalg

    from topo.graph.spectral import lambda2_scipy

    n = 300
    path = np.zeros((n, n), dtype=bool)
    path[np.arange(n - 1), np.arange(1, n)] = path[np.arange(1, n), np.arange(n - 1)] = True
    expected = 2 * (1 - np.cos(np.pi / n))
    shifts = []
    original = scipy.sparse.linalg.eigsh

    def spy(*args, **kwargs):
        shifts.append(kwargs.get("sigma"))
        return original(*args, **kwargs)

    monkeypatch.setattr(scipy.sparse.linalg, "eigsh", spy)
    assert lambda2_scipy(path) == pytest.approx(expected, rel=1e-9)
    assert shifts[0] is None and -0.01 < shifts[1] < 0  # the plain solve gave up; the shift sits just below 0

    def no_convergence(*args, **kwargs):
        raise scipy.sparse.linalg.ArpackNoConvergence("no convergence", np.zeros(0), np.zeros((0, 0)))

    monkeypatch.setattr(scipy.sparse.linalg, "eigsh", no_convergence)
    assert lambda2_scipy(path) == pytest.approx(expected, rel=1e-9)  # the dense solve


def test_lambda2_by_lanczos_equals_the_dense_solve_where_lambda2_is_not_well_separated():
    # a sparse random graph: λ2 sits at the edge of the bulk, which a loose Lanczos tolerance misses by 0.1
    import scipy.sparse.csgraph

    from topo.graph.spectral import lambda2_scipy

    upper = np.triu(np.random.default_rng(0).random((400, 400)) < 0.02, 1)
    adjacency = upper | upper.T
    assert scipy.sparse.csgraph.connected_components(adjacency)[0] == 1
    assert lambda2_scipy(adjacency, 64) == pytest.approx(lambda2_scipy(adjacency, 400), rel=1e-9)


def test_lambda2_of_a_cycle_comes_from_lanczos_alone_and_of_a_path_from_the_shift_invert_solve(monkeypatch):
    # neither needs the dense solve: a cycle's repeated λ2 is found by the plain Lanczos, a path's by shift-invert
    import scipy.sparse.linalg

    from topo.graph import spectral

    monkeypatch.setattr(spectral, "_lambda2_lapack", None)  # any call fails
    shifts = []
    original = scipy.sparse.linalg.eigsh
    monkeypatch.setattr(scipy.sparse.linalg, "eigsh",
                        lambda *args, **kwargs: shifts.append(kwargs.get("sigma")) or original(*args, **kwargs))
    n = 301
    nodes = np.arange(n)
    cycle = np.zeros((n, n), dtype=bool)
    cycle[nodes, (nodes + 1) % n] = cycle[(nodes + 1) % n, nodes] = True
    assert spectral.lambda2_scipy(cycle) == pytest.approx(2 * (1 - np.cos(2 * np.pi / n)), rel=1e-9)
    assert shifts == [None]
    path = cycle.copy()
    path[0, n - 1] = path[n - 1, 0] = False
    assert spectral.lambda2_scipy(path) == pytest.approx(2 * (1 - np.cos(np.pi / n)), rel=1e-9)
    assert shifts[1] is None and shifts[2] is not None
    path = path.copy()  # a new array (csr_of keeps the CSR form of the last array it saw)
    path[0, 2] = path[2, 0] = True  # a triangle at one end: not bipartite, so D + A's spectrum is not D − A's
    laplacian = np.diag(path.sum(1).astype(np.float64)) - path
    assert spectral.lambda2_scipy(path) == pytest.approx(np.linalg.eigvalsh(laplacian)[1], rel=1e-9)
    assert shifts[4] is not None
