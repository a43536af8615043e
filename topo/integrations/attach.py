"""What both framework callbacks do the same way: check a method's name early, find the optimizer that steps the
sparsified weights, refuse one whose steps cannot be hooked, and build the method object on it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from topo.errors import ConfigError
from topo.record.store import STAT_COLUMNS
from topo.sparsity import METHODS, make_sparsifier
from topo.sparsity.base import Sparsifier, check_density
from topo.sparsity.masks import select_parameters

#: Optimizers whose ``step(closure)`` evaluates the model several times per step: a mask applied after the step
#: cannot keep the inactive weights out of the evaluations inside it.
CLOSURE_OPTIMIZERS = (torch.optim.LBFGS,)


def check_method(method: str, density: float) -> None:
    """Raise :class:`ConfigError` for an unknown method (listing the valid ones) or a density outside (0, 1]."""
    if method not in METHODS:
        raise ConfigError(f"unknown sparsity method {method!r}; valid: {', '.join(sorted(METHODS))}")
    check_density(density)


def unwrap(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside a framework's wrapper (Lightning's ``LightningOptimizer``, accelerate's
    ``AcceleratedOptimizer``)."""
    seen = 0
    while not type(optimizer).__module__.startswith("torch.") and seen < 4:
        inner = getattr(optimizer, "_optimizer", None) or getattr(optimizer, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            break
        optimizer, seen = inner, seen + 1
    return optimizer


def stepping_optimizer(model: nn.Module, optimizers: Iterable[Any], params: Any = None) -> torch.optim.Optimizer:
    """The one optimizer among ``optimizers`` that holds the weights topo sparsifies in ``model``.

    Raises :class:`ConfigError` when the model has nothing to sparsify, no optimizer or several share those
    weights, or the optimizer is one whose steps cannot be masked (:data:`CLOSURE_OPTIMIZERS`).
    """
    weights = {id(p) for p in select_parameters(model, params).values()}
    candidates = [unwrap(o) for o in optimizers]
    holding = [o for o in candidates if any(id(p) in weights for g in o.param_groups for p in g["params"])]
    if not holding:
        raise ConfigError(f"no optimizer steps the sparsified weights of {type(model).__name__} "
                          f"(optimizers: {[type(o).__name__ for o in candidates] or 'none'})")
    if len(holding) > 1:
        raise ConfigError(f"{len(holding)} optimizers step the sparsified weights; topo needs them in one")
    optimizer = holding[0]
    if isinstance(optimizer, CLOSURE_OPTIMIZERS):
        raise ConfigError(f"{type(optimizer).__name__} re-evaluates the model inside step(closure), where topo "
                          "cannot keep inactive weights at zero; use a first-order optimizer (SGD, Adam, …)")
    return optimizer


def build_sparsifier(method: str, model: nn.Module, optimizers: Iterable[Any], density: float,
                     hyperparameters: Mapping[str, Any]) -> Sparsifier:
    """The method object for ``model`` on its stepping optimizer (``density`` and ``hyperparameters`` as
    :func:`topo.sparsity.make_sparsifier` takes them; ``dense`` takes no density)."""
    check_method(method, density)
    optimizer = stepping_optimizer(model, optimizers, hyperparameters.get("params"))
    kwargs = dict(hyperparameters) if method == "dense" else {"density": density, **hyperparameters}
    return make_sparsifier(method, model, optimizer, **kwargs)


def loggable(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scalar numbers among a framework's logged ``metrics`` (floats, ints, one-element tensors), renamed
    ``trainer_<name>`` where a name is a column the recorder writes itself (``epoch``, ``density`` …)."""
    reserved = {"epoch", "layer", *STAT_COLUMNS}
    numbers = {}
    for name, value in metrics.items():
        if torch.is_tensor(value) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers[f"trainer_{name}" if name in reserved else name] = float(value)
    return numbers
