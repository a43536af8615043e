"""Which weights are sparsified, their binary masks, and keeping inactive weights at exactly zero.

Section 3 of the paper: "We introduce a binary {0, 1} mask variable for every parameter in a model ... Inactive
weights are set to zero at all times." :class:`MaskedParams` holds one ``torch.bool`` mask per sparsified weight,
on the weight's own device, and offers the two per-step operations every method needs:

* :meth:`MaskedParams.mask_grads` zeroes the gradient of inactive weights before the optimizer step, so that
  momentum and Adam moments are never fed by weights that do not exist;
* :meth:`MaskedParams.apply` multiplies the weights by their masks after the step, which undoes what weight decay
  and stale optimizer state would otherwise revive.

Both are a single ``torch._foreach_mul_`` over all layers and never synchronise host and device. The multiply
uses a copy of each mask in its weight's dtype (PyTorch's fused multi-tensor kernels need operands of one
dtype; with boolean masks every layer would be a launch of its own), refreshed whenever the boolean mask is
modified in place (tracked by the tensor's version counter), so the masks stay the one source of truth.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from topo.errors import ConfigError, MaskError

_RECURRENT_WEIGHT = re.compile(r"^weight_(ih|hh)(_l\d+)?(_reverse)?$")
_SPARSIFIABLE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Bilinear)
_RECURRENT_MODULES = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)

_ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")

ParamFilter = Callable[[str, nn.Parameter, nn.Module], bool]


def default_filter(name: str, param: nn.Parameter, module: nn.Module) -> bool:
    """Whether ``param`` (called ``name`` inside ``module``) is sparsified by default.

    The weights of Linear, Bilinear and Conv1d/2d/3d layers, of Hugging Face's ``Conv1D`` (GPT-2's projections,
    stored (in, out)), the input projections of ``nn.MultiheadAttention`` (``in_proj_weight``, or
    ``q/k/v_proj_weight``; its ``out_proj`` is a Linear), and the input-to-hidden and hidden-to-hidden weights
    (``weight_ih*``, ``weight_hh*``) of LSTM, GRU and RNN layers and cells. Biases, normalisation parameters and
    embedding tables stay dense, as in the paper.
    """
    if isinstance(module, _SPARSIFIABLE_MODULES) or (type(module).__name__ == "Conv1D" and hasattr(module, "nf")):
        return name == "weight"
    if isinstance(module, nn.MultiheadAttention):
        return name in _ATTENTION_WEIGHTS
    if isinstance(module, _RECURRENT_MODULES):
        return bool(_RECURRENT_WEIGHT.match(name))
    return False


def select_parameters(
    model: nn.Module, params: Iterable[str] | ParamFilter | None = None
) -> dict[str, nn.Parameter]:
    """The parameters of ``model`` to sparsify, by fully qualified name, in ``named_parameters`` order.

    Parameters
    ----------
    model:
        Any ``nn.Module`` (a ``DistributedDataParallel`` wrapper too; names then start with ``module.``).
    params:
        ``None`` for :func:`default_filter`; a callable ``(local_name, param, module) -> bool``; or an explicit
        list of fully qualified parameter names.

    Raises
    ------
    ConfigError
        If an explicit name does not exist in the model, or nothing is selected.
    """
    named = dict(model.named_parameters())
    if params is not None and not callable(params):
        wanted = list(params)
        unknown = [n for n in wanted if n not in named]
        if unknown:
            raise ConfigError(
                f"unknown parameter name(s) {unknown}; the model has e.g. {list(named)[:6]}"
            )
        selected = {n: named[n] for n in named if n in set(wanted)}
    else:
        keep = params if callable(params) else default_filter
        selected = {}
        for mod_name, module in model.named_modules():
            for local, p in module.named_parameters(recurse=False):
                full = f"{mod_name}.{local}" if mod_name else local
                if keep(local, p, module):
                    selected[full] = p
        selected = {n: selected[n] for n in named if n in selected}
    if not selected:
        raise ConfigError(
            f"{type(model).__name__} has no sparsifiable weights (Linear, Conv*, Conv1D, attention, LSTM/GRU/RNN "
            "weights); "
            "pass `params=` to choose some"
        )
    return selected


@dataclass(frozen=True)
class LayerCount:
    """Active (non-zero) and total weight counts of one sparsified layer."""

    active: int
    total: int

    @property
    def density(self) -> float:
        return self.active / self.total if self.total else float("nan")


class MaskedParams:
    """The masks of a model's sparsified weights, kept beside the weights on their device.

    Parameters
    ----------
    model:
        The network. Its sparsified weights are looked up once, at construction.
    params:
        Which weights to sparsify: see :func:`select_parameters`.
    """

    def __init__(self, model: nn.Module, params: Iterable[str] | ParamFilter | None = None) -> None:
        self.params: dict[str, nn.Parameter] = select_parameters(model, params)
        self.masks: dict[str, torch.Tensor] = {
            n: torch.ones_like(p, dtype=torch.bool) for n, p in self.params.items()
        }
        self._refresh_lists()

    def _refresh_lists(self) -> None:
        self._plist = list(self.params.values())
        self._mlist = [self.masks[n] for n in self.params]
        self._multipliers: list[torch.Tensor | None] = [None] * len(self._mlist)
        self._versions = [-1] * len(self._mlist)

    def multipliers(self) -> list[torch.Tensor]:
        """Every mask as 0/1 in its weight's dtype, rebuilt only for masks modified since the last call."""
        for i, (mask, param) in enumerate(zip(self._mlist, self._plist, strict=True)):
            cached = self._multipliers[i]
            if mask._version != self._versions[i] or cached is None or cached.dtype != param.dtype:
                self._multipliers[i] = mask.to(param.dtype)
                self._versions[i] = mask._version
        return self._multipliers  # type: ignore[return-value]

    @property
    def names(self) -> list[str]:
        return list(self.params)

    def set_mask(self, name: str, mask: torch.Tensor) -> None:
        """Replace the mask of layer ``name`` (copied onto the weight's device) and zero its inactive weights."""
        if name not in self.params:
            raise ConfigError(f"no sparsified layer named {name!r}; layers are {self.names}")
        weight = self.params[name]
        if tuple(mask.shape) != tuple(weight.shape):
            raise MaskError(
                f"mask for {name!r} has shape {tuple(mask.shape)}, the weight has {tuple(weight.shape)}"
            )
        if mask.dtype != torch.bool:
            raise MaskError(f"mask for {name!r} must be torch.bool, got {mask.dtype}")
        self.masks[name].copy_(mask.to(weight.device))
        with torch.no_grad():
            weight.mul_(self.masks[name])

    def load_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Set several masks at once (see :meth:`set_mask`); names not in ``masks`` are left as they are."""
        for name, mask in masks.items():
            self.set_mask(name, mask)

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every inactive weight (one fused multiply over all layers, no host-device sync)."""
        torch._foreach_mul_(self._plist, self.multipliers())

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero the gradients of inactive weights; parameters without a gradient are skipped."""
        multipliers = self.multipliers()
        pairs = [(p.grad, m if m.dtype == p.grad.dtype else m.to(p.grad.dtype))
                 for p, m in zip(self._plist, multipliers, strict=True) if p.grad is not None]
        if pairs:
            grads, masks = zip(*pairs, strict=True)
            torch._foreach_mul_(list(grads), list(masks))

    def counts(self) -> dict[str, LayerCount]:
        """Active and total weights of every sparsified layer (synchronises with the device once)."""
        actives = torch.stack([m.sum() for m in self._mlist]).tolist()
        return {
            n: LayerCount(int(a), self.masks[n].numel()) for n, a in zip(self.params, actives, strict=True)
        }

    def total(self) -> LayerCount:
        """Active and total weights summed over all sparsified layers."""
        counts = self.counts().values()
        return LayerCount(sum(c.active for c in counts), sum(c.total for c in counts))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the masks, by parameter name."""
        return {n: m.clone() for n, m in self.masks.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy saved masks in place; a :class:`~topo.errors.MaskError` names missing and unexpected ones."""
        missing = set(self.masks) - set(state)
        extra = set(state) - set(self.masks)
        if missing or extra:
            raise MaskError(f"mask state does not fit the model: missing {sorted(missing)}, unexpected {sorted(extra)}")
        self.load_masks(state)
