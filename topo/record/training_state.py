"""The topo checkpoint: a run's whole training state in ``checkpoint.pt``, packed, written and read back safely.

A checkpoint holds the model's and optimizer's ``state_dict``, the sparsifier's state, its masks, every random
generator's state and the epoch. Written naively (``torch.save`` of those nested dicts) a ResNet-110 checkpoint
pickles about 2,000 tensors one by one, which costs more than the GPU spends on a hundred training steps. So
:func:`pack_state` replaces every tensor of the nested state by a placeholder and concatenates their bytes into
one buffer, with a single device-to-host copy for all CUDA tensors; what is pickled is that one buffer and a
small skeleton of dicts, lists and numbers. :func:`unpack_state` rebuilds the original structure. The file is
still a plain ``torch.save`` file that ``torch.load(weights_only=True)`` reads: nothing in it executes code.

Format ``topo-checkpoint/2``: ``{"format", "epoch", "packed"}`` (the epoch stays readable without unpacking);
files of ``topo-checkpoint/1`` (plain nested dicts) are still read.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from topo.errors import CheckpointError

CHECKPOINT_FORMAT = "topo-checkpoint/2"
READABLE_FORMATS = ("topo-checkpoint/1", CHECKPOINT_FORMAT)
_TENSOR = "__topo_tensor__"


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def refusal(path: Path, exc: Exception) -> str:
    """One line saying why the safe loader refused ``path``: the Python class it would have had to import, or
    that the file is a pickle of another kind (topo never runs code from a checkpoint)."""
    text = _ANSI.sub("", str(exc))
    found = _GLOBAL.search(text)
    if found:
        return (f"{path}: holds a Python object of class {found.group(1)}, which topo will not import (checkpoints "
                "are read with weights_only=True, never running their code); save its state_dict() instead")
    return (f"{path}: a pickle that is not a PyTorch checkpoint of tensors (topo reads checkpoints with "
            "weights_only=True, never running their code); save the model's state_dict() with torch.save")


def safe_load(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with every failure as one CheckpointError (one
    line, naming the file and, for a refused pickle, the class it would have imported); torch's own warnings about
    the file are not shown."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(refusal(path, exc)) from None
    except Exception as exc:  # a corrupt file fails inside torch's reader in any way
        with open(path, "rb") as handle:
            start = handle.read(4)
        if not start.startswith((b"PK", b"\x80")):  # neither a zip archive (torch.save) nor a pickle (PROTO)
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor a "
                                  "pickle)") from None
        first = _ANSI.sub("", str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): {first}") from None


# -- packing ------------------------------------------------------------------------------------------------------
def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def pack_state(state: Any) -> dict[str, Any]:
    """``state`` with every tensor moved into one uint8 CPU buffer (see the module docstring)."""
    tensors: list[torch.Tensor] = []

    def skeleton(obj: Any) -> Any:
        if torch.is_tensor(obj):
            tensors.append(obj)
            return {_TENSOR: len(tensors) - 1}
        if isinstance(obj, Mapping):
            return {key: skeleton(value) for key, value in obj.items()}
        if isinstance(obj, (list, tuple)):
            items = [skeleton(value) for value in obj]
            return items if isinstance(obj, list) else tuple(items)
        return obj

    frame = skeleton(state)
    on_host: dict[int, torch.Tensor] = {}
    device_groups: dict[torch.device, list[int]] = {}
    for index, tensor in enumerate(tensors):
        device_groups.setdefault(tensor.device, []).append(index)
    for device, indices in device_groups.items():
        joined = torch.cat([_as_bytes(tensors[i]) for i in indices]) if indices else torch.zeros(0, dtype=torch.uint8)
        host = joined.cpu() if device.type != "cpu" else joined
        offset = 0
        for i in indices:
            size = tensors[i].numel() * tensors[i].element_size()
            on_host[i] = host[offset : offset + size]
            offset += size
    layout, pieces, offset = [], [], 0
    for index, tensor in enumerate(tensors):
        size = on_host[index].numel()
        layout.append((offset, size, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape)))
        pieces.append(on_host[index])
        offset += size
    buffer = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.uint8)
    return {"skeleton": frame, "layout": layout, "buffer": buffer}


def unpack_state(packed: Mapping[str, Any]) -> Any:
    """The nested state that :func:`pack_state` packed, with CPU tensors."""
    buffer, layout = packed["buffer"], packed["layout"]

    def tensor(index: int) -> torch.Tensor:
        offset, size, dtype, shape = layout[index]
        return buffer[offset : offset + size].clone().view(getattr(torch, dtype)).reshape(shape)

    def build(obj: Any) -> Any:
        if isinstance(obj, Mapping):
            if set(obj) == {_TENSOR}:
                return tensor(obj[_TENSOR])
            return {key: build(value) for key, value in obj.items()}
        if isinstance(obj, (list, tuple)):
            items = [build(value) for value in obj]
            return items if isinstance(obj, list) else tuple(items)
        return obj

    return build(packed["skeleton"])


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A topo checkpoint as its nested state (model, optimizer, sparsifier, masks, rng, epoch)."""
    state = safe_load(path)
    if not is_topo_checkpoint(state):
        raise CheckpointError(f"{path}: not a topo checkpoint")
    if state["format"] == CHECKPOINT_FORMAT:
        return {**unpack_state(state["packed"]), "epoch": state["epoch"]}
    return state


def is_topo_checkpoint(obj: Any) -> bool:
    """Whether a loaded object is a topo checkpoint of a format this version reads."""
    return isinstance(obj, Mapping) and obj.get("format") in READABLE_FORMATS


# -- random generators -------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Every global random state a training loop may use, in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - the legacy global state loops use
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore torch's, numpy's and Python's global random generators from a checkpoint's ``rng`` state."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- restoring a run ----------------------------------------------------------------------------------------------
def restore_checkpoint(run_dir: str | os.PathLike, sparsifier: Any) -> int:
    """Load ``run_dir/checkpoint.pt`` into the sparsifier's model and optimizer, the sparsifier and the RNGs.

    Returns the next epoch (0 without a checkpoint). Reads only: the DDP ranks that record nothing resume with
    it, while rank 0 resumes through :meth:`topo.record.Recorder.resume`, which also tidies the run directory.

    A checkpoint is written with its epoch's snapshot, after the epoch was scored and before its topology change
    (``end_epoch``); when the restored method has not made that change yet, it is made here, so the state is the
    one the next epoch of an uninterrupted run starts from.
    """
    path = Path(run_dir) / "checkpoint.pt"
    if not path.exists():
        return 0
    state = read_checkpoint(path)
    sparsifier.model.load_state_dict(state["model"])
    if sparsifier.optimizer is not None and state["optimizer"] is not None:
        sparsifier.optimizer.load_state_dict(state["optimizer"])
    sparsifier.load_state_dict(state["sparsifier"])
    set_rng_state(state["rng"])
    epoch = int(state["epoch"])
    if sparsifier.epochs_done <= epoch:
        sparsifier.end_epoch(epoch)
    return epoch + 1
