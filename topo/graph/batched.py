"""Graph kernels on batches of equal-size graphs, on any torch device: a whole run analysed in a few launches.

A batch is a ``(B, n, n)`` boolean tensor of symmetric adjacencies without self-loops (the four gate graphs of
an LSTM layer at every epoch, or every layer of one shape). Everything is computed for the whole batch at once:

* **triangles**: trace(A³) per graph from one batched product A·A, in float16 on CUDA up to n = 2048 (entries
  of A·A are at most n − 1, exact in float16 up to 2048) and float32 above (exact below 2^24; TF32 keeps 0/1
  operands exact too), summed in float64;
* **all-pairs breadth-first search**: the frontier of every source at once as a boolean (n, n) matrix per graph,
  one batched product per level (float16 on CUDA, float32 on the CPU: only positivity matters), so a batch of
  graphs of diameter ≤ d costs d products; connected components follow from the reached sets (a node in a
  component of size s contributes 1/s);
* **λ2** of the connected graphs by :func:`topo.graph.spectral.lambda2_batch` (dense or Lanczos, always
  converged).

:func:`count_batch` returns every raw quantity the metrics need, copied to the host once per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from topo.graph.spectral import lambda2_batch

#: Bytes of device memory a batch may use per adjacency entry (bool masks, float16 products, reached sets…).
BYTES_PER_ENTRY = 12
#: Largest n for which float16 triangle products are exact.
FLOAT16_EXACT = 2048


def _product_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def triangle_dtype(device: torch.device, n: int) -> torch.dtype:
    """The dtype of the triangle product A·A for n-node graphs on ``device``: exact for every n topo accepts."""
    return _product_dtype(device) if n <= FLOAT16_EXACT else torch.float32


def closed_walks(adjacency: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """trace(A³) = 6 × triangles of each graph of a ``(B, n, n)`` batch, float64, on the batch's device.

    ``dtype`` of the product defaults to :func:`triangle_dtype`.
    """
    a = adjacency.to(dtype or triangle_dtype(adjacency.device, adjacency.shape[-1]))
    return (torch.bmm(a, a) * a).sum((1, 2), dtype=torch.float64)


def bipartite_cycle_counts(adjacency: torch.Tensor, n_in: int,
                           dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(4-cycles, 3-paths) of each bipartite graph of a ``(B, n, n)`` batch whose first ``n_in`` nodes are one side.

    With B the (outputs × inputs) block and c = B·Bᵀ the common inputs of two outputs, a 4-cycle is a pair of
    outputs and a pair of their common inputs: Σ_{o<o'} C(c, 2). A path of three edges has a middle edge (o, i)
    and one more edge at each end: Σ over edges (d_o − 1)(d_i − 1) (no triangles in a bipartite graph, so every
    such walk is a path). Both in float64, on the batch's device.
    """
    block = adjacency[:, n_in:, :n_in]
    product_dtype = dtype or triangle_dtype(adjacency.device, n_in)
    b = block.to(product_dtype)
    common = torch.bmm(b, b.transpose(1, 2)).to(torch.float64)
    degree_out = block.sum(2, dtype=torch.float64)
    degree_in = block.sum(1, dtype=torch.float64)
    pairs = (common * (common - 1) / 2).sum((1, 2)) - (degree_out * (degree_out - 1) / 2).sum(1)
    cycles = pairs / 2
    through = torch.bmm(block.to(torch.float64), (degree_in - 1).unsqueeze(2)).squeeze(2)  # Σᵢ B_oi (d_i − 1)
    paths = ((degree_out - 1) * through).sum(1)
    return cycles, paths


@dataclass(frozen=True)
class BFSCounts:
    """Per graph of a batch: Σ shortest-path lengths and reachable ordered pairs (u ≠ v), and components."""

    distance_sum: torch.Tensor
    reachable_pairs: torch.Tensor
    n_components: torch.Tensor


def all_pairs_bfs(adjacency: torch.Tensor) -> BFSCounts:
    """Breadth-first search from every node of every graph of a ``(B, n, n)`` batch at once (int64 results)."""
    batch, n, _ = adjacency.shape
    dtype = _product_dtype(adjacency.device)
    a = adjacency.to(dtype)
    reached = adjacency | torch.eye(n, dtype=torch.bool, device=adjacency.device)
    frontier = adjacency
    distance_sum = adjacency.sum((1, 2))
    pairs = distance_sum.clone()
    level = 1
    while True:
        level += 1
        frontier = (torch.bmm(frontier.to(dtype), a) > 0) & ~reached
        newly = frontier.sum((1, 2))
        if not bool(newly.any()):
            break
        distance_sum += level * newly
        pairs += newly
        reached |= frontier
    sizes = reached.sum(2, dtype=torch.float64)
    components = torch.round((1.0 / sizes).sum(1)).to(torch.int64) if n else torch.zeros_like(pairs)
    return BFSCounts(distance_sum, pairs, components)


@dataclass(frozen=True)
class BatchCounts:
    """Raw quantities of each graph of a batch, on the host (arrays of length B; ``degrees`` is (B, n)).

    ``lambda2`` is NaN for graphs that are disconnected or have fewer than two nodes (the metric conventions
    are applied by :mod:`topo.graph.metrics`).
    """

    degrees: np.ndarray
    n_components: np.ndarray
    lambda2: np.ndarray
    closed_walks: np.ndarray
    distance_sum: np.ndarray
    reachable_pairs: np.ndarray
    four_cycles: np.ndarray
    three_paths: np.ndarray


def count_batch(
    adjacency: torch.Tensor, *, parts: tuple[int, ...] | None = None, dense_limit: int | None = None
) -> BatchCounts:
    """Every raw quantity of every graph of a ``(B, n, n)`` batch, computed on its device.

    ``parts``: the layer sizes when the graphs are layered (bipartite for two parts). Square graphs get closed
    walks (triangles), bipartite ones 4-cycles and 3-paths (Robins–Alexander clustering); the other counts are
    zero. ``dense_limit``: largest n for a dense λ2 solve (default 32 on CUDA, where batched ``eigvalsh`` of
    larger matrices runs one matrix at a time, and 256 on the CPU).
    """
    batch, n, _ = adjacency.shape
    if dense_limit is None:
        dense_limit = 32 if adjacency.is_cuda else 256
    bfs = all_pairs_bfs(adjacency)
    zeros = torch.zeros(batch, dtype=torch.float64, device=adjacency.device)
    walks = closed_walks(adjacency) if parts is None else zeros
    cycles, paths = bipartite_cycle_counts(adjacency, parts[0]) if parts and len(parts) == 2 else (zeros, zeros)
    device_values = torch.stack([
        bfs.n_components.to(torch.float64), walks, bfs.distance_sum.to(torch.float64),
        bfs.reachable_pairs.to(torch.float64), cycles, paths,
    ])
    host = device_values.cpu().numpy()
    degrees = adjacency.sum(2, dtype=torch.int32).cpu().numpy().astype(np.int64)
    components = host[0].astype(np.int64)
    lambda2 = np.full(batch, np.nan)
    connected = np.flatnonzero(components == 1) if n >= 2 else np.zeros(0, dtype=np.int64)
    if len(connected):
        index = torch.from_numpy(connected).to(adjacency.device)
        lambda2[connected] = lambda2_batch(adjacency[index], dense_limit=dense_limit)
    return BatchCounts(degrees, components, lambda2, host[1], host[2], host[3].astype(np.int64), host[4], host[5])


def batch_size(n: int, batch_bytes: int) -> int:
    """How many n-node graphs fit in one batch of ``batch_bytes`` (at least one)."""
    return max(1, batch_bytes // max(1, BYTES_PER_ENTRY * n * n))
