"""Today's dynamic sparse training methods beside the paper's rule: SET, RigL and SNIP.

Each composes a per-layer density (:mod:`topo.sparsity.distributions`), a schedule and a drop/grow rule, behind
the same interface as every topo method (``step()``, ``end_epoch()``, ``masks``, ``state_dict()``):

* :class:`SET` (Mocanu et al. 2018, Nat. Commun. 9:2383): at the end of every ``every``-th epoch, drop the
  fraction ζ of each layer's active weights with the smallest |w| and regrow as many at uniformly random inactive
  positions, initialised to zero (or uniformly in ±``init_scale``).
* :class:`RigL` (Evci et al. 2020, "Rigging the lottery", ICML): every ΔT steps until T_end, drop the fraction
  f(t) = (α_drop / 2)(1 + cos(π t / T_end)) of each layer's active weights with the smallest |w| and grow as many
  where the dense gradient |∇J| is largest among the positions not kept, new weights zero. The dense gradient is
  kept aside only at update steps.
* :class:`SNIP` (Lee et al. 2019, ICLR): prune once at initialisation to the target density by the connection
  sensitivity |∇J ⊙ w| over one minibatch, then hold the mask fixed.

Dropping and growing count exactly; ties go to the lower position. The optimizer state of every changed position
is reset, changes are counted for the recorder, and under DDP rank 0's result is every rank's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from topo.errors import ConfigError
from topo.sparsity.base import Sparsifier, active_count, check_density, random_mask
from topo.sparsity.masks import ParamFilter


def smallest_active(weight: torch.Tensor, mask: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` active positions of smallest |w| (ties: lower position first), as a boolean mask."""
    return largest(torch.where(mask, -weight.detach().abs().float(), -math.inf), mask, count)


def largest(scores: torch.Tensor, allowed: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` allowed positions of largest score (ties: lower position first), as a boolean mask."""
    flat = torch.where(allowed, scores, -math.inf).reshape(-1)
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    count = min(count, int(torch.count_nonzero(allowed)))
    if count > 0:
        order = torch.sort(flat, descending=True, stable=True).indices[:count]
        chosen[order] = True
    return chosen.view(scores.shape)


def _check_fraction(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and 0 < value < 1):
        raise ConfigError(f"{name} must be in (0, 1), got {value!r}")
    return float(value)


class _DropAndGrow(Sparsifier):
    """What SET and RigL share: random initial masks at the layer densities, and one drop-and-grow pass."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, *, density: float,
                 params: Iterable[str] | ParamFilter | None, seed: int, distribution: str,
                 dense_first_last: bool) -> None:
        super().__init__(model, optimizer, density=density, params=params, seed=seed, distribution=distribution,
                         dense_first_last=dense_first_last)
        self._initialise_masks(
            lambda name, w: random_mask(w.shape, self.layer_density[name], self.generator, w.device))

    @torch.no_grad()
    def drop_and_grow(self, fraction: float, scores: Callable[[str, torch.Tensor], torch.Tensor],
                      new_values: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
        """In every sparse layer, drop round(``fraction`` · active) weights of smallest |w| and grow as many
        where ``scores(name, allowed)`` is largest among the positions not kept; grown weights take
        ``new_values(name, grown)`` (a tensor of the weight's shape, read where grown)."""
        for name, weight in self.masked.params.items():
            if self.layer_density[name] >= 1.0:
                continue
            mask = self.masked.masks[name]
            count = round(fraction * int(torch.count_nonzero(mask)))
            if count == 0:
                continue
            dropped = smallest_active(weight, mask, count)
            mask &= ~dropped
            grown = largest(scores(name, ~mask), ~mask, count)
            mask |= grown
            weight.data.copy_(torch.where(grown, new_values(name, grown).to(weight.dtype), weight.data * mask))
            self._record_change(name, dropped, grown)
        self._masks_changed()


class SET(_DropAndGrow):
    """Sparse Evolutionary Training (Mocanu et al. 2018); see the module docstring.

    Parameters
    ----------
    zeta: ζ, the fraction of each layer's active weights dropped and regrown, in (0, 1).
    every: epochs between adaptations (at the end of every ``every``-th epoch).
    init_scale: grown weights are zero (``None``, the default) or uniform in ±``init_scale``.
    """

    method = "set"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, density: float,
                 zeta: float = 0.3, every: int = 1, init_scale: float | None = None,
                 params: Iterable[str] | ParamFilter | None = None, seed: int = 0, distribution: str = "uniform",
                 dense_first_last: bool = False) -> None:
        check_density(density)
        self.zeta = _check_fraction("zeta (ζ)", zeta)
        if not (isinstance(every, int) and every >= 1):
            raise ConfigError(f"every must be an integer >= 1, got {every!r}")
        if init_scale is not None and not (math.isfinite(init_scale) and init_scale >= 0):
            raise ConfigError(f"init_scale must be a finite number >= 0 or None, got {init_scale!r}")
        self.every, self.init_scale = every, init_scale
        super().__init__(model, optimizer, density=density, params=params, seed=seed, distribution=distribution,
                         dense_first_last=dense_first_last)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "zeta": self.zeta, "every": self.every, "init_scale": self.init_scale}

    def end_epoch(self, epoch: int) -> None:
        super().end_epoch(epoch)
        if self.epochs_done % self.every == 0:
            self.adapt()

    def adapt(self) -> None:
        """One SET pass: drop the smallest ζ of each layer, regrow at random (random scores from the generator)."""
        def random_scores(name: str, allowed: torch.Tensor) -> torch.Tensor:
            return torch.rand(allowed.shape, generator=self.generator, device=allowed.device)

        def values(name: str, grown: torch.Tensor) -> torch.Tensor:
            if not self.init_scale:
                return torch.zeros(grown.shape, device=grown.device)
            noise = torch.rand(grown.shape, generator=self.generator, device=grown.device)
            return (2 * noise - 1) * self.init_scale

        self.drop_and_grow(self.zeta, random_scores, values)


class RigL(_DropAndGrow):
    """Rigging the lottery (Evci et al. 2020); see the module docstring.

    Parameters
    ----------
    alpha_drop: α_drop, the initial drop fraction, in (0, 1).
    delta_t: ΔT, optimizer steps between updates.
    t_end: T_end, the step after which the masks stay fixed; by default 75 % of ``total_steps``.
    total_steps: the run's length in optimizer steps (needed when ``t_end`` is not given).
    """

    method = "rigl"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, density: float,
                 alpha_drop: float = 0.3, delta_t: int = 100, t_end: int | None = None,
                 total_steps: int | None = None, params: Iterable[str] | ParamFilter | None = None, seed: int = 0,
                 distribution: str = "uniform", dense_first_last: bool = False) -> None:
        check_density(density)
        self.alpha_drop = _check_fraction("alpha_drop (α_drop)", alpha_drop)
        if not (isinstance(delta_t, int) and delta_t >= 1):
            raise ConfigError(f"delta_t (ΔT) must be an integer >= 1, got {delta_t!r}")
        if t_end is None:
            if total_steps is None:
                raise ConfigError("rigl needs t_end (T_end, in steps) or total_steps (T_end = 75 % of it)")
            t_end = int(0.75 * total_steps)
        if not (isinstance(t_end, int) and t_end > 0):
            raise ConfigError(f"t_end (T_end) must be an integer > 0, got {t_end!r}")
        self.delta_t, self.t_end = delta_t, t_end
        self._stashed: dict[str, torch.Tensor] | None = None
        super().__init__(model, optimizer, density=density, params=params, seed=seed, distribution=distribution,
                         dense_first_last=dense_first_last)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "alpha_drop": self.alpha_drop, "delta_t": self.delta_t, "t_end": self.t_end}

    def drop_fraction(self, step: int) -> float:
        """f(t) = (α_drop / 2)(1 + cos(π t / T_end)) for t < T_end, else 0 (no more updates)."""
        if step >= self.t_end:
            return 0.0
        return self.alpha_drop / 2 * (1 + math.cos(math.pi * step / self.t_end))

    @property
    def update_due(self) -> bool:
        """Whether the coming optimizer step is an update step (t = its 1-based count, a multiple of ΔT < T_end)."""
        step = self.step_count + 1
        return step % self.delta_t == 0 and step < self.t_end

    def mask_grads(self) -> None:
        """Zero inactive gradients; at an update step, first keep the dense gradient (once per step)."""
        if self.update_due and self._stashed is None:
            self._stashed = {n: self.true_grad(p.grad) for n, p in self.masked.params.items() if p.grad is not None}
        super().mask_grads()

    def _after_step(self) -> None:
        if self._stashed is not None:
            grads, self._stashed = self._stashed, None
            self.adapt(grads, self.step_count)

    def _skipped_step(self) -> None:
        self._stashed = None

    def adapt(self, grads: dict[str, torch.Tensor], step: int) -> None:
        """One RigL update at step ``step`` with the dense gradients ``grads``."""
        missing = [n for n in self.masked.names if n not in grads and self.layer_density[n] < 1]
        if missing:
            raise ConfigError(f"rigl: no gradient for layer(s) {missing} at update step {step}")
        self.drop_and_grow(self.drop_fraction(step), lambda name, allowed: grads[name].abs(),
                           lambda name, grown: torch.zeros(grown.shape, device=grown.device))


def cross_entropy_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The default SNIP loss: cross-entropy of ``model(inputs)`` against class ``targets``."""
    inputs, targets = batch
    return F.cross_entropy(model(inputs), targets)


class SNIP(Sparsifier):
    """Single-shot network pruning (Lee et al. 2019); see the module docstring.

    Parameters
    ----------
    batch: one minibatch, ``(inputs, targets)`` on the model's device.
    loss: ``loss(model, batch) -> scalar`` (default: :func:`cross_entropy_loss`).
    scope: ``"global"`` ranks all sparsified weights together (SNIP as published; ``density`` overall) or
        ``"layer"`` keeps each layer's density from ``distribution``.
    """

    method = "snip"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, density: float,
                 batch: tuple[torch.Tensor, torch.Tensor] | None = None,
                 loss: Callable[[nn.Module, Any], torch.Tensor] = cross_entropy_loss, scope: str = "global",
                 params: Iterable[str] | ParamFilter | None = None, seed: int = 0, distribution: str = "uniform",
                 dense_first_last: bool = False) -> None:
        check_density(density)
        if batch is None:
            raise ConfigError("snip prunes at initialisation from one minibatch: pass batch=(inputs, targets)")
        if scope not in ("global", "layer"):
            raise ConfigError(f"scope must be 'global' or 'layer', got {scope!r}")
        self.scope = scope
        super().__init__(model, optimizer, density=density, params=params, seed=seed, distribution=distribution,
                         dense_first_last=dense_first_last)
        scores = self.sensitivity(batch, loss)
        self._initialise_masks(self._mask_from(scores))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "scope": self.scope}

    def sensitivity(self, batch: Any, loss: Callable[[nn.Module, Any], torch.Tensor]) -> dict[str, torch.Tensor]:
        """Connection sensitivity |∇J ⊙ w| of every sparsified weight over ``batch``."""
        weights = list(self.masked.params.values())
        value = loss(self.model, batch)
        grads = torch.autograd.grad(value, weights, allow_unused=True)
        return {name: (grad.detach() * weight.detach()).abs().float() if grad is not None
                else torch.zeros_like(weight, dtype=torch.float32)
                for (name, weight), grad in zip(self.masked.params.items(), grads, strict=True)}

    def _mask_from(self, scores: dict[str, torch.Tensor]) -> Callable[[str, torch.Tensor], torch.Tensor]:
        sparse = [n for n in scores if self.layer_density[n] < 1]
        if self.scope == "layer" or not sparse:
            masks = {n: largest(s, torch.ones_like(s, dtype=torch.bool), active_count(s.numel(),
                                                                                       self.layer_density[n]))
                     for n, s in scores.items()}
        else:
            flat = torch.cat([scores[n].reshape(-1).to(scores[sparse[0]].device) for n in sparse])
            kept = largest(flat, torch.ones_like(flat, dtype=torch.bool), active_count(flat.numel(), self.density))
            pieces = kept.split([scores[n].numel() for n in sparse])
            masks = {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
            masks.update({n: piece.view(scores[n].shape).to(scores[n].device) for n, piece in zip(sparse, pieces,
                                                                                                   strict=True)})
        return lambda name, weight: masks[name]
