"""Figures 2–5 of the paper as seaborn plots. Every function takes a tidy DataFrame and returns the Figure.

Uses matplotlib's Agg backend unless another was chosen before import, so it works without a display.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from topo.errors import ConfigError  # noqa: E402

#: The four panels of Figure 5: a title and the metrics drawn in it. Square graphs (recurrent gate blocks, the
#: paper's case) use degree Gini and global clustering; bipartite layers, whose transitivity is always 0, their
#: fan-in Gini and Robins–Alexander clustering (see :data:`topo.graph.METRICS`).
FIGURE5_PANELS = {
    "algebraic connectivity": ("algebraic_connectivity",),
    "Gini coefficient of degree (of fan-in for layers)": ("degree_gini", "fan_in_gini"),
    "clustering (Robins–Alexander for layers)": ("global_clustering", "bipartite_clustering"),
    "mean shortest path length": ("mean_shortest_path",),
}
#: Two more panels when the table has them (run directories): mask turnover and exploration per layer.
TOPOLOGY_PANELS = {
    "mask turnover since the previous snapshot": ("turnover",),
    "exploration (fraction ever active)": ("exploration",),
}


def save(fig: plt.Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` atomically (format from the suffix) and close it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        fig.savefig(partial, dpi=dpi)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
        plt.close(fig)
    return path


def _require(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(f"{what} needs columns {columns}; missing {missing}")
    if frame.empty:
        raise ConfigError(f"{what}: the table is empty")


def figure5(metrics: pd.DataFrame, hue: str = "graph") -> plt.Figure:
    """The four graph metrics over epochs (Figure 5), one line per ``hue`` value (LSTM gate or layer, or run).

    Turnover and exploration (run directories) add two panels.

    ``metrics`` is :func:`topo.graph.metrics_table` output (run, epoch, layer, graph, metric, value). Several runs
    (seeds) with the same ``hue`` values are drawn as their mean with a ±1 std band. Where the table holds a null
    model's baseline (``<metric>_null_mean`` and ``_null_std`` rows, ``metrics_table(..., null=...)``), the null
    mean ± 2 std is drawn as a band of the line's colour behind it.
    """
    _require(metrics, ["epoch", "metric", "value", hue], "figure5")
    panels = dict(FIGURE5_PANELS)
    panels.update({title: names for title, names in TOPOLOGY_PANELS.items() if metrics["metric"].isin(names).any()})
    columns = -(-len(panels) // 2)
    fig, axes = plt.subplots(2, columns, figsize=(5 * columns, 7), sharex=True, squeeze=False)
    for ax in list(axes.T.flat)[len(panels):]:
        ax.set_axis_off()
    hues = list(dict.fromkeys(metrics[hue]))
    palette = dict(zip(hues, sns.color_palette(n_colors=len(hues)), strict=True))
    for ax, (title, names) in zip(axes.T.flat, panels.items(), strict=False):
        for name in names:
            null_band(ax, metrics, name, hue, palette)
        sns.lineplot(data=metrics[metrics["metric"].isin(names)], x="epoch", y="value", hue=hue, errorbar="sd",
                     ax=ax, legend=ax is axes.flat[0], palette=palette)
        ax.set_title(title)
        ax.set_ylabel("")
    fig.suptitle("Graph metrics of the learned masks over training (cf. Figure 5)")
    fig.tight_layout()
    return fig


#: The values each metric can take: bands are clipped to them.
METRIC_RANGES = {"algebraic_connectivity": (0.0, None), "degree_gini": (0.0, 1.0), "fan_in_gini": (0.0, 1.0),
                 "fan_out_gini": (0.0, 1.0), "global_clustering": (0.0, 1.0), "bipartite_clustering": (0.0, 1.0),
                 "mean_shortest_path": (1.0, None), "turnover": (0.0, 1.0), "exploration": (0.0, 1.0),
                 "spectral_gap": (0.0, None)}


def null_band(ax: plt.Axes, metrics: pd.DataFrame, metric: str, hue: str, palette: dict) -> None:
    """Draw the null model's mean ± 2 std of ``metric`` per ``hue`` value behind the lines, where the table has it
    (averaged over the runs that share a ``hue`` value), clipped to the values the metric can take."""
    rows = metrics[metrics["metric"].isin([f"{metric}_null_mean", f"{metric}_null_std"])]
    if rows.empty:
        return
    wide = rows.pivot_table(index=[hue, "epoch"], columns="metric", values="value").reset_index()
    for value, band in wide.groupby(hue, sort=False):
        mean, std = band[f"{metric}_null_mean"], band.get(f"{metric}_null_std", 0.0)
        low, high = METRIC_RANGES.get(metric, (None, None))
        ax.fill_between(band["epoch"], (mean - 2 * std).clip(lower=low), (mean + 2 * std).clip(upper=high),
                        color=palette.get(value, "grey"), alpha=0.15, linewidth=0, label="_null")


def figure4(stats: pd.DataFrame, layer: str | None = None, fraction: float = 0.1, hue: str = "run") -> plt.Figure:
    """Number of low-strength weights (|w| below ``fraction`` × layer mean) over epochs (Figure 4).

    ``stats`` is ``stats.csv`` of one or more runs with a ``run`` column; ``layer`` defaults to the first.
    """
    column = f"low_{fraction:g}"
    _require(stats, ["epoch", "layer", column, hue], "figure4")
    layer = layer or stats["layer"].iloc[0]
    data = stats[stats["layer"] == layer]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.lineplot(data=data, x="epoch", y=column, hue=hue, errorbar="sd", ax=ax)
    ax.set_ylabel(f"weights with |w| < {fraction:g} × mean")
    ax.set_title(f"Low-strength weights in {layer} (cf. Figure 4)")
    fig.tight_layout()
    return fig


def figure3(histories: pd.DataFrame, metric: str = "val_loss", hue: str = "run") -> plt.Figure:
    """Validation curves of adaptive, transplanted-topology and random fixed runs (Figure 3)."""
    _require(histories, ["epoch", metric, hue], "figure3")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.lineplot(data=histories, x="epoch", y=metric, hue=hue, errorbar="sd", ax=ax)
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title("Adaptive vs transplanted topology vs random fixed (cf. Figure 3)")
    fig.tight_layout()
    return fig


def figure2(runs: pd.DataFrame, metric_label: str = "validation error (%)") -> plt.Figure:
    """Table 2 as bars: score per method for each −log α, mean ± std over seeds (cf. Figure 2).

    Bars are coloured by the ``label`` column where there is one (adaptive runs of different k apart), else by
    ``method``.
    """
    _require(runs, ["method", "log_alpha", "score"], "figure2")
    hue = "label" if "label" in runs else "method"
    names = {a: "1 (dense)" if a == 0 else f"$10^{{-{a:g}}}$" for a in sorted(runs["log_alpha"].unique())}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    sns.barplot(data=runs.assign(density=runs["log_alpha"].map(names)), x="density", y="score", hue=hue,
                order=list(names.values()), errorbar="sd", ax=ax)
    ax.set_xlabel("density α of the sparse layers (dense baseline: 1)")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1, 1), title="method", frameon=False)
    ax.set_ylabel(metric_label)
    fig.tight_layout()
    return fig


def table2_curves(histories: pd.DataFrame, metric: str = "val_error") -> plt.Figure:
    """Validation curves behind a Table 2 block: one panel per −log α, one line per method (mean ± std over seeds).

    ``histories`` is :func:`topo.experiments.table.histories` output (a ``label`` column names method and k);
    the dense baseline (−log α = 0) is drawn in every panel as the reference.
    """
    _require(histories, ["epoch", "log_alpha", "label", metric], "table2_curves")
    dense = histories[histories["log_alpha"] == 0]
    alphas = sorted(a for a in histories["log_alpha"].unique() if a > 0) or [0.0]
    panels = pd.concat([pd.concat([histories[histories["log_alpha"] == a], dense.assign(log_alpha=a)])
                        for a in alphas]) if alphas != [0.0] else histories
    grid = sns.relplot(data=panels, x="epoch", y=metric, hue="label", col="log_alpha", kind="line", errorbar="sd",
                       height=4, aspect=1.1, facet_kws={"sharey": True})
    grid.set_titles("−log₁₀ α = {col_name}")
    grid.legend.set_title("method")
    grid.set_ylabels(metric.replace("_", " ") + (" (%)" if metric == "val_error" else ""))
    return grid.figure


def layer_figure(table: pd.DataFrame, degrees: pd.DataFrame) -> plt.Figure:
    """A checkpoint at a glance: degree distributions per layer, and the metrics by depth.

    ``table`` is :class:`topo.analyze.CheckpointAnalysis` ``.table`` (one row per graph, in model order);
    ``degrees`` a tidy frame with columns graph, side (``fan-in`` / ``fan-out`` for bipartite graphs,
    ``degree`` for square ones) and degree.
    """
    _require(table, ["graph", "kind"], "layer_figure")
    _require(degrees, ["graph", "side", "degree"], "layer_figure")
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    for ax, side in zip(axes[0], ("fan-in", "fan-out", "degree"), strict=True):
        data = degrees[degrees["side"] == side]
        if data.empty:
            ax.set_axis_off()
            continue
        sns.histplot(data=data, x="degree", hue="graph", element="step", fill=False, stat="density",
                     common_norm=False, ax=ax, legend=len(data["graph"].unique()) <= 12)
        ax.set_title(f"{side} distribution per graph")
    depth = table.reset_index(drop=True).assign(depth=lambda t: range(len(t)))
    panels = {"algebraic connectivity": ("algebraic_connectivity",),
              "Gini (fan-in for layers)": ("degree_gini", "fan_in_gini"),
              "clustering (Robins–Alexander for layers)": ("global_clustering", "bipartite_clustering")}
    for ax, (title, names) in zip(axes[1], panels.items(), strict=True):
        columns = [c for c in names if c in depth]
        values = depth[columns].bfill(axis=1).iloc[:, 0] if columns else pd.Series(dtype=float)
        sns.lineplot(x=depth["depth"], y=values, hue=depth["kind"], marker="o", ax=ax)
        ax.set_title(f"{title} by depth")
        ax.set_xlabel("graph, in model order")
        ax.set_ylabel("")
    fig.tight_layout()
    return fig


def degree_figure(degrees: pd.DataFrame, layers: list[str] | None = None) -> plt.Figure:
    """Fan-in and fan-out distributions of each layer at the first and last recorded epoch, with the Binomial
    distribution of a uniformly random mask of the same density (dashed) for comparison.

    ``degrees`` is :func:`topo.graph.compare.degree_distributions` output.
    """
    from scipy.stats import binom

    _require(degrees, ["epoch", "layer", "side", "degree", "count", "n", "density"], "degree_figure")
    layers = layers or list(dict.fromkeys(degrees["layer"]))[:4]
    epochs = [degrees["epoch"].min(), degrees["epoch"].max()]
    fig, axes = plt.subplots(2, len(layers), figsize=(4 * len(layers), 6.5), squeeze=False)
    for column, layer in enumerate(layers):
        for row, side in enumerate(("in", "out")):
            ax = axes[row][column]
            data = degrees[(degrees["layer"] == layer) & (degrees["side"] == side)]
            for epoch in dict.fromkeys(epochs):
                at = data[data["epoch"] == epoch]
                if at.empty:
                    continue
                ax.step(at["degree"], at["count"] / at["count"].sum(), where="mid", label=f"epoch {epoch}")
            last = data[data["epoch"] == epochs[-1]]
            if not last.empty:
                n, p = int(last["n"].iloc[0]), float(last["density"].iloc[0])
                support = range(int(data["degree"].min()), int(data["degree"].max()) + 1)
                ax.plot(list(support), binom.pmf(list(support), n, p), "k--", linewidth=1, label="Binomial (random)")
            ax.set_title(f"{layer}: fan-{side}")
            ax.set_xlabel("degree")
            ax.set_ylabel("fraction of neurons")
    axes[0][0].legend(frameon=False)
    fig.tight_layout()
    return fig
