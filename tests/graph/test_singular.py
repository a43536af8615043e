"""Spectral gap, Ramanujan gap and weighted spectral gap against numpy on hand-made and random graphs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch

from topo.graph import bipartite_graph, square_graph, summarize
from topo.graph.singular import (
    DENSE_LIMIT,
    batch_spectra,
    bipartite_spectrum,
    square_spectrum,
    top_singular_values,
    top_singular_values_torch,
    weighted_spectral_gap,
)


def numpy_sigmas(block: np.ndarray) -> np.ndarray:
    return np.linalg.svd(block.astype(np.float64), compute_uv=False)


def test_complete_bipartite_has_one_singular_value():
    block = np.ones((6, 9), dtype=bool)  # K(9, 6): σ1 = √(6·9), σ2 = 0
    spectrum = bipartite_spectrum(block)
    assert spectrum["spectral_gap"] == pytest.approx(math.sqrt(54))
    # d̄_out = 9 (each output reads every input), d̄_in = 6: √8 + √5 − 0
    assert spectrum["ramanujan_gap"] == pytest.approx(math.sqrt(8) + math.sqrt(5))
    assert spectrum["dead_inputs"] == spectrum["dead_outputs"] == 0


def test_block_diagonal_has_equal_top_singular_values_and_isolated_nodes_are_removed():
    block = np.zeros((8, 10), dtype=bool)
    block[:4, :5] = block[4:, 5:] = True  # two K(5, 4): σ1 = σ2 = √20
    spectrum = bipartite_spectrum(block)
    assert spectrum["spectral_gap"] == pytest.approx(0.0, abs=1e-12)
    assert spectrum["ramanujan_gap"] == pytest.approx(math.sqrt(4) + math.sqrt(3) - math.sqrt(20))
    padded = np.zeros((10, 13), dtype=bool)
    padded[:8, :10] = block  # two dead outputs and three dead inputs: counted, and left out of the mean degrees
    again = bipartite_spectrum(padded)
    assert again["dead_outputs"] == 2 and again["dead_inputs"] == 3
    assert again["ramanujan_gap"] == pytest.approx(spectrum["ramanujan_gap"])


@pytest.mark.parametrize("seed", range(5))
def test_random_bipartite_and_square_graphs_equal_numpy(seed):
    rng = np.random.default_rng(seed)
    block = rng.random((40 + seed, 70)) < 0.15
    sigma = numpy_sigmas(block[block.any(1)][:, block.any(0)])
    kept = block[block.any(1)][:, block.any(0)]
    expected = math.sqrt(kept.sum(1).mean() - 1) + math.sqrt(kept.sum(0).mean() - 1) - sigma[1]
    for backend, graph in (("cpu", bipartite_graph(block)), ("torch", bipartite_graph(torch.from_numpy(block)))):
        summary = summarize(graph, backend)
        assert summary["spectral_gap"] == pytest.approx(sigma[0] - sigma[1], rel=1e-10)
        assert summary["ramanujan_gap"] == pytest.approx(expected, rel=1e-10)
    square = square_graph(rng.random((60, 60)) < 0.1)
    adjacency = square.adjacency.astype(np.float64)
    values = np.linalg.eigvalsh(adjacency)
    degrees = adjacency.sum(1)
    mu = max(values[-2], -values[0])
    found = square_spectrum(square.adjacency)
    assert found["spectral_gap"] == pytest.approx(values[-1] - values[-2], rel=1e-10)
    assert found["ramanujan_gap"] == pytest.approx(2 * math.sqrt(degrees[degrees > 0].mean() - 1) - mu, rel=1e-10)
    assert square_spectrum(torch.from_numpy(square.adjacency))["spectral_gap"] == pytest.approx(found["spectral_gap"])


@pytest.mark.slow
def test_large_layers_use_lanczos_and_agree_with_the_dense_solve():
    rng = np.random.default_rng(0)
    block = (rng.random((DENSE_LIMIT + 200, DENSE_LIMIT + 50)) < 0.05).astype(np.float64)
    assert top_singular_values(block) == pytest.approx(numpy_sigmas(block)[:2], rel=1e-9)
    tall = (rng.random((DENSE_LIMIT + 300, DENSE_LIMIT + 10)) < 0.05).astype(np.float64)
    assert top_singular_values(tall) == pytest.approx(numpy_sigmas(tall)[:2], rel=1e-9)


@pytest.mark.slow
def test_large_cpu_tensors_take_the_lanczos_path_with_the_same_values():
    rng = np.random.default_rng(2)
    block = rng.random((DENSE_LIMIT + 100, DENSE_LIMIT + 40)) < 0.05
    sigma = numpy_sigmas(block[block.any(1)][:, block.any(0)])
    found = bipartite_spectrum(torch.from_numpy(block))
    assert found == bipartite_spectrum(block)
    assert found["spectral_gap"] == pytest.approx(sigma[0] - sigma[1], rel=1e-9)
    weights = rng.standard_normal(block.shape).astype(np.float32)
    magnitudes = np.abs(weights.astype(np.float64) * block)
    sigma = numpy_sigmas(magnitudes[block.any(1)][:, block.any(0)])
    assert weighted_spectral_gap(torch.from_numpy(weights), torch.from_numpy(block)) == pytest.approx(
        sigma[0] - sigma[1], rel=1e-9)


def test_weighted_spectral_gap_reads_the_active_weights_magnitudes():
    rng = np.random.default_rng(1)
    weights = rng.standard_normal((30, 20))
    mask = rng.random((30, 20)) < 0.3
    sigma = numpy_sigmas(np.abs(weights * mask)[mask.any(1)][:, mask.any(0)])
    assert weighted_spectral_gap(weights, mask) == pytest.approx(sigma[0] - sigma[1], rel=1e-10)
    assert weighted_spectral_gap(torch.from_numpy(weights * mask)) == pytest.approx(sigma[0] - sigma[1], rel=1e-10)
    assert math.isnan(weighted_spectral_gap(np.zeros((3, 3))))


def test_weighted_spectral_gap_of_empty_rows_and_columns_non_finite_weights_bf16_and_integer_masks():
    rng = np.random.default_rng(7)
    weights = rng.standard_normal((12, 9))
    mask = rng.random((12, 9)) < 0.5
    mask[3], mask[:, 5] = False, False  # an output and an input with no active weight: dropped, σ unchanged
    weights[0, mask[0].argmax()] = np.nan  # non-finite weights inside the mask are inactive too
    weights[1, mask[1].argmax()] = np.inf
    active = mask & np.isfinite(weights)
    sigma = numpy_sigmas(np.where(active, np.abs(weights), 0.0))
    gap = sigma[0] - sigma[1]
    assert weighted_spectral_gap(weights, mask) == pytest.approx(gap, rel=1e-10)
    assert weighted_spectral_gap(weights, mask.astype(np.uint8)) == pytest.approx(gap, rel=1e-10)  # 0/1 mask
    assert weighted_spectral_gap(weights.T, mask.T) == pytest.approx(gap, rel=1e-10)  # wider than tall
    low = torch.from_numpy(np.where(active, weights, 0.0)).to(torch.bfloat16)  # read in float32
    rounded = numpy_sigmas(low.float().abs().numpy().astype(np.float64))
    assert weighted_spectral_gap(low, torch.from_numpy(mask)) == pytest.approx(rounded[0] - rounded[1], rel=1e-6)


def test_an_empty_graph_has_nan_gaps():
    spectrum = bipartite_spectrum(np.zeros((3, 4), dtype=bool))
    assert math.isnan(spectrum["spectral_gap"]) and spectrum["dead_inputs"] == 4


def test_square_and_bipartite_spectra_of_graphs_just_above_the_dense_limit():
    # the Lanczos paths, checked against numpy's dense solves on graphs kept small enough for a quick test
    rng = np.random.default_rng(4)
    n = DENSE_LIMIT + 20
    upper = np.triu(rng.random((n, n)) < 0.01, 1)
    adjacency = upper | upper.T
    values = np.linalg.eigvalsh(adjacency.astype(np.float64))
    degrees = adjacency.sum(1)
    mu = max(values[-2], -values[0])
    expected = {"spectral_gap": values[-1] - values[-2],
                "ramanujan_gap": 2 * math.sqrt(degrees[degrees > 0].mean() - 1) - mu}
    found = square_spectrum(adjacency)
    assert found == pytest.approx(expected, rel=1e-9)
    assert square_spectrum(torch.from_numpy(adjacency)) == found  # a CPU tensor takes the same path
    assert values[-2] > -values[0]  # here μ is λ2; below, the smallest eigenvalue's magnitude
    upper = np.triu(np.random.default_rng(0).random((n, n)) < 0.01, 1)
    adjacency = upper | upper.T
    values = np.linalg.eigvalsh(adjacency.astype(np.float64))
    degrees = adjacency.sum(1)
    assert -values[0] > values[-2]
    assert square_spectrum(adjacency)["ramanujan_gap"] == pytest.approx(
        2 * math.sqrt(degrees[degrees > 0].mean() - 1) + values[0], rel=1e-9)
    block = rng.random((DENSE_LIMIT + 6, DENSE_LIMIT + 2)) < 0.01
    assert top_singular_values(block.astype(np.float64)) == pytest.approx(numpy_sigmas(block)[:2], rel=1e-9)


def test_square_spectrum_falls_back_to_the_dense_solve_when_lanczos_does_not_converge(monkeypatch):
    def no_convergence(*args, **kwargs):
        raise scipy.sparse.linalg.ArpackNoConvergence("no convergence", np.zeros(0), np.zeros((0, 0)))

    upper = np.triu(np.random.default_rng(2).random((DENSE_LIMIT + 10,) * 2) < 0.01, 1)
    adjacency = upper | upper.T
    expected = square_spectrum(adjacency)
    monkeypatch.setattr(scipy.sparse.linalg, "eigsh", no_convergence)
    assert square_spectrum(adjacency) == pytest.approx(expected, rel=1e-9)


def test_square_spectrum_of_a_single_edge_by_hand():
    from topo.graph.singular import square_spectrum

    # eigenvalues ±1: λ1 − λ2 = 2; mean degree 1, μ = max(λ2, −λn) = 1, so 2√(1 − 1) − 1 = −1
    assert square_spectrum(np.array([[0, 1], [1, 0]])) == {"spectral_gap": 2.0, "ramanujan_gap": -1.0}


def test_square_spectrum_above_the_dense_limit_equals_the_dense_solve():
    from topo.graph.singular import DENSE_LIMIT, square_spectrum

    # a bipartite graph as a square one: λn = −λ1, so only the largest *algebraic* eigenvalues give λ2
    rng = np.random.default_rng(0)
    half = DENSE_LIMIT // 2 + 40
    block = rng.random((half, half)) < 0.02
    adjacency = np.zeros((2 * half, 2 * half), dtype=bool)
    adjacency[:half, half:], adjacency[half:, :half] = block, block.T
    values = np.linalg.eigvalsh(adjacency.astype(np.float64))
    degrees = adjacency.sum(1)
    expected_gap = values[-1] - values[-2]
    expected_ramanujan = 2 * np.sqrt(degrees[degrees > 0].mean() - 1) - max(values[-2], -values[0])
    found = square_spectrum(adjacency)
    assert found["spectral_gap"] == pytest.approx(expected_gap, rel=1e-8)
    assert found["ramanujan_gap"] == pytest.approx(expected_ramanujan, rel=1e-8)


@pytest.mark.parametrize("shape", [(40, 300), (300, 40), (1, 50), (50, 1), (64, 64)])
def test_singular_values_from_the_gram_of_the_smaller_side_equal_numpy(shape):
    matrix = np.random.default_rng(sum(shape)).random(shape) * (np.random.default_rng(1).random(shape) < 0.4)
    expected = np.pad(numpy_sigmas(matrix)[:2], (0, 1))[:2]
    assert top_singular_values_torch(torch.from_numpy(matrix)) == pytest.approx(tuple(expected), rel=1e-10)


def test_singular_values_from_the_gram_keep_a_repeated_top_value():
    block = np.kron(np.eye(2), np.ones((3, 5)))  # two equal complete blocks: σ1 = σ2 = √15
    assert top_singular_values_torch(torch.from_numpy(block)) == pytest.approx((math.sqrt(15), math.sqrt(15)))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_spectra_on_cuda_equal_the_cpu_solvers():
    rng = np.random.default_rng(3)
    block = rng.random((300, 1500)) < 0.3
    weights = rng.standard_normal(block.shape)
    on_cpu = bipartite_spectrum(block)
    on_cuda = bipartite_spectrum(torch.from_numpy(block).cuda())
    assert on_cuda == pytest.approx(on_cpu, rel=1e-9)
    assert weighted_spectral_gap(torch.from_numpy(weights), torch.from_numpy(block).cuda()) == pytest.approx(
        weighted_spectral_gap(weights, block), rel=1e-9)


def _batch_inputs(adjacency: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    import networkx as nx

    degrees = adjacency.sum(2).numpy()
    components = np.array([nx.number_connected_components(nx.from_numpy_array(a.numpy())) for a in adjacency])
    return degrees, components


def test_batched_square_spectra_equal_the_per_graph_solve_connected_or_not():
    import networkx as nx

    n = 60
    rng = np.random.default_rng(4)
    connected = np.triu(rng.random((n, n)) < 0.2, 1)
    twin = nx.to_numpy_array(nx.disjoint_union(nx.cycle_graph(30), nx.cycle_graph(30))) > 0  # λ1 = λ2 = 2
    isolated = connected.copy()
    isolated[:5] = isolated[:, :5] = False
    graphs = [connected | connected.T, twin, isolated | isolated.T, np.zeros((n, n), bool)]
    adjacency = torch.from_numpy(np.stack(graphs))
    got = batch_spectra(adjacency, None, *_batch_inputs(adjacency))
    assert got[1]["spectral_gap"] == pytest.approx(0.0, abs=1e-9)
    for graph, values in zip(graphs, got, strict=True):
        assert values == pytest.approx(square_spectrum(graph), rel=1e-9, abs=1e-9, nan_ok=True)


def test_batched_bipartite_spectra_equal_the_per_graph_solve_on_both_sides():
    rng = np.random.default_rng(5)
    for outputs, inputs in ((40, 70), (70, 40)):
        blocks = [rng.random((outputs, inputs)) < 0.15, np.kron(np.eye(2, dtype=bool), np.ones((outputs // 2,
                                                                                                 inputs // 2), bool))]
        sparse = rng.random((outputs, inputs)) < 0.02  # dead nodes and, likely, several components
        blocks.append(sparse)
        adjacency = torch.zeros(len(blocks), inputs + outputs, inputs + outputs, dtype=torch.bool)
        for i, block in enumerate(blocks):
            adjacency[i, inputs:, :inputs] = torch.from_numpy(block)
            adjacency[i, :inputs, inputs:] = torch.from_numpy(block.T)
        got = batch_spectra(adjacency, inputs, *_batch_inputs(adjacency))
        for block, values in zip(blocks, got, strict=True):
            assert values == pytest.approx(bipartite_spectrum(block), rel=1e-9, abs=1e-9)


def test_top_singular_values_of_a_small_sparse_matrix_and_of_an_empty_one():
    matrix = np.diag([3.0, 2.0, 1.0])
    matrix[0, 1] = 1.0
    expected = numpy_sigmas(matrix)[:2]
    assert top_singular_values(scipy.sparse.csr_array(matrix)) == pytest.approx(expected, rel=1e-12)  # Gram path
    assert top_singular_values(np.zeros((0, 5))).tolist() == [0.0, 0.0]  # no rows: no singular value, zeros
    rng = np.random.default_rng(0)
    for _ in range(6):  # the sixth rank-one matrix's Gram matrix has a second eigenvalue of −5e-16: σ2 is 0, not NaN
        rank_one = np.outer(rng.standard_normal(4), rng.standard_normal(6))
    assert top_singular_values(rank_one)[1] == 0.0


def test_top_singular_values_of_a_wide_matrix_above_the_dense_limit():
    block = np.random.default_rng(8).random((DENSE_LIMIT + 2, DENSE_LIMIT + 6)) < 0.01  # more columns than rows:
    assert top_singular_values(block.astype(np.float64)) == pytest.approx(numpy_sigmas(block)[:2], rel=1e-9)  # B·Bᵀ


def test_top_singular_values_fall_back_to_the_full_svd_when_lanczos_does_not_converge(monkeypatch):
    import scipy.sparse.linalg

    def never(*args, **kwargs):
        raise scipy.sparse.linalg.ArpackNoConvergence("no convergence", np.zeros(0), np.zeros((0, 0)))

    matrix = np.random.default_rng(9).random((DENSE_LIMIT + 3, DENSE_LIMIT + 5)) * 0.5
    expected = numpy_sigmas(matrix)[:2]
    monkeypatch.setattr(scipy.sparse.linalg, "eigsh", never)
    assert top_singular_values(matrix) == pytest.approx(expected, rel=1e-12)
    assert top_singular_values(scipy.sparse.csr_array(matrix)) == pytest.approx(expected, rel=1e-12)


def test_a_large_rank_one_matrix_has_a_second_singular_value_of_zero():
    rng = np.random.default_rng(1)
    rank_one = np.outer(rng.random(DENSE_LIMIT + 4), rng.random(DENSE_LIMIT + 9))  # Lanczos on its Gram operator
    sigma = top_singular_values(rank_one)
    assert sigma[0] == pytest.approx(numpy_sigmas(rank_one)[0], rel=1e-9) and sigma[1] == pytest.approx(0, abs=1e-6)
