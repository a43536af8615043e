"""Topology of the pruning row's masks: final masks per head and projection against null models, and Figure 5
over training for the sparse-from-scratch methods.

Usage (after ``topo reproduce pruning`` has filled ``runs/``): ``python results/gpt-shakespeare/study.py``.
Writes ``topology/<method>-s<seed>.csv.gz`` (one row per graph and null), ``topology.md`` (the table the README shows),
``figure5-<method>.png``, ``figure5.csv.gz`` and ``topology.png``. Finished parts are read back from their CSV files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from topo.analyze import analyze_checkpoint, analyze_run
from topo.plot import figure5, save

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
HEADS = 4
TRAINED = {"random-fixed": "gpt-random-fixed-la0.30103-same", "adaptive": "gpt-adaptive-la0.30103-k0.25-same",
           "set": "gpt-set-la0.30103-same", "rigl": "gpt-rigl-la0.30103-same", "srigl": "gpt-srigl-la0.30103-same"}
ONESHOT = {f"{pruner} {target}": f"gpt-oneshot-{pruner}-{target.replace(':', 'of')}"
           for pruner in ("magnitude", "wanda", "sparsegpt") for target in ("d0.5", "2:4")}
#: What the table reports: the metric, and the null it is measured against.
MEASURES = [("fan_in_gini", None), ("fan_out_gini", None), ("fan_out_gini", "er"),
            ("ramanujan_gap", "er"), ("ramanujan_gap", "degree"), ("bipartite_clustering", "er"),
            ("bipartite_clustering", "degree"), ("algebraic_connectivity", "er")]


def final_topology(methods: list[str], seeds: list[int], samples: int) -> pd.DataFrame:
    """Every graph of each method's final mask (heads split) against the er and degree nulls, and the nm null for
    2:4 arms; one CSV per method and seed under ``topology/``, read back when it is there."""
    folder = HERE / "topology"
    folder.mkdir(exist_ok=True)
    frames = []
    for method in methods:
        prefix = {**TRAINED, **ONESHOT}[method]
        for seed in seeds:
            cached = folder / f"{method.replace(' ', '-').replace(':', 'of')}-s{seed}.csv.gz"
            if not cached.exists():
                checkpoint = RUNS / f"{prefix}-s{seed}" / "checkpoint.pt"
                nulls = ["er", "degree"] + (["nm"] if method.endswith("2:4") else [])
                tables = [analyze_checkpoint(checkpoint, heads=True, num_heads=HEADS, null=null,
                                             null_samples=samples, progress=False).table.assign(null=null)
                          for null in nulls]
                pd.concat(tables, ignore_index=True).assign(method=method, seed=seed).to_csv(cached, index=False)
            frames.append(pd.read_csv(cached))
    return pd.concat(frames, ignore_index=True)


def projection(graph: str) -> str:
    """``q``, ``k``, ``v``, ``o`` (per head) or ``gate``/``up``/``down`` from a graph's name."""
    for part in ("q", "k", "v", "o"):
        if f"{part}_proj" in graph:
            return part
    return next(part for part in ("gate", "up", "down") if f"{part}_proj" in graph)


def summary(topology: pd.DataFrame) -> pd.DataFrame:
    """Per method: the mean over graphs and seeds of each measure (a z-score where a null is named), and the
    share of graphs beyond |z| > 3 against the er null on any of fan-out Gini, Ramanujan gap and clustering."""
    rows = []
    for method, group in topology.groupby("method", sort=False):
        row: dict[str, object] = {"method": method}
        for metric, null in MEASURES:
            if null is None:
                row[metric] = group[group.null == "er"][metric].mean()
            else:
                row[f"{metric} z ({null})"] = group[group.null == null][f"{metric}_z"].mean()
        er = group[group.null == "er"]
        beyond = (er[["fan_out_gini_z", "ramanujan_gap_z", "bipartite_clustering_z"]].abs() > 3).any(axis=1)
        row["graphs beyond |z|>3 (er)"] = beyond.mean()
        if (group.null == "nm").any():
            nm = group[group.null == "nm"]
            row["ramanujan_gap z (nm)"] = nm["ramanujan_gap_z"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    """``table`` as a Markdown table, numbers to three significant digits."""
    cells = [[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"


def topology_figure(topology: pd.DataFrame) -> plt.Figure:
    """z-scores against the er null per projection type, one panel per measure, methods on the x axis."""
    er = topology[topology.null == "er"].assign(projection=lambda t: t.graph.map(projection))
    long = er.melt(id_vars=["method", "projection"], value_vars=["fan_out_gini_z", "ramanujan_gap_z",
                                                                 "bipartite_clustering_z"],
                   var_name="measure", value_name="z")
    grid = sns.catplot(long, x="method", y="z", hue="projection", col="measure", kind="point", sharey=False,
                       dodge=0.5, linestyle="none", errorbar=("pi", 100), height=3.6, aspect=1.5)
    for ax in grid.axes.flat:
        ax.axhline(0, color="0.6", lw=0.8)
        ax.tick_params(axis="x", rotation=60)
    grid.figure.suptitle("final masks against random graphs of the same shape and edge count (er null)", y=1.02)
    return grid.figure


def training_figures() -> pd.DataFrame:
    """Figure 5 of every sparse-from-scratch method's seed-0 run, for the layers of the second block."""
    frames = []
    for method, prefix in TRAINED.items():
        table = analyze_run(RUNS / f"{prefix}-s0", progress=False).assign(run=method)
        save(figure5(table, layer="model.layers.1.*", title=f"{method}: block 1 over training"),
             HERE / f"figure5-{method}.png")
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=[*TRAINED, *ONESHOT], choices=[*TRAINED, *ONESHOT])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--null-samples", type=int, default=20)
    parser.add_argument("--no-figure5", action="store_true", help="only the final masks' topology")
    args = parser.parse_args()
    topology = final_topology(args.methods, args.seeds, args.null_samples)
    table = summary(topology)
    (HERE / "topology.md").write_text(markdown(table))
    save(topology_figure(topology), HERE / "topology.png")
    if not args.no_figure5:
        training_figures().to_csv(HERE / "figure5.csv.gz", index=False)
    print(markdown(table))


if __name__ == "__main__":
    main()
