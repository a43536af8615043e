"""Checkpoints in the layouts other projects ship: nested dicts, safetensors, sharded indexes, Lightning, DDP."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from topo.errors import CheckpointError, ConfigError
from topo.record import load_masks, open_checkpoint


def speaker_encoder() -> nn.Module:
    """A 3-layer LSTM with a projection, like the published speaker encoders."""
    return nn.ModuleDict({"lstm": nn.LSTM(40, 32, num_layers=3, batch_first=True), "linear": nn.Linear(32, 16)})


def save_with_optimizer(path, model: nn.Module) -> None:
    optimizer = torch.optim.Adam(model.parameters())
    model["linear"](torch.randn(2, 32)).sum().backward()
    optimizer.step()
    torch.save({"step": 1000, "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict()}, path)


def test_weights_found_at_any_depth_never_in_optimizer_state(tmp_path):
    model = speaker_encoder()
    save_with_optimizer(tmp_path / "encoder.pt", model)
    source = open_checkpoint(tmp_path / "encoder.pt")
    assert "'model_state'" in source.description
    assert set(source.names) == {n for n, p in model.named_parameters() if p.dim() >= 2}
    torch.save({"run": {"ema": {"weights": model.state_dict()}}, "optimizer": {"x": {"y": torch.randn(99, 99)}}},
               tmp_path / "deep.pt")
    deep = open_checkpoint(tmp_path / "deep.pt")
    assert "run/ema/weights" in deep.description and "lstm.weight_hh_l2" in deep.names


@pytest.mark.parametrize("key", ["opt_state_dict", "o", "training/state"])
def test_optimizer_state_keyed_by_parameter_names_is_recognised_by_its_structure(tmp_path, key):
    # torch.distributed.checkpoint.state_dict.get_optimizer_state_dict's layout: slots keyed by parameter names.
    # The first layer's two Adam slots hold more values than the whole model: only the structure tells them apart.
    model = nn.Sequential(nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 2))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 100)).sum().backward()
    optimizer.step()
    names = dict(model.named_parameters())
    by_name = {"state": {n: optimizer.state[p] for n, p in names.items()},
               "param_groups": [{**g, "params": list(names)} for g in optimizer.state_dict()["param_groups"]]}
    node: dict = by_name
    for part in reversed(key.split("/")):
        node = {part: node}
    torch.save({"model": model.state_dict(), **node}, tmp_path / "dcp.pt")
    source = open_checkpoint(tmp_path / "dcp.pt")
    assert source.names == ["0.weight", "2.weight"] and "'model'" in source.description


def test_key_picks_the_mapping_explicitly(tmp_path):
    small, large = nn.Linear(3, 2), nn.Linear(30, 20)
    torch.save({"student": {"net": small.state_dict()}, "teacher": large.state_dict()}, tmp_path / "two.pt")
    assert open_checkpoint(tmp_path / "two.pt").shape("weight") == (20, 30)  # the largest, by default
    chosen = open_checkpoint(tmp_path / "two.pt", key="student/net")
    assert chosen.shape("weight") == (2, 3) and "--key 'student/net'" in chosen.description
    with pytest.raises(ConfigError, match="no key 'pupil'"):
        open_checkpoint(tmp_path / "two.pt", key="pupil")


def test_lightning_checkpoint_and_dataparallel_prefixes(tmp_path):
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    state = {f"model.module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "global_step": 99, "pytorch-lightning_version": "2.4.0", "state_dict": state,
                "optimizer_states": [{"state": {0: {"exp_avg": torch.randn(6, 8)}}, "param_groups": []}],
                "lr_schedulers": []}, tmp_path / "last.ckpt")
    source = open_checkpoint(tmp_path / "last.ckpt")
    assert source.names == ["model.module.0.weight", "model.module.2.weight"]


def test_safetensors_single_file_read_lazily(tmp_path):
    model = speaker_encoder()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    for path in (tmp_path / "model.safetensors", tmp_path):
        source = open_checkpoint(path)
        assert "lstm.weight_ih_l1" in source.names and source.shape("linear.weight") == (16, 32)
        layer = source.load("lstm.weight_hh_l0")
        assert torch.equal(layer.weight, model.state_dict()["lstm.weight_hh_l0"]) and bool(layer.mask.all())


def sharded(tmp_path, model: nn.Module, shards: int = 3):
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    names = list(state)
    weight_map = {}
    for index in range(shards):
        file = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[index::shards]}
        save_file(part, tmp_path / file)
        weight_map.update({n: file for n in part})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return state


def test_sharded_safetensors_by_index_or_directory(tmp_path):
    state = sharded(tmp_path, speaker_encoder())
    for path in (tmp_path / "model.safetensors.index.json", tmp_path):
        masks = load_masks(path)
        assert set(masks) == {n for n, v in state.items() if v.dim() >= 2}
        assert torch.equal(masks["lstm.weight_ih_l2"][1], state["lstm.weight_ih_l2"])


def test_prune_pairs_and_masks_stored_beside_weights(tmp_path):
    weight = torch.randn(4, 5)
    mask = torch.rand(4, 5) < 0.5
    torch.save({"fc.weight_orig": weight, "fc.weight_mask": mask.float(), "out.weight": weight,
                "out.weight_mask": mask}, tmp_path / "pruned.pt")
    layers = load_masks(tmp_path / "pruned.pt")
    assert set(layers) == {"fc.weight", "out.weight"}
    assert torch.equal(layers["fc.weight"][0], mask) and torch.equal(layers["out.weight"][0], mask)


@pytest.mark.parametrize("case,message", [
    ("corrupt.safetensors", "corrupt.safetensors: not a readable safetensors file"),
    ("missing-shard", "shard model-00002-of-00002.safetensors is missing"),
    ("not-json", "not a JSON index"),
    ("no-map", "no 'weight_map'"),
])
def test_bad_checkpoints_are_one_clear_error(tmp_path, case, message):
    if case == "corrupt.safetensors":
        (tmp_path / case).write_bytes(b"\xff\xff\xff\xff\xff\xff\xff\x7f{not a header")
        path = tmp_path / case
    else:
        path = tmp_path / "model.safetensors.index.json"
        if case == "missing-shard":
            save_file({"a.weight": torch.ones(2, 2)}, tmp_path / "model-00001-of-00002.safetensors")
            path.write_text(json.dumps({"weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                                                       "b.weight": "model-00002-of-00002.safetensors"}}))
        else:
            path.write_text("{oops" if case == "not-json" else json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(path)


def test_missing_safetensors_package_says_what_to_install(tmp_path, monkeypatch):
    save_file({"w": torch.ones(2, 2)}, tmp_path / "model.safetensors")
    monkeypatch.setitem(__import__("sys").modules, "safetensors", None)
    with pytest.raises(ConfigError, match=r'pip install "topo\[formats\]"'):
        open_checkpoint(tmp_path / "model.safetensors")
