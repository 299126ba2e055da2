"""The running node: plugins built from a checked config, wired through the router."""

from __future__ import annotations

import asyncio
import gc
import logging

from fluent_ld import metrics
from fluent_ld.config.schema import NodeConfig, PluginConf
from fluent_ld.forward.codec import Frame
from fluent_ld.pipeline.admission import Admitted, CountEncoder, Decoding, Encoder, encode_frame
from fluent_ld.pipeline.pool import Pool, PoolUnavailable, default_size
from fluent_ld.pipeline.router import Router
from fluent_ld.plugin import Entries, Output, Plugin, Source, StartError
from fluent_ld.registry import output_class, source_class

__all__ = ["Node", "POOL_MIN_BYTES"]

log = logging.getLogger("fluent_ld.pipeline.node")

# How often gauges read from the stores (depth, oldest age) are brought up to date, so that the
# worker serving /metrics sees every worker's within this long.
METRICS_REFRESH_INTERVAL = 1.0
# Requests smaller than this are decoded and encoded on the event loop: a round trip to a pool
# process costs the loop about as much as doing a few records itself, and adds latency. Message
# mode (one record per request, as fluent-logger sends) stays inline; Fluent Bit's chunks of tens
# of KB go to the pool. Measured in benchmarks/realistic.py.
POOL_MIN_BYTES = 4096
# The encoder of records no <match> takes: they are counted, then dropped.
_UNMATCHED = ""


_COUNT = CountEncoder()
_POOLED = metrics.POOL_REQUESTS.labels("pool")
_INLINE = metrics.POOL_REQUESTS.labels("inline")


class Node:
    """Outputs start first and stop last, so a source never emits into an output that is not
    ready, and every record a source admitted is in its output when the outputs stop."""

    def __init__(self, config: NodeConfig, worker: int = 0) -> None:
        """``worker``: this process's number among ``<system> workers`` (0 when there is one)."""
        self.config = config
        self.worker = worker
        self.workers = config.system.workers
        self.outputs: list[tuple[PluginConf, Output]] = []
        for pc in config.matches:
            self.outputs.append((pc, output_class(pc.type_name)(pc.conf, pc.id, worker)))
        self.router: Router[Output] = Router([(pc.pattern, out) for pc, out in self.outputs if pc.pattern is not None])
        self.sources: list[tuple[PluginConf, Source]] = []
        self.elsewhere: list[PluginConf] = []  # sources worker 0 serves for every worker
        for pc in config.sources:
            cls = source_class(pc.type_name)
            if cls.served_once and worker != 0:
                self.elsewhere.append(pc)
                continue
            self.sources.append((pc, cls(pc.conf, pc.id, self)))
        self._started: list[Plugin] = []
        self._refresher: asyncio.Task | None = None
        size = config.system.pool_size
        if size is None:
            size = default_size(self.workers)
        encoders: dict[str, Encoder] = {out.id: out.encoder for _, out in self.outputs if out.encoder is not None}
        encoders[_UNMATCHED] = CountEncoder()
        self.pool = Pool(size, encoders) if size else None

    async def admit_frame(self, tag: str, frame: Frame, decoding: Decoding) -> Admitted:
        """Decode, validate, map and encode a framed forward request for the output its tag
        routes to: in a pool process, or here when it is small or no process is ready. Raises
        :class:`~fluent_ld.forward.codec.ProtocolError` and :class:`~fluent_ld.pipeline.pool.PoolError`;
        :meth:`commit` then stores the result."""
        output = self.router.resolve(tag)
        output_id, encoder = (output.id, output.encoder) if output is not None else (_UNMATCHED, _COUNT)
        if self.pool is not None and encoder is not None and frame.wire_size >= POOL_MIN_BYTES:
            try:
                admitted = await self.pool.run(output_id, tag, frame, decoding)
            except PoolUnavailable:
                pass
            else:
                _POOLED.inc()
                return admitted
        _INLINE.inc()
        return encode_frame(frame, tag, decoding, encoder)

    async def commit(self, tag: str, admitted: Admitted) -> None:
        """Hand what :meth:`admit_frame` made to the output (its store). Raises
        :class:`~fluent_ld.plugin.BufferFullError` when it has no room."""
        output = self.router.resolve(tag)
        if output is None:
            self._unmatched(tag, admitted.records)
        elif admitted.encoded is not None:
            await output.commit(tag, admitted.encoded)
        elif admitted.entries:
            await output.admit(tag, admitted.entries)

    async def emit(self, tag: str, entries: Entries) -> None:
        output = self.router.resolve(tag)
        if output is None:
            self._unmatched(tag, len(entries))
            return
        await output.admit(tag, entries)

    def _unmatched(self, tag: str, records: int) -> None:
        if self.router.count_unmatched(tag, records):
            log.warning("No <match> takes tag %r: its records are dropped and counted (logged once per tag).", tag)

    async def dead_letter(self, tag: str, record: bytes, reason: str) -> None:
        output = self.router.resolve(tag)
        if output is None:
            log.error("No <match> takes tag %r: a dead letter is dropped: %s.", tag, reason)
            return
        await output.dead_letter(tag, record, reason)

    async def start(self) -> None:
        if self.pool is not None:
            await self.pool.start()  # its processes get ready while the plugins start
        for pc, plugin in [*self.outputs, *self.sources]:
            try:
                await plugin.start()
            except Exception as exc:
                await self.stop()
                reason = str(exc) if isinstance(exc, StartError) else f"{type(exc).__name__}: {exc}"
                raise StartError(f"{pc.where}: {pc.label}: {reason}") from exc
            self._started.append(plugin)
        await self.refresh_metrics()
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_metrics_forever(), name="metrics")
        # What start-up made (modules, schemas, the plugins) lives as long as the node: out of the
        # collector's sight, a full collection walks only what came since, not stalling the loop.
        gc.freeze()
        where = ""
        if self.elsewhere:
            where = f" (as worker {self.worker}; worker 0 serves {', '.join(pc.type_name for pc in self.elsewhere)})"
        log.info("fluent-ld started: %s%s.", self.config.summary(), where)

    async def refresh_metrics(self) -> None:
        """Bring every plugin's read gauges up to date (and share this worker's request log)."""
        for plugin in list(self._started):
            try:
                await plugin.refresh_metrics()
            except Exception:
                log.exception("Plugin %s failed to refresh its metrics.", plugin.id)
        try:
            metrics.REQUEST_LOG.flush()
        except OSError as exc:
            log.warning("Cannot share the request log with the monitor: %s.", exc)

    async def _refresh_metrics_forever(self) -> None:
        while True:
            await asyncio.sleep(METRICS_REFRESH_INTERVAL)
            await self.refresh_metrics()

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        while self._started:
            plugin = self._started.pop()
            try:
                await plugin.stop()
            except Exception:
                log.exception("Plugin %s failed to stop cleanly.", plugin.id)
            metrics.forget(plugin.id)
        if self.pool is not None:
            await self.pool.stop()  # last: sources finish their requests first

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            log.info("fluent-ld stopping.")
            await self.stop()
            log.info("fluent-ld stopped.")
