"""Reading masks out of checkpoints safely, in every supported format, and refusing bad input clearly."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from topo.errors import CheckpointError
from topo.record import Recorder, RunReader, load_masks
from topo.sparsity import RandomFixed


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 4))


def test_plain_state_dict_infers_masks_from_exact_zeros(tmp_path):
    net = model()
    with torch.no_grad():
        net[0].weight[:, :3] = 0
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    layers = load_masks(tmp_path / "sd.pt")
    assert list(layers) == ["0.weight", "2.weight"]
    mask, weight = layers["0.weight"]
    assert mask.dtype == torch.bool and not mask[:, :3].any() and mask[:, 3:].all()
    assert torch.equal(weight, net[0].weight.detach())


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model", "net"])
def test_state_dict_under_a_common_key(tmp_path, key):
    net = model()
    torch.save({key: net.state_dict(), "epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "ck.pt")
    assert set(load_masks(tmp_path / "ck.pt")) == {"0.weight", "2.weight"}


def test_torch_prune_pairs(tmp_path):
    net = model()
    prune.l1_unstructured(net[0], "weight", amount=0.6)
    torch.save(net.state_dict(), tmp_path / "pruned.pt")
    layers = load_masks(tmp_path / "pruned.pt")
    mask, weight = layers["0.weight"]
    assert torch.equal(mask, net[0].weight_mask.bool())
    assert mask.sum() == round(0.4 * 80)
    assert torch.count_nonzero(weight[~mask]) == 0


def test_topo_checkpoint_and_run_directory(tmp_path):
    net = model()
    sp = RandomFixed(net, torch.optim.SGD(net.parameters(), lr=0.1), density=0.25)
    with Recorder(tmp_path / "run", sp) as recorder:
        recorder.snapshot(0)
        recorder.snapshot(1)
    layers = load_masks(tmp_path / "run" / "checkpoint.pt")
    assert torch.equal(layers["0.weight"][0], sp.masks["0.weight"])
    timeline = load_masks(tmp_path / "run")
    assert list(timeline) == [0, 1] and torch.equal(timeline[1]["2.weight"][0], sp.masks["2.weight"])


def digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_bad_inputs_raise_one_clear_error_and_modify_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net = model()
    sp = RandomFixed(net, torch.optim.SGD(net.parameters(), lr=0.1), density=0.5)
    with Recorder(tmp_path / "run", sp) as recorder:
        recorder.snapshot(0)
        recorder.snapshot(1)
    good = tmp_path / "run" / "checkpoint.pt"
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (tmp_path / "text.pt").write_text("hello, I am not a checkpoint\n")
    torch.save({"w": Exploit()}, tmp_path / "evil.pt")
    torch.save({"bias": torch.zeros(3), "scale": torch.ones(4)}, tmp_path / "no2d.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    snapshot = tmp_path / "run" / "snapshots" / "epoch-0001.npz"
    broken_run = tmp_path / "broken"
    broken_run.mkdir()
    (broken_run / "snapshots").mkdir()
    before = digest(tmp_path / "run")

    cases = {
        "truncated.pt": "not a readable PyTorch checkpoint",
        "text.pt": r"not a PyTorch checkpoint \(neither a torch.save zip archive nor a pickle\)",
        "evil.pt": "weights_only",
        "no2d.pt": "no weight with two or more dimensions",
        "list.pt": "no mapping of names to weights",
        "missing.pt": "no such file",
        "broken": "not a topo run directory",
    }
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message) as info:
            load_masks(tmp_path / name)
        assert name in str(info.value)
    assert not (tmp_path / "PWNED").exists()

    snapshot.write_bytes(snapshot.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="epoch-0001.npz: corrupt or truncated"):
        RunReader(tmp_path / "run").masks(1)
    snapshot_before = before.pop(str(snapshot))
    after = digest(tmp_path / "run")
    assert after.pop(str(snapshot)) != snapshot_before
    assert after == before


def test_nan_weights_are_named_and_not_counted_as_active(tmp_path):
    weight = torch.ones(3, 4)
    weight[0, 0] = float("nan")
    weight[1, 1] = 0.0
    torch.save({"fc.weight": weight}, tmp_path / "model.pt")
    with pytest.warns(RuntimeWarning, match="'fc.weight' holds 1 inf/NaN"):
        layers = load_masks(tmp_path / "model.pt")
    assert int(layers["fc.weight"][0].sum()) == 10
