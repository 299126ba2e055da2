"""``@type launchdarkly``: Signal events in, LaunchDarkly custom events out, durably.

admit: validate -> map -> encode (JSON fragments) -> the store (see :mod:`fluent_ld.outputs.durable`).
deliver: POST a frozen batch to the metric event import API; what the answer means is
:func:`fluent_ld.outputs.outcome.launchdarkly_outcome`.
"""

from __future__ import annotations

import random
import time

from fluent_ld import metrics
from fluent_ld.config.errors import ConfigError
from fluent_ld.config.params import REQUIRED, Enum, Integer, Param, Section, String, Time
from fluent_ld.launchdarkly.mapping_config import MAPPING_PARAMS, MAPPING_SECTIONS, build_preset, check_mapping
from fluent_ld.launchdarkly.response import launchdarkly_outcome
from fluent_ld.launchdarkly.sender import KNOWN_HOSTS, USER_AGENT, Sender
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
        self.encoder = LaunchDarklyEncoder(build_preset(conf), conf.record_key, conf.buffer.chunk_limit_size - 2)  # a body is [ + events + ]
        self.mapper = self.encoder.mapper
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

    async def close(self) -> None:
        await self.sender.close()

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
