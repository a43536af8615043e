"""Sparse training: the paper's adaptive weight sparsity, its controls and today's DST methods (SET, RigL, SNIP,
SRigL), behind one interface; per-layer density distributions (uniform, ER, ERK) for every sparse method; one-shot
pruning of trained language models (magnitude, Wanda, SparseGPT: :func:`prune_oneshot`).

>>> sparsifier = make_sparsifier("adaptive", model, optimizer, density=0.3, k=0.25)   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from topo.errors import ConfigError
from topo.options import ONESHOT_METHODS
from topo.sparsity.adaptive import Adaptive, AdaptiveConfig, adapt_layer, grow_probability, prune_probability
from topo.sparsity.base import Sparsifier, active_count, random_mask
from topo.sparsity.baselines import Dense, FixedMask, MagnitudePruning, RandomChannelwise, RandomFixed
from topo.sparsity.budget import BudgetMatch, match_budget, nonzero_count
from topo.sparsity.distributions import DISTRIBUTIONS, layer_densities
from topo.sparsity.dst import SET, SNIP, RigL
from topo.sparsity.masks import LayerCount, MaskedParams, default_filter, select_parameters
from topo.sparsity.oneshot import prune_oneshot
from topo.sparsity.srigl import SRigL
from topo.sparsity.structure import fits_nm, nm_pattern, to_semi_structured

METHODS: dict[str, type[Sparsifier]] = {
    cls.method: cls for cls in (Dense, RandomFixed, RandomChannelwise, Adaptive, MagnitudePruning, FixedMask, SET,
                                RigL, SNIP, SRigL)
}


def make_sparsifier(
    method: str, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, **kwargs: Any
) -> Sparsifier:
    """Build the sparsity method registered as ``method`` (see :data:`METHODS`)."""
    if method not in METHODS:
        raise ConfigError(f"unknown sparsity method {method!r}; valid: {', '.join(sorted(METHODS))}")
    return METHODS[method](model, optimizer, **kwargs)


__all__ = [
    "DISTRIBUTIONS",
    "METHODS",
    "ONESHOT_METHODS",
    "SET",
    "SNIP",
    "SRigL",
    "Adaptive",
    "AdaptiveConfig",
    "BudgetMatch",
    "Dense",
    "FixedMask",
    "LayerCount",
    "MagnitudePruning",
    "MaskedParams",
    "RandomChannelwise",
    "RandomFixed",
    "RigL",
    "Sparsifier",
    "active_count",
    "adapt_layer",
    "default_filter",
    "fits_nm",
    "grow_probability",
    "layer_densities",
    "make_sparsifier",
    "match_budget",
    "nm_pattern",
    "nonzero_count",
    "prune_oneshot",
    "prune_probability",
    "random_mask",
    "select_parameters",
    "to_semi_structured",
]
