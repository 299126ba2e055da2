"""The advisory lock an open file store holds for its whole life.

A store's counters (pending bytes, which drive backpressure; dead letters) live in the memory of
the process that opened it; another process changing the file under it (``fluent-ld dlq replay``
beside a running node, a second node on the same ``<buffer> path`` and ``@id``) would leave them
wrong. So opening a store for writing takes ``flock(LOCK_EX | LOCK_NB)`` on a file beside the
database (``<database>.lock``, holding the holder's pid for the refusal), and refuses when another
process holds it. Reading (``buffer status``, ``dlq list``) takes no lock.

flock locks belong to an open file, so two opens in one process would refuse each other (across a
reload, the node being replaced and the one replacing it may both have an output's store open: a
start that fails part-way leaves one open while the previous config starts again): a process
takes the lock of a path once and counts its holders. The descriptor is close-on-exec: the processes a node starts do not
hold the lock after it is gone. The file is left in place (removing it would let two processes
lock two different files).
"""

from __future__ import annotations

import fcntl
import os
import threading

from fluent_ld.store.errors import StoreInUseError

__all__ = ["acquire", "lock_file", "release"]

_held: dict[str, list[int]] = {}  # lock file (real path) -> [descriptor, holders in this process]
_guard = threading.Lock()


def lock_file(database: str) -> str:
    return database + ".lock"


def acquire(database: str) -> str:
    """Take the lock of the store at ``database`` (its folder exists); returns the key that
    :func:`release` takes. Raises :class:`StoreInUseError`, with the holder's pid, if another
    process holds it, and OSError if the lock file cannot be made."""
    key = os.path.realpath(lock_file(database))
    with _guard:
        held = _held.get(key)
        if held is not None:
            held[1] += 1
            return key
        fd = os.open(key, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise StoreInUseError(database, pid) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[key] = [fd, 1]
        return key


def release(key: str) -> None:
    with _guard:
        held = _held[key]
        held[1] -= 1
        if held[1] == 0:
            del _held[key]
            os.close(held[0])  # the lock goes with the last descriptor of the open file


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
