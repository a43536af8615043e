"""Exact computational kernels behind :mod:`topo.graph.metrics`: a CPU backend and a torch (GPU) backend.

Each backend turns a symmetric boolean adjacency (no self-loops) into the raw quantities the metrics are built
from; the conventions for empty and disconnected graphs live in :mod:`topo.graph.metrics`, not here.

* :class:`CPUBackend` counts triangles and runs breadth-first search with dense float32 BLAS products on dense
  masks and igraph (C) on sparse ones, and uses scipy for the Laplacian spectrum:
  LAPACK's ``eigvalsh`` restricted to the two smallest eigenvalues up to ``dense_limit`` nodes; above it LOBPCG
  constrained orthogonal to the constant null vector, accepted only when its residual is below 1e-7 relative,
  and otherwise ARPACK in shift-invert mode around a small negative shift (0 and λ2 are then the eigenvalues
  nearest the shift). No method here iterates without bound.
* :class:`TorchBackend` runs on the adjacency's device: closed 3-walks from one dense matrix product (in half
  precision on CUDA: 0/1 entries and fp32 accumulation keep counts below 2^24 exact), all-pairs breadth-first
  search as boolean frontier products (one product per level, so a diameter-d graph costs d products), and λ2
  from ``torch.linalg.eigvalsh`` in float64 up to ``dense_limit`` nodes, LOBPCG on the Laplacian with its
  constant null vector deflated above.
"""

from __future__ import annotations

from dataclasses import dataclass

import igraph
import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.csgraph
import scipy.sparse.linalg
import torch

from topo.errors import ConfigError


@dataclass(frozen=True)
class PathCounts:
    """Shortest-path totals over ordered pairs (u, v), u ≠ v, with v reachable from u."""

    distance_sum: float
    reachable_pairs: int


@dataclass(frozen=True)
class CPUBackend:
    """numpy/scipy + igraph.

    ``dense_limit``: largest n for which λ2 comes from a dense LAPACK solve. ``blas_limit`` and
    ``blas_min_density``: graphs up to that many nodes and at least that edge density count triangles and run
    breadth-first search with dense float32 matrix products (exact for 0/1 entries below 2^24), which beats
    edge-by-edge traversal on dense masks; other graphs use igraph.
    """

    dense_limit: int = 512
    blas_limit: int = 4096
    blas_min_density: float = 0.005
    name: str = "cpu"

    def degrees(self, adjacency: np.ndarray) -> np.ndarray:
        return adjacency.sum(1, dtype=np.int64)

    def n_components(self, adjacency: np.ndarray) -> int:
        return int(scipy.sparse.csgraph.connected_components(scipy.sparse.csr_array(adjacency), directed=False)[0])

    def lambda2(self, adjacency: np.ndarray) -> float:
        """Second-smallest Laplacian eigenvalue of a connected graph with n >= 2."""
        n = adjacency.shape[0]
        degrees = adjacency.sum(1, dtype=np.float64)
        if n <= self.dense_limit:
            laplacian = np.diag(degrees) - adjacency.astype(np.float64)
            return float(scipy.linalg.eigh(laplacian, eigvals_only=True, subset_by_index=[1, 1], driver="evx")[0])
        sparse = scipy.sparse.csr_array(adjacency, dtype=np.float64)
        laplacian = scipy.sparse.diags_array(degrees) - sparse
        start = np.random.default_rng(0).standard_normal((n, 1))
        values, vectors = scipy.sparse.linalg.lobpcg(
            laplacian, start, Y=np.ones((n, 1)), largest=False, tol=1e-10, maxiter=2000
        )
        residual = np.linalg.norm(laplacian @ vectors - values[0] * vectors) / np.linalg.norm(vectors)
        if residual <= 1e-7 * max(1.0, float(values[0])):
            return float(values[0])
        shift = -1e-3 * max(1.0, degrees.mean())
        values = scipy.sparse.linalg.eigsh(laplacian.tocsc(), k=2, sigma=shift, which="LM", return_eigenvectors=False)
        return float(np.max(values))

    def _use_blas(self, adjacency: np.ndarray) -> bool:
        n = adjacency.shape[0]
        return n <= self.blas_limit and adjacency.sum() >= self.blas_min_density * n * n

    def transitivity(self, adjacency: np.ndarray) -> float:
        """3 × triangles / connected triples = trace(A³) / Σ d(d−1); NaN when there is no connected triple."""
        if not self._use_blas(adjacency):
            return float(_igraph(adjacency).transitivity_undirected(mode="nan"))
        a = adjacency.astype(np.float32)
        closed_walks = float(((a @ a) * a).sum(dtype=np.float64))
        degrees = adjacency.sum(1, dtype=np.float64)
        ordered_triples = float((degrees * (degrees - 1)).sum())
        return closed_walks / ordered_triples if ordered_triples > 0 else float("nan")

    def path_counts(self, adjacency: np.ndarray) -> PathCounts:
        if self._use_blas(adjacency):
            return _frontier_bfs(adjacency)
        graph = _igraph(adjacency)
        sizes = np.asarray(graph.connected_components().sizes(), dtype=np.int64)
        pairs = int((sizes * (sizes - 1)).sum())
        if pairs == 0:
            return PathCounts(0.0, 0)
        mean = graph.average_path_length(directed=False, unconn=True)
        return PathCounts(float(mean) * pairs, pairs)


def _frontier_bfs(adjacency: np.ndarray) -> PathCounts:
    """All-pairs breadth-first search, one matrix product per level beyond the first (level 1 is A itself)."""
    a = adjacency.astype(np.float32)
    frontier = adjacency.copy()
    reached = frontier | np.eye(adjacency.shape[0], dtype=bool)
    distance_sum, pairs, level = int(frontier.sum()), int(frontier.sum()), 1
    while True:
        level += 1
        frontier = ((frontier.astype(np.float32) @ a) > 0) & ~reached
        newly = int(frontier.sum())
        if newly == 0:
            return PathCounts(float(distance_sum), pairs)
        distance_sum += level * newly
        pairs += newly
        reached |= frontier


def _igraph(adjacency: np.ndarray) -> igraph.Graph:
    edges = np.argwhere(np.triu(adjacency, 1))
    return igraph.Graph(n=adjacency.shape[0], edges=edges, directed=False)


@dataclass(frozen=True)
class TorchBackend:
    """Dense torch kernels on the adjacency's device. ``dense_limit``: largest n for a full ``eigvalsh``."""

    dense_limit: int = 2048
    name: str = "torch"

    @staticmethod
    def _matmul_dtype(adjacency: torch.Tensor) -> torch.dtype:
        return torch.float16 if adjacency.is_cuda else torch.float32

    def degrees(self, adjacency: torch.Tensor) -> np.ndarray:
        return adjacency.sum(1).cpu().numpy().astype(np.int64)

    def n_components(self, adjacency: torch.Tensor) -> int:
        n = adjacency.shape[0]
        unseen = torch.ones(n, dtype=torch.bool, device=adjacency.device)
        a = adjacency.to(self._matmul_dtype(adjacency))
        components = 0
        while bool(unseen.any()):
            components += 1
            start = int(torch.nonzero(unseen)[0])
            frontier = torch.zeros(n, dtype=torch.bool, device=adjacency.device)
            frontier[start] = True
            unseen[start] = False
            while bool(frontier.any()):
                frontier = ((a @ frontier.to(a.dtype)) > 0) & unseen
                unseen &= ~frontier
        return components

    def lambda2(self, adjacency: torch.Tensor) -> float:
        """Second-smallest Laplacian eigenvalue of a connected graph with n >= 2 (float64)."""
        n = adjacency.shape[0]
        a = adjacency.to(torch.float64)
        degrees = a.sum(1)
        laplacian = torch.diag(degrees) - a
        if n <= self.dense_limit:
            return float(torch.linalg.eigvalsh(laplacian)[1])
        # Deflate the null vector 1/√n: L + c·11ᵀ/n has eigenvalues c and λ2..λn; c = 2·max degree ≥ λn.
        deflated = laplacian + (2 * degrees.max()) / n
        generator = torch.Generator(device=adjacency.device).manual_seed(0)
        start = torch.randn(n, 1, dtype=torch.float64, device=adjacency.device, generator=generator)
        value, _ = torch.lobpcg(deflated, k=1, X=start, largest=False, tol=1e-12, niter=1000)
        return float(value[0])

    def transitivity(self, adjacency: torch.Tensor) -> float:
        """3 × triangles / connected triples = trace(A³) / Σ d(d−1); NaN when there is no connected triple."""
        a = adjacency.to(self._matmul_dtype(adjacency))
        closed_walks = ((a @ a).float() * adjacency).sum(dtype=torch.float64)
        degrees = adjacency.sum(1, dtype=torch.float64)
        ordered_triples = (degrees * (degrees - 1)).sum()
        return float(closed_walks / ordered_triples) if ordered_triples > 0 else float("nan")

    def path_counts(self, adjacency: torch.Tensor) -> PathCounts:
        n = adjacency.shape[0]
        a = adjacency.to(self._matmul_dtype(adjacency))
        reached = torch.eye(n, dtype=torch.bool, device=adjacency.device)
        frontier = reached.clone()
        distance_sum, pairs, level = 0, 0, 0
        while True:
            level += 1
            frontier = ((frontier.to(a.dtype) @ a) > 0) & ~reached
            newly = int(frontier.sum())
            if newly == 0:
                break
            distance_sum += level * newly
            pairs += newly
            reached |= frontier
        return PathCounts(float(distance_sum), pairs)


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
