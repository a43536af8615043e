"""The report screenshots of the README and the reports guide: a pruned Llama-shaped checkpoint, per head.

Usage: python docs/report_screenshot.py [--out docs/_static] [--blocks 6]

Writes a synthetic Llama-shaped bfloat16 checkpoint (bench/analyze_transformer.py's: hidden 256, MLP 688, 8 heads,
random normal weights) twice, pruned 2:4 and dense, reports both through a magnitude backbone keeping half the
weights (the 2:4 checkpoint's backbone is its own 2:4 mask; the dense one's the unstructured half of the same
weights), per head, against an Erdős–Rényi null:

    topo report nm/ dense/ --backbone magnitude:0.5 --heads --null er --null-samples 5 -o report-llama.html

then opens the page in headless chromium (Debian's) and saves two screenshots: the top of the first checkpoint's
section (its summary and the graphs far from the null) and its heads' heat maps.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from analyze_transformer import write_checkpoint  # noqa: E402

from topo.report import write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "_static"))
    parser.add_argument("--blocks", type=int, default=6)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    out = Path(args.out).resolve()
    here = Path.cwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)  # the checkpoints are named as given: nm, dense
        try:
            for name, nm in (("nm", True), ("dense", False)):
                Path(name).mkdir()
                write_checkpoint(Path(name), 256, 688, args.blocks, 8, nm)
            page = write_report(["nm", "dense"], out / "report-llama.html", backbone="magnitude:0.5", heads=True,
                                null="er", null_samples=5, title="topo report: a Llama-shaped checkpoint pruned 2:4 "
                                                                 "against the unstructured half of its weights")
        finally:
            os.chdir(here)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        view = browser.new_page(viewport={"width": 1250, "height": 1100})
        view.goto(page.as_uri())
        for target, name in (("h2:text-is('Checkpoint nm, backbone magnitude:0.5')", "report-llama-summary.png"),
                             ("h3:text-is('Heads')", "report-llama-heads.png")):
            view.locator(target).first.scroll_into_view_if_needed()
            top = view.locator(target).first.evaluate("e => e.getBoundingClientRect().top + window.scrollY")
            view.evaluate(f"window.scrollTo(0, {top} - 10)")
            view.screenshot(path=str(out / name))
        browser.close()
    page.unlink()
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main()
