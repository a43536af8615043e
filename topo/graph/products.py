"""Sparse matrix products on every core, for the Lanczos solvers of λ2 and the spectral gaps.

scipy's CSR product runs on one thread; torch's CPU kernel for a CSR tensor (MKL's where torch has it) splits the
rows over torch's threads. Each row's sum is computed by one thread, so the result does not depend on the number
of threads; it equals scipy's to rounding (the order of a row's additions may differ), which moves an eigenvalue
by about 1e-15 of itself. Measured on the 2-core development machine (under load): 2.1× faster than scipy for a
3.4 M non-zero adjacency, 1.7× for a 23 M one; small matrices stay with scipy (:data:`THREADED_FROM`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import scipy.sparse
import torch

from topo.graph.bitsets import csr_of

#: From this many non-zeros a product runs on torch's threads; below, scipy's single thread is as fast (measured:
#: no gain at 0.4 M non-zeros, 2.1× at 3.4 M) and costs less per call.
THREADED_FROM = 1_000_000


def csr_product(matrix: scipy.sparse.csr_array | scipy.sparse.csr_matrix) -> Callable[[np.ndarray], np.ndarray]:
    """``x ↦ matrix @ x`` in float64 (``x`` a vector or a block of columns): through torch's CSR kernel from
    :data:`THREADED_FROM` non-zeros, else scipy's. Torch takes the matrix's index arrays as they are, int32 or
    int64 (:func:`topo.graph.bitsets.csr_index_dtype`)."""
    csr = scipy.sparse.csr_array(matrix)
    if csr.nnz < THREADED_FROM:
        small = csr.astype(np.float64)
        return lambda x: small @ np.asarray(x, dtype=np.float64)
    with warnings.catch_warnings():  # torch calls its CSR support beta: the product used here is its oldest kernel
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta state", UserWarning)
        tensor = torch.sparse_csr_tensor(torch.from_numpy(csr.indptr), torch.from_numpy(csr.indices),
                                         torch.from_numpy(np.asarray(csr.data, dtype=np.float64)), size=csr.shape,
                                         check_invariants=False)

    def product(x: np.ndarray) -> np.ndarray:
        return (tensor @ torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))).numpy()

    return product


#: From this fraction of its entries active, a bipartite graph's adjacency products come from its biadjacency
#: block held dense in float64 (:func:`adjacency_product`) rather than from the CSR form: measured here on a
#: 4096 × 11008 block, 20 ms against 29 ms a product at density 0.5 (a 2:4 layer), 24 against 18 ms at 0.25; on a
#: 128 × 4096 head, whose block stays in cache, the dense product is faster from density 0.1.
DENSE_BLOCK_FROM = 0.35


def adjacency_product(adjacency: np.ndarray, split: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """``x ↦ A @ x`` in float64 for a vector ``x``: a bipartite graph (``split``: nodes below it one side, no edge
    within a side) of at least :data:`DENSE_BLOCK_FROM` active entries of its block as two dense products with
    the block, ``[Bᵀ·x_out, B·x_in]``; any other graph through :func:`csr_product`. The two equal to rounding."""
    dense = _held_dense(adjacency[split:, :split]) if split else None
    if dense is None:
        return csr_product(csr_of(adjacency))

    def product(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return np.concatenate([dense.T @ x[split:], dense @ x[:split]])

    return product


def dense_or_csr_products(matrix: np.ndarray | scipy.sparse.sparray) -> tuple[Callable[[np.ndarray], np.ndarray],
                                                                              Callable[[np.ndarray], np.ndarray]]:
    """``(x ↦ M @ x, y ↦ Mᵀ @ y)`` in float64 for a real matrix: a dense one with at least
    :data:`DENSE_BLOCK_FROM` non-zeros per entry from itself in float64, any other from its CSR form
    (:func:`csr_product`)."""
    dense = None if scipy.sparse.issparse(matrix) else _held_dense(matrix)
    if dense is None:
        sparse = scipy.sparse.csr_array(matrix).astype(np.float64)
        return csr_product(sparse), csr_product(sparse.T.tocsr())
    return (lambda x: dense @ np.asarray(x, dtype=np.float64), lambda y: dense.T @ np.asarray(y, dtype=np.float64))


def _held_dense(matrix: np.ndarray) -> np.ndarray | None:
    """``matrix`` in float64 when at least :data:`DENSE_BLOCK_FROM` of its entries are non-zero, else ``None``."""
    return np.asarray(matrix, dtype=np.float64) if np.count_nonzero(matrix) >= DENSE_BLOCK_FROM * matrix.size \
        else None


def sampled_bfs_by_products(adjacency: np.ndarray, sources: np.ndarray,
                            split: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per source, (Σ of shortest-path lengths to the nodes it reaches, number of nodes it reaches, itself
    excluded): what :func:`topo.graph.bitsets.sampled_bfs` computes, by float32 matrix products on every core.

    Every level's frontier (nodes × sources, 0/1) is the adjacency times the last level's, less the nodes already
    reached: exact (the products count paths, at most n < 2²⁴). Its cost does not depend on the number of edges,
    so it is the faster search for dense graphs. With ``split`` the graph is bipartite (nodes below ``split`` one
    side, the rest the other, no edge within a side): a source's level ℓ lies on its own side for even ℓ and on
    the other for odd ℓ, so the sources of each side are searched together, one product of the biadjacency block
    (or its transpose) per level: half the products of multiplying the whole adjacency.
    """
    sources = np.asarray(sources)
    if not split:
        return _search(adjacency.astype(np.float32), sources, adjacency.shape[0], None)
    block = adjacency[split:, :split].astype(np.float32)
    distances, reach = np.zeros(len(sources), dtype=np.int64), np.zeros(len(sources), dtype=np.int64)
    for side, from_outputs in ((sources < split, False), (sources >= split, True)):
        if side.any():
            distances[side], reach[side] = _search(block, sources[side], split, from_outputs)
    return distances, reach


def _search(block: np.ndarray, sources: np.ndarray, split: int, from_outputs: bool | None) -> tuple[np.ndarray,
                                                                                                   np.ndarray]:
    """The search of :func:`sampled_bfs_by_products` from ``sources``: with ``from_outputs`` ``None`` ``block`` is
    a square adjacency; else it is a biadjacency (outputs × inputs) and every source is an output (``True``,
    nodes numbered from ``split``) or every source an input (``False``)."""
    count = len(sources)
    if from_outputs is None:
        sides = [block]
        frontier = np.zeros((block.shape[0], count), dtype=np.float32)
        frontier[sources, np.arange(count)] = 1.0
        reached = [frontier > 0]
    else:
        sides = [block.T, block] if from_outputs else [block, block.T]  # level 1 reaches the other side
        own = np.zeros((block.shape[0] if from_outputs else split, count), dtype=np.float32)
        own[sources - (split if from_outputs else 0), np.arange(count)] = 1.0
        frontier = own
        reached = [np.zeros((sides[0].shape[0], count), dtype=bool), own > 0]
    distances, reach = np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64)
    level = 0
    while True:
        level += 1
        side = (level - 1) % len(sides)
        new = (sides[side] @ frontier > 0) & ~reached[side]
        newly = new.sum(0, dtype=np.int64)
        if not newly.any():
            return distances, reach
        distances += level * newly
        reach += newly
        reached[side] |= new
        frontier = new.astype(np.float32)


def sampled_bfs_by_products_torch(adjacency: torch.Tensor, sources: np.ndarray,
                                  split: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sampled_bfs_by_products` on the adjacency's own device (a CUDA graph stays there): the same
    distances. Products in float16 on CUDA (tensor cores) and float32 elsewhere: only whether a count of paths is
    positive is read, and a sum of non-negative terms rounds to a positive number (or inf), never to zero."""
    n, count = adjacency.shape[0], len(sources)
    device = adjacency.device
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    index = torch.from_numpy(np.asarray(sources)).to(device)
    frontier = torch.zeros(n, count, dtype=dtype, device=device)
    frontier[index, torch.arange(count, device=device)] = 1.0
    reached = frontier > 0
    block = (adjacency[split:, :split] if split else adjacency).to(dtype)
    distances = torch.zeros(count, dtype=torch.int64, device=device)
    reach = torch.zeros(count, dtype=torch.int64, device=device)
    for level in range(1, n):
        if split:
            paths = torch.cat([block.T @ frontier[split:], block @ frontier[:split]])
        else:
            paths = block @ frontier
        new = (paths > 0) & ~reached
        newly = new.sum(0)
        if not bool(newly.any()):
            break
        distances += level * newly
        reach += newly
        reached |= new
        frontier = new.to(dtype)
    return distances.cpu().numpy(), reach.cpu().numpy()
