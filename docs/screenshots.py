"""Open the built documentation in headless chromium: the front page, one guide and one API page must render
without a console error, a page error or a request that leaves the built site; with ``--out``, write a screenshot
of each (the ones under docs/screenshots/ were made so).

Usage: python docs/screenshots.py [BUILD_DIR (docs/_build)] [--out docs/screenshots]

Needs Debian's chromium and playwright (the ``browser`` extra; nothing is downloaded). Exits 1, naming the page
and the message, when a page fails.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

#: The pages checked: the front page, a guide whose examples ran at build time, an API page.
PAGES = ("index.html", "guides/checkpoints.html", "api/graph.html")


def check_pages(build: Path, out: Path | None = None) -> list[str]:
    """Problems found on :data:`PAGES` of the site in ``build`` (empty when every page is clean)."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        for name in PAGES:
            page_file = build / name
            if not page_file.exists():
                problems.append(f"{name}: not built")
                continue
            view = browser.new_page(viewport={"width": 1280, "height": 1000})
            view.on("console", lambda message, name=name: message.type == "error" and problems.append(
                f"{name}: console error: {message.text}"))
            view.on("pageerror", lambda error, name=name: problems.append(f"{name}: page error: {error}"))
            view.on("request", lambda request, name=name: not request.url.startswith(("file://", "data:")) and
                    problems.append(f"{name}: request outside the site: {request.url}"))
            view.goto(page_file.resolve().as_uri())
            view.wait_for_load_state("load")
            if not view.title():
                problems.append(f"{name}: no title")
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                view.screenshot(path=str(out / (name.replace("/", "-").removesuffix(".html") + ".png")))
            view.close()
        browser.close()
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", nargs="?", default="docs/_build", help="the built site")
    parser.add_argument("--out", help="write a screenshot of each page into this folder")
    args = parser.parse_args()
    if not shutil.which("chromium"):
        print("docs/screenshots.py: chromium is not installed (Debian: apt-get install chromium)", file=sys.stderr)
        return 1
    problems = check_pages(Path(args.build), Path(args.out) if args.out else None)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{len(PAGES)} pages checked: {'ok' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
