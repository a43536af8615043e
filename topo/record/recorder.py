"""The training recorder: one snapshot of every mask (and weight statistics) per epoch, and resumable runs.

>>> with Recorder("runs/mlp-adaptive", sparsifier) as recorder:          # doctest: +SKIP
...     for epoch in range(start, epochs):
...         train_one_epoch(); val_loss, val_acc = evaluate()
...         recorder.snapshot(epoch, {"val_loss": val_loss, "val_acc": val_acc})   # the masks just evaluated
...         if epoch + 1 < epochs:
...             sparsifier.end_epoch(epoch)                                      # then the topology changes

Score, snapshot, then change: the recorded masks and metrics are those of the weights the optimizer trained, and
the checkpoint written with a snapshot precedes the epoch's change, which :meth:`Recorder.resume` makes.

Each snapshot moves everything it needs from the device in one transfer: per-layer statistics are computed
there for all layers at once (:func:`layer_stats`), and they, the boolean masks (bit-packed on the host) and the
float16 weights when kept are concatenated into one byte buffer before the copy. Statistics per layer (Figure 4
of the paper counts "low-strength weights"): active count, total, density, mean |w| over active weights, how
many active weights have |w| below 0.1, 0.25 and 0.5 of that mean, and the weights pruned and grown since the
previous snapshot.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import topo
from topo.errors import CheckpointError, ConfigError
from topo.record.live import METRICS_FILE, LiveMetrics, read_metrics
from topo.record.store import (
    FORMAT,
    FULL_SNAPSHOT_EVERY,
    INITIAL_STATE,
    LOW_STRENGTH_FRACTIONS,
    STAT_COLUMNS,
    RunReader,
    read_json,
    snapshot_path,
    write_atomic,
    write_csv,
    write_json,
    write_snapshot,
)
from topo.record.training_state import CHECKPOINT_FORMAT, pack_state, restore_checkpoint, rng_state
from topo.sparsity.base import Sparsifier

#: Layers are summarised in groups of at most this many weights (bounds the temporaries of :func:`layer_stats`).
STATS_GROUP = 1 << 24


def _segment_sums(values: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Sums of consecutive segments of ``values`` ending (exclusive) at ``ends``, in float64, deterministic."""
    running = torch.cumsum(values, 0, dtype=torch.float64)
    totals = running[ends - 1]
    return torch.diff(totals, prepend=totals.new_zeros(1))


def layer_stats(weights: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
    """(layers × 8) float64 statistics, on the weights' device, computed for many layers in a few kernels.

    Per layer: active count, total, density, mean |w| over active weights, and how many active weights have
    |w| below 0.1, 0.25 and 0.5 of that mean (Figure 4's low-strength weights). Layers are concatenated (in
    groups of at most :data:`STATS_GROUP` weights) and reduced by segment, so the cost does not grow with the
    number of layers as one reduction per layer would.
    """
    rows = []
    start = 0
    while start < len(weights):
        stop, size = start, 0
        while stop < len(weights) and (stop == start or size + weights[stop].numel() <= STATS_GROUP):
            size += weights[stop].numel()
            stop += 1
        group_w, group_m = weights[start:stop], masks[start:stop]
        device = group_w[0].device
        sizes = torch.tensor([w.numel() for w in group_w], device=device)
        ends = torch.cumsum(sizes, 0)
        layer = torch.repeat_interleave(torch.arange(len(group_w), device=device), sizes)
        mask = torch.cat([m.reshape(-1) for m in group_m])
        magnitude = torch.cat([w.detach().reshape(-1).float() for w in group_w]).abs_() * mask
        active = _segment_sums(mask, ends)
        mean = _segment_sums(magnitude, ends) / active.clamp(min=1)
        low = [_segment_sums((magnitude < (f * mean).float()[layer]) & mask, ends) for f in LOW_STRENGTH_FRACTIONS]
        total = sizes.double()
        rows.append(torch.stack([active, total, active / total, mean, *low], dim=1))
        start = stop
    return torch.cat(rows)


class Recorder:
    """Snapshots a sparsifier's masks into a run directory each epoch, and checkpoints the run for resuming.

    Parameters
    ----------
    run_dir:
        The run directory; created if missing.
    sparsifier:
        The method object whose masks (and model, optimizer) are recorded.
    every:
        Record every ``every``-th epoch (the last epoch of a loop should be passed to :meth:`snapshot` anyway).
    keep_weights:
        Also store every sparsified weight in float16.
    delta:
        Store a layer as the positions that flipped since the previous snapshot when that is smaller; every
        :data:`~topo.record.store.FULL_SNAPSHOT_EVERY`-th snapshot is stored in full, which bounds the chains.
    checkpoint:
        Write ``checkpoint.pt`` (model, optimizer, sparsifier, RNG states, epoch) after each snapshot.
    config:
        Extra JSON-serialisable configuration for ``run.json`` (model, data, training settings).
    resume:
        Continue an existing run: keep its files; call :meth:`resume` to restore the training state.
    metrics_every:
        Also compute the graph metrics of every ``metrics_every``-th snapshot (:mod:`topo.record.live`) into
        ``graph_metrics.csv`` (which ``topo analyze`` then reuses), on the writer thread.
    tensorboard:
        Also log those metrics, densities, low-strength counts, the snapshot's ``metrics`` and mask images to
        TensorBoard: ``True`` for ``RUN/tensorboard``, a log directory, or a ``SummaryWriter``. Implies
        ``metrics_every=1`` unless given.
    metrics_null, null_samples:
        Measure the live metrics against a null model too (``"er"``, ``"degree"``, ``"nm"``; z-scores in
        ``graph_metrics.csv``, :func:`topo.graph.metrics_table`).
    background:
        Write files on a background thread. :meth:`snapshot` gathers everything on the calling thread (masks,
        statistics and the packed checkpoint, in a few device-to-host copies) and returns while the files are
        written and fsynced, so disk time overlaps training; the next :meth:`snapshot`, :meth:`flush`,
        :meth:`close` or :meth:`finish` waits for the write and re-raises its error. Files still appear
        atomically and in order (snapshot, stats.csv, checkpoint.pt).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        sparsifier: Sparsifier,
        *,
        every: int = 1,
        keep_weights: bool = False,
        delta: bool = False,
        checkpoint: bool = True,
        config: Mapping[str, Any] | None = None,
        resume: bool = False,
        metrics_every: int | None = None,
        tensorboard: Any = None,
        background: bool = True,
        metrics_null: str | None = None,
        null_samples: int = 20,
    ) -> None:
        self.path = Path(run_dir)
        if tensorboard is True:
            tensorboard = self.path / "tensorboard"
        if tensorboard is not None and tensorboard is not False and metrics_every is None:
            metrics_every = 1
        self.live = (LiveMetrics(self.path, metrics_every, tensorboard or None, metrics_null, null_samples,
                                 sparsifier.family)
                     if metrics_every is not None else None)
        self.sparsifier = sparsifier
        self.every = int(every)
        self.keep_weights = keep_weights
        self.delta = delta
        self.write_checkpoint = checkpoint
        self._previous: tuple[int, list[np.ndarray]] | None = None
        self._chain = 0  # delta snapshots since the last full one
        self._rows: list[dict[str, Any]] = []
        self._closed = False
        self.background = background
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        if resume and (self.path / "run.json").exists():
            reader = RunReader(self.path)  # also validates run.json
            self._rows = reader.stats.to_dict("records")
            if self.live is not None:
                self.live.seen = len(reader.epochs)
        else:
            if (self.path / "run.json").exists():
                raise CheckpointError(f"{self.path}: already holds a run; pass resume=True or choose another name")
            layers = [[name, list(w.shape)] for name, w in sparsifier.weights.items()]
            write_json(self.path / "run.json", {
                "format": FORMAT,
                "name": self.path.name,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "method": sparsifier.config(),
                "config": dict(config or {}),
                "layers": layers,
                "family": sparsifier.family.to_json(),
                "seed": sparsifier.seed,
                "versions": {"topo": topo.__version__, "torch": torch.__version__, "numpy": np.__version__,
                             "python": platform.python_version()},
                "argv": sys.argv,
            })
            initial = {k: v.detach().cpu().clone() for k, v in sparsifier.model.state_dict().items()}
            write_atomic(self.path / INITIAL_STATE, lambda f: torch.save(initial, f))

    # -- recording ------------------------------------------------------------------------------------------
    def _gather(self) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray] | None, list[np.ndarray]]:
        """Masks, stats, (optionally) float16 weights and ever-active positions of every layer, in one
        device-to-host transfer."""
        names = list(self.sparsifier.weights)
        masks = [self.sparsifier.masks[n] for n in names]
        ever = [self.sparsifier.ever_active[n] for n in names]
        weights = [self.sparsifier.weights[n].detach() for n in names]
        stats = layer_stats(weights, masks)
        changes = self.sparsifier.take_change_counters().to(stats.device, torch.float64)
        stats = torch.cat([stats, changes], dim=1)
        parts = [stats.reshape(-1).view(torch.uint8), *(m.reshape(-1).view(torch.uint8) for m in masks),
                 *(e.reshape(-1).view(torch.uint8) for e in ever)]
        if self.keep_weights:
            parts += [w.to(torch.float16).reshape(-1).view(torch.uint8) for w in weights]
        host = torch.cat([p.to(stats.device) for p in parts]).cpu().numpy()

        offset = stats.numel() * 8
        stats_np = host[:offset].view(np.float64).reshape(len(names), len(STAT_COLUMNS))
        mask_arrays, ever_arrays = [], []
        for arrays, tensors in ((mask_arrays, masks), (ever_arrays, ever)):
            for m in tensors:
                arrays.append(host[offset : offset + m.numel()].view(bool).reshape(tuple(m.shape)))
                offset += m.numel()
        weight_arrays = None
        if self.keep_weights:
            weight_arrays = []
            for w in weights:
                size = w.numel() * 2
                weight_arrays.append(host[offset : offset + size].view(np.float16).reshape(tuple(w.shape)))
                offset += size
        return mask_arrays, stats_np, weight_arrays, ever_arrays

    def snapshot(self, epoch: int, metrics: Mapping[str, float] | None = None, *, force: bool = False) -> Path | None:
        """Record epoch ``epoch`` (0-based): snapshot, stats rows, checkpoint. Returns the snapshot path.

        ``metrics`` (e.g. ``train_loss``, ``val_acc``) are added to every stats row of the epoch. Epochs that
        ``every`` skips are not recorded unless ``force``; the change counters then accumulate to the next one.
        """
        if self._closed:
            raise CheckpointError(f"{self.path}: recorder is closed")
        if not force and (epoch + 1) % self.every:
            return None
        self.flush()
        masks, stats, weights, ever = self._gather()
        self._chain = 0 if self._previous is None or self._chain + 1 >= FULL_SNAPSHOT_EVERY else self._chain + 1
        last = self._previous
        previous = last if self.delta and self._chain else None
        self._previous = (epoch, masks)
        names = list(self.sparsifier.weights)
        observe = None
        if self.live is not None and self.live.due():
            before = dict(zip(names, last[1], strict=True)) if last is not None else None
            observe = (epoch, dict(zip(names, masks, strict=True)), stats, before, dict(zip(names, ever, strict=True)),
                       dict(metrics or {}))
        extra = {k: float(v) for k, v in (metrics or {}).items()}
        clash = sorted(set(extra) & {"epoch", "layer", *STAT_COLUMNS})
        if clash:
            raise ConfigError(f"{self.path}: metric name(s) {clash} are columns the recorder writes itself; "
                              "rename them")
        self._rows = [r for r in self._rows if r["epoch"] != epoch]
        for name, row in zip(self.sparsifier.weights, stats, strict=True):
            self._rows.append({"epoch": epoch, "layer": name, **dict(zip(STAT_COLUMNS, row.tolist(), strict=True)),
                               **extra})
        frame = pd.DataFrame(self._rows)
        checkpoint = self._checkpoint_state(epoch) if self.write_checkpoint else None
        path = snapshot_path(self.path, epoch)

        def write() -> None:
            write_snapshot(path, masks, stats, weights, previous=previous[1] if previous else None,
                           previous_epoch=previous[0] if previous else None, ever_active=ever)
            write_csv(self.path / "stats.csv", frame)
            if checkpoint is not None:
                write_atomic(self.path / "checkpoint.pt", lambda f: torch.save(checkpoint, f))
            if observe is not None:
                self.live.observe(*observe)

        if self.background:
            self._writer = self._writer or ThreadPoolExecutor(1, thread_name_prefix="topo-recorder")
            self._pending = self._writer.submit(write)
        else:
            write()
        return path

    def flush(self) -> None:
        """Wait until the files of the last :meth:`snapshot` are on disk; re-raise the writer's error if any."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def callback(self) -> Callable[..., Path | None]:
        """``fn(epoch, **metrics)`` for a plain training loop: records the epoch."""
        return lambda epoch, **metrics: self.snapshot(epoch, metrics)

    # -- checkpoints and resume -----------------------------------------------------------------------------
    def _checkpoint_state(self, epoch: int) -> dict[str, Any]:
        """The packed training state after epoch ``epoch`` (see :mod:`topo.record.training_state`)."""
        sp = self.sparsifier
        state = {
            "model": sp.model.state_dict(),
            "optimizer": sp.optimizer.state_dict() if sp.optimizer is not None else None,
            "sparsifier": sp.state_dict(),
            "masks": dict(sp.masks),
            "rng": rng_state(),
        }
        return {"format": CHECKPOINT_FORMAT, "epoch": epoch, "packed": pack_state(state)}

    def save_checkpoint(self, epoch: int) -> Path:
        """Write ``checkpoint.pt`` atomically (now, on this thread) for the state after epoch ``epoch``."""
        checkpoint = self._checkpoint_state(epoch)
        return write_atomic(self.path / "checkpoint.pt", lambda f: torch.save(checkpoint, f))

    def resume(self) -> int:
        """Restore model, optimizer, sparsifier and RNG states from ``checkpoint.pt``; returns the next epoch.

        Snapshots, stats rows and graph metrics of epochs after the checkpoint (written just before a crash) are
        dropped (:meth:`rewind`), so the resumed run rewrites them. With no checkpoint, returns 0.
        """
        self.flush()
        epoch = restore_checkpoint(self.path, self.sparsifier) - 1
        if epoch < 0:
            return 0
        self.rewind(epoch)
        return epoch + 1

    def recorded_epochs(self) -> list[int]:
        """The epochs that have a snapshot on disk (after the pending write)."""
        self.flush()
        return RunReader(self.path).epochs

    def rewind(self, epoch: int) -> None:
        """Forget what was recorded after epoch ``epoch``: snapshots, stats rows and graph metrics of later epochs
        are dropped, and the next snapshot's turnover is measured from epoch ``epoch``'s masks. For a training
        state restored from elsewhere (a Lightning checkpoint of that epoch, say); ``-1`` forgets every epoch."""
        self.flush()
        reader = RunReader(self.path)
        for later in reader.epochs:
            if later > epoch:
                snapshot_path(self.path, later).unlink()
        self._rows = [r for r in self._rows if r["epoch"] <= epoch]
        write_csv(self.path / "stats.csv", pd.DataFrame(self._rows))
        metrics = read_metrics(self.path)
        if metrics is not None and (metrics.epoch > epoch).any():
            write_csv(self.path / METRICS_FILE, metrics[metrics.epoch <= epoch])
        self._previous = None
        if self.live is not None:
            self.live.seen = len([e for e in reader.epochs if e <= epoch])
        if epoch in reader.epochs:
            masks = reader.masks(epoch)
            self._previous = (epoch, [masks[n] for n in self.sparsifier.weights])

    def update_config(self, config: Mapping[str, Any]) -> None:
        """Replace the ``config`` stored in ``run.json`` (a resumed run continued with more epochs, say); the file is
        not touched when nothing changes."""
        meta = read_json(self.path / "run.json")
        if meta.get("config") != dict(config):
            meta["config"] = dict(config)
            write_json(self.path / "run.json", meta)

    def finish(self, **info: Any) -> None:
        """Mark the run finished in ``run.json`` (e.g. ``epochs=20, reason="early stopping"``) and close.

        A finished run is not trained further when resumed; its snapshots stay as they are.
        """
        self.flush()
        meta = read_json(self.path / "run.json")
        meta["finished"] = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **info}
        write_json(self.path / "run.json", meta)
        self.close()

    def close(self) -> None:
        """Wait for pending writes and stop the writer thread; the recorder takes no more snapshots."""
        try:
            self.flush()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None
            if self.live is not None and not self._closed:
                self.live.close()
            self._closed = True

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
