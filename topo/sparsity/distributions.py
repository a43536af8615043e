"""How a density budget is spread over layers: uniform, Erdős–Rényi (ER) and Erdős–Rényi-Kernel (ERK).

The sparse-training literature (Mocanu et al. 2018 for ER; Evci et al. 2020, "Rigging the lottery", for ERK)
gives larger layers lower densities: a layer's density is ε·p with

* ``uniform``: p = 1, every layer at the model's density;
* ``er``:  p = (n_in + n_out) / (n_in · n_out), from a weight's first two dimensions (out, in);
* ``erk``: p = Σ dims / Π dims over all of a weight's dimensions (a convolution's kernel included).

ε is chosen so that the active weights add up to the uniform budget Σ α·nᵢ. A layer whose density would exceed 1
is made dense and taken out of the scaling, and ε is solved again for the rest — RigL's procedure. Layers named
in ``dense`` (e.g. the first and last, as the DST papers keep them) are dense and outside the budget.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from torch import nn

from topo.errors import ConfigError

DISTRIBUTIONS = ("uniform", "er", "erk")


def _raw(shape: Sequence[int], distribution: str) -> float:
    if distribution == "uniform":
        return 1.0
    if distribution == "er":
        n_out, n_in = shape[0], shape[1] if len(shape) > 1 else 1
        return (n_in + n_out) / (n_in * n_out)
    return sum(shape) / math.prod(shape)


def layer_densities(
    model_or_shapes: nn.Module | Mapping[str, Sequence[int]],
    density: float,
    distribution: str = "erk",
    *,
    dense: Iterable[str] = (),
) -> dict[str, float]:
    """Layer name → density for a model (its default sparsified weights) or a mapping of names to shapes.

    The active weights Σ round(dᵢ·nᵢ) equal the uniform budget round-off aside (within one weight per layer).

    Raises
    ------
    ConfigError
        For an unknown distribution (listing the valid ones), a density outside (0, 1], or a dense name that is no
        layer.
    """
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(f"unknown density distribution {distribution!r}; valid: {', '.join(DISTRIBUTIONS)}")
    if not 0 < density <= 1:
        raise ConfigError(f"density must be in (0, 1], got {density!r}")
    if isinstance(model_or_shapes, nn.Module):
        from topo.sparsity.masks import select_parameters

        shapes = {n: tuple(p.shape) for n, p in select_parameters(model_or_shapes).items()}
    else:
        shapes = {n: tuple(s) for n, s in model_or_shapes.items()}
    forced = set(dense)
    unknown = forced - set(shapes)
    if unknown:
        raise ConfigError(f"dense layer(s) {sorted(unknown)} are not among the layers {list(shapes)[:8]}")
    made_dense = set(forced)
    while True:
        scaled = {n: s for n, s in shapes.items() if n not in made_dense}
        budget = sum(density * math.prod(s) for n, s in shapes.items() if n not in forced)
        budget -= sum(math.prod(shapes[n]) for n in made_dense - forced)
        weight = sum(_raw(s, distribution) * math.prod(s) for s in scaled.values())
        if not scaled or weight == 0:
            break
        epsilon = budget / weight
        over = [n for n, s in scaled.items() if epsilon * _raw(s, distribution) > 1]
        if not over:
            break
        peak = max(_raw(scaled[n], distribution) for n in over)
        made_dense |= {n for n in over if _raw(scaled[n], distribution) == peak}
    return {n: 1.0 if n in made_dense else min(1.0, epsilon * _raw(s, distribution)) for n, s in shapes.items()}
