"""The run-directory format, atomic writes, bit-packed masks, and the lazy :class:`RunReader`.

A run directory::

    run.json                    format, config, method and hyperparameters, layer names and shapes, seed, versions
    snapshots/epoch-0007.npz    one per recorded epoch (see below)
    stats.csv                   one tidy row per epoch × layer (+ loss/accuracy columns the loop passed)
    checkpoint.pt               model, optimizer, sparsifier and RNG state of the last complete epoch
    initial.pt                  the model's state_dict when recording began (its initialisation)

A snapshot ``.npz`` holds, for layer number ``i`` (the order of ``run.json``'s ``layers``):

* ``mask_i``: the mask as ``np.packbits`` of the flattened bool array (1 bit per weight, big-endian bit order);
  or ``delta_i``: the uint32 positions that flipped since snapshot ``base_epoch``, when that is smaller;
* ``weight_i`` (optional): the weights in float16;
* the positions ever active since training began (the exploration of Liu et al. 2021; adaptations between
  snapshots included): nothing when they are the current mask (a fixed mask), else ``everx_i``, the uint32
  positions ever active but inactive now, or ``ever_i``, packed like ``mask_i``, whichever is smaller; the flag
  ``ever_recorded`` says the record is there;
* ``stats``: a (layers × len(STAT_COLUMNS)) float64 array.

Every file is written to a temporary name in the same directory and renamed into place, so a crash leaves the
previous version (or nothing) but never a partial file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from topo.errors import CheckpointError, OutputError
from topo.families import Family

FORMAT = "topo-run/1"
#: The model's state when recording began (its initialisation, for rewound transplants).
INITIAL_STATE = "initial.pt"
SNAPSHOT_NAME = re.compile(r"epoch-(\d+)\.npz")
#: With delta coding, every this many snapshots one is stored in full, so no delta chain is longer.
FULL_SNAPSHOT_EVERY = 50
LOW_STRENGTH_FRACTIONS = (0.1, 0.25, 0.5)
STAT_COLUMNS = (
    "active", "total", "density", "mean_abs", "low_0.1", "low_0.25", "low_0.5", "pruned", "grown",
)


def _umask() -> int:
    """The process's file-mode creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Files topo writes get the mode a plain ``open()`` would give them (0o666 less the umask, read when topo is
#: imported): a temporary file from ``mkstemp`` is 0o600, which colleagues on a shared file system cannot read.
FILE_MODE = 0o666 & ~_umask()


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` through ``write(file)`` into a temporary file in the same directory, then rename it; the
    file gets :data:`FILE_MODE`, as if written in place."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"{path}: cannot be written ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fchmod(handle.fileno(), FILE_MODE)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot be written ({exc.strerror or exc})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically (temporary file, then rename)."""
    return write_atomic(path, lambda f: f.write(json.dumps(data, indent=2, sort_keys=True).encode()))


def write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> Path:
    """``frame`` as CSV (no index), written atomically (:func:`write_atomic`)."""
    return write_atomic(path, lambda f: f.write(frame.to_csv(index=False).encode()))


def snapshot_path(run_dir: str | os.PathLike, epoch: int) -> Path:
    """The snapshot file of ``epoch`` in a run directory: ``snapshots/epoch-NNNN.npz``."""
    return Path(run_dir) / "snapshots" / f"epoch-{epoch:04d}.npz"


def pack_mask(mask: np.ndarray) -> np.ndarray:
    """1 bit per weight: ``np.packbits`` of the flattened boolean mask."""
    return np.packbits(np.asarray(mask, dtype=bool).ravel())


def unpack_mask(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The boolean mask of ``shape`` from its :func:`pack_mask` bits (1 bit per weight, flattened)."""
    count = int(np.prod(shape))
    return np.unpackbits(packed, count=count).astype(bool).reshape(shape)


def write_snapshot(
    path: Path,
    masks: list[np.ndarray],
    stats: np.ndarray,
    weights: list[np.ndarray] | None = None,
    previous: list[np.ndarray] | None = None,
    previous_epoch: int | None = None,
    ever_active: list[np.ndarray] | None = None,
) -> Path:
    """Write one snapshot atomically; with ``previous`` masks, store a layer as flipped positions when smaller."""
    arrays: dict[str, np.ndarray] = {"stats": np.asarray(stats, dtype=np.float64)}
    for i, mask in enumerate(masks):
        packed = pack_mask(mask)
        if previous is not None:
            flipped = np.flatnonzero(mask.ravel() != previous[i].ravel()).astype(np.uint32)
            if flipped.nbytes < packed.nbytes:
                arrays[f"delta_{i}"] = flipped
                continue
        arrays[f"mask_{i}"] = packed
    if any(k.startswith("delta_") for k in arrays):
        arrays["base_epoch"] = np.array(previous_epoch, dtype=np.int64)
    for i, weight in enumerate(weights or []):
        arrays[f"weight_{i}"] = np.asarray(weight, dtype=np.float16)
    for i, ever in enumerate(ever_active or []):
        extra = np.flatnonzero(np.asarray(ever).ravel() & ~np.asarray(masks[i]).ravel()).astype(np.uint32)
        if extra.size:
            packed = pack_mask(ever)
            arrays[f"everx_{i}" if extra.nbytes < packed.nbytes else f"ever_{i}"] = (
                extra if extra.nbytes < packed.nbytes else packed)
    if ever_active is not None:
        arrays["ever_recorded"] = np.array(True)
    return write_atomic(path, lambda f: np.savez(f, **arrays))


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; a missing or unreadable file is a :class:`~topo.errors.CheckpointError`
    naming it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (not a topo run directory?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None


class RunReader:
    """Lazy, read-only access to a run directory: epochs, layers, masks, weights, stats.

    Nothing is read until asked for; decoded masks are cached per epoch.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: not a directory")
        self.meta = read_json(self.path / "run.json")
        if self.meta.get("format") != FORMAT:
            raise CheckpointError(f"{self.path / 'run.json'}: format {self.meta.get('format')!r}, expected {FORMAT!r}")
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    @property
    def name(self) -> str:
        return self.meta.get("name") or self.path.name

    @property
    def layers(self) -> dict[str, tuple[int, ...]]:
        """Layer name → weight shape, in recording order."""
        return {name: tuple(shape) for name, shape in self.meta["layers"]}

    @property
    def family(self) -> Family:
        """What the run's weights mean (:mod:`topo.families`), as recorded; the generic family for older runs."""
        return Family.from_json(self.meta.get("family"))

    @property
    def epochs(self) -> list[int]:
        """Recorded epochs, ascending (files not named ``epoch-NNNN.npz`` are not snapshots and are ignored)."""
        files = (self.path / "snapshots").glob("epoch-*.npz")
        return sorted(int(match[1]) for f in files if (match := SNAPSHOT_NAME.fullmatch(f.name)))

    def _load(self, epoch: int) -> dict[str, np.ndarray]:
        path = snapshot_path(self.path, epoch)
        try:
            with np.load(path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no snapshot for epoch {epoch}; recorded epochs: {self.epochs}") from None
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise CheckpointError(f"{path}: corrupt or truncated snapshot ({exc})") from None

    def masks(self, epoch: int, as_torch: bool = False) -> dict[str, Any]:
        """Layer name → boolean mask (numpy, or torch with ``as_torch``) at ``epoch``.

        A delta-coded snapshot is decoded by walking back to the nearest full (or cached) snapshot and applying
        the flips forward, iteratively, so chains of any length decode (the recorder also bounds them).
        """
        if epoch not in self._cache:
            chain: list[tuple[int, dict[str, np.ndarray]]] = []
            current: int | None = epoch
            while current is not None and current not in self._cache:
                data = self._load(current)
                chain.append((current, data))
                current = int(data["base_epoch"]) if "base_epoch" in data else None
                if current is not None and any(current == e for e, _ in chain):
                    raise CheckpointError(f"{snapshot_path(self.path, epoch)}: delta snapshots form a cycle")
            for current, data in reversed(chain):
                self._cache[current] = self._decode(current, data)
        masks = self._cache[epoch]
        if as_torch:
            import torch

            return {n: torch.from_numpy(m.copy()) for n, m in masks.items()}
        return masks

    def _decode(self, epoch: int, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        base = self._cache.get(int(data["base_epoch"])) if "base_epoch" in data else None
        masks = {}
        for i, (name, shape) in enumerate(self.layers.items()):
            if f"mask_{i}" in data:
                masks[name] = unpack_mask(data[f"mask_{i}"], shape)
            elif f"delta_{i}" in data and base is not None:
                flat = base[name].ravel().copy()
                flat[data[f"delta_{i}"]] ^= True
                masks[name] = flat.reshape(shape)
            else:
                raise CheckpointError(f"{snapshot_path(self.path, epoch)}: no mask for layer {name!r}")
        return masks

    def ever_active(self, epoch: int) -> dict[str, np.ndarray]:
        """Layer name → the positions ever active up to ``epoch`` (recorded by topo ≥ this version)."""
        data = self._load(epoch)
        if "ever_recorded" not in data:
            raise CheckpointError(f"{snapshot_path(self.path, epoch)}: no record of ever-active positions "
                                  "(recorded by an older topo)")
        masks = self.masks(epoch)
        ever = {}
        for i, (name, shape) in enumerate(self.layers.items()):
            if f"ever_{i}" in data:
                ever[name] = unpack_mask(data[f"ever_{i}"], shape)
            else:
                flat = masks[name].ravel().copy()
                flat[data.get(f"everx_{i}", np.zeros(0, np.uint32))] = True
                ever[name] = flat.reshape(shape)
        return ever

    def initial_state(self) -> dict[str, Any]:
        """The model's state_dict when recording began (``initial.pt``), read with the safe loader."""
        from topo.record.training_state import safe_load

        path = self.path / INITIAL_STATE
        if not path.exists():
            raise CheckpointError(f"{path}: missing (runs recorded by an older topo kept no initial weights)")
        return safe_load(path)

    def weights(self, epoch: int) -> dict[str, np.ndarray]:
        """Layer name → float16 weights at ``epoch`` (only for runs recorded with ``keep_weights=True``)."""
        data = self._load(epoch)
        if "weight_0" not in data:
            raise CheckpointError(f"{snapshot_path(self.path, epoch)}: weights were not kept (keep_weights=False)")
        return {name: data[f"weight_{i}"] for i, name in enumerate(self.layers)}

    def layer_stats(self, epoch: int) -> pd.DataFrame:
        """The per-layer statistics stored in the snapshot of ``epoch``."""
        stats = self._load(epoch)["stats"]
        frame = pd.DataFrame(stats, columns=list(STAT_COLUMNS))
        frame.insert(0, "layer", list(self.layers))
        frame.insert(0, "epoch", epoch)
        return frame

    @property
    def stats(self) -> pd.DataFrame:
        """``stats.csv`` as a DataFrame (one row per epoch × layer)."""
        path = self.path / "stats.csv"
        if not path.exists():
            return pd.DataFrame(columns=["epoch", "layer", *STAT_COLUMNS])
        try:
            return pd.read_csv(path)
        except pd.errors.EmptyDataError:
            return pd.DataFrame(columns=["epoch", "layer", *STAT_COLUMNS])
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path}: unreadable ({exc})") from None

    def iter_masks(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(epoch, masks) for every recorded epoch, in order (what :func:`topo.graph.metrics_table` takes)."""
        for epoch in self.epochs:
            yield epoch, self.masks(epoch)
