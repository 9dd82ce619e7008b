"""Writing outputs so that an interrupted run never leaves a half-written file behind, locks that
keep two processes from changing the same thing at once, and leases that keep what a process reads
from being removed under it."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rdm.errors import UserError


class Busy(UserError):
    """Another process holds the lock."""


@contextmanager
def exclusive(path: Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold the lock file `path` for the block. If another process holds it, raise Busy at once or,
    with `wait`, wait for it. The lock dies with its holder, so a killed process never leaves it
    stuck. It excludes the processes of one machine only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            if not wait:
                raise Busy(
                    f"{what} is being changed by {holder} (lock {path}); wait for it, then try again"
                ) from None
            print(f"waiting for {holder}, which is changing {what} (lock {path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def lease(path: Path) -> Iterator[None]:
    """Hold a shared lock on the existing file or folder `path` for the block: any number of holders
    at once, and `claim` fails while one holds it, so what they read is not removed under them.
    Raises FileNotFoundError when `path` is gone (or was renamed away while the lock was taken) and
    BlockingIOError while a claim holds it: either way, look again for what to read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        held, now = os.fstat(fd), os.stat(path)
        if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
            raise FileNotFoundError(errno.ENOENT, "removed while being leased", str(path))
        yield
    finally:
        os.close(fd)


@contextmanager
def claim(path: Path) -> Iterator[bool]:
    """Lock the file or folder `path` exclusively for the block if no `lease` holds it: yields True
    when locked (remove or rename it inside the block), False when a lease holder has it. Like
    `exclusive`, the lock dies with its holder; it works on local filesystems."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
        else:
            yield True
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode())
