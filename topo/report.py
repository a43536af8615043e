"""One self-contained HTML page that tells a run's (or a checkpoint's, or several runs') story.

>>> write_report(["runs/mlp-rigl-la1-s0"], "report.html")                      # doctest: +SKIP

The page holds everything it shows: figures are PNG images embedded as ``data:`` URIs, styles are inline, and the
one script (the layer selector of a comparison) is inline too, so it opens offline, fetches nothing from the
network, and prints. What it shows:

* **a run directory**: the configuration and the scores (the epoch validation picks and the last), Figure 5 per
  layer with null-model bands where the metrics table has them, turnover and exploration, fan-in and fan-out
  distributions against the Binomial of a random mask, the masks of the last snapshot as images, and the
  per-graph metric table of the last epoch;
* **a checkpoint**, read for models of thousands of graphs (:mod:`topo.summary`): a summary first (per
  projection kind, each metric's median and range; the metrics that are the same for every graph named once;
  with a null, every graph whose ``|z|`` exceeds 3, with its z), the metrics by block (one line per projection),
  the heads of each attention projection as block × head heat maps (values, and z-scores with a null), then the
  per-graph table (block, projection, head, metrics, z-scores; the whole table is also inside the page as a CSV
  download). Small models without blocks get the degree distributions and metrics by depth instead
  (:func:`topo.plot.layer_figure`);
* **several checkpoints of one architecture**: what changed from the first to each other one, per graph (every
  metric's difference; its median and range per projection) and per layer (NNSTD beside its random-mask baseline,
  :func:`topo.analyze.layer_distances`), then each checkpoint's own section;
* **several run directories**: the comparison, one colour per run and one panel per layer, a selector choosing
  the layer, then each run's own section.

Tables scroll inside the page and sort by any column on a click of its heading (an inline script).
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import topo
from topo.errors import ConfigError

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       color: #222; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2rem; margin-top: 2.5rem; }
h3 { margin-top: 1.6rem; }
table { border-collapse: collapse; font-size: .8rem; margin: .5rem 0 1rem; }
th, td { border: 1px solid #ddd; padding: .2rem .45rem; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; height: auto; display: block; margin: .5rem 0; }
.masks img { display: inline-block; margin: 0 .6rem .6rem 0; image-rendering: pixelated; border: 1px solid #ccc; }
.masks figure { display: inline-block; margin: 0 .8rem .8rem 0; font-size: .75rem; }
.note { color: #555; font-size: .85rem; }
.layer { display: none; } .layer.shown { display: block; }
.scroll { max-height: 34rem; overflow: auto; border: 1px solid #ddd; margin: .5rem 0 1rem; }
.scroll table { margin: 0; } .scroll th { position: sticky; top: 0; z-index: 1; }
.scroll td, .scroll th { white-space: nowrap; } td.text { text-align: left; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort="ascending"]::after { content: " ▲"; }
table.sortable th[aria-sort="descending"]::after { content: " ▼"; }
td.far { background: #fde2e1; }
@media print { .layer { display: block; } select { display: none; } h2 { break-before: page; }
               .scroll { max-height: none; overflow: visible; } }
"""

SCRIPT = """
function showLayer(select) {
  document.querySelectorAll('.layer').forEach(function (el) {
    el.classList.toggle('shown', el.dataset.layer === select.value);
  });
}
function cellKey(cell) {
  var text = cell.textContent.trim(), number = parseFloat(text);
  return isNaN(number) ? [1, text] : [0, number];
}
function sortBy(heading) {
  var table = heading.closest('table'), body = table.tBodies[0];
  var column = Array.prototype.indexOf.call(heading.parentNode.children, heading);
  var ascending = heading.getAttribute('aria-sort') !== 'ascending';
  table.querySelectorAll('th').forEach(function (th) { th.removeAttribute('aria-sort'); });
  heading.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
  var rows = Array.prototype.slice.call(body.rows);
  rows.sort(function (a, b) {
    var x = cellKey(a.cells[column]), y = cellKey(b.cells[column]);
    if (x[1] === '' || y[1] === '') { return (x[1] === '') - (y[1] === ''); }
    var order = x[0] - y[0] || (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0);
    return ascending ? order : -order;
  });
  rows.forEach(function (row) { body.appendChild(row); });
}
document.addEventListener('click', function (event) {
  var heading = event.target.closest('table.sortable th');
  if (heading) { sortBy(heading); }
});
"""


def figure_html(fig: Any, alt: str) -> str:
    """``fig`` as an embedded PNG ``<img>`` (the figure is closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def mask_html(mask: np.ndarray, name: str, side: int = 256) -> str:
    """A mask as a small embedded PNG (dark: active), at most ``side`` pixels a side (pooled: the fraction active)."""
    import matplotlib.pyplot as plt

    block = np.asarray(mask, dtype=np.float32).reshape(mask.shape[0], -1)
    rows, cols = -(-block.shape[0] // side), -(-block.shape[1] // side)
    if rows > 1 or cols > 1:
        padded = np.zeros((-(-block.shape[0] // rows) * rows, -(-block.shape[1] // cols) * cols), np.float32)
        padded[: block.shape[0], : block.shape[1]] = block
        block = padded.reshape(padded.shape[0] // rows, rows, padded.shape[1] // cols, cols).mean((1, 3))
    buffer = io.BytesIO()
    plt.imsave(buffer, 1.0 - block, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    shape = "×".join(map(str, mask.shape))
    return (f'<figure><img alt="mask of {html.escape(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(name)} ({shape}, {float(np.mean(mask)):.3f} active)</figcaption></figure>")


def table_html(frame: pd.DataFrame, digits: int = 4) -> str:
    """A DataFrame as an HTML table, numbers rounded."""
    return frame.to_html(index=False, float_format=lambda v: f"{v:.{digits}g}", na_rep="", border=0, escape=True)


def sortable_table_html(frame: pd.DataFrame, digits: int = 4,
                        highlight: Callable[[str, Any], bool] | None = None) -> str:
    """A DataFrame as a table that scrolls inside the page (its heading row stays in view) and sorts by a column
    when its heading is clicked (the page's inline script; numbers as numbers, blanks last). Cells for which
    ``highlight(column, value)`` holds are marked (class ``far``)."""
    def text(value: Any) -> str:
        if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
            return ""
        if isinstance(value, (float, np.floating)):
            return f"{value:.{digits}g}"
        return html.escape(str(value))

    columns = [str(c) for c in frame.columns]
    heading = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = []
    for values in frame.itertuples(index=False, name=None):
        cells = "".join(f'<td class="far">{text(v)}</td>' if highlight is not None and highlight(c, v) else
                        f'<td class="text">{text(v)}</td>' if _is_text(v) else f"<td>{text(v)}</td>"
                        for c, v in zip(columns, values, strict=True))
        rows.append(f"<tr>{cells}</tr>")
    return (f'<div class="scroll"><table class="sortable"><thead><tr>{heading}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _is_text(value: Any) -> bool:
    """A cell read as words (left-aligned), not a number or a number with its range."""
    return isinstance(value, str) and not (value[:1].isdigit() or value[:2].lstrip("-")[:1].isdigit())


def csv_download_html(frame: pd.DataFrame, filename: str, label: str) -> str:
    """A link that saves ``frame`` as a CSV file, the data inside the link (a ``data:`` URI: nothing fetched)."""
    data = base64.b64encode(frame.to_csv(index=False).encode("utf-8")).decode("ascii")
    return (f'<p class="note"><a download="{html.escape(filename)}" href="data:text/csv;base64,{data}">'
            f"{html.escape(label)}</a></p>")


def ranges_table(summary: pd.DataFrame, keys: list[str], metrics: list[str], digits: int = 4) -> pd.DataFrame:
    """A per-group summary (:func:`topo.summary.by_projection` columns ``<metric>_median/_min/_max``) with one
    ``median (min – max)`` cell per metric (sorting reads the median)."""
    def cell(row: pd.Series, metric: str) -> str:
        median, low, high = (row[f"{metric}_{stat}"] for stat in ("median", "min", "max"))
        if pd.isna(median):
            return ""
        if low == high:
            return f"{median:.{digits}g}"
        return f"{median:.{digits}g} ({low:.{digits}g} – {high:.{digits}g})"

    shown = summary[keys].copy()
    for metric in metrics:
        shown[metric] = [cell(row, metric) for _, row in summary.iterrows()]
    return shown


def _varying(table: pd.DataFrame, metrics: list[str]) -> tuple[list[str], dict[str, float]]:
    """``metrics`` split into those that vary over the table's graphs and those with one value for every graph."""
    constant = {}
    for metric in metrics:
        values = pd.to_numeric(table[metric], errors="coerce").dropna().unique()
        if len(values) == 1:
            constant[metric] = float(values[0])
    return [m for m in metrics if m not in constant], constant


def _wide(table: pd.DataFrame) -> pd.DataFrame:
    keep = table[~table["metric"].isin(["turnover", "exploration"])]
    wide = keep.pivot_table(index=["layer", "graph"], columns="metric", values="value", sort=False).reset_index()
    return wide.rename_axis(columns=None)


def run_section(path: str | os.PathLike, *, null: str | None, null_samples: int, layers: str | None,
                heads: bool = False, conv: str = "auto") -> str:
    """The section of one run directory (see the module docstring)."""
    from topo.analyze import analyze_run
    from topo.experiments.table import selected_epoch
    from topo.graph.compare import degree_distributions
    from topo.plot import degree_figure, figure5
    from topo.record import RunReader

    reader = RunReader(path)
    name = html.escape(reader.name)
    table = analyze_run(path, layers=layers, null=null, null_samples=null_samples, save=False, heads=heads, conv=conv)
    parts = [f'<h2 id="{name}">Run {name}</h2>', _configuration(reader)]
    history = reader.stats.groupby("epoch").first().reset_index()
    scores = [c for c in ("train_loss", "val_loss", "val_acc", "test_loss", "test_acc") if c in history]
    if scores:
        rows = [history.iloc[-1][["epoch", *scores]].rename("last epoch")]
        if "val_loss" in history and "test_loss" in history:
            rows.insert(0, selected_epoch(history)[["epoch", *scores]].rename("epoch validation picks"))
        parts += ["<h3>Scores</h3>", table_html(pd.DataFrame(rows).reset_index(names="at"))]
    parts.append("<h3>Graph metrics over training, per layer (cf. Figure 5)</h3>")
    if table["metric"].str.endswith("_null_mean").any():  # the bands are drawn from these rows
        parts.append('<p class="note">Shaded behind each line: the null model\'s mean ± 2 std.</p>')
    for layer in dict.fromkeys(table["layer"]):
        rows = table[table["layer"] == layer]
        parts.append(figure_html(figure5(rows, title=f"{reader.name}: {layer}"), f"Figure 5 of {layer}"))
    degrees = degree_distributions(reader, reader.name)
    if not degrees.empty:
        parts += ["<h3>Fan-in and fan-out against a random mask's Binomial</h3>",
                  figure_html(degree_figure(degrees), "degree distributions")]
    last = reader.epochs[-1]
    masks = reader.masks(last)
    parts += [f"<h3>Masks at epoch {last}</h3>", '<div class="masks">',
              *(mask_html(mask, layer) for layer, mask in masks.items()), "</div>",
              f"<h3>Metrics of every graph at epoch {last}</h3>", table_html(_wide(table[table["epoch"] == last]))]
    return "\n".join(parts)


def _configuration(reader: Any) -> str:
    meta = reader.meta
    method = {k: v for k, v in meta.get("method", {}).items() if not isinstance(v, (list, dict))}
    train = meta.get("config", {}).get("train", {})
    shown = {**method, **{k: v for k, v in train.items() if k in ("model", "dataset", "epochs", "lr", "batch_size",
                                                                   "log_alpha", "distribution")}}
    shown["layers"] = ", ".join(f"{n} {'×'.join(map(str, s))}" for n, s in meta.get("layers", []))
    frame = pd.DataFrame({"setting": list(shown), "value": [str(v) for v in shown.values()]})
    finished = meta.get("finished", {})
    note = f"finished ({finished.get('reason', '')}, {finished.get('epochs', '?')} epochs)" if finished else \
        "not finished"
    return f'<h3>Configuration</h3><p class="note">{html.escape(note)}</p>' + table_html(frame)


#: Checkpoints with at most this many graphs (and no numbered blocks) get the per-graph figure of
#: :func:`topo.plot.layer_figure`; larger ones the metrics by block and the head heat maps.
FIGURE_GRAPHS = 48
#: Beyond this ``|z|`` a graph's metric is listed as far from its null model.
FAR_Z = 3.0


def checkpoint_section(path: str | os.PathLike, *, null: str | None, null_samples: int, layers: str | None,
                       backbone: str | None, heads: bool = False, embeddings: bool = False, conv: str = "auto",
                       num_heads: int | None = None, key: str | None = None,
                       result: Any = None) -> str:
    """The section of one checkpoint (see the module docstring); ``result`` is its
    :class:`topo.analyze.CheckpointAnalysis` when already computed (else it is analysed here with the options)."""
    from topo.analyze import analyze_checkpoint

    if result is None:
        result = analyze_checkpoint(path, key=key, layers=layers, backbone=backbone, null=null,
                                    null_samples=null_samples, heads=heads, embeddings=embeddings, conv=conv,
                                    num_heads=num_heads, progress=False)
    named = f"{path}" + (f", backbone {backbone}" if backbone else "")
    notes = [result.source, result.reading, f"analysed through its backbone {backbone}" if backbone else "",
             "every analysed layer is dense: its graphs are complete" if result.dense else ""]
    parts = [f"<h2>Checkpoint {html.escape(named)}</h2>",
             *(f'<p class="note">{html.escape(n)}</p>' for n in notes if n)]
    table = result.table
    if table.empty:
        return "\n".join([*parts, '<p class="note">No graph was analysed.</p>'])
    scored = any(str(c).endswith("_z") for c in table.columns)
    parts += summary_html(table, named)
    if scored:
        parts += far_from_null_html(table)
    parts += figures_html(table, result.degree_table(), named, scored)
    parts += ["<h3>Every graph</h3>", graph_table_html(table),
              csv_download_html(table, f"{Path(str(path)).name}-graphs.csv",
                                "The whole table as CSV (every column, null means and standard deviations too)")]
    return "\n".join(parts)


def summary_html(table: pd.DataFrame, named: str) -> list[str]:
    """The summary of a checkpoint's graph table: counts, the metrics one value for every graph, and each other
    metric's median and range per projection (:func:`topo.summary.by_projection`)."""
    from topo.summary import by_projection, summarised_metrics, with_positions

    placed = with_positions(table)
    metrics = summarised_metrics(placed)
    varying, constant = _varying(placed, metrics)
    blocks = int(placed["block"].nunique())
    heads = int(placed["head"].notna().sum())
    counts = (f"{len(placed):,} graphs of {placed['layer'].nunique():,} layers"
              + (f" in {blocks} blocks" if blocks else "") + (f"; {heads:,} of them heads" if heads else ""))
    parts = ["<h3>Summary</h3>", f'<p class="note">{html.escape(counts)}. Per projection kind (over blocks and '
             "heads): each metric's median, and its range in brackets.</p>"]
    if constant:
        same = ", ".join(f"{m} {v:.4g}" for m, v in constant.items())
        parts.append(f'<p class="note">The same for every graph: {html.escape(same)}.</p>')
    summary = by_projection(table)
    parts.append(sortable_table_html(ranges_table(summary, ["projection", "graphs", "blocks"], varying)))
    if blocks > 1:
        per_block = by_projection(table, "block")
        parts += ['<p class="note">Per block (over its projections and heads):</p>',
                  sortable_table_html(ranges_table(per_block, ["block", "graphs", "projections"], varying))]
    return parts


def far_from_null_html(table: pd.DataFrame) -> list[str]:
    """The graphs whose z-score against the null model is beyond ``±FAR_Z`` (:func:`topo.summary.far_from_null`)."""
    from topo.summary import far_from_null

    far = far_from_null(table, FAR_Z)
    scored = sum(int(pd.to_numeric(table[c], errors="coerce").notna().sum()) for c in table if c.endswith("_z"))
    parts = [f"<h3>Far from the null model (|z| &gt; {FAR_Z:g})</h3>",
             f'<p class="note">{len(far):,} of {scored:,} (graph, metric) z-scores, largest |z| first; '
             f"{far['graph'].nunique():,} graphs.</p>"]
    if not far.empty:
        parts.append(sortable_table_html(far))
    return parts


def figures_html(table: pd.DataFrame, degrees: pd.DataFrame, named: str, with_null: bool) -> list[str]:
    """The metrics by block and the head heat maps of a model with numbered blocks; the per-graph figure of a small
    one without (:func:`topo.plot.layer_figure`)."""
    from topo.plot import depth_figure, head_heatmaps, layer_figure
    from topo.summary import by_block, head_grid, head_projections, summarised_metrics, with_positions

    placed = with_positions(table)
    parts = []
    if placed["block"].nunique() < 2 and len(placed) <= FIGURE_GRAPHS:
        if degrees.empty:  # a table read back: no degrees to draw
            return []
        return [figure_html(layer_figure(table, degrees, title=f"Layers of {named}"), "layers")]
    varying, _ = _varying(placed, summarised_metrics(placed))
    depth = by_block(table)
    depth = depth[depth["metric"].isin(varying)]
    if not depth.empty:
        parts += ["<h3>Metrics by block</h3>",
                  figure_html(depth_figure(depth, title=f"{named}: median per block and projection"),
                              "metrics by block")]
    projections = head_projections(table)
    if projections:
        parts += ["<h3>Heads</h3>", '<p class="note">One heat map per metric: blocks down, heads across'
                  + (", then the z-scores against the null model (blue below it, red above)." if with_null else ".")
                  + "</p>"]
    for projection in projections:
        parts.append(figure_html(head_heatmaps({m: head_grid(table, projection, m) for m in varying},
                                               title=f"{projection}: heads"), f"heads of {projection}"))
        scored = [m for m in varying if f"{m}_z" in table]
        if with_null and scored:
            parts.append(figure_html(head_heatmaps({m: head_grid(table, projection, f"{m}_z") for m in scored},
                                                   title=f"{projection}: z-scores of the heads", centre=0.0),
                                     f"z-scores of the heads of {projection}"))
    return parts


def graph_table_html(table: pd.DataFrame) -> str:
    """The per-graph table as shown: positions, kind, shape, N:M, every metric and z-score (the null's means and
    standard deviations are in the CSV); cells beyond ``|z| > FAR_Z`` highlighted."""
    from topo.summary import summarised_metrics, with_positions

    placed = with_positions(table)
    first = [c for c in ("graph", "block", "projection", "head", "kind", "shape", "n_m", "n_nodes", "n_edges")
             if c in placed]
    metrics = summarised_metrics(placed)
    shown = placed[first + [c for c in placed if c not in first and c != "layer"
                            and not c.endswith(("_null_mean", "_null_std")) and (c in metrics or c.endswith("_z")
                                                                                  or c.endswith("_se"))]]
    return sortable_table_html(shown, highlight=lambda column, value: column.endswith("_z") and _beyond(value))


def _beyond(value: Any) -> bool:
    """A z-score beyond ``±FAR_Z`` (False for a blank)."""
    return isinstance(value, (int, float, np.number)) and not pd.isna(value) and abs(float(value)) > FAR_Z


def comparison_section(paths: list[str], *, layers: str | None, heads: bool = False, conv: str = "auto") -> str:
    """Several runs side by side: one colour per run, one figure per layer, a selector to choose the layer."""
    from topo.analyze import analyze_run
    from topo.plot import figure5

    tables = pd.concat([analyze_run(p, layers=layers, save=False, heads=heads, conv=conv) for p in paths],
                       ignore_index=True)
    names = list(dict.fromkeys(tables["layer"]))
    options = "".join(f'<option value="{html.escape(n)}">{html.escape(n)}</option>' for n in names)
    parts = [f"<h2>{len(paths)} runs compared</h2>",
             '<p class="note">One colour per run; choose a layer (printing shows them all).</p>',
             f'<label>layer <select onchange="showLayer(this)">{options}</select></label>']
    for index, layer in enumerate(names):
        rows = tables[tables["layer"] == layer]
        label = rows.assign(run=rows["run"] + ("" if rows["graph"].nunique() == 1 else " · " + rows["graph"]))
        fig = figure5(label, hue="run", title=f"{layer}: {len(paths)} runs")
        parts.append(f'<div class="layer{" shown" if index == 0 else ""}" data-layer="{html.escape(layer)}">'
                     f"{figure_html(fig, f'Figure 5 of {layer}')}</div>")
    return "\n".join(parts)


def checkpoints_comparison_section(paths: list[str], results: list[Any], *, layers: str | None,
                                   backbone: str | None, embeddings: bool, num_heads: int | None, key: str | None,
                                   nnstd_samples: int) -> str:
    """What changed from the first checkpoint to each other one: per graph (:func:`topo.summary.differences`:
    the median and range per projection of every metric's difference, then every graph's), and per layer (NNSTD
    beside its random-mask baseline, :func:`topo.analyze.layer_distances`; left out when ``nnstd_samples`` is
    0)."""
    from topo.analyze import layer_distances
    from topo.summary import differences, median_and_range, summarised_metrics

    tables = dict(zip(paths, (r.table for r in results), strict=True))
    found = differences(tables)
    parts = [f"<h2>{len(paths)} checkpoints compared</h2>",
             f'<p class="note">Each checkpoint against the first, {html.escape(paths[0])}: every graph\'s metrics '
             "(the difference: the checkpoint's value minus the first's), and every layer's topology distance "
             "(NNSTD: 0 for the same connections up to a permutation of neurons, 1 for disjoint ones).</p>"]
    metrics = [m for m in summarised_metrics(results[0].table) if m in set(found["metric"])]
    rows = []
    for (checkpoint, projection), group in found.groupby(["checkpoint", "projection"], sort=False):
        row: dict[str, Any] = {"checkpoint": checkpoint, "projection": projection, "graphs": group["graph"].nunique()}
        for metric, values in group.groupby("metric", sort=False):
            row.update(median_and_range(values["difference"], metric))
        rows.append(row)
    summary = pd.DataFrame(rows)
    changed = [m for m in metrics if (found.loc[found["metric"] == m, "difference"].fillna(0) != 0).any()]
    unchanged = [m for m in metrics if m not in changed]
    parts.append("<h3>Differences per projection</h3>")
    if unchanged:
        parts.append(f'<p class="note">Unchanged in every graph: {html.escape(", ".join(unchanged))}.</p>')
    if changed:
        parts += ['<p class="note">Median difference per projection kind, its range in brackets.</p>',
                  sortable_table_html(ranges_table(summary, ["checkpoint", "projection", "graphs"], changed))]
        wide = found[found["metric"].isin(changed)].pivot_table(
            index=["checkpoint", "graph"], columns="metric", values="difference", sort=False, dropna=False)
        wide = wide.reindex(columns=changed).reset_index().rename_axis(columns=None)
        moved = wide[(wide[changed].fillna(0) != 0).any(axis=1)]
        parts += ["<h3>Differences per graph</h3>",
                  f'<p class="note">{len(moved):,} of {len(wide):,} graphs differ in some metric (the others in '
                  "none; the CSV holds every graph).</p>", sortable_table_html(moved),
                  csv_download_html(found, "differences.csv", "Every graph's values and differences as CSV")]
    if nnstd_samples and any(is_analysis_table(p) for p in paths):
        parts.append('<p class="note">No NNSTD: it compares masks, and some inputs are tables of metrics; give the '
                     "checkpoints themselves for it.</p>")
    elif nnstd_samples:
        distances = layer_distances(paths, key=key, layers=layers, backbone=backbone, embeddings=embeddings,
                                    num_heads=num_heads, samples=nnstd_samples)
        distances["nnstd_z"] = (distances["nnstd"] - distances["nnstd_random"]) / distances["nnstd_random_std"]
        parts += ["<h3>Topology distance per layer (NNSTD)</h3>",
                  f'<p class="note">Beside each layer\'s NNSTD: that of two independent random masks of the same '
                  f"counts (mean and standard deviation of {nnstd_samples} pairs); well below it, the two "
                  "checkpoints share connections beyond chance.</p>", sortable_table_html(distances)]
    return "\n".join(parts)


def is_analysis_table(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file written by ``topo analyze CHECKPOINT --csv`` (``.csv`` or ``.csv.gz``)."""
    return Path(path).is_file() and str(path).lower().endswith((".csv", ".csv.gz"))


def read_analysis_table(path: str | os.PathLike) -> Any:
    """The per-graph table of ``topo analyze CHECKPOINT --csv`` at ``path`` as a
    :class:`topo.analyze.CheckpointAnalysis` (no degrees: they are not in the table), so that a report of a model
    whose analysis took an hour needs no second analysis. :class:`~topo.errors.CheckpointError` for a file that is
    not one."""
    from topo.analyze import CheckpointAnalysis
    from topo.errors import CheckpointError

    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable CSV table ({exc})") from None
    missing = [c for c in ("layer", "graph", "kind") if c not in table.columns]
    if missing:
        raise CheckpointError(f"{path}: not a table of topo analyze CHECKPOINT --csv (no {', '.join(missing)} "
                              "column)")
    return CheckpointAnalysis(table, table.to_dict("records"), f"the table of topo analyze in {Path(path).name} "
                              f"({len(table):,} graphs)", False)


def write_report(paths: list[str | os.PathLike], out: str | os.PathLike, *, title: str | None = None,
                 null: str | None = None, null_samples: int = 20, layers: str | None = None,
                 backbone: str | None = None, heads: bool = False, embeddings: bool = False, conv: str = "auto",
                 num_heads: int | None = None, key: str | None = None, nnstd_samples: int = 2) -> Path:
    """Write the report of ``paths`` (run directories, or checkpoints of one architecture, or the tables
    ``topo analyze CHECKPOINT --csv`` wrote of them) to the HTML file ``out``; returns it.

    ``null``, ``null_samples``, ``layers``, ``heads`` and ``conv`` are :func:`topo.analyze.analyze_checkpoint`'s
    and :func:`topo.analyze.analyze_run`'s; ``backbone``, ``embeddings``, ``num_heads`` and ``key`` apply to
    checkpoints; ``nnstd_samples`` random pairs make each layer's NNSTD baseline when checkpoints are compared
    (0: no NNSTD). Raises :class:`ConfigError` for a mix of checkpoints and runs, checkpoints of different
    architectures, or a checkpoint option given for runs.
    """
    from topo.analyze import analyze_checkpoint, is_run_directory
    from topo.options import check_analysis_options
    from topo.record.store import write_atomic

    paths = [str(p) for p in paths]
    if not paths:
        raise ConfigError("topo report needs run directories or checkpoints")
    runs = [is_run_directory(p) for p in paths]
    if any(runs) and not all(runs):
        mixed = paths[runs.index(False)] if runs[0] else paths[runs.index(True)]
        raise ConfigError(f"{mixed}: a report covers run directories or checkpoints, not both")
    check_analysis_options(backbone=backbone, null=null, null_samples=null_samples, conv=conv, num_heads=num_heads)
    if nnstd_samples < 0 or nnstd_samples == 1:
        raise ConfigError(f"--nnstd-samples must be 0 (no NNSTD) or at least 2, got {nnstd_samples}")
    if runs[0]:
        given = [flag for flag, value in (("--backbone", backbone), ("--embeddings", embeddings),
                                          ("--num-heads", num_heads), ("--key", key)) if value]
        if given:
            raise ConfigError(f"{given[0]} applies to checkpoints; a run directory's masks are its own")
    tables = [is_analysis_table(p) for p in paths]
    if any(tables):
        given = [flag for flag, value in (("--backbone", backbone), ("--embeddings", embeddings),
                                          ("--num-heads", num_heads), ("--key", key), ("--heads", heads),
                                          ("--null", null), ("--layers", layers), ("--conv", conv != "auto"))
                 if value]
        if given:
            table = paths[tables.index(True)]
            raise ConfigError(f"{given[0]} applies when topo report analyses a checkpoint; {table} is an analysis "
                              "already (its options are those topo analyze was given)")
    sections = []
    if runs[0]:
        if len(paths) > 1:
            sections.append(comparison_section(paths, layers=layers, heads=heads, conv=conv))
        sections += [run_section(p, null=null, null_samples=null_samples, layers=layers, heads=heads, conv=conv)
                     for p in paths]
    else:
        results = [read_analysis_table(p) if table else
                   analyze_checkpoint(p, key=key, layers=layers, backbone=backbone, null=null,
                                      null_samples=null_samples, heads=heads, embeddings=embeddings, conv=conv,
                                      num_heads=num_heads, progress=False)
                   for p, table in zip(paths, tables, strict=True)]
        if len(paths) > 1:
            sections.append(checkpoints_comparison_section(paths, results, layers=layers, backbone=backbone,
                                                           embeddings=embeddings, num_heads=num_heads, key=key,
                                                           nnstd_samples=nnstd_samples))
        sections += [checkpoint_section(p, null=null, null_samples=null_samples, layers=layers, backbone=backbone,
                                        result=r) for p, r in zip(paths, results, strict=True)]
    heading = title or ("topo report: " + ", ".join(Path(p).name for p in paths))
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(heading)}</title><style>{STYLE}</style>",
        f"<script>{SCRIPT}</script>", "</head><body>",
        f"<h1>{html.escape(heading)}</h1>",
        f'<p class="note">Made by topo {topo.__version__} on {made} from {len(paths)} input(s). Everything on this '
        "page is inside this file.</p>", *sections, "</body></html>"])
    return write_atomic(out, lambda handle: handle.write(page.encode("utf-8")))
