"""The skeleton every durable output shares: admitted events wait in the output's store until a
delivery attempt's :mod:`~fluent_ld.outputs.outcome` says they are delivered (or dead letters).

admit: room? -> append to the store (fsync) -> return (the source acks after this).
drain: cut frozen batches -> ``deliver`` each (at most ``concurrency`` at once) -> carry out the
outcome: delete | split | bury | pause the output | retry later, the same bytes.

An output supplies only what differs: its parameters, its encoder (what the store holds), how it
opens and closes its connections, and :meth:`DurableOutput.deliver`, which sends one batch and
says what the answer means. Adding an output is one small file.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import ClassVar

from fluent_ld import metrics
from fluent_ld.config.errors import ConfigError
from fluent_ld.config.params import Conf
from fluent_ld.outputs.buffer import Room, StoreHealth, open_store, refresh_store_metrics, store_for, watermarks
from fluent_ld.outputs.outcome import Bury, Delivered, Outcome, Pause, Retry, Split, expired
from fluent_ld.outputs.retry import RetryPolicy
from fluent_ld.pipeline.admission import DeadLetter, Encoded
from fluent_ld.plugin import BufferFullError, Output
from fluent_ld.store import Batch, StoreError

__all__ = ["DEAD_LETTER_LOG_INTERVAL", "DurableOutput", "PAUSE_PROBE_INTERVAL"]

# How often an output paused for a configuration fix (401/403/404) tries one batch again, to
# notice the fix by itself (or retry_max_interval, if that is shorter).
PAUSE_PROBE_INTERVAL = 60.0
# Dead letters are logged at most once per kind this often (seconds); the line says how many
# went there since the last one. A flood of refused events must not flood the log as well.
DEAD_LETTER_LOG_INTERVAL = 10.0


class DurableOutput(Output):
    # The store's format: fragments joined by ``separator`` into a body, and how each event's
    # length is framed (see fluent_ld.store).
    separator: ClassVar[bytes] = b","
    framing: ClassVar[int] = 2
    # Whether batches keep the tag their events came with (a batch then holds one tag; without,
    # requests of every tag share batches).
    keeps_tags: ClassVar[bool] = False
    # Bytes a body adds around a batch's data (LaunchDarkly: the JSON array's brackets).
    body_overhead: ClassVar[int] = 0
    # Who answers deliveries, in log lines.
    receiver: ClassVar[str] = "The receiver"
    # What an event is called in log lines ("events", "records").
    noun: ClassVar[str] = "events"

    @classmethod
    def check(cls, conf: Conf) -> list[ConfigError]:
        label = f"<match> @type {cls.type_name} <buffer>"
        buffer = conf.buffer
        errors = []
        if buffer["@type"] == "file" and not buffer.path:
            errors.append(ConfigError(buffer.where, f"{label}: a file buffer needs 'path'"))
        high, low = watermarks(buffer)
        if low >= high:
            errors.append(ConfigError(buffer.where, f"{label}: low_watermark ({low}) must be below high_watermark ({high})"))
        return errors

    def __init__(self, conf: Conf, plugin_id: str, worker: int = 0) -> None:
        super().__init__(conf, plugin_id, worker)
        buffer = conf.buffer
        self.store = store_for(buffer, plugin_id, worker, separator=self.separator, framing=self.framing, kind=self.type_name)
        self.policy = RetryPolicy(buffer.retry_wait, buffer.retry_max_interval, buffer.retry_timeout, buffer.retry_randomize)
        self.high, self.low = watermarks(buffer)
        self.concurrency = 1  # batches in flight at once
        self.room = Room(plugin_id)
        self.health = StoreHealth(self.log)
        self.wake = asyncio.Event()
        self.inflight: dict[int, asyncio.Task] = {}
        self.paused_until = 0.0  # no batch is sent before this (Retry-After, a pause for a fix)
        self.retry_after_until = 0.0  # the end of the latest Retry-After: a resumed fix keeps it
        self.paused_for: Pause | None = None  # the fix the output waits for
        self._dead_logged: dict[str, tuple[float, int]] = {}  # kind -> (last line, letters since)
        self._drainer: asyncio.Task | None = None
        self._stopping = False

    # -- what an output supplies ---------------------------------------------------------------------

    async def open(self) -> None:
        """Open connections, sessions (called by start, after the store opened)."""

    async def close(self) -> None:
        """Close what :meth:`open` opened (called by stop, after the last batch in flight)."""

    def started(self) -> str:
        """The start-up log line's first sentence (where the output sends)."""
        return f"Sending with @type {self.type_name}."

    async def deliver(self, batch: Batch) -> Outcome:
        """Send ``batch`` once and say what the answer means. Failures to reach the receiver are
        an outcome (:func:`~fluent_ld.outputs.outcome.transport_failure`), not an exception."""
        raise NotImplementedError

    def delivered(self, batch: Batch) -> None:
        """Count what only this output counts of a delivered batch: called once its deletion is
        committed (a batch whose deletion failed is sent again, and must not count twice)."""

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        await open_store(self.store, self.id)
        try:
            await self.open()
        except BaseException:
            if not self.keep_store_open:
                await self.store.close()  # its writer thread and its lock
            raise
        metrics.AUTH_ERROR.labels(self.id).set(0)
        self._update_room()
        self._drainer = asyncio.get_running_loop().create_task(self._drain(), name=f"drain:{self.id}")
        self.log.info(
            "%s Store %s holds %d undelivered %s and %d dead letters.",
            self.started(),
            self.store.path or "memory (lost on a crash)",
            self.store.pending_events,
            self.noun,
            self.store.dead_letter_count,
        )

    async def stop(self) -> None:
        self._stopping = True
        self.wake.set()
        if self._drainer is not None:
            self._drainer.cancel()
            try:
                await self._drainer
            except asyncio.CancelledError:
                pass
        if self.inflight:
            # Batches already sent may finish; whatever does not stays in the store for the next run.
            _, pending = await asyncio.wait(list(self.inflight.values()), timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        try:
            await self.close()
        finally:
            if not self.keep_store_open:  # a memory store handed to the output replacing this one
                await self.store.close()  # its writer thread and its lock, whatever close() did
        self.log.info("Stopped with %d undelivered %s in the store.", self.store.pending_events, self.noun)

    # -- admit ---------------------------------------------------------------------------------------

    async def commit(self, tag: str, encoded: Encoded) -> None:
        if self.store.pending_bytes >= self.high:
            self.room.close()
            self.count("backpressure_refusals")
            raise BufferFullError(f"{self.store.pending_bytes} undelivered bytes is over high_watermark ({self.high})", self.room.wait)
        dead = encoded.dead
        if encoded.lengths or dead:
            try:
                await self.store.append(encoded.data, encoded.lengths, encoded.nbytes, encoded.oldest_ms, dead, tag=tag if self.keeps_tags else None)
            except StoreError as exc:
                raise self.health.failed(exc) from exc  # the source tries the whole request again
            self.health.ok()
            self.wake.set()
        # Counted once stored: a request retried after a failed commit is counted once.
        metrics.RECORDS_RECEIVED.labels(self.id).inc(encoded.records)
        self.count("records_admitted", encoded.count)
        if encoded.unmapped:
            self.count("records_unmapped", encoded.unmapped)
            metrics.RECORDS_REJECTED.labels(self.id, "unmapped").inc(encoded.unmapped)
        if dead:
            kinds: dict[str, list[DeadLetter]] = {}
            for letter in dead:
                kinds.setdefault(letter.kind, []).append(letter)
            for kind, letters in kinds.items():
                metrics.RECORDS_REJECTED.labels(self.id, kind).inc(len(letters))
                self._dead_lettered(kind, len(letters), letters[0].reason)

    async def dead_letter(self, tag: str, record: bytes, reason: str) -> None:
        await self.store.add_dead_letters([DeadLetter("invalid", reason, None, tag, None, record)])
        self._dead_lettered("invalid", 1, reason)

    async def refresh_metrics(self) -> None:
        self.room.refresh()
        await refresh_store_metrics(self.store, self.id)

    # -- drain ---------------------------------------------------------------------------------------

    async def _drain(self) -> None:
        buffer = self.conf.buffer
        loop = asyncio.get_running_loop()
        while not self._stopping:
            # Cleared before the cycle's awaits: a commit or a finished send during them sets it
            # again, and the wait below returns at once.
            self.wake.clear()
            now = time.time()
            wait = min(max(buffer.flush_interval / 2, 0.05), 1.0)
            try:
                if now >= self.paused_until:
                    await self.store.cut_batches(buffer.chunk_limit_size, buffer.chunk_limit_records, buffer.flush_interval, now, now)
                    free = self.concurrency - len(self.inflight)
                    if self.paused_for is not None:
                        free = min(free, 1 - len(self.inflight))  # probe with one batch at a time
                    if free > 0:
                        for batch in await self.store.due_batches(now, free, list(self.inflight)):
                            self.inflight[batch.id] = loop.create_task(self._send(batch), name=f"send:{self.id}:{batch.payload_id}")
                    nxt = await self.store.next_attempt_at()
                    if nxt is not None:
                        wait = min(wait, max(nxt - time.time(), 0.01))
                else:
                    wait = min(self.paused_until - now, 1.0)
            except StoreError as exc:
                if not self.health.down:  # while it is down, admit has said so once already
                    self.log.error("The store failed while cutting or reading batches: %s; trying again every second.", exc)
                    self.health.down = True
                wait = 1.0
            except Exception:  # a bug: the loop must go on, or nothing would be sent again until a restart
                self.log.exception("Cutting or choosing batches failed unexpectedly; trying again every second.")
                wait = 1.0
            self._update_room()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=max(wait, 0.01))
            except TimeoutError:
                pass

    async def _send(self, batch: Batch) -> None:
        try:
            now = time.time()
            if now < self.paused_until:
                return  # paused since the drain chose it: it stays due for later
            outcome: Outcome | None = expired(self.policy, batch.created_at, batch.attempts, now)
            if outcome is None:
                if batch.attempts == 0:
                    metrics.BATCH_BYTES.labels(self.id).observe(len(batch.data) + self.body_overhead)
                    metrics.BATCH_EVENTS.labels(self.id).observe(batch.count)
                outcome = await self.deliver(batch)
            await self._carry_out(batch, outcome)
        except StoreError as exc:
            self.log.error("The store failed while recording a send of batch %s: %s; it will be sent again.", batch.payload_id, exc)
        except Exception as exc:  # a bug: never resend at once in a loop, never lose the batch
            self.log.exception("Sending batch %s failed unexpectedly; it is retried after the usual backoff.", batch.payload_id)
            try:
                await self.store.failed(batch, None, f"internal error: {exc!r}", time.time() + self.policy.delay(batch.attempts + 1, random.random()))
            except StoreError:
                pass
        finally:
            self.inflight.pop(batch.id, None)
            self._update_room()
            self.wake.set()

    async def _carry_out(self, batch: Batch, outcome: Outcome) -> None:
        now = time.time()
        if type(outcome) is Delivered:
            if self.paused_for is not None:
                self.log.info("%s accepts this output's batches again (was %d); resuming.", self.receiver, self.paused_for.status)
                self.paused_for = None
                self.paused_until = self.retry_after_until  # a Retry-After pause still holds
                metrics.AUTH_ERROR.labels(self.id).set(0)
            await self.store.delivered(batch)
            self.delivered(batch)
            self.count("records_delivered", batch.count)
            metrics.RECORDS_DELIVERED.labels(self.id).inc(batch.count)
        elif type(outcome) is Split:
            halves = await self.store.split(batch, now)
            self.count("batches_split")
            self.log.warning(
                "%s answered %d to a batch of %d %s (%s); splitting it in two to isolate what it refuses.",
                self.receiver,
                outcome.status,
                batch.count,
                self.noun,
                outcome.text[:200],
                extra={"halves": [h.payload_id for h in halves]},
            )
        elif type(outcome) is Bury:
            await self.store.bury(batch, outcome.kind, outcome.reason, outcome.status)
            if outcome.kind == "expired":
                self.count("batches_expired")
            self._dead_lettered(outcome.kind, batch.count, outcome.reason)
        elif type(outcome) is Pause:
            if self.paused_for is None or self.paused_for.status != outcome.status:
                self.log.error(
                    "%s answered %d: %s. Nothing is dropped; the output is paused and tries one batch again every %gs.",
                    self.receiver,
                    outcome.status,
                    outcome.fix,
                    self._probe_interval(),
                )
            self.paused_for = outcome
            metrics.AUTH_ERROR.labels(self.id).set(outcome.status)
            self.paused_until = max(now + self._probe_interval(), self.retry_after_until)
            await self.store.failed(batch, outcome.status, outcome.text, self.paused_until)
        else:
            assert type(outcome) is Retry
            if outcome.retry_after is not None:
                until = now + outcome.retry_after
                if until > self.paused_until:  # a pause of the whole output
                    metrics.RETRY_AFTER_SECONDS.labels(self.id).inc(until - max(self.paused_until, now))
                    self.paused_until = until
                self.retry_after_until = max(self.retry_after_until, until)
                self.count("retry_after_pauses")
            await self.store.failed(batch, outcome.status, outcome.reason, now + outcome.delay)
            self.count("retries")
            metrics.RETRIES.labels(self.id).inc()
            self.log.warning(
                "Sending %d %s failed (%s); attempt %d, next in %.1fs with the same payload id %s.",
                batch.count,
                self.noun,
                outcome.reason[:200],
                batch.attempts + 1,
                outcome.delay,
                batch.payload_id,
            )

    @property
    def auth_error(self) -> int | None:
        """The status (401, 403, 404) the output is paused on until its configuration is fixed."""
        return self.paused_for.status if self.paused_for is not None else None

    def _probe_interval(self) -> float:
        return min(PAUSE_PROBE_INTERVAL, self.policy.retry_max_interval)

    def _dead_lettered(self, kind: str, n: int, reason: str) -> None:
        """Count ``n`` events gone to the dead letters, and say so in the log (rate limited per kind)."""
        self.count("records_dead_lettered", n)
        metrics.RECORDS_DEAD_LETTERED.labels(self.id, kind).inc(n)
        now = time.monotonic()
        last, since = self._dead_logged.get(kind, (-DEAD_LETTER_LOG_INTERVAL, 0))
        since += n
        if now - last < DEAD_LETTER_LOG_INTERVAL:
            self._dead_logged[kind] = (last, since)
            return
        self._dead_logged[kind] = (now, 0)
        self.log.error(
            "%d %s went to the dead-letter store as %s%s; the latest: %s. See them with 'fluent-ld dlq list --id %s'.",
            since,
            self.noun,
            kind,
            f" in the last {now - last:.0f}s" if since > n else "",
            reason[:300],
            self.id,
            extra={"kind": kind, "dead_lettered": since},
        )

    def _update_room(self) -> None:
        if self.store.pending_bytes <= self.low:
            self.room.open()
