"""Exact computational kernels behind :mod:`topo.graph.metrics`: a CPU backend and a torch (GPU) backend.

Each backend turns a symmetric boolean adjacency (no self-loops) into the raw quantities the metrics are built
from; the conventions for empty and disconnected graphs live in :mod:`topo.graph.metrics`, not here.

* :class:`CPUBackend` picks a kernel per graph from its edge density, at crossovers measured on the development
  machine (``bench/graph_metrics.py``): triangles and all-pairs breadth-first search with dense float32 BLAS
  products on dense graphs, and bit-parallel kernels (:mod:`topo.graph.bitsets`) on sparse ones, which beat
  both BLAS and igraph's traversal there (igraph also pays ~1 µs per edge just to build its graph). λ2 from
  scipy (:func:`topo.graph.spectral.lambda2_scipy`: LAPACK, or ARPACK with a shift-invert fallback).
* :class:`TorchBackend` runs on the adjacency's device with the batched kernels of :mod:`topo.graph.batched`
  applied to a batch of one: triangles from one matrix product, all-pairs breadth-first search as boolean
  frontier products, λ2 by dense ``eigvalsh`` or Lanczos with a convergence check
  (:func:`topo.graph.spectral.lambda2_batch`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import torch

from topo.errors import ConfigError
from topo.graph import batched, bitsets
from topo.graph.spectral import lambda2_batch, lambda2_scipy

#: Rows of B·Bᵀ computed at once for the bipartite cycle count (bounds its temporaries).
ROWS_PER_CHUNK = 256


@dataclass(frozen=True)
class PathCounts:
    """Shortest-path totals over ordered pairs (u, v), u ≠ v, with v reachable from u."""

    distance_sum: float
    reachable_pairs: int


def _edge_density(adjacency: np.ndarray) -> float:
    n = adjacency.shape[0]
    return float(np.count_nonzero(adjacency)) / (n * n) if n else 0.0


@dataclass(frozen=True)
class CPUBackend:
    """numpy/scipy on the CPU.

    ``dense_limit``: largest n for which λ2 comes from a dense LAPACK solve. ``blas_triangles_from`` and
    ``blas_bfs_from``: edge densities (2m/n²) from which triangles and breadth-first search use dense float32
    matrix products (exact for 0/1 entries below 2^24) instead of the bit-parallel kernels;
    ``blas_cycles_from``: the biadjacency density from which a bipartite graph's 4-cycles come from a dense
    float32 B·Bᵀ rather than a sparse product (the sparse product costs ∝ d² of the dense one, and is about 250×
    slower per operation here: the crossover is near d = 0.06).
    """

    dense_limit: int = 256
    blas_triangles_from: float = 0.15
    blas_bfs_from: float = 0.35
    blas_cycles_from: float = 0.06
    name: str = "cpu"

    def degrees(self, adjacency: np.ndarray) -> np.ndarray:
        """Every node's degree."""
        return adjacency.sum(1, dtype=np.int64)

    def n_components(self, adjacency: np.ndarray) -> int:
        """The number of connected components (isolated nodes count).

        First a breadth-first search over the dense adjacency's rows from one node of non-zero degree (each
        node's row read once, when it joins the frontier: at most n² entries): when it reaches every node of
        non-zero degree, the graph is one component and its isolated nodes (0.04 s for a 4096 × 11008 2:4
        layer, where the CSR form and scipy's labelling take 4 s). Otherwise scipy labels the components."""
        linked = adjacency.any(1)
        if linked.any() and _reaches_all(adjacency, linked):
            return 1 + int(np.count_nonzero(~linked))
        return int(scipy.sparse.csgraph.connected_components(bitsets.csr_of(adjacency), directed=False)[0])

    def lambda2(self, adjacency: np.ndarray, split: int | None = None) -> float:
        """Second-smallest Laplacian eigenvalue of a connected graph with n >= 2 (``split``: a bipartite graph's
        first side, whose products may then come from the dense block)."""
        return lambda2_scipy(adjacency, self.dense_limit, split)

    def transitivity(self, adjacency: np.ndarray) -> float:
        """3 × triangles / connected triples = trace(A³) / Σ d(d−1); NaN when there is no connected triple."""
        if _edge_density(adjacency) >= self.blas_triangles_from:
            a = adjacency.astype(np.float32)
            closed_walks = float(((a @ a) * a).sum(dtype=np.float64))
        else:
            closed_walks = 2.0 * bitsets.triangle_edge_sum(adjacency)
        degrees = adjacency.sum(1, dtype=np.float64)
        ordered_triples = float((degrees * (degrees - 1)).sum())
        return closed_walks / ordered_triples if ordered_triples > 0 else float("nan")

    def bipartite_cycles(self, adjacency: np.ndarray, n_in: int) -> tuple[float, float]:
        """(4-cycles, 3-paths) of a bipartite graph whose first ``n_in`` nodes are one side (see
        :func:`topo.graph.batched.bipartite_cycle_counts`); float32 products, exact below 2^24."""
        block = adjacency[n_in:, :n_in]
        degree_out = block.sum(1, dtype=np.float64)
        degree_in = block.sum(0, dtype=np.float64)
        if np.count_nonzero(block) < self.blas_cycles_from * block.size:  # sparse: memory ∝ edges
            sparse = scipy.sparse.csr_array(block, dtype=np.float64)
            common = (sparse @ sparse.T).data
            pairs = float((common * (common - 1)).sum()) / 2
            through = sparse @ (degree_in - 1)
            cycles = (pairs - float((degree_out * (degree_out - 1) / 2).sum())) / 2
        else:  # a 4-cycle is two nodes of either side with two common neighbours: count on the smaller side
            side, side_degrees = (block, degree_out) if block.shape[0] <= block.shape[1] else (block.T, degree_in)
            other_t = np.ascontiguousarray(side.T, dtype=np.float32)
            pairs, through = 0.0, np.empty(block.shape[0])
            for start in range(0, side.shape[0], ROWS_PER_CHUNK):  # c = S·Sᵀ a band of rows at a time, from the
                stop = start + ROWS_PER_CHUNK                       # diagonal on (c is symmetric): half the product
                common = (side[start:stop].astype(np.float32) @ other_t[:, start:]).astype(np.float64)
                paths = common * (common - 1)
                pairs += float(paths[:, :ROWS_PER_CHUNK].sum()) / 2 + float(paths[:, ROWS_PER_CHUNK:].sum())
            for start in range(0, block.shape[0], ROWS_PER_CHUNK):
                through[start : start + ROWS_PER_CHUNK] = \
                    block[start : start + ROWS_PER_CHUNK].astype(np.float64) @ (degree_in - 1)
            cycles = (pairs - float((side_degrees * (side_degrees - 1) / 2).sum())) / 2
        return cycles, float(((degree_out - 1) * through).sum())

    def path_counts(self, adjacency: np.ndarray) -> PathCounts:
        """Exact all-pairs shortest-path totals, by breadth-first search from every node."""
        if _edge_density(adjacency) >= self.blas_bfs_from:
            return _frontier_bfs(adjacency)
        return PathCounts(*map(float, bitsets.all_pairs_bfs(adjacency)))


#: Frontier rows read at once by the search of :meth:`CPUBackend.n_components` (bounds its temporary copy).
REACH_ROWS = 1024


def _reaches_all(adjacency: np.ndarray, linked: np.ndarray) -> bool:
    """Whether the breadth-first search from the first node of ``linked`` (non-zero degree) reaches every node of
    ``linked``: each level's new nodes are those adjacent to a frontier row, read a band of rows at a time."""
    reached = np.zeros(adjacency.shape[0], dtype=bool)
    frontier = np.array([np.argmax(linked)])
    reached[frontier] = True
    while len(frontier):
        new = np.zeros_like(reached)
        for start in range(0, len(frontier), REACH_ROWS):
            new |= adjacency[frontier[start : start + REACH_ROWS]].any(0)
        new &= ~reached
        reached |= new
        frontier = np.flatnonzero(new)
    return int(np.count_nonzero(reached)) == int(np.count_nonzero(linked))


def _frontier_bfs(adjacency: np.ndarray) -> PathCounts:
    """All-pairs breadth-first search, one matrix product per level beyond the first (level 1 is A itself)."""
    a = adjacency.astype(np.float32)
    frontier = adjacency.copy()
    reached = frontier | np.eye(adjacency.shape[0], dtype=bool)
    distance_sum, pairs, level = np.count_nonzero(frontier), np.count_nonzero(frontier), 1
    while True:
        level += 1
        frontier = ((frontier.astype(np.float32) @ a) > 0) & ~reached
        newly = np.count_nonzero(frontier)
        if newly == 0:
            return PathCounts(float(distance_sum), pairs)
        distance_sum += level * newly
        pairs += newly
        reached |= frontier


@dataclass(frozen=True)
class TorchBackend:
    """Batched torch kernels on the adjacency's device, one graph at a time.

    ``dense_limit``: largest n for a dense ``eigvalsh``; Lanczos above (see :mod:`topo.graph.spectral`).
    """

    dense_limit: int = 32
    name: str = "torch"

    def degrees(self, adjacency: torch.Tensor) -> np.ndarray:
        """Every node's degree."""
        return adjacency.sum(1).cpu().numpy().astype(np.int64)

    def n_components(self, adjacency: torch.Tensor) -> int:
        """The number of connected components (isolated nodes count)."""
        return int(batched.all_pairs_bfs(adjacency[None]).n_components[0])

    def lambda2(self, adjacency: torch.Tensor, split: int | None = None) -> float:
        """Second-smallest Laplacian eigenvalue of a connected graph with n >= 2 (float64; ``split`` is not
        needed here)."""
        return float(lambda2_batch(adjacency[None], dense_limit=self.dense_limit)[0])

    def transitivity(self, adjacency: torch.Tensor) -> float:
        """3 × triangles / connected triples = trace(A³) / Σ d(d−1); NaN when there is no connected triple."""
        closed_walks = float(batched.closed_walks(adjacency[None])[0])
        degrees = adjacency.sum(1, dtype=torch.float64)
        ordered_triples = float((degrees * (degrees - 1)).sum())
        return closed_walks / ordered_triples if ordered_triples > 0 else float("nan")

    def bipartite_cycles(self, adjacency: torch.Tensor, n_in: int) -> tuple[float, float]:
        """(4-cycles, 3-paths) of a bipartite graph whose first ``n_in`` nodes are one side."""
        cycles, paths = batched.bipartite_cycle_counts(adjacency[None], n_in)
        return float(cycles[0]), float(paths[0])

    def path_counts(self, adjacency: torch.Tensor) -> PathCounts:
        """Exact all-pairs shortest-path totals, by batched frontier products."""
        bfs = batched.all_pairs_bfs(adjacency[None])
        return PathCounts(float(bfs.distance_sum[0]), int(bfs.reachable_pairs[0]))


CPU = CPUBackend()
TORCH = TorchBackend()


def pick_backend(adjacency: np.ndarray | torch.Tensor, backend: str = "auto") -> CPUBackend | TorchBackend:
    """``"auto"``: the torch backend for CUDA tensors, the CPU backend otherwise; or ``"cpu"`` / ``"torch"``."""
    if backend == "auto":
        return TORCH if torch.is_tensor(adjacency) and adjacency.is_cuda else CPU
    if backend == "cpu":
        return CPU
    if backend == "torch":
        return TORCH
    raise ConfigError(f"unknown graph backend {backend!r}; valid: auto, cpu, torch")
