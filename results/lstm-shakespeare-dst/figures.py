"""Figure 5 of each method's run on the hidden-to-hidden gate graphs, graph_metrics.csv, and the epoch 0 → last table.

Usage (after the runs of this folder): ``python results/lstm-shakespeare-dst/figures.py``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from topo.analyze import analyze_run
from topo.plot import figure5, save

HERE = Path(__file__).resolve().parent
RUNS = {"adaptive": "adaptive-la0.5-k0.5", "rigl": "rigl-la0.5", "set": "set-la0.5",
        "random-fixed": "random-fixed-la0.5"}
GATES = "ifgo"


def summary(table: pd.DataFrame) -> dict[str, str]:
    """First → last epoch of each Figure 5 metric per gate, as the README's table shows them."""
    first, last = table["epoch"].min(), table["epoch"].max()

    def per_gate(metric: str, epoch: int) -> list[float]:
        rows = table[(table["metric"] == metric) & (table["epoch"] == epoch)].set_index("graph")["value"]
        return [rows[f"lstm.weight_hh_l0[{g}]"] for g in GATES]

    def ratio(epoch: int) -> list[float]:
        return [c / d for c, d in zip(per_gate("global_clustering", epoch), per_gate("density", epoch), strict=True)]

    def pairs(a: list[float], b: list[float], digits: int) -> str:
        return ", ".join(f"{x:.{digits}f}→{y:.{digits}f}" for x, y in zip(a, b, strict=True))

    explored = table[table["metric"] == "exploration"].set_index("epoch")["value"]
    return {"algebraic connectivity": pairs(per_gate("algebraic_connectivity", first),
                                            per_gate("algebraic_connectivity", last), 0),
            "degree Gini": pairs(per_gate("degree_gini", first), per_gate("degree_gini", last), 2),
            "clustering / edge density": pairs(ratio(first), ratio(last), 2),
            "mean shortest path": pairs(per_gate("mean_shortest_path", first), per_gate("mean_shortest_path", last), 2),
            "edge density": pairs(per_gate("density", first), per_gate("density", last), 2),
            "exploration": f"{explored[first]:.2f}→{explored[last]:.2f}"}


def main() -> None:
    tables, rows = [], []
    for method, run in RUNS.items():
        table = analyze_run(HERE / "runs" / f"lstm-{run}-s0", layers="lstm.weight_hh*", progress=False)
        save(figure5(table), HERE / f"figure5-{method}.png")
        tables.append(table)
        rows.append({"method": method, **summary(table)})
    pd.concat(tables, ignore_index=True).to_csv(HERE / "graph_metrics.csv", index=False)
    print("| " + " | ".join(rows[0]) + " |")
    for row in rows:
        print("| " + " | ".join(row.values()) + " |")


if __name__ == "__main__":
    main()
