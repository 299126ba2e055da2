"""The ``<buffer>`` section of the durable outputs (LaunchDarkly, forward): where admitted events
wait, how batches are cut, how failed sends are retried, and when sources are slowed."""

from __future__ import annotations

import asyncio
import logging
import time

from fluent_ld import metrics
from fluent_ld.config.params import Bool, Enum, Integer, Param, Section, Size, String, Time
from fluent_ld.encode import LD_BODY_LIMIT
from fluent_ld.plugin import BufferFullError, StartError
from fluent_ld.store import Store, StoreError, store_file

__all__ = ["BUFFER", "STORE_RETRY_INTERVAL", "Room", "StoreHealth", "open_store", "refresh_store_metrics", "store_for", "watermarks"]

BUFFER = Section(
    "buffer",
    "Where admitted events wait, how batches are cut, and how failed sends are retried.",
    params=(
        Param("@type", Enum("file", "memory"), "file", "file: SQLite on disk, fsynced before the ack; memory: lost on a crash (tests, trials)."),
        Param("path", String(), None, "The folder of the store (file buffers); one database per output per worker."),
        Param("flush_interval", Time(min=0), 1.0, "How long events may wait for more before a batch is cut."),
        Param("chunk_limit_size", Size(min=1024, max=LD_BODY_LIMIT), 9 * 1024 * 1024, "The largest batch body; LaunchDarkly takes at most 10 MB."),
        Param("chunk_limit_records", Integer(min=1), 50_000, "The most events in one batch."),
        Param("total_limit_size", Size(min=1024), 4 * 1024**3, "Undelivered events kept at most; past the high watermark sources are slowed."),
        Param("high_watermark", Size(min=1), None, "Above this many undelivered bytes, admit reports full (default: 90% of total_limit_size)."),
        Param("low_watermark", Size(min=0), None, "Below this, sources resume (default: 70% of total_limit_size)."),
        Param("retry_wait", Time(min=0.001), 1.0, "The wait after a first failed send; it doubles per attempt."),
        Param("retry_max_interval", Time(min=0.001), 300.0, "The longest wait between attempts."),
        Param("retry_timeout", Time(min=1), 72 * 3600.0, "A batch not delivered after this long goes to the dead-letter store as expired."),
        Param("retry_randomize", Bool(), True, "Spread each wait over 87.5%..112.5% so outputs do not retry in step."),
    ),
)


def watermarks(buffer) -> tuple[int, int]:
    """(high, low) in bytes: given, or 90% and 70% of total_limit_size."""
    total = buffer.total_limit_size
    high = buffer.high_watermark if buffer.high_watermark is not None else int(total * 0.9)
    low = buffer.low_watermark if buffer.low_watermark is not None else int(total * 0.7)
    return high, low


def store_for(buffer, plugin_id: str, worker: int, separator: bytes = b",", framing: int = 2, *, kind: str | None = None) -> Store:
    """The store of one output in one worker: a file under ``<buffer> path``, or memory.
    ``kind``: the output's type, recorded in a new store and checked against an existing one's
    (opening a store that holds another type's events fails); None checks nothing."""
    path = store_file(buffer.path, plugin_id, worker) if buffer["@type"] == "file" else None
    return Store(path, separator, framing, kind=kind)


async def open_store(store: Store, plugin_id: str) -> None:
    store.on_commit = metrics.FSYNC_SECONDS.labels(plugin_id).observe
    if store.is_open:  # a memory store handed over by a reload, with its events
        return
    try:
        await store.open()
    except StoreError as exc:
        raise StartError(f"cannot open the store: {exc}") from exc
    metrics.DEAD_LETTERS.labels(plugin_id).set(store.dead_letter_count)


async def refresh_store_metrics(store: Store, plugin_id: str) -> None:
    """The store's gauges: depth, dead letters, the oldest event's wait, writability."""
    metrics.PENDING_EVENTS.labels(plugin_id).set(store.pending_events)
    metrics.PENDING_BYTES.labels(plugin_id).set(store.pending_bytes)
    metrics.DEAD_LETTERS.labels(plugin_id).set(store.dead_letter_count)
    metrics.STORE_WRITABLE.labels(plugin_id).set(1 if store.writable else 0)
    try:
        age = await store.oldest_wait(time.time()) if store.pending_events else 0.0
    except StoreError:
        return  # closed, or failing: store_writable already says so
    metrics.OLDEST_PENDING_AGE.labels(plugin_id).set(age)


class Room:
    """Backpressure of one output: closed when the store passes high_watermark, open again under
    low_watermark (the gap keeps sources from flapping). The time spent closed is counted."""

    def __init__(self, plugin_id: str) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._closed_at = 0.0
        self._seconds = metrics.BACKPRESSURE_SECONDS.labels(plugin_id)
        self.wait = self._open.wait

    def close(self) -> None:
        if self._open.is_set():
            self._open.clear()
            self._closed_at = time.monotonic()

    def open(self) -> None:
        if not self._open.is_set():
            self._open.set()
            self._seconds.inc(time.monotonic() - self._closed_at)

    def refresh(self) -> None:
        """Count the time closed so far, so the counter rises during a long spell, not after."""
        if not self._open.is_set():
            now = time.monotonic()
            self._seconds.inc(now - self._closed_at)
            self._closed_at = now


# How often a source retries a request its output could not commit (disk full, I/O error).
STORE_RETRY_INTERVAL = 1.0


class StoreHealth:
    """A commit that fails (disk full, I/O error) is backpressure, not an error for the client:
    nothing was stored, so nothing is acked; the source holds the request, stops reading, and tries
    it again every STORE_RETRY_INTERVAL until the store commits again. Logged once each way."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.down = False

    def failed(self, exc: StoreError) -> BufferFullError:
        if not self.down:
            self.down = True
            self.log.error(
                "The store cannot commit (%s): nothing more is acknowledged; sources hold their requests and "
                "retry every %gs. Free disk space; nothing already stored is lost.",
                exc,
                STORE_RETRY_INTERVAL,
            )
        return BufferFullError(f"the store cannot commit: {exc}", lambda: asyncio.sleep(STORE_RETRY_INTERVAL))

    def ok(self) -> None:
        if self.down:
            self.down = False
            self.log.info("The store commits again; sources resume.")
