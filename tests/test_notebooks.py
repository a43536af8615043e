"""Every notebook under notebooks/ runs top to bottom with tiny settings, from a copy outside the repository (a
failing cell fails the test), and leaves no progress bar in its outputs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("TOPO_NB_EPOCHS", "3")
    monkeypatch.setenv("TOPO_NB_HIDDEN", "32")
    monkeypatch.setenv("TOPO_NB_MAX_BATCHES", "4")
    monkeypatch.setenv("TOPO_NB_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("TOPO_NB_TEXT", raising=False)  # the notebook's own default: a text bundled with topo
    monkeypatch.setenv("MPLBACKEND", "Agg")
    elsewhere = tmp_path / "copy"
    elsewhere.mkdir()
    shutil.copy(path, elsewhere / path.name)  # a user's copy, far from the repository's data/ folder
    notebook = nbformat.read(elsewhere / path.name, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(elsewhere)}})
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert not [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert not [o for o in outputs if o.get("name") == "stderr" and "it/s]" in o.get("text", "")]
    assert os.listdir(tmp_path / "runs")
