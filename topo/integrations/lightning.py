"""Sparse training and recording inside PyTorch Lightning: one callback.

>>> trainer = lightning.Trainer(max_epochs=20, callbacks=[
...     TopoCallback("adaptive", density=0.1, record_dir="runs/my-model", k=0.25, tensorboard=True)])  # doctest: +SKIP
>>> trainer.fit(module)                                                                    # doctest: +SKIP

At fit start the callback builds the sparsity method on the optimizer that steps the module's sparsifiable weights
(:mod:`topo.integrations.attach`). Before each optimizer step it zeroes the inactive gradients: Lightning calls
this hook after unscaling mixed-precision gradients and before clipping them, so clipping sees the masked
gradient, and with gradient accumulation it runs once per optimizer step. After each training batch it re-zeroes
inactive weights (``Sparsifier.step``, which counts only batches whose optimizer stepped); at the end of each
training epoch (after Lightning's validation of that epoch) it records, on the global rank-zero process, a snapshot
with the epoch's logged metrics (:class:`topo.record.Recorder`, with live graph metrics and TensorBoard when
asked), and then adapts (``end_epoch``), except after the last epoch or when the trainer is stopping.

The callback's ``state_dict`` (masks, counters, the method's random generator) goes into Lightning's checkpoint, so
``trainer.fit(module, ckpt_path=...)`` resumes with exactly the masks of an uninterrupted fit; the run directory
is rewound to the checkpoint's epoch. The checkpoint's state is restored by the fit that loads it only: a later
``fit`` of the same module with the same callback keeps the masks it has (recording it needs another
``record_dir``). Under the DDP strategy every rank holds the same masks (the methods
broadcast rank 0's after each change) and rank 0 records.

Needs ``pip install "topo[lightning]"``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from topo.errors import ConfigError
from topo.integrations.attach import build_sparsifier, check_method, loggable
from topo.record import Recorder
from topo.sparsity.base import Sparsifier

try:
    import lightning.pytorch as pl
except ImportError:
    raise ImportError('topo.integrations.lightning needs Lightning: pip install "topo[lightning]"') from None


class TopoCallback(pl.Callback):
    """A Lightning ``Callback`` that trains the module sparse with ``method`` and records it (module docstring).

    Parameters
    ----------
    method: a :data:`topo.sparsity.METHODS` name (``adaptive``, ``set``, ``rigl``, ``random-fixed`` …).
    density: α, the fraction of the sparsified weights kept active.
    record_dir: run directory to record into (None: train sparse without recording).
    metrics_every: compute the graph metrics of every N-th snapshot into the run directory.
    tensorboard: log them to TensorBoard: True uses the trainer's TensorBoard logger when it has one, else
        ``RUN/tensorboard``; or a log directory.
    keep_weights: also store the float16 weights in every snapshot.
    hyperparameters: the method's own (``k``, ``zeta``, ``distribution`` …); RigL's ``total_steps`` defaults to
        the trainer's estimated optimizer steps.
    """

    def __init__(self, method: str = "adaptive", density: float = 0.1, record_dir: str | os.PathLike | None = None,
                 *, metrics_every: int | None = None, tensorboard: bool | str | os.PathLike | None = None,
                 keep_weights: bool = False, **hyperparameters: Any) -> None:
        check_method(method, density)
        if tensorboard and record_dir is None:
            raise ConfigError("tensorboard logging records graph metrics: give record_dir too")
        self.method, self.density = method, float(density)
        self.record_dir = None if record_dir is None else Path(record_dir)
        self.metrics_every, self.tensorboard, self.keep_weights = metrics_every, tensorboard, keep_weights
        self.hyperparameters = hyperparameters
        self.sparsifier: Sparsifier | None = None
        self.recorder: Recorder | None = None
        self._restored: dict[str, Any] | None = None
        self._rewound = True

    # -- attach ----------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        hyperparameters = dict(self.hyperparameters)
        if self.method in ("rigl", "srigl"):
            hyperparameters.setdefault("total_steps", int(trainer.estimated_stepping_batches))
        # masks to keep: a Lightning checkpoint's, or this module's from an earlier fit with this callback
        previous = self.sparsifier if self.sparsifier is not None and self.sparsifier.model is pl_module else None
        if previous is not None:
            previous.remove()
        state = self._restored["sparsifier"] if self._restored is not None else \
            previous.state_dict() if previous is not None else None
        resuming, self._restored = self._restored is not None, None  # a checkpoint's state is used by one fit only
        # the module's weights are the ones to keep by now; a method's initial masks would zero some of them
        weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()} if state is not None else None
        self.sparsifier = build_sparsifier(self.method, pl_module, trainer.optimizers, self.density,
                                           hyperparameters)
        if state is not None:
            pl_module.load_state_dict(weights)
            self.sparsifier.load_state_dict(state)
        self._rewound = False
        if self.record_dir is not None and trainer.is_global_zero:
            resume = (self.record_dir / "run.json").exists() and resuming
            self.recorder = Recorder(self.record_dir, self.sparsifier, checkpoint=False, resume=resume,
                                     keep_weights=self.keep_weights, metrics_every=self.metrics_every,
                                     tensorboard=self._tensorboard(trainer),
                                     config={"trainer": "lightning", "module": type(pl_module).__name__,
                                             "max_epochs": trainer.max_epochs,
                                             "precision": str(trainer.precision),
                                             "accumulate_grad_batches": trainer.accumulate_grad_batches,
                                             "hyperparameters": {k: v for k, v in hyperparameters.items()
                                                                 if isinstance(v, (int, float, str, bool))}})
            self._rewound = not resume

    def _tensorboard(self, trainer: pl.Trainer) -> Any:
        if self.tensorboard is True:
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
            return loggers[0].experiment if loggers else True
        return self.tensorboard or None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After a resume (Lightning restores its loops after ``on_fit_start``): catch up with an epoch end the
        checkpoint was saved before (a checkpoint written at validation end precedes this callback's epoch end),
        and rewind the run directory to the last finished epoch."""
        finished = trainer.current_epoch - 1
        if self.sparsifier.epochs_done <= finished:
            if self.recorder is not None and finished not in self.recorder.recorded_epochs():
                self.recorder.snapshot(finished, force=True)
            self.sparsifier.end_epoch(finished)
        if self.recorder is not None and not self._rewound:
            self.recorder.rewind(finished)
            self._rewound = True

    # -- every step --------------------------------------------------------------------------------------------
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.sparsifier.mask_grads()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.sparsifier.step()

    # -- every epoch -------------------------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the epoch (its validation ran before this hook, on the weights the optimizer trained), then
        change the topology, except after the last epoch."""
        epoch = trainer.current_epoch
        if self.recorder is not None:
            self.recorder.snapshot(epoch, loggable(trainer.callback_metrics), force=True)
        last = trainer.max_epochs is not None and trainer.max_epochs >= 0 and epoch + 1 >= trainer.max_epochs
        if not (last or trainer.should_stop):
            self.sparsifier.end_epoch(epoch)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.recorder is not None:
            self.recorder.finish(epochs=trainer.current_epoch, reason="lightning fit ended")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.recorder is not None:
            self.recorder.close()

    # -- Lightning checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.sparsifier is None:
            return {}
        return {"sparsifier": self.sparsifier.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict) if state_dict else None
