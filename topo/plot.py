"""Figures 2–5 of the paper as seaborn plots. Every function takes a tidy DataFrame and returns the Figure.

Uses matplotlib's Agg backend unless another was chosen before import, so it works without a display. Names in
the data (runs, layers, graphs, methods) and titles are drawn as written: matplotlib would read a ``$…$`` in a
name as mathematics (and fail on one it cannot parse), so every figure escapes the dollar signs it is given
(:func:`literal`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from topo.errors import ConfigError, OutputError  # noqa: E402

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


def literal(value: Any) -> Any:
    """``value`` as matplotlib should draw it verbatim: a string's ``$`` escaped (``\\$``, which matplotlib draws as
    ``$`` and never reads as mathematics), the strings of a list or a DataFrame so escaped; anything else as it
    is."""
    if isinstance(value, str):
        return value.replace("$", r"\$")
    if isinstance(value, (list, tuple)):
        return type(value)(literal(item) for item in value)
    if isinstance(value, pd.DataFrame):
        frame = value
        for column in value.columns:
            if value[column].dtype == object or pd.api.types.is_string_dtype(value[column]):
                escaped = value[column].map(literal)
                if not escaped.equals(value[column]):
                    frame = frame.assign(**{column: escaped}) if isinstance(column, str) else frame
        return frame
    return value


Figure = TypeVar("Figure", bound=Callable[..., Any])


def _drawn_literally(function: Figure) -> Figure:
    """Every DataFrame and string argument of a figure function passed through :func:`literal`."""

    @functools.wraps(function)
    def draw(*args: Any, **kwargs: Any) -> Any:
        return function(*map(literal, args), **{key: literal(value) for key, value in kwargs.items()})

    return draw  # type: ignore[return-value]


def save(fig: plt.Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` atomically (format from the suffix) and close it; returns the path. The folder
    must exist (no folder is created for a mistyped path)."""
    path = Path(path)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        fig.savefig(partial, dpi=dpi, bbox_inches="tight")  # legends outside the axes stay in the image
        partial.replace(path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot be written ({exc.strerror or exc})") from None
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


def _clip(metric: str, values: pd.Series) -> pd.Series:
    low, high = METRIC_RANGES.get(metric, (None, None))
    return values.clip(lower=low, upper=high)


@_drawn_literally
def figure5(metrics: pd.DataFrame, hue: str | None = None, *, layer: str | None = None,
            title: str | None = None) -> plt.Figure:
    """The graph metrics over epochs (Figure 5): one line per graph of one run, or per run and graph of several.

    ``metrics`` is :func:`topo.graph.metrics_table` output (run, epoch, layer, graph, metric, value). Nothing is
    averaged that should not be: a line is one graph of one run; rows that share a line's label (runs that differ
    only in their seed, which the caller gave one name) are drawn as their mean with a ±1 std band, clipped to
    the values the metric can take. ``hue`` names what the lines are
    (default: ``graph`` for one run, ``run · graph`` for several); ``layer`` is a glob choosing graphs
    (``"lstm.weight_hh*"``). Turnover and exploration (run directories) add two panels, and a null model's
    mean ± 2 std (``<metric>_null_mean``/``_std`` rows) is drawn as a band behind each line. The legend sits
    outside the axes and the title names the runs.
    """
    import fnmatch

    _require(metrics, ["epoch", "metric", "value"], "figure5")
    if layer is not None:  # a glob, or a graph's exact name (whose brackets a glob would read as a class)
        chosen = metrics["graph"].astype(str).eq(layer) | metrics["layer"].astype(str).eq(layer)
        chosen |= metrics["graph"].map(lambda g: fnmatch.fnmatchcase(str(g), layer))
        chosen |= metrics["layer"].map(lambda g: fnmatch.fnmatchcase(str(g), layer))
        metrics = metrics[chosen]
        if metrics.empty:
            raise ConfigError(f"figure5: no graph matches --layer {layer!r}")
    runs = list(dict.fromkeys(metrics["run"])) if "run" in metrics else [""]
    if hue is None:
        hue = "line"
        label = metrics["graph"].astype(str) if len(runs) == 1 else \
            metrics["run"].astype(str) + " · " + metrics["graph"].astype(str)
        metrics = metrics.assign(line=label)
    _require(metrics, [hue], "figure5")
    panels = dict(FIGURE5_PANELS)
    panels.update({name: names for name, names in TOPOLOGY_PANELS.items() if metrics["metric"].isin(names).any()})
    columns = -(-len(panels) // 2)
    fig, axes = plt.subplots(2, columns, figsize=(5 * columns + 3, 7), sharex=True, squeeze=False)
    for ax in list(axes.T.flat)[len(panels):]:
        ax.set_axis_off()
    lines = list(dict.fromkeys(metrics[hue]))
    palette = dict(zip(lines, sns.color_palette("husl" if len(lines) > 10 else None, n_colors=len(lines)),
                       strict=True))
    for ax, (panel, names) in zip(axes.T.flat, panels.items(), strict=False):
        for name in names:
            null_band(ax, metrics, name, hue, palette)
            rows = metrics[metrics["metric"] == name]
            for line, data in rows.groupby(hue, sort=False):
                stats = data.groupby("epoch")["value"].agg(["mean", "std", "count"]).reset_index()
                ax.plot(stats["epoch"], stats["mean"], color=palette[line], label=str(line), linewidth=1.4)
                spread = stats["count"] > 1
                if spread.any():
                    low = _clip(name, stats["mean"] - stats["std"].fillna(0))
                    high = _clip(name, stats["mean"] + stats["std"].fillna(0))
                    ax.fill_between(stats["epoch"], low, high, color=palette[line], alpha=0.2, linewidth=0,
                                    label="_sd")
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("epoch" if ax in axes[-1] else "")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes.flat[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    if unique:
        fig.legend(unique.values(), unique.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                   fontsize=8, title=hue if hue != "line" else ("graph" if len(runs) == 1 else "run · graph"))
    named = title or ("Graph metrics over training (cf. Figure 5): "
                      + (runs[0] if len(runs) == 1 else f"{len(runs)} runs"))
    fig.suptitle(named)
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


@_drawn_literally
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
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"Low-strength weights in {layer} (cf. Figure 4)")
    fig.tight_layout()
    return fig


@_drawn_literally
def figure3(histories: pd.DataFrame, metric: str = "val_loss", hue: str = "run") -> plt.Figure:
    """Validation curves of adaptive, transplanted-topology and random fixed runs (Figure 3)."""
    _require(histories, ["epoch", metric, hue], "figure3")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.lineplot(data=histories, x="epoch", y=metric, hue=hue, errorbar="sd", ax=ax)
    ax.set_ylabel(metric.replace("_", " "))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Adaptive vs transplanted topology vs random fixed (cf. Figure 3)")
    fig.tight_layout()
    return fig


@_drawn_literally
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


@_drawn_literally
def pruning_row_figure(runs: pd.DataFrame, metric_label: str = "test loss") -> plt.Figure:
    """The one-shot pruning row (:func:`topo.experiments.pruning_row.reproduce_pruning_row`): score per arm, one
    colour per stage (trained, as pruned, fine-tuned, transplant), mean ± std over seeds; random fixed trained
    from scratch is the dashed reference line."""
    _require(runs, ["arm", "stage", "score"], "pruning_row_figure")
    fig, ax = plt.subplots(figsize=(9, 4.5))
    sns.pointplot(data=runs, x="arm", y="score", hue="stage", order=list(dict.fromkeys(runs["arm"])),
                  errorbar="sd", linestyle="none", dodge=0.4, ax=ax)
    reference = runs[(runs["arm"] == "random-fixed") & (runs["stage"] == "trained")]["score"]
    if len(reference):
        ax.axhline(float(reference.mean()), color="grey", linestyle="--", linewidth=1, label="random fixed")
    ax.tick_params(axis="x", rotation=45)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")
    ax.set_xlabel("")
    ax.set_ylabel(metric_label)
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1, 1), title="stage", frameon=False)
    fig.tight_layout()
    return fig


@_drawn_literally
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


#: Up to this many graphs share one panel (overlaid, with a legend); beyond it each gets a small panel of its own.
OVERLAID_GRAPHS = 12
DEPTH_PANELS = {"algebraic connectivity": ("algebraic_connectivity",),
                "Gini of degree (fan-in for layers)": ("degree_gini", "fan_in_gini"),
                "clustering (Robins–Alexander for layers)": ("global_clustering", "bipartite_clustering")}


@_drawn_literally
def layer_figure(table: pd.DataFrame, degrees: pd.DataFrame, title: str = "") -> plt.Figure:
    """A checkpoint at a glance: degree distributions per graph, and the metrics by depth with graph names.

    ``table`` is :class:`topo.analyze.CheckpointAnalysis` ``.table`` (one row per graph, in model order);
    ``degrees`` a tidy frame with columns graph, side (``fan-in`` / ``fan-out`` for bipartite graphs, ``degree``
    for square ones) and degree; ``title`` names the checkpoint (and backbone). Up to
    :data:`OVERLAID_GRAPHS` graphs share each degree panel, with the legend outside; more become small multiples,
    one per graph, grouped by kind. When every layer is dense a note replaces the degree panels (their graphs are
    complete: every node has the same degree).
    """
    from matplotlib.gridspec import GridSpec

    _require(table, ["graph", "kind"], "layer_figure")
    _require(degrees, ["graph", "side", "degree"], "layer_figure")
    graphs = list(dict.fromkeys(table["graph"]))
    kinds = dict(zip(table["graph"], table["kind"], strict=False))
    prefix = _common_prefix(graphs)
    dense = "mask_density" in table and bool((table["mask_density"] >= 1.0).all())
    many = len(graphs) > OVERLAID_GRAPHS and not dense
    order = sorted(graphs, key=lambda g: (kinds[g], graphs.index(g)))
    columns = 6
    rows_top = -(-len(order) // columns) if many else 1
    fig = plt.figure(figsize=(16, 4.2 + 1.8 * rows_top + (0 if many else 2.2)))
    grid = GridSpec(rows_top + 1, columns if many else 3, figure=fig,
                    height_ratios=[1.2 if many else 2.2] * rows_top + [3.2])
    if dense:
        ax = fig.add_subplot(grid[0, :])
        ax.set_axis_off()
        ax.text(0.5, 0.5, "Every analysed layer is dense: its graph is complete and every node has the same degree, "
                "so there is no degree distribution to draw.\nAnalyse a backbone (--backbone magnitude:0.1) to see "
                "the structure of the weights.", ha="center", va="center", fontsize=11, wrap=True)
    elif many:
        for index, graph in enumerate(order):
            ax = fig.add_subplot(grid[index // columns, index % columns])
            for side, data in degrees[degrees["graph"] == graph].groupby("side", sort=False):
                ax.hist(data["degree"], bins=20, histtype="step", density=True, label=side)
            ax.set_title(_short(graph[len(prefix):], 30), fontsize=6)
            ax.tick_params(labelsize=6)
        fig.axes[0].legend(fontsize=6, frameon=False)
        fig.text(0.5, 1.0, "degree distributions, one panel per graph, grouped by kind: "
                 + ", ".join(dict.fromkeys(kinds[g] for g in order)), ha="center", va="bottom", fontsize=9)
    else:
        sides = [side for side in ("fan-in", "fan-out", "degree") if (degrees["side"] == side).any()]
        for column, side in enumerate(sides[:3]):
            ax = fig.add_subplot(grid[0, column])
            data = degrees[degrees["side"] == side]
            for graph, values in data.groupby("graph", sort=False):
                ax.hist(values["degree"], bins=30, histtype="step", density=True,
                        label=_short(str(graph)[len(prefix):]))
            ax.set_title(f"{side} distribution per graph", fontsize=10)
            ax.set_xlabel("degree")
        fig.axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    depth = table.reset_index(drop=True)
    positions = list(range(len(depth)))
    step = max(1, len(depth) // 40)
    for column, (panel, names) in enumerate(DEPTH_PANELS.items()):
        ax = fig.add_subplot(grid[rows_top, column * (columns // 3) if many else column:
                                 (column + 1) * (columns // 3) if many else column + 1])
        present = [c for c in names if c in depth]
        values = depth[present].bfill(axis=1).iloc[:, 0] if present else pd.Series(float("nan"), index=depth.index)
        for kind, rows in depth.groupby("kind", sort=False):
            ax.plot(rows.index, values[rows.index], "o", markersize=3.5, label=kind)
        ax.set_xticks(positions[::step], [_short(g[len(prefix):], 30) for g in depth["graph"]][::step], rotation=90,
                      fontsize=6)
        ax.set_title(f"{panel}, by depth", fontsize=10)
    fig.axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False, title="kind")
    fig.suptitle((title or "Layers of a checkpoint") + (f" (graphs named without their common '{prefix}')"
                                                          if prefix else ""))
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    return fig


def _common_prefix(names: list[str]) -> str:
    """The dotted prefix every name shares (``transformer.``), so labels show what differs."""
    if len(names) < 2:
        return ""
    parts = [name.split(".") for name in names]
    shared = []
    for pieces in zip(*parts, strict=False):
        if len(set(pieces)) != 1:
            break
        shared.append(pieces[0])
    shared = shared[: min(len(p) for p in parts) - 1]
    return ".".join(shared) + "." if shared else ""


def _short(name: str, width: int = 38) -> str:
    """A graph name that fits a tick label: its end, where layer numbers and projections are."""
    return name if len(name) <= width else "…" + name[-(width - 1):]


@_drawn_literally
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


@_drawn_literally
def depth_figure(by_block: pd.DataFrame, title: str = "") -> plt.Figure:
    """Each metric by block, one line per projection kind: a transformer's graphs at a glance.

    ``by_block`` is :func:`topo.summary.by_block` output (block, projection, metric, value: the median over a
    projection's heads or parts); one panel per metric, up to four panels a row.
    """
    _require(by_block, ["block", "projection", "metric", "value"], "depth_figure")
    metrics = list(dict.fromkeys(by_block["metric"]))
    columns = min(4, len(metrics))
    rows = -(-len(metrics) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows + 0.8), squeeze=False)
    palette = dict(zip(dict.fromkeys(by_block["projection"]),
                       sns.color_palette("tab10", by_block["projection"].nunique()), strict=True))
    for ax, metric in zip(axes.flat, metrics, strict=False):
        data = by_block[by_block["metric"] == metric]
        for projection, line in data.groupby("projection", sort=False):
            ax.plot(line["block"], line["value"], "o-", markersize=2.5, linewidth=1, color=palette[projection],
                    label=projection)
        ax.set_title(metric.replace("_", " "), fontsize=10)
        ax.set_xlabel("block")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_axis_off()
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8, frameon=False,
               title="projection (median over its heads or parts)")
    fig.suptitle(title or "Metrics by depth")
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) // 6), 1, 0.97))
    return fig


@_drawn_literally
def head_heatmaps(grids: dict[str, pd.DataFrame], title: str = "", centre: float | None = None) -> plt.Figure:
    """One heat map per metric of the heads of one projection: blocks down, heads across.

    ``grids`` maps a metric to its block × head frame (:func:`topo.summary.head_grid`). With ``centre`` (0 for
    z-scores) the colours diverge from it, symmetric about it; otherwise each panel has its own sequential scale.
    Missing heads are grey. Drawn with ``imshow`` (a third of seaborn's ``heatmap`` time: a report draws
    two of these per attention projection).
    """
    import numpy as np

    if not grids:
        raise ConfigError("head_heatmaps needs at least one metric's grid")
    columns = min(4, len(grids))
    rows = -(-len(grids) // columns)
    first = next(iter(grids.values()))
    height = min(4.5, 1.0 + 0.12 * first.shape[0])
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, height * rows + 0.8), squeeze=False)
    for ax, (metric, grid) in zip(axes.flat, grids.items(), strict=False):
        values = np.ma.masked_invalid(grid.to_numpy(dtype=float))
        options: dict[str, Any] = {"cmap": plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")}
        if centre is not None:  # a missing head grey, apart from white's 0
            spread = float(np.abs(values - centre).max()) if values.count() else 0.0
            options = {"cmap": plt.get_cmap("RdBu_r").with_extremes(bad="#d9d9d9"), "vmin": centre - (spread or 1.0),
                       "vmax": centre + (spread or 1.0)}
        image = ax.imshow(values, aspect="auto", interpolation="nearest", **options)
        fig.colorbar(image, ax=ax, shrink=0.8)
        ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [str(i) for i in grid.index])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=16))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=12))
        ax.set_title(metric.replace("_", " "), fontsize=10)
        ax.set_xlabel("head")
        ax.set_ylabel("block")
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(grids):]:
        ax.set_axis_off()
    fig.suptitle(title or "Heads")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return fig
