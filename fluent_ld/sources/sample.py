"""``@type sample``: generates records at a steady rate (Fluentd's ``in_sample``), for demos and
for trying a pipeline without a client."""

from __future__ import annotations

import asyncio
import copy
import time

from fluent_ld import metrics
from fluent_ld.config.errors import ConfigError
from fluent_ld.config.params import REQUIRED, Integer, JSONValue, Param, Section, String
from fluent_ld.plugin import Source

# Signal analytics events of the kinds the Default preset maps, so a demo shows the real shapes.
DEFAULT_SAMPLE = [
    {
        "type": "track",
        "event": "Order Completed",
        "user_id": "user-1001",
        "anonymous_id": "a1b2c3d4-anonymous-id",
        "properties": {"order_id": "ORD-1001", "revenue": 89.99, "currency": "GBP"},
    },
    {
        "type": "page",
        "anonymous_id": "e5f6a7b8-anonymous-id",
        "name": "Pricing",
        "properties": {"path": "/pricing", "title": "Pricing"},
    },
    {
        "type": "track",
        "event": "Signed Up",
        "user_id": "user-1002",
        "properties": {"plan": "team"},
    },
]


class SampleSource(Source):
    type_name = "sample"
    summary = "Generates sample records at a steady rate, for demos and trying a pipeline."
    section = Section(
        "source",
        summary,
        params=(
            Param("tag", String(), REQUIRED, "The tag of the generated records."),
            Param("rate", Integer(min=1, max=100_000), 1, "Emissions per second."),
            Param("size", Integer(min=1, max=10_000), 1, "Records per emission."),
            Param(
                "sample",
                JSONValue(),
                DEFAULT_SAMPLE,
                "A JSON object, or an array of objects used in turn.",
                shown_default="three Signal events (Order Completed, page, Signed Up)",
            ),
            Param(
                "auto_increment_key",
                String(),
                None,
                "If set, each record gets this key with a counter starting at 0.",
            ),
        ),
    )

    @classmethod
    def check(cls, conf) -> list[ConfigError]:
        sample = conf.sample
        items = sample if isinstance(sample, list) else [sample]
        if not items or not all(isinstance(i, dict) for i in items):
            return [ConfigError(conf.where_of("sample"), "<source> @type sample: parameter 'sample': expected an object or a non-empty array of objects")]
        return []

    def __init__(self, conf, plugin_id, emitter) -> None:
        super().__init__(conf, plugin_id, emitter)
        sample = conf.sample
        self.templates = sample if isinstance(sample, list) else [sample]
        self.counter = 0
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"sample:{self.id}")

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    def _next_records(self, now_ns: int) -> list[tuple[int, dict]]:
        entries = []
        for _ in range(self.conf.size):
            record = copy.deepcopy(self.templates[self.counter % len(self.templates)])
            if self.conf.auto_increment_key:
                record[self.conf.auto_increment_key] = self.counter
            self.counter += 1
            entries.append((now_ns, record))
        return entries

    async def _run(self) -> None:
        interval = 1.0 / self.conf.rate
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            # Admission is awaited: a slow output slows the sample down instead of queueing.
            try:
                entries = self._next_records(time.time_ns())
                await self.emitter.emit(self.conf.tag, entries)
                metrics.RECORDS_RECEIVED.labels(self.id).inc(len(entries))
            except Exception:
                self.log.exception("Sample records were refused by their output; retrying in 1s.")
                await asyncio.sleep(1.0)
                next_at = loop.time()
                continue
            next_at += interval
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = loop.time()  # fell behind: carry on from now rather than burst
                await asyncio.sleep(0)
