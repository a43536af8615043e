"""The one small interface every sparsity method shares, and what they all do the same way.

A method object wraps a model (and, usually, its optimizer) and is driven from any training loop::

    sparsifier = topo.sparsity.Adaptive(model, optimizer, density=0.3, k=0.25)
    ...
    loss.backward(); optimizer.step(); sparsifier.step()     # every training step
    sparsifier.end_epoch(epoch)                              # after every epoch but the last, once it is scored

Given the optimizer, the method zeroes inactive gradients in an optimizer step pre-hook (after DDP's all-reduce
and after AMP unscaling; with a fused optimizer under ``GradScaler``, which unscales inside ``step()``, the
gradients the methods read are divided by the scale the scaler hands the optimizer), so nothing else is needed
in the loop. Steps that do not happen (``GradScaler`` skips the optimizer step when it finds inf/NaN
gradients) are neither counted in ``step_count`` nor adapted on. Without an optimizer, call
:meth:`Sparsifier.mask_grads` between ``backward()`` and ``optimizer.step()``.

Gradient clipping sees the inactive weights' gradients unless they are masked first: call
``sparsifier.mask_grads()`` (after ``scaler.unscale_(optimizer)`` when using a ``GradScaler``) before
``torch.nn.utils.clip_grad_norm_``. It is idempotent; the pre-hook masks again at no harm.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn

from topo.errors import ConfigError
from topo.families import Family, detect_model
from topo.options import parse_structure
from topo.sparsity.distributions import inactive_count, layer_densities
from topo.sparsity.masks import LayerCount, MaskedParams, ParamFilter
from topo.sparsity.structure import random_nm_mask


def check_density(density: float) -> float:
    """Return ``density`` as a float, or raise :class:`ConfigError` when it is outside (0, 1]."""
    if not isinstance(density, (int, float)) or isinstance(density, bool) or not 0.0 < float(density) <= 1.0:
        raise ConfigError(f"density must be in (0, 1], got {density!r}")
    return float(density)


def active_count(total: int, density: float) -> int:
    """How many of ``total`` weights are active at ``density``: total − ⌊(1 − density)·total⌋, at least one.

    The inactive count is ⌊(1 − α)·n⌋ as google-research/rigl (``sparse_utils.get_n_zeros``) and rigl-torch
    (``random_sparsify``) count it, for every topo method, so that a mask of any method at α holds as many
    weights as these references' (one more than round(α·n) where α·n has a fractional part below ½).

    Differs from them where their floating-point product falls an ulp below a whole number: they compute
    ``floor((1 - 0.9) * 10)`` = ⌊0.9999999999999998⌋ = 0 and leave a layer at density 0.9 of 10 weights dense;
    topo's :func:`inactive_count` takes a product within a few ulps of an integer as that integer, so every
    density k/n gives exactly k active weights.
    """
    return max(1, min(total, total - inactive_count(total, density)))


def draw_seed() -> int:
    """A seed drawn from torch's global generator: a method built without ``seed=`` follows
    ``torch.manual_seed``, so two seeds give two initial masks, and the seed drawn is the one recorded."""
    return int(torch.randint(0, 2**31 - 1, (), dtype=torch.int64))


@torch.no_grad()
def change_topology(weight: torch.Tensor, mask: torch.Tensor, dropped: torch.Tensor, grown: torch.Tensor,
                    new_values: torch.Tensor, *, reinit_when_same: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop ``dropped`` and grow ``grown`` in one layer, in place on ``weight`` and ``mask``; returns the
    (pruned, grown) positions whose state changed.

    ``dropped`` are active positions; ``grown`` are positions inactive once ``dropped`` are removed, so a
    position may be in both: dropped and regrown at the same update. By default
    (``reinit_when_same=False``, the default of google-research/rigl's ``SparseRigLOptimizer`` and
    ``SparseSETOptimizer`` and the only behaviour of rigl-torch's ``RigLScheduler``) such a position keeps its
    weight and its optimizer state and counts as neither pruned nor grown. With ``reinit_when_same=True`` it
    counts as both and takes its new value, as the SET authors' ``set_mlp.py`` does. Newly grown positions
    take ``new_values`` there; pruned positions are zeroed.
    """
    if reinit_when_same:
        pruned, added = dropped, grown
    else:
        pruned, added = dropped & ~grown, grown & ~dropped
    weight.copy_(torch.where(added, new_values.to(weight.dtype), weight * ~pruned))
    mask.copy_((mask & ~pruned) | added)
    return pruned, added


def random_mask(shape: torch.Size, density: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """A uniformly random boolean mask of ``shape`` with exactly :func:`active_count` True entries."""
    total = math.prod(shape)
    keep = torch.randperm(total, generator=generator, device=device)[: active_count(total, density)]
    mask = torch.zeros(total, dtype=torch.bool, device=device)
    mask[keep] = True
    return mask.view(shape)


class Sparsifier:
    """Base of every method: masks, the per-step hooks, change counters, state and DDP mask sync.

    Parameters
    ----------
    model:
        The network (any device; a DDP wrapper is fine).
    optimizer:
        The optimizer that steps ``model``'s parameters. When given, inactive gradients are zeroed in its step
        pre-hook and the optimizer state of pruned or grown weights is reset.
    density:
        α, the fraction of the sparsified weights that is active, in (0, 1].
    params:
        Which weights to sparsify (see :func:`topo.sparsity.masks.select_parameters`).
    seed:
        Seed of the method's own random generator (initial masks, sampling, new weights). ``None`` (the default)
        draws one from torch's global generator (:func:`draw_seed`), so ``torch.manual_seed`` decides it;
        :attr:`seed` and ``config()`` hold the seed used.
    distribution:
        How α is spread over layers (:func:`topo.sparsity.layer_densities`): ``"uniform"`` (every layer at α, the
        paper's setting), ``"er"`` or ``"erk"``; :attr:`layer_density` holds the result.
    dense_first_last:
        Keep the first and the last sparsified layer dense (outside the budget), as the DST papers do.

    structure:
        ``"N:M"`` (e.g. ``"2:4"``) for methods that support it: every sparse layer's mask keeps at most N of every
        M consecutive inputs of each output (:mod:`topo.sparsity.structure`); ``density`` must then be N/M and
        the distribution uniform.

    Which layers are sparse is decided here, once, for every method: :attr:`sparse_layers`, the layers whose
    density (:attr:`layer_density`) is below 1. The others (``dense_first_last``, or layers a distribution made
    dense) keep an all-True mask that no method ever changes. What each weight means (a ``Conv1D`` weight stored
    (in, out), a fused q/k/v projection) is :attr:`family` (:func:`topo.families.detect_model`): ER/ERK read a
    fused projection as its parts, and N:M groups run along each weight's true inputs.
    """

    method: ClassVar[str] = "base"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        density: float = 1.0,
        params: Iterable[str] | ParamFilter | None = None,
        seed: int | None = None,
        distribution: str = "uniform",
        dense_first_last: bool = False,
        structure: str | None = None,
    ) -> None:
        self.density = check_density(density)
        self.model = model
        self.optimizer = optimizer
        self.seed = draw_seed() if seed is None else int(seed)
        self.masked = MaskedParams(model, params)
        self.distribution = distribution
        self.dense_first_last = bool(dense_first_last)
        self.family: Family = detect_model(model)
        names = self.masked.names
        shapes = {n: tuple(p.shape) for n, p in self.masked.params.items()}
        fused = {n: len(self.family.role(n, s).parts) for n, s in shapes.items() if self.family.role(n, s).parts}
        as_out_in = {n: (s[1], s[0]) if n in self.family.transposed else s for n, s in shapes.items()}
        self.layer_density = layer_densities(as_out_in, self.density, distribution, parts=fused,
                                             dense={names[0], names[-1]} if dense_first_last else ())
        self.structure = parse_structure(structure)
        if self.structure is not None:
            self._check_structure()
        device = next(iter(self.masked.params.values())).device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(self.seed)
        self.step_count = 0
        self.epochs_done = 0
        self._optimizer_stepped = False
        self._grad_scale: torch.Tensor | None = None
        self._changes = {n: torch.zeros(2, dtype=torch.int64, device=device) for n in self.masked.names}
        self.ever_active = {n: torch.ones_like(m) for n, m in self.masked.masks.items()}  # dense until masked
        self._hook = optimizer.register_step_pre_hook(self._before_optimizer_step) if optimizer else None

    # -- the interface --------------------------------------------------------------------------------------
    @property
    def sparse_layers(self) -> list[str]:
        """The layers a method sparsifies and may change: those at a density below 1, in model order."""
        return [name for name in self.masked.names if self.layer_density[name] < 1.0]

    def oriented(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (shaped like the weight ``name``) as (out, in): transposed for a weight stored (in, out)."""
        return tensor.T if name in self.family.transposed else tensor

    def _check_structure(self) -> None:
        n, m = self.structure
        if abs(self.density - n / m) > 1e-9 or self.distribution != "uniform":
            raise ConfigError(f"{n}:{m} sparsity has density {n / m:g} in every sparse layer: pass density={n / m:g} "
                              f"and the uniform distribution (got density={self.density:g}, "
                              f"distribution={self.distribution!r})")
        for name in self.sparse_layers:
            shape = tuple(self.oriented(name, self.masked.params[name]).shape)
            if len(shape) != 2:
                raise ConfigError(f"{name}: N:M sparsity applies to 2-D weights (Linear, Conv1D), not {shape}; "
                                  "leave it out with params=")
            if shape[1] % m:
                raise ConfigError(f"{name}: its {shape[1]} inputs do not divide into groups of {m} ({n}:{m} "
                                  "sparsity); leave it out with params=")

    def random_initial_mask(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """A uniformly random mask at the layer's density, N:M within every group when :attr:`structure` is set."""
        if self.structure is None or name not in self.sparse_layers:
            return random_mask(weight.shape, self.layer_density[name], self.generator, weight.device)
        n, m = self.structure
        shape = tuple(self.oriented(name, weight).shape)
        return self.oriented(name, random_nm_mask(shape, n, m, self.generator, weight.device, name))

    @property
    def at_target(self) -> bool:
        """Whether the masks are at the method's final density (a schedule that prunes later says False before
        its last pruning); model selection considers only epochs at the target."""
        return True

    def exploration(self) -> dict[str, float]:
        """Per layer, the fraction of positions that were ever active (in-time over-parameterisation, Liu et al.
        2021): the layer's density for a fixed mask, growing towards 1 as adaptation explores."""
        counts = torch.stack([torch.count_nonzero(m) for m in self.ever_active.values()]).tolist()
        return {n: c / m.numel() for (n, m), c in zip(self.ever_active.items(), counts, strict=True)}

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Layer name → boolean mask, on the weight's device (live tensors: do not modify in place)."""
        return self.masked.masks

    @property
    def weights(self) -> dict[str, nn.Parameter]:
        """Layer name → the sparsified weight."""
        return self.masked.params

    def mask_grads(self) -> None:
        """Zero inactive gradients; call between ``backward()`` and ``optimizer.step()`` if no optimizer was given."""
        self.masked.mask_grads()

    def step(self) -> None:
        """Call after every ``optimizer.step()``: re-zeroes inactive weights; counts and adapts if it stepped.

        With an optimizer, a step whose ``optimizer.step()`` did not run (or that ``GradScaler`` skipped) is
        not counted and triggers nothing.
        """
        self.masked.apply()
        self._grad_scale = None
        if self.optimizer is not None and not self._optimizer_stepped:
            self._skipped_step()
            return
        self._optimizer_stepped = False
        self.step_count += 1
        self._after_step()

    def end_epoch(self, epoch: int) -> None:
        """Call after every epoch but the last, once it is scored and recorded; ``epoch`` is the 0-based index of
        the epoch just finished. Methods that adapt per epoch change their topology here (SET, pruning) or at the
        next optimizer step (the adaptive rule)."""
        self.epochs_done = epoch + 1

    def config(self) -> dict[str, Any]:
        """The method's name and hyperparameters, JSON-serialisable (for ``run.json``)."""
        config = {"method": self.method, "density": self.density, "seed": self.seed,
                  "distribution": self.distribution, "dense_first_last": self.dense_first_last}
        if self.structure is not None:
            config["structure"] = f"{self.structure[0]}:{self.structure[1]}"
        return config

    def counts(self) -> dict[str, LayerCount]:
        """Active and total weights per sparsified layer."""
        return self.masked.counts()

    def total(self) -> LayerCount:
        """Active and total weights over all sparsified layers."""
        return self.masked.total()

    def take_change_counters(self) -> torch.Tensor:
        """(layers × 2) tensor of weights (pruned, grown) since the last call, on the device; resets them."""
        counters = torch.stack(list(self._changes.values()))
        for counter in self._changes.values():
            counter.zero_()
        return counters

    def pop_changes(self) -> dict[str, tuple[int, int]]:
        """Weights (pruned, grown) per layer since the last call, as integers; resets the counters."""
        values = self.take_change_counters().tolist()
        return {n: (int(p), int(g)) for n, (p, g) in zip(self._changes, values, strict=True)}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-identically: masks, counters, the random generator's state."""
        return {
            "config": self.config(),
            "masks": self.masked.state_dict(),
            "step_count": self.step_count,
            "epochs_done": self.epochs_done,
            "generator": self.generator.get_state(),
            "changes": {n: c.clone() for n, c in self._changes.items()},
            "ever_active": {n: m.clone() for n, m in self.ever_active.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the model's inactive weights are zeroed to match the masks."""
        if state["config"]["method"] != self.method:
            raise ConfigError(f"state is of method {state['config']['method']!r}, this is {self.method!r}")
        self.masked.load_state_dict(state["masks"])
        self.step_count = int(state["step_count"])
        self.epochs_done = int(state["epochs_done"])
        self.generator.set_state(state["generator"])
        for name, counter in state["changes"].items():
            self._changes[name].copy_(counter)
        for name, mask in self.masked.masks.items():
            ever = state.get("ever_active", {}).get(name)
            self.ever_active[name] = (ever.to(mask.device) | mask) if ever is not None else mask.clone()

    def remove(self) -> None:
        """Detach the optimizer hook; masks are left in place."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # -- for subclasses ---------------------------------------------------------------------------------------
    def _after_step(self) -> None:
        """Runs after every counted step (the optimizer stepped)."""

    def _skipped_step(self) -> None:
        """Runs after a step whose optimizer update did not happen."""

    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        found_inf = getattr(optimizer, "found_inf", None)  # set by GradScaler for fused optimizers
        if found_inf is not None and bool(found_inf.item()):
            return  # the fused kernel skips this update: nothing to count or adapt
        self._grad_scale = getattr(optimizer, "grad_scale", None)
        self.mask_grads()
        self._optimizer_stepped = True

    def true_grad(self, grad: torch.Tensor) -> torch.Tensor:
        """A float32 copy of ``grad``, unscaled when a fused optimizer under ``GradScaler`` has not unscaled it."""
        grad = grad.detach().to(torch.float32, copy=True)
        return grad.div_(self._grad_scale) if self._grad_scale is not None else grad

    def _initialise_masks(self, make_mask) -> None:
        """Set every layer's mask to ``make_mask(name, weight)`` and broadcast it under DDP."""
        with torch.no_grad():
            for name, weight in self.masked.params.items():
                self.masked.set_mask(name, make_mask(name, weight))
                self.ever_active[name] = torch.zeros_like(self.masked.masks[name])
        self._masks_changed()

    @torch.no_grad()
    def _masks_changed(self) -> None:
        """After any change of masks: make every DDP rank agree, and note the active positions in
        :attr:`ever_active` (the positions active at any time so far: the exploration of Liu et al. 2021)."""
        self._sync_across_ranks()
        for name, mask in self.masked.masks.items():
            self.ever_active[name] |= mask

    @torch.no_grad()
    def _record_change(self, name: str, pruned: torch.Tensor, grown: torch.Tensor) -> None:
        """Count pruned/grown weights of ``name`` and reset their optimizer state (momentum, Adam moments)."""
        self._changes[name][0] += torch.count_nonzero(pruned)
        self._changes[name][1] += torch.count_nonzero(grown)
        if self.optimizer is None:
            return
        changed = pruned | grown
        state = self.optimizer.state.get(self.masked.params[name], {})
        for value in state.values():
            if torch.is_tensor(value) and value.shape == changed.shape:
                value.masked_fill_(changed, 0)

    @torch.no_grad()
    def _sync_across_ranks(self) -> None:
        """Under torch.distributed, make rank 0's masks, sparsified weights and their optimizer state every rank's.

        Each rank resets the optimizer state of the positions it changed itself; after adopting rank 0's masks
        and weights, it must adopt rank 0's optimizer state (momentum, Adam moments) of those weights too, or the
        ranks drift apart from the next step on. Every state tensor shaped like its weight is broadcast.
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        for name, weight in self.masked.params.items():
            as_bytes = self.masked.masks[name].to(torch.uint8)
            dist.broadcast(as_bytes, src=0)
            self.masked.masks[name].copy_(as_bytes.bool())
            dist.broadcast(weight.data, src=0)
            if self.optimizer is not None:
                state = self.optimizer.state.get(weight, {})
                for key in sorted(state):
                    value = state[key]
                    if torch.is_tensor(value) and value.shape == weight.shape and value.device == weight.device:
                        dist.broadcast(value, src=0)
