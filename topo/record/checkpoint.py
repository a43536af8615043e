"""Read masks out of any PyTorch checkpoint, safely (``torch.load(weights_only=True)`` always).

Understood inputs:

(a) topo checkpoints (``checkpoint.pt`` of a run: masks stored beside the model);
(b) plain state_dicts, and dicts that hold one under a common key (``state_dict``, ``model``,
    ``model_state_dict``, ``net``, ``network``, ``module``, ``weights``, ``params``);
(c) ``torch.nn.utils.prune`` state_dicts, where ``x.weight_orig`` and ``x.weight_mask`` pairs give layer
    ``x.weight``;
(d) run directories (→ the masks of every recorded epoch).

Where no mask is stored, the mask is inferred from exact zeros. Layers are the floating-point tensors with two or
more dimensions (Linear, Conv, recurrent weights, embeddings); biases and norms are ignored.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from topo.errors import CheckpointError
from topo.record.store import RunReader
from topo.record.training_state import is_topo_checkpoint, safe_load, unpack_state

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module", "weights", "params")

LayerMasks = dict[str, tuple[torch.Tensor, torch.Tensor | None]]


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()
    )


def find_state_dict(obj: Any, source: str = "checkpoint") -> Mapping[str, torch.Tensor]:
    """The state_dict in ``obj``: ``obj`` itself, or the one under a key of :data:`STATE_DICT_KEYS`."""
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if key in obj and _is_state_dict(obj[key]):
                return obj[key]
        keys = list(obj)[:8]
        raise CheckpointError(f"{source}: no state_dict found (top-level keys: {keys})")
    raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a state_dict")


def masks_from_state_dict(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> LayerMasks:
    """Layer name → (mask, weight) from a state_dict, with prune pairs merged and zero-inferred masks."""
    layers: LayerMasks = {}
    for key, value in state.items():
        if key.endswith("_mask") and f"{key[:-5]}_orig" in state:
            continue
        if key.endswith("_orig") and f"{key[:-5]}_mask" in state:
            name = key[:-5]
            mask = state[f"{name}_mask"] != 0
            layers[name] = (mask, value * mask)
        elif value.is_floating_point() and value.dim() >= 2:
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                warnings.warn(f"{source}: layer {key!r} holds {bad} inf/NaN weight(s); they are counted as inactive",
                              RuntimeWarning, stacklevel=2)
            layers[key] = ((value != 0) & torch.isfinite(value), value)
    if not layers:
        raise CheckpointError(f"{source}: no weight with two or more dimensions (nothing to analyse)")
    return layers


def load_masks(path: str | os.PathLike) -> LayerMasks | dict[int, LayerMasks]:
    """Masks from a checkpoint file (layer → (mask, weight)) or a run directory (epoch → layer → (mask, None)).

    Raises
    ------
    CheckpointError
        Naming the file and the problem: missing, not a checkpoint, unsafe pickle, corrupt, no 2-D weights.
    """
    path = Path(path)
    if path.is_dir():
        reader = RunReader(path)
        if not reader.epochs:
            raise CheckpointError(f"{path}: run directory has no snapshots yet")
        return {epoch: {n: (m, None) for n, m in reader.masks(epoch, as_torch=True).items()}
                for epoch in reader.epochs}
    obj = safe_load(path)
    if is_topo_checkpoint(obj):
        if "packed" in obj:
            obj = unpack_state(obj["packed"])
        model = obj["model"]
        return {name: (mask.bool(), model.get(name)) for name, mask in obj["masks"].items()}
    return masks_from_state_dict(find_state_dict(obj, str(path)), str(path))
