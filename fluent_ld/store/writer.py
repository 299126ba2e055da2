"""The store's writer thread: group commit, coalesced appends, and the checkpointer beside it.

All writes go through one writer thread; operations queued within ``GROUP_COMMIT_WINDOW`` share one
transaction and one fsync (group commit), so the event loop never blocks on the disk and
durability costs one fsync per group, not per request. Appends that follow one another in a group
are one pending row; small appends commit first (a client waits for their ack), then large ones,
then the sender's reads, cuts and deletes. A checkpointer thread, on its own connection, copies
the WAL into the database beside the writer, so no commit pays for a checkpoint.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fluent_ld.encode import pack_lengths
from fluent_ld.pipeline.admission import DeadLetter
from fluent_ld.store import dead_letters
from fluent_ld.store.errors import StoreError
from fluent_ld.store.rows import insert_pending

__all__ = ["Append", "Checkpointer", "Writer"]

# Operations that arrive within this many seconds of the first one in a group share its commit.
# A few milliseconds: small against a forward client's ack timeout, large against an fsync.
GROUP_COMMIT_WINDOW = 0.002
# The most operations in one transaction, so one group cannot hold the writer for long.
GROUP_MAX_OPS = 512
# The checkpointer runs at most this often (seconds), after commits.
CHECKPOINT_INTERVAL = 0.05
# WAL bytes not yet copied into the database past which the writer copies them itself (a
# checkpointer that cannot keep up must not let the WAL grow without bound).
WAL_LIMIT_BYTES = 256 << 20
# An append of at least this many bytes commits after the smaller ones that came with it.
LARGE_APPEND = 1 << 20

# An operation: run on the writer thread, in the group's transaction, with the connection and
# the writer's owner (the Store); what it returns is the caller's result.
Operation = Callable[[sqlite3.Connection, Any], Any]


class _GroupLost(Exception):
    """SQLite abandoned the transaction of a group (it does so on SQLITE_FULL and I/O errors)."""


class Writer:
    """Runs operations on a thread of its own, in groups: one transaction and one fsync each.

    ``connect`` opens the connection (on the writer thread); ``checkpoint``: the database a
    :class:`Checkpointer` copies the WAL into (None: no checkpointer, for memory and read-only
    stores); ``begin``: how a group's transaction starts ("BEGIN" for a reader, which must not
    take the write lock from the node beside it)."""

    def __init__(
        self,
        owner: Any,
        label: str,
        connect: Callable[[], sqlite3.Connection],
        separator: bytes,
        checkpoint: str | None,
        begin: str = "BEGIN IMMEDIATE",
    ) -> None:
        self.owner = owner
        self.label = label  # the store's path, or "memory store", for errors
        self.separator = separator  # what coalesced appends' fragments are joined by
        self._connect = connect
        self._checkpoint = checkpoint
        self._begin = begin
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop  # set by start(), before anything uses it
        self.checkpointer: Checkpointer | None = None
        self.fsyncs = 0
        self.fsync_seconds = 0.0
        self.on_commit: Callable[[float], None] | None = None  # called from the writer thread
        self.last_error: str | None = None  # the last failed commit's reason (disk full, I/O error)
        self.failed_at: float | None = None  # when a commit last failed (monotonic)

    @property
    def running(self) -> bool:
        return self._thread is not None

    async def start(self) -> None:
        """Start the thread; returns once its connection is open (StoreError if it cannot be)."""
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="store-writer", daemon=True)
        self._thread.start()
        try:
            await ready
        except StoreError:
            await self._loop.run_in_executor(None, self._thread.join)  # it ends once it reported the failure
            self._thread = None
            raise

    async def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None

    def call(self, fn: Operation) -> asyncio.Future:
        if self._thread is None:
            raise StoreError("the store is not open")
        future = self._loop.create_future()
        self._queue.put((fn, future))
        return future

    def _run(self, ready: asyncio.Future) -> None:
        loop = self._loop
        try:
            conn = self._connect()
        except StoreError as exc:  # says what and where already
            loop.call_soon_threadsafe(_set_exception, ready, exc)
            return
        except (sqlite3.Error, OSError) as exc:
            loop.call_soon_threadsafe(_set_exception, ready, StoreError(f"{self.label}: {exc}"))
            return
        checkpointer = Checkpointer(self._checkpoint) if self._checkpoint is not None else None
        self.checkpointer = checkpointer
        loop.call_soon_threadsafe(_set_result, ready, None)
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                group = [first]
                deadline = time.monotonic() + GROUP_COMMIT_WINDOW
                stop = False
                while len(group) < GROUP_MAX_OPS:
                    timeout = deadline - time.monotonic()
                    try:
                        op = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if op is None:
                        stop = True
                        break
                    group.append(op)
                # Small appends first, in a group of their own: a client waits for their commit
                # (its ack). Then large ones (tens of MB take tens of ms to write and sync: the
                # small ones that came with them need not wait for that), then the sender's reads,
                # cuts and deletes.
                small, large, others = [], [], []
                for op in group:
                    if type(op[0]) is not Append:
                        others.append(op)
                    elif op[0].nbytes < LARGE_APPEND:
                        small.append(op)
                    else:
                        large.append(op)
                for part in (small, large, others):
                    if not part:
                        continue
                    try:
                        self._run_group(conn, part)
                    except Exception as exc:  # never let the writer die: every later caller would wait forever
                        for _, future in part:
                            self._loop.call_soon_threadsafe(_set_exception, future, StoreError(f"{self.label}: {exc!r}"))
                if stop:
                    return
        finally:
            if checkpointer is not None:
                checkpointer.stop()
            conn.close()  # the last connection: SQLite checkpoints what is left

    def _run_group(self, conn: sqlite3.Connection, group: list) -> None:
        """One transaction for the whole group; each operation in a savepoint, so one that fails
        fails alone (appends queued one after another are one operation: one row for all of them,
        see :class:`Append`). Results are delivered only after the commit (the fsync) returned,
        all in one call to the event loop."""
        results: list[tuple[asyncio.Future, bool, Any]] = []
        owner = self.owner
        try:
            conn.execute(self._begin)
            changes = conn.total_changes
            for fn, futures in coalesce(group, self.separator):
                conn.execute("SAVEPOINT op")
                try:
                    value = fn(conn, owner)
                    conn.execute("RELEASE op")
                    results.extend((future, True, value) for future in futures)
                except Exception as exc:  # the operation's own failure: roll back just it
                    if not conn.in_transaction:
                        # SQLite rolled the whole transaction back itself (SQLITE_FULL, SQLITE_IOERR):
                        # nothing in this group is stored.
                        raise _GroupLost(exc) from exc
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.extend((future, False, exc) for future in futures)
            started = time.perf_counter()
            conn.execute("COMMIT")
            elapsed = time.perf_counter() - started
            if conn.total_changes != changes:  # a group that only read wrote nothing to sync
                self.fsync_seconds += elapsed
                self.fsyncs += 1
                if self.on_commit is not None:
                    self.on_commit(elapsed)
                if self.checkpointer is not None:
                    self.checkpointer.poke()
        except (sqlite3.Error, _GroupLost) as exc:  # disk full, I/O error: nothing in this group is durable
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            cause = exc.__cause__ if isinstance(exc, _GroupLost) else exc
            error = StoreError(f"{self.label}: {cause}")
            self.last_error = str(error)
            self.failed_at = time.monotonic()
            results = [(future, False, error) for _, future in group]
        self._loop.call_soon_threadsafe(_deliver, results)
        if self.checkpointer is not None and self.checkpointer.backlog > WAL_LIMIT_BYTES:
            # The checkpointer cannot keep up: help it, after the results are out (what is
            # committed stays committed whatever a checkpoint does).
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                pass


class Checkpointer:
    """Copies the WAL into the database file (PASSIVE checkpoints) on its own connection and
    thread, beside the writer: WAL mode lets one checkpoint run while the writer commits, so the
    writer's commits cost the WAL write and its fsync, not the copy as well."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.backlog = 0  # WAL bytes not yet copied, as of the last checkpoint
        self._page_size = 4096
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-checkpointer", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._halt.set()
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error:
            return  # the writer checkpoints itself once the backlog grows (WAL_LIMIT_BYTES)
        try:
            self._page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            while not self._halt.is_set():  # checked here too: stop() may come just before clear()
                self._wake.wait()
                if self._halt.wait(CHECKPOINT_INTERVAL):  # one checkpoint for the commits of a while
                    return
                self._wake.clear()
                try:
                    _, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.backlog = max(log - done, 0) * self._page_size
                except sqlite3.Error:
                    pass  # busy or failing: the next commit pokes again
        finally:
            conn.close()


@dataclass(slots=True)
class Append:
    """One request's events and dead letters, to store. Appends that follow one another in a
    group (the requests of many connections, or Fluent Bit's many small chunks) are stored as one
    pending row: one insert, and later one delete, instead of one per request."""

    tag: str | None
    data: Any  # bytes-like: fragments joined by the store's separator
    lengths: Sequence[int]
    nbytes: int
    oldest_ms: int
    dead: Sequence[DeadLetter]
    now: float

    def __call__(self, conn: sqlite3.Connection, owner: Any) -> None:
        if self.lengths:
            insert_pending(conn, self.tag, self.data, pack_lengths(self.lengths), len(self.lengths), self.nbytes, self.oldest_ms, self.now)
        dead_letters.insert(conn, self.dead, self.now)


def coalesce(group: list, sep: bytes) -> list[tuple[Operation, list[asyncio.Future]]]:
    """The group's operations in order, each with the futures it answers; appends of the same tag
    that follow one another become one."""
    out: list[tuple[Any, list[asyncio.Future]]] = []
    run: list[tuple[Append, asyncio.Future]] = []

    def close_run() -> None:
        if len(run) == 1:
            out.append((run[0][0], [run[0][1]]))
        elif run:
            out.append((merge([a for a, _ in run], sep), [f for _, f in run]))
        run.clear()

    for fn, future in group:
        if type(fn) is Append:
            if run and run[0][0].tag != fn.tag:
                close_run()
            run.append((fn, future))
        else:
            close_run()
            out.append((fn, [future]))
    close_run()
    return out


def merge(appends: list[Append], sep: bytes) -> Append:
    full = [a for a in appends if a.lengths]
    lengths = array("I")
    for a in full:
        lengths.extend(a.lengths if type(a.lengths) is array else array("I", a.lengths))
    dead = [d for a in appends for d in a.dead]
    if not full:
        return Append(appends[0].tag, b"", lengths, 0, 0, dead, appends[0].now)
    return Append(
        appends[0].tag,
        sep.join(a.data for a in full),
        lengths,
        sum(a.nbytes for a in full),
        min(a.oldest_ms for a in full),
        dead,
        min(a.now for a in full),
    )


def _deliver(results: list[tuple[asyncio.Future, bool, Any]]) -> None:
    for future, ok, value in results:
        if not future.done():
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


def _set_result(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
