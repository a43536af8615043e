"""One-shot pruning of a trained causal language model: magnitude, Wanda and SparseGPT, block by block.

The three parts are kept apart, as in the authors' code (locuslab/wanda ``lib/prune.py``, IST-DASLab/sparsegpt
``sparsegpt.py``), so a new rule is one function:

* **statistics**, gathered by a forward hook on every linear layer of a block (:class:`InputNorms` for Wanda,
  :class:`Hessian` for SparseGPT), each with the authors' ``add_batch`` update, in float32;
* **rules**, one function per method turning a layer's (out, in) weight and statistics into a mask
  (:func:`magnitude_mask`, :func:`wanda_mask`, :func:`sparsegpt_prune`, which also updates the kept weights);
* **the driver** (:func:`prune_oneshot`): the calibration sequences' hidden states at the first decoder block are
  captured; then, block by block, a dense forward of the block on inputs from the already-pruned blocks gives the
  statistics of all its linear layers at once, the block is pruned, and its outputs are recomputed to feed the
  next block.

Which weights: every ``nn.Linear`` and Hugging Face ``Conv1D`` inside each decoder block (GPT-2's Conv1D read as
(out, in)); never the embeddings or the output head. Densities are topo's: ``density`` is the fraction kept
(sparsity s = 1 − density), and ``"N:M"`` keeps N of every M consecutive inputs (PyTorch's semi-structured
convention). The references' N:M flags count the pruned weights instead (their ``2:4`` prunes 2 of 4); the two
agree for 2:4 and every N:2N.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from topo.errors import ConfigError
from topo.families import module_order_key
from topo.options import check_oneshot_options


# -- statistics ----------------------------------------------------------------------------------------------------
class InputNorms:
    """Wanda's input statistic (locuslab/wanda ``WrappedGPT.scaler_row``): for every input j, the sum over a
    sequence's tokens of x_j², averaged over sequences, in float32, updated as the reference does (a running mean
    over the batch dimension of each forward call)."""

    def __init__(self, columns: int, device: torch.device) -> None:
        self.scaler_row = torch.zeros(columns, device=device)
        self.nsamples = 0

    def add_batch(self, inputs: torch.Tensor) -> None:
        """One forward call's inputs (batch, tokens, columns), or (tokens, columns) for a batch of one."""
        if inputs.dim() == 2:
            inputs = inputs.unsqueeze(0)
        batch = inputs.shape[0]
        flat = inputs.reshape(-1, inputs.shape[-1]).t().float()
        self.scaler_row *= self.nsamples / (self.nsamples + batch)
        self.nsamples += batch
        self.scaler_row += torch.norm(flat, p=2, dim=1) ** 2 / self.nsamples


class Hessian:
    """SparseGPT's H = (2/n)·Σ X Xᵀ over the calibration sequences (IST-DASLab/sparsegpt ``SparseGPT.add_batch``:
    n counts sequences, the sum runs over every token), float32, updated as the reference does."""

    def __init__(self, columns: int, device: torch.device) -> None:
        self.H = torch.zeros(columns, columns, device=device)
        self.nsamples = 0

    def add_batch(self, inputs: torch.Tensor) -> None:
        """One forward call's inputs (batch, tokens, columns), or (tokens, columns) for a batch of one."""
        if inputs.dim() == 2:
            inputs = inputs.unsqueeze(0)
        batch = inputs.shape[0]
        flat = inputs.reshape(-1, inputs.shape[-1]).t()
        self.H *= self.nsamples / (self.nsamples + batch)
        self.nsamples += batch
        flat = math.sqrt(2 / self.nsamples) * flat.float()
        self.H += flat.matmul(flat.t())


# -- rules ---------------------------------------------------------------------------------------------------------
def _prune_smallest_in_groups(metric: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Pruned positions (True) of an (out, in) metric: in every group of ``m`` consecutive inputs of a row, the
    m − n smallest (a stable sort: ties prune the lower input first)."""
    rows, cols = metric.shape
    if cols % m:
        raise ConfigError(f"{cols} inputs do not divide into groups of {m} ({n}:{m} pruning)")
    grouped = metric.reshape(rows, cols // m, m)
    order = torch.sort(grouped, dim=-1, stable=True).indices[..., : m - n]
    return torch.zeros_like(grouped, dtype=torch.bool).scatter_(-1, order, True).reshape(rows, cols)


def magnitude_mask(weight: torch.Tensor, sparsity: float | None = None,
                   structure: tuple[int, int] | None = None) -> torch.Tensor:
    """Kept positions (True) of an (out, in) weight by magnitude (locuslab/wanda ``prune_magnitude``, SparseGPT's
    ``--gmp``): one threshold per matrix, the |W| at index ⌊numel·s⌋ of the ascending sort, pruning every
    |W| ≤ it — one more than ⌊numel·s⌋ weights, and any exact ties, as the reference does. N:M: the N largest |W|
    of every M consecutive inputs."""
    metric = weight.detach().abs().float()
    if structure is not None:
        return ~_prune_smallest_in_groups(metric, *structure)
    threshold = torch.sort(metric.flatten()).values[int(metric.numel() * sparsity)]
    return metric > threshold


def wanda_mask(weight: torch.Tensor, norms: InputNorms, sparsity: float | None = None,
               structure: tuple[int, int] | None = None) -> torch.Tensor:
    """Kept positions (True) of an (out, in) weight by Wanda (locuslab/wanda ``prune_wanda``): score
    |W_ij|·sqrt(s_j), s the :class:`InputNorms`; within each output row a stable ascending sort prunes exactly
    ⌊cols·s⌋ (ties: the lower column first), so every output keeps the same fan-in. N:M: the N largest scores of
    every M consecutive inputs (the reference's ``topk``; ties here: the lower input pruned first)."""
    metric = weight.detach().abs().float() * torch.sqrt(norms.scaler_row.reshape(1, -1))
    if structure is not None:
        return ~_prune_smallest_in_groups(metric, *structure)
    count = int(metric.shape[1] * sparsity)
    order = torch.sort(metric, dim=-1, stable=True).indices[:, :count]
    return ~torch.zeros_like(metric, dtype=torch.bool).scatter_(1, order, True)


def sparsegpt_prune(weight: torch.Tensor, hessian: Hessian, sparsity: float | None = None,
                    structure: tuple[int, int] | None = None, blocksize: int = 128,
                    percdamp: float = 0.01, name: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """(updated weight, kept positions) of an (out, in) weight by SparseGPT (IST-DASLab/sparsegpt
    ``SparseGPT.fasterprune``), in float32, the weight returned in its own dtype.

    A dead input (H_jj = 0) gets H_jj = 1 and its column zeroed; H is damped by ``percdamp``·mean(diag H), and
    Hinv is the upper Cholesky factor of H⁻¹. Columns are visited in blocks of ``blocksize``: the unstructured mask
    is chosen once per block over all its rows, pruning W²/diag(Hinv)² ≤ the sorted value at ⌊numel_block·s⌋ (one
    more than that count, per block, as the reference); an N:M mask is chosen at each group's first column from
    the weights as updated so far. Each column's pruning error err = (w − q)/Hinv_jj updates the columns after it
    in the block, W[:, j:] −= err·Hinv[j, j:], and the later blocks lazily once the block is done. The reference's
    ``topk`` breaks N:M ties arbitrarily; here the lower input is pruned first. A Hessian that is not positive
    definite after damping (too few calibration tokens for the layer's inputs) is one :class:`ConfigError`."""
    W = weight.detach().clone().float()
    H = hessian.H.clone()
    rows, columns = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    diagonal = torch.arange(columns, device=W.device)
    H[diagonal, diagonal] += damp
    try:
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        Hinv = torch.linalg.cholesky(H, upper=True)
    except torch.linalg.LinAlgError:
        raise ConfigError(f"sparsegpt: the Hessian of {name or 'a layer'} is not positive definite after damping "
                          f"{percdamp:g}; use more calibration samples or a larger damping") from None
    pruned = torch.zeros_like(W, dtype=torch.bool)
    for start in range(0, columns, blocksize):
        end = min(start + blocksize, columns)
        count = end - start
        W1 = W[:, start:end].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[start:end, start:end]
        if structure is None:
            score = W1**2 / torch.diag(Hinv1).reshape(1, -1) ** 2
            threshold = torch.sort(score.flatten()).values[int(score.numel() * sparsity)]
            mask1 = score <= threshold
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if structure is not None and i % structure[1] == 0:
                n, m = structure
                score = W1[:, i:i + m] ** 2 / torch.diag(Hinv1)[i:i + m].reshape(1, -1) ** 2
                mask1[:, i:i + m] = _prune_smallest_in_groups(score, n, m)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, start:end] = Q1
        pruned[:, start:end] = mask1
        W[:, end:] -= Err1.matmul(Hinv[start:end, end:])
    return W.to(weight.dtype), ~pruned


# -- the driver ----------------------------------------------------------------------------------------------------
def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _linears(block: nn.Module) -> dict[str, nn.Module]:
    """Every ``nn.Linear`` and ``Conv1D`` of a block, by name within it, in module order."""
    found = {name: module for name, module in block.named_modules()
             if isinstance(module, nn.Linear) or _is_conv1d(module)}
    return dict(sorted(found.items(), key=lambda item: _order(item[0])))


def _order(name: str) -> tuple:
    """Where a linear layer named ``name`` within a block sits in it (:func:`topo.families.module_order_key`)."""
    return module_order_key(f"block.0.{name}.weight")


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's decoder blocks: the ``nn.ModuleList`` of modules of one class holding linear layers with the
    most parameters (``model.layers`` of Llama, ``transformer.h`` of GPT-2, ``model.decoder.layers`` of OPT …; of
    lists of equal size, the first), and its name. Raises :class:`ConfigError` for a model without one."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1 or not _linears(module[0]):
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, module)
    if best is None:
        raise ConfigError(f"{type(model).__name__}: no list of decoder blocks holding linear layers; one-shot "
                          "pruning takes a causal language model (Llama-, OPT-, GPT-2-style)")
    return best[1], best[2]


class _Captured(Exception):
    """Stops the model's forward at the first decoder block, once its inputs are recorded."""


def _capture_inputs(model: nn.Module, first: nn.Module, calibration: Sequence[torch.Tensor],
                    device: torch.device) -> list[tuple[tuple, dict]]:
    """The (args, kwargs) the first decoder block receives for every calibration sequence."""
    captured: list[tuple[tuple, dict]] = []

    def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append((args, dict(kwargs)))
        raise _Captured

    handle = first.register_forward_pre_hook(record, with_kwargs=True)
    try:
        for ids in calibration:
            ids = torch.as_tensor(ids)
            try:
                model(input_ids=(ids if ids.dim() == 2 else ids.unsqueeze(0)).to(device))
            except _Captured:
                pass
    finally:
        handle.remove()
    return captured


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _run(block: nn.Module, inputs: list[tuple[tuple, dict]]) -> list[torch.Tensor]:
    outputs = []
    for args, kwargs in inputs:
        out = block(*args, **kwargs)
        outputs.append(out[0] if isinstance(out, (tuple, list)) else out)
    return outputs


def _groups(linears: dict[str, nn.Module], true_sequential: bool) -> list[list[str]]:
    """The linear layers of a block pruned together: all at once, or (SparseGPT's true-sequential mode) the
    attention's inputs, its output, the MLP's inputs and its output one after the other, each measured with the
    ones before it pruned."""
    if not true_sequential:
        return [list(linears)]
    stage = {0: 0, 1: 0, 2: 0, 3: 1, 4: 2, 5: 2, 6: 2, 7: 3}
    grouped: dict[int, list[str]] = {}
    for name in linears:
        grouped.setdefault(stage[_order(name)[5]], []).append(name)
    return [grouped[key] for key in sorted(grouped)]


@torch.no_grad()
def prune_oneshot(
    model: nn.Module,
    method: str,
    calibration: Iterable[torch.Tensor] | None = None,
    *,
    density: float | None = None,
    structure: str | None = None,
    true_sequential: bool = False,
    blocksize: int = 128,
    percdamp: float = 0.01,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Prune every linear layer of every decoder block of ``model`` in place, once (see the module docstring).

    Parameters
    ----------
    model: a causal language model (Llama-, OPT-, GPT-2-style; Hugging Face or any model whose decoder blocks are
        one ``nn.ModuleList`` taking the hidden states first).
    method: ``"magnitude"``, ``"wanda"`` or ``"sparsegpt"``.
    calibration: ``input_ids`` tensors of shape (1, seqlen) (or (seqlen,)); needed by Wanda and SparseGPT.
    density: the fraction of each layer's weights kept, in (0, 1); or ``structure``: ``"N:M"``, N of every M
        consecutive inputs kept.
    true_sequential: SparseGPT's option (off by default, as in its code): within a block, prune the attention's
        inputs, its output, the MLP's inputs and its output in turn, each measured after the ones before.
    blocksize, percdamp: SparseGPT's column block and Hessian damping (the reference's 128 and 0.01).

    Returns
    -------
    ``{weight name: bool mask}`` in each weight's stored layout (True = kept). Only those weights change: zeros
    where pruned and, with SparseGPT, the kept weights updated; no other parameter changes.

    Raises
    ------
    ConfigError
        For an unknown method, a density outside (0, 1), both or neither of density and structure, a model without
        decoder blocks, or a missing calibration.
    """
    sparsity, nm = check_oneshot_options(method, density, structure)
    prefix, blocks = decoder_blocks(model)
    device = next(model.parameters()).device
    calibration = list(calibration or [])
    if method != "magnitude" and not calibration:
        raise ConfigError(f"{method} needs calibration: a list of input_ids tensors (1, seqlen)")
    training = model.training
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    if use_cache is not None:
        config.use_cache = False
    model.eval()
    masks: dict[str, torch.Tensor] = {}
    try:
        inputs = _capture_inputs(model, blocks[0], calibration, device) if method != "magnitude" else []
        for index, block in enumerate(tqdm(blocks, desc=f"{method} pruning", unit="block", disable=not progress)):
            linears = _linears(block)
            for group in _groups(linears, true_sequential and method == "sparsegpt"):
                stats = _gather(block, {name: linears[name] for name in group}, method, inputs)
                for name in group:
                    full = f"{prefix}.{index}.{name}.weight" if prefix else f"{index}.{name}.weight"
                    masks[full] = _prune_layer(linears[name], method, stats.get(name), sparsity, nm, blocksize,
                                               percdamp, full)
            if inputs:
                inputs = [_with_hidden(args, kwargs, out)
                          for (args, kwargs), out in zip(inputs, _run(block, inputs), strict=True)]
    finally:
        if use_cache is not None:
            config.use_cache = use_cache
        model.train(training)
    return masks


def _gather(block: nn.Module, linears: dict[str, nn.Module], method: str,
            inputs: list[tuple[tuple, dict]]) -> dict[str, Any]:
    """The statistics of ``linears`` from one dense forward of ``block`` on every calibration input."""
    if method == "magnitude":
        return {}
    kind = InputNorms if method == "wanda" else Hessian
    stats = {name: kind(_as_out_in(module).shape[1], module.weight.device) for name, module in linears.items()}
    handles = [module.register_forward_hook(lambda module, args, out, name=name: stats[name].add_batch(args[0]))
               for name, module in linears.items()]
    try:
        _run(block, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return stats


def _as_out_in(module: nn.Module) -> torch.Tensor:
    return module.weight.detach().t() if _is_conv1d(module) else module.weight.detach()


def _prune_layer(module: nn.Module, method: str, stats: Any, sparsity: float | None, nm: tuple[int, int] | None,
                 blocksize: int, percdamp: float, name: str) -> torch.Tensor:
    """Prune one layer in place; returns its kept positions in the weight's stored layout."""
    weight = _as_out_in(module)
    if nm is not None and weight.shape[1] % nm[1]:
        raise ConfigError(f"{name}: its {weight.shape[1]} inputs do not divide into groups of {nm[1]} "
                          f"({nm[0]}:{nm[1]} pruning)")
    if method == "magnitude":
        kept = magnitude_mask(weight, sparsity, nm)
        updated = weight.masked_fill(~kept, 0)
    elif method == "wanda":
        kept = wanda_mask(weight, stats, sparsity, nm)
        updated = weight.masked_fill(~kept, 0)
    else:
        updated, kept = sparsegpt_prune(weight, stats, sparsity, nm, blocksize, percdamp, name)
    if _is_conv1d(module):
        updated, kept = updated.t(), kept.t()
    module.weight.data.copy_(updated)
    return kept.contiguous()
