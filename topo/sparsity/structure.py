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
#: An N:M layer has more than this fraction of its groups holding exactly N active weights (:func:`nm_pattern`) …
FULL_GROUPS = 0.5
#: … and a random mask of its density would fit N:M with a probability below this.
CHANCE = 1e-6


def _groups(matrix: torch.Tensor, m: int, name: str = "") -> torch.Tensor:
    """An (out, in) tensor as (out, in / M, M) groups."""
    out, inputs = matrix.shape
    if inputs % m:
        raise ConfigError(f"{name or 'layer'}: {inputs} inputs do not divide into groups of {m} (N:M sparsity)")
    return matrix.reshape(out, inputs // m, m)


def input_rows(mask: torch.Tensor) -> torch.Tensor:
    """A weight (or mask) as the rows its N:M groups run along: (out, in) as it is; a convolution (out, in, *kernel)
    as (out·taps, in), one row per output channel and kernel tap (NVIDIA apex ASP's layout: groups of M
    consecutive input channels at one tap, ``sparse_masklib.create_mask``; rows in another order, which no N:M
    property depends on). :func:`from_input_rows` undoes it."""
    if mask.ndim <= 2:
        return mask
    return mask.movedim(1, -1).reshape(-1, mask.shape[1])


def from_input_rows(rows: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The (…, rows, in) tensor :func:`input_rows` made from a weight of ``shape``, back in that shape (leading
    dimensions, a batch of samples say, kept)."""
    if len(shape) <= 2:
        return rows.reshape(*rows.shape[:-2], *shape)
    lead = rows.shape[:-2]
    moved = rows.reshape(*lead, shape[0], *shape[2:], shape[1])
    return moved.movedim(-1, len(lead) + 1)


def _log_chance(m: int, n: int, density: float, groups: int) -> float:
    """log P(every one of ``groups`` groups of ``m`` holds at most ``n`` active weights) for an unstructured random
    mask of ``density``: each group's count is Binomial(m, density)."""
    cdf = sum(math.comb(m, j) * density**j * (1.0 - density) ** (m - j) for j in range(n + 1))
    return groups * math.log(cdf) if cdf > 0 else -math.inf


def nm_pattern(mask: torch.Tensor) -> str | None:
    """``"N:M"`` when ``mask`` is N:M for an M of :data:`GROUP_SIZES` (the first M that fits), else None.

    ``mask`` is an (out, in) Linear mask (a Conv1D weight's read transposed first) or a convolution's
    (out, in, *kernel), whose groups run along input channels (:func:`input_rows`). With N the largest count of
    active weights in a group of M consecutive inputs, the mask is N:M when

    * 0 < N < M: no group exceeds N;
    * more than :data:`FULL_GROUPS` (half) of the groups hold exactly N — "most groups are full", so a layer
      trained N:M whose regrown weights are still zero when read back stays N:M;
    * the structure is no accident: an unstructured random mask of the same density would keep every group at
      N or fewer with probability below :data:`CHANCE` (each group's count Binomial(M, density)).

    A sparse unstructured mask, whose groups merely happen to stay below M (a 1 %-dense 64 × 64 mask has at most
    one weight in nearly every group of four), is therefore never reported; nor is a layer too small to tell
    (a 2:4 mask of fewer than about 40 groups).
    """
    rows = input_rows(torch.as_tensor(mask).bool())
    if rows.ndim != 2 or rows.numel() == 0:
        return None
    density = float(rows.float().mean())
    for m in GROUP_SIZES:
        if rows.shape[1] % m:
            continue
        counts = _groups(rows, m).sum(-1)
        n = int(counts.max())
        if not 0 < n < m or float((counts == n).float().mean()) <= FULL_GROUPS:
            continue
        if _log_chance(m, n, density, counts.numel()) < math.log(CHANCE):
            return f"{n}:{m}"
    return None


def fits_nm(mask: torch.Tensor, n: int, m: int) -> bool:
    """Whether every group of ``m`` consecutive inputs of the (out, in) ``mask`` holds at most ``n`` active
    weights: the layer can be stored N:M (a 1:4 layer is a valid 2:4 one). False when the inputs do not divide
    into groups of ``m``."""
    mask = torch.as_tensor(mask).bool()
    if mask.ndim != 2 or mask.shape[1] % m:
        return False
    return bool((_groups(mask, m).sum(-1) <= n).all())


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


def _is_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (stored (in, out)), recognised by class name and its ``nf`` attribute."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def conv1d_as_linear(module: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` computing what a Hugging Face ``Conv1D`` computes: its (in, out) weight transposed to
    (out, in), its bias kept, on the same device and dtype."""
    weight = module.weight.detach()
    linear = nn.Linear(weight.shape[0], weight.shape[1], bias=module.bias is not None,
                       device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight.T)
        if module.bias is not None:
            linear.bias.copy_(module.bias.detach())
    return linear


def semi_structured_limits(dtype: torch.dtype) -> tuple[int, int] | None:
    """(rows, columns) that a weight of ``dtype`` must be a multiple of (and at least) for the semi-structured
    kernels ``torch.sparse.to_sparse_semi_structured`` will use, read from the tensor class it picks
    (cuSPARSELt by default, CUTLASS when ``SparseSemiStructuredTensor._FORCE_CUTLASS``): 16 × 16 for
    cuSPARSELt's float16/bfloat16, 32 × 64 for CUTLASS's; None for a dtype that class does not take."""
    from torch.sparse import (
        SparseSemiStructuredTensor,
        SparseSemiStructuredTensorCUSPARSELT,
        SparseSemiStructuredTensorCUTLASS,
    )

    chosen = SparseSemiStructuredTensorCUTLASS if getattr(SparseSemiStructuredTensor, "_FORCE_CUTLASS", False) \
        else SparseSemiStructuredTensorCUSPARSELT
    limits = getattr(chosen, "_DTYPE_SHAPE_CONSTRAINTS", {}).get(dtype)
    return None if limits is None else (int(limits.sparse_min_rows), int(limits.sparse_min_cols))


def to_semi_structured(model: nn.Module) -> nn.Module:
    """``model`` with every ``nn.Linear`` and Hugging Face ``Conv1D`` whose weight fits 2:4 (every group of four
    inputs holds at most two active weights, :func:`fits_nm`; a 1:4 layer fits) turned into a ``torch.sparse``
    semi-structured tensor (in place; returns the model). A ``Conv1D`` is replaced by the equivalent
    ``nn.Linear`` (:func:`conv1d_as_linear`), whose (out, in) weight is the layout the kernels take.

    PyTorch's kernels need a CUDA GPU of compute capability 8.0 or higher, a dtype and shape the kernels it picks
    accept (:func:`semi_structured_limits`); anything else is one :class:`ConfigError` naming the layer and what
    it lacks, raised before any layer is changed.
    """
    chosen = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            weight = module.weight.detach()
        elif _is_conv1d(module):
            weight = module.weight.detach().T
        else:
            continue
        if fits_nm(weight != 0, 2, 4):
            chosen.append((name, module, weight))
    if not chosen:
        raise ConfigError("to_semi_structured: no nn.Linear or Conv1D weight of the model fits 2:4 (train or prune "
                          "with structure='2:4' first)")
    for name, _, weight in chosen:
        if weight.device.type != "cuda" or torch.cuda.get_device_capability(weight.device) < (8, 0):
            raise ConfigError(f"to_semi_structured: {name}.weight is on {weight.device}; semi-structured sparse "
                              "tensors need a CUDA GPU of compute capability 8.0 or higher")
        limits = semi_structured_limits(weight.dtype)
        if limits is None:
            raise ConfigError(f"to_semi_structured: {name}.weight is {weight.dtype}, which the semi-structured "
                              "kernels do not take; convert the model to float16 or bfloat16 first (model.half())")
        rows, cols = weight.shape
        if rows % limits[0] or cols % limits[1] or rows < limits[0] or cols < limits[1]:
            raise ConfigError(f"to_semi_structured: {name}.weight is {rows} × {cols} (out × in); the semi-structured "
                              f"kernels need rows in multiples of {limits[0]} and columns in multiples of {limits[1]}")
    from torch.sparse import to_sparse_semi_structured

    for name, module, _ in chosen:
        if _is_conv1d(module):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            module = conv1d_as_linear(module)
            setattr(parent, child, module)
        module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach().contiguous()),
                                     requires_grad=False)
    return model
