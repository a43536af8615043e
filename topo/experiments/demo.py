"""``topo demo``: the whole pipeline in a few minutes on the bundled digits, offline.

Trains a dense, a random fixed sparse and an adaptive sparse MLP (α = 0.1, budget-matched widths), records every
epoch, transplants the adaptive run's final topology into a fresh network (Section 5.1), computes the graph
metrics of the adaptive run's masks over training, and saves Figures 3, 4 and 5, a summary table and the
adaptive run's HTML report (``report.html``, :mod:`topo.report`).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pandas as pd

from topo import plot
from topo.experiments.train import TrainConfig, TrainResult, train
from topo.experiments.transplant import transplant
from topo.graph import metrics_table
from topo.record import RunReader
from topo.report import write_report


def fresh_directory(out: Path) -> Path:
    """``out`` if it is missing or empty, else the first of ``out-2``, ``out-3``, … that is: never a user's runs."""
    candidate, number = out, 1
    while candidate.exists() and any(candidate.iterdir()):
        number += 1
        candidate = out.with_name(f"{out.name}-{number}")
    return candidate


def run_demo(out: str | os.PathLike = "runs/demo", epochs: int = 20, progress: bool = True) -> str:
    """Run the demo into ``out`` (or, when ``out`` holds files already, a fresh ``out-N`` beside it; nothing is
    ever deleted); returns a printable summary naming the directory and files written."""
    out = fresh_directory(Path(out))
    base = TrainConfig(model="mlp", dataset="digits", epochs=epochs, batch_size=32, log_alpha=1.0, k=0.5,
                       adapt_every=2, seed=0)
    results: dict[str, TrainResult] = {}
    for method in ("dense", "random-fixed", "adaptive"):
        config = replace(base, method=method)
        results[method] = train(config, out / config.run_name(), progress=progress)
    adaptive_dir = results["adaptive"].run_dir
    transplant_dir = out / f"{adaptive_dir.name}-transplant"
    results["transplanted"] = transplant(adaptive_dir, transplant_dir, progress=progress)

    histories = pd.concat([r.history.assign(run=name) for name, r in results.items()], ignore_index=True)
    histories["val_error"] = 100 * (1 - histories["val_acc"])
    plot.save(plot.figure3(histories, metric="val_error"), out / "figure3.png")
    stats = pd.concat([RunReader(r.run_dir).stats.assign(run=name) for name, r in results.items()],
                      ignore_index=True)
    plot.save(plot.figure4(stats, layer="3.weight"), out / "figure4.png")
    metrics = metrics_table(RunReader(adaptive_dir), run="adaptive", progress=progress)
    metrics.to_csv(out / "graph_metrics.csv", index=False)
    plot.save(plot.figure5(metrics, hue="layer"), out / "figure5.png")
    write_report([adaptive_dir, results["random-fixed"].run_dir], out / "report.html",
                 title="topo demo: the paper's adaptive rule beside random fixed, MLP on the digits")

    final = histories.groupby("run").last()[["epoch", "val_loss", "val_error"]]
    final.to_csv(out / "summary.csv")
    lines = [f"topo demo: MLP on the bundled digits, α = 0.1, {epochs} epochs", final.to_string(), "",
             f"runs, figures (figure3.png, figure4.png, figure5.png) and report.html in {out}"]
    return "\n".join(lines)
