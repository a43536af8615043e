"""Sphinx configuration of topo's documentation: ``sphinx-build -W docs docs/_build`` (``pip install -e ".[docs]"``).

Guides are MyST Markdown, the tutorials are the repository's notebooks (executed at build time with small
settings), the API reference is generated from the docstrings and the CLI reference from the argument parser.
Every warning is an error under ``-W``: a broken cross-reference (``nitpicky``), a public name without a docstring,
a docstring that is not valid reStructuredText, a guide's example or a notebook cell that raises (``_ext/topo_docs.py``
reads topo's docstrings and resolves its references).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

import topo  # noqa: E402

project = "topo"
author = "the topo developers"
copyright = "2026, the topo developers"
release = version = topo.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "sphinxarg.ext",
    "sphinx_copybutton",
    "topo_docs",
]
exclude_patterns = ["_build", "_ext", ".jupyter_cache", "jupyter_execute", "**.ipynb_checkpoints", "make_figures.py"]
html_theme = "furo"
html_title = f"topo {release}"
html_static_path = ["_static"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

nitpicky = True
#: Names of other libraries: no inventory is fetched (the build runs offline), so references to them stay text.
nitpick_ignore_regex = [
    ("py:.*", r"(torch|np|numpy|nn|pd|pandas|scipy|networkx|nx|igraph|matplotlib|plt|seaborn|lightning|"
              r"transformers|ray|safetensors|argparse|collections|concurrent|typing|pathlib|os|io|zipfile)\b.*"),
    ("py:.*", r"(Path|Any|Callable|Iterable|Iterator|Sequence|Mapping|Literal|Tensor|Module|Optimizer|DataFrame|"
              r"ndarray|Generator|Figure|Axes|PathLike|TracebackType|Self|Event|Thread|Lock|BinaryIO|IO)\b.*"),
    ("py:class", r"(optional|default.*|array_like|callable|dtype|device)"),
]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}

# notebooks run at build time with the small settings their first cell reads from the environment
nb_execution_mode = "cache"
nb_execution_cache_path = str(ROOT / "docs" / "_build" / ".jupyter_cache")
nb_execution_raise_on_error = True
nb_execution_timeout = 600
nb_execution_in_temp = True
nb_merge_streams = True
for variable, value in {"TOPO_NB_EPOCHS": "4", "TOPO_NB_HIDDEN": "64", "TOPO_NB_MAX_BATCHES": "8",
                        "MPLBACKEND": "Agg", "TQDM_DISABLE": "1"}.items():
    os.environ.setdefault(variable, value)
