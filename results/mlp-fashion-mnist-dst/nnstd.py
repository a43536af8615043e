"""NNSTD (Liu et al. 2020) between each method's seed-0 network and each method's seed-1 network at the last epoch.

Usage (after the runs of this folder): ``python results/mlp-fashion-mnist-dst/nnstd.py`` → nnstd.csv, one row per
(a, b, layer) with the NNSTD and the mean and std of independent random masks of the same per-layer counts, the
same numbers as ``topo compare RUN_A RUN_B --json`` gives for one pair.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from topo.graph.compare import nnstd, nnstd_random
from topo.record import RunReader

HERE = Path(__file__).resolve().parent
METHODS = {"adaptive": "adaptive-la1-k0.25", "set": "set-la1", "rigl": "rigl-la1", "snip": "snip-la1",
           "pruning": "pruning-la1", "random-fixed": "random-fixed-la1"}


def last_masks(name: str, seed: int) -> dict:
    reader = RunReader(HERE / "runs" / f"mlp-{name}-s{seed}")
    return reader.masks(reader.epochs[-1])


def main() -> None:
    rows = []
    seed_1 = {b: last_masks(run_b, 1) for b, run_b in METHODS.items()}
    for a, run_a in METHODS.items():
        first = last_masks(run_a, 0)
        for b, second in seed_1.items():
            names = [n for n in first if n in second]
            layers_a, layers_b = [first[n] for n in names], [second[n] for n in names]
            mean, std = nnstd_random(layers_a, layers_b, 20)
            for name, distance, random_mean, random_std in zip(names, nnstd(layers_a, layers_b), mean, std,
                                                                strict=True):
                rows.append({"a (seed 0)": a, "b (seed 1)": b, "layer": name, "nnstd": distance,
                             "nnstd_random": random_mean, "nnstd_random_std": random_std})
    table = pd.DataFrame(rows)
    table.to_csv(HERE / "nnstd.csv", index=False)
    means = table.groupby(["a (seed 0)", "b (seed 1)"], sort=False)[["nnstd", "nnstd_random"]].mean()
    print(means.unstack().round(2).to_string())


if __name__ == "__main__":
    main()
