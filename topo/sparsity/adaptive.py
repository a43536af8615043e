"""Adaptive weight sparsity: the paper's prune/grow rule (Section 3) with every hyperparameter.

For each sparsified weight tensor, at each adaptation:

1. **Prune.** Sample a fraction β1 of the active weights and let W̄ be the mean of their magnitudes. Each sampled
   weight is deactivated with probability (Section 3, first equation)

       P(1→0 | w, W̄, a) = 1 / (1 + exp[g(|w| / (k·W̄) − 1 − s(a − α))])

   so P = 0.5 at |w| = k·W̄ when a = α. ``a`` is the layer's active fraction before pruning.

2. **Grow.** Sample a fraction β0 of the inactive weights (including those just pruned) and let V̄ be the mean
   magnitude of the loss gradient ∇J over them. Each candidate is activated with probability

       P(0→1 | ∇J, V̄, a) = 1 / (1 + exp[g(l·V̄ / |∇J| − 1 + s(a − α))])

   The seed's text of this equation is garbled by OCR; this is the form its prose states: P = 0.5 at
   |∇J| = l·V̄ (when a = α), P rises with |∇J|, and falls as the active fraction ``a`` (after pruning) exceeds
   α. A zero gradient never grows.

3. **Initialise** grown weights as w = Cg·∇J + n, n ~ U(−r, r), with r = 2·k·W̄ by default (Section 4).
   Note the sign: w = Cg·∇J literally, so Cg < 0 starts a new weight along the descent direction.

Limits: ``g = inf`` makes both rules deterministic thresholds (prune iff |w| < k·W̄(1 + s(a−α)), grow iff
the grow exponent is negative). ``s = inf`` holds the active count fixed: pruning uses the threshold with the
s-term at zero (a = α) and exactly as many weights are grown as were pruned, largest |∇J| first among the
candidates (topped up uniformly at random from the unsampled inactive weights if β0 sampled too few). The
paper's experiments use β0 = β1 = 1, g = s = inf, Cg = 0, r = 2kW̄: the defaults here.

The grow rule reads the dense gradient of inactive weights. Gradients of inactive weights are zeroed before every
optimizer step; at a step where an adaptation is due, the dense gradient is kept aside first. Adaptations run
every ``every`` steps (``unit="step"``) or, with ``unit="epoch"``, at the first optimizer step after every
``every``-th :meth:`~topo.sparsity.base.Sparsifier.end_epoch`, using that step's minibatch gradient.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from topo.errors import ConfigError, TopoError
from topo.sparsity.base import Sparsifier, change_topology, check_density
from topo.sparsity.masks import ParamFilter


@dataclass(frozen=True)
class AdaptiveConfig:
    """Hyperparameters of the rule (Section 3); defaults are the paper's experimental presets (Section 4).

    Attributes
    ----------
    density: α, target fraction of active weights per layer.
    k: pruning threshold as a multiple of the mean active magnitude W̄.
    l: growing threshold as a multiple of the mean candidate gradient magnitude V̄.
    g: sigmoid sharpness; ``math.inf`` for deterministic thresholds.
    s: strength of the bias towards a = α; ``math.inf`` grows exactly as many as were pruned.
    beta1: fraction of active weights sampled for pruning.
    beta0: fraction of inactive weights sampled as growth candidates.
    r: radius of the uniform noise of new weights; ``None`` for 2·k·W̄.
    cg: gradient coefficient Cg of new weights.
    every: adaptation period, in ``unit``.
    unit: ``"epoch"`` or ``"step"``.
    """

    density: float
    k: float = 0.5
    l: float = 1.0  # noqa: E741 - the paper's name
    g: float = math.inf
    s: float = math.inf
    beta1: float = 1.0
    beta0: float = 1.0
    r: float | None = None
    cg: float = 0.0
    every: int = 1
    unit: str = "epoch"

    def __post_init__(self) -> None:
        check_density(self.density)
        for name in ("k", "l", "g"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0 (math.inf allowed for g), got {getattr(self, name)!r}")
        if not self.s >= 0:
            raise ConfigError(f"s must be >= 0 (math.inf allowed), got {self.s!r}")
        for name in ("beta1", "beta0"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in (0, 1], got {getattr(self, name)!r}")
        if self.r is not None and not (self.r >= 0 and math.isfinite(self.r)):
            raise ConfigError(f"r must be a finite number >= 0 or None, got {self.r!r}")
        if not math.isfinite(self.cg):
            raise ConfigError(f"cg must be finite, got {self.cg!r}")
        if not (isinstance(self.every, int) and self.every >= 1):
            raise ConfigError(f"every must be an integer >= 1, got {self.every!r}")
        if self.unit not in ("epoch", "step"):
            raise ConfigError(f"unit must be 'epoch' or 'step', got {self.unit!r}")


def _bias(s: float, active_fraction: float | torch.Tensor, density: float) -> float | torch.Tensor:
    """The term s·(a − α); zero in the s → ∞ limit, where the count is held at α by construction."""
    return 0.0 if math.isinf(s) else s * (active_fraction - density)


def _sigmoid_limit(exponent: torch.Tensor, g: float) -> torch.Tensor:
    """1 / (1 + exp(g·x)); for g = inf the step function (1 below zero, 0.5 at zero, 0 above)."""
    if math.isinf(g):
        return (exponent < 0).to(torch.float32) + 0.5 * (exponent == 0).to(torch.float32)
    return torch.sigmoid(-g * exponent)


def prune_exponent(
    weight_abs: torch.Tensor, mean_abs: float | torch.Tensor, active_fraction: float | torch.Tensor, cfg: AdaptiveConfig
) -> torch.Tensor:
    """x in P(1→0) = 1/(1+exp(g·x)): x = |w|/(k·W̄) − 1 − s(a − α)."""
    return weight_abs / (cfg.k * mean_abs) - 1.0 - _bias(cfg.s, active_fraction, cfg.density)


def grow_exponent(
    grad_abs: torch.Tensor, mean_grad: float | torch.Tensor, active_fraction: float | torch.Tensor, cfg: AdaptiveConfig
) -> torch.Tensor:
    """y in P(0→1) = 1/(1+exp(g·y)): y = l·V̄/|∇J| − 1 + s(a − α); +inf where ∇J = 0 (never grows)."""
    ratio = torch.where(grad_abs > 0, cfg.l * mean_grad / grad_abs, torch.full_like(grad_abs, math.inf))
    return ratio - 1.0 + _bias(cfg.s, active_fraction, cfg.density)


def prune_probability(
    weight_abs: torch.Tensor, mean_abs: float | torch.Tensor, active_fraction: float | torch.Tensor, cfg: AdaptiveConfig
) -> torch.Tensor:
    """P(1→0 | w, W̄, a) of Section 3, elementwise."""
    return _sigmoid_limit(prune_exponent(weight_abs, mean_abs, active_fraction, cfg), cfg.g)


def grow_probability(
    grad_abs: torch.Tensor, mean_grad: float | torch.Tensor, active_fraction: float | torch.Tensor, cfg: AdaptiveConfig
) -> torch.Tensor:
    """P(0→1 | ∇J, V̄, a) of Section 3 (see the module docstring for its form), elementwise."""
    return _sigmoid_limit(grow_exponent(grad_abs, mean_grad, active_fraction, cfg), cfg.g)


def _sample(candidates: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Each candidate kept independently with probability ``fraction`` (all of them for fraction 1)."""
    if fraction >= 1.0:
        return candidates
    draw = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    return candidates & (draw < fraction)


def _decide(exponent: torch.Tensor, g: float, generator: torch.Generator) -> torch.Tensor:
    """Bernoulli draw with P = 1/(1+exp(g·x)); for g = inf, deterministically x < 0."""
    if math.isinf(g):
        return exponent < 0
    draw = torch.rand(exponent.shape, generator=generator, device=exponent.device)
    return draw < torch.sigmoid(-g * exponent)


def _masked_mean(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` where ``where`` holds, summed in float64 (as :func:`adapt_layers_fused` does)."""
    return ((values.double() * where).sum() / where.sum().clamp(min=1)).float()


@torch.no_grad()
def adapt_layer(
    weight: torch.Tensor,
    mask: torch.Tensor,
    grad: torch.Tensor,
    cfg: AdaptiveConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One adaptation of one weight tensor, in place on ``weight`` and ``mask``.

    Every statistic, threshold and new value is computed in float32 whatever the weight's dtype (a float16
    mean over millions of weights overflows), and new values are rounded to the weight's dtype only when
    written. Returns the boolean tensors (pruned, grown) of the positions that changed. A weight pruned and
    regrown at the same adaptation (growth reads the inactive weights after pruning, so it may pick one just
    pruned) keeps its value and optimizer state and counts as neither, the convention of RigL's reference
    implementations (:func:`~topo.sparsity.base.change_topology`); the paper does not say.
    """
    total = mask.numel()
    weight_abs = weight.abs().float()
    active_fraction = mask.sum() / total  # a device tensor: no host synchronisation

    sampled = _sample(mask, cfg.beta1, generator)
    mean_abs = _masked_mean(weight_abs, sampled)
    dropped = sampled & _decide(prune_exponent(weight_abs, mean_abs, active_fraction, cfg), cfg.g, generator)
    remaining = mask & ~dropped

    grad = grad.float()
    grad_abs = grad.abs()
    candidates = _sample(~remaining, cfg.beta0, generator)
    if math.isinf(cfg.s):
        grown = _grow_count(grad_abs, candidates, remaining, int(dropped.sum().item()), generator, cfg.beta0 >= 1)
    else:
        mean_grad = _masked_mean(grad_abs, candidates)
        after_prune = remaining.sum() / total
        grown = candidates & _decide(grow_exponent(grad_abs, mean_grad, after_prune, cfg), cfg.g, generator)

    radius = 2.0 * cfg.k * mean_abs if cfg.r is None else torch.tensor(cfg.r, device=weight.device)
    noise = torch.rand(weight.shape, generator=generator, device=weight.device) * 2 - 1
    return change_topology(weight, mask, dropped, grown, cfg.cg * grad + noise * radius)


def _grow_count(
    grad_abs: torch.Tensor, candidates: torch.Tensor, mask: torch.Tensor, quota: int, generator: torch.Generator,
    sampled_all: bool,
) -> torch.Tensor:
    """The s → ∞ growth: exactly ``quota`` inactive weights, the candidates with the largest |∇J| first.

    When the β0-sample holds fewer than ``quota`` candidates, the rest are drawn uniformly at random (from
    ``generator``) among the unsampled inactive weights; active weights are never chosen. ``sampled_all``: the
    candidates are every inactive weight (β0 = 1), hence at least ``quota`` of them.
    """
    flat_candidates = candidates.flatten()
    grown = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    n_candidates = quota if sampled_all else int(flat_candidates.sum().item())
    if n_candidates >= quota:
        scores = torch.where(flat_candidates, grad_abs.flatten(), -1.0)
        order = torch.sort(scores, descending=True, stable=True).indices  # ties: the lower position first
        grown[order[:quota]] = True
        return grown.view(mask.shape)
    grown |= flat_candidates
    others = (~mask).flatten() & ~flat_candidates
    keys = torch.rand(mask.numel(), generator=generator, device=mask.device)
    keys = torch.where(others, keys, -1.0)
    grown[torch.topk(keys, quota - n_candidates, sorted=False).indices] = True
    return grown.view(mask.shape)


def fusable(cfg: AdaptiveConfig) -> bool:
    """Whether a layer's rule is the paper's preset form that :func:`adapt_layers_fused` computes (g = s = ∞,
    β0 = β1 = 1: deterministic thresholds, exact counts, every weight a candidate)."""
    return math.isinf(cfg.g) and math.isinf(cfg.s) and cfg.beta0 >= 1.0 and cfg.beta1 >= 1.0


@torch.no_grad()
def adapt_layers_fused(weights: list[torch.Tensor], masks: list[torch.Tensor], grads: list[torch.Tensor],
                       configs: list[AdaptiveConfig],
                       generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`adapt_layer` of every layer at once, for the preset form (:func:`fusable`); the same masks and
    weights as the per-layer pass, in a few kernels over the concatenated layers and without a host
    synchronisation.

    The layers' magnitudes, masks and gradients are concatenated; every layer's W̄ is a segment mean, its
    threshold k·W̄ is broadcast back, and pruning is one comparison. Growth sorts the whole concatenation once by
    |∇J| (descending, ties to the lower position) and then stably by layer, so each layer's candidates come in
    its own order and the first (pruned count) of them are grown. New values draw their noise layer by layer, in
    the order (and from the generator) of the per-layer pass. Returns (pruned, grown) per layer.
    """
    device = weights[0].device
    counts = [w.numel() for w in weights]
    offsets = [0, *itertools.accumulate(counts)]  # on the host: slicing the layers back needs no device read
    sizes = torch.tensor(counts, device=device)
    ends = torch.cumsum(sizes, 0)
    starts = ends - sizes
    segment = torch.repeat_interleave(torch.arange(len(weights), device=device), sizes)
    magnitude = torch.cat([w.detach().reshape(-1).abs().float() for w in weights])
    mask = torch.cat([m.reshape(-1) for m in masks])
    gradient = torch.cat([g.reshape(-1).float() for g in grads])
    active = _segment_sum(mask.float(), ends)
    mean = _segment_sum(magnitude * mask, ends) / active.clamp(min=1)
    k = torch.tensor([cfg.k for cfg in configs], device=device, dtype=torch.float32)
    dropped = mask & (magnitude < (k * mean)[segment])  # |w|/(k·W̄) − 1 < 0, without dividing by a zero mean
    quota = _segment_sum(dropped.float(), ends).round().long()
    candidates = ~(mask & ~dropped)
    scores = torch.where(candidates, gradient.abs(), -1.0)
    by_score = torch.sort(scores, descending=True, stable=True).indices
    by_layer = torch.sort(segment[by_score], stable=True).indices
    order = by_score[by_layer]
    rank = torch.arange(order.numel(), device=device) - starts[segment[order]]
    grown = torch.zeros_like(mask)
    grown[order] = rank < quota[segment[order]]
    results = []
    for index, (weight, layer_mask, grad, cfg) in enumerate(zip(weights, masks, grads, configs, strict=True)):
        piece = slice(offsets[index], offsets[index + 1])
        radius = 2.0 * cfg.k * mean[index] if cfg.r is None else torch.tensor(cfg.r, device=device)
        noise = torch.rand(weight.shape, generator=generator, device=device) * 2 - 1
        results.append(change_topology(weight, layer_mask, dropped[piece].view(weight.shape),
                                       grown[piece].view(weight.shape), cfg.cg * grad.float() + noise * radius))
    return results


def _segment_sum(values: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Sums of consecutive segments of ``values`` ending (exclusive) at ``ends``, in float64, deterministic."""
    running = torch.cumsum(values, 0, dtype=torch.float64)
    totals = running[ends - 1]
    return torch.diff(totals, prepend=totals.new_zeros(1)).float()


class Adaptive(Sparsifier):
    """Adaptive weight sparsity (Section 3): prune small weights, grow where the gradient is large.

    Takes the hyperparameters of :class:`AdaptiveConfig` as keyword arguments. The initial mask of each layer is
    uniformly random with exactly round(α·n) active weights ("the model is initialized by setting a target
    fraction α of the weights to be active"); active weights keep the model's own initialisation.
    """

    method = "adaptive"

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
        **hyperparameters: Any,
    ) -> None:
        unknown = set(hyperparameters) - set(AdaptiveConfig.__dataclass_fields__)
        if unknown:
            valid = sorted(AdaptiveConfig.__dataclass_fields__)
            raise ConfigError(f"unknown adaptive hyperparameter(s) {sorted(unknown)}; valid: {valid}")
        self.cfg = AdaptiveConfig(density=density, **hyperparameters)
        super().__init__(model, optimizer, density=density, params=params, seed=seed, distribution=distribution,
                         dense_first_last=dense_first_last)
        self._layer_cfg = {n: replace(self.cfg, density=d) for n, d in self.layer_density.items()}
        self._initialise_masks(self.random_initial_mask)
        self._pending = False
        self._stashed_grads: dict[str, torch.Tensor] | None = None

    def config(self) -> dict[str, Any]:
        return {**super().config(), **asdict(self.cfg)}

    @property
    def adaptation_due(self) -> bool:
        """Whether the coming optimizer step is followed by an adaptation."""
        if self.cfg.unit == "step":
            return (self.step_count + 1) % self.cfg.every == 0
        return self._pending

    def mask_grads(self) -> None:
        """Zero inactive gradients; when an adaptation is due, first keep the dense gradient (once per step)."""
        if self.adaptation_due and self._stashed_grads is None:
            self._stashed_grads = {n: self.true_grad(self.masked.params[n].grad) for n in self.sparse_layers
                                   if self.masked.params[n].grad is not None}
        super().mask_grads()

    def _after_step(self) -> None:
        if self._stashed_grads is not None:
            grads, self._stashed_grads = self._stashed_grads, None
            if self.adapt(grads):
                self._pending = False

    def _skipped_step(self) -> None:
        self._stashed_grads = None

    def end_epoch(self, epoch: int) -> None:
        super().end_epoch(epoch)
        if self.cfg.unit == "epoch" and self.epochs_done % self.cfg.every == 0:
            self._pending = True

    @torch.no_grad()
    def adapt(self, grads: dict[str, torch.Tensor]) -> bool:
        """Run the prune/grow rule on every sparse layer that has a gradient in ``grads`` (dense, unmasked);
        layers at density 1 (:attr:`~topo.sparsity.base.Sparsifier.sparse_layers`) are never adapted. With the
        paper's presets (:func:`fusable`) all layers are adapted at once by :func:`adapt_layers_fused` (the same
        result as one layer at a time, without a host synchronisation per layer).

        Returns False, changing nothing, when a gradient holds inf/NaN (with a warning naming the layer; with
        ``unit="epoch"`` the adaptation stays pending for the next step). Raises :class:`~topo.errors.TopoError`
        naming the layer when its weights are not finite (training has diverged: no rule can read them).
        """
        grads = {name: grad for name, grad in grads.items() if self.layer_density[name] < 1.0}
        checks = [t for name, grad in grads.items()
                  for t in (torch.isfinite(grad).all(), torch.isfinite(self.masked.params[name].detach()).all())]
        finite = torch.stack(checks).view(-1, 2).tolist() if grads else []  # one host synchronisation
        for name, (grad_ok, weight_ok) in zip(grads, finite, strict=True):
            if not weight_ok:
                raise TopoError(f"adaptive: layer {name!r} has inf/NaN weights; cannot adapt a diverged model")
            if not grad_ok:
                warnings.warn(f"adaptive: gradient of layer {name!r} holds inf/NaN; no adaptation at this step",
                              RuntimeWarning, stacklevel=2)
                return False
        names = list(grads)
        configs = [self._layer_cfg[name] for name in names]
        weights = [self.masked.params[name].data for name in names]
        masks = [self.masked.masks[name] for name in names]
        if names and all(fusable(cfg) for cfg in configs) and len({w.device for w in weights}) == 1:
            changes = adapt_layers_fused(weights, masks, [grads[n] for n in names], configs, self.generator)
        else:
            changes = [adapt_layer(weight, mask, grads[name], cfg, self.generator)
                       for name, weight, mask, cfg in zip(names, weights, masks, configs, strict=True)]
        for name, (pruned, grown) in zip(names, changes, strict=True):
            self._record_change(name, pruned, grown)
        self._masks_changed()
        return True

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pending": self._pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._pending = bool(state["pending"])
