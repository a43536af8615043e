"""The command line at its edges, driven in-process: non-finite weights, names matplotlib would read as maths,
files that are not what their suffix says, strict JSON, and arguments checked before anything is loaded."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from topo.cli import main
from topo.graph.singular import weighted_spectral_gap

from .conftest import REPO


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["--quiet", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def strict_json(text: str):
    """JSON as a strict parser reads it: bare NaN or Infinity is an error."""
    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def sparse(shape: tuple[int, int], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * (torch.rand(shape, generator=generator) < 0.4)


def test_non_finite_weights_are_inactive_everywhere_and_json_is_standard(tmp_path, capsys):
    weight = sparse((12, 16), 0)
    poisoned = weight.clone()
    poisoned[0, 0], poisoned[3, 5], poisoned[7, 2] = math.nan, math.inf, -math.inf
    torch.save({"fc.weight": poisoned}, tmp_path / "nan.pt")
    with pytest.warns(RuntimeWarning, match=r"3 inf/NaN weight\(s\); they are counted as inactive"):
        code, out, err = run(capsys, "analyze", str(tmp_path / "nan.pt"), "--json")
    assert code == 0, err
    [row] = strict_json(out)
    cleaned = torch.where(torch.isfinite(poisoned), poisoned, 0.0)
    assert row["weighted_spectral_gap"] == pytest.approx(weighted_spectral_gap(cleaned))
    assert row["mask_density"] == pytest.approx(float((cleaned != 0).float().mean()))
    empty = torch.zeros(4, 4)
    empty[0, 0] = math.nan  # nothing finite is active: undefined metrics are null, not NaN
    torch.save({"fc.weight": empty}, tmp_path / "empty.pt")
    code, out, err = run(capsys, "analyze", str(tmp_path / "empty.pt"), "--json")
    assert code == 0 and strict_json(out)[0]["weighted_spectral_gap"] is None


def test_names_with_dollar_signs_are_drawn_as_written(tmp_path, capsys):
    names = ["$\\notamacro{$.weight", "b$x$.weight"]  # matplotlib would parse (and fail on) the first as maths
    torch.save({name: sparse((16, 16), i) for i, name in enumerate(names)}, tmp_path / "m.pt")
    code, _, err = run(capsys, "analyze", str(tmp_path / "m.pt"), "--plot", str(tmp_path / "layers.png"))
    assert code == 0, err
    code, _, err = run(capsys, "report", str(tmp_path / "m.pt"), "-o", str(tmp_path / "r.html"))
    assert code == 0, err
    assert "$\\notamacro{$.weight" in (tmp_path / "r.html").read_text()


def test_figures_of_runs_named_with_dollar_signs(recorded_run_copy, tmp_path, capsys):
    code, _, err = run(capsys, "plot", str(recorded_run_copy), "--figure", "5", "-o", str(tmp_path / "f5.png"))
    assert code == 0, err
    code, _, err = run(capsys, "report", str(recorded_run_copy), "-o", str(tmp_path / "r.html"))
    assert code == 0, err


@pytest.fixture
def recorded_run_copy(tmp_path):
    """A tiny recorded run whose name and layers carry ``$…$``."""
    from torch import nn

    from topo.record import Recorder
    from topo.sparsity import make_sparsifier

    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("$\\bad{$", nn.Linear(8, 8))
    model.add_module("out", nn.Linear(8, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = make_sparsifier("set", model, optimizer, density=0.5, seed=0)
    path = tmp_path / "run-$\\x$"
    with Recorder(path, sparsifier) as recorder:
        for epoch in range(2):
            model(torch.randn(4, 8)).pow(2).mean().backward()
            optimizer.step()
            sparsifier.step()
            optimizer.zero_grad()
            recorder.snapshot(epoch, {"val_loss": 1.0 / (epoch + 1)})
            sparsifier.end_epoch(epoch)
    return path


@pytest.mark.parametrize("content,expected", [
    (b"0.25 0.5\n", "not a PyTorch checkpoint"),  # text the pickle reader takes for opcodes (POP): IndexError
    (b"(lp0\nI1\na.", "not a PyTorch checkpoint of tensors"),  # a protocol-0 pickle of a list
    (b"\x80\x04", "not a readable PyTorch checkpoint"),  # a pickle cut after its header
])
def test_files_that_are_not_checkpoints_are_one_line(tmp_path, capsys, content, expected):
    (tmp_path / "x.pt").write_bytes(content)
    code, out, err = run(capsys, "analyze", str(tmp_path / "x.pt"))
    assert code == 1 and err.count("\n") == 1 and expected in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]


def test_quantized_checkpoints_say_dequantize_first(tmp_path, capsys):
    import warnings

    from torch import nn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        dynamic = quantize_dynamic(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)), {nn.Linear},
                                   dtype=torch.qint8)
        per_tensor = torch.quantize_per_tensor(torch.randn(8, 8), 0.1, 0, torch.qint8)
    torch.save(dynamic.state_dict(), tmp_path / "dynamic.pt")
    torch.save({"fc.weight": per_tensor}, tmp_path / "per_tensor.pt")
    for name, layer in (("dynamic.pt", "'0'"), ("per_tensor.pt", "'fc.weight'")):
        code, _, err = run(capsys, "analyze", str(tmp_path / name))
        assert code == 1 and f"layer {layer}" in err and "dequantize first" in err, err


@pytest.mark.parametrize("args,message", [
    (["--null-samples", "0"], "--null-samples must be >= 2"),
    (["--backbone", "magnitude:3"], "--backbone 'magnitude:3'"),
    (["--path-sources", "0"], "--path-sources must be >= 1"),
    (["--num-heads", "0"], "--num-heads must be >= 1"),
    (["--small-world", "-2"], "--small-world must be >= 0"),
    (["--global"], "--global applies to the magnitude backbone"),
])
def test_arguments_are_checked_before_the_checkpoint_is_read(tmp_path, capsys, args, message):
    # the checkpoint does not exist: an argument error must come first, found without reading anything
    code, _, err = run(capsys, "analyze", str(tmp_path / "absent.pt"), *args)
    assert code == 1 and message in err and "absent.pt" not in err, err


def test_argument_errors_import_nothing_heavy(tmp_path):
    code = ("import sys\nfrom topo.cli import main\n"
            f"code = main(['--quiet', 'analyze', {str(tmp_path / 'm.pt')!r}, '--null-samples', '0'])\n"
            "heavy = sorted(m for m in ('torch', 'scipy', 'igraph', 'pandas') if m in sys.modules)\n"
            "print('CODE', code, 'HEAVY', heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert "CODE 1 HEAVY []" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("option", ["report", "csv", "plot"])
def test_an_output_that_cannot_be_written_is_named_as_given(tmp_path, capsys, option):
    torch.save({"fc.weight": sparse((8, 8), 0)}, tmp_path / "m.pt")
    target = Path("/proc")  # a folder where no file can be made, whatever the permissions say (root included)
    args = {"report": ["report", str(tmp_path / "m.pt"), "-o", str(target / "r.html")],
            "csv": ["analyze", str(tmp_path / "m.pt"), "--csv", str(target / "t.csv")],
            "plot": ["analyze", str(tmp_path / "m.pt"), "--plot", str(target / "f.png")]}[option]
    code, _, err = run(capsys, *args)
    assert code == 1 and str(target) in err and ".tmp" not in err and ".partial" not in err, err


def test_atomic_writes_name_the_path_asked_for_not_their_temporary():
    from topo.errors import OutputError
    from topo.record.store import write_atomic

    with pytest.raises(OutputError, match=r"^/proc/t\.csv: cannot be written"):
        write_atomic("/proc/t.csv", lambda handle: handle.write(b"x"))


def test_an_nm_null_on_a_checkpoint_without_n_m_layers_says_so(tmp_path, capsys):
    torch.save({"fc.weight": sparse((16, 16), 0)}, tmp_path / "m.pt")
    with pytest.warns(UserWarning, match="--null nm: no analysed layer of .*m.pt is N:M"):
        code, out, _ = run(capsys, "analyze", str(tmp_path / "m.pt"), "--null", "nm", "--json")
    assert code == 0 and not any(key.endswith("_z") for key in strict_json(out)[0])
