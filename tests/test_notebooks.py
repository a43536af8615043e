"""Every notebook under notebooks/ runs top to bottom with tiny settings (a failing cell fails the test)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

CORPUS = (
    "Adaptive weight sparsity trains a network whose connections change: small weights are pruned and new ones "
    "grow where the gradient is large. The masks of every layer are recorded each epoch and studied as graphs, "
    "with their algebraic connectivity, the Gini coefficient of their degrees, their clustering and the length "
    "of their shortest paths.\n"
)
NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("TOPO_NB_EPOCHS", "3")
    monkeypatch.setenv("TOPO_NB_HIDDEN", "32")
    monkeypatch.setenv("TOPO_NB_MAX_BATCHES", "4")
    monkeypatch.setenv("TOPO_NB_RUNS", str(tmp_path))
    corpus = tmp_path / "corpus.txt"  # a fixed text: the notebooks' default corpus (README.md) changes with topo
    corpus.write_text(CORPUS * 40)
    monkeypatch.setenv("TOPO_NB_TEXT", str(corpus))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert set(os.listdir(tmp_path)) - {"corpus.txt"}
