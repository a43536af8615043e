"""Graph metrics while a run trains: every N-th snapshot, into the run directory and TensorBoard.

The recorder hands each snapshot's host copies of the masks to :meth:`LiveMetrics.observe` on its background
writer thread, so the metrics overlap training. Each observed snapshot adds to ``RUN/graph_metrics.csv`` the rows
:func:`topo.analyze.analyze_run` would compute for that epoch (the Figure 5 metrics of every graph, turnover since
the previous snapshot, exploration), and ``topo analyze RUN`` reuses them instead of recomputing. With a
TensorBoard log directory it also writes, under ``topo/<graph>/<metric>``, those metrics, each layer's mask
density (``mask_density``) and Figure 4's low-strength counts (``low_0.1`` …), the epoch's training metrics
under ``topo/run/<name>``, and every layer's mask as an image (``topo/<layer>/mask``; large masks shown as the
density of blocks).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from topo.errors import ConfigError
from topo.graph import metrics_table
from topo.graph.compare import exploration_rate, mask_turnover
from topo.record.store import STAT_COLUMNS, write_csv

METRICS_FILE = "graph_metrics.csv"
#: Largest side of a mask image; larger masks are shown as the density of square blocks.
IMAGE_SIDE = 512
#: Per-layer statistics written to TensorBoard beside the graph metrics (``density`` as ``mask_density``: the
#: graph metrics have a ``density`` of their own, the edge density of the graph).
TENSORBOARD_STATS = {"density": "mask_density", "low_0.1": "low_0.1", "low_0.25": "low_0.25", "low_0.5": "low_0.5"}


def summary_writer(log_dir: str | os.PathLike) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` for ``log_dir``, or a one-line error saying what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError('TensorBoard logging needs tensorboard: pip install "topo[tensorboard]"') from None
    return SummaryWriter(log_dir=str(log_dir))


def mask_image(mask: np.ndarray, side: int = IMAGE_SIDE) -> np.ndarray:
    """A (1, H, W) float image of a mask in [0, 1]: 2-D as it is (higher-rank weights as out × rest), averaged
    over blocks so that neither side exceeds ``side``."""
    matrix = np.asarray(mask, dtype=np.float32).reshape(mask.shape[0], -1) if np.ndim(mask) > 1 else \
        np.asarray(mask, dtype=np.float32).reshape(1, -1)
    rows, cols = matrix.shape
    fy, fx = -(-rows // side), -(-cols // side)
    if fy > 1 or fx > 1:
        padded = np.zeros((-(-rows // fy) * fy, -(-cols // fx) * fx), dtype=np.float32)
        padded[:rows, :cols] = matrix
        matrix = padded.reshape(padded.shape[0] // fy, fy, padded.shape[1] // fx, fx).mean(axis=(1, 3))
    return matrix[None]


def read_metrics(run_dir: str | os.PathLike) -> pd.DataFrame | None:
    """``RUN/graph_metrics.csv`` as a tidy table, or None when there is none."""
    path = Path(run_dir) / METRICS_FILE
    return pd.read_csv(path) if path.exists() else None


class LiveMetrics:
    """Graph metrics of every ``every``-th observed snapshot (see the module docstring).

    Parameters
    ----------
    run_dir: the run directory (its name is the ``run`` column).
    every: observe every ``every``-th snapshot (1: all).
    tensorboard: None (no TensorBoard), a log directory, or a ``SummaryWriter`` (a Lightning logger's, say),
        which is flushed but not closed.
    null, null_samples: also measure each graph against a null model (:func:`topo.graph.metrics_table`).
    family: how the model's weights are read into graphs (:mod:`topo.families`).
    """

    def __init__(self, run_dir: str | os.PathLike, every: int = 1, tensorboard: Any = None,
                 null: str | None = None, null_samples: int = 20, family: Any = None) -> None:
        if int(every) < 1:
            raise ConfigError(f"metrics_every must be >= 1, got {every}")
        self.null, self.null_samples, self.family = null, int(null_samples), family
        self.path = Path(run_dir)
        self.every = int(every)
        self._owns_writer = isinstance(tensorboard, (str, os.PathLike))
        self.writer = summary_writer(tensorboard) if self._owns_writer else tensorboard
        self.seen = 0

    def due(self) -> bool:
        """Whether the next snapshot is one to observe (counts it). :attr:`seen` counts the run's snapshots so
        far, the recorded ones of a resumed run included (the recorder sets it), so a resume does not shift
        which snapshots are observed."""
        self.seen += 1
        return (self.seen - 1) % self.every == 0

    def observe(self, epoch: int, masks: Mapping[str, np.ndarray], stats: np.ndarray,
                previous: Mapping[str, np.ndarray] | None, ever_active: Mapping[str, np.ndarray],
                metrics: Mapping[str, float]) -> pd.DataFrame:
        """Compute, store and log the metrics of one snapshot; returns its tidy rows."""
        run = self.path.name
        table = metrics_table([(epoch, dict(masks))], run=run, progress=False, family=self.family, null=self.null,
                              null_samples=self.null_samples)
        topology = [(run, epoch, layer, layer, "turnover", value)
                    for layer, value in (mask_turnover(previous, masks) if previous is not None else {}).items()]
        topology += [(run, epoch, layer, layer, "exploration", value)
                     for layer, value in exploration_rate(ever_active).items()]
        table = pd.concat([table, pd.DataFrame(topology, columns=table.columns)], ignore_index=True)
        self._store(epoch, table)
        if self.writer is not None:
            self._log(epoch, table, masks, stats, metrics)
        return table

    def _store(self, epoch: int, rows: pd.DataFrame) -> None:
        existing = read_metrics(self.path)
        if existing is not None:
            rows = pd.concat([existing[existing.epoch != epoch], rows], ignore_index=True)
        write_csv(self.path / METRICS_FILE, rows.sort_values("epoch", kind="stable"))

    def _log(self, epoch: int, table: pd.DataFrame, masks: Mapping[str, np.ndarray], stats: np.ndarray,
             metrics: Mapping[str, float]) -> None:
        for row in table.itertuples():
            duplicate = row.metric == "mask_density" and row.graph == row.layer  # logged with the layer's stats
            if np.isfinite(row.value) and not duplicate:
                self.writer.add_scalar(f"topo/{row.graph}/{row.metric}", row.value, epoch)
        columns = list(STAT_COLUMNS)
        for layer, values in zip(masks, stats, strict=True):
            for name, tag in TENSORBOARD_STATS.items():
                self.writer.add_scalar(f"topo/{layer}/{tag}", float(values[columns.index(name)]), epoch)
            self.writer.add_image(f"topo/{layer}/mask", mask_image(masks[layer]), epoch)
        for name, value in metrics.items():
            self.writer.add_scalar(f"topo/run/{name}", float(value), epoch)
        self.writer.flush()

    def close(self) -> None:
        """Flush the TensorBoard writer, and close it when this object opened it."""
        if self.writer is not None:
            self.writer.flush()
            if self._owns_writer:
                self.writer.close()


def reusable_rows(cached: pd.DataFrame | None, epochs: Sequence[int], layers: Sequence[str]) -> pd.DataFrame:
    """The graph-metric rows of ``cached`` (a ``graph_metrics.csv``) for those ``epochs`` whose rows cover every
    one of ``layers``; turnover, exploration and the weighted spectral gap are left out (they are cheap and always
    recomputed)."""
    if cached is None or cached.empty:
        return pd.DataFrame(columns=["run", "epoch", "layer", "graph", "metric", "value"])
    graph_rows = cached[~cached.metric.isin(["turnover", "exploration", "weighted_spectral_gap"])
                        & cached.layer.isin(layers)]
    covered = graph_rows.groupby("epoch")["layer"].nunique()
    complete = [e for e in covered.index[covered == len(set(layers))] if e in set(epochs)]
    return graph_rows[graph_rows.epoch.isin(complete)]
