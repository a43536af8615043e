"""Masks of any checkpoint or run directory, all at once (for small models; :mod:`topo.record.formats` streams).

Understood inputs: everything :func:`topo.record.formats.open_checkpoint` reads (PyTorch files of any layout,
topo checkpoints, ``torch.nn.utils.prune`` pairs, masks stored beside weights, ``.safetensors``, sharded
checkpoints), and topo run directories (→ the masks of every recorded epoch). Reading never executes code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from topo.errors import CheckpointError
from topo.record.formats import open_checkpoint
from topo.record.store import RunReader

LayerMasks = dict[str, tuple[torch.Tensor, torch.Tensor | None]]


def load_masks(path: str | os.PathLike, key: str | None = None) -> LayerMasks | dict[int, LayerMasks]:
    """Masks from a checkpoint (layer → (mask, weight)) or a run directory (epoch → layer → (mask, None)).

    ``key``: the path of the weights inside a PyTorch file, when the largest mapping of tensors is not them.

    Raises
    ------
    CheckpointError
        Naming the file and the problem: missing, not a checkpoint, unsafe pickle, corrupt, no 2-D weights.
    """
    path = Path(path)
    if path.is_dir() and (path / "run.json").exists():
        reader = RunReader(path)
        if not reader.epochs:
            raise CheckpointError(f"{path}: run directory has no snapshots yet")
        return {epoch: {n: (m, None) for n, m in reader.masks(epoch, as_torch=True).items()}
                for epoch in reader.epochs}
    return {layer.name: (layer.mask, layer.weight) for layer in open_checkpoint(path, key)}
