"""Sparse training and recording inside the Hugging Face ``Trainer``: one ``TrainerCallback``.

>>> trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[
...     TopoTrainerCallback("set", density=0.2, record_dir="runs/bert-set", every_n_steps=500)])   # doctest: +SKIP

At ``on_train_begin`` the callback builds the sparsity method on the optimizer the trainer hands it (unwrapped
from accelerate's wrapper, :mod:`topo.integrations.attach`), which zeroes inactive gradients in its step
pre-hook. After every optimizer step (``on_step_end``, once per accumulated step) it re-zeroes inactive weights.
It adapts and records at each epoch end, or every ``every_n_steps`` optimizer steps when given (the snapshot's
"epoch" is then the index of the adaptation, and ``global_step`` is in its metrics). The Trainer clips gradients
before its optimizer-step callbacks, so there its clipping norm includes the inactive weights' gradients (the
update of inactive weights is zeroed all the same).

Only the process with ``state.is_world_process_zero`` records. Needs ``pip install "topo[transformers]"``.
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
    from transformers import TrainerCallback
except ImportError:
    raise ImportError('topo.integrations.transformers needs transformers: pip install "topo[transformers]"') from None


class TopoTrainerCallback(TrainerCallback):
    """Train a ``transformers.Trainer``'s model sparse with ``method`` and record it (module docstring).

    Parameters
    ----------
    method, density, record_dir, metrics_every, tensorboard, keep_weights: as
        :class:`topo.integrations.lightning.TopoCallback` (``tensorboard=True``: ``RUN/tensorboard``).
    every_n_steps: adapt and record every N optimizer steps instead of at epoch ends.
    hyperparameters: the method's own; by default the method sparsifies every ``nn.Linear`` weight
        (``params=`` chooses; embeddings and layer norms are never selected by default). RigL's
        ``total_steps`` defaults to the trainer's ``max_steps``.
    """

    def __init__(self, method: str = "adaptive", density: float = 0.1, record_dir: str | os.PathLike | None = None,
                 *, every_n_steps: int | None = None, metrics_every: int | None = None,
                 tensorboard: bool | str | os.PathLike | None = None, keep_weights: bool = False,
                 **hyperparameters: Any) -> None:
        check_method(method, density)
        if every_n_steps is not None and every_n_steps < 1:
            raise ConfigError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.method, self.density = method, float(density)
        self.record_dir = None if record_dir is None else Path(record_dir)
        self.every_n_steps = every_n_steps
        self.metrics_every, self.tensorboard, self.keep_weights = metrics_every, tensorboard, keep_weights
        self.hyperparameters = hyperparameters
        self.sparsifier: Sparsifier | None = None
        self.recorder: Recorder | None = None
        self._adaptations = 0
        self._last_logs: dict[str, float] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        if optimizer is None:
            raise ConfigError("the Trainer gave the callback no optimizer at train begin")
        hyperparameters = dict(self.hyperparameters)
        if self.method == "rigl":
            hyperparameters.setdefault("total_steps", int(state.max_steps))
        self.sparsifier = build_sparsifier(self.method, model, [optimizer], self.density, hyperparameters)
        if self.record_dir is not None and state.is_world_process_zero:
            self.recorder = Recorder(self.record_dir, self.sparsifier, checkpoint=False,
                                     keep_weights=self.keep_weights, metrics_every=self.metrics_every,
                                     tensorboard=self.tensorboard,
                                     config={"trainer": "transformers", "model": type(model).__name__,
                                             "num_train_epochs": args.num_train_epochs, "max_steps": state.max_steps,
                                             "gradient_accumulation_steps": args.gradient_accumulation_steps})

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.sparsifier.step()
        if self.every_n_steps is not None and state.global_step % self.every_n_steps == 0:
            self._adapt_and_record(state)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.every_n_steps is None:
            self._adapt_and_record(state)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        self._last_logs.update(loggable(logs or {}))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.recorder is not None:
            self.recorder.finish(epochs=self._adaptations, steps=state.global_step, reason="trainer finished")

    def _adapt_and_record(self, state: Any) -> None:
        index = self._adaptations
        self.sparsifier.end_epoch(index)
        if self.recorder is not None:
            self.recorder.snapshot(index, {**self._last_logs, "global_step": state.global_step}, force=True)
        self._adaptations += 1
