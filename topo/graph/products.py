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

#: From this many non-zeros a product runs on torch's threads; below, scipy's single thread is as fast (measured:
#: no gain at 0.4 M non-zeros, 2.1× at 3.4 M) and costs less per call.
THREADED_FROM = 1_000_000


def csr_product(matrix: scipy.sparse.csr_array | scipy.sparse.csr_matrix) -> Callable[[np.ndarray], np.ndarray]:
    """``x ↦ matrix @ x`` in float64 (``x`` a vector or a block of columns): through torch's CSR kernel from
    :data:`THREADED_FROM` non-zeros, else scipy's."""
    csr = scipy.sparse.csr_array(matrix)
    if csr.nnz < THREADED_FROM:
        small = csr.astype(np.float64)
        return lambda x: small @ np.asarray(x, dtype=np.float64)
    index = torch.int32 if max(csr.nnz, *csr.shape) < 2**31 else torch.int64
    with warnings.catch_warnings():  # torch calls its CSR support beta: the product used here is its oldest kernel
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta state", UserWarning)
        tensor = torch.sparse_csr_tensor(torch.from_numpy(csr.indptr).to(index),
                                         torch.from_numpy(csr.indices).to(index),
                                         torch.from_numpy(np.asarray(csr.data, dtype=np.float64)), size=csr.shape,
                                         check_invariants=False)

    def product(x: np.ndarray) -> np.ndarray:
        return (tensor @ torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))).numpy()

    return product


def sampled_bfs_by_products(adjacency: np.ndarray, sources: np.ndarray,
                            split: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per source, (Σ of shortest-path lengths to the nodes it reaches, number of nodes it reaches, itself
    excluded): what :func:`topo.graph.bitsets.sampled_bfs` computes, by float32 matrix products on every core.

    Every level's frontier (nodes × sources, 0/1) is the adjacency times the last level's, less the nodes already
    reached: exact (the products count paths, at most n < 2²⁴). Its cost does not depend on the number of edges,
    so it is the faster search for dense graphs. With ``split`` the graph is bipartite (nodes below ``split`` one
    side, the rest the other, no edge within a side) and only its biadjacency block is multiplied.
    """
    n, count = adjacency.shape[0], len(sources)
    frontier = np.zeros((n, count), dtype=np.float32)
    frontier[np.asarray(sources), np.arange(count)] = 1.0
    reached = frontier > 0
    block = adjacency[split:, :split].astype(np.float32) if split else adjacency.astype(np.float32)
    distances, reach = np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64)
    level = 0
    while True:
        level += 1
        if split:
            paths = np.empty_like(frontier)
            paths[:split] = block.T @ frontier[split:]
            paths[split:] = block @ frontier[:split]
        else:
            paths = block @ frontier
        new = (paths > 0) & ~reached
        newly = new.sum(0, dtype=np.int64)
        if not newly.any():
            return distances, reach
        distances += level * newly
        reach += newly
        reached |= new
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
