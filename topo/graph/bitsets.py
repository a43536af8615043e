"""Bit-parallel graph kernels on the CPU: triangles and all-pairs breadth-first search over packed rows.

Each node's neighbourhood is packed into ⌈n/64⌉ 64-bit words, so one word operation handles 64 nodes (or 64
breadth-first sources) at once:

* **Triangles**: for every edge {u, v}, the common neighbours are ``popcount(row_u & row_v)``; summed over the
  edges this counts every triangle three times. Cost: m·⌈n/64⌉ word operations (m edges).
* **All-pairs BFS**: ``frontier[v]`` holds, as bits over the n sources, the sources at distance exactly ℓ from v.
  The next level is the OR of the neighbours' frontiers, minus the sources already reached: per word of the
  frontier, one gather over the CSR neighbour lists and one ``bitwise_or.reduceat``. Cost: 2m·⌈n/64⌉ word
  operations per level.
* **Sampled BFS**: the same over a chosen set of s sources (bits over the sources, ⌈s/64⌉ words a node), with
  the distance sum and reach of every source kept apart for the ratio estimator's standard error. Cost:
  2m·⌈s/64⌉ word operations per level.

Both are exact integer computations. Work is cut into chunks so that temporaries stay small whatever the graph:
triangles :data:`CHUNK_WORDS` words at a time, searches one word column of :data:`FRONTIER_BLOCK_ENTRIES`
neighbours at a time.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

CHUNK_WORDS = 1 << 22  # 32 MiB of uint64 temporaries per chunk
_LAST_CSR: tuple = (None, None)


def csr_of(adjacency: np.ndarray) -> scipy.sparse.csr_array:
    """The CSR form of a dense boolean adjacency, kept for the last adjacency asked about: the kernels of one graph
    (components, λ2, breadth-first search) share one conversion. The cache holds one graph; it is replaced, never
    wrong (the entry is read and written as one tuple)."""
    global _LAST_CSR
    cached, csr = _LAST_CSR
    if cached is adjacency:
        return csr
    csr = _dense_to_csr(adjacency)
    _LAST_CSR = (adjacency, csr)
    return csr


#: Rows converted at once by :func:`csr_of` (bounds the temporary flat indices to this many rows' non-zeros).
CSR_BAND_ROWS = 1024


def csr_index_dtype(nnz: int, shape: tuple[int, int]) -> type[np.signedinteger]:
    """The narrowest index type of a CSR matrix of ``nnz`` non-zeros and ``shape`` (scipy's rule): int32 while every
    row offset (at most ``nnz``) and column index (below the width) and the row count fit below 2³¹, else int64."""
    return np.int32 if max(nnz, *shape) < 2**31 else np.int64


def _dense_to_csr(matrix: np.ndarray) -> scipy.sparse.csr_array:
    """The CSR form of a dense boolean matrix, a band of rows at a time: the row pointers from the row sums, the
    column indices from the band's flat non-zeros (in order, so sorted within each row). scipy's conversion goes
    through COO and CSC: 9× slower on a 15,104-node adjacency of 45 M non-zeros (a 4096 × 11008 2:4 layer)."""
    rows, cols = matrix.shape
    nnz = int(np.count_nonzero(matrix))
    index = csr_index_dtype(nnz, (rows, cols))
    indptr = np.zeros(rows + 1, dtype=index)
    np.cumsum(matrix.sum(1, dtype=np.int64), out=indptr[1:], dtype=index)
    indices = np.empty(nnz, dtype=index)
    for start in range(0, rows, CSR_BAND_ROWS):
        stop = min(start + CSR_BAND_ROWS, rows)
        indices[indptr[start]:indptr[stop]] = np.flatnonzero(matrix[start:stop]) % cols
    return scipy.sparse.csr_array((np.ones(nnz, dtype=bool), indices, indptr), shape=(rows, cols))


def pack_rows(adjacency: np.ndarray) -> np.ndarray:
    """The rows of a boolean (n, n) matrix as (n, ⌈n/64⌉) uint64 words (bit j of row i = adjacency[i, j])."""
    n = adjacency.shape[0]
    words = max(1, -(-n // 64))
    packed = np.zeros((n, words * 8), dtype=np.uint8)
    packed[:, : -(-n // 8)] = np.packbits(adjacency, axis=1, bitorder="little")
    return packed.view(np.uint64)


def popcount(words: np.ndarray) -> int:
    """Number of set bits in an array of uint64 words."""
    return int(np.bitwise_count(words).sum(dtype=np.int64))


def triangle_edge_sum(adjacency: np.ndarray) -> int:
    """Σ over edges {u, v} of the common neighbours of u and v: three times the number of triangles."""
    rows = pack_rows(adjacency)
    u, v = np.nonzero(np.triu(adjacency, 1))
    chunk = max(1, CHUNK_WORDS // rows.shape[1])
    return sum(popcount(rows[u[s : s + chunk]] & rows[v[s : s + chunk]]) for s in range(0, len(u), chunk))


#: :func:`_next_frontier` gathers the neighbours of a block of nodes holding at most this many neighbour entries
#: at once (2 MiB of uint64 words a frontier column).
FRONTIER_BLOCK_ENTRIES = 1 << 18


def _node_blocks(indptr: np.ndarray, entries: int) -> list[tuple[int, int]]:
    """Consecutive node ranges whose neighbour lists hold at most ``entries`` entries (at least one node each)."""
    n, blocks, start = len(indptr) - 1, [], 0
    while start < n:
        stop = int(np.searchsorted(indptr, indptr[start] + entries, side="right")) - 1
        stop = min(n, max(stop, start + 1))
        blocks.append((start, stop))
        start = stop
    return blocks


def _gather_plan(adjacency: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """What :func:`_next_frontier` gathers, built once per search: for each block of nodes holding at most
    :data:`FRONTIER_BLOCK_ENTRIES` neighbour entries, its nodes that have neighbours, their neighbour lists end to
    end, and where each list starts in them."""
    csr = csr_of(adjacency)
    indptr, indices = csr.indptr.astype(np.int64), csr.indices.astype(np.int64)
    plan = []
    for start, stop in _node_blocks(indptr, FRONTIER_BLOCK_ENTRIES):
        lo, hi = int(indptr[start]), int(indptr[stop])
        if hi > lo:
            nodes = np.arange(start, stop)
            nodes = nodes[indptr[start + 1 : stop + 1] > indptr[start:stop]]  # nodes with neighbours
            plan.append((nodes, indices[lo:hi], indptr[nodes] - lo))
    return plan


def _next_frontier(frontier: np.ndarray, plan: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """For every node v, the OR of ``frontier`` over v's neighbours (zero for isolated nodes), by the gather
    ``plan`` of :func:`_gather_plan`.

    One word column of the frontier at a time (n words, in cache) and a block of nodes at a time: the gather of
    whole rows of words (⌈s/64⌉ words apart) read 5–8× slower on the development machine (n = 4096, 64 words
    a row, densities 0.01–0.3)."""
    result = np.zeros_like(frontier)
    for word in range(frontier.shape[1]):
        column = np.ascontiguousarray(frontier[:, word])
        for nodes, neighbours, offsets in plan:
            result[nodes, word] = np.bitwise_or.reduceat(column[neighbours], offsets)
    return result


def sampled_bfs(adjacency: np.ndarray, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per source, (Σ of shortest-path lengths to the nodes it reaches, number of nodes it reaches, itself
    excluded), by bit-parallel BFS from all ``sources`` at once."""
    n, count = adjacency.shape[0], len(sources)
    plan = _gather_plan(adjacency)
    words = max(1, -(-count // 64))
    frontier = np.zeros((n, words), dtype=np.uint64)
    bits = np.arange(count)
    np.bitwise_or.at(frontier, (np.asarray(sources), bits // 64),
                     np.left_shift(np.uint64(1), (bits % 64).astype(np.uint64)))
    reached = frontier.copy()
    distances, reach = np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64)
    level = 0
    while True:
        level += 1
        frontier = _next_frontier(frontier, plan) & ~reached
        newly = np.unpackbits(frontier.view(np.uint8), axis=1, bitorder="little")[:, :count].sum(0, dtype=np.int64)
        if not newly.any():
            return distances, reach
        distances += level * newly
        reach += newly
        reached |= frontier


def all_pairs_bfs(adjacency: np.ndarray) -> tuple[int, int]:
    """(Σ of shortest-path lengths, number of reachable pairs) over ordered pairs u ≠ v, by bit-parallel BFS."""
    n = adjacency.shape[0]
    plan = _gather_plan(adjacency)
    frontier = pack_rows(adjacency)
    reached = frontier.copy()
    diagonal = np.arange(n)
    reached[diagonal, diagonal // 64] |= np.left_shift(np.uint64(1), (diagonal % 64).astype(np.uint64))
    newly = popcount(frontier)
    distance_sum, pairs, level = newly, newly, 1
    while newly:
        level += 1
        frontier = _next_frontier(frontier, plan) & ~reached
        newly = popcount(frontier)
        distance_sum += level * newly
        pairs += newly
        reached |= frontier
    return distance_sum, pairs
