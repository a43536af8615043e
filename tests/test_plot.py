"""The figures: saved PNGs exist, are not blank, and have the expected axes and lines."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from topo import plot
from topo.errors import ConfigError, OutputError


def metrics_frame(runs: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [(f"r{r}", e, "lstm.weight_hh_l0", g, m, rng.random())
            for r in range(runs) for e in range(5) for g in "ifgo" for names in plot.FIGURE5_PANELS.values()
            for m in names[:1]]
    return pd.DataFrame(rows, columns=["run", "epoch", "layer", "graph", "metric", "value"])


def not_blank(path) -> bool:
    image = imread(path)
    return image.std() > 0.01


def test_figure5_four_axes_one_line_per_gate(tmp_path):
    fig = plot.figure5(metrics_frame())
    assert len(fig.axes) == 4
    assert all(len(ax.get_lines()) >= 4 for ax in fig.axes)
    fig.savefig(tmp_path / "f5.png")
    assert not_blank(tmp_path / "f5.png")



def test_epoch_axes_have_whole_epoch_ticks():
    fig = plot.figure5(metrics_frame())
    fig.canvas.draw()
    ticks = [tick for ax in fig.axes for tick in ax.get_xticks()]
    assert ticks and all(float(tick).is_integer() for tick in ticks)

def test_figure5_over_seeds_draws_bands():
    fig = plot.figure5(metrics_frame(runs=3), hue="graph")  # the three runs pooled per gate: mean ± sd
    bands = [c for c in fig.axes[0].collections if c.get_label() == "_sd"]
    assert len(bands) == 4 and len(fig.axes[0].get_lines()) == 4


def test_figure5_of_several_runs_draws_one_line_per_run_and_graph_never_an_average():
    fig = plot.figure5(metrics_frame(runs=3))
    assert len(fig.axes[0].get_lines()) == 12  # 3 runs × 4 gates
    assert not [c for c in fig.axes[0].collections if c.get_label() == "_sd"]
    assert "3 runs" in fig._suptitle.get_text()
    one = plot.figure5(metrics_frame(runs=3), layer="f")
    assert len(one.axes[0].get_lines()) == 3 and {t.get_text() for t in one.legends[0].get_texts()} == {
        f"r{r} · f" for r in range(3)}
    with pytest.raises(ConfigError, match="no graph matches --layer"):
        plot.figure5(metrics_frame(), layer="conv*")


def test_figure5_bands_stay_inside_the_metrics_range():
    frame = metrics_frame(runs=3)
    frame.loc[frame.metric == "algebraic_connectivity", "value"] = [0.0, 0.9, 0.0] * 20  # mean 0.3, sd 0.52
    fig = plot.figure5(frame, hue="graph")
    band = next(c for c in fig.axes[0].collections if c.get_label() == "_sd")
    assert min(path.vertices[:, 1].min() for path in band.get_paths()) >= 0.0


def test_figure4_and_figure3_and_figure2(tmp_path, caplog):
    stats = pd.DataFrame({"run": ["a"] * 3 + ["b"] * 3, "epoch": [0, 1, 2] * 2, "layer": "fc",
                          "low_0.1": [10, 8, 5, 10, 10, 11]})
    fig4 = plot.figure4(stats)
    assert len(fig4.axes[0].get_lines()) >= 2
    histories = stats.rename(columns={"low_0.1": "val_loss"})
    fig3 = plot.figure3(histories)
    assert len(fig3.axes[0].get_lines()) >= 2
    runs = pd.DataFrame({"method": ["dense", "adaptive", "adaptive"], "log_alpha": [0, 0.5, 0.5],
                         "score": [3.0, 2.5, 2.4]})
    with caplog.at_level(logging.INFO, logger="matplotlib"):
        fig2 = plot.figure2(runs)
        fig2.savefig(tmp_path / "f2.png")
    assert "categorical units" not in caplog.text
    assert not_blank(tmp_path / "f2.png") and len(fig2.axes[0].patches) >= 2
    assert [t.get_text() for t in fig2.axes[0].get_xticklabels()] == ["1 (dense)", "$10^{-0.5}$"]
    by_k = runs.assign(label=["dense", "adaptive k=0.25", "adaptive k=0.5"])
    legend = plot.figure2(by_k).axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["dense", "adaptive k=0.25", "adaptive k=0.5"]


def test_missing_columns_raise():
    with pytest.raises(ConfigError, match="missing"):
        plot.figure5(pd.DataFrame({"epoch": [0]}))


def test_table2_curves_one_panel_per_alpha_with_the_dense_reference(tmp_path):
    blocks = ((0.0, ["dense"]), (0.5, ["random-fixed", "adaptive k=0.5"]), (1.0, ["random-fixed"]))
    rows = [(e, la, label, s, 10.0 - e + s) for la, labels in blocks
            for label in labels for s in range(2) for e in range(4)]
    histories = pd.DataFrame(rows, columns=["epoch", "log_alpha", "label", "seed", "val_error"])
    fig = plot.table2_curves(histories)
    assert len(fig.axes) == 2
    assert len(fig.axes[0].get_lines()) >= 3 and len(fig.axes[1].get_lines()) >= 2  # dense drawn in both
    (tmp_path / "sub").mkdir()
    path = plot.save(fig, tmp_path / "sub" / "curves.png")
    assert not_blank(path) and [p.name for p in path.parent.iterdir()] == ["curves.png"]
    with pytest.raises(OutputError, match="missing/curves.png: cannot be written"):  # no folder made for a typo
        plot.save(plot.table2_curves(histories), tmp_path / "missing" / "curves.png")
    assert not (tmp_path / "missing").exists()


def test_save_leaves_no_partial_file_when_writing_fails(tmp_path):
    fig = plot.figure5(metrics_frame())
    with pytest.raises(ValueError):
        plot.save(fig, tmp_path / "figure.unknown-format")
    assert list(tmp_path.iterdir()) == []


def test_figure5_of_an_mlp_draws_one_line_per_layer():
    from topo.graph import metrics_table

    rng = np.random.default_rng(0)
    snapshots = [(e, {"0.weight": rng.random((8, 6)) < 0.5, "2.weight": rng.random((4, 8)) < 0.5,
                      "4.weight": rng.random((3, 4)) < 0.6}) for e in range(3)]
    fig = plot.figure5(metrics_table(snapshots, progress=False))
    for ax in fig.axes:  # four meaningful panels: bipartite layers use fan-in Gini and Robins–Alexander clustering
        assert len({tuple(line.get_color()) if not isinstance(line.get_color(), str) else line.get_color()
                    for line in ax.get_lines()}) == 3, ax.get_title()


def test_figure5_of_runs_adds_turnover_and_exploration_and_the_degree_figure(tmp_path):
    import torch
    from torch import nn

    from topo.graph import metrics_table
    from topo.graph.compare import degree_distributions
    from topo.record import Recorder, RunReader
    from topo.sparsity import SET

    torch.manual_seed(0)
    sparsifier = SET(nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4)), density=0.3, zeta=0.3)
    with Recorder(tmp_path / "run", sparsifier, checkpoint=False) as recorder:
        for epoch in range(4):
            sparsifier.adapt()
            recorder.snapshot(epoch)
    run = RunReader(tmp_path / "run")
    fig = plot.figure5(metrics_table(run, run="set", progress=False), hue="run")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.axison]
    assert len(titles) == 6 and any("turnover" in t for t in titles) and any("exploration" in t for t in titles)
    degrees = degree_distributions(run, "set")
    assert set(degrees["side"]) == {"in", "out"}
    assert (degrees.groupby(["epoch", "layer", "side"])["count"].sum().loc[(3, "0.weight", "in")] == 16)
    plot.save(plot.degree_figure(degrees), tmp_path / "degrees.png")
    assert not_blank(tmp_path / "degrees.png")


def test_figure5_draws_the_null_band_behind_each_line_clipped_to_the_metrics_range():
    from topo.graph import metrics_table

    rng = np.random.default_rng(0)
    snapshots = [(epoch, {"fc.weight": rng.random((20, 30)) < 0.1}) for epoch in range(4)]
    table = metrics_table(snapshots, null="er", null_samples=5, progress=False)
    fig = plot.figure5(table)
    bands = [c for ax in fig.axes for c in ax.collections if c.get_label() == "_null"]
    assert len(bands) == 4  # one per panel: λ2, fan-in Gini, Robins–Alexander clustering, mean path
    connectivity = next(c for c in fig.axes[0].collections if c.get_label() == "_null")
    lowest = min(path.vertices[:, 1].min() for path in connectivity.get_paths())
    assert lowest >= 0.0  # λ2 ≥ 0: the band never goes below
    plain = plot.figure5(metrics_frame())
    assert not [c for ax in plain.axes for c in ax.collections if c.get_label() == "_null"]  # no null rows, no band
