"""The durable store of one LaunchDarkly output (SQLite, standard library).

Three tables:

- ``pending``: one row per admitted request (not per record: a 2,500-event chunk is one insert):
  its events' lengths, count and bytes; ``taken`` counts its events (from the start) already frozen
  into batches and ``refs`` the batches that refer to it. It is deleted once every event is taken
  and no batch refers to it. Its events' JSON fragments, joined by ``,``, are in ``pending_data``
  under the same id, written once and never rewritten (updating the counters of a row that held
  them would make SQLite rewrite them).
- ``batches``: frozen batches. A batch refers to the events it holds as segments (row id, first
  event, end) of pending rows, so cutting a batch writes a few dozen bytes, not the events again. It
  gets its payload id before its first attempt; the rows it refers to never change, so its bytes
  never change either, and a retry sends exactly them with the same payload id.
- ``dead_letters``: events that will not be sent, with kind, reason, status and time.

Durability: WAL journal with ``synchronous=FULL``: a commit returns after its fsync. All writes go
through one writer thread; operations queued within ``GROUP_COMMIT_WINDOW`` share one transaction
and one fsync (group commit), so the event loop never blocks on the disk and durability costs one
fsync per group, not per request. Appends that follow one another in a group are one pending row;
small appends commit first (a client waits for their ack), then large ones, then the sender's
reads, cuts and deletes. A checkpointer thread, on its own connection, copies the WAL into the
database beside the writer, so no commit pays for a checkpoint. ``path=None`` keeps the database
in memory (``<buffer> @type memory``: lossy on a crash, said loudly in the docs).
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
import time
import uuid
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fluent_ld.admission import DeadLetter
from fluent_ld.encode import pack_lengths, unpack_lengths

__all__ = ["Batch", "DeadLetter", "Store", "StoreError"]

# Operations that arrive within this many seconds of the first one in a group share its commit.
# A few milliseconds: small against a forward client's ack timeout, large against an fsync.
GROUP_COMMIT_WINDOW = 0.002
# The most operations in one transaction, so one group cannot hold the writer for long.
GROUP_MAX_OPS = 512
# A store whose commits failed counts as not writable until an append commits, or this long
# without another failure (while it is full, retried appends and cuts fail every second).
WRITABLE_AFTER = 10.0
# The checkpointer runs at most this often (seconds), after commits.
CHECKPOINT_INTERVAL = 0.05
# WAL bytes not yet copied into the database past which the writer copies them itself (a
# checkpointer that cannot keep up must not let the WAL grow without bound).
WAL_LIMIT_BYTES = 256 << 20
# After a checkpoint the WAL file is truncated to this many bytes when it grew beyond.
WAL_FILE_LIMIT = 64 << 20
# Pages of new stores. Event bytes are most of what a store writes (a 1,000-record request is
# ~1 MB): large pages write, checkpoint and free them in 16x fewer pieces than SQLite's 4 KiB
# default, ~1 ms less CPU per MB appended, for ~40 us more per small commit. A store keeps the
# page size it was created with.
PAGE_SIZE = 65536
# An append of at least this many bytes commits after the smaller ones that came with it.
LARGE_APPEND = 1 << 20
# Batches cut per call (each call is one writer operation): bounds its time and memory.
MAX_BATCHES_PER_CUT = 4

SCHEMA_VERSION = 2  # 1: batches held a copy of their events (``data``)
SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    id INTEGER PRIMARY KEY,
    tag TEXT,
    lengths BLOB NOT NULL,
    count INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    oldest_ms INTEGER NOT NULL,
    admitted_at REAL NOT NULL,
    taken INTEGER NOT NULL DEFAULT 0,
    taken_bytes INTEGER NOT NULL DEFAULT 0,
    refs INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS pending_open ON pending (id) WHERE taken < count;
CREATE TABLE IF NOT EXISTS pending_data (
    id INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    payload_id TEXT NOT NULL UNIQUE,
    tag TEXT,
    segments BLOB NOT NULL,
    lengths BLOB NOT NULL,
    count INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    oldest_ms INTEGER NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status INTEGER,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    status INTEGER,
    tag TEXT,
    time_ns INTEGER,
    record BLOB,
    event BLOB,
    payload_id TEXT
);
CREATE INDEX IF NOT EXISTS batches_due ON batches (next_attempt_at);
"""
def _table(name: str) -> str:
    start = SCHEMA.index(f"CREATE TABLE IF NOT EXISTS {name} (")
    return SCHEMA[start : SCHEMA.index(";", start)]


class _GroupLost(Exception):
    """SQLite abandoned the transaction of a group (it does so on SQLITE_FULL and I/O errors)."""


class StoreError(Exception):
    """The store cannot take the operation (disk full, unreadable file): the caller must not ack."""


@dataclass(frozen=True, slots=True)
class Batch:
    id: int
    payload_id: str
    tag: str | None  # set when the output batches by tag (forward); None for LaunchDarkly
    data: bytes  # fragments joined by the store's separator (LaunchDarkly: "," and the body is [data])
    lengths: bytes
    count: int
    bytes: int
    oldest_ms: int
    created_at: float
    attempts: int
    segments: bytes = b""  # (row id, first event, end) triples of the pending rows it refers to

    @property
    def body(self) -> bytes:
        return b"".join((b"[", self.data, b"]"))  # one copy (two "+" would make two)


class Store:
    """``separator`` joins stored fragments (b"," for JSON events, b"" for msgpack entries) and
    ``framing`` is what a batch body adds around them (2 for "[...]"), so cuts fit exactly."""

    def __init__(self, path: str | None, separator: bytes = b",", framing: int = 2) -> None:
        self.path = path
        self.separator = separator
        self.framing = framing
        self.pending_events = 0
        self.pending_bytes = 0  # events not yet delivered: pending rows and batches
        self.dead_letter_count = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.fsyncs = 0
        self.fsync_seconds = 0.0
        self.on_commit: Callable[[float], None] | None = None  # called from the writer thread
        self.last_error: str | None = None  # the last failed commit's reason (disk full, I/O error)
        self._failed_at: float | None = None  # when a commit last failed (monotonic)
        self._appended_at = 0.0  # when an append last committed
        self._checkpointer: _Checkpointer | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future = self._loop.create_future()
        self._thread = threading.Thread(target=self._writer, args=(ready,), name="store-writer", daemon=True)
        self._thread.start()
        await ready
        counts = await self._call(_totals)
        self.pending_events, self.pending_bytes, self.dead_letter_count = counts

    @property
    def is_open(self) -> bool:
        return self._thread is not None

    async def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None

    def _connect(self) -> sqlite3.Connection:
        if self.path is None:
            conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA synchronous=OFF")
        else:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{self.path}: cannot use the WAL journal (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            # A large append (a 64 MiB request's events) is written to the WAL once, at commit:
            # spilling SQLite's page cache in the middle of it took 4-5x as long, and every small
            # append behind it waited.
            conn.execute("PRAGMA cache_spill=OFF")
            # The WAL is copied into the database by a thread of its own (_Checkpointer), not at
            # the end of whichever commit crossed 1,000 pages: that commit's acks waited for it.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute(f"PRAGMA journal_size_limit={WAL_FILE_LIMIT}")
        _migrate(conn)
        conn.executescript(SCHEMA)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return conn

    def _writer(self, ready: asyncio.Future) -> None:
        loop = self._loop
        try:
            conn = self._connect()
        except (sqlite3.Error, OSError, StoreError) as exc:
            loop.call_soon_threadsafe(_set_exception, ready, StoreError(f"{self.path}: {exc}"))
            return
        checkpointer = _Checkpointer(self.path) if self.path is not None else None
        self._checkpointer = checkpointer
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
                    if type(op[0]) is not _Append:
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
                            self._loop.call_soon_threadsafe(_set_exception, future, StoreError(f"{self.path or 'memory store'}: {exc!r}"))
                if stop:
                    return
        finally:
            if checkpointer is not None:
                checkpointer.stop()
            conn.close()  # the last connection: SQLite checkpoints what is left

    def _run_group(self, conn: sqlite3.Connection, group: list) -> None:
        """One transaction for the whole group; each operation in a savepoint, so one that fails
        fails alone (appends queued one after another are one operation: one row for all of them,
        see :class:`_Append`). Results are delivered only after the commit (the fsync) returned,
        all in one call to the event loop."""
        results = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            changes = conn.total_changes
            for fn, futures in _coalesce(group, self.separator):
                conn.execute("SAVEPOINT op")
                try:
                    value = fn(conn, self)
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
                if self._checkpointer is not None:
                    self._checkpointer.poke()
        except (sqlite3.Error, _GroupLost) as exc:  # disk full, I/O error: nothing in this group is durable
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            cause = exc.__cause__ if isinstance(exc, _GroupLost) else exc
            error = StoreError(f"{self.path or 'memory store'}: {cause}")
            self.last_error = str(error)
            self._failed_at = time.monotonic()
            results = [(future, False, error) for _, future in group]
        self._loop.call_soon_threadsafe(_deliver, results)
        if self._checkpointer is not None and self._checkpointer.backlog > WAL_LIMIT_BYTES:
            # The checkpointer cannot keep up: help it, after the results are out (what is
            # committed stays committed whatever a checkpoint does).
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                pass

    def _call(self, fn: Callable[[sqlite3.Connection, Store], Any]) -> asyncio.Future:
        if self._thread is None:
            raise StoreError("the store is not open")
        future = self._loop.create_future()
        self._queue.put((fn, future))
        return future

    # -- the operations ------------------------------------------------------------------------------

    async def append(self, data: bytes, lengths: Sequence[int], nbytes: int, oldest_ms: int, dead: Sequence[DeadLetter] = (), tag: str | None = None) -> None:
        """Store one request's events (``data``: fragments joined by ","; ``nbytes``: the
        fragments' own bytes) and its dead letters; returns once they are on disk."""
        count = len(lengths)
        op = _Append(tag, data, lengths, nbytes, oldest_ms, dead, time.time())
        await self._call(op)
        self._appended_at = time.monotonic()
        self.pending_events += count
        self.pending_bytes += nbytes
        self.dead_letter_count += len(dead)

    async def add_dead_letters(self, dead: Sequence[DeadLetter]) -> None:
        await self._call(lambda conn, store: _insert_dead(conn, dead, time.time()))
        self.dead_letter_count += len(dead)

    async def cut_batches(self, max_body: int, max_records: int, linger: float, now: float, retry_at: float) -> int:
        """Freeze pending events into batches of at most ``max_body`` body bytes and
        ``max_records`` events, once the oldest pending row has waited ``linger`` seconds or a
        full batch is waiting. Returns how many batches were cut."""

        def op(conn: sqlite3.Connection, store: Store) -> int:
            first = conn.execute(
                "SELECT MIN(admitted_at), SUM(bytes - taken_bytes) + SUM(count - taken), SUM(count - taken) FROM pending WHERE taken < count"
            ).fetchone()
            if first[0] is None:
                return 0
            if now - first[0] < linger and first[1] + 1 < max_body and first[2] < max_records:
                return 0
            return _cut(conn, store, max_body, max_records, now, retry_at)

        return await self._call(op)

    async def due_batches(self, now: float, limit: int, exclude: Sequence[int] = ()) -> list[Batch]:
        def op(conn: sqlite3.Connection, store: Store) -> list[Batch]:
            rows = conn.execute(
                "SELECT id, payload_id, tag, segments, lengths, count, bytes, oldest_ms, created_at, attempts FROM batches "
                "WHERE next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
                (now, limit + len(exclude)),
            ).fetchall()
            rows = [r for r in rows if r[0] not in exclude][:limit]
            return [_load_batch(conn, store.separator, *r) for r in rows]

        return await self._call(op)

    async def next_attempt_at(self) -> float | None:
        return await self._call(lambda conn, store: conn.execute("SELECT MIN(next_attempt_at) FROM batches").fetchone()[0])

    async def delivered(self, batch: Batch) -> None:
        if await self._call(lambda conn, store: _drop_batch(conn, batch)):
            self.pending_events -= batch.count
            self.pending_bytes -= batch.bytes

    async def failed(self, batch: Batch, status: int | None, error: str, next_attempt_at: float) -> None:
        await self._call(
            lambda conn, store: conn.execute(
                "UPDATE batches SET attempts = attempts + 1, next_attempt_at = ?, last_status = ?, last_error = ? WHERE id = ?",
                (next_attempt_at, status, error[:2000], batch.id),
            )
        )

    async def postpone_all(self, until: float) -> None:
        """Push every batch's next attempt to at least ``until`` (a pause of the whole output)."""
        await self._call(
            lambda conn, store: conn.execute("UPDATE batches SET next_attempt_at = ? WHERE next_attempt_at < ?", (until, until))
        )

    async def split(self, batch: Batch, now: float) -> list[Batch]:
        """Replace a batch with its two halves, each a new frozen batch with a new payload id."""
        lengths = unpack_lengths(batch.lengths)
        if len(lengths) < 2:
            raise ValueError("a batch of one event cannot be split")
        half = len(lengths) // 2
        sep = len(self.separator)
        end = sum(lengths[:half]) + (half - 1) * sep  # the first half's fragments and separators

        first, second = _split_segments(_unpack_segments(batch.segments), half)

        def op(conn: sqlite3.Connection, store: Store) -> list[Batch]:
            if conn.execute("SELECT 1 FROM batches WHERE id = ? AND payload_id = ?", (batch.id, batch.payload_id)).fetchone() is None:
                return []  # no longer stored (a stale Batch): nothing to split
            out = []
            for data, part, segments in ((batch.data[:end], lengths[:half], first), (batch.data[end + sep :], lengths[half:], second)):
                out.append(_insert_batch(conn, batch.tag, data, part, sum(part), batch.oldest_ms, batch.created_at, now, segments))
            _drop_batch(conn, batch)  # after the halves took their references: the rows stay
            return out

        return await self._call(op)

    async def bury(self, batch: Batch, kind: str, reason: str, status: int | None) -> None:
        """Move every event of a batch to the dead-letter store (one letter per event)."""
        fragments = _fragments(batch, len(self.separator))
        now = time.time()

        def op(conn: sqlite3.Connection, store: Store) -> bool:
            if not _drop_batch(conn, batch):
                return False
            _insert_dead(
                conn,
                [DeadLetter(kind, reason, status, tag=batch.tag, event=f, payload_id=batch.payload_id) for f in fragments],
                now,
            )
            return True

        if await self._call(op):
            self.pending_events -= batch.count
            self.pending_bytes -= batch.bytes
            self.dead_letter_count += len(fragments)

    async def oldest_wait(self, now: float) -> float:
        """Seconds the oldest undelivered event has been stored (0 when none); for events already
        in a batch, counted from the cut, so at most flush_interval short."""

        def op(conn: sqlite3.Connection, store: Store) -> float:
            row = conn.execute("SELECT admitted_at FROM pending WHERE taken < count ORDER BY id LIMIT 1").fetchone()
            batch = conn.execute("SELECT MIN(created_at) FROM batches").fetchone()
            oldest = min([t for t in (row and row[0], batch[0]) if t], default=None)
            return max(now - oldest, 0.0) if oldest else 0.0

        return await self._call(op)

    @property
    def writable(self) -> bool:
        """New events can be stored: no commit failed since the last append committed (small
        updates may still commit on a full disk, so they do not count), or for WRITABLE_AFTER
        seconds; and the folder can take new files (the WAL, a checkpoint)."""
        failed = self._failed_at
        if failed is not None and self._appended_at < failed and time.monotonic() - failed < WRITABLE_AFTER:
            return False
        return self.path is None or os.access(os.path.dirname(self.path) or ".", os.W_OK)

    async def status(self) -> dict[str, Any]:
        def op(conn: sqlite3.Connection, store: Store) -> dict[str, Any]:
            p = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(count - taken), 0), COALESCE(SUM(bytes - taken_bytes), 0), MIN(oldest_ms) FROM pending WHERE taken < count"
            ).fetchone()
            b = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(count), 0), COALESCE(SUM(bytes), 0), MIN(oldest_ms), MAX(attempts) FROM batches"
            ).fetchone()
            d = conn.execute("SELECT kind, COUNT(*) FROM dead_letters GROUP BY kind ORDER BY kind").fetchall()
            oldest = min([x for x in (p[3], b[3]) if x is not None], default=None)
            return {
                "pending_rows": p[0],
                "batches": b[0],
                "events": p[1] + b[1],
                "bytes": p[2] + b[2],
                "oldest_event_ms": oldest,
                "max_attempts": b[4] or 0,
                "dead_letters": dict(d),
            }

        return await self._call(op)

    async def dead_letters(self, limit: int = 100, ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        def op(conn: sqlite3.Connection, store: Store) -> list[dict[str, Any]]:
            cols = "id, created_at, kind, reason, status, tag, time_ns, record, event, payload_id"
            if ids is not None:
                marks = ",".join("?" * len(ids))
                rows = conn.execute(f"SELECT {cols} FROM dead_letters WHERE id IN ({marks}) ORDER BY id", list(ids)).fetchall()
            else:
                rows = conn.execute(f"SELECT {cols} FROM dead_letters ORDER BY id LIMIT ?", (limit,)).fetchall()
            names = [c.strip() for c in cols.split(",")]
            return [dict(zip(names, r)) for r in rows]

        return await self._call(op)

    async def replay(self, mapper: Any, ids: Sequence[int] | None) -> tuple[int, int]:
        """Re-admit dead letters: those with their original record go through ``mapper`` again
        (a fixed preset rescues them), those with only their LaunchDarkly event (expired, refused)
        are sent as they are. Returns (replayed, still rejected)."""
        import orjson

        letters = await self.dead_letters(limit=-1, ids=ids)
        now = time.time()

        def op(conn: sqlite3.Connection, store: Store) -> tuple[int, int, int]:
            fragments, done, kept, oldest = [], [], 0, None
            for letter in letters:
                if letter["record"] is not None:
                    time_ns = letter["time_ns"] or time.time_ns()
                    result = mapper.map_encoded(orjson.loads(letter["record"]), time_ns)
                    if type(result) is not bytes:
                        kept += 1
                        conn.execute("UPDATE dead_letters SET reason = ? WHERE id = ?", (result.reason, letter["id"]))
                        continue
                    oldest = time_ns if oldest is None else min(oldest, time_ns)
                elif letter["event"] is not None:
                    result = bytes(letter["event"])
                else:
                    kept += 1
                    continue
                fragments.append(result)
                done.append(letter["id"])
            if fragments:
                lengths = [len(f) for f in fragments]
                _insert_pending(
                    conn, None, self.separator.join(fragments), pack_lengths(lengths), len(lengths), sum(lengths),
                    (oldest or time.time_ns()) // 1_000_000, now,
                )
                conn.executemany("DELETE FROM dead_letters WHERE id = ?", [(i,) for i in done])
            return len(done), kept, sum(len(f) for f in fragments)

        replayed, kept, nbytes = await self._call(op)
        self.pending_events += replayed
        self.pending_bytes += nbytes
        self.dead_letter_count -= replayed
        return replayed, kept

    async def purge_dead_letters(self, ids: Sequence[int] | None) -> int:
        def op(conn: sqlite3.Connection, store: Store) -> int:
            if ids is None:
                return conn.execute("DELETE FROM dead_letters").rowcount
            marks = ",".join("?" * len(ids))
            return conn.execute(f"DELETE FROM dead_letters WHERE id IN ({marks})", list(ids)).rowcount

        removed = await self._call(op)
        self.dead_letter_count -= removed
        return removed


class _Checkpointer:
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


# -- helpers run on the writer thread ---------------------------------------------------------------


def _deliver(results: list[tuple[asyncio.Future, bool, Any]]) -> None:
    for future, ok, value in results:
        if not future.done():
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


@dataclass(slots=True)
class _Append:
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

    def __call__(self, conn: sqlite3.Connection, store: Store) -> None:
        if self.lengths:
            _insert_pending(conn, self.tag, self.data, pack_lengths(self.lengths), len(self.lengths), self.nbytes, self.oldest_ms, self.now)
        _insert_dead(conn, self.dead, self.now)


def _coalesce(group: list, sep: bytes) -> list[tuple[Callable[[sqlite3.Connection, Store], Any], list[asyncio.Future]]]:
    """The group's operations in order, each with the futures it answers; appends of the same tag
    that follow one another become one."""
    out: list[tuple[Any, list[asyncio.Future]]] = []
    run: list[tuple[_Append, asyncio.Future]] = []

    def close_run() -> None:
        if len(run) == 1:
            out.append((run[0][0], [run[0][1]]))
        elif run:
            out.append((_merge([a for a, _ in run], sep), [f for _, f in run]))
        run.clear()

    for fn, future in group:
        if type(fn) is _Append:
            if run and run[0][0].tag != fn.tag:
                close_run()
            run.append((fn, future))
        else:
            close_run()
            out.append((fn, [future]))
    close_run()
    return out


def _merge(appends: list[_Append], sep: bytes) -> _Append:
    full = [a for a in appends if a.lengths]
    lengths = array("I")
    for a in full:
        lengths.extend(a.lengths if type(a.lengths) is array else array("I", a.lengths))
    dead = [d for a in appends for d in a.dead]
    if not full:
        return _Append(appends[0].tag, b"", lengths, 0, 0, dead, appends[0].now)
    return _Append(
        appends[0].tag, sep.join(a.data for a in full), lengths, sum(a.nbytes for a in full),
        min(a.oldest_ms for a in full), dead, min(a.now for a in full),
    )


def _set_result(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _totals(conn: sqlite3.Connection, store: Store) -> tuple[int, int, int]:
    p = conn.execute("SELECT COALESCE(SUM(count - taken), 0), COALESCE(SUM(bytes - taken_bytes), 0) FROM pending").fetchone()
    b = conn.execute("SELECT COALESCE(SUM(count), 0), COALESCE(SUM(bytes), 0) FROM batches").fetchone()
    d = conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
    return p[0] + b[0], p[1] + b[1], d[0]


def _insert_dead(conn: sqlite3.Connection, dead: Sequence[DeadLetter], now: float) -> None:
    if dead:
        conn.executemany(
            "INSERT INTO dead_letters (created_at, kind, reason, status, tag, time_ns, record, event, payload_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(now, d.kind, d.reason, d.status, d.tag, d.time_ns, d.record, d.event, d.payload_id) for d in dead],
        )


def _insert_pending(conn: sqlite3.Connection, tag: str | None, data: bytes, packed: bytes, count: int, nbytes: int, oldest_ms: int, now: float) -> int:
    row = conn.execute(
        "INSERT INTO pending (tag, lengths, count, bytes, oldest_ms, admitted_at) VALUES (?, ?, ?, ?, ?, ?)",
        (tag, packed, count, nbytes, oldest_ms, now),
    ).lastrowid
    conn.execute("INSERT INTO pending_data (id, data) VALUES (?, ?)", (row, data))
    return row


def _insert_batch(
    conn: sqlite3.Connection, tag: str | None, data: bytes, lengths: Sequence[int], nbytes: int, oldest_ms: int,
    created_at: float, retry_at: float, segments: Sequence[tuple[int, int, int]],
) -> Batch:
    """A new frozen batch referring to ``segments``; each row it refers to counts the reference."""
    payload_id = str(uuid.uuid4())
    packed = pack_lengths(lengths)
    packed_segments = _pack_segments(segments)
    cursor = conn.execute(
        "INSERT INTO batches (payload_id, tag, segments, lengths, count, bytes, oldest_ms, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (payload_id, tag, packed_segments, packed, len(lengths), nbytes, oldest_ms, created_at, retry_at),
    )
    conn.executemany("UPDATE pending SET refs = refs + 1 WHERE id = ?", [(row,) for row, _, _ in segments])
    return Batch(cursor.lastrowid, payload_id, tag, data, packed, len(lengths), nbytes, oldest_ms, created_at, 0, packed_segments)


def _drop_batch(conn: sqlite3.Connection, batch: Batch) -> bool:
    """Delete a batch (delivered, buried or split) and the rows nothing refers to any more. False,
    changing nothing, if it is no longer stored (a stale Batch: dropping it twice would release
    its rows' references twice; ids are reused, so the payload id is checked too)."""
    if conn.execute("DELETE FROM batches WHERE id = ? AND payload_id = ?", (batch.id, batch.payload_id)).rowcount == 0:
        return False
    rows = [(row,) for row, _, _ in _unpack_segments(batch.segments)]
    conn.executemany("UPDATE pending SET refs = refs - 1 WHERE id = ?", rows)
    marks = ",".join("?" * len(rows))
    done = [(r[0],) for r in conn.execute(f"SELECT id FROM pending WHERE id IN ({marks}) AND refs = 0 AND taken = count", [r for (r,) in rows])]
    conn.executemany("DELETE FROM pending WHERE id = ?", done)
    conn.executemany("DELETE FROM pending_data WHERE id = ?", done)
    return True


def _load_batch(conn: sqlite3.Connection, sep: bytes, batch_id: int, payload_id: str, tag: str | None, segments: bytes, *rest: Any) -> Batch:
    """A batch with its bytes, joined from the pending rows it refers to (always the same bytes:
    those rows are never rewritten while a batch refers to them). Only the bytes the batch holds
    are read from each row (a row of a 64 MiB request is cut into many batches): SQLite slices
    them while the GIL is released, and only the slice is copied into Python."""
    triples = _unpack_segments(segments)
    ids = sorted({row for row, _, _ in triples})
    marks = ",".join("?" * len(ids))
    stored = dict(conn.execute(f"SELECT id, lengths FROM pending WHERE id IN ({marks})", ids).fetchall())
    seplen = len(sep)
    parts = []
    for row, first, end in triples:
        lengths = unpack_lengths(stored[row])
        if first == 0 and end == len(lengths):
            (data,) = conn.execute("SELECT data FROM pending_data WHERE id = ?", (row,)).fetchone()
        else:
            start = sum(lengths[:first]) + first * seplen
            size = sum(lengths[first:end]) + (end - first - 1) * seplen
            (data,) = conn.execute("SELECT substr(data, ?, ?) FROM pending_data WHERE id = ?", (start + 1, size, row)).fetchone()
        parts.append(data)
    return Batch(batch_id, payload_id, tag, sep.join(parts), *rest, segments)


def _pack_segments(segments: Sequence[tuple[int, int, int]]) -> bytes:
    return array("q", [n for segment in segments for n in segment]).tobytes()


def _unpack_segments(blob: bytes) -> list[tuple[int, int, int]]:
    flat = array("q")
    flat.frombytes(blob)
    return [(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]


def _split_segments(segments: list[tuple[int, int, int]], half: int) -> tuple[list, list]:
    """The segments of a batch's first ``half`` events, and of the rest."""
    first, second, seen = [], [], 0
    for row, start, end in segments:
        n = end - start
        if seen + n <= half:
            first.append((row, start, end))
        elif seen >= half:
            second.append((row, start, end))
        else:
            cut = start + (half - seen)
            first.append((row, start, cut))
            second.append((row, cut, end))
        seen += n
    return first, second


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a store written by an earlier version to this layout, keeping every event and every
    batch's payload id (a batch that held a copy of its events becomes a row it refers to)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    columns = {r[1] for r in conn.execute("PRAGMA table_info(batches)")}
    if version >= SCHEMA_VERSION or "data" not in columns:
        return
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ALTER TABLE pending RENAME TO pending_v1")
    conn.execute(_table("pending"))
    conn.execute(_table("pending_data"))
    conn.execute(
        "INSERT INTO pending (id, tag, lengths, count, bytes, oldest_ms, admitted_at) "
        "SELECT id, tag, lengths, count, bytes, oldest_ms, admitted_at FROM pending_v1"
    )
    conn.execute("INSERT INTO pending_data (id, data) SELECT id, data FROM pending_v1")
    conn.execute("DROP TABLE pending_v1")
    conn.execute("ALTER TABLE batches RENAME TO batches_v1")
    conn.execute("DROP INDEX IF EXISTS batches_due")
    conn.execute(_table("batches"))
    old = conn.execute(
        "SELECT id, payload_id, tag, data, lengths, count, bytes, oldest_ms, created_at, attempts, next_attempt_at, last_status, last_error FROM batches_v1"
    ).fetchall()
    for bid, payload_id, tag, data, lengths, count, nbytes, oldest_ms, created_at, attempts, next_at, status, error in old:
        row = _insert_pending(conn, tag, data, lengths, count, nbytes, oldest_ms, created_at)
        conn.execute("UPDATE pending SET taken = count, taken_bytes = bytes, refs = 1 WHERE id = ?", (row,))
        conn.execute(
            "INSERT INTO batches (id, payload_id, tag, segments, lengths, count, bytes, oldest_ms, created_at, attempts, next_attempt_at, last_status, last_error) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (bid, payload_id, tag, _pack_segments([(row, 0, count)]), lengths, count, nbytes, oldest_ms, created_at, attempts, next_at, status, error),
        )
    conn.execute("DROP TABLE batches_v1")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute("COMMIT")


def _fragments(batch: Batch, sep: int) -> list[bytes]:
    out, pos = [], 0
    for n in unpack_lengths(batch.lengths):
        out.append(batch.data[pos : pos + n])
        pos += n + sep
    return out


def _cut(conn: sqlite3.Connection, store: "Store", max_body: int, max_records: int, now: float, retry_at: float) -> int:
    """Freeze pending events, in order, into batches that fit the limits exactly.

    Only the rows' lengths are read: a batch refers to the events it holds (row, first, end), so
    cutting writes no event again. At most ``MAX_BATCHES_PER_CUT`` batches are cut per call, so the
    writer thread is not held long (appends waiting for their commit go between two calls). A row
    a batch ends inside is taken up to there and the next batch starts from that event."""
    seplen, framing = len(store.separator), store.framing
    batches = 0
    tag: str | None = None  # the tag of the batch being filled: a batch holds one tag
    segments: list[tuple[int, int, int]] = []
    segment_bytes: list[int] = []
    lengths = array("I")
    nbytes = 0
    oldest = None

    def flush() -> None:
        nonlocal segments, segment_bytes, lengths, nbytes, oldest, batches
        if lengths:
            _insert_batch(conn, tag, b"", lengths, nbytes, oldest, now, retry_at, segments)
            conn.executemany(
                "UPDATE pending SET taken = ?, taken_bytes = taken_bytes + ? WHERE id = ?",
                [(end, n, row) for (row, _, end), n in zip(segments, segment_bytes)],
            )
            batches += 1
        segments, segment_bytes, lengths, nbytes, oldest = [], [], array("I"), 0, None

    last_id = -1
    while True:
        rows = conn.execute(
            "SELECT id, tag, lengths, count, taken, oldest_ms FROM pending WHERE taken < count AND id > ? ORDER BY id LIMIT 64",
            (last_id,),
        ).fetchall()
        if not rows:
            break
        for row_id, row_tag, packed, count, start, oldest_ms in rows:
            last_id = row_id
            if lengths and row_tag != tag:
                flush()
                if batches >= MAX_BATCHES_PER_CUT:
                    return batches
            tag = row_tag
            row_lengths = unpack_lengths(packed)
            while start < count:  # start: the first event of this row not yet in a batch
                # What the batch holds: framing, its fragments and the separators between them; the
                # separator before the next fragment is counted with that fragment (``add``).
                room_bytes = max_body - framing - (nbytes + max(len(lengths) - 1, 0) * seplen)
                room_records = max_records - len(lengths)
                # How many of this row's remaining fragments fit.
                take, size = 0, 0
                while start + take < count and take < room_records:
                    add = row_lengths[start + take] + (seplen if (lengths or take) else 0)
                    if size + add > room_bytes:
                        break
                    size += add
                    take += 1
                if take == 0:
                    if not lengths:  # a single fragment over the cap: refused at admit, never here
                        raise ValueError("a stored event is larger than the batch limit")
                    flush()
                    if batches >= MAX_BATCHES_PER_CUT:
                        return batches
                    continue
                taken = sum(row_lengths[start : start + take])
                segments.append((row_id, start, start + take))
                segment_bytes.append(taken)
                lengths.extend(row_lengths[start : start + take])
                nbytes += taken
                oldest = oldest_ms if oldest is None else min(oldest, oldest_ms)
                start += take
                if start < count:  # the batch is full in the middle of this row
                    flush()
                    if batches >= MAX_BATCHES_PER_CUT:
                        return batches
    flush()
    return batches
