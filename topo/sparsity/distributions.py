"""How a density budget is spread over layers: uniform, Erdős–Rényi (ER) and Erdős–Rényi-Kernel (ERK).

The sparse-training literature (Mocanu et al. 2018 for ER; Evci et al. 2020, "Rigging the lottery", for ERK)
gives larger layers lower densities: a layer's density is ε·p with

* ``uniform``: p = 1, every layer at the model's density;
* ``er``:  p = (n_in + n_out) / (n_in · n_out), from a weight's first two dimensions (out, in);
* ``erk``: p = Σ dims / Π dims over all of a weight's dimensions (a convolution's kernel included).

ε is chosen as google-research/rigl's ``sparse_utils.get_sparsities_erdos_renyi`` chooses it, counting whole
weights: the budget is Σ (nᵢ − ⌊(1 − α)·nᵢ⌋) over the scaled layers, less ⌊(1 − α)·nⱼ⌋ for every layer made dense,
and ε = budget / Σ pᵢ·nᵢ. Whenever ε·p exceeds 1 for the layers of the largest p, those layers are made dense and
ε is solved again for the rest. Layers named in ``dense`` (e.g. the first and last, as the DST papers keep them)
are dense and outside the budget (the reference's ``custom_sparsity_map``). The densities returned equal the
reference's 1 − sparsity for every layer (tested against a hand-derived re-statement of its rule), with one stated
difference: the whole-zero count ⌊(1 − α)·n⌋ is exact (:func:`inactive_count`) where the reference's floating-point
product falls an ulp below a whole number (it floors 0.09999999999999998 · 1000 to 99 zeros; topo counts 100).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence

from torch import nn

from topo.errors import ConfigError

DISTRIBUTIONS = ("uniform", "er", "erk")


def inactive_count(total: int, density: float) -> int:
    """⌊(1 − density)·total⌋, exact where (1 − density)·total is a whole number: the floating-point product is taken
    as the nearest integer when it lies within a few ulps of it (see :func:`topo.sparsity.base.active_count`)."""
    inactive = (1.0 - density) * total
    nearest = round(inactive)
    if abs(inactive - nearest) <= 8 * sys.float_info.epsilon * max(1.0, float(total)):
        return int(nearest)
    return math.floor(inactive)


def _raw(shape: Sequence[int], distribution: str, parts: int = 1) -> float:
    shape = (shape[0] // parts, *shape[1:]) if parts > 1 else shape
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
    parts: Mapping[str, int] | None = None,
) -> dict[str, float]:
    """Layer name → density for a model (its default sparsified weights) or a mapping of names to shapes.

    ``parts`` names fused weights (a q/k/v projection of 3 parts, say): ER and ERK read such a weight as its
    parts, each of 1/k of its outputs (the first dimension of its shape: pass a weight stored (in, out), as
    Hugging Face's ``Conv1D``, as (out, in)), so it gets the density of one projection, not of a 3× larger layer.

    The active weights Σ :func:`~topo.sparsity.base.active_count` (dᵢ, nᵢ) equal the uniform budget round-off aside
    (within one weight per layer).

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
    if distribution == "uniform":
        return {n: 1.0 if n in forced else float(density) for n in shapes}

    raw = {n: _raw(s, distribution, (parts or {}).get(n, 1)) for n, s in shapes.items()}
    made_dense: set[str] = set()
    zeros = {n: inactive_count(math.prod(s), density) for n, s in shapes.items()}
    epsilon = 1.0
    while True:
        scaled = {n: s for n, s in shapes.items() if n not in forced and n not in made_dense}
        if not scaled:
            break
        budget = sum(math.prod(s) - zeros[n] for n, s in scaled.items()) - sum(zeros[n] for n in made_dense)
        divisor = sum(raw[n] * math.prod(s) for n, s in scaled.items())
        epsilon = budget / divisor
        peak = max(raw[n] for n in scaled)
        if peak * epsilon <= 1:
            break
        made_dense |= {n for n in scaled if raw[n] == peak}
    dense_now = forced | made_dense
    return {n: 1.0 if n in dense_now else epsilon * raw[n] for n in shapes}
