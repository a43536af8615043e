"""The transplant experiment of Section 5.1 (Figure 3): a learned topology, trained again from scratch.

"We take the sparsity pattern resulting from a training session with adaptive sparsity and use this as a fixed
sparse structure for a new network trained from scratch." The new run has the parent's model, widths, data and
training settings, freshly initialised weights (seed + 1 by default, so that the initial values differ from the
parent's), and the parent's mask at ``epoch`` held fixed (:class:`topo.sparsity.FixedMask`). Its ``run.json``
names the parent run and epoch.
"""

from __future__ import annotations

import os
from pathlib import Path

from topo.errors import CheckpointError, ConfigError
from topo.experiments.train import TrainConfig, TrainResult, train
from topo.record import RunReader


def transplant(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    epoch: int | None = None,
    seed: int | None = None,
    epochs: int | None = None,
    data_dir: str | None = None,
    init: str = "fresh",
    lr: float | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train the mask of ``run_dir`` at ``epoch`` (default: the last recorded) fixed, from a new start.

    ``init="fresh"`` (Section 5.1): a fresh initialisation, seed + 1 by default. ``init="rewind"``: the parent's
    own initial weights (its ``initial.pt``) and seed, as the lottery-ticket experiments of Frankle & Carbin (2019)
    do. Returns the new run's result; it is recorded in ``out_dir`` (default: ``<run>-transplant-e<epoch>``, with
    ``-rewind`` for a rewound one, beside the parent). ``lr``: the learning rate (default the parent's; a one-shot
    arm's fine-tuning ran at a tenth of its dense run's). ``resume``: a transplant already in ``out_dir`` is read
    back when finished and continued when interrupted.
    """
    if init not in ("fresh", "rewind"):
        raise ConfigError(f"init must be 'fresh' or 'rewind', got {init!r}")
    reader = RunReader(run_dir)
    if not reader.epochs:
        raise CheckpointError(f"{reader.path}: no snapshot to transplant")
    epoch = reader.epochs[-1] if epoch is None else epoch
    masks = reader.masks(epoch, as_torch=True)
    recorded = reader.meta["config"]
    if "train" not in recorded:
        raise CheckpointError(f"{reader.path / 'run.json'}: not recorded by topo.experiments.train (no 'train')")
    config = TrainConfig(**recorded["train"])
    initial_state = reader.initial_state() if init == "rewind" else None
    config.seed = (config.seed if init == "rewind" else config.seed + 1) if seed is None else seed
    config.epochs = epochs or recorded["epochs"]
    config.data_dir = data_dir or config.data_dir
    config.lr = lr if lr is not None else config.lr
    suffix = "-rewind" if init == "rewind" else ""
    out_dir = Path(out_dir) if out_dir else reader.path.parent / f"{reader.path.name}-transplant-e{epoch}{suffix}"
    return train(config, out_dir, masks=masks, widths=recorded["widths"], parent=f"{reader.path}@{epoch}{suffix}",
                 progress=progress, initial_state=initial_state, resume=resume)
