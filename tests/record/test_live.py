"""Graph metrics while a run records: the run directory's table, TensorBoard, reuse by analyze, rewinds."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from topo.analyze import analyze_run
from topo.errors import ConfigError
from topo.record import Recorder, RunReader
from topo.record.live import METRICS_FILE, mask_image, read_metrics, summary_writer
from topo.sparsity import Adaptive


def _train(run_dir, epochs: int, resume: bool = False, **recorder_options) -> Adaptive:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5), nn.LSTM(5, 6))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = Adaptive(model, optimizer, density=0.3, k=0.5, every=1, seed=1)
    with Recorder(run_dir, sparsifier, resume=resume, **recorder_options) as recorder:
        start = recorder.resume() if resume else 0
        for epoch in range(start, epochs):
            for _ in range(3):
                out, _ = model[3](model[:3](torch.randn(8, 20)).unsqueeze(0))
                optimizer.zero_grad()
                out.square().mean().backward()
                optimizer.step()
                sparsifier.step()
            recorder.snapshot(epoch, {"train_loss": float(epoch)})
            if epoch + 1 < epochs:
                sparsifier.end_epoch(epoch)
    return sparsifier


def test_a_resumed_run_keeps_which_snapshots_get_metrics(tmp_path):
    _train(tmp_path / "run", 3, metrics_every=2)  # epochs 0, 1, 2: metrics at 0 and 2
    _train(tmp_path / "run", 6, resume=True, metrics_every=2)  # then 3, 4, 5: metrics at 4 only
    assert sorted(read_metrics(tmp_path / "run").epoch.unique()) == [0, 2, 4]


def test_every_nth_snapshot_gets_the_table_analyze_would_compute(tmp_path):
    _train(tmp_path / "run", 5, metrics_every=2)
    live = read_metrics(tmp_path / "run")
    assert sorted(live.epoch.unique()) == [0, 2, 4]
    (tmp_path / "run" / METRICS_FILE).unlink()
    fresh = analyze_run(tmp_path / "run", save=False)
    fresh = fresh[fresh.metric != "weighted_spectral_gap"]  # from the checkpoint's weights: analysis only
    keys = ["epoch", "layer", "graph", "metric"]
    expected = fresh[fresh.epoch.isin([0, 2, 4])].sort_values(keys).reset_index(drop=True)
    got = live.sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(expected[keys], got[keys])
    np.testing.assert_allclose(expected.value, got.value, rtol=1e-9, equal_nan=True)
    assert "3.weight_hh_l0[f]" in set(live.graph)  # the LSTM is split into its gate graphs


def test_analyze_reuses_the_recorded_epochs_and_computes_the_rest(tmp_path):
    _train(tmp_path / "run", 4, metrics_every=2)
    cached = read_metrics(tmp_path / "run")
    marked = (cached.epoch == 2) & (cached.metric == "degree_gini")
    cached.loc[marked, "value"] = 123.0  # a value only the cache can hold
    cached.to_csv(tmp_path / "run" / METRICS_FILE, index=False)
    table = analyze_run(tmp_path / "run", save=False)
    assert (table[(table.epoch == 2) & (table.metric == "degree_gini")].value == 123.0).all()
    assert sorted(table.epoch.unique()) == [0, 1, 2, 3]
    assert not (table[(table.epoch == 3) & (table.metric == "degree_gini")].value == 123.0).any()
    with_small_world = analyze_run(tmp_path / "run", save=False, small_world=2)
    assert not (with_small_world.value == 123.0).any()  # more metrics asked: nothing reused


def test_tensorboard_gets_metrics_stats_run_metrics_and_mask_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train(tmp_path / "run", 3, tensorboard=True)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"topo/0.weight/algebraic_connectivity", "topo/3.weight_hh_l0[f]/global_clustering",
            "topo/0.weight/mask_density", "topo/2.weight/low_0.25", "topo/2.weight/turnover",
            "topo/run/train_loss"} <= scalars
    assert [e.step for e in events.Scalars("topo/run/train_loss")] == [0, 1, 2]
    turnover = [e.step for e in events.Scalars("topo/0.weight/turnover")]
    assert turnover == [1, 2]
    assert len(events.Images("topo/0.weight/mask")) == 3


def test_a_resumed_run_forgets_metrics_of_epochs_after_its_checkpoint(tmp_path):
    _train(tmp_path / "run", 5, metrics_every=1)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5), nn.LSTM(5, 6))
    sparsifier = Adaptive(model, torch.optim.SGD(model.parameters(), lr=0.1), density=0.3, k=0.5, every=1, seed=1)
    recorder = Recorder(tmp_path / "run", sparsifier, resume=True, metrics_every=1)
    recorder.rewind(2)
    assert sorted(read_metrics(tmp_path / "run").epoch.unique()) == [0, 1, 2]
    assert RunReader(tmp_path / "run").epochs == [0, 1, 2]
    assert sorted(RunReader(tmp_path / "run").stats.epoch.unique()) == [0, 1, 2]
    recorder.close()


def test_mask_images_are_block_densities_of_at_most_the_side_asked():
    mask = np.zeros((1000, 300), dtype=bool)
    mask[:500] = True
    image = mask_image(mask, side=250)
    assert image.shape == (1, 250, 150) and image.dtype == np.float32
    assert image[0, :125].min() == 1.0 and image[0, 125:].max() == 0.0
    conv = mask_image(np.ones((4, 3, 2, 2), dtype=bool))
    assert conv.shape == (1, 4, 12)


def test_without_tensorboard_one_line_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    expected = r'^TensorBoard logging needs tensorboard: pip install "topo\[tensorboard\]"$'
    with pytest.raises(ConfigError, match=expected):
        summary_writer(tmp_path)


def test_metrics_may_not_overwrite_recorded_columns(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4))
    with Recorder(tmp_path / "run", Adaptive(model, density=0.5), checkpoint=False) as recorder, \
            pytest.raises(ConfigError, match=r"metric name\(s\) \['density', 'epoch'\]"):
        recorder.snapshot(0, {"epoch": 1.0, "density": 0.2})
