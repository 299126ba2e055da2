"""``@type launchdarkly``: Signal events in, LaunchDarkly custom events out, durably.

admit: validate -> map -> encode -> store (fsync) -> return (the source acks after this).
drain: cut frozen batches -> POST -> 202 delete | retry later | split | dead letter.

What was admitted is delivered, or waits in the store, or sits in the dead-letter store with its
reason; it is never dropped silently.
"""

from __future__ import annotations

import asyncio
import random
import time


from fluent_ld import metrics
from fluent_ld.config.errors import ConfigError
from fluent_ld.config.params import REQUIRED, Enum, Integer, Param, Section, String, Time
from fluent_ld.admission import DeadLetter, Encoded, LaunchDarklyEncoder
from fluent_ld.mapping_config import MAPPING_PARAMS, MAPPING_SECTIONS, build_preset, check_mapping
from fluent_ld.outputs.buffer import BUFFER, Room, StoreHealth, open_store, refresh_store_metrics, store_for, watermarks as _watermarks
from fluent_ld.outputs.launchdarkly_sender import KNOWN_HOSTS, Answer, Sender
from fluent_ld.plugin import BufferFullError, Output
from fluent_ld.registry import register
from fluent_ld.retry import RetryPolicy, parse_retry_after
from fluent_ld.store import Batch, StoreError

# How often an output paused on 401/403/404 tries one batch again, to notice a fix by itself
# (or retry_max_interval, if that is shorter).
AUTH_PROBE_INTERVAL = 60.0
AUTH_FIXES = {
    401: "the access token is invalid or lacks the importEventData permission: issue a token with it (Account settings > Authorization) and set access_token",
    403: "the access token lacks the importEventData permission: issue a token with it and set access_token",
    404: "the project or environment key is wrong, or the account is on another cell: check project_key and environment_key; EU accounts use events_host events.eu.launchdarkly.com, US federal events.launchdarkly.us",
}


@register
class LaunchDarklyOutput(Output):
    type_name = "launchdarkly"
    summary = "Sends Signal events to LaunchDarkly's metric event import API, durably, as custom events."
    section = Section(
        "match",
        summary,
        params=(
            Param("access_token", String(), REQUIRED, "A token with importEventData, sent raw in Authorization.", secret=True),
            Param("project_key", String(), REQUIRED, "The LaunchDarkly project key."),
            Param("environment_key", String(), REQUIRED, "The LaunchDarkly environment key, e.g. production."),
            Param("events_host", String(), "events.launchdarkly.com", "events.launchdarkly.com, events.eu.launchdarkly.com or events.launchdarkly.us (or a full http(s):// base URL)."),
            Param("compress", Enum("text", "gzip"), "text", "gzip sends bodies with Content-Encoding: gzip."),
            Param("request_timeout", Time(min=0.01), 30.0, "How long one request may take before it is retried."),
            Param("max_concurrent_requests", Integer(1, 64), 4, "Requests in flight at once."),
            *MAPPING_PARAMS,
        ),
        sections=(*MAPPING_SECTIONS, BUFFER),
    )

    @classmethod
    def check(cls, conf) -> list[ConfigError]:
        label = "<match> @type launchdarkly"
        errors = check_mapping(conf, label)
        host = conf.events_host
        if host not in KNOWN_HOSTS and not host.startswith(("http://", "https://")):
            errors.append(
                ConfigError(conf.where_of("events_host"), f"{label}: parameter 'events_host': expected one of {', '.join(KNOWN_HOSTS)} or a full http(s):// URL, got {host!r}")
            )
        buffer = conf.buffer
        if buffer["@type"] == "file" and not buffer.path:
            errors.append(ConfigError(buffer.where, f"{label} <buffer>: a file buffer needs 'path'"))
        high, low = _watermarks(buffer)
        if low >= high:
            errors.append(ConfigError(buffer.where, f"{label} <buffer>: low_watermark must be below high_watermark"))
        return errors

    def __init__(self, conf, plugin_id, worker: int = 0) -> None:
        super().__init__(conf, plugin_id, worker)
        buffer = conf.buffer
        self.encoder = LaunchDarklyEncoder(build_preset(conf), conf.record_key, buffer.chunk_limit_size - 2)  # a body is [ + events + ]
        self.mapper = self.encoder.mapper
        self.store = store_for(buffer, plugin_id, worker)
        self.policy = RetryPolicy(buffer.retry_wait, buffer.retry_max_interval, buffer.retry_timeout, buffer.retry_randomize)
        self.high, self.low = _watermarks(buffer)
        self.cap = buffer.chunk_limit_size
        self.sender = Sender(
            conf.events_host, conf.project_key, conf.environment_key, conf.access_token.reveal(),
            conf.compress == "gzip", conf.request_timeout, conf.max_concurrent_requests,
        )
        self.paused_until = 0.0
        self.retry_after_until = 0.0  # the end of the latest Retry-After pause: nothing shortens it
        self.auth_error: int | None = None  # 401/403/404 while the output waits for a fix
        self.room = Room(plugin_id)
        self.health = StoreHealth(self.log)
        self.wake = asyncio.Event()
        self.inflight: dict[int, asyncio.Task] = {}
        self._drainer: asyncio.Task | None = None
        self._stopping = False

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        await open_store(self.store, self.id)
        await self.sender.start()
        metrics.AUTH_ERROR.labels(self.id).set(0)
        self._update_room()
        self._drainer = asyncio.get_running_loop().create_task(self._drain(), name=f"drain:{self.id}")
        where = self.store.path or "memory (lost on a crash)"
        self.log.info(
            "Sending to %s as %s/%s; store %s holds %d undelivered events and %d dead letters.",
            self.sender.url, self.conf.project_key, self.conf.environment_key, where,
            self.store.pending_events, self.store.dead_letter_count,
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
            # Requests already sent may finish; whatever does not stays in the store for the next run.
            done, pending = await asyncio.wait(list(self.inflight.values()), timeout=5)
            for task in pending:
                task.cancel()
        await self.sender.close()
        if not self.keep_store_open:  # a memory store handed to the output replacing this one
            await self.store.close()
        self.log.info("Stopped with %d undelivered events in the store.", self.store.pending_events)

    # -- admit ---------------------------------------------------------------------------------------

    async def commit(self, tag: str, encoded: Encoded) -> None:
        if self.store.pending_bytes >= self.high:
            self.room.close()
            self.count("backpressure_refusals")
            raise BufferFullError(
                f"{self.store.pending_bytes} undelivered bytes is over high_watermark ({self.high})", self.room.wait
            )
        dead = encoded.dead
        if encoded.lengths or dead:
            try:
                await self.store.append(encoded.data, encoded.lengths, encoded.nbytes, encoded.oldest_ms, dead)
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
            self.count("records_dead_lettered", len(dead))
            for letter in dead:
                metrics.RECORDS_REJECTED.labels(self.id, letter.kind).inc()
                metrics.RECORDS_DEAD_LETTERED.labels(self.id, letter.kind).inc()

    async def dead_letter(self, tag: str, record: bytes, reason: str) -> None:
        await self.store.add_dead_letters([DeadLetter("invalid", reason, None, tag, None, record)])
        self.count("records_dead_lettered")
        metrics.RECORDS_DEAD_LETTERED.labels(self.id, "invalid").inc()

    async def refresh_metrics(self) -> None:
        self.room.refresh()
        await refresh_store_metrics(self.store, self.id)

    # -- drain ---------------------------------------------------------------------------------------

    async def _drain(self) -> None:
        buffer = self.conf.buffer
        while not self._stopping:
            now = time.time()
            wait = min(max(buffer.flush_interval / 2, 0.05), 1.0)
            try:
                if now >= self.paused_until:
                    await self.store.cut_batches(self.cap, buffer.chunk_limit_records, buffer.flush_interval, now, now)
                    free = self.conf.max_concurrent_requests - len(self.inflight)
                    if self.auth_error is not None:
                        free = min(free, 1 - len(self.inflight))  # probe with one batch at a time
                    if free > 0:
                        for batch in await self.store.due_batches(now, free, list(self.inflight)):
                            self.inflight[batch.id] = asyncio.get_running_loop().create_task(self._send(batch))
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
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=max(wait, 0.01))
            except asyncio.TimeoutError:
                pass

    async def _send(self, batch: Batch) -> None:
        try:
            now = time.time()
            if now < self.paused_until:
                return  # paused (Retry-After, 401) since the drain chose it: it stays due for later
            if self.policy.expired(batch.created_at, now):
                await self.store.bury(batch, "expired", f"not delivered within retry_timeout after {batch.attempts} attempt(s)", None)
                self.count("batches_expired")
                metrics.RECORDS_DEAD_LETTERED.labels(self.id, "expired").inc(batch.count)
                self.log.error("A batch of %d events expired undelivered after %d attempts: moved to the dead-letter store.", batch.count, batch.attempts)
                return
            if batch.attempts == 0:
                metrics.BATCH_BYTES.labels(self.id).observe(len(batch.data) + 2)
                metrics.BATCH_EVENTS.labels(self.id).observe(batch.count)
            started = time.perf_counter()
            answer = await self.sender.post(batch)
            seconds = time.perf_counter() - started
            self.count(f"requests_{answer.status or 'failed'}")
            metrics.REQUESTS.labels(self.id, str(answer.status or "error")).inc()
            metrics.REQUEST_SECONDS.labels(self.id).observe(seconds)
            metrics.REQUEST_LOG.add(
                self.id, self.sender.url, batch.payload_id, batch.count, len(batch.data) + 2, answer.status, seconds,
                "" if answer.status is not None and 200 <= answer.status < 300 else answer.text,
            )
            await self._handle(batch, answer, seconds)
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

    async def _handle(self, batch: Batch, answer: Answer, seconds: float) -> None:
        status = answer.status
        now = time.time()
        if status is not None and 200 <= status < 300:
            if self.auth_error is not None:
                self.log.info("LaunchDarkly accepts this output's requests again (was %d); resuming.", self.auth_error)
                self.auth_error = None
                self.paused_until = self.retry_after_until  # a Retry-After pause still holds
                metrics.AUTH_ERROR.labels(self.id).set(0)
            await self.store.delivered(batch)
            self.count("records_delivered", batch.count)
            metrics.RECORDS_DELIVERED.labels(self.id).inc(batch.count)
            return
        if status in (400, 413):
            if batch.count > 1:
                halves = await self.store.split(batch, now)
                self.count("batches_split")
                self.log.warning(
                    "LaunchDarkly answered %d to a batch of %d events (%s); splitting it in two to isolate what it refuses.",
                    status, batch.count, answer.text[:200], extra={"halves": [h.payload_id for h in halves]},
                )
            else:
                await self.store.bury(batch, "rejected", f"LaunchDarkly answered {status}: {answer.text}", status)
                self.count("records_dead_lettered")
                metrics.RECORDS_DEAD_LETTERED.labels(self.id, "rejected").inc()
                self.log.warning("LaunchDarkly refused an event (%d: %s): moved to the dead-letter store.", status, answer.text[:200])
            return
        if status in AUTH_FIXES:
            if self.auth_error != status:
                self.log.error(
                    "LaunchDarkly answered %d: %s. Nothing is dropped; the output is paused and tries one batch again every %gs.",
                    status, AUTH_FIXES[status], min(AUTH_PROBE_INTERVAL, self.policy.retry_max_interval),
                )
            self.auth_error = status
            metrics.AUTH_ERROR.labels(self.id).set(status)
            self.paused_until = max(now + min(AUTH_PROBE_INTERVAL, self.policy.retry_max_interval), self.retry_after_until)
            await self.store.failed(batch, status, answer.text, self.paused_until)
            return
        if status == 406:
            await self.store.bury(batch, "schema", f"LaunchDarkly answered 406 (event schema not accepted): {answer.text}", status)
            metrics.RECORDS_DEAD_LETTERED.labels(self.id, "schema").inc(batch.count)
            self.log.error("LaunchDarkly answered 406 to X-LaunchDarkly-Event-Schema 4: this is a bug in fluent-ld; the batch is in the dead-letter store.")
            return
        if status is not None and 400 <= status < 500 and status != 429:
            # Documented: never retry a 4xx but 429. Keep the events, with the answer.
            await self.store.bury(batch, "rejected", f"LaunchDarkly answered {status}: {answer.text}", status)
            metrics.RECORDS_DEAD_LETTERED.labels(self.id, "rejected").inc(batch.count)
            return
        # 429, 5xx, 3xx (never followed), timeouts, connection errors: retry later, the same bytes
        # with the same payload id.
        delay = self.policy.delay(batch.attempts + 1, random.random())
        retry_after = parse_retry_after(answer.retry_after, now)
        if retry_after is not None:
            until = now + retry_after
            if until > self.paused_until:  # a pause of the whole output
                metrics.RETRY_AFTER_SECONDS.labels(self.id).inc(until - max(self.paused_until, now))
                self.paused_until = until
            self.retry_after_until = max(self.retry_after_until, until)
            self.count("retry_after_pauses")
            delay = max(delay, retry_after)
        await self.store.failed(batch, status, answer.text or "", now + delay)
        self.count("retries")
        metrics.RETRIES.labels(self.id).inc()
        self.log.warning(
            "Sending %d events failed (%s); attempt %d, next in %.1fs with the same payload id %s.",
            batch.count, status or answer.text, batch.attempts + 1, delay, batch.payload_id,
        )

    def _update_room(self) -> None:
        if self.store.pending_bytes <= self.low:
            self.room.open()

