"""The store of one durable output: what its admit, its sender and the ``buffer`` and ``dlq``
commands call. Every operation runs on the writer thread (:mod:`fluent_ld.store.writer`); the
counters the output's backpressure reads (pending events and bytes, dead letters) are kept here,
in memory, and changed only once an operation committed."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fluent_ld.pipeline.admission import DeadLetter
from fluent_ld.store import dead_letters, lock, rows
from fluent_ld.store.batches import Batch, cut_is_due, fragments, plan_split
from fluent_ld.store.errors import StoreError
from fluent_ld.store.schema import connect, connect_readonly
from fluent_ld.store.writer import Append, Checkpointer, Writer

__all__ = ["WRITABLE_AFTER", "Store"]

# A store whose commits failed counts as not writable until an append commits, or this long
# without another failure (while it is full, retried appends and cuts fail every second).
WRITABLE_AFTER = 10.0


class Store:
    """``separator`` joins stored fragments (b"," for JSON events, b"" for msgpack entries) and
    ``framing`` is what a batch body adds around them (2 for "[...]"), so cuts fit exactly.

    ``kind``: the type of the output whose events the store holds, recorded in a new store and
    checked against the one an existing store recorded (:class:`StoreFormatError` on a mismatch);
    None checks nothing. A file store opened for writing holds the store's lock while it is open
    (:class:`StoreInUseError` if another process holds it). ``readonly``: only reads, beside a
    node that may be writing: no lock, no migration, nothing recorded."""

    def __init__(
        self,
        path: str | None,
        separator: bytes = b",",
        framing: int = 2,
        *,
        kind: str | None = None,
        readonly: bool = False,
    ) -> None:
        self.path = path
        self.separator = separator
        self.framing = framing
        self.kind = kind
        self.readonly = readonly and path is not None
        self.pending_events = 0
        self.pending_bytes = 0  # events not yet delivered: pending rows and batches
        self.dead_letter_count = 0
        self._appended_at = 0.0  # when an append last committed
        self._lock: str | None = None
        self._writer = Writer(
            self,
            path or "memory store",
            self._connect,
            separator,
            checkpoint=path if path is not None and not self.readonly else None,
            begin="BEGIN" if self.readonly else "BEGIN IMMEDIATE",
        )
        self._call = self._writer.call

    # -- lifecycle -----------------------------------------------------------------------------------

    async def open(self) -> None:
        if self.path is not None and not self.readonly:
            try:
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
                self._lock = lock.acquire(self.path)
            except StoreError:
                raise
            except OSError as exc:
                raise StoreError(f"{self.path}: {exc}") from exc
        try:
            await self._writer.start()
            self.pending_events, self.pending_bytes, self.dead_letter_count = await self._call(lambda conn, store: rows.totals(conn))
        except BaseException:
            await self._writer.stop()
            self._unlock()
            raise

    @property
    def is_open(self) -> bool:
        return self._writer.running

    async def close(self) -> None:
        await self._writer.stop()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            lock.release(self._lock)
            self._lock = None

    def _connect(self):
        if self.readonly:
            return connect_readonly(self.path)
        return connect(self.path, self.kind, self.separator, self.framing)

    # -- what the writer reports ---------------------------------------------------------------------

    @property
    def on_commit(self) -> Callable[[float], None] | None:
        """Called with each commit's seconds, from the writer thread."""
        return self._writer.on_commit

    @on_commit.setter
    def on_commit(self, fn: Callable[[float], None] | None) -> None:
        self._writer.on_commit = fn

    @property
    def fsyncs(self) -> int:
        return self._writer.fsyncs

    @property
    def fsync_seconds(self) -> float:
        return self._writer.fsync_seconds

    @property
    def last_error(self) -> str | None:
        """The last failed commit's reason (disk full, I/O error)."""
        return self._writer.last_error

    @property
    def _failed_at(self) -> float | None:
        """When a commit last failed (monotonic)."""
        return self._writer.failed_at

    @_failed_at.setter
    def _failed_at(self, at: float | None) -> None:
        self._writer.failed_at = at

    @property
    def _checkpointer(self) -> Checkpointer | None:
        return self._writer.checkpointer

    @property
    def writable(self) -> bool:
        """New events can be stored: no commit failed since the last append committed (small
        updates may still commit on a full disk, so they do not count), or for WRITABLE_AFTER
        seconds; and the folder can take new files (the WAL, a checkpoint)."""
        failed = self._writer.failed_at
        if failed is not None and self._appended_at < failed and time.monotonic() - failed < WRITABLE_AFTER:
            return False
        return self.path is None or os.access(os.path.dirname(self.path) or ".", os.W_OK)

    # -- admit ---------------------------------------------------------------------------------------

    async def append(self, data: bytes, lengths: Sequence[int], nbytes: int, oldest_ms: int, dead: Sequence[DeadLetter] = (), tag: str | None = None) -> None:
        """Store one request's events (``data``: fragments joined by the separator; ``nbytes``:
        the fragments' own bytes) and its dead letters; returns once they are on disk."""
        count = len(lengths)
        op = Append(tag, data, lengths, nbytes, oldest_ms, dead, time.time())
        await self._call(op)
        self._appended_at = time.monotonic()
        self.pending_events += count
        self.pending_bytes += nbytes
        self.dead_letter_count += len(dead)

    async def add_dead_letters(self, dead: Sequence[DeadLetter]) -> None:
        await self._call(lambda conn, store: dead_letters.insert(conn, dead, time.time()))
        self.dead_letter_count += len(dead)

    # -- the sender ----------------------------------------------------------------------------------

    async def cut_batches(self, max_body: int, max_records: int, linger: float, now: float, retry_at: float) -> int:
        """Freeze pending events into batches of at most ``max_body`` body bytes and
        ``max_records`` events, once the oldest pending row has waited ``linger`` seconds or a
        full batch is waiting. Returns how many batches were cut."""

        def op(conn, store: Store) -> int:
            if not cut_is_due(*rows.waiting(conn), now, linger, max_body, max_records):
                return 0
            return rows.cut(conn, len(store.separator), store.framing, max_body, max_records, now, retry_at)

        return await self._call(op)

    async def due_batches(self, now: float, limit: int, exclude: Sequence[int] = ()) -> list[Batch]:
        return await self._call(lambda conn, store: rows.due_batches(conn, store.separator, now, limit, exclude))

    async def next_attempt_at(self) -> float | None:
        return await self._call(lambda conn, store: conn.execute("SELECT MIN(next_attempt_at) FROM batches").fetchone()[0])

    async def delivered(self, batch: Batch) -> None:
        if await self._call(lambda conn, store: rows.drop_batch(conn, batch)):
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
        await self._call(lambda conn, store: conn.execute("UPDATE batches SET next_attempt_at = ? WHERE next_attempt_at < ?", (until, until)))

    async def split(self, batch: Batch, now: float) -> list[Batch]:
        """Replace a batch with its two halves, each a new frozen batch with a new payload id."""
        halves = plan_split(batch, len(self.separator))
        return await self._call(lambda conn, store: rows.split_batch(conn, batch, halves, now))

    async def bury(self, batch: Batch, kind: str, reason: str, status: int | None) -> None:
        """Move every event of a batch to the dead-letter store (one letter per event)."""
        events = fragments(batch, len(self.separator))
        now = time.time()

        def op(conn, store: Store) -> bool:
            if not rows.drop_batch(conn, batch):
                return False
            dead_letters.insert(
                conn,
                [DeadLetter(kind, reason, status, tag=batch.tag, event=f, payload_id=batch.payload_id) for f in events],
                now,
            )
            return True

        if await self._call(op):
            self.pending_events -= batch.count
            self.pending_bytes -= batch.bytes
            self.dead_letter_count += len(events)

    async def oldest_wait(self, now: float) -> float:
        """Seconds the oldest undelivered event has been stored (0 when none); for events already
        in a batch, counted from the cut, so at most flush_interval short."""
        oldest = await self._call(lambda conn, store: rows.oldest_admitted(conn))
        return max(now - oldest, 0.0) if oldest else 0.0

    # -- the buffer and dlq commands -----------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        return await self._call(lambda conn, store: rows.status(conn))

    async def dead_letters(self, limit: int = 100, ids: Sequence[int] | None = None, newest: bool = False) -> list[dict[str, Any]]:
        """The first ``limit`` dead letters, or the last ones, newest first (``newest``), or those with ``ids``."""
        return await self._call(lambda conn, store: dead_letters.read(conn, limit, ids, newest))

    async def readmit(
        self,
        events: Sequence[tuple[str | None, bytes]],
        letter_ids: Sequence[int],
        oldest_ms: int,
        reasons: Mapping[int, str] | None = None,
    ) -> int:
        """Put dead letters back among the pending events, in one transaction: ``events`` (tag,
        fragment in this store's format) are appended (one row per run of one tag) and the
        letters ``letter_ids`` deleted; letters kept get their new ``reasons`` (by id). Returns
        how many letters were deleted."""
        now = time.time()
        reasons = reasons or {}
        deleted = await self._call(lambda conn, store: dead_letters.readmit(conn, events, store.separator, oldest_ms, now, letter_ids, reasons))
        self.pending_events += len(events)
        self.pending_bytes += sum(len(f) for _, f in events)
        self.dead_letter_count -= deleted
        return deleted

    async def purge_dead_letters(self, ids: Sequence[int] | None) -> int:
        removed = await self._call(lambda conn, store: dead_letters.purge(conn, ids))
        self.dead_letter_count -= removed
        return removed
