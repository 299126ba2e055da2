"""``@type launchdarkly``: Signal events in, LaunchDarkly custom events out, durably.

admit: validate -> map -> encode (JSON fragments) -> the store (see :mod:`fluent_ld.outputs.durable`).
deliver: POST a frozen batch to the metric event import API; what the answer means is
:func:`fluent_ld.outputs.outcome.launchdarkly_outcome`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

from fluent_ld import metrics
from fluent_ld.config.errors import ConfigError
from fluent_ld.config.params import REQUIRED, Bool, Enum, Integer, Param, Section, String, Time
from fluent_ld.launchdarkly.mapping_config import MAPPING_PARAMS, MAPPING_SECTIONS, build_preset, check_mapping
from fluent_ld.launchdarkly.response import launchdarkly_outcome
from fluent_ld.launchdarkly.rest import verify
from fluent_ld.launchdarkly.sender import KNOWN_HOSTS, USER_AGENT, Sender
from fluent_ld.launchdarkly.verification import CANNOT_TELL, Report, api_base, cannot_tell, count_events
from fluent_ld.outputs.buffer import BUFFER
from fluent_ld.outputs.durable import DurableOutput
from fluent_ld.outputs.outcome import Outcome
from fluent_ld.pipeline.admission import LaunchDarklyEncoder
from fluent_ld.store import Batch


class LaunchDarklyOutput(DurableOutput):
    type_name = "launchdarkly"
    body_overhead = 2  # [ and ]
    receiver = "LaunchDarkly"
    summary = "Sends Signal events to LaunchDarkly's metric event import API, durably, as custom events."
    section = Section(
        "match",
        summary,
        params=(
            Param("access_token", String(), REQUIRED, "A token with importEventData, sent raw in Authorization.", secret=True),
            Param("project_key", String(), REQUIRED, "The LaunchDarkly project key."),
            Param("environment_key", String(), REQUIRED, "The LaunchDarkly environment key, e.g. production."),
            Param(
                "events_host",
                String(),
                "events.launchdarkly.com",
                "events.launchdarkly.com, events.eu.launchdarkly.com or events.launchdarkly.us (or a full http(s):// base URL).",
            ),
            Param("compress", Enum("text", "gzip"), "text", "gzip sends bodies with Content-Encoding: gzip."),
            Param("request_timeout", Time(min=0.01), 30.0, "How long one request may take before it is retried."),
            Param("max_concurrent_requests", Integer(1, 64), 4, "Requests in flight at once."),
            Param(
                "user_agent",
                String(),
                USER_AGENT,
                "The User-Agent of every request; LaunchDarkly attributes imports by it (keep the default unless told otherwise).",
            ),
            Param(
                "api_host",
                String(),
                None,
                "LaunchDarkly's REST API, for verify (default: the one serving events_host's accounts: app.launchdarkly.com, app.eu.launchdarkly.com, app.launchdarkly.us; a full http(s):// events_host is its own).",
            ),
            Param(
                "api_token",
                String(),
                None,
                "A token that can read the project's metrics (Reader role), for verify; sent raw in Authorization (default: access_token).",
                secret=True,
            ),
            Param("verify_on_start", Bool(), False, "Check at start, and every verify_interval, that every mapped event has a metric (see fluent-ld verify)."),
            Param("verify_interval", Time(min=10), 600.0, "How often verify_on_start checks again."),
            Param(
                "stale_after",
                Time(min=1),
                24 * 3600.0,
                "Events whose creationDate is older are still sent (backfills are legitimate) but counted per key: LaunchDarkly discards events outside the running iteration.",
            ),
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
                ConfigError(
                    conf.where_of("events_host"),
                    f"{label}: parameter 'events_host': expected one of {', '.join(KNOWN_HOSTS)} or a full http(s):// URL, got {host!r}",
                )
            )
        if not conf.user_agent.strip():
            errors.append(ConfigError(conf.where_of("user_agent"), f"{label}: parameter 'user_agent': must not be empty"))
        return errors + super().check(conf)

    def __init__(self, conf, plugin_id, worker: int = 0) -> None:
        super().__init__(conf, plugin_id, worker)
        self.preset = build_preset(conf)
        self.encoder = LaunchDarklyEncoder(self.preset, conf.record_key, conf.buffer.chunk_limit_size - 2)  # a body is [ + events + ]
        self.mapper = self.encoder.mapper
        self.api_base = api_base(conf.events_host, conf.api_host)
        self.verification: dict[str, Any] | None = None  # the last check's report (verify_on_start), as JSON
        self.missing_keys: frozenset[str] = frozenset()  # mapped keys with no metric, as of the last check that could tell
        self.stale_counts: Counter[str] = Counter()  # events sent older than stale_after, by key
        self._verifier: asyncio.Task | None = None
        self.concurrency = conf.max_concurrent_requests
        self.sender = Sender(
            conf.events_host,
            conf.project_key,
            conf.environment_key,
            conf.access_token.reveal(),
            conf.compress == "gzip",
            conf.request_timeout,
            conf.max_concurrent_requests,
            conf.user_agent,
        )

    async def open(self) -> None:
        await self.sender.start()
        if self.conf.verify_on_start:
            self._verifier = asyncio.get_running_loop().create_task(self._verify_every(), name=f"verify:{self.id}")

    async def close(self) -> None:
        if self._verifier is not None:
            self._verifier.cancel()
            await asyncio.gather(self._verifier, return_exceptions=True)
        await self.sender.close()

    async def check_metrics(self) -> Report:
        """What ``fluent-ld verify`` reports for this output (one check, now)."""
        conf = self.conf
        token = (conf.api_token or conf.access_token).reveal()
        return await verify(
            self.api_base, token, conf.project_key, conf.environment_key, self.preset.events.values(), min(conf.request_timeout, 30.0), conf.user_agent
        )

    async def _verify_every(self) -> None:
        """verify_on_start: check now and every verify_interval; log the problems once per change."""
        said: tuple[str, ...] | None = None
        while True:
            try:
                report = await self.check_metrics()
            except Exception as exc:  # a bug: the check is advice, it must never stop the output
                self.log.exception("Verifying against LaunchDarkly failed unexpectedly.")
                report = cannot_tell(f"internal error: {exc!r}", self.api_base, time.time())
            self.verification = report.to_json()
            metrics.VERIFY_STATUS.labels(self.id).set(report.status)
            if report.status != CANNOT_TELL:
                self.missing_keys = report.missing
                for k in report.keys:
                    metrics.VERIFY_METRIC_FOUND.labels(self.id, k.key).set(1 if k.metrics else 0)
            problems = report.problems()
            if problems != said:
                if not problems:
                    self.log.info("Verified against LaunchDarkly: %s.", report.message)
                elif report.status == CANNOT_TELL:
                    self.log.warning("Cannot verify against LaunchDarkly: %s.", report.message)
                else:
                    self.log.error(
                        "Verified against LaunchDarkly: %s (delivered anyway, and counted in fluentld_events_without_metric_total): %s",
                        report.message,
                        "; ".join(problems),
                    )
                said = problems
            await asyncio.sleep(self.conf.verify_interval)

    def delivered(self, batch: Batch) -> None:
        """Events delivered for keys with no metric, and stale ones, by key. Reads the batch only
        when it can hold some: a key is missing, or its oldest event is past stale_after."""
        cutoff_ms = int(time.time() - self.conf.stale_after) * 1000  # whole seconds: its pattern is cached
        missing = self.missing_keys
        if not missing and batch.oldest_ms >= cutoff_ms:
            return
        no_metric, stale = count_events(batch.data, missing, cutoff_ms, batch.oldest_ms < cutoff_ms)
        for key, n in no_metric.items():
            metrics.EVENTS_WITHOUT_METRIC.labels(self.id, key).inc(n)
        for key, n in stale.items():
            metrics.STALE_EVENTS.labels(self.id, key).inc(n)
        self.stale_counts.update(stale)

    def started(self) -> str:
        return f"Sending to {self.sender.url} as {self.conf.project_key}/{self.conf.environment_key}."

    async def deliver(self, batch: Batch) -> Outcome:
        started = time.perf_counter()
        answer = await self.sender.post(batch)
        seconds = time.perf_counter() - started
        status = answer.status
        self.count(f"requests_{status or 'failed'}")
        metrics.REQUESTS.labels(self.id, str(status or "error")).inc()
        metrics.REQUEST_SECONDS.labels(self.id).observe(seconds)
        ok = status is not None and 200 <= status < 300
        metrics.REQUEST_LOG.add(
            self.id,
            self.sender.url,
            batch.payload_id,
            batch.count,
            len(batch.data) + self.body_overhead,
            status,
            seconds,
            "" if ok else answer.text,
            batch.data,  # its first events are read only while a debugger is on
        )
        return launchdarkly_outcome(
            status,
            answer.text,
            answer.retry_after,
            batch.count,
            batch.attempts,
            self.policy,
            time.time(),
            random.random(),
        )
