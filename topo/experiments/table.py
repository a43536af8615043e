"""Table 2-style comparisons: every method at each α (and each k for adaptive), over seeds, mean ± std.

Every model is scored the same way: the epoch is chosen on the validation split held out from training (the
epoch of lowest validation loss, which is also where early stopping looks), and the test split's error in %
(classifiers) or loss (the VAE and the char-LSTM) at that epoch is reported. The test split never selects.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats

from topo.errors import ConfigError
from topo.executors import Job, RayOptions, run_jobs
from topo.experiments.models import get_model_spec
from topo.experiments.train import (
    CHANNELWISE_NEEDS_CONV,
    TRAIN_METHODS,
    TrainConfig,
    TrainResult,
    fresh_run_dir,
    recorded_result,
    train,
)
from topo.record import RunReader

log = logging.getLogger(__name__)


def selected_epoch(history: pd.DataFrame) -> pd.Series:
    """The row of ``history`` at the epoch of lowest validation loss (the first such epoch on ties), among the
    epochs at the method's target density (``at_target``: magnitude pruning's dense epochs before its last pruning
    never count)."""
    if "test_loss" not in history:
        raise ConfigError("run recorded before topo held out a validation split (no test_loss column); "
                          "train it again")
    if "at_target" in history:
        history = history[history["at_target"] > 0]
        if history.empty:
            raise ConfigError("the run never reached its target density (its pruning comes after its last "
                              "epoch); train it longer or prune earlier")
    return history.loc[history["val_loss"].idxmin()]


def score(result: TrainResult, task: str) -> float:
    """Test error (%) for classifiers, else the test loss, at the epoch the validation split selects."""
    row = selected_epoch(result.history)
    return 100.0 * (1.0 - float(row["test_acc"])) if task == "classify" else float(row["test_loss"])


def table2_configs(base: TrainConfig, log_alphas: Sequence[float], ks: Sequence[float],
                   methods: Sequence[str] | None = None) -> list[TrainConfig]:
    """The runs of one Table 2 block (for one seed): the dense baseline, then per α every other method, adaptive
    once per k. ``methods`` defaults to the paper's (random fixed, channel-wise for CNNs, pruning, wide dense,
    adaptive); any of :data:`~topo.experiments.train.TRAIN_METHODS` may be named (``set``, ``rigl``, ``snip``…)."""
    if any(not a > 0 for a in log_alphas):
        raise ConfigError(f"--log-alpha values must be > 0, got {list(log_alphas)}")
    conv = get_model_spec(base.model).convolutional
    if methods is None:
        methods = ["dense", "random-fixed", *(["random-channelwise"] if conv else []), "pruning", "wide-dense",
                   "adaptive"]
    unknown = [m for m in methods if m not in TRAIN_METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; valid: {', '.join(TRAIN_METHODS)}")
    if "random-channelwise" in methods and not conv:
        raise ConfigError(CHANNELWISE_NEEDS_CONV)
    configs = [replace(base, method="dense")] if "dense" in methods else []
    for log_alpha in log_alphas:
        for method in (m for m in methods if m != "dense"):
            if method == "adaptive":
                configs += [replace(base, method="adaptive", log_alpha=log_alpha, k=k) for k in ks]
            else:
                configs.append(replace(base, method=method, log_alpha=log_alpha))
    return configs


def train_job(config: TrainConfig, run_dir: str, progress: bool = False) -> TrainResult:
    """One run of a grid, as an executor job: train ``config`` into ``run_dir``, resuming what is there."""
    return train(config, run_dir, resume=True, progress=progress)


def reproduce_table2(
    base: TrainConfig,
    log_alphas: Sequence[float],
    ks: Sequence[float],
    seeds: int,
    out_dir: str | os.PathLike,
    progress: bool = True,
    fresh_dir: bool = False,
    methods: Sequence[str] | None = None,
    executor: str = "local",
    ray_options: RayOptions | None = None,
) -> pd.DataFrame:
    """Run every configuration for ``seeds`` seeds under ``out_dir``; returns one row per run.

    Columns: model, method, log_alpha, k, seed, label, score, run_dir. Finished runs of the same configuration
    already under ``out_dir`` are reused without being trained again and interrupted ones resumed, so an
    interrupted table continues where it stopped. A directory holding a run of another configuration stops the
    table with the differing fields, or with ``fresh_dir`` the run goes to the first free or matching
    ``NAME-2``, ``NAME-3``, ….

    ``executor="ray"`` trains the runs as Ray tasks (:mod:`topo.executors`; ``ray_options`` sets the cluster and
    each run's resources); the table is the same as the local executor's for the same seeds.
    """
    task = get_model_spec(base.model).task
    planned = []
    for seed in range(seeds):
        for config in table2_configs(replace(base, seed=seed), log_alphas, ks, methods):
            run_dir = Path(out_dir) / config.run_name()
            planned.append((config, fresh_run_dir(run_dir, config) if fresh_dir else run_dir))
    results: dict[int, TrainResult] = {}
    jobs, indices = [], []
    for index, (config, run_dir) in enumerate(planned):
        recorded = recorded_result(config, run_dir)
        if recorded is not None:
            results[index] = recorded
        else:
            jobs.append(Job(run_dir.name, train_job, (config, str(run_dir), progress and executor == "local")))
            indices.append(index)
    if jobs:
        log.info("%d of %d runs to train (%d already finished)", len(jobs), len(planned), len(planned) - len(jobs))
    finished = run_jobs(jobs, executor, ray_options, progress=progress, output_root=out_dir,
                        headline=lambda result: f"{score(result, task):.4g}")
    results.update(zip(indices, finished, strict=True))
    rows = []
    for index, (config, run_dir) in enumerate(planned):
        rows.append({"model": config.model, "method": config.method,
                     "log_alpha": 0.0 if config.method == "dense" else config.log_alpha,
                     "k": config.k if config.method == "adaptive" else float("nan"), "seed": config.seed,
                     "label": method_label(config.method, config.k), "score": score(results[index], task),
                     "run_dir": str(run_dir)})
    return pd.DataFrame(rows)


def method_label(method: str, k: float) -> str:
    """How tables and figures name a method: adaptive runs carry their k (``adaptive k=0.25``)."""
    return f"{method} k={k:g}" if method == "adaptive" else method


def histories(runs: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch validation history of every run in a :func:`reproduce_table2` frame (tidy: one row per epoch).

    Adds ``label`` (method, with k for adaptive) and, for classifiers, ``val_error`` and ``test_error`` in %.
    """
    frames = []
    for run in runs.itertuples():
        stats = RunReader(run.run_dir).stats.groupby("epoch").first().reset_index()
        label = method_label(run.method, run.k)
        columns = ("epoch", "train_loss", "val_loss", "val_acc", "test_loss", "test_acc")
        frame = stats[[c for c in columns if c in stats]].assign(
            method=run.method, log_alpha=run.log_alpha, k=run.k, seed=run.seed, label=label)
        for split in ("val", "test"):
            if f"{split}_acc" in frame:
                frame[f"{split}_error"] = 100.0 * (1.0 - frame[f"{split}_acc"])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean(a) − mean(b), low, high): the difference of two means with its Welch t confidence interval.

    NaN bounds when either sample has fewer than two values (no variance to estimate).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    difference = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return difference, math.nan, math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return difference, difference, difference
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(scipy.stats.t.ppf(0.5 + level / 2, df)) * se
    return difference, difference - half, difference + half


def summarize_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per (method, log_alpha, k), and each method's difference to random fixed at the same
    α with its 95 % Welch confidence interval (``vs_random_fixed``, ``ci_low``, ``ci_high``): a gap is real at
    that level when the interval excludes 0."""
    grouped = runs.groupby(["method", "log_alpha", "k"], dropna=False)["score"]
    table = grouped.agg(["mean", "std", "count"]).reset_index()
    differences = []
    for row in table.itertuples():
        reference = runs[(runs.method == "random-fixed") & (runs.log_alpha == row.log_alpha)]["score"]
        mine = grouped.get_group((row.method, row.log_alpha, row.k))
        differences.append(welch_interval(mine, reference) if len(reference) and row.method != "random-fixed"
                           else (math.nan, math.nan, math.nan))
    table[["vs_random_fixed", "ci_low", "ci_high"]] = differences
    return table.sort_values(["log_alpha", "method", "k"]).reset_index(drop=True)


def to_markdown(table: pd.DataFrame, metric: str) -> str:
    """The summary as a Markdown table (``metric`` names the score column, e.g. "% error")."""
    lines = [f"| method | −log α | k | {metric} (mean ± std) | seeds | − random fixed [95 % CI] |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in table.itertuples():
        k = "" if pd.isna(row.k) else f"{row.k:g}"
        std = 0.0 if pd.isna(row.std) else row.std
        interval = "" if pd.isna(row.ci_low) else f" [{row.ci_low:+.2f}, {row.ci_high:+.2f}]"
        gap = "" if pd.isna(row.vs_random_fixed) else f"{row.vs_random_fixed:+.2f}{interval}"
        lines.append(f"| {row.method} | {row.log_alpha:g} | {k} | {row.mean:.2f} ± {std:.2f} | {row.count} | {gap} |")
    return "\n".join(lines) + "\n"
