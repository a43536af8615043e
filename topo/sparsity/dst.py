"""Today's dynamic sparse training methods beside the paper's rule: SET, RigL and SNIP.

Each composes a per-layer density (:mod:`topo.sparsity.distributions`), a schedule and a drop/grow rule, behind
the same interface as every topo method (``step()``, ``end_epoch()``, ``masks``, ``state_dict()``):

* :class:`SET` (Mocanu et al. 2018, Nat. Commun. 9:2383): at the end of every ``every``-th epoch but the last,
  drop about ζ of each layer's negative and ζ of its positive active weights closest to zero (the authors'
  thresholds) and regrow as many at uniformly random positions not kept, drawn N(0, 0.1²) as the authors' code
  draws them.
* :class:`RigL` (Evci et al. 2020, "Rigging the lottery", ICML): every ΔT steps until T_end, drop
  ⌊f(t)·n_active⌋ of each layer's active weights with the smallest |w|, f(t) = (α_drop / 2)(1 + cos(π t / T_end)),
  and grow as many where the dense gradient |∇J| is largest among the positions not kept, new weights zero. The
  dense gradient is kept aside only at update steps.
* :class:`SNIP` (Lee et al. 2019, ICLR): prune once at initialisation to the target density by the connection
  sensitivity |∇J ⊙ w| over one minibatch, then hold the mask fixed.

Each class docstring names the reference implementation its defaults follow where the paper is silent, and says
where topo differs. Only the sparse layers change (:attr:`~topo.sparsity.base.Sparsifier.sparse_layers`); a
position dropped and regrown at once keeps its weight and optimizer state and counts as neither
(:func:`~topo.sparsity.base.change_topology`); the optimizer state of every other changed position is reset,
changes are counted for the recorder, and under DDP rank 0's result is every rank's. Ties go to the lower position.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from topo.errors import ConfigError
from topo.sparsity.base import Sparsifier, active_count, change_topology, check_density
from topo.sparsity.masks import ParamFilter
from topo.sparsity.structure import grow_in_groups


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


def per_sign_smallest(weight: torch.Tensor, mask: torch.Tensor, zeta: float) -> torch.Tensor:
    """SET's drop set: ζ of the negative and, separately, ζ of the positive active weights closest to zero.

    The thresholds are those of the SET authors' ``weightsEvolution`` (``set_mlp.py``), restated: sort the
    n active values ascending; let f be the first and e the last position of the value nearest zero and
    z = e + 1; the largest negative kept is below v[⌊(1 − ζ)·f⌋] and the smallest positive kept is above
    v[⌊min(n − 1, z + ζ·(n − z))⌋]. Every active weight from the first threshold to the second, both included, is
    dropped: about ζ of each sign, and the weight nearest zero always.
    """
    values = weight.detach()[mask].float().sort().values
    n = values.numel()
    if n == 0:
        return torch.zeros_like(mask)
    distance = values.abs()
    nearest = distance.min()
    at_nearest = torch.nonzero(distance == nearest).flatten()
    first, after_last = int(at_nearest[0]), int(at_nearest[-1]) + 1
    low = values[int((1.0 - zeta) * first)]
    high = values[int(min(n - 1, after_last + zeta * (n - after_last)))]
    w = weight.detach().float()
    return mask & (w >= low) & (w <= high)


def set_drop_count(active: int, zeta: float) -> int:
    """How many of ``active`` weights SET's magnitude drop removes: ``int(float32(active) · float32(ζ))``, the
    truncated float32 product of google-research/rigl's ``SparseSETOptimizerBase`` (0.3 of 12 is 3, where
    rounding gives 4)."""
    return int(torch.tensor(active, dtype=torch.float32) * torch.tensor(zeta, dtype=torch.float32))


class _DropAndGrow(Sparsifier):
    """What SET and RigL share: random initial masks at the layer densities, and one drop-and-grow pass over the
    sparse layers (:attr:`~topo.sparsity.base.Sparsifier.sparse_layers`), where a position dropped and regrown at
    once is kept (:func:`~topo.sparsity.base.change_topology`, ``reinit_when_same``)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, *, density: float,
                 params: Iterable[str] | ParamFilter | None, seed: int | None, distribution: str,
                 dense_first_last: bool, reinit_when_same: bool, structure: str | None) -> None:
        super().__init__(model, optimizer, density=density, params=params, seed=seed, distribution=distribution,
                         dense_first_last=dense_first_last, structure=structure)
        self.reinit_when_same = bool(reinit_when_same)
        self._initialise_masks(self.random_initial_mask)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "reinit_when_same": self.reinit_when_same}

    @torch.no_grad()
    def drop_and_grow(self, drop: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor],
                      scores: Callable[[str, torch.Tensor], torch.Tensor],
                      new_values: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
        """In every sparse layer, drop the active positions ``drop(name, weight, mask)`` and grow as many where
        ``scores(name, allowed)`` is largest among the positions not kept (the just-dropped included); grown
        weights take ``new_values(name, grown)`` (a tensor of the weight's shape, read where grown). With N:M
        :attr:`structure`, each group of M inputs grows as many as it lost, so every mask stays N:M."""
        for name in self.sparse_layers:
            weight, mask = self.masked.params[name], self.masked.masks[name]
            dropped = drop(name, weight, mask)
            count = int(torch.count_nonzero(dropped))
            if count == 0:
                continue
            allowed = ~(mask & ~dropped)
            if self.structure is not None:
                m = self.structure[1]
                lost = self.oriented(name, dropped)
                counts = lost.reshape(lost.shape[0], -1, m).sum(-1)
                grown = self.oriented(name, grow_in_groups(self.oriented(name, scores(name, allowed)),
                                                           self.oriented(name, allowed), counts, m, name))
            else:
                grown = largest(scores(name, allowed), allowed, count)
            pruned, added = change_topology(weight.data, mask, dropped, grown, new_values(name, grown),
                                            reinit_when_same=self.reinit_when_same)
            self._record_change(name, pruned, added)
        self._masks_changed()


#: How SET draws the values of regrown weights.
SET_INITS = ("normal", "uniform", "zero")
#: SET's drop rules: the authors' (per sign) and the overall smallest magnitudes.
SET_DROPS = ("per-sign", "magnitude")


class SET(_DropAndGrow):
    """Sparse Evolutionary Training (Mocanu et al. 2018); see the module docstring.

    Defaults follow the SET authors' ``set_mlp.py`` where the paper is silent: the drop rule is theirs
    (:func:`per_sign_smallest`), regrown weights are drawn like their initial ones, N(0, 0.1²)
    (``np.random.randn() / 10``), at positions drawn uniformly among those not kept (just-dropped ones included),
    and the last epoch is followed by no change (topo's training loop never calls ``end_epoch`` after its last
    epoch). One difference, stated: a position dropped and regrown at once keeps its weight and optimizer state
    here (``reinit_when_same=False``, as google-research/rigl's SET baseline); the authors' code draws it a new
    value (``reinit_when_same=True``).

    Parameters
    ----------
    zeta: ζ, the fraction of each layer's active weights dropped and regrown, in (0, 1).
    every: epochs between adaptations (at the end of every ``every``-th epoch).
    drop: ``"per-sign"`` (the authors') or ``"magnitude"``: the ⌊ζ·active⌋ smallest |w| overall, the count of
        google-research/rigl's SET baseline (``SparseSETOptimizerBase._get_update_op``: ``n_prune`` is
        ``int(float32(n_ones) · drop_fraction)``, truncated: 0.3 of 12 drops 3), ties to the lower position where
        the reference breaks them with noise of std 1e-5 (:func:`set_drop_count`; sparse_learning's magnitude
        death rounds ζ·active up, to 4 there).
    init: regrown weights are ``"normal"`` N(0, ``init_scale``²), ``"uniform"`` in ±``init_scale``, or ``"zero"``.
    init_scale: the standard deviation (normal) or half-width (uniform) of regrown weights; 0.1 by default.
    reinit_when_same: give a position dropped and regrown at once a new value (see above).
    structure: ``"N:M"``: every mask N:M, regrowth within each group of M inputs (:mod:`topo.sparsity.structure`).
    """

    method = "set"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, density: float,
                 zeta: float = 0.3, every: int = 1, drop: str = "per-sign", init: str = "normal",
                 init_scale: float = 0.1, reinit_when_same: bool = False, structure: str | None = None,
                 params: Iterable[str] | ParamFilter | None = None, seed: int | None = None,
                 distribution: str = "uniform", dense_first_last: bool = False) -> None:
        check_density(density)
        self.zeta = _check_fraction("zeta (ζ)", zeta)
        if not (isinstance(every, int) and every >= 1):
            raise ConfigError(f"every must be an integer >= 1, got {every!r}")
        if drop not in SET_DROPS:
            raise ConfigError(f"drop must be one of {', '.join(SET_DROPS)}, got {drop!r}")
        if init not in SET_INITS:
            raise ConfigError(f"init must be one of {', '.join(SET_INITS)}, got {init!r}")
        if not (isinstance(init_scale, (int, float)) and math.isfinite(init_scale) and init_scale >= 0):
            raise ConfigError(f"init_scale must be a finite number >= 0, got {init_scale!r}")
        self.every, self.drop, self.init, self.init_scale = every, drop, init, float(init_scale)
        super().__init__(model, optimizer, density=density, params=params, seed=seed, distribution=distribution,
                         dense_first_last=dense_first_last, reinit_when_same=reinit_when_same, structure=structure)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "zeta": self.zeta, "every": self.every, "drop": self.drop, "init": self.init,
                "init_scale": self.init_scale}

    def end_epoch(self, epoch: int) -> None:
        super().end_epoch(epoch)
        if self.epochs_done % self.every == 0:
            self.adapt()

    def dropped(self, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The active positions one SET pass drops from a layer (by :attr:`drop`)."""
        if self.drop == "per-sign":
            return per_sign_smallest(weight, mask, self.zeta)
        return smallest_active(weight, mask, set_drop_count(int(torch.count_nonzero(mask)), self.zeta))

    def adapt(self) -> None:
        """One SET pass: drop by :attr:`drop`, regrow as many at random (scores from the method's generator)."""
        def random_scores(name: str, allowed: torch.Tensor) -> torch.Tensor:
            return torch.rand(allowed.shape, generator=self.generator, device=allowed.device)

        def values(name: str, grown: torch.Tensor) -> torch.Tensor:
            if self.init == "zero":
                return torch.zeros(grown.shape, device=grown.device)
            if self.init == "normal":
                return torch.randn(grown.shape, generator=self.generator, device=grown.device) * self.init_scale
            noise = torch.rand(grown.shape, generator=self.generator, device=grown.device)
            return (2 * noise - 1) * self.init_scale

        self.drop_and_grow(lambda name, weight, mask: self.dropped(weight, mask), random_scores, values)


class RigL(_DropAndGrow):
    """Rigging the lottery (Evci et al. 2020); see the module docstring.

    Conventions of both reference implementations (google-research/rigl's ``SparseRigLOptimizer``, rigl-torch's
    ``RigLScheduler``) where the paper is silent: the drop count is ⌊f(t)·n_active⌋ (truncated); the update at
    optimizer step t (1-based) runs when t is a multiple of ΔT and t < T_end; grown weights start at zero; a
    position dropped and regrown at once keeps its weight and optimizer state (``reinit_when_same=False``). Ties
    go to the lower position (the references leave them to ``top_k``).

    Parameters
    ----------
    alpha_drop: α_drop, the initial drop fraction, in (0, 1).
    delta_t: ΔT, optimizer steps between updates.
    t_end: T_end, the step after which the masks stay fixed; by default 75 % of ``total_steps``.
    total_steps: the run's length in optimizer steps (needed when ``t_end`` is not given).
    reinit_when_same: give a position dropped and regrown at once a fresh zero value (google-research/rigl's flag).
    structure: ``"N:M"``: every mask N:M; the drop is RigL's, growth picks the largest gradients within each group
        of M inputs as many as the group lost (SRigL's constant fan-in).
    """

    method = "rigl"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, density: float,
                 alpha_drop: float = 0.3, delta_t: int = 100, t_end: int | None = None,
                 total_steps: int | None = None, reinit_when_same: bool = False, structure: str | None = None,
                 params: Iterable[str] | ParamFilter | None = None, seed: int | None = None,
                 distribution: str = "uniform", dense_first_last: bool = False) -> None:
        check_density(density)
        self.alpha_drop = _check_fraction("alpha_drop (α_drop)", alpha_drop)
        if not (isinstance(delta_t, int) and delta_t >= 1):
            raise ConfigError(f"delta_t (ΔT) must be an integer >= 1, got {delta_t!r}")
        if t_end is None:
            if total_steps is None:
                raise ConfigError(f"{self.method} needs t_end (T_end, in steps) or total_steps (T_end = 75 % of it)")
            t_end = int(0.75 * total_steps)
        if not (isinstance(t_end, int) and t_end > 0):
            raise ConfigError(f"t_end (T_end) must be an integer > 0, got {t_end!r}")
        self.delta_t, self.t_end = delta_t, t_end
        self._stashed: dict[str, torch.Tensor] | None = None
        super().__init__(model, optimizer, density=density, params=params, seed=seed, distribution=distribution,
                         dense_first_last=dense_first_last, reinit_when_same=reinit_when_same, structure=structure)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "alpha_drop": self.alpha_drop, "delta_t": self.delta_t, "t_end": self.t_end}

    def drop_fraction(self, step: int) -> float:
        """f(t) = (α_drop / 2)(1 + cos(π t / T_end)) for t < T_end, else 0 (no more updates)."""
        if step >= self.t_end:
            return 0.0
        return self.alpha_drop / 2 * (1 + math.cos(math.pi * step / self.t_end))

    def drop_count(self, step: int, active: int) -> int:
        """⌊f(t)·n_active⌋, truncated as both references do."""
        return int(self.drop_fraction(step) * active)

    @property
    def update_due(self) -> bool:
        """Whether the coming optimizer step is an update step (t = its 1-based count, a multiple of ΔT < T_end)."""
        step = self.step_count + 1
        return step % self.delta_t == 0 and step < self.t_end

    def mask_grads(self) -> None:
        """Zero inactive gradients; at an update step, first keep the dense gradient of the sparse layers (once)."""
        if self.update_due and self._stashed is None:
            self._stashed = {n: self.true_grad(self.masked.params[n].grad) for n in self.sparse_layers
                             if self.masked.params[n].grad is not None}
        super().mask_grads()

    def _after_step(self) -> None:
        if self._stashed is not None:
            grads, self._stashed = self._stashed, None
            self.adapt(grads, self.step_count)

    def _skipped_step(self) -> None:
        self._stashed = None

    def adapt(self, grads: dict[str, torch.Tensor], step: int) -> None:
        """One RigL update at step ``step`` with the dense gradients ``grads`` of the sparse layers."""
        missing = [n for n in self.sparse_layers if n not in grads]
        if missing:
            raise ConfigError(f"rigl: no gradient for layer(s) {missing} at update step {step}")

        def drop(name: str, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return smallest_active(weight, mask, self.drop_count(step, int(torch.count_nonzero(mask))))

        self.drop_and_grow(drop, lambda name, allowed: grads[name].abs(),
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
    scope: ``"global"`` ranks the weights of all sparse layers together (SNIP as published; ``density`` over
        them; ``distribution`` must then be ``"uniform"``, as a global ranking sets the layer densities itself) or
        ``"layer"`` keeps each layer's density from ``distribution``.

    The scores are |∇J ⊙ w| as in snip-public and mil-ad's PyTorch port (whose division by the scores' sum does not
    change the order). The scoring pass leaves the model as it was: its buffers (batch-norm statistics), the
    train/eval mode of every module, and torch's random generators are restored afterwards, as the references
    score a copy of the model. One difference, stated: topo keeps n − ⌊(1 − α)·n⌋ weights (every topo method's
    count, :func:`~topo.sparsity.base.active_count`) where the references keep ⌊α·n⌋: one more when α·n is
    fractional.
    """

    method = "snip"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, density: float,
                 batch: tuple[torch.Tensor, torch.Tensor] | None = None,
                 loss: Callable[[nn.Module, Any], torch.Tensor] = cross_entropy_loss, scope: str = "global",
                 params: Iterable[str] | ParamFilter | None = None, seed: int | None = None,
                 distribution: str = "uniform", dense_first_last: bool = False) -> None:
        check_density(density)
        if batch is None:
            raise ConfigError("snip prunes at initialisation from one minibatch: pass batch=(inputs, targets)")
        if scope not in ("global", "layer"):
            raise ConfigError(f"scope must be 'global' or 'layer', got {scope!r}")
        if scope == "global" and distribution != "uniform":
            raise ConfigError(f"snip: scope='global' ranks all layers together, which sets the layer densities "
                              f"itself; distribution={distribution!r} needs scope='layer'")
        self.scope = scope
        super().__init__(model, optimizer, density=density, params=params, seed=seed, distribution=distribution,
                         dense_first_last=dense_first_last)
        scores = self.sensitivity(batch, loss)
        self._initialise_masks(self._mask_from(scores))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "scope": self.scope}

    def sensitivity(self, batch: Any, loss: Callable[[nn.Module, Any], torch.Tensor]) -> dict[str, torch.Tensor]:
        """Connection sensitivity |∇J ⊙ w| of every sparsified weight over ``batch``; the model's buffers, modes
        and torch's random generators are as they were afterwards."""
        weights = list(self.masked.params.values())
        buffers = {name: b.detach().clone() for name, b in self.model.named_buffers()}
        modes = {module: module.training for module in self.model.modules()}
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            value = loss(self.model, batch)
            grads = torch.autograd.grad(value, weights, allow_unused=True)
        finally:
            with torch.no_grad():
                for name, b in self.model.named_buffers():
                    b.copy_(buffers[name])
            for module, training in modes.items():
                module.training = training
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
        return {name: (grad.detach() * weight.detach()).abs().float() if grad is not None
                else torch.zeros_like(weight, dtype=torch.float32)
                for (name, weight), grad in zip(self.masked.params.items(), grads, strict=True)}

    def _mask_from(self, scores: dict[str, torch.Tensor]) -> Callable[[str, torch.Tensor], torch.Tensor]:
        sparse = self.sparse_layers
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
