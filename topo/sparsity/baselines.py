"""The paper's controls (Section 4, Table 2): dense, random fixed sparse, random channel-wise sparse, pruning.

"Wide dense" is not a sparsity method but a model size: train :class:`Dense` on the widths
:func:`topo.sparsity.budget.match_budget` returns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from topo.errors import ConfigError, MaskError
from topo.sparsity.base import Sparsifier, active_count, random_mask
from topo.sparsity.masks import ParamFilter
from topo.sparsity.structure import nm_top


class Dense(Sparsifier):
    """The dense baseline: every weight active, nothing masked (masks are all True and never applied)."""

    method = "dense"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        density: float = 1.0,
        params: Iterable[str] | ParamFilter | None = None,
        seed: int | None = None,
    ) -> None:
        if density != 1.0:
            raise ConfigError(f"the dense baseline has density 1.0, got {density!r}")
        super().__init__(model, None, density=1.0, params=params, seed=seed)
        self.optimizer = optimizer

    def mask_grads(self) -> None:
        """Nothing to mask."""

    def step(self) -> None:
        self.step_count += 1


class RandomFixed(Sparsifier):
    """Random fixed sparse control: a uniformly random mask with n − ⌊(1 − α)·n⌋ active weights that never
    changes (N:M within every group with ``structure``)."""

    method = "random-fixed"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        density: float,
        params: Iterable[str] | ParamFilter | None = None,
        seed: int | None = None,
        distribution: str = "uniform",
        dense_first_last: bool = False,
        structure: str | None = None,
    ) -> None:
        super().__init__(model, optimizer, density=density, params=params, seed=seed, distribution=distribution,
                         dense_first_last=dense_first_last, structure=structure)
        self._initialise_masks(self.random_initial_mask)


class FixedMask(Sparsifier):
    """A given mask held fixed: the transplant experiment of Section 5.1 (a learned topology, trained anew).

    ``masks`` maps layer names to boolean tensors of the weights' shapes; the density reported is the overall
    fraction of active weights in them.
    """

    method = "fixed-mask"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        masks: dict[str, torch.Tensor],
        seed: int | None = None,
    ) -> None:
        if not masks:
            raise ConfigError("fixed-mask: `masks` is empty; give a boolean mask for each layer to hold fixed")
        empty = [name for name, m in masks.items() if not bool(torch.as_tensor(m).any())]
        if empty:
            raise MaskError(f"fixed-mask: the mask of {', '.join(map(repr, empty))} has no active weight; a layer "
                            "without connections cannot be trained (leave it out of `masks` to keep it dense)")
        active = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        super().__init__(model, optimizer, density=active / total, params=list(masks), seed=seed)
        self._initialise_masks(lambda name, w: masks[name].to(torch.bool))


class RandomChannelwise(Sparsifier):
    """Random sparse channel-wise control (Table 2): whole kernels on or off.

    For a weight of shape (out, in, *kernel) a random set of exactly round(α·out·in) (out, in) channel pairs is
    active, each with its full kernel. For 2-D weights (Linear, recurrent) this is an elementwise random mask.
    """

    method = "random-channelwise"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        density: float,
        params: Iterable[str] | ParamFilter | None = None,
        seed: int | None = None,
        distribution: str = "uniform",
        dense_first_last: bool = False,
    ) -> None:
        super().__init__(model, optimizer, density=density, params=params, seed=seed, distribution=distribution,
                         dense_first_last=dense_first_last)
        self._initialise_masks(self._channel_mask)

    def _channel_mask(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if weight.dim() < 2:
            raise ConfigError(f"channel-wise sparsity needs a weight with >= 2 dims; {name!r} has {weight.dim()}")
        pairs = random_mask(weight.shape[:2], self.layer_density[name], self.generator, weight.device)
        return pairs.view(*weight.shape[:2], *([1] * (weight.dim() - 2))).expand_as(weight).clone()


class MagnitudePruning(Sparsifier):
    """Magnitude pruning with fine-tuning after Han et al. (2015b), the paper's "Pruned" column.

    Train dense; after each epoch in ``prune_after`` (0-based), keep only the largest-magnitude weights, then go on
    training (fine-tuning) with the mask fixed. With one entry this is one-shot pruning to α; with several, the
    density falls geometrically, α^(i/m) after the i-th of m prunings (iterative pruning), reaching α at the last.

    With ``structure="N:M"`` every pruning keeps the N' largest |w| of every group of M inputs, N' = round(M·d)
    of the step's density d (the last step N:M exactly).

    ``scope="layer"`` keeps exactly :func:`~topo.sparsity.base.active_count` (α_i, n) weights in every sparse layer
    (the same budget as the other methods); ``scope="global"`` ranks the weights of all sparse layers together and
    keeps the same total (``distribution`` must then be ``"uniform"``: a global ranking sets the layer densities
    itself). Layers kept dense (``dense_first_last``) are never pruned, in either scope.

    Model selection: epochs before the last pruning are not at the target density (:attr:`at_target` is False
    then), so Table 2 picks the epoch among those after it.
    """

    method = "pruning"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        density: float,
        prune_after: Sequence[int] = (0,),
        scope: str = "layer",
        params: Iterable[str] | ParamFilter | None = None,
        seed: int | None = None,
        distribution: str = "uniform",
        dense_first_last: bool = False,
        structure: str | None = None,
    ) -> None:
        super().__init__(model, optimizer, density=density, params=params, seed=seed, distribution=distribution,
                         dense_first_last=dense_first_last, structure=structure)
        if not prune_after or any((not isinstance(e, int)) or e < 0 for e in prune_after):
            raise ConfigError(f"prune_after must be a non-empty list of epoch indices >= 0, got {prune_after!r}")
        if scope not in ("layer", "global"):
            raise ConfigError(f"scope must be 'layer' or 'global', got {scope!r}")
        if scope == "global" and structure is not None:
            raise ConfigError("pruning: N:M structure keeps N of every group in each layer; use scope='layer'")
        if scope == "global" and distribution != "uniform":
            raise ConfigError(f"pruning: scope='global' ranks all layers together, which sets the layer densities "
                              f"itself; distribution={distribution!r} needs scope='layer'")
        self.prune_after = sorted(set(prune_after))
        self.scope = scope

    def config(self) -> dict[str, Any]:
        return {**super().config(), "prune_after": self.prune_after, "scope": self.scope}

    def current_target(self, epochs_done: int, density: float | None = None) -> float:
        """The density the schedule asks for once ``epochs_done`` epochs are finished (of a layer whose final
        density is ``density``, by default the model's α)."""
        done = sum(1 for e in self.prune_after if e < epochs_done)
        final = self.density if density is None else density
        return 1.0 if done == 0 else final ** (done / len(self.prune_after))

    @property
    def at_target(self) -> bool:
        """True once the last scheduled pruning has been done."""
        return self.epochs_done > self.prune_after[-1]

    def end_epoch(self, epoch: int) -> None:
        super().end_epoch(epoch)
        if epoch in self.prune_after:
            self.prune_to(self.current_target(self.epochs_done))

    @torch.no_grad()
    def prune_to(self, density: float) -> None:
        """Keep exactly the largest-|w| weights at ``density`` (per layer or globally), zero the rest.

        Per layer, each layer's target follows its own density from the distribution (the same schedule step).
        """
        names = self.sparse_layers
        weights = [self.masked.params[n].detach() for n in names]
        if not names:
            return
        if self.structure is not None:
            n, m = self.structure
            keep = min(m, max(n, round(m * density)))  # every step N':M, the last N:M
            new_masks = [self.oriented(name, nm_top(self.oriented(name, w.abs()), keep, m, name))
                         for name, w in zip(names, weights, strict=True)]
        elif self.scope == "layer":
            step = math.log(density) / math.log(self.density) if self.density < 1 and density < 1 else 0.0
            keeps = [active_count(w.numel(), self.layer_density[n] ** step if step else density)
                     for n, w in zip(names, weights, strict=True)]
            new_masks = [_top_magnitude(w.abs(), k) for w, k in zip(weights, keeps, strict=True)]
        else:
            flat = torch.cat([w.abs().flatten().to(weights[0].device) for w in weights])
            kept = _top_magnitude(flat, active_count(flat.numel(), density))
            sizes = [w.numel() for w in weights]
            new_masks = [m.view(w.shape).to(w.device) for m, w in zip(kept.split(sizes), weights, strict=True)]
        for name, new in zip(names, new_masks, strict=True):
            old = self.masked.masks[name]
            pruned = old & ~new
            self._record_change(name, pruned, torch.zeros_like(pruned))
            self.masked.set_mask(name, new)
        self._masks_changed()


def _top_magnitude(magnitude: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask of exactly ``keep`` largest entries of ``magnitude``."""
    mask = torch.zeros(magnitude.numel(), dtype=torch.bool, device=magnitude.device)
    mask[torch.topk(magnitude.flatten(), keep, sorted=False).indices] = True
    return mask.view(magnitude.shape)


__all__ = ["Dense", "FixedMask", "MagnitudePruning", "RandomChannelwise", "RandomFixed"]
