"""End-to-end: the `topo` command driven as a user would, in a subprocess."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from topo.cli import _stats_of
from topo.graph import layer_graphs, summarize
from topo.record import Recorder, RunReader, read_checkpoint
from topo.sparsity import Adaptive

from .conftest import mlp


def topo(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "topo.cli", "--quiet", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = nn.ModuleDict({"lstm": nn.LSTM(6, 16), "fc": nn.Linear(16, 4)})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp = Adaptive(model, opt, density=0.3, every=1, unit="step")
    run = tmp_path_factory.mktemp("runs") / "lstm-run"
    with Recorder(run, sp) as recorder:
        for epoch in range(3):
            out, _ = model["lstm"](torch.randn(5, 3, 6))
            model["fc"](out).pow(2).mean().backward()
            opt.step()
            sp.step()
            opt.zero_grad()
            recorder.snapshot(epoch, {"val_loss": 1.0 / (epoch + 1)})
    return run


def test_help_everywhere():
    for command in ([], ["analyze"], ["plot"], ["train"], ["transplant"], ["reproduce"], ["demo"]):
        result = topo(*command, "--help")
        assert result.returncode == 0 and "usage: topo" in result.stdout


def test_analyze_topo_checkpoint_matches_topo_graph(recorded_run):
    result = topo("analyze", str(recorded_run / "checkpoint.pt"), "--json")
    assert result.returncode == 0, result.stderr
    rows = pd.DataFrame(json.loads(result.stdout))
    masks = read_checkpoint(recorded_run / "checkpoint.pt")["masks"]
    graphs = layer_graphs(masks)
    assert len(rows) == len(graphs)
    forget = rows[(rows.layer == "lstm.weight_hh_l0") & (rows.graph == "lstm.weight_hh_l0[f]")].iloc[0]
    expected = summarize(graphs["lstm.weight_hh_l0[f]"])
    for key in ("algebraic_connectivity", "degree_gini", "global_clustering", "mean_shortest_path"):
        assert forget[key] == pytest.approx(expected[key], rel=1e-9)
    assert forget["shape"] == "16×16"  # the gate's own block of the stacked (4·16) × 16 weight


def test_analyze_plain_state_dict_with_zeroed_weights(tmp_path):
    model = mlp((12,))
    with torch.no_grad():
        model[0].weight[model[0].weight.abs() < 0.05] = 0
    torch.save(model.state_dict(), tmp_path / "model.pt")
    result = topo("analyze", str(tmp_path / "model.pt"), "--csv", "-")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(io.StringIO(result.stdout))
    first = table[table.layer == "0.weight"].iloc[0]
    assert first["mask_density"] == pytest.approx((model[0].weight != 0).float().mean().item())
    assert first["n_nodes"] == 64 + 12


def test_analyze_torch_prune_model_with_layer_filter_and_small_world(tmp_path):
    model = mlp((20,))
    prune.l1_unstructured(model[0], "weight", amount=0.7)
    torch.save(model.state_dict(), tmp_path / "pruned.pt")
    result = topo("analyze", str(tmp_path / "pruned.pt"), "--layers", "0.*", "--small-world", "2")
    assert result.returncode == 0, result.stderr
    assert "0.weight" in result.stdout and "2.weight" not in result.stdout
    assert "sigma" not in result.stdout  # a Linear layer is bipartite: σ and ω are for square graphs only


def test_analyze_run_directory_writes_csv_and_figure(recorded_run, tmp_path):
    result = topo("analyze", str(recorded_run), "--csv", str(tmp_path / "m.csv"), "--plot", str(tmp_path / "f5.png"))
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "m.csv")
    assert sorted(table.epoch.unique()) == [0, 1, 2]
    assert {f"lstm.weight_hh_l0[{gate}]" for gate in "ifgo"} <= set(table.graph)
    assert (tmp_path / "f5.png").stat().st_size > 10_000


def test_analyze_of_some_layers_merges_into_the_runs_table_and_never_drops_rows(recorded_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(recorded_run, run)
    assert topo("analyze", str(run)).returncode == 0
    everything = pd.read_csv(run / "graph_metrics.csv")
    assert set(everything.layer) == {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "fc.weight"}
    result = topo("analyze", str(run), "--layers", "fc.*", "--csv", str(tmp_path / "fc.csv"))
    assert result.returncode == 0, result.stderr
    assert set(pd.read_csv(tmp_path / "fc.csv").layer) == {"fc.weight"}
    merged = pd.read_csv(run / "graph_metrics.csv")
    assert len(merged) == len(everything)
    keys = ["epoch", "layer", "graph", "metric"]
    pd.testing.assert_frame_equal(merged.sort_values(keys).reset_index(drop=True)[keys],
                                  everything.sort_values(keys).reset_index(drop=True)[keys])


@pytest.mark.parametrize("where", ["missing-dir/x.csv", "a-directory"])
def test_unwritable_csv_fails_before_anything_is_rewritten(recorded_run, tmp_path, where):
    run = tmp_path / "run"
    shutil.copytree(recorded_run, run)
    (run / "graph_metrics.csv").unlink(missing_ok=True)
    (tmp_path / "a-directory").mkdir()
    result = topo("analyze", str(run), "--layers", "fc.*", "--csv", str(tmp_path / where))
    assert result.returncode == 1 and "--csv" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (run / "graph_metrics.csv").exists()


def test_plot_figures_from_run(recorded_run, tmp_path):
    for figure in ("3", "4", "5"):
        out = tmp_path / f"fig{figure}.png"
        result = topo("plot", str(recorded_run), "--figure", figure, "-o", str(out))
        assert result.returncode == 0, result.stderr
        assert out.exists()


def test_plot_over_seeds_merges_runs_that_differ_only_in_seed(recorded_run, tmp_path):
    names = ["mlp-adaptive-la1-k0.5-s0", "mlp-adaptive-la1-k0.5-s1", "mlp-adaptive-la1-k0.5-s1-transplant-e2"]
    for name in names:
        shutil.copytree(recorded_run, tmp_path / name)
        meta = json.loads((tmp_path / name / "run.json").read_text())
        (tmp_path / name / "run.json").write_text(json.dumps({**meta, "name": name}))
    runs = [str(tmp_path / n) for n in names]
    assert set(_stats_of(runs, over_seeds=True).run) == {"mlp-adaptive-la1-k0.5", "mlp-adaptive-la1-k0.5-transplant-e2"}
    assert set(_stats_of(runs).run) == set(names)
    result = topo("plot", *runs, "--figure", "3", "--over-seeds", "-o", str(tmp_path / "f3.png"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "f3.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "args,message",
    [
        (["analyze", "missing.pt"], "missing.pt: no such file"),
        (["analyze", "."], "not a topo run directory"),
        (["analyze", "corrupt.pt"], "corrupt.pt"),
        (["analyze", "bias.pt"], "no weight with two or more dimensions"),
        (["analyze", "model.pt", "--layers", "nothing*"], "no layer matches 'nothing*'"),
        (["train", "--model", "transformer"], "unknown model 'transformer'; valid: mlp"),
        (["train", "--method", "magic"], "unknown method 'magic'; valid: dense"),
        (["train", "--log-alpha", "0"], "--log-alpha must be > 0"),
        (["train", "--dataset", "mnist", "--data-dir", "nowhere"], "train-images-idx3-ubyte"),
        (["train", "--model", "lstm", "--dataset", "digits"], "'digits' does not fit lstm"),
        (["train", "--dataset", "text", "--data-dir", "none.txt"], "none.txt not found"),
        (["train", "--dataset", "digits", "--lr", "0"], "--lr must be > 0"),
        (["reproduce", "table2", "--dataset", "digits", "--val-max-batches", "0"], "--val-max-batches must be >= 1"),
    ],
)
def test_bad_input_exits_1_with_one_clear_line(tmp_path, args, message):
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 this is not a zip")
    torch.save({"bias": torch.zeros(3)}, tmp_path / "bias.pt")
    torch.save(mlp((4,)).state_dict(), tmp_path / "model.pt")
    result = topo(*args, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("topo: error:") and message in lines[0], result.stderr


def test_usage_error_exits_2():
    assert topo("analyze").returncode == 2
    assert topo("frobnicate").returncode == 2


def test_reproduce_table2_and_train_and_transplant_commands(tmp_path):
    result = topo("reproduce", "table2", "--model", "mlp-digits", "--epochs", "2", "--max-batches", "2",
                  "--batch-size", "32", "--seeds", "1", "--log-alpha", "0.5", "--k", "0.5", "--out",
                  str(tmp_path / "t2"))
    assert result.returncode == 0, result.stderr
    assert "| adaptive | 0.5 | 0.5 |" in (tmp_path / "t2" / "table2.md").read_text()
    for name in ("table2.csv", "table2_runs.csv", "table2_curves.csv"):
        assert not pd.read_csv(tmp_path / "t2" / name).empty
    for name in ("table2.png", "table2_curves.png"):
        assert (tmp_path / "t2" / name).stat().st_size > 10_000
    result = topo("train", "--dataset", "digits", "--epochs", "2", "--max-batches", "3", "--val-max-batches", "1",
                  "--widths", "32", "32", "32", "--adapt-every", "1", "--out", str(tmp_path), "--name", "run")
    assert result.returncode == 0, result.stderr
    train_config = RunReader(tmp_path / "run").meta["config"]["train"]
    assert train_config["widths"] == [32, 32, 32] and train_config["adapt_every"] == 1
    result = topo("transplant", str(tmp_path / "run"), "--epochs", "1")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run-transplant-e1" / "snapshots" / "epoch-0000.npz").exists()
    assert topo("reproduce", "table2", "--log-alpha", "0", "--out", str(tmp_path / "x")).returncode == 1


def test_analyze_run_directory_csv_dash_goes_to_stdout(recorded_run, tmp_path):
    result = topo("analyze", str(recorded_run), "--csv", "-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "-").exists()
    table = pd.read_csv(io.StringIO(result.stdout))
    assert list(table.columns) == ["run", "epoch", "layer", "graph", "metric", "value"]


@pytest.mark.parametrize("device", ["banana", "cuda:7"] + ([] if torch.cuda.is_available() else ["cuda"]))
def test_bad_device_is_one_line(recorded_run, device):
    for command in (["analyze", str(recorded_run)], ["train", "--dataset", "digits", "--epochs", "1"]):
        result = topo(*command, "--device", device)
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and device in result.stderr, result.stderr


@pytest.mark.slow
def test_demo_never_deletes_existing_runs(tmp_path):
    earlier = tmp_path / "demo" / "mlp-adaptive-la1-k0.5-s0"  # a user's earlier demo, where the demo writes
    earlier.mkdir(parents=True)
    (earlier / "run.json").write_text("{}")
    (earlier / "stats.csv").write_text("epoch\n0\n")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "demo").rglob("*") if p.is_file()}
    done = topo("demo", "--out", str(tmp_path / "demo"), "--epochs", "1")
    assert done.returncode == 0, done.stderr
    assert str(tmp_path / "demo-2") in done.stdout
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "demo").rglob("*") if p.is_file()}
    assert (tmp_path / "demo-2" / "report.html").is_file() and (tmp_path / "demo-2" / "figure5.png").is_file()


def checkpoint_layouts(tmp_path: Path) -> dict[str, Path]:
    """The layouts other projects ship, each holding a bidirectional 2-layer LSTM, a GRU and a Linear layer."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = nn.ModuleDict({"encoder": nn.ModuleDict({"lstm": nn.LSTM(5, 8, num_layers=2, bidirectional=True)}),
                           "gru": nn.GRU(4, 6), "head": nn.Linear(16, 3)})
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    paths = {}
    optimizer = torch.optim.Adam(model.parameters())
    torch.save({"step": 7, "model_state": state, "optimizer_state": optimizer.state_dict()},
               tmp_path / "nested.pt")
    paths["nested"] = tmp_path / "nested.pt"
    torch.save({"state_dict": {f"model.module.{k}": v for k, v in state.items()}, "optimizer_states": []},
               tmp_path / "last.ckpt")
    paths["lightning"] = tmp_path / "last.ckpt"
    save_file(state, tmp_path / "model.safetensors")
    paths["safetensors"] = tmp_path / "model.safetensors"
    shards = tmp_path / "sharded"
    shards.mkdir()
    names = list(state)
    weight_map = {n: f"model-{i % 2 + 1:05d}-of-00002.safetensors" for i, n in enumerate(names)}
    for file in set(weight_map.values()):
        save_file({n: state[n] for n, f in weight_map.items() if f == file}, shards / file)
    (shards / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    paths["sharded"] = shards
    return paths


@pytest.mark.parametrize("layout", ["nested", "lightning", "safetensors", "sharded"])
def test_analyze_checkpoints_in_every_layout(tmp_path, layout):
    path = checkpoint_layouts(tmp_path)[layout]
    result = topo("analyze", str(path), "--json", "--backbone", "magnitude:0.5")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    graphs = {row["graph"].split("model.module.")[-1]: row for row in rows}
    for direction in ("l0", "l1", "l0_reverse", "l1_reverse"):
        for gate in "ifgo":
            assert graphs[f"encoder.lstm.weight_hh_{direction}[{gate}]"]["kind"] == "recurrent"
            assert graphs[f"encoder.lstm.weight_ih_{direction}[{gate}]"]["kind"] == "recurrent-input"
    assert {graphs[f"gru.weight_hh_l0[{g}]"]["kind"] for g in "rzn"} == {"recurrent"}
    head = graphs["head.weight"]
    assert head["kind"] == "bipartite" and "bipartite_clustering" in head and "global_clustering" not in head
    assert head["mask_density"] == pytest.approx(0.5) and head["density"] == pytest.approx(0.5)
    assert "global_clustering" in graphs["gru.weight_hh_l0[r]"]
    assert "weights under" in result.stderr or "safetensors" in result.stderr


def test_dense_checkpoint_gets_a_notice_and_each_backbone_sparsifies_it(tmp_path):
    path = checkpoint_layouts(tmp_path)["nested"]
    plain = topo("analyze", str(path), "--csv", str(tmp_path / "plain.csv"))
    assert plain.returncode == 0 and "is dense" in plain.stderr
    assert pd.read_csv(tmp_path / "plain.csv")["mask_density"].eq(1.0).all()
    for backbone in ("magnitude:0.2", "disparity:0.3"):
        result = topo("analyze", str(path), "--csv", "-", "--backbone", backbone)
        assert result.returncode == 0 and "is dense" not in result.stderr
        table = pd.read_csv(io.StringIO(result.stdout))
        assert (table["mask_density"] < 1).all()
    overall = topo("analyze", str(path), "--csv", "-", "--backbone", "magnitude:0.2", "--global",
                   "--plot", str(tmp_path / "layers.png"))
    assert overall.returncode == 0, overall.stderr
    assert (tmp_path / "layers.png").stat().st_size > 10_000
    table = pd.read_csv(io.StringIO(overall.stdout)).drop_duplicates("layer")
    assert table["mask_density"].std() > 0  # the global threshold keeps more of some layers than others


@pytest.mark.parametrize("args,message", [
    (["--backbone", "magnitude:2"], "--backbone 'magnitude:2'"),
    (["--key", "nowhere"], "--key 'nowhere'"),
    (["--global"], "--global applies to the magnitude backbone"),
])
def test_bad_analysis_arguments_write_nothing(tmp_path, args, message):
    path = checkpoint_layouts(tmp_path)["nested"]
    result = topo("analyze", str(path), "--csv", str(tmp_path / "out.csv"), "--plot", str(tmp_path / "f.png"), *args)
    assert result.returncode == 1 and message in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "f.png").exists()


@pytest.mark.parametrize("name,content,message", [
    ("broken.safetensors", b"\xff\xff\xff\xff\xff\xff\xff\x7f{oops", "broken.safetensors: not a readable safetensors"),
    ("model.safetensors.index.json", b"{not json", "not a JSON index"),
    ("model.safetensors.index.json", b'{"weight_map": {"a.weight": "gone.safetensors"}}', "shard gone.safetensors"),
])
def test_bad_checkpoint_files_exit_1_with_one_line_and_write_nothing(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    result = topo("analyze", str(tmp_path / name), "--csv", str(tmp_path / "out.csv"))
    assert result.returncode == 1 and message in result.stderr and result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out.csv").exists()


def test_compare_runs_by_nnstd(tmp_path):
    torch.manual_seed(0)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        model = mlp((16,))
        sparsifier = Adaptive(model, density=0.3, seed=seed)
        with Recorder(tmp_path / name, sparsifier, checkpoint=False) as recorder:
            recorder.snapshot(0)
            recorder.snapshot(1)
    same = topo("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json")
    assert same.returncode == 0, same.stderr
    assert [row["nnstd"] for row in json.loads(same.stdout)["layers"]] == [0.0, 0.0]
    other = topo("compare", str(tmp_path / "a"), str(tmp_path / "c"))
    assert other.returncode == 0 and "NNSTD" in other.stdout
    bad = topo("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--epoch", "7")
    assert bad.returncode == 1 and "--epoch 7" in bad.stderr


def test_compare_reads_a_transformers_projections_each_from_the_residual_stream(tmp_path):
    """q's outputs permuted (heads reordered): q is the same up to permutation, and k, which reads the residual
    stream and not q's outputs, is unchanged; chaining q's matching into k's inputs would call k different."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    weights = {f"model.layers.0.self_attn.{p}_proj.weight": torch.randn(32, 32, generator=generator) *
               (torch.rand(32, 32, generator=generator) < 0.3) for p in "qkvo"}
    for name, tensors in (("a", weights), ("b", {**weights, "model.layers.0.self_attn.q_proj.weight":
                                                 weights["model.layers.0.self_attn.q_proj.weight"][torch.randperm(
                                                     32, generator=generator)]})):
        (tmp_path / name).mkdir()
        save_file(tensors, str(tmp_path / name / "model.safetensors"))
        (tmp_path / name / "config.json").write_text(json.dumps({"model_type": "llama", "num_attention_heads": 4,
                                                                 "hidden_size": 32}))
    result = topo("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json")
    assert result.returncode == 0, result.stderr
    assert [row["nnstd"] for row in json.loads(result.stdout)["layers"]] == [0.0] * 4


def test_compare_two_checkpoints_prints_nnstd_beside_its_random_baseline(tmp_path):
    torch.manual_seed(0)
    for name in ("a", "b"):
        model = mlp((64,), n_in=100)
        with torch.no_grad():
            for layer in (model[0], model[2]):
                layer.weight.mul_(torch.rand_like(layer.weight) < 0.1)
        torch.save(model.state_dict(), tmp_path / f"{name}.pt")
    result = topo("compare", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--random-samples", "5", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["layers"]
    assert [row["layer"] for row in rows] == ["0.weight", "2.weight"]
    for row in rows:  # two independent random masks: at their random baseline
        assert abs(row["nnstd"] - row["nnstd_random"]) < 0.05 and row["nnstd_random_std"] > 0
    text = topo("compare", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--random-samples", "3")
    assert "nnstd_random" in text.stdout


def test_analyze_a_checkpoint_against_a_null_model(tmp_path):
    torch.manual_seed(0)
    model = mlp((32,))
    with torch.no_grad():
        model[0].weight.mul_(torch.rand_like(model[0].weight) < 0.2)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    result = topo("analyze", str(tmp_path / "m.pt"), "--null", "degree", "--null-samples", "5", "--json")
    assert result.returncode == 0, result.stderr
    first = json.loads(result.stdout)[0]
    assert {"spectral_gap_z", "ramanujan_gap_null_mean", "weighted_spectral_gap"} <= set(first)
    assert "fan_in_gini_z" not in first  # the degree null keeps every fan-in: no z-score
    bad = topo("analyze", str(tmp_path / "m.pt"), "--null", "er", "--null-samples", "1")
    assert bad.returncode == 1 and "--null-samples must be >= 2" in bad.stderr


def test_analyze_run_reports_turnover_and_exploration(recorded_run, tmp_path):
    result = topo("analyze", str(recorded_run), "--csv", str(tmp_path / "m.csv"))
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "m.csv")
    assert {"turnover", "exploration"} <= set(table.metric)


class Custom:
    """A class a checkpoint may hold, which the safe loader refuses."""


@pytest.mark.parametrize("case", ["bad-suffix", "directory", "missing-folder", "custom-class", "plain-pickle",
                                  "text-as-pt", "negative-small-world", "backbone-on-run", "checkpoint-and-run"])
def test_every_bad_input_is_one_line_exit_1_and_writes_nothing(recorded_run, tmp_path, case):
    import pickle

    run = tmp_path / "run"
    shutil.copytree(recorded_run, run)
    (run / "graph_metrics.csv").unlink(missing_ok=True)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    checkpoint = str(recorded_run / "checkpoint.pt")
    if case == "custom-class":
        torch.save({"model": Custom()}, tmp_path / "custom.pt")
    elif case == "plain-pickle":
        with open(tmp_path / "plain.pkl", "wb") as handle:
            pickle.dump({"weights": [1, 2, 3]}, handle, protocol=4)
    elif case == "text-as-pt":
        (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    args, expected = {
        "bad-suffix": (["analyze", checkpoint, "--plot", str(tmp_path / "x.jpgx")], ".jpgx is not an image format"),
        "directory": (["analyze", checkpoint, "--plot", str(tmp_path)], "is a directory"),
        "missing-folder": (["analyze", checkpoint, "--plot", str(tmp_path / "nowhere" / "x.png")],
                           "no such directory"),
        "custom-class": (["analyze", str(tmp_path / "custom.pt")], "class tests.test_cli.Custom"),
        "plain-pickle": (["analyze", str(tmp_path / "plain.pkl")], "a pickle that is not a PyTorch checkpoint"),
        "text-as-pt": (["analyze", str(tmp_path / "notes.pt")], "not a PyTorch checkpoint"),
        "negative-small-world": (["analyze", str(run), "--small-world", "-1"], "--small-world must be >= 0"),
        "backbone-on-run": (["analyze", str(run), "--backbone", "magnitude:0.1"], "--backbone applies to checkpoints"),
        "checkpoint-and-run": (["analyze", checkpoint, str(run), "--csv", str(tmp_path / "t.csv")],
                               "checkpoint.pt: not a topo run directory"),
    }[case]
    result = topo(*args, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and expected in lines[0], result.stderr
    assert "\x1b[" not in result.stderr and "weights_only=False" not in result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, no folder made


def test_a_closed_pipe_is_one_line(recorded_run, tmp_path):
    command = [sys.executable, "-m", "topo.cli", "--quiet", "analyze", str(recorded_run / "checkpoint.pt"),
               "--csv", "-"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # the reader left at once, as `| head -0` does
    _, stderr = process.communicate(timeout=300)
    lines = stderr.strip().splitlines()  # the line saying where the weights were found, then the error
    assert process.returncode == 1 and "Traceback" not in stderr and lines[-1] == (
        "topo: error: output closed before it was all written (stdout piped into a command that ended)")


def test_global_options_go_after_the_command_and_warnings_are_one_line(tmp_path):
    model = mlp((8,))
    with torch.no_grad():
        model[0].weight.zero_()  # an empty layer: its metrics are undefined, which topo warns about
    torch.save(model.state_dict(), tmp_path / "m.pt")
    result = subprocess.run([sys.executable, "-m", "topo.cli", "analyze", str(tmp_path / "m.pt"), "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line.lower()]
    assert warnings and all(line.startswith("topo: warning: ") for line in warnings)
    assert "warnings.warn" not in result.stderr and ".py:" not in result.stderr


def test_help_and_usage_errors_import_nothing_heavy():
    code = ("import sys\nfrom topo.cli import main\n"
            "for argv in ([], ['analyze'], ['train', '--epochs', 'x'], ['report']):\n"
            "    try:\n        main([*argv, '--help'] if argv != ['train', '--epochs', 'x'] else argv)\n"
            "    except SystemExit:\n        pass\n"
            "heavy = sorted(m for m in ('torch', 'scipy', 'igraph', 'pandas', 'matplotlib') if m in sys.modules)\n"
            "print('HEAVY', heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr


def test_run_directory_files_honour_the_umask(recorded_run):
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("run.json", "stats.csv", "checkpoint.pt"):
        assert (recorded_run / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_small_world_is_reported_for_square_graphs_only(recorded_run):
    result = topo("analyze", str(recorded_run / "checkpoint.pt"), "--json", "--small-world", "2")
    assert result.returncode == 0, result.stderr
    rows = {row["graph"]: row for row in json.loads(result.stdout)}
    assert "sigma" in rows["lstm.weight_hh_l0[i]"] and "sigma" not in rows["fc.weight"]
