"""Table 2-style comparisons: every method at each α (and each k for adaptive), over seeds, mean ± std.

The reported number is the last epoch's validation error in % for classifiers, the validation loss for the VAE
and the char-LSTM (as in Table 2; for the LSTM with early stopping, the best epoch's loss).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd

from topo.errors import ConfigError
from topo.experiments.models import get_model_spec
from topo.experiments.train import TrainConfig, TrainResult, train
from topo.record import RunReader


def score(result: TrainResult, task: str) -> float:
    """Validation error (%) for classifiers; otherwise the best validation loss."""
    if task == "classify":
        return 100.0 * (1.0 - float(result.history["val_acc"].iloc[-1]))
    return float(result.history["val_loss"].min())


def table2_configs(base: TrainConfig, log_alphas: Sequence[float], ks: Sequence[float]) -> list[TrainConfig]:
    """The runs of one Table 2 block (for one seed): baseline, then per α the controls and adaptive per k."""
    if any(not a > 0 for a in log_alphas):
        raise ConfigError(f"--log-alpha values must be > 0, got {list(log_alphas)}")
    conv = get_model_spec(base.model).convolutional
    configs = [replace(base, method="dense")]
    for log_alpha in log_alphas:
        methods = ["random-fixed", *(["random-channelwise"] if conv else []), "pruning", "wide-dense"]
        configs += [replace(base, method=m, log_alpha=log_alpha) for m in methods]
        configs += [replace(base, method="adaptive", log_alpha=log_alpha, k=k) for k in ks]
    return configs


def reproduce_table2(
    base: TrainConfig,
    log_alphas: Sequence[float],
    ks: Sequence[float],
    seeds: int,
    out_dir: str | os.PathLike,
    progress: bool = True,
) -> pd.DataFrame:
    """Run every configuration for ``seeds`` seeds under ``out_dir``; returns one row per run.

    Columns: model, method, log_alpha, k, seed, score, run_dir. Finished runs already under ``out_dir`` are
    reused and interrupted ones resumed, so an interrupted table continues where it stopped.
    """
    task = get_model_spec(base.model).task
    rows = []
    for seed in range(seeds):
        for config in table2_configs(replace(base, seed=seed), log_alphas, ks):
            run_dir = Path(out_dir) / config.run_name()
            result = train(config, run_dir, resume=True, progress=progress)
            rows.append({"model": config.model, "method": config.method,
                         "log_alpha": 0.0 if config.method == "dense" else config.log_alpha,
                         "k": config.k if config.method == "adaptive" else float("nan"), "seed": seed,
                         "label": method_label(config.method, config.k), "score": score(result, task),
                         "run_dir": str(run_dir)})
    return pd.DataFrame(rows)


def method_label(method: str, k: float) -> str:
    """How tables and figures name a method: adaptive runs carry their k (``adaptive k=0.25``)."""
    return f"{method} k={k:g}" if method == "adaptive" else method


def histories(runs: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch validation history of every run in a :func:`reproduce_table2` frame (tidy: one row per epoch).

    Adds ``label`` (method, with k for adaptive) and, for classifiers, ``val_error`` in %.
    """
    frames = []
    for run in runs.itertuples():
        stats = RunReader(run.run_dir).stats.groupby("epoch").first().reset_index()
        label = method_label(run.method, run.k)
        frame = stats[[c for c in ("epoch", "train_loss", "val_loss", "val_acc") if c in stats]].assign(
            method=run.method, log_alpha=run.log_alpha, k=run.k, seed=run.seed, label=label)
        if "val_acc" in frame:
            frame["val_error"] = 100.0 * (1.0 - frame["val_acc"])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def summarize_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per (method, log_alpha, k)."""
    grouped = runs.groupby(["method", "log_alpha", "k"], dropna=False)["score"]
    table = grouped.agg(["mean", "std", "count"]).reset_index()
    return table.sort_values(["log_alpha", "method", "k"]).reset_index(drop=True)


def to_markdown(table: pd.DataFrame, metric: str) -> str:
    """The summary as a Markdown table (``metric`` names the score column, e.g. "% error")."""
    lines = [f"| method | −log α | k | {metric} (mean ± std) | seeds |", "| --- | --- | --- | --- | --- |"]
    for row in table.itertuples():
        k = "" if pd.isna(row.k) else f"{row.k:g}"
        std = 0.0 if pd.isna(row.std) else row.std
        lines.append(f"| {row.method} | {row.log_alpha:g} | {k} | {row.mean:.2f} ± {std:.2f} | {row.count} |")
    return "\n".join(lines) + "\n"
