"""Sparse training and recording inside the Hugging Face ``Trainer``: one ``TrainerCallback``.

>>> trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[
...     TopoTrainerCallback("set", density=0.2, record_dir="runs/bert-set", every_n_steps=500)])   # doctest: +SKIP

At ``on_train_begin`` the callback builds the sparsity method on the optimizer the trainer hands it (unwrapped
from accelerate's wrapper, :mod:`topo.integrations.attach`), which zeroes inactive gradients in its step
pre-hook. After every optimizer step (``on_step_end``, once per accumulated step) it re-zeroes inactive weights.
It records each epoch, or every ``every_n_steps`` optimizer steps when given (the snapshot's "epoch" is then
the index of the adaptation, and ``global_step`` is in its metrics), and adapts (``end_epoch``) at the beginning of
the next optimizer step. The Trainer evaluates and saves after the callbacks' epoch or step end, so evaluation sees
the weights the optimizer trained; the snapshot is written once that evaluation is done (at the next step's
beginning, at a checkpoint's save or at the end of training, whichever comes first), so the scores recorded with an
epoch are the evaluation of that epoch's weights, as in a hand loop; nothing changes after the last step. The
Trainer clips gradients before its optimizer-step callbacks, so there its clipping norm includes the inactive
weights' gradients (the update of inactive weights is zeroed all the same).

The method's state (masks, counters, random generator, the pending adaptation) is saved beside every Trainer
checkpoint (``checkpoint-N/topo_sparsifier.pt``) and restored by ``trainer.train(resume_from_checkpoint=...)``,
which then continues with the masks of an uninterrupted run; a resumed run whose checkpoint lacks that file is an
error, not new random masks. A second ``trainer.train()`` of the same model keeps its masks and hooks the optimizer
once.

Only the process with ``state.is_world_process_zero`` records. Needs ``pip install "topo[transformers]"``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from topo.errors import ConfigError
from topo.integrations.attach import build_sparsifier, check_method, loggable
from topo.record import Recorder
from topo.record.store import write_atomic
from topo.record.training_state import safe_load
from topo.sparsity.base import Sparsifier

#: The file holding the method's state inside each Trainer checkpoint folder.
STATE_FILE = "topo_sparsifier.pt"
#: The entry of ``TrainerState.stateful_callbacks`` naming that file (not a callback's name, so the Trainer only
#: stores it).
STATE_KEY = "topo"

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
        self._pending: int | None = None
        self._unrecorded: int | None = None
        self._last_logs: dict[str, float] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        if optimizer is None:
            raise ConfigError("the Trainer gave the callback no optimizer at train begin")
        hyperparameters = dict(self.hyperparameters)
        if self.method in ("rigl", "srigl"):
            hyperparameters.setdefault("total_steps", int(state.max_steps))
        previous = self.sparsifier if self.sparsifier is not None and self.sparsifier.model is model else None
        if self.sparsifier is not None:
            self.sparsifier.remove()  # a second train(): the first method's optimizer hook goes
        restored = self._checkpoint_state(args, state) if state.global_step > 0 else None
        kept = restored["sparsifier"] if restored is not None else \
            previous.state_dict() if previous is not None else None
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()} if kept is not None else None
        self.sparsifier = build_sparsifier(self.method, model, [optimizer], self.density, hyperparameters)
        if kept is not None:
            model.load_state_dict(weights)  # the initial random masks zeroed some of the weights to keep
            self.sparsifier.load_state_dict(kept)
        self._adaptations = int(restored["adaptations"]) if restored is not None else 0
        self._pending = restored["pending"] if restored is not None else None
        if self.record_dir is not None and state.is_world_process_zero:
            resume = restored is not None and (self.record_dir / "run.json").exists()
            self.recorder = Recorder(self.record_dir, self.sparsifier, checkpoint=False, resume=resume,
                                     keep_weights=self.keep_weights, metrics_every=self.metrics_every,
                                     tensorboard=self.tensorboard,
                                     config={"trainer": "transformers", "model": type(model).__name__,
                                             "num_train_epochs": args.num_train_epochs, "max_steps": state.max_steps,
                                             "gradient_accumulation_steps": args.gradient_accumulation_steps})
            if resume:
                self.recorder.rewind(self._adaptations - 1)
        if restored is not None and self._adaptations < self._due(state):
            self._record(state.global_step)  # saved at the step that ended an epoch, before the callbacks' epoch end

    def _due(self, state: Any) -> int:
        """How many snapshots an uninterrupted run has taken by ``state.global_step``."""
        if self.every_n_steps is not None:
            return state.global_step // self.every_n_steps
        return int((state.epoch or 0) + 1e-9)

    @staticmethod
    def _checkpoint_state(args: Any, state: Any) -> dict[str, Any]:
        """The method's state saved with the Trainer checkpoint being resumed (at ``state.global_step``).

        The Trainer does not tell callbacks which folder it resumes from; the checkpoint's ``trainer_state.json``
        names the state file it was saved with (under ``stateful_callbacks["topo"]``), and
        ``TrainingArguments.resume_from_checkpoint`` and ``output_dir/checkpoint-N`` are looked at too.
        """
        folders = [Path(args.output_dir) / f"checkpoint-{state.global_step}"]
        noted = (state.stateful_callbacks or {}).get(STATE_KEY, {})
        if isinstance(noted, dict) and noted.get("state_file"):
            folders.insert(0, Path(noted["state_file"]).parent)
        if isinstance(getattr(args, "resume_from_checkpoint", None), str):
            folders.insert(0, Path(args.resume_from_checkpoint))
        for folder in folders:
            path = folder / STATE_FILE
            if path.exists():
                saved = safe_load(path)
                if int(saved.get("global_step", -1)) == state.global_step:
                    return saved
        raise ConfigError(f"resuming at step {state.global_step}, but no {STATE_FILE} of that step is in "
                          f"{', '.join(str(f) for f in dict.fromkeys(folders))}: the checkpoint was not saved with "
                          "TopoTrainerCallback (or was moved: name it in TrainingArguments(resume_from_checkpoint=…))")

    def _note_state_file(self, args: Any, state: Any) -> None:
        """Name, in the trainer state the next checkpoint saves, the file :meth:`on_save` writes beside it."""
        folder = Path(args.output_dir).resolve() / f"checkpoint-{state.global_step}"
        state.stateful_callbacks[STATE_KEY] = {"state_file": str(folder / STATE_FILE)}

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._flush()  # the Trainer saves after it evaluates: the snapshot due has its scores
        if not state.is_world_process_zero or self.sparsifier is None:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            saved = {"sparsifier": self.sparsifier.state_dict(), "adaptations": self._adaptations,
                     "pending": self._pending, "global_step": state.global_step}
            write_atomic(folder / STATE_FILE, lambda f: torch.save(saved, f))

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._flush()
        if self._pending is not None:
            self.sparsifier.end_epoch(self._pending)
            self._pending = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.sparsifier.step()
        self._note_state_file(args, state)
        if self.every_n_steps is not None and state.global_step % self.every_n_steps == 0:
            self._unrecorded = state.global_step

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.every_n_steps is None:
            self._unrecorded = state.global_step

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        self._last_logs.update(loggable(logs or {}))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._flush()
        if self.recorder is not None:
            self.recorder.finish(epochs=self._adaptations, steps=state.global_step, reason="trainer finished")

    def _flush(self) -> None:
        """Take the snapshot that came due at an epoch's (or N steps') end, now that its evaluation is logged."""
        if self._unrecorded is not None:
            step, self._unrecorded = self._unrecorded, None
            self._record(step)

    def _record(self, global_step: int) -> None:
        """Snapshot the masks the optimizer trained; the adaptation follows at the next step's beginning."""
        index = self._adaptations
        if self.recorder is not None:
            self.recorder.snapshot(index, {**self._last_logs, "global_step": global_step}, force=True)
        self._pending = index
        self._adaptations += 1
