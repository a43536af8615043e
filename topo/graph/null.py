"""Null models: is a layer's topology unusual? Random masks with stated invariants, and z-scores against them.

A null model is a generator of random masks that keep some invariants of an observed (out × in) mask block, from
which the same graph is built and measured (:func:`topo.graph.metrics.null_rows`):

* ``er``: uniformly random masks of the same shape and active count (the Erdős–Rényi G(n, m) of masks);
* ``degree``: degree-preserving randomisation of the bipartite biadjacency, every row sum (an output's fan-in)
  and column sum (an input's fan-out) kept, by the **curveball** algorithm (Strona et al. 2014, Nat. Commun.
  5:4114; its Markov chain samples uniformly among the matrices with those margins, Carstens 2015, Phys. Rev. E
  91:042812). Each round pairs up the rows at random and performs one trade per pair: the columns both rows hold
  stay, the others are pooled and dealt back at random in the rows' former numbers. The chain runs until the
  fraction of the observed active positions still active changes by less than :data:`MIXING_TOLERANCE` between
  rounds (at least :data:`MIN_ROUNDS`, at most :data:`MAX_ROUNDS`): the mixing check;
* ``nm``: random masks of the same N:M layout (only for N:M blocks, :func:`topo.sparsity.structure.nm_pattern`):
  every group of M consecutive inputs keeps its observed count of active weights, at uniformly random positions
  within the group, so the null has the observed edge count and fan-in even where some groups hold fewer than N
  (RigL's regrown zeros read back from a checkpoint). A convolution's groups run along its input channels at each
  tap (apex ASP's layout, :func:`topo.sparsity.structure.input_rows`).

A recurrent gate block is randomised as the directed (h × h) mask it is, then symmetrised into its graph as the
observed one was; a convolution as its out × in·kh·kw matrix. Samples are generated in batches (one tensor of K
masks, on the mask's device). For each metric :func:`z_scores` gives the null mean, standard deviation and the
z-score (observed − mean) / std, absent where the null cannot vary (std 0: the degree Gini under ``degree``, the
fan-in Gini of an N:M layer under ``nm``). Every row names its null.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from topo.errors import ConfigError
from topo.options import NULLS

#: Curveball rounds: at least this many …
MIN_ROUNDS = 5
#: … and at most this many, stopping earlier when the overlap with the observed mask has settled to this.
MAX_ROUNDS = 200
MIXING_TOLERANCE = 0.002
#: Metrics every null keeps by construction: never given a z-score.
INVARIANT = ("n_nodes", "n_edges", "density", "mask_density")
#: Groups of up to this many inputs are ranked by pairwise comparison (:func:`_ranks_within`).
PAIRWISE_GROUP = 8


def er_masks(block: torch.Tensor, samples: int, generator: torch.Generator) -> torch.Tensor:
    """``samples`` uniformly random masks of ``block``'s shape with its active count, as a (K, *shape) tensor."""
    flat = block.reshape(-1)
    count = int(flat.sum())
    keys = torch.rand(samples, flat.numel(), generator=generator, device=block.device)
    chosen = torch.topk(keys, count, dim=1).indices if count else keys.new_zeros((samples, 0), dtype=torch.long)
    out = torch.zeros(samples, flat.numel(), dtype=torch.bool, device=block.device)
    out.scatter_(1, chosen, True)
    return out.reshape(samples, *block.shape)


def _curveball_round(masks: torch.Tensor, generator: torch.Generator) -> None:
    """One round of trades between random row pairs of every mask of the (K, R, C) batch, in place."""
    samples, rows, cols = masks.shape
    order = torch.rand(samples, rows, generator=generator, device=masks.device).argsort(1)
    pairs = rows // 2
    first, second = order[:, :pairs], order[:, pairs:2 * pairs]
    index_a = first.unsqueeze(2).expand(-1, -1, cols)
    index_b = second.unsqueeze(2).expand(-1, -1, cols)
    row_a, row_b = masks.gather(1, index_a), masks.gather(1, index_b)
    shared = row_a & row_b
    pool = row_a ^ row_b
    keep_a = (row_a & ~row_b).sum(2, keepdim=True)
    keys = torch.rand(samples, pairs, cols, generator=generator, device=masks.device)
    keys = torch.where(pool, keys, 2.0)
    rank = keys.argsort(2).argsort(2)
    to_a = pool & (rank < keep_a)
    masks.scatter_(1, index_a, shared | to_a)
    masks.scatter_(1, index_b, shared | (pool & ~to_a))


def degree_masks(block: torch.Tensor, samples: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """``samples`` degree-preserving randomisations of the 2-D ``block`` by curveball, and the rounds it took to mix
    (see the module docstring)."""
    if block.ndim != 2:
        raise ConfigError(f"the degree null randomises a 2-D mask, got shape {tuple(block.shape)}")
    masks = block.unsqueeze(0).repeat(samples, 1, 1)
    active = max(1, int(block.sum()))
    overlap, rounds = 1.0, 0
    for rounds in range(1, MAX_ROUNDS + 1):
        _curveball_round(masks, generator)
        now = float((masks & block).sum()) / (active * samples)
        settled = abs(overlap - now) < MIXING_TOLERANCE
        overlap = now
        if rounds >= MIN_ROUNDS and settled:
            break
    return masks, rounds


def _ranks_within(keys: torch.Tensor) -> torch.Tensor:
    """The rank of every key within its last dimension (0 = smallest; equal keys ranked by position, as a stable
    sort would). Groups of up to :data:`PAIRWISE_GROUP` keys are ranked by counting smaller keys, one comparison
    per pair (an N:M group of 4: a sixth of a double argsort's time, and a byte a comparison instead of 8 bytes an
    index); larger ones by a stable double argsort."""
    m = keys.shape[-1]
    if m > PAIRWISE_GROUP:
        return keys.argsort(dim=-1, stable=True).argsort(dim=-1)
    ranks = torch.zeros(keys.shape, dtype=torch.uint8, device=keys.device)
    for i in range(m):
        for j in range(m):
            if i != j:
                before = keys[..., j] <= keys[..., i] if j < i else keys[..., j] < keys[..., i]
                ranks[..., i] += before
    return ranks


def nm_masks(block: torch.Tensor, m: int, samples: int, generator: torch.Generator,
             shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``samples`` masks of the (out, in) ``block``'s shape in which every group of ``m`` consecutive inputs holds
    as many active weights as the block's group, at uniformly random positions within it (K, *block.shape): the
    positions of a group's smallest uniform keys. ``shape``: the layer's shape when ``block`` is a convolution read
    as out × in·taps, whose groups run along input channels."""
    from topo.sparsity.structure import from_input_rows, input_rows

    layer_shape = tuple(shape) if shape is not None else tuple(block.shape)
    rows = input_rows(block.reshape(layer_shape))
    count, cols = rows.shape
    counts = rows.reshape(count, cols // m, m).sum(-1, keepdim=True, dtype=torch.uint8)
    keys = torch.rand(samples, count, cols // m, m, generator=generator, device=block.device)
    keep = _ranks_within(keys) < counts
    return from_input_rows(keep.reshape(samples, count, cols), layer_shape).reshape(samples, *block.shape)


def iter_null_masks(kind: str, block: Any, samples: int, seed: int = 0, shape: tuple[int, ...] | None = None,
                    per_batch: int | None = None) -> Iterator[torch.Tensor] | None:
    """``samples`` null masks of the 2-D ``block`` under null ``kind``, in batches of at most ``per_batch`` (each a
    (k, *shape) tensor; all in one batch by default), drawn in turn from one generator seeded with ``seed``; None
    when the null does not apply (``nm`` of a block that is not N:M). ``shape``: the layer's own shape when the
    block is a convolution read as out × in·taps (the ``nm`` null needs its input channels).

    The ``er`` and ``nm`` masks are the same whatever ``per_batch`` is (each sample draws its own keys in turn
    from the generator; on the CPU, which draws in sequence). The ``degree`` null runs one curveball chain per
    batch, its mixing check over that batch's samples. Batches bound the memory a null takes: a 4096 × 11008
    matrix's eight ``nm`` samples at once held ~6 GiB of keys and ranks."""
    from topo.sparsity.structure import nm_pattern

    if kind not in NULLS:
        raise ConfigError(f"unknown null model {kind!r}; valid: {', '.join(NULLS)}")
    if samples < 2:
        raise ConfigError(f"a null needs at least 2 samples to have a spread, got {samples}")
    if per_batch is not None and per_batch < 1:
        raise ConfigError(f"a null's batches hold at least one sample, got per_batch={per_batch}")
    block = torch.as_tensor(block).bool()
    if kind == "nm":
        pattern = nm_pattern(block.reshape(shape) if shape is not None else block)
        if pattern is None:
            return None
        m = int(pattern.split(":")[1])
    generator = torch.Generator(device=block.device).manual_seed(seed)
    step = per_batch or samples

    def draw(k: int) -> torch.Tensor:
        if kind == "er":
            return er_masks(block, k, generator)
        if kind == "degree":
            return degree_masks(block, k, generator)[0]
        return nm_masks(block, m, k, generator, shape)

    return (draw(min(step, samples - start)) for start in range(0, samples, step))


def null_masks(kind: str, block: Any, samples: int, seed: int = 0,
               shape: tuple[int, ...] | None = None) -> torch.Tensor | None:
    """``samples`` null masks of the 2-D ``block`` under null ``kind`` in one (K, *shape) tensor, or None when the
    null does not apply: :func:`iter_null_masks` in one batch."""
    batches = iter_null_masks(kind, block, samples, seed, shape)
    return None if batches is None else next(batches)


def z_scores(observed: Mapping[str, float], null: list[Mapping[str, float]]) -> dict[str, float]:
    """``<metric>_null_mean``, ``<metric>_null_std`` and, where the std is not 0, ``<metric>_z`` for every metric of
    ``observed`` but the :data:`INVARIANT` ones, against the summaries of the null samples (tables carry the null's
    name in a ``null`` column)."""
    rows: dict[str, float] = {}
    for metric, value in observed.items():
        if metric in INVARIANT or metric.endswith("_se"):
            continue
        values = np.array([float(sample.get(metric, math.nan)) for sample in null], dtype=np.float64)
        values = values[np.isfinite(values)]
        if len(values) < 2 or not math.isfinite(float(value)):
            continue
        mean, std = float(values.mean()), float(values.std(ddof=1))
        rows[f"{metric}_null_mean"] = mean
        rows[f"{metric}_null_std"] = std
        if std > 1e-12 * max(1.0, abs(mean)):
            rows[f"{metric}_z"] = (float(value) - mean) / std
    return rows
