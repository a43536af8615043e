"""The gpt model, the one-shot arm and the one-shot pruning row (topo.experiments.oneshot, .pruning_row)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from topo.cli import main
from topo.errors import CheckpointError, ConfigError
from topo.experiments.data import load_dataset
from topo.experiments.models import get_model_spec
from topo.experiments.oneshot import ONESHOT_FILE, calibration_sequences, continued_run, oneshot_run
from topo.experiments.pruning_row import reproduce_pruning_row, summarize_row
from topo.experiments.table import welch_interval
from topo.experiments.train import TrainConfig, evaluate, model_factory, resolve_widths, train
from topo.experiments.transplant import transplant
from topo.record import RunReader
from topo.record.training_state import read_checkpoint
from topo.sparsity import prune_oneshot
from topo.sparsity.masks import select_parameters

pytest.importorskip("transformers")

TINY = {"model": "gpt", "widths": [16], "epochs": 1, "max_batches": 2, "val_max_batches": 1}


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    return train(TrainConfig(method="dense", **TINY), tmp_path_factory.mktemp("gpt") / "dense", progress=False)


def test_gpt_masks_exactly_the_linear_layers_of_its_blocks():
    data = load_dataset("sonnets")
    model = model_factory(get_model_spec("gpt"), data)([32])
    sparse = select_parameters(model)
    assert len(sparse) == 4 * 7 and all(name.startswith("model.layers.") for name in sparse)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied: the head is the embedding table
    config = model.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (4, 2, 88)
    logits = model(data.train_x[:2])
    assert logits.shape == (2, data.train_x.shape[1], len(data.vocabulary))
    assert torch.equal(model(input_ids=data.train_x[:2]), logits)
    with pytest.raises(ConfigError, match="width 30 is not a multiple of its 4 heads"):
        model_factory(get_model_spec("gpt"), data)([30])


def test_same_widths_turn_budget_matching_off():
    data = load_dataset("sonnets")
    spec = get_model_spec("gpt")
    matched = TrainConfig(model="gpt", method="random-fixed", widths=[32])
    same = TrainConfig(model="gpt", method="random-fixed", widths=[32], match_budget=False)
    assert resolve_widths(same, spec, data) == [32]
    assert same.run_name() == "gpt-random-fixed-la0.5-same-s0" and "-same" not in matched.run_name()
    with pytest.raises(ConfigError, match="gpt: budget matching would give widths its attention heads cannot"):
        matched.validate()
    mlp = TrainConfig(model="mlp", dataset="digits", method="random-fixed", match_budget=False)
    assert resolve_widths(mlp, get_model_spec("mlp"), load_dataset("digits")) == [64, 64, 64]
    assert resolve_widths(TrainConfig(model="mlp", dataset="digits", method="random-fixed"), get_model_spec("mlp"),
                          load_dataset("digits")) != [64, 64, 64]


def test_calibration_sequences_are_seeded_training_sequences_without_repeats():
    data = load_dataset("sonnets")
    drawn = calibration_sequences(data, 16, seed=3)
    assert len(drawn) == 16 and all(s.shape == (1, data.train_x.shape[1]) for s in drawn)
    rows = {tuple(s[0].tolist()) for s in drawn}
    assert len(rows) == 16 and rows <= {tuple(r.tolist()) for r in data.train_x}
    assert all(torch.equal(a, b) for a, b in zip(drawn, calibration_sequences(data, 16, seed=3), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(drawn, calibration_sequences(data, 16, seed=4), strict=True))
    assert len(calibration_sequences(data, 10**6, seed=0)) == len(data.train_x)
    with pytest.raises(ConfigError, match="not text"):
        calibration_sequences(load_dataset("digits"), 4, seed=0)


def test_oneshot_arm_prunes_the_final_weights_scores_them_and_fine_tunes_the_mask_fixed(dense_run, tmp_path):
    result = oneshot_run(dense_run.run_dir, tmp_path / "arm", method="wanda", structure="2:4", samples=6,
                         finetune_epochs=1)
    # Restated: the dense run's final weights, pruned by prune_oneshot on the same calibration, evaluated.
    data = load_dataset("sonnets")
    spec = get_model_spec("gpt")
    model = model_factory(spec, data)([16])
    model.load_state_dict(read_checkpoint(dense_run.run_dir / "checkpoint.pt")["model"])
    dense_test = evaluate(spec, model, data.test_x, data.test_y, torch.device("cpu"), max_batches=1)[0]
    masks = prune_oneshot(model, "wanda", calibration_sequences(data, 6, seed=0), structure="2:4", progress=False)
    pruned_test = evaluate(spec, model, data.test_x, data.test_y, torch.device("cpu"), max_batches=1)[0]
    assert result.scores["dense_test_loss"] == pytest.approx(dense_test)
    assert result.scores["pruned_test_loss"] == pytest.approx(pruned_test) != pytest.approx(dense_test)
    reader = RunReader(result.run_dir)
    assert reader.meta["config"]["parent"].endswith("dense@0 wanda 2:4")
    assert reader.meta["config"]["train"]["lr"] == pytest.approx(1e-4)  # a tenth of the dense run's
    for epoch in reader.epochs:  # the mask stays the pruning's
        recorded = reader.masks(epoch)
        assert set(recorded) == set(masks)
        assert all(np.array_equal(recorded[name], mask.numpy()) for name, mask in masks.items())
    final = read_checkpoint(result.run_dir / "checkpoint.pt")["model"]
    assert all(not final[name][~mask].any() for name, mask in masks.items())
    assert not torch.equal(final["model.layers.0.mlp.up_proj.weight"], model.model.layers[0].mlp.up_proj.weight)
    stored = json.loads((result.run_dir / ONESHOT_FILE).read_text())
    assert stored["scores"] == result.scores and stored["calibration_samples"] == 6
    stamp = (result.run_dir / ONESHOT_FILE).stat().st_mtime_ns
    again = oneshot_run(dense_run.run_dir, tmp_path / "arm", method="wanda", structure="2:4", samples=6,
                        finetune_epochs=1)
    assert again.scores == result.scores and (result.run_dir / ONESHOT_FILE).stat().st_mtime_ns == stamp


def test_oneshot_arm_refuses_what_it_cannot_prune(dense_run, tmp_path):
    with pytest.raises(ConfigError, match="density"):
        oneshot_run(dense_run.run_dir, tmp_path / "a", method="magnitude", density=1.5)
    with pytest.raises(ConfigError, match="fine-tuning epochs"):
        oneshot_run(dense_run.run_dir, tmp_path / "a", method="magnitude", density=0.5, finetune_epochs=0)
    sparse = train(TrainConfig(method="random-fixed", match_budget=False, **TINY), tmp_path / "sparse",
                   progress=False)
    with pytest.raises(ConfigError, match="starts from a dense run, this one is random-fixed"):
        oneshot_run(sparse.run_dir, tmp_path / "b", method="magnitude", density=0.5)
    meta_path = dense_run.run_dir / "run.json"
    meta = json.loads(meta_path.read_text())
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "run.json").write_text(json.dumps({**meta, "finished": False}))
    with pytest.raises(CheckpointError, match="has not finished"):
        oneshot_run(unfinished, tmp_path / "c", method="magnitude", density=0.5)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_the_dense_control_continues_the_final_weights_unpruned_for_the_fine_tuning_epochs(dense_run, tmp_path):
    result = continued_run(dense_run.run_dir, tmp_path / "more", epochs=2)
    reader = RunReader(result.run_dir)
    start = reader.initial_state()
    final = read_checkpoint(dense_run.run_dir / "checkpoint.pt")["model"]
    assert start.keys() == final.keys() and all(torch.equal(start[k], final[k]) for k in final)
    config = reader.meta["config"]
    assert config["parent"].endswith("dense@0 continued") and config["epochs"] == 2
    assert config["train"]["lr"] == pytest.approx(1e-4) and config["train"]["method"] == "dense"
    assert all(np.asarray(mask).all() for mask in reader.masks(reader.epochs[-1]).values())
    again = continued_run(dense_run.run_dir, tmp_path / "more", epochs=2)
    assert again.history.equals(result.history)  # read back
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        continued_run(dense_run.run_dir, tmp_path / "none", epochs=0)


def test_transplant_takes_a_learning_rate_and_resumes(dense_run, tmp_path):
    arm = oneshot_run(dense_run.run_dir, tmp_path / "arm", method="magnitude", density=0.5, finetune_epochs=1)
    moved = transplant(arm.run_dir, tmp_path / "moved", epochs=2, lr=1e-3, resume=True, progress=False)
    meta = RunReader(moved.run_dir).meta["config"]
    assert meta["train"]["lr"] == 1e-3 and meta["epochs"] == 2 and meta["train"]["seed"] == 1
    again = transplant(arm.run_dir, tmp_path / "moved", epochs=2, lr=1e-3, resume=True, progress=False)
    assert again.history.equals(moved.history)


def test_summary_compares_every_arm_with_random_fixed_trained():
    runs = pd.DataFrame({
        "arm": ["random-fixed"] * 3 + ["wanda d0.5"] * 3 + ["random-fixed"] * 2,
        "stage": ["trained"] * 3 + ["as pruned"] * 3 + ["transplant"] * 2,
        "seed": [0, 1, 2, 0, 1, 2, 0, 1], "score": [2.0, 2.2, 2.1, 2.5, 2.4, 2.9, 2.05, 2.15], "run_dir": ""})
    summary = summarize_row(runs).set_index(["arm", "stage"])
    reference = summary.loc[("random-fixed", "trained")]
    assert reference["mean"] == pytest.approx(2.1) and math.isnan(reference["vs_random_fixed"])
    wanda = summary.loc[("wanda d0.5", "as pruned")]
    expected = welch_interval([2.5, 2.4, 2.9], [2.0, 2.2, 2.1])
    assert (wanda["vs_random_fixed"], wanda["ci_low"], wanda["ci_high"]) == pytest.approx(expected)
    assert wanda["count"] == 3 and wanda["std"] == pytest.approx(np.std([2.5, 2.4, 2.9], ddof=1))
    moved = summary.loc[("random-fixed", "transplant")]
    assert moved["vs_random_fixed"] == pytest.approx(2.1 - 2.1)


def test_pruning_row_end_to_end_through_the_command_line(tmp_path, capsys):
    out = tmp_path / "row"
    code = main(["reproduce", "pruning", "--model", "gpt", "--widths", "16", "--epochs", "1", "--max-batches", "1",
                 "--val-max-batches", "1", "--seeds", "1", "--methods", "random-fixed", "--pruners", "magnitude",
                 "--finetune-epochs", "1", "--out", str(out), "--quiet"])
    assert code == 0
    runs = pd.read_csv(out / "pruning_runs.csv")
    assert sorted(zip(runs.arm, runs.stage, strict=True)) == sorted([
        ("dense", "trained"), ("dense", "fine-tuned"), ("random-fixed", "trained"), ("random-fixed", "transplant"),
        *((arm, stage) for arm in ("magnitude d0.5", "magnitude 2:4")
          for stage in ("as pruned", "fine-tuned", "transplant"))])
    assert (out / "pruning.png").stat().st_size > 0 and "| magnitude 2:4 | as pruned |" in capsys.readouterr().out
    two_four = RunReader(out / "runs" / "gpt-oneshot-magnitude-2of4-s0")
    mask = two_four.masks(0)["model.layers.1.mlp.down_proj.weight"]
    assert (mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all()
    sparse = RunReader(out / "runs" / "gpt-random-fixed-la0.30103-same-s0")
    assert sparse.meta["config"]["widths"] == [16]
    first = runs.set_index(["arm", "stage"])["score"]
    again = reproduce_pruning_row(TrainConfig(**{**TINY, "max_batches": 1}, k=0.25), 1, out / "runs",
                                  methods=["random-fixed"], pruners=["magnitude"], finetune_epochs=1, progress=False)
    assert again.set_index(["arm", "stage"])["score"].to_dict() == first.to_dict()  # read back, not retrained
    with pytest.raises(ConfigError, match="not sparse training methods"):
        reproduce_pruning_row(TrainConfig(**TINY), 1, out / "x", methods=["dense"])
    with pytest.raises(ConfigError, match="density must be in"):
        reproduce_pruning_row(TrainConfig(**TINY), 1, out / "x", density=1.0)
