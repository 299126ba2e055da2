"""Where the file store of an output is: one database per output and worker in the output's
``<buffer> path``. The node and the ``buffer`` and ``dlq`` commands find stores by these names."""

from __future__ import annotations

import glob
import os

__all__ = ["store_file", "worker_files"]


def store_file(folder: str, plugin_id: str, worker: int) -> str:
    """The database of output ``plugin_id`` in worker ``worker``."""
    return os.path.join(folder, f"{plugin_id}-worker{worker}.sqlite3")


def worker_files(folder: str, plugin_id: str) -> list[tuple[int, str]]:
    """(worker, database) of every store of output ``plugin_id`` in ``folder``, one per worker
    that ever ran (a node run with more workers before keeps theirs), by worker; worker 0's when
    there is none yet."""
    prefix = os.path.join(folder, f"{plugin_id}-worker")
    found = []
    for path in glob.glob(glob.escape(prefix) + "*.sqlite3"):
        worker = path[len(prefix) : -len(".sqlite3")]
        if worker.isdigit():
            found.append((int(worker), path))
    return sorted(found) or [(0, store_file(folder, plugin_id, 0))]
