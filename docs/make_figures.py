"""Regenerate the README's and the documentation's figures: runs `topo demo` into a temporary directory, copies its
Figure 5 to docs/_static/, and screenshots its HTML report in headless chromium (when installed) into
docs/_static/report-demo.png.

Usage: python docs/make_figures.py
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from topo.experiments.demo import run_demo

ROOT = Path(__file__).resolve().parents[1]


def screenshot(page: Path, out: Path) -> None:
    """The top of ``page`` as rendered by Debian's chromium (playwright drives it; nothing is downloaded)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        view = browser.new_page(viewport={"width": 1200, "height": 1500})
        view.goto(page.as_uri())
        view.screenshot(path=str(out))
        browser.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        print(run_demo(Path(folder) / "demo"))
        shutil.copy(Path(folder) / "demo" / "figure5.png", ROOT / "docs" / "_static" / "figure5-demo.png")
        print(f"wrote {ROOT / 'docs' / '_static' / 'figure5-demo.png'}")
        if shutil.which("chromium"):
            screenshot(Path(folder) / "demo" / "report.html", ROOT / "docs" / "_static" / "report-demo.png")
            print(f"wrote {ROOT / 'docs' / '_static' / 'report-demo.png'}")
