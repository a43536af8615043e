"""Table 1 models, data readers on small real-format files, the training loop, transplant, Table 2."""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import pytest
import torch

from topo.errors import ConfigError
from topo.experiments.data import (
    load_cifar10,
    load_dataset,
    load_mnist,
    load_mnist_5k,
    load_text,
    read_idx,
    shaped_for,
)
from topo.experiments.models import MODELS, get_model_spec
from topo.experiments.table import reproduce_table2, score, summarize_table, table2_configs, to_markdown
from topo.experiments.train import (
    TrainConfig,
    TrainResult,
    evaluate,
    fresh_run_dir,
    model_factory,
    resolve_widths,
    train,
)
from topo.experiments.transplant import transplant
from topo.record import RunReader, read_checkpoint
from topo.sparsity import nonzero_count


class FakeData:
    n_in, n_out = 784, 10
    image_shape = (3, 32, 32)


@pytest.mark.parametrize("name", ["mlp", "vae", "cnn", "resnet110", "lstm"])
@pytest.mark.parametrize("log_alpha", [0.5, 1.0])
def test_models_build_at_paper_sizes_and_budget_matched_widths(name, log_alpha):
    spec = get_model_spec(name)
    data = FakeData()
    if name == "cnn" or name == "resnet110":
        data.n_in = 3
    if name == "lstm":
        data.n_in = data.n_out = 83
    base_config = TrainConfig(model=name, method="dense")
    base_widths = resolve_widths(base_config, spec, data)
    with torch.device("meta"):
        dense = nonzero_count(model_factory(spec, data)(base_widths), 1.0)
    config = TrainConfig(model=name, method="adaptive", log_alpha=log_alpha)
    widths = resolve_widths(config, spec, data)
    with torch.device("meta"):
        sparse = nonzero_count(model_factory(spec, data)(widths), config.density)
    assert abs(sparse - dense) / dense <= 0.01
    assert widths[0] > base_widths[0]


@pytest.mark.parametrize("image_size,features", [((32, 32), 64 * 8 * 8), ((28, 28), 64 * 7 * 7), ((8, 8), 64 * 2 * 2)])
def test_cnn_flattens_the_last_feature_map_into_the_classifier(image_size, features):
    model = MODELS["cnn"].build([32, 64, 64], n_in=1, image_size=image_size)
    assert [m.out_channels for m in model if isinstance(m, torch.nn.Conv2d)] == [32, 64, 64]
    assert all(m.kernel_size == (3, 3) for m in model if isinstance(m, torch.nn.Conv2d))
    assert model[-1].in_features == features
    assert model(torch.randn(2, 1, *image_size)).shape == (2, 10)


def test_cnn_rejects_images_too_small_for_its_pooling():
    with pytest.raises(ConfigError, match="too small"):
        MODELS["cnn"].build([32, 64, 64], n_in=1, image_size=(3, 3))


def test_resnet110_has_110_layers():
    model = MODELS["resnet110"].build([16, 32, 64])
    convs = sum(1 for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert convs + 1 == 110
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_idx_reader_on_real_format_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    def idx(array):
        header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
        return header + array.tobytes()
    for prefix in ("train", "t10k"):
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx(images)))
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(idx(labels))
    data = load_mnist(tmp_path)
    # one of the 7 training images is held out for validation; the t10k files are the test split
    assert data.train_x.shape == (6, 784) and data.val_x.shape == (1, 784) and data.test_x.shape == (7, 784)
    assert sorted(data.train_y.tolist() + data.val_y.tolist()) == list(range(7))
    assert torch.allclose(data.test_x[3], torch.from_numpy(images[3].reshape(-1) / 255.0).float())
    (tmp_path / "bad").write_bytes(idx(images)[:100])
    with pytest.raises(ConfigError, match="truncated"):
        read_idx(tmp_path / "bad")


def test_cifar_binary_reader(tmp_path):
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        records = np.concatenate([rng.integers(0, 10, (4, 1)), rng.integers(0, 256, (4, 3072))], 1)
        records.astype(np.uint8).tofile(tmp_path / name)
    data = load_cifar10(tmp_path)
    assert data.train_x.shape == (18, 3, 32, 32) and data.val_x.shape == (2, 3, 32, 32)
    assert data.test_x.shape == (4, 3, 32, 32)
    assert abs(float(torch.cat([data.train_x, data.val_x]).mean())) < 1e-5  # standardised on all training images


def test_mnist_5k_reader_on_a_real_format_file(tmp_path):
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(10), 12)
    pixels = rng.integers(0, 256, (len(labels), 784))
    rows = "\n".join(",".join(map(str, [*p, label])) for p, label in zip(pixels, labels, strict=True))
    (tmp_path / "mnist_5k.csv.gz").write_bytes(gzip.compress(rows.encode()))
    data = load_mnist_5k(tmp_path, test_per_class=2)
    assert data.train_x.shape == (90, 784) and data.val_x.shape == (10, 784) and data.test_x.shape == (20, 784)
    assert np.bincount(data.test_y.numpy()).tolist() == [2] * 10
    seen = {tuple(x.tolist()) for x in torch.cat([data.train_x, data.val_x, data.test_x])}
    assert seen == {tuple((p / 255.0).astype(np.float32).tolist()) for p in pixels}
    (tmp_path / "mnist_5k.csv.gz").write_bytes(gzip.compress(b"1,2,3\n4,5,6"))
    with pytest.raises(ConfigError, match="784 pixels and a label"):
        load_mnist_5k(tmp_path)


@pytest.mark.parametrize("inputs,shape,n_in", [("vector", (64,), 64), ("image", (1, 8, 8), 1)])
def test_images_shaped_for_the_model(inputs, shape, n_in):
    data = shaped_for(load_dataset("digits"), inputs)
    assert data.train_x.shape[1:] == shape and data.n_in == n_in
    with pytest.raises(ConfigError, match="'digits' does not fit lstm, which needs a text corpus"):
        shaped_for(data, "tokens", "lstm")


def test_small_images_are_zero_padded_centred_for_the_resnets():
    data = load_dataset("digits")
    padded = shaped_for(data, "image", "resnet20", MODELS["resnet20"].image_size)
    assert padded.image_shape == (1, 32, 32) and padded.train_x.shape[1:] == (1, 32, 32)
    original = data.train_x.reshape(-1, 1, 8, 8)
    assert torch.equal(padded.train_x[:, :, 12:20, 12:20], original)
    assert padded.train_x.sum() == original.sum() and padded.test_x.shape[0] == data.test_x.shape[0]
    assert shaped_for(data, "image", "cnn", 4).image_shape == (1, 8, 8)


def test_channelwise_on_a_model_without_convolutions_names_every_convolutional_model():
    for check in (lambda: TrainConfig(model="mlp", dataset="digits", method="random-channelwise").validate(),
                  lambda: table2_configs(TrainConfig(model="mlp", dataset="digits"), [0.5], [0.25],
                                         methods=["random-channelwise"])):
        with pytest.raises(ConfigError, match="use it with cnn, resnet110, resnet20$"):
            check()


def test_cnn_trains_on_mnist_format_images(tmp_path):
    config = TrainConfig(model="cnn", dataset="digits", method="random-channelwise", epochs=1, batch_size=32,
                         max_batches=2)
    result = train(config, tmp_path / "run", progress=False)
    first = RunReader(result.run_dir).meta["layers"][0]
    assert first[0] == "0.weight" and first[1][1:] == [1, 3, 3]


def test_text_reader(tmp_path):
    (tmp_path / "text.txt").write_text("abcab" * 100)
    data = load_text(tmp_path, seq_len=10)
    assert data.vocabulary == "abc" and data.train_x.shape[1] == 10
    assert torch.equal(data.train_y[0, :-1], data.train_x[0, 1:])
    assert (len(data.train_x), len(data.val_x), len(data.test_x)) == (41, 4, 4)  # contiguous stretches


def test_validation_split_is_held_out_of_training_never_the_test_split():
    data = load_dataset("digits")
    rows = {split: {tuple(x.tolist()) for x in getattr(data, f"{split}_x")} for split in ("train", "val", "test")}
    assert len(rows["val"]) > 100 and not rows["val"] & rows["train"] and not rows["val"] & rows["test"]
    assert load_dataset("digits").val_y.tolist() == data.val_y.tolist()  # the same split every time


def test_missing_data_names_files_and_where_to_put_them(tmp_path):
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte.*--data-dir"):
        load_dataset("mnist", tmp_path / "none")
    with pytest.raises(ConfigError, match="data_batch_1.bin"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(ConfigError, match="valid: digits"):
        load_dataset("imagenet")


@pytest.mark.parametrize("method", ["dense", "wide-dense", "random-fixed", "adaptive", "pruning"])
def test_one_epoch_of_mlp_under_each_method(tmp_path, method):
    config = TrainConfig(model="mlp", dataset="digits", method=method, epochs=2, batch_size=64, max_batches=5)
    result = train(config, tmp_path / "run", progress=False)
    assert list(result.history.epoch) == [0, 1]
    assert not math.isnan(result.final["val_acc"])


@pytest.mark.parametrize("model,method", [("cnn", "random-channelwise"), ("vae", "adaptive"),
                                          ("resnet110", "adaptive"), ("lstm", "adaptive")])
def test_one_epoch_of_each_model(tmp_path, model, method):
    if model in ("cnn", "resnet110"):
        rng = np.random.default_rng(0)
        for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
            records = np.concatenate([rng.integers(0, 10, (8, 1)), rng.integers(0, 256, (8, 3072))], 1)
            records.astype(np.uint8).tofile(tmp_path / name)
        dataset, widths = "cifar10", None if model == "cnn" else [4, 8, 8]
    elif model == "lstm":
        (tmp_path / "text.txt").write_text("the quick brown fox jumps over the lazy dog. " * 60)
        dataset, widths = "text", [16]
    else:
        dataset, widths = "digits", [32, 4, 32]
    config = TrainConfig(model=model, dataset=dataset, method=method, epochs=1, batch_size=16, max_batches=2,
                         data_dir=str(tmp_path), widths=widths)
    result = train(config, tmp_path / "run", progress=False)
    assert len(result.history) == 1 and np.isfinite(result.final["val_loss"])


def test_transplant_keeps_mask_and_reinitialises_weights(tmp_path):
    config = TrainConfig(model="mlp", dataset="digits", method="adaptive", epochs=3, batch_size=64, max_batches=4,
                         adapt_every=1)
    parent = train(config, tmp_path / "parent", progress=False)
    child = transplant(parent.run_dir, tmp_path / "child", progress=False)
    parent_run, child_run = RunReader(parent.run_dir), RunReader(child.run_dir)
    final_mask = parent_run.masks(2)
    for epoch in child_run.epochs:
        for name, mask in child_run.masks(epoch).items():
            assert np.array_equal(mask, final_mask[name])
    assert child_run.meta["config"]["parent"].endswith("parent@2")
    parent_start = read_checkpoint(parent.run_dir / "checkpoint.pt")["model"]
    child_start = read_checkpoint(child.run_dir / "checkpoint.pt")["model"]
    assert not torch.equal(parent_start["1.weight"], child_start["1.weight"])


def test_table2_from_tiny_runs(tmp_path):
    base = TrainConfig(model="mlp", dataset="digits", epochs=2, batch_size=64, max_batches=3)
    runs = reproduce_table2(base, [0.5], [0.25, 0.5], seeds=2, out_dir=tmp_path, progress=False)
    assert set(runs.method) == {"dense", "random-fixed", "pruning", "wide-dense", "adaptive"}
    assert len(runs) == 2 * 6
    summary = summarize_table(runs)
    assert (summary["count"] == 2).all()
    markdown = to_markdown(summary, "% error")
    assert "| adaptive | 0.5 | 0.25 |" in markdown
    assert set(runs.label) == {"dense", "random-fixed", "pruning", "wide-dense", "adaptive k=0.25", "adaptive k=0.5"}


def test_table2_reuses_finished_runs_and_resumes_interrupted_ones(tmp_path):
    base = TrainConfig(model="mlp", dataset="digits", epochs=3, batch_size=64, max_batches=3)
    first = reproduce_table2(base, [0.5], [0.25], seeds=1, out_dir=tmp_path, progress=False)
    finished = tmp_path / "mlp-dense-s0"
    stamps = {p.name: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()}
    interrupted = tmp_path / "mlp-random-fixed-la0.5-s0"
    (interrupted / "snapshots" / "epoch-0002.npz").unlink()
    checkpoint = torch.load(interrupted / "checkpoint.pt", weights_only=True)
    run_json = RunReader(interrupted).meta
    del run_json["finished"]
    (interrupted / "run.json").write_text(json.dumps(run_json))
    checkpoint["epoch"] = 1
    torch.save(checkpoint, interrupted / "checkpoint.pt")

    again = reproduce_table2(base, [0.5], [0.25], seeds=1, out_dir=tmp_path, progress=False)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()}
    assert first.score.tolist()[0] == again.score.tolist()[0]
    assert RunReader(interrupted).epochs == [0, 1, 2]
    assert RunReader(interrupted).meta["finished"]["epochs"] == 3


def test_early_stopping_marks_the_run_finished(tmp_path):
    # Steps of 1e-12 are below float32 resolution: the weights, hence the validation loss, never change.
    config = TrainConfig(model="mlp", dataset="digits", method="dense", epochs=50, batch_size=64, max_batches=1,
                         lr=1e-12, patience=1)
    result = train(config, tmp_path / "run", progress=False)
    info = RunReader(result.run_dir).meta["finished"]
    assert info == {"at": info["at"], "epochs": 2, "reason": "early stopping"}
    again = train(config, tmp_path / "run", resume=True, progress=False)
    assert len(again.history) == info["epochs"]

    interrupted = tmp_path / "run"  # as if killed after epoch 0: resuming must remember epoch 0's loss
    meta = RunReader(interrupted).meta
    del meta["finished"]
    (interrupted / "run.json").write_text(json.dumps(meta))
    (interrupted / "snapshots" / "epoch-0001.npz").unlink()
    checkpoint = torch.load(interrupted / "checkpoint.pt", weights_only=True)
    torch.save({**checkpoint, "epoch": 0}, interrupted / "checkpoint.pt")
    resumed = train(config, interrupted, resume=True, progress=False)
    assert len(resumed.history) == 2 and RunReader(interrupted).meta["finished"]["reason"] == "early stopping"


@pytest.mark.parametrize("name,model,dataset", [("mlp-mnist", "mlp", "mnist"), ("cnn-cifar10", "cnn", "cifar10"),
                                                ("mlp-fashion-mnist", "mlp", "fashion-mnist"), ("lstm", "lstm", None)])
def test_model_dataset_names_of_table1(name, model, dataset):
    config = TrainConfig(model=name)
    assert (config.model, config.dataset) == (model, dataset)


def test_model_dataset_name_conflicting_with_dataset_is_rejected():
    with pytest.raises(ConfigError, match="names dataset 'mnist' but --dataset is 'digits'"):
        TrainConfig(model="mlp-mnist", dataset="digits")
    with pytest.raises(ConfigError, match="unknown model 'bert-mnist'"):
        TrainConfig(model="bert-mnist").validate()


def test_bad_config_is_rejected():
    with pytest.raises(ConfigError, match="valid: mlp"):
        TrainConfig(model="bert").validate()
    with pytest.raises(ConfigError, match="log-alpha"):
        TrainConfig(log_alpha=-1).validate()
    with pytest.raises(ConfigError, match="--val-max-batches must be >= 1, got 0"):
        TrainConfig(val_max_batches=0).validate()
    with pytest.raises(ConfigError, match="--lr must be > 0"):
        TrainConfig(lr=0.0).validate()
    with pytest.raises(ConfigError, match="pruning after epoch 0 of 1 leaves no epoch to fine-tune"):
        TrainConfig(method="pruning", epochs=1).validate()
    with pytest.raises(ConfigError, match="pruning after epoch 4 of 5"):
        TrainConfig(method="pruning", epochs=5, prune_after=[1, 4]).validate()
    TrainConfig(method="pruning", epochs=2).validate()


def test_validation_cap_evaluates_only_the_first_batches():
    spec = get_model_spec("mlp")
    data = load_dataset("digits")
    model = model_factory(spec, data)([16, 16, 16])
    cpu = torch.device("cpu")
    first, first_acc = evaluate(spec, model, data.test_x[:200], data.test_y[:200], cpu)
    capped, capped_acc = evaluate(spec, model, data.test_x, data.test_y, cpu, batch_size=100, max_batches=2)
    whole, _ = evaluate(spec, model, data.test_x, data.test_y, cpu, batch_size=100)
    assert (capped, capped_acc) == (pytest.approx(first), pytest.approx(first_acc)) and whole != pytest.approx(first)


def test_resume_refuses_a_run_of_another_configuration_and_names_the_fields(tmp_path):
    config = TrainConfig(model="mlp", dataset="digits", method="dense", epochs=1, batch_size=64, max_batches=2)
    train(config, tmp_path / "run", progress=False)
    other = replace(config, epochs=3, lr=1e-2, max_batches=3)
    with pytest.raises(ConfigError, match=r"lr: 0\.001 → 0\.01.*max_batches: 2 → 3"):
        train(other, tmp_path / "run", resume=True, progress=False)
    assert len(RunReader(tmp_path / "run").epochs) == 1
    fewer = TrainConfig(**{**asdict(config), "epochs": 3})
    train(fewer, tmp_path / "three", progress=False)
    with pytest.raises(ConfigError, match="epochs: 3 → 1"):
        train(config, tmp_path / "three", resume=True, progress=False)


def test_more_epochs_extend_a_finished_run(tmp_path):
    config = TrainConfig(model="mlp", dataset="digits", method="adaptive", epochs=1, batch_size=64, max_batches=2)
    first = train(config, tmp_path / "run", progress=False)
    longer = train(replace(config, epochs=3), tmp_path / "run", resume=True, progress=False)
    assert len(first.history) == 1 and len(longer.history) == 3
    meta = RunReader(tmp_path / "run").meta
    assert meta["finished"]["epochs"] == 3 and meta["config"]["epochs"] == 3


def test_fresh_dir_trains_another_configuration_beside_the_old_run(tmp_path):
    config = TrainConfig(model="mlp", dataset="digits", method="dense", epochs=1, batch_size=64, max_batches=2)
    train(config, tmp_path / "run", progress=False)
    other = replace(config, lr=1e-2)
    target = fresh_run_dir(tmp_path / "run", other)
    assert target == tmp_path / "run-2"
    train(other, target, resume=True, progress=False)
    assert fresh_run_dir(tmp_path / "run", other) == tmp_path / "run-2"  # found again, reused
    assert fresh_run_dir(tmp_path / "run", config) == tmp_path / "run"


def test_table2_scores_the_test_split_at_the_epoch_validation_selects(tmp_path):
    history = pd.DataFrame({"epoch": [0, 1, 2], "val_loss": [0.9, 0.5, 0.7], "val_acc": [0.6, 0.8, 0.7],
                            "test_loss": [1.0, 0.6, 0.4], "test_acc": [0.5, 0.75, 0.9]})
    result = TrainResult(tmp_path, history, [8])
    assert score(result, "classify") == pytest.approx(25.0)  # epoch 1, not the best test epoch 2
    assert score(result, "vae") == pytest.approx(0.6)


def test_welch_interval_matches_scipy_and_flags_real_gaps():
    from scipy.stats import ttest_ind

    from topo.experiments.table import welch_interval

    a, b = [11.2, 11.5, 11.1, 11.4, 11.3], [11.9, 12.2, 11.8, 12.0, 12.1]
    difference, low, high = welch_interval(a, b)
    result = ttest_ind(a, b, equal_var=False)
    interval = result.confidence_interval(0.95)
    assert difference == pytest.approx(np.mean(a) - np.mean(b))
    assert (low, high) == (pytest.approx(interval.low), pytest.approx(interval.high)) and high < 0
    assert np.isnan(welch_interval([1.0], [1.0, 2.0])[1])


def test_table2_with_dst_methods_and_differences_to_random_fixed(tmp_path):
    base = TrainConfig(model="mlp", dataset="digits", epochs=2, batch_size=64, max_batches=3)
    runs = reproduce_table2(base, [1.0], [0.5], seeds=2, out_dir=tmp_path, progress=False,
                            methods=["random-fixed", "set", "rigl", "snip", "adaptive"])
    assert sorted(runs.method.unique()) == ["adaptive", "random-fixed", "rigl", "set", "snip"]
    summary = summarize_table(runs)
    rows = summary.set_index("method")
    assert np.isnan(rows.loc["random-fixed", "vs_random_fixed"])
    assert rows.loc["set", "ci_low"] <= rows.loc["set", "vs_random_fixed"] <= rows.loc["set", "ci_high"]
    assert "− random fixed [95 % CI]" in to_markdown(summary, "test % error")
    with pytest.raises(ConfigError, match="unknown method"):
        reproduce_table2(base, [1.0], [0.5], seeds=1, out_dir=tmp_path, progress=False, methods=["lottery"])


def test_rewound_transplant_starts_from_the_parents_initial_weights(tmp_path):
    config = TrainConfig(model="mlp", dataset="digits", method="set", epochs=2, batch_size=64, max_batches=3)
    parent = train(config, tmp_path / "parent", progress=False)
    child = transplant(parent.run_dir, init="rewind", progress=False)
    assert child.run_dir.name.endswith("-rewind")
    start_parent = RunReader(parent.run_dir).initial_state()
    start_child = RunReader(child.run_dir).initial_state()
    final_masks = RunReader(parent.run_dir).masks(1)
    for name, weight in start_parent.items():
        expected = weight * torch.from_numpy(final_masks[name]) if name in final_masks else weight
        assert torch.equal(start_child[name], expected), name
    fresh = transplant(parent.run_dir, progress=False)
    first = next(iter(final_masks))
    assert not torch.equal(RunReader(fresh.run_dir).initial_state()[first], start_child[first])


@pytest.mark.parametrize("method", ["rigl", "pruning"])
def test_a_run_whose_schedule_follows_the_epoch_count_is_not_extended(tmp_path, method):
    config = TrainConfig(model="mlp", dataset="digits", method=method, epochs=2, batch_size=64, max_batches=2)
    train(config, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="cannot extend from 2 to 3 epochs: .* is set from the number of epochs"):
        train(replace(config, epochs=3), tmp_path / "run", resume=True, progress=False)
    train(replace(config, method="set"), tmp_path / "set", progress=False)  # SET adapts every epoch: extendable
    extended = train(replace(config, method="set", epochs=3), tmp_path / "set", resume=True, progress=False)
    assert len(extended.history) == 3
    fixed = replace(config, method="pruning", prune_after=[0]) if method == "pruning" else None
    if fixed is not None:  # an explicit pruning epoch does not move with the epoch count
        train(fixed, tmp_path / "fixed", progress=False)
        assert len(train(replace(fixed, epochs=3), tmp_path / "fixed", resume=True, progress=False).history) == 3


@pytest.mark.parametrize("method", ["set", "adaptive", "pruning"])
def test_each_epoch_is_scored_and_recorded_before_its_topology_change(tmp_path, monkeypatch, method):
    import topo.experiments.train as train_module

    evaluated = []
    real = train_module.evaluate

    def spy(spec, model, x, y, device, **kwargs):
        if x is session_data["val"]:
            evaluated.append({n: m.clone() for n, m in session_data["sparsifier"].masks.items()})
        return real(spec, model, x, y, device, **kwargs)

    session_data = {}
    real_setup = train_module.setup

    def keep(*args, **kwargs):
        session = real_setup(*args, **kwargs)
        session_data.update(val=session.data.val_x, sparsifier=session.sparsifier)
        return session

    monkeypatch.setattr(train_module, "evaluate", spy)
    monkeypatch.setattr(train_module, "setup", keep)
    extra = {"prune_after": [0]} if method == "pruning" else {"adapt_every": 1}
    config = TrainConfig(model="mlp", dataset="digits", method=method, epochs=3, batch_size=64, max_batches=4,
                         **extra)
    result = train(config, tmp_path / "run", progress=False)
    reader = RunReader(tmp_path / "run")
    assert len(evaluated) == 3
    for epoch, masks in enumerate(evaluated):  # the snapshot holds the masks that were scored
        for name, mask in reader.masks(epoch).items():
            np.testing.assert_array_equal(mask, masks[name].numpy(), err_msg=f"{name} epoch {epoch}")
    assert session_data["sparsifier"].epochs_done == 2  # changes after epochs 0 and 1, none after the last
    if method != "adaptive":  # the adaptive rule changes at the first step after end_epoch, inside the next epoch
        assert any(not np.array_equal(reader.masks(0)[n], reader.masks(1)[n]) for n in reader.layers)
    state = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    for name, mask in reader.masks(2).items():
        np.testing.assert_array_equal(state["masks"][name].numpy(), mask)
    spec = get_model_spec("mlp")
    model = model_factory(spec, load_dataset("digits"))(result.widths)
    model.load_state_dict(state["model"])
    data = shaped_for(load_dataset("digits"), spec.inputs, "mlp")
    val_loss, _ = real(spec, model, data.val_x, data.val_y, torch.device("cpu"))
    assert val_loss == pytest.approx(result.final["val_loss"], rel=1e-6)  # the final checkpoint is what was scored


def test_table2_never_selects_an_epoch_before_the_last_pruning(tmp_path):
    config = TrainConfig(model="mlp", dataset="digits", method="pruning", epochs=4, batch_size=64, max_batches=3,
                         prune_after=[1])
    result = train(config, tmp_path / "run", progress=False)
    assert result.history.at_target.tolist() == [0.0, 0.0, 1.0, 1.0]
    history = result.history.copy()
    history.loc[history.epoch == 0, "val_loss"] = -1.0  # the dense epochs are never chosen, however good
    from topo.experiments.table import selected_epoch

    assert int(selected_epoch(history).epoch) in (2, 3)
    with pytest.raises(ConfigError, match="never reached its target density"):
        selected_epoch(history.assign(at_target=0.0))


def test_the_model_names_the_cli_offers_are_the_models():
    from topo.experiments import DATASET_NAMES, MODEL_NAMES, TRAIN_METHODS
    from topo.experiments.data import DATASETS
    from topo.experiments.train import TRAIN_METHODS as TRAINED

    assert tuple(MODELS) == MODEL_NAMES and DATASETS == DATASET_NAMES and TRAIN_METHODS == TRAINED
    assert sum(1 for m in MODELS["resnet20"].build([16, 32, 64]).modules() if isinstance(m, torch.nn.Conv2d)) == 19
