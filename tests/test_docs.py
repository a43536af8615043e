"""The documentation stays true to the code: every ``topo`` command in the README and the guides parses with the
command line's own parser, the README is a front page whose links resolve, and the docs extension reads topo's
docstrings as they are written (``docs/_ext/topo_docs.py``; the build itself runs in CI, ``.ci/run``)."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from topo.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
PAGES = [page for page in PAGES if "_build" not in page.parts]


def shell_commands(text: str) -> list[str]:
    """The ``topo …`` commands of a page's ``bash`` blocks (``a && topo …`` too), continuation lines joined,
    comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split, lexer.commenters = True, "#"
            command: list[str] = []
            for word in [*lexer, ";"]:
                if word in (";", "&&", "||", "|", "&"):
                    if command[:1] == ["topo"]:
                        commands.append(command[1:])
                    command = []
                else:
                    command.append(word)
    return commands


COMMANDS = [(page, words) for page in PAGES for words in shell_commands(page.read_text())]


def test_the_pages_hold_commands_of_every_kind():
    kinds = {words[0] for _, words in COMMANDS}
    assert {"analyze", "train", "reproduce", "report", "prune", "transplant", "compare", "plot", "demo"} <= kinds


@pytest.mark.parametrize("page, words", COMMANDS, ids=[f"{p.name}:{' '.join(w)[:60]}" for p, w in COMMANDS])
def test_every_documented_command_parses(page, words):
    build_parser().parse_args(words)  # a usage error exits 2, which fails the test


def test_readme_is_a_front_page_whose_links_resolve():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 150
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme)
    assert len(links) >= 10
    assert [link for link in links if not (REPO / link).exists()] == []


@pytest.fixture(scope="module")
def topo_docs():
    sys.path.insert(0, str(REPO / "docs" / "_ext"))
    try:
        import topo_docs
    finally:
        sys.path.pop(0)
    return topo_docs


def test_a_parameters_section_becomes_a_rubric_and_a_definition_list(topo_docs):
    lines = ["Prune.", "", "Parameters", "----------", "zeta: the fraction |w| drops,", "    in (0, 1).",
             "a, b: two at once.", "", "The end uses ``|x|``."]
    assert topo_docs.sections_as_rst(lines) == [
        "Prune.", "", ".. rubric:: Parameters", "", "zeta", r"    the fraction \|w\| drops,", "    in (0, 1).",
        "a, b", "    two at once.", "", "The end uses ``|x|``."]


def test_plain_text_escapes_bars_and_stars_outside_literals_only(topo_docs):
    assert topo_docs.plain_text("|W ⊙ M| of (out, in, *kernel), ``a|b`` and :func:`f`") == (
        r"\|W ⊙ M\| of (out, in, \*kernel), ``a|b`` and :func:`f`")


def test_a_reexported_name_is_looked_up_where_it_is_defined(topo_docs):
    assert topo_docs.documented_name("topo.graph.metrics_table", None, None)[0] == "topo.graph.metrics.metrics_table"
    assert topo_docs.documented_name("ConfigError", "topo.sparsity.base", None)[0] == "topo.errors.ConfigError"
    # an instance attribute is documented by its class
    assert topo_docs.documented_name("drop", "topo.sparsity.dst", "SET") == ["topo.sparsity.dst.SET"]
