"""Is the noise in this folder's scores the batch-norm running statistics? Each run's last-epoch network, evaluated
as recorded and again after its batch-norm statistics are recomputed on training images.

Usage (after the runs of this folder): ``python results/resnet-fashion-mnist/batchnorm.py`` → batchnorm.csv, one row
per run: validation and test error (%) of the last epoch's weights with the running statistics training left
(``*_recorded``, the numbers ``stats.csv`` holds for that epoch) and with statistics recomputed as exact averages over
the first ``--batches`` training minibatches in a fixed order (``*_recomputed``; the weights are not changed). This
is a diagnostic, not the paper's protocol: the paper, like ``table2.csv``, evaluates with the statistics training
left.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from topo.experiments.table import welch_interval
from topo.experiments.train import Session, TrainConfig, evaluate_splits, setup
from topo.record import RunReader
from topo.record.training_state import read_checkpoint

HERE = Path(__file__).resolve().parent


def recompute_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int) -> None:
    """Replace every batch-norm layer's running mean and variance by their exact average over ``images``."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    model.train()
    with torch.no_grad():
        for batch in images.split(batch_size):
            model(batch)
    model.eval()


def errors(session: Session, prefix: str) -> dict[str, float]:
    """Validation and test error (%) of the session's model, as training scores them."""
    metrics = evaluate_splits(session)
    return {f"{split}_{prefix}": 100 * (1 - metrics[f"{split}_acc"]) for split in ("val", "test")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40, help="training minibatches to average over (default 40)")
    args = parser.parse_args()
    rows = []
    for run in pd.read_csv(HERE / "table2_runs.csv").itertuples():
        run_dir = HERE / "runs" / Path(run.run_dir).name
        recorded = RunReader(run_dir).meta["config"]
        session = setup(TrainConfig(**{**recorded["train"], "device": "cpu"}), widths=recorded["widths"])
        session.model.load_state_dict(read_checkpoint(run_dir / "checkpoint.pt")["model"])
        row = {"method": run.method, "seed": run.seed, **errors(session, "recorded")}
        images = session.data.train_x[: args.batches * session.batch_size]
        recompute_batchnorm(session.model, images, session.batch_size)
        rows.append({**row, **errors(session, "recomputed")})
    table = pd.DataFrame(rows)
    table.to_csv(HERE / "batchnorm.csv", index=False)
    print(summarise(table).to_string())


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per method, and each method's test error minus random fixed's with its 95 % Welch
    interval, with the statistics as recorded and as recomputed."""
    rows = []
    for method, runs in table.groupby("method", sort=False):
        row = {"method": method}
        for column in ("val_recorded", "test_recorded", "val_recomputed", "test_recomputed"):
            row[column] = f"{runs[column].mean():.2f} ± {runs[column].std():.2f}"
        for column in ("test_recorded", "test_recomputed"):
            control = table.loc[table.method == "random-fixed", column]
            if method not in ("random-fixed", "dense"):
                difference, low, high = welch_interval(runs[column], control)
                row[f"{column} − random fixed"] = f"{difference:+.2f} [{low:+.2f}, {high:+.2f}]"
        rows.append(row)
    return pd.DataFrame(rows).fillna("").set_index("method")


if __name__ == "__main__":
    main()
