"""Backbones of dense weighted layers: which connections of a trained dense network carry its structure.

A dense layer's mask is all ones, so its graph is complete and every topology metric is trivial. Network
science reads a dense weighted network through its backbone, the edges that matter:

* **magnitude** (:func:`magnitude_backbone`): the fraction F of weights with the largest |w|, per layer, or over
  the whole model (:class:`GlobalMagnitude`);
* **disparity filter** (:func:`disparity_backbone`, Serrano, Boguñá & Vespignani 2009, PNAS 106:6483): an edge
  of a node with k edges and strength s = Σ|w| carries the share p = |w|/s; under the null hypothesis that the
  node's strength is split uniformly at random among its k edges, the probability of a share at least p is
  α = (1 − p)^(k − 1). The edge is kept when α < A at either of its two nodes.

A layer's weight (out × in, or out × in × kernel) is read as a bipartite graph between its input and output
neurons with |w| as edge weights; a convolution's edge between two channels weighs Σ|w| over the kernel, and a
kept channel pair keeps every tap of its kernel. :func:`topo.options.parse_backbone` reads the command line's
``magnitude:F`` / ``disparity:A``.
"""

from __future__ import annotations

import torch

from topo.errors import ConfigError


def _keep_largest(weight: torch.Tensor, count: int) -> torch.Tensor:
    """Mask of the ``count`` largest |w|; of those equal to the threshold, the first by position.

    Memory: one float32 copy of the layer at a time (the threshold comes from an in-place partial sort).
    """
    n = weight.numel()
    if count <= 0:
        return torch.zeros(weight.shape, dtype=torch.bool, device=weight.device)
    magnitude = _magnitude(weight).reshape(-1)
    if magnitude.is_cuda:
        threshold = torch.topk(magnitude, count, sorted=False).values.min()
    else:
        values = magnitude.numpy()
        values.partition(n - count)
        threshold = torch.tensor(values[n - count])
        del values
    del magnitude
    flat = _magnitude(weight).reshape(-1)
    keep = flat > threshold
    ties = torch.nonzero(flat == threshold).flatten()[: count - int(torch.count_nonzero(keep))]
    keep[ties] = True
    return keep.view(weight.shape)


def _magnitude(weight: torch.Tensor) -> torch.Tensor:
    """|w| in float32 (a new tensor), NaN read as 0."""
    return weight.detach().float().abs().nan_to_num_(nan=0.0)


def magnitude_backbone(weight: torch.Tensor, fraction: float) -> torch.Tensor:
    """Keep exactly round(``fraction`` · n) weights of largest |w| (ties broken by position); NaN counts as 0."""
    _check_fraction(fraction)
    return _keep_largest(weight, round(fraction * weight.numel()))


class GlobalMagnitude:
    """The magnitude backbone over a whole model, computed while its layers stream past once.

    ``count = round(fraction · total weights)``; :meth:`observe` each layer's weight (only the ``count``
    largest magnitudes seen so far are kept, so memory is that, not the model), then :meth:`mask` each layer:
    weights above the threshold, and of those equal to it the first ones in layer order and position, so that
    exactly ``count`` are kept in all.
    """

    def __init__(self, fraction: float, total: int) -> None:
        _check_fraction(fraction)
        self.count = round(fraction * total)
        self._top = torch.zeros(0)
        self._ties_left: int | None = None

    def observe(self, weight: torch.Tensor) -> None:
        """Take one layer's magnitudes into the running top-``count`` (the first pass over the model)."""
        magnitude = _magnitude(weight).reshape(-1).cpu()
        joined = torch.cat([self._top, magnitude])
        self._top = torch.topk(joined, min(self.count, joined.numel())).values if self.count else joined[:0]

    @property
    def threshold(self) -> float:
        """The ``count``-th largest |w| of the whole model (+inf when nothing is kept)."""
        return float(self._top.min()) if self.count and self._top.numel() else float("inf")

    def mask(self, weight: torch.Tensor) -> torch.Tensor:
        """The layer's mask; layers must be masked in the order they were observed."""
        threshold = self.threshold
        if self._ties_left is None:
            self._ties_left = self.count - int(torch.count_nonzero(self._top > threshold))
        magnitude = _magnitude(weight)
        above = magnitude > threshold
        ties = (magnitude == threshold).reshape(-1)
        tied = torch.nonzero(ties).flatten()[: max(0, self._ties_left)]
        self._ties_left -= len(tied)
        chosen = torch.zeros_like(ties)
        chosen[tied] = True
        return above | chosen.view(magnitude.shape)


def disparity_backbone(weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """The disparity filter's mask of a layer at significance level ``alpha`` (see the module docstring).

    Nodes are the output neurons (rows) and input neurons (columns); zero (or NaN) weights are never kept.
    """
    if not 0 < alpha < 1:
        raise ConfigError(f"disparity filter: significance level must be in (0, 1), got {alpha}")
    w = torch.nan_to_num(weight.detach().to(torch.float64).abs(), nan=0.0)
    edges = w.reshape(w.shape[0], w.shape[1], -1).sum(-1) if w.dim() > 2 else w
    present = edges > 0
    significant = torch.zeros_like(present)
    for dim in (1, 0):  # shares of each output neuron's strength (rows), then of each input neuron's (columns)
        strength = edges.sum(dim, keepdim=True)
        degree = present.sum(dim, keepdim=True).to(torch.float64)
        share = torch.where(strength > 0, edges / strength, torch.zeros_like(edges))
        significance = torch.pow(1 - share, degree - 1)
        significant |= present & (significance < alpha)
    if w.dim() > 2:
        return significant.view(*significant.shape, *([1] * (w.dim() - 2))).expand(w.shape).clone()
    return significant


def _check_fraction(fraction: float) -> None:
    if not 0 < fraction <= 1:
        raise ConfigError(f"magnitude backbone: the fraction kept must be in (0, 1], got {fraction}")
