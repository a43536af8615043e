"""Regenerate the README's figure: runs `topo demo` into a temporary directory and copies its Figure 5 to docs/.

Usage: python docs/make_figures.py
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from topo.experiments.demo import run_demo

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        print(run_demo(Path(folder) / "demo"))
        shutil.copy(Path(folder) / "demo" / "figure5.png", ROOT / "docs" / "figure5-demo.png")
    print(f"wrote {ROOT / 'docs' / 'figure5-demo.png'}")
