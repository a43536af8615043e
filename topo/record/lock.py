"""One writer per run directory: an advisory lock held while a process trains into it.

Two processes training into the same run directory would interleave their snapshots and checkpoints. That
happens when a grid is started twice over one output root, or when a scheduler starts a job again while its
first attempt still runs. :func:`run_lock` takes an exclusive ``flock`` on ``RUN/.lock`` (which records the
holder's host and pid) and refuses a second holder with the holder named. The operating system releases the
lock when its process dies, however it dies, so a run killed mid-epoch can be resumed at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from topo.errors import CheckpointError

LOCK_FILE = ".lock"


def lock_holder(run_dir: str | os.PathLike) -> str:
    """``HOST:PID`` of the process that last took the lock of ``run_dir`` ("" when none ever did)."""
    try:
        return (Path(run_dir) / LOCK_FILE).read_text().strip()
    except OSError:
        return ""


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the ``with`` block; :class:`CheckpointError` when another process holds it."""
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointError(f"{path}: another process is training into this run directory "
                                  f"({lock_holder(path) or 'unknown'}); wait for it or stop it") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()}:{os.getpid()}\n".encode())
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
