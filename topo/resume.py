"""Resumable checkpoint analysis: each matrix's results are kept on disk as soon as they are computed, so an analysis
stopped part-way (Ctrl-C, ``kill -9``, a lost node) continues from the matrices already done when the same command
runs again, and the final table equals an uninterrupted run's.

Results live in ``ROOT/<key>/``, one JSON file per matrix written atomically (a temporary file, then a rename), so a
kill leaves each file whole or absent. ``key`` hashes the checkpoint's identity (every file it is read from: path,
size and modification time) and every option that changes a number (backbone, heads, nulls, path sources, device,
the family the weights are read as, topo's version), so an edited checkpoint or a changed option never reuses a
result. A finished analysis removes its results (:meth:`MatrixResults.clear`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

import topo
from topo.record.store import write_atomic

log = logging.getLogger(__name__)

#: Files a checkpoint directory's analysis may read: a change to any of them changes the key.
CHECKPOINT_SUFFIXES = (".safetensors", ".json", ".pt", ".pth", ".bin", ".ckpt")


def default_root() -> Path:
    """Where results go when no output file names a place: ``$XDG_CACHE_HOME/topo/analyze`` (``~/.cache/…``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "topo" / "analyze"


def checkpoint_files(path: str | os.PathLike) -> list[Path]:
    """The files an analysis of ``path`` reads: the file itself; a sharded index and the shards it names; or a
    directory's checkpoint files (:data:`CHECKPOINT_SUFFIXES`)."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(CHECKPOINT_SUFFIXES))
    files = [path]
    if path.name.endswith(".index.json"):
        try:
            weight_map = json.loads(path.read_text()).get("weight_map", {})
        except (OSError, ValueError, AttributeError):
            weight_map = {}
        if isinstance(weight_map, dict):
            files += sorted({path.parent / str(shard) for shard in weight_map.values()})
    return files


def checkpoint_identity(path: str | os.PathLike) -> list[tuple[str, int, int]]:
    """(absolute path, size, modification time in ns) of every file :func:`checkpoint_files` names."""
    identity = []
    for file in checkpoint_files(path):
        try:
            status = file.stat()
        except OSError:
            identity.append((str(file.absolute()), -1, -1))
            continue
        identity.append((str(file.resolve()), status.st_size, status.st_mtime_ns))
    return identity


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as the Python numbers and lists JSON holds."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not a number")


class MatrixResults:
    """The kept results of one analysis: one entry per matrix (layer) name.

    Parameters
    ----------
    root: the folder holding kept analyses (each in its own ``<key>`` folder).
    checkpoint: the checkpoint analysed (file, index or directory): its identity is part of the key.
    options: every option that changes a number; JSON-serialisable.
    required: a folder that cannot be written is an error; otherwise (the default folder, which nobody chose) the
        analysis goes on without keeping results, and says so once.
    """

    def __init__(self, root: str | os.PathLike, checkpoint: str | os.PathLike, options: dict[str, Any],
                 required: bool = True) -> None:
        self.root = Path(root)
        self.required = required
        self.disabled = False
        described = {"checkpoint": checkpoint_identity(checkpoint), "options": options, "topo": topo.__version__}
        key = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:20]
        self.path = self.root / key

    def _file(self, name: str) -> Path:
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[-80:]
        return self.path / f"{safe}-{digest}.json"

    def get(self, name: str) -> dict[str, Any] | None:
        """The kept results of matrix ``name``, or None (never computed, or a file that does not read back)."""
        file = self._file(name)
        try:
            kept = json.loads(file.read_text())
        except (OSError, ValueError):
            return None
        return kept if isinstance(kept, dict) and kept.get("name") == name else None

    def put(self, name: str, results: dict[str, Any]) -> None:
        """Keep the results of matrix ``name`` (atomically)."""
        if self.disabled:
            return
        text = json.dumps({"name": name, **results}, default=_plain)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            write_atomic(self._file(name), lambda handle: handle.write(text.encode()))
        except OSError as error:
            if self.required:
                raise
            self.disabled = True
            log.warning(f"results are not kept for resuming ({self.root}: {error.strerror or error})")

    def clear(self) -> None:
        """Remove this analysis's results, and the root folder when nothing else is kept there."""
        shutil.rmtree(self.path, ignore_errors=True)
        try:
            self.root.rmdir()
        except OSError:
            pass
