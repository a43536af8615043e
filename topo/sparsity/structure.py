"""N:M structured sparsity: at most N active weights in every group of M consecutive inputs of an output row.

The convention is PyTorch's semi-structured sparsity (``torch.sparse.to_sparse_semi_structured``, torchao):
groups run along the input dimension of a Linear weight, (out, in) with ``in`` cut into blocks of M. A weight
stored (in, out) (Hugging Face's ``Conv1D``) is read transposed first, so its groups run along its first
dimension. N:M masks fix every output's fan-in (N/M of its inputs), so the fan-in Gini of an exact N:M layer is 0
by construction.

* :func:`nm_pattern` says whether a mask is N:M (analysis);
* :func:`nm_top` keeps the N largest scores of every group (initial masks, magnitude pruning);
* :func:`grow_in_groups` grows, in every group, as many positions as were dropped from it, so drop-and-grow
  methods keep every mask N:M through every update (the constant fan-in of SRigL, Lasby et al. 2024);
* :func:`to_semi_structured` turns a trained 2:4 model's weights into ``torch.sparse`` semi-structured tensors.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from topo.errors import ConfigError

#: The group sizes :func:`nm_pattern` looks for.
GROUP_SIZES = (4, 8)


def parse_structure(structure: str | None) -> tuple[int, int] | None:
    """``"2:4"`` → (2, 4); None stays None. Raises :class:`ConfigError` unless 0 < N < M."""
    if structure is None:
        return None
    try:
        n, m = (int(part) for part in str(structure).split(":"))
    except ValueError:
        raise ConfigError(f"structure must be 'N:M' (e.g. '2:4'), got {structure!r}") from None
    if not 0 < n < m:
        raise ConfigError(f"structure {structure!r}: N:M needs 0 < N < M")
    return n, m


def _groups(matrix: torch.Tensor, m: int, name: str = "") -> torch.Tensor:
    """An (out, in) tensor as (out, in / M, M) groups."""
    out, inputs = matrix.shape
    if inputs % m:
        raise ConfigError(f"{name or 'layer'}: {inputs} inputs do not divide into groups of {m} (N:M sparsity)")
    return matrix.reshape(out, inputs // m, m)


def nm_pattern(mask: torch.Tensor) -> str | None:
    """``"N:M"`` when the (out, in) ``mask`` is N:M for M in :data:`GROUP_SIZES` (the first M that fits, with the
    smallest N < M), else None.

    A mask is N:M when every group of M consecutive inputs of every output holds at most N active weights and the
    mask is denser than (N − 1)/M, so most groups are full: an unstructured sparse mask whose groups merely happen
    to stay below M (a random 10 % mask has at most 3 of 4 in most layers) is not reported.
    """
    mask = torch.as_tensor(mask).bool()
    if mask.ndim != 2 or mask.numel() == 0:
        return None
    density = float(mask.float().mean())
    for m in GROUP_SIZES:
        if mask.shape[1] % m:
            continue
        n = int(_groups(mask, m).sum(-1).max())
        if n < m and density > (n - 1) / m:
            return f"{n}:{m}"
    return None


def nm_top(scores: torch.Tensor, n: int, m: int, name: str = "") -> torch.Tensor:
    """Boolean (out, in) mask of the ``n`` largest ``scores`` in every group of ``m`` inputs (ties: lower input)."""
    grouped = _groups(scores.float(), m, name)
    order = torch.sort(grouped, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(grouped, dtype=torch.bool).scatter_(-1, order[..., :n], True)
    return keep.reshape(scores.shape)


def grow_in_groups(scores: torch.Tensor, allowed: torch.Tensor, counts: torch.Tensor, m: int,
                   name: str = "") -> torch.Tensor:
    """In every group of ``m`` inputs of the (out, in) tensors, the ``counts[out, group]`` allowed positions of
    largest score (ties: lower input). ``counts`` must not exceed the allowed positions of its group."""
    grouped = torch.where(_groups(allowed, m, name), _groups(scores.float(), m, name), -math.inf)
    order = torch.sort(grouped, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(m, device=order.device).expand_as(order))
    return (rank < counts.unsqueeze(-1)).reshape(scores.shape)


def random_nm_mask(shape: tuple[int, int], n: int, m: int, generator: torch.Generator,
                   device: torch.device, name: str = "") -> torch.Tensor:
    """A random (out, in) N:M mask: N positions drawn uniformly in every group of M inputs."""
    return nm_top(torch.rand(shape, generator=generator, device=device), n, m, name)


def to_semi_structured(model: nn.Module) -> nn.Module:
    """``model`` with the weight of every ``nn.Linear`` whose weight is exactly 2:4 replaced by a
    ``torch.sparse`` semi-structured tensor (in place; returns the model).

    PyTorch's kernels need a CUDA GPU of compute capability 8.0 or higher, float16 or bfloat16 weights, and
    shapes their kernels accept (rows and columns multiples of 64 here); anything else is one
    :class:`ConfigError` naming the layer and what it lacks.
    """
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    chosen = [(name, module) for name, module in linears if nm_pattern(module.weight.detach() != 0) == "2:4"]
    if not chosen:
        raise ConfigError("to_semi_structured: no nn.Linear weight of the model is 2:4 (train with "
                          "structure='2:4' first)")
    for name, module in chosen:
        weight = module.weight
        if weight.device.type != "cuda" or torch.cuda.get_device_capability(weight.device) < (8, 0):
            raise ConfigError(f"to_semi_structured: {name}.weight is on {weight.device}; semi-structured sparse "
                              "tensors need a CUDA GPU of compute capability 8.0 or higher")
        if weight.dtype not in (torch.float16, torch.bfloat16):
            raise ConfigError(f"to_semi_structured: {name}.weight is {weight.dtype}; convert the model to float16 "
                              "or bfloat16 first (model.half())")
        if weight.shape[0] % 64 or weight.shape[1] % 64:
            raise ConfigError(f"to_semi_structured: {name}.weight is {tuple(weight.shape)}; semi-structured "
                              "kernels need rows and columns in multiples of 64")
    from torch.sparse import to_sparse_semi_structured

    for _, module in chosen:
        module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
    return model
