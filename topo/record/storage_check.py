"""Check a ``torch.save`` archive's storage records against the sizes its pickle declares, without loading them.

``torch.load(..., mmap=True)`` maps every storage onto the file at its record's offset and never compares the
record's size with the storage's: a file whose ``data/N`` record was cut short or emptied (a truncated copy, a
hand-edited archive) loads, and its tensors read bytes of the neighbouring records or of the archive's directory.
Read without ``mmap``, torch refuses such a file ("record size does not match"). :func:`check_storage_records`
restores that check for memory-mapped reads: it reads the small ``data.pkl`` with an unpickler that builds nothing
(every class it names becomes an inert placeholder, so no code from the file runs) and collects the storages it
declares — ``("storage", <dtype>Storage, key, location, numel)`` — then compares each record's size in the zip
directory with numel × the element size. Memory-mapped, torch also skips the CRC-32 of every record that its
unmapped reader verifies, so a bit flipped in a tensor's bytes is read as a different number; the check reads
every record once and verifies its CRC-32 (about a second per GB, and the pages read are the ones the analysis
reads next). Every failure is one :class:`~topo.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from topo.errors import CheckpointError


class _Inert:
    """Stands for any object the pickle builds: accepts every construction and state, holds nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _StorageScanner(pickle.Unpickler):
    """Unpickles ``data.pkl`` into inert placeholders, recording every storage's (key → bytes)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.storages: dict[str, int] = {}

    def find_class(self, module: str, name: str) -> type:
        return type(str(name), (_Inert,), {"module": str(module)})

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:60]}")
        _, kind, key, _, numel = pid
        if not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"storage {key!r} declares {numel!r} elements")
        self.storages[str(key)] = numel * _element_size(getattr(kind, "__name__", ""))
        return _Inert()


def _element_size(storage_class: str) -> int:
    """Bytes per element of a storage class named in a pickle (``FloatStorage`` → 4; ``UntypedStorage`` and unknown
    names → 1, their numel counting bytes)."""
    with warnings.catch_warnings():  # the legacy storage classes warn that TypedStorage is deprecated
        warnings.simplefilter("ignore")
        found = getattr(torch, storage_class, None) if storage_class.endswith("Storage") else None
        dtype = getattr(found, "dtype", None)
    return dtype.itemsize if isinstance(dtype, torch.dtype) else 1


def check_storage_records(path: str | Path) -> None:
    """Raise :class:`CheckpointError` unless every storage the ``torch.save`` archive at ``path`` declares has a
    record of exactly its size, stored uncompressed (as torch writes them). For archives torch memory-maps; files
    of the legacy format are read without memory-mapping, and torch checks their sizes itself."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (its zip directory: {exc})") from None
    try:
        with archive:
            names = archive.namelist()
            pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (its archive holds "
                                      f"{len(pickles)} data.pkl records)")
            prefix = pickles[0][: -len("data.pkl")]
            scanner = _StorageScanner(archive.read(pickles[0]))
            scanner.load()
            records = {info.filename: info for info in archive.infolist()}
            for key, size in scanner.storages.items():
                info = records.get(f"{prefix}data/{key}")
                if info is None:
                    raise CheckpointError(f"{path}: storage record data/{key} is missing (truncated or edited "
                                          "archive)")
                if info.compress_type != zipfile.ZIP_STORED:
                    raise CheckpointError(f"{path}: storage record data/{key} is compressed; torch.save stores "
                                          "records uncompressed (a re-zipped archive?)")
                if info.file_size != size:
                    raise CheckpointError(f"{path}: storage record data/{key} holds {info.file_size} bytes where its "
                                          f"tensor needs {size} (record size does not match: truncated or edited)")
            damaged = archive.testzip()  # every record's CRC-32, read in 1 MiB pieces, as torch checks it unmapped
            if damaged is not None:
                raise CheckpointError(f"{path}: record {damaged.removeprefix(prefix)} fails its CRC-32 check (the "
                                      "bytes were changed after torch.save wrote them)")
    except CheckpointError:
        raise
    except Exception as exc:  # a corrupt pickle or directory can fail in any way: one line naming the file
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): "
                              f"{type(exc).__name__}: {str(exc)[:120]}") from None
