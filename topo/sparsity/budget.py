"""Parameter budgets matched as the paper does (Section 4).

"We also keep the number of nonzero parameters constant ... between experiments with different values of α by
adjusting layer dimensions accordingly." A layer of n×m weights at density α has α·n·m non-zeros; widening its
free dimensions by α^(-1/2) restores n·m. Input and output sizes are fixed, and biases stay dense, so the exact
widths are found numerically: :func:`match_budget` searches a common scale of the hidden widths, then nudges single
widths by ±1 until the sparse model's non-zero count is as close as it gets to the dense baseline's.

The "wide dense" control of Table 2 is the same widened model trained dense (it has α^-1 times the parameters).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from topo.errors import ConfigError
from topo.sparsity.base import active_count, check_density
from topo.sparsity.masks import ParamFilter, select_parameters

ModelFactory = Callable[[Sequence[int]], nn.Module]

log = logging.getLogger(__name__)


def nonzero_count(model: nn.Module, density: float, params: Iterable[str] | ParamFilter | None = None, *,
                  dense_first_last: bool = False) -> int:
    """Non-zero parameters of ``model`` when its sparsified weights are at ``density`` (the rest dense).

    With ``dense_first_last`` the first and the last sparsified weight count in full, as the methods keep them
    (:class:`~topo.sparsity.base.Sparsifier`).
    """
    density = check_density(density)
    selected = select_parameters(model, params)
    names = list(selected)
    kept_dense = {names[0], names[-1]} if dense_first_last else set()
    sparse = sum(p.numel() if n in kept_dense else active_count(p.numel(), density) for n, p in selected.items())
    dense = sum(p.numel() for n, p in model.named_parameters() if n not in selected)
    return sparse + dense


def _build(factory: ModelFactory, widths: Sequence[int]) -> nn.Module:
    with torch.device("meta"):
        return factory(list(widths))


@dataclass(frozen=True)
class BudgetMatch:
    """Widths whose sparse model has the dense baseline's non-zero count.

    Attributes
    ----------
    widths: the widened hidden widths (also the "wide dense" control's widths).
    density: α.
    target: non-zeros of the dense baseline at the base widths.
    nonzeros: non-zeros of the sparse model at ``widths`` and ``density``.
    wide_dense_params: parameters of the same widths trained dense.
    """

    widths: list[int]
    density: float
    target: int
    nonzeros: int
    wide_dense_params: int

    @property
    def relative_error(self) -> float:
        return abs(self.nonzeros - self.target) / self.target


def match_budget(
    factory: ModelFactory,
    widths: Sequence[int],
    density: float,
    *,
    params: Iterable[str] | ParamFilter | None = None,
    tolerance: float = 0.01,
    dense_first_last: bool = False,
) -> BudgetMatch:
    """Widen ``widths`` so that ``factory(widths)`` at ``density`` has the non-zeros of ``factory(base)`` dense.

    Parameters
    ----------
    factory:
        Builds the model from a list of hidden widths (models are built on the meta device: no memory is used).
    widths:
        The base (dense baseline) widths.
    density:
        α in (0, 1].
    tolerance:
        Largest accepted relative difference of non-zero counts.
    dense_first_last:
        The sparse model keeps its first and last sparsified weight dense; they count in full inside the budget.

    Raises
    ------
    ConfigError
        If no integer widths come within ``tolerance`` of the budget, unless the widths found are as close as
        integer widths can come (small models, where one unit moves the count by more than ``tolerance``; a
        warning is logged).
    """
    density = check_density(density)
    base = [int(w) for w in widths]
    if not base or any(w < 1 for w in base):
        raise ConfigError(f"widths must be positive integers, got {list(widths)!r}")
    target = nonzero_count(_build(factory, base), 1.0, params)

    def count(ws: Sequence[int]) -> int:
        return nonzero_count(_build(factory, ws), density, params, dense_first_last=dense_first_last)

    def scaled(c: float) -> list[int]:
        return [max(1, round(w * c)) for w in base]

    low, high = 1.0, 2.0 / density
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if count(scaled(mid)) < target else (low, mid)
    best = scaled(low)
    best_gap = abs(count(best) - target)
    improved = True
    while improved:
        improved = False
        for i in range(len(best)):
            for delta in (-1, 1):
                trial = best.copy()
                trial[i] = max(1, trial[i] + delta)
                gap = abs(count(trial) - target)
                if gap < best_gap:
                    best, best_gap, improved = trial, gap, True
    match = BudgetMatch(
        widths=best,
        density=density,
        target=target,
        nonzeros=count(best),
        wide_dense_params=nonzero_count(_build(factory, best), 1.0, params),
    )
    if match.relative_error > tolerance:
        step = min(abs(count([*best[:i], best[i] + 1, *best[i + 1:]]) - match.nonzeros) for i in range(len(best)))
        if best_gap <= step / 2 + 1:  # a small model: one unit more or less moves the count by more than tolerance
            log.warning("budget matched to %.2f%% (%d non-zeros for %d): the closest integer widths %s allow",
                        100 * match.relative_error, match.nonzeros, target, best)
            return match
        raise ConfigError(
            f"no widths near {best} match the budget of {target} non-zeros within {tolerance:.1%} at density "
            f"{density} (closest: {match.nonzeros})"
        )
    return match
