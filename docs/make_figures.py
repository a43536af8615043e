"""Regenerate the README's figure: runs `topo demo` into runs/demo and copies its Figure 5 to docs/.

Usage: python docs/make_figures.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

from topo.experiments.demo import run_demo

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    print(run_demo(ROOT / "runs" / "demo"))
    shutil.copy(ROOT / "runs" / "demo" / "figure5.png", ROOT / "docs" / "figure5-demo.png")
    print(f"wrote {ROOT / 'docs' / 'figure5-demo.png'}")
