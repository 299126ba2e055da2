"""Plugin base classes: a source feeds records to the node, an output admits them.

Each plugin type declares its parameters once, in ``section``; the same declaration checks configs,
generates the reference docs and builds the :class:`~fluent_ld.config.params.Conf` the plugin reads.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Protocol

from fluent_ld.config.errors import ConfigError
from fluent_ld.config.params import Conf, Section
from fluent_ld.forward.codec import Frame
from fluent_ld.pipeline.admission import Admitted, Decoding, Encoded, Encoder

__all__ = ["BufferFullError", "Entries", "Emitter", "Output", "Plugin", "Source", "StartError"]

# One event: its time in integer nanoseconds since the Unix epoch (exact for every forward time
# form, including EventTime's nanoseconds) and its record.
Entries = Sequence[tuple[int, dict[str, Any]]]

_LEVELS = {
    "trace": 5,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
}


def log_level(name: str) -> int:
    """A Fluentd log level name as a :mod:`logging` level."""
    return _LEVELS[name]


class BufferFullError(Exception):
    """The destination is over its high watermark: nothing was admitted. The caller stops reading
    from its client (or answers 503) and awaits :meth:`wait_for_room` before trying again."""

    def __init__(self, message: str, wait_for_room: Callable[[], Awaitable[object]]) -> None:
        super().__init__(message)
        self.wait_for_room = wait_for_room


class StartError(Exception):
    """A plugin could not start (a port in use, a folder not writable): the node does not start."""


class Emitter(Protocol):
    def emit(self, tag: str, entries: Entries) -> Awaitable[None]:
        """Hand records to the output their tag routes to; returns once that output has admitted
        them (for a durable output: once they are on disk)."""

    def admit_frame(self, tag: str, frame: Frame, decoding: Decoding) -> Awaitable[Admitted]:
        """Decode, validate, map and encode a framed forward request for the output its tag routes
        to (off the event loop when it is worth it); :meth:`commit` then stores the result."""

    def commit(self, tag: str, admitted: Admitted) -> Awaitable[None]:
        """Hand an admitted request to its output; returns once it is admitted (on disk)."""

    def dead_letter(self, tag: str, record: bytes, reason: str) -> Awaitable[None]:
        """Keep something a source accepted but cannot turn into a record (e.g. a signed webhook
        body that is not an audit entry) in the dead-letter store of the output the tag routes to."""


class Plugin:
    kind: ClassVar[str]
    type_name: ClassVar[str]
    summary: ClassVar[str]
    section: ClassVar[Section]

    def __init__(self, conf: Conf, plugin_id: str) -> None:
        self.conf = conf
        self.id = plugin_id
        self.stats: Counter[str] = Counter()  # what happened, by name (the Prometheus metrics are in fluent_ld.metrics)
        self.log = logging.getLogger(f"fluent_ld.{self.kind}.{plugin_id}")
        if conf["@log_level"]:
            self.log.setLevel(log_level(conf["@log_level"]))

    def count(self, name: str, n: int = 1) -> None:
        self.stats[name] += n

    @classmethod
    def check(cls, conf: Conf) -> list[ConfigError]:
        """Rules across parameters, run once each value is valid on its own."""
        return []

    async def start(self) -> None:
        """Acquire resources (bind, open stores). Raise :class:`StartError` to refuse to start."""

    async def stop(self) -> None:
        """Release everything; for an output, after every admitted record is safe."""

    async def refresh_metrics(self) -> None:
        """Bring gauges that are read rather than counted (store depth, ages) up to date."""


class Source(Plugin):
    kind = "source"
    # With <system> workers N: True for sources only worker 0 runs (an HTTP endpoint that cannot
    # share its port), False for those every worker runs (forward, which shares it with SO_REUSEPORT).
    served_once: ClassVar[bool] = False

    def __init__(self, conf: Conf, plugin_id: str, emitter: Emitter) -> None:
        super().__init__(conf, plugin_id)
        self.emitter = emitter


class Output(Plugin):
    kind = "output"

    def __init__(self, conf: Conf, plugin_id: str, worker: int = 0) -> None:
        super().__init__(conf, plugin_id)
        self.worker = worker  # each worker keeps its own store
        self.keep_store_open = False  # set by a reload handing this output's memory store on

    # The CPU half of admit (validate, map, encode), run wherever it is cheapest: on the event loop
    # or in a pool process. An output without one admits decoded entries on the event loop.
    encoder: Encoder | None = None

    async def admit(self, tag: str, entries: Entries) -> None:
        """Take responsibility for these records. Returning is the promise: a durable output
        returns only once they are committed to its store."""
        if self.encoder is None:
            raise NotImplementedError
        await self.commit(tag, self.encoder.encode(tag, entries))

    async def commit(self, tag: str, encoded: Encoded) -> None:
        """The I/O half of admit, for what :attr:`encoder` made of a request. Raises
        :class:`BufferFullError` when there is no room: nothing was taken, try again later."""
        raise NotImplementedError

    async def dead_letter(self, tag: str, record: bytes, reason: str) -> None:
        """Keep a record that cannot be processed, with the reason. Outputs without a store can
        only log it (loudly: it is not kept)."""
        self.log.error(
            "A record for tag %r cannot be processed and this output keeps no dead letters; it is dropped: %s. Record: %s",
            tag,
            reason,
            record[:2000].decode("utf-8", "replace"),
        )
