"""A checkpoint analysis stopped part-way continues from the matrices already done, and its final table is an
uninterrupted run's: in process (an interruption after two matrices), through the CLI under SIGKILL, and never
from results of another file or other options (topo.resume)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from topo.analyze import analyze_checkpoint
from topo.cli import main
from topo.errors import CheckpointError
from topo.record.formats import CheckpointSource
from topo.resume import MatrixResults


def pruned_checkpoint(path: Path, layers: int = 5, width: int = 48) -> Path:
    torch.manual_seed(0)
    state = {}
    for i in range(layers):
        weight = torch.randn(width, width)
        state[f"blocks.{i}.weight"] = weight * (torch.rand(width, width) < 0.2)
    torch.save(state, path)
    return path


class Interrupted(KeyboardInterrupt):
    pass


def test_an_interrupted_analysis_resumes_from_the_matrices_done_and_equals_an_uninterrupted_one(tmp_path,
                                                                                                monkeypatch):
    checkpoint = pruned_checkpoint(tmp_path / "model.pt")
    options = {"null": "er", "null_samples": 3, "progress": False}
    whole = analyze_checkpoint(checkpoint, **options)

    put = MatrixResults.put
    kept_names = []

    def put_then_stop(self, name, results):
        put(self, name, results)
        kept_names.append(name)
        if len(kept_names) == 2:
            raise Interrupted

    monkeypatch.setattr(MatrixResults, "put", put_then_stop)
    with pytest.raises(Interrupted):
        analyze_checkpoint(checkpoint, resume_dir=tmp_path / "kept", **options)
    monkeypatch.setattr(MatrixResults, "put", put)
    loaded = []
    load = CheckpointSource.load
    monkeypatch.setattr(CheckpointSource, "load", lambda self, name: loaded.append(name) or load(self, name))
    resumed = analyze_checkpoint(checkpoint, resume_dir=tmp_path / "kept", **options)
    assert loaded == [f"blocks.{i}.weight" for i in range(2, 5)]  # the two kept matrices are not read again
    pd.testing.assert_frame_equal(resumed.table, whole.table)
    assert resumed.degrees.keys() == whole.degrees.keys()
    assert all((a == b).all() for g in whole.degrees for a, b in zip(resumed.degrees[g], whole.degrees[g],
                                                                        strict=True))
    assert not (tmp_path / "kept").exists()  # a finished analysis removes what it kept


def test_kept_results_belong_to_one_file_and_one_set_of_options(tmp_path):
    checkpoint = pruned_checkpoint(tmp_path / "model.pt", layers=1)
    kept = MatrixResults(tmp_path / "kept", checkpoint, {"null": "er"})
    kept.put("blocks.0.weight", {"records": [{"graph": "blocks.0.weight", "x": float("nan")}], "dense": False,
                                 "degrees": {}})
    again = MatrixResults(tmp_path / "kept", checkpoint, {"null": "er"})
    assert again.path == kept.path and again.get("blocks.0.weight")["dense"] is False
    assert again.get("blocks.1.weight") is None
    assert MatrixResults(tmp_path / "kept", checkpoint, {"null": "degree"}).path != kept.path
    os.utime(checkpoint, ns=(0, 0))  # the same bytes, written again
    assert MatrixResults(tmp_path / "kept", checkpoint, {"null": "er"}).path != kept.path
    kept._file("blocks.0.weight").write_text('{"name": "blocks.0.wei')  # a torn file reads as not kept
    assert kept.get("blocks.0.weight") is None


def test_a_refused_checkpoint_leaves_nothing_to_resume(tmp_path, monkeypatch):
    checkpoint = pruned_checkpoint(tmp_path / "model.pt", layers=3)
    load = CheckpointSource.load

    def refuse_the_last(self, name):
        if name == "blocks.2.weight":
            raise CheckpointError(f"{checkpoint}: blocks.2.weight is corrupt")
        return load(self, name)

    monkeypatch.setattr(CheckpointSource, "load", refuse_the_last)
    with pytest.raises(CheckpointError):
        analyze_checkpoint(checkpoint, resume_dir=tmp_path / "kept", progress=False)
    assert not (tmp_path / "kept").exists()


@pytest.mark.slow
def test_topo_analyze_killed_with_sigkill_continues_where_it_stopped(tmp_path, capsys):
    checkpoint = pruned_checkpoint(tmp_path / "model.pt", layers=4, width=64)
    arguments = ["analyze", str(checkpoint), "--null", "er", "--null-samples", "30", "--csv"]
    assert main([*arguments, str(tmp_path / "whole.csv")]) == 0  # the uninterrupted run, in this process
    out = tmp_path / "out.csv"
    command = [sys.executable, "-m", "topo.cli", *arguments, str(out)]
    started = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = Path(f"{out}.partial")
    deadline = time.monotonic() + 120
    while not list(partial.glob("*/*.json")) and time.monotonic() < deadline and started.poll() is None:
        time.sleep(0.005)
    os.kill(started.pid, signal.SIGKILL)
    started.wait()
    kept = len(list(partial.glob("*/*.json")))
    assert 1 <= kept < 4 and not out.exists()
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming, {kept} of 4 matrices already analysed" in resumed.stderr
    assert out.read_text() == (tmp_path / "whole.csv").read_text()
    assert not partial.exists()


def test_the_default_folder_unwritable_only_stops_keeping_results(tmp_path, monkeypatch, caplog):
    checkpoint = pruned_checkpoint(tmp_path / "model.pt", layers=2)
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    monkeypatch.setattr("topo.analyze.default_root", lambda: blocked / "analyze")
    with caplog.at_level("WARNING"):
        result = analyze_checkpoint(checkpoint, resume_dir=blocked / "analyze", progress=False)
    assert len(result.table) == 2 and "results are not kept for resuming" in caplog.text
    with pytest.raises(NotADirectoryError):  # a folder the user named must be writable
        analyze_checkpoint(checkpoint, resume_dir=blocked / "mine", progress=False)
