"""One self-contained HTML page that tells a run's (or a checkpoint's, or several runs') story.

>>> write_report(["runs/mlp-rigl-la1-s0"], "report.html")                      # doctest: +SKIP

The page holds everything it shows: figures are PNG images embedded as ``data:`` URIs, styles are inline, and the
one script (the layer selector of a comparison) is inline too, so it opens offline, fetches nothing from the
network, and prints. What it shows:

* **a run directory**: the configuration and the scores (the epoch validation picks and the last), Figure 5 per
  layer with null-model bands where the metrics table has them, turnover and exploration, fan-in and fan-out
  distributions against the Binomial of a random mask, the masks of the last snapshot as images, and the
  per-graph metric table of the last epoch;
* **a checkpoint**: the per-graph table (kind, shape, mask density, metrics, z-scores when a null was asked for)
  and the metrics by depth with the graphs' names (:func:`topo.plot.layer_figure`);
* **several run directories**: the comparison, one colour per run and one panel per layer, a selector choosing
  the layer, then each run's own section.
"""

from __future__ import annotations

import base64
import html
import io
import os
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
@media print { .layer { display: block; } select { display: none; } h2 { break-before: page; } }
"""

SELECTOR = """
function showLayer(select) {
  document.querySelectorAll('.layer').forEach(function (el) {
    el.classList.toggle('shown', el.dataset.layer === select.value);
  });
}
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


def _wide(table: pd.DataFrame) -> pd.DataFrame:
    keep = table[~table["metric"].isin(["turnover", "exploration"])]
    wide = keep.pivot_table(index=["layer", "graph"], columns="metric", values="value", sort=False).reset_index()
    return wide.rename_axis(columns=None)


def run_section(path: str | os.PathLike, *, null: str | None, null_samples: int, layers: str | None) -> str:
    """The section of one run directory (see the module docstring)."""
    from topo.analyze import analyze_run
    from topo.experiments.table import selected_epoch
    from topo.graph.compare import degree_distributions
    from topo.plot import degree_figure, figure5
    from topo.record import RunReader

    reader = RunReader(path)
    name = html.escape(reader.name)
    table = analyze_run(path, layers=layers, null=null, null_samples=null_samples, save=False)
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


def checkpoint_section(path: str | os.PathLike, *, null: str | None, null_samples: int, layers: str | None,
                       backbone: str | None) -> str:
    """The section of one checkpoint (see the module docstring)."""
    from topo.analyze import analyze_checkpoint
    from topo.plot import layer_figure

    result = analyze_checkpoint(path, layers=layers, backbone=backbone, null=null, null_samples=null_samples,
                                progress=False)
    degrees = pd.DataFrame([(graph, side, int(d)) for graph, parts in result.degrees.items()
                            for side, values in zip(("fan-out", "fan-in") if len(parts) == 2 else ("degree",),
                                                    parts, strict=True) for d in values],
                           columns=["graph", "side", "degree"])
    named = f"{path}" + (f", backbone {backbone}" if backbone else "")
    notes = [result.source, result.reading, f"analysed through its backbone {backbone}" if backbone else "",
             "every analysed layer is dense: its graphs are complete" if result.dense else ""]
    return "\n".join([f"<h2>Checkpoint {html.escape(named)}</h2>",
                      *(f'<p class="note">{html.escape(n)}</p>' for n in notes if n),
                      figure_html(layer_figure(result.table, degrees, title=f"Layers of {named}"), "layers"),
                      "<h3>Every graph</h3>", table_html(result.table)])


def comparison_section(paths: list[str], *, layers: str | None) -> str:
    """Several runs side by side: one colour per run, one figure per layer, a selector to choose the layer."""
    from topo.analyze import analyze_run
    from topo.plot import figure5

    tables = pd.concat([analyze_run(p, layers=layers, save=False) for p in paths], ignore_index=True)
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


def write_report(paths: list[str | os.PathLike], out: str | os.PathLike, *, title: str | None = None,
                 null: str | None = None, null_samples: int = 20, layers: str | None = None,
                 backbone: str | None = None) -> Path:
    """Write the report of ``paths`` (run directories, or one checkpoint) to the HTML file ``out``; returns it.

    Raises :class:`ConfigError` for a mix of checkpoints and runs, or several checkpoints.
    """
    from topo.analyze import is_run_directory
    from topo.record.store import write_atomic

    paths = [str(p) for p in paths]
    runs = [is_run_directory(p) for p in paths]
    if not paths:
        raise ConfigError("topo report needs a run directory or a checkpoint")
    if len(paths) > 1 and not all(runs):
        raise ConfigError(f"{paths[runs.index(False)]}: not a run directory; a report covers one checkpoint, or "
                          "one or more run directories")
    if backbone is not None and runs[0]:
        raise ConfigError("--backbone applies to checkpoints; a run directory's masks are its own")
    sections = []
    if len(paths) > 1:
        sections.append(comparison_section(paths, layers=layers))
    for path, is_run in zip(paths, runs, strict=True):
        sections.append(run_section(path, null=null, null_samples=null_samples, layers=layers) if is_run else
                        checkpoint_section(path, null=null, null_samples=null_samples, layers=layers,
                                           backbone=backbone))
    heading = title or ("topo report: " + ", ".join(Path(p).name for p in paths))
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(heading)}</title><style>{STYLE}</style>",
        f"<script>{SELECTOR}</script>" if len(paths) > 1 else "", "</head><body>",
        f"<h1>{html.escape(heading)}</h1>",
        f'<p class="note">Made by topo {topo.__version__} on {made} from {len(paths)} input(s). Everything on this '
        "page is inside this file.</p>", *sections, "</body></html>"])
    return write_atomic(out, lambda handle: handle.write(page.encode("utf-8")))
