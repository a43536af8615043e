"""Topology over a run and between runs: mask turnover, exploration, and the NNSTD distance of two networks.

* **Turnover** (:func:`mask_turnover`): the Jaccard distance 1 − |A ∩ B| / |A ∪ B| between a layer's active
  sets at two snapshots (0: the same connections; 1: none in common).
* **Exploration** (:func:`exploration_rate`): the fraction of a layer's positions ever active during training,
  the in-time over-parameterisation of Liu et al. (2021, ICML); the sparsifier tracks it between snapshots.
* **NNSTD** (:func:`nnstd`; Liu et al. 2020, "Topological insights into sparse neural networks", ECML-PKDD):
  the distance between two sparse networks of one architecture up to a permutation of their hidden neurons.
  Layer by layer, each output neuron is described by its set of active inputs; two neurons differ by the
  normalised edit distance |A Δ B| / |A ∪ B| of those sets; the neurons of the two networks are matched by a
  minimum-cost assignment (Hungarian, ``scipy.optimize.linear_sum_assignment``), the layer's distance is the
  mean cost of the matching, and the matching renames the inputs of the next layer (``chain``; in a transformer
  every projection reads the residual stream, whose basis no matching renames, so there each layer's inputs are
  taken as they are). 0 means the same topology up to permutation, 1 disjoint ones. What "far" means depends on
  the layers' sizes and densities: two independent random masks of density d are at 1 − d / (2 − d) before
  matching, and the matching pulls them well below that (0.80 for 64 × 100 at d = 0.1), so :func:`nnstd_random`
  computes the baseline: the mean NNSTD of independent random masks with the same per-layer counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.optimize

from topo.errors import MaskError, TopoError
from topo.families import Family, oriented
from topo.graph.build import as_mask


def _numpy_mask(mask: Any, name: str) -> np.ndarray:
    block = as_mask(mask, name)
    return block.detach().cpu().numpy() if hasattr(block, "detach") else np.asarray(block)


def jaccard_distance(a: Any, b: Any) -> float:
    """1 − |A ∩ B| / |A ∪ B| of two boolean masks of one shape; 0 when both are empty."""
    a, b = _numpy_mask(a, "a"), _numpy_mask(b, "b")
    if a.shape != b.shape:
        raise MaskError(f"masks of shapes {a.shape} and {b.shape} cannot be compared")
    union = np.count_nonzero(a | b)
    return 0.0 if union == 0 else 1.0 - np.count_nonzero(a & b) / union


def mask_turnover(previous: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, float]:
    """Per layer of ``current``, the Jaccard distance of its active set from ``previous``'s."""
    return {name: jaccard_distance(previous[name], mask) for name, mask in current.items() if name in previous}


def exploration_rate(ever_active: Mapping[str, Any]) -> dict[str, float]:
    """Per layer, the fraction of positions that were ever active (numpy arrays or torch tensors)."""
    masks = {name: _numpy_mask(m, name) for name, m in ever_active.items()}
    return {name: float(np.count_nonzero(m)) / max(1, m.size) for name, m in masks.items()}


def run_topology(run: Any, name: str = "") -> pd.DataFrame:
    """Tidy rows (run, epoch, layer, graph, metric, value) of turnover since the previous snapshot and exploration,
    per layer of a :class:`topo.record.RunReader`; exploration where the run recorded it."""
    rows = []
    previous = None
    for epoch in run.epochs:
        masks = run.masks(epoch)
        if previous is not None:
            rows += [(name, epoch, layer, layer, "turnover", value)
                     for layer, value in mask_turnover(previous, masks).items()]
        try:
            explored = exploration_rate(run.ever_active(epoch))
        except TopoError:  # runs recorded before ever-active positions were kept have none
            explored = {}
        rows += [(name, epoch, layer, layer, "exploration", value) for layer, value in explored.items()]
        previous = masks
    return pd.DataFrame(rows, columns=["run", "epoch", "layer", "graph", "metric", "value"])


def _edit_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(rows of a) × (rows of b): |A Δ B| / |A ∪ B| between their active sets (0 when both are empty)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    common = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - common
    return np.where(union > 0, (union - common) / np.where(union > 0, union, 1), 0.0)


def nnstd(layers_a: Sequence[Any], layers_b: Sequence[Any], chain: bool = True) -> list[float]:
    """Per layer, the NNSTD distance of two stacks of feed-forward masks (each out × in), see the module docstring.

    Convolution masks (out, in, *kernel) are read as their channel masks. With ``chain``, when a layer has as many
    inputs as the previous layer has outputs they are taken to be those outputs and the previous matching renames
    them (Liu et al.'s feed-forward networks); otherwise, and for every layer without ``chain`` (layers that read a
    shared stream, as a transformer's projections do), the inputs are taken as they are.
    """
    if len(layers_a) != len(layers_b):
        raise MaskError(f"networks of {len(layers_a)} and {len(layers_b)} layers cannot be compared")
    distances = []
    matching: np.ndarray | None = None
    for index, (mask_a, mask_b) in enumerate(zip(layers_a, layers_b, strict=True)):
        a, b = _numpy_mask(mask_a, f"a[{index}]"), _numpy_mask(mask_b, f"b[{index}]")
        if a.shape != b.shape:
            raise MaskError(f"layer {index}: shapes {a.shape} and {b.shape} differ")
        a, b = _channel(a), _channel(b)
        if chain and matching is not None and len(matching) == a.shape[1]:
            b = b[:, matching]  # column i: b's neuron matched to a's neuron i
        cost = _edit_distances(a, b)
        rows, columns = scipy.optimize.linear_sum_assignment(cost)
        distances.append(float(cost[rows, columns].mean()) if len(rows) else 0.0)
        matching = np.empty(a.shape[0], dtype=np.int64)
        matching[rows] = columns  # a's neuron i ↔ b's neuron matching[i]
    return distances


def nnstd_random(layers_a: Sequence[Any], layers_b: Sequence[Any], samples: int = 20,
                 seed: int = 0, chain: bool = True) -> tuple[list[float], list[float]]:
    """Per layer, the mean and standard deviation of :func:`nnstd` (with ``chain``) over ``samples`` pairs of
    independent uniformly random masks with the per-layer shapes and active counts of ``layers_a`` and of
    ``layers_b``: the distance two unrelated topologies of these sizes and densities have, against which an
    observed NNSTD reads."""
    if samples < 2:
        raise MaskError(f"nnstd_random needs at least 2 samples, got {samples}")
    if len(layers_a) != len(layers_b):
        raise MaskError(f"networks of {len(layers_a)} and {len(layers_b)} layers cannot be compared")
    rng = np.random.default_rng(seed)
    shapes = [(_numpy_mask(m, f"a[{i}]"), _numpy_mask(n, f"b[{i}]")) for i, (m, n) in
              enumerate(zip(layers_a, layers_b, strict=True))]
    shapes = [tuple(_channel(block) for block in pair) for pair in shapes]

    def shuffled(block: np.ndarray) -> np.ndarray:
        flat = np.zeros(block.size, dtype=bool)
        flat[rng.choice(block.size, int(block.sum()), replace=False)] = True
        return flat.reshape(block.shape)

    draws = np.array([nnstd([shuffled(a) for a, _ in shapes], [shuffled(b) for _, b in shapes], chain)
                      for _ in range(samples)])
    return draws.mean(0).tolist(), draws.std(0, ddof=1).tolist()


def _channel(block: np.ndarray) -> np.ndarray:
    """A convolution mask as its channel mask (the mask NNSTD compares); other masks as they are."""
    return block.reshape(*block.shape[:2], -1).any(-1) if block.ndim > 2 else block


def degree_distributions(run: Any, name: str = "") -> pd.DataFrame:
    """Tidy in- and out-degree histograms of every layer at every snapshot of a run.

    Columns run, epoch, layer, side (``in``: active weights into each output neuron, its fan-in; ``out``: from
    each input neuron, its fan-out), degree, count (neurons with that degree), n (the most a degree can be) and
    density (the layer's). Weights are read as the run's model family means them (a Conv1D weight transposed).
    Under a uniformly random mask of that density the degrees would be Binomial(n, density),
    which :func:`topo.plot.degree_figure` draws beside them; SET reports a drift towards scale-free degrees.
    """
    family = getattr(run, "family", None) or Family()
    rows = []
    for epoch in run.epochs:
        for layer, mask in run.masks(epoch).items():
            if mask.ndim < 2:
                continue
            mask = oriented(mask, family.role(layer, mask.shape))  # a Conv1D weight's outputs are its columns
            flat = mask.reshape(mask.shape[0], mask.shape[1], -1)
            density = float(np.count_nonzero(mask)) / mask.size
            for side, degrees, most in (("in", flat.sum((1, 2)), flat.shape[1] * flat.shape[2]),
                                        ("out", flat.sum((0, 2)), flat.shape[0] * flat.shape[2])):
                values, counts = np.unique(degrees, return_counts=True)
                rows += [(name, epoch, layer, side, int(v), int(c), most, density)
                         for v, c in zip(values, counts, strict=True)]
    return pd.DataFrame(rows, columns=["run", "epoch", "layer", "side", "degree", "count", "n", "density"])
