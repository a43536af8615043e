"""Every reader of user files survives mutated files: a few hundred cases of ``bench/fuzz_readers.py`` here (the
script runs 10,000 and docs/development.md gives its figures)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ..conftest import REPO


@pytest.mark.slow
def test_mutated_checkpoints_and_runs_read_or_end_in_one_line(tmp_path):
    out = tmp_path / "fuzz.json"
    done = subprocess.run([sys.executable, "bench/fuzz_readers.py", "--cases", "400", "--seed", "1", "--json",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    figures = json.loads(out.read_text())
    assert figures["failures"] == [] and done.returncode == 0, done.stdout[-3000:]
    assert set(figures["outcomes"]) == {"read", "refused"} and figures["outcomes"]["refused"] > 100
    assert set(figures["per_format"]) == {"legacy.pt", "model.safetensors", "nested.pt", "run", "sharded", "state.pt"}


def _changed_archive(path, out, change: str) -> None:
    """``path``'s archive with its first storage record cut, emptied, lengthened or dropped (re-zipped), or one of
    its bytes flipped in place (the zip and its CRC-32 as they were)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        members = [(info, archive.read(info.filename)) for info in archive.infolist()]
        record = next(info for info, _ in members if info.filename.endswith("/data/0"))
    if change == "flip":
        raw = bytearray(path.read_bytes())
        name_length, extra_length = struct.unpack("<HH", raw[record.header_offset + 26:record.header_offset + 30])
        raw[record.header_offset + 30 + name_length + extra_length] ^= 4
        out.write_bytes(bytes(raw))
        return
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for info, data in members:
            if info is record:
                data = {"cut": data[:100], "empty": b"", "longer": data + bytes(8), "drop": None}[change]
            if data is not None:
                archive.writestr(info, data)


@pytest.mark.parametrize("change,expected", [
    ("cut", "holds 100 bytes where its tensor needs 1024"), ("empty", r"record size \(0 bytes\) does not match"),
    ("longer", "holds 1032 bytes"), ("drop", "data/0"), ("flip", "fails its CRC-32 check")])
def test_a_storage_record_changed_inside_the_archive_is_refused_not_read(tmp_path, change, expected):
    # torch.load(mmap=True) maps a cut record onto whatever bytes follow it and skips every record's CRC-32; topo
    # checks sizes and CRCs as torch's unmapped reader does ("record size does not match")
    import torch

    from topo.errors import CheckpointError
    from topo.record import open_checkpoint

    torch.save({"fc.weight": torch.randn(16, 16), "out.weight": torch.randn(4, 16)}, tmp_path / "m.pt")
    _changed_archive(tmp_path / "m.pt", tmp_path / "bad.pt", change)
    with pytest.raises(CheckpointError, match=expected):
        list(open_checkpoint(tmp_path / "bad.pt"))
    assert len(list(open_checkpoint(tmp_path / "m.pt"))) == 2
