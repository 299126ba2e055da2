"""The running node: plugins built from a checked config, wired through the router."""

from __future__ import annotations

import asyncio
import logging

from fluent_ld import metrics
from fluent_ld.config.schema import NodeConfig, PluginConf
from fluent_ld.plugin import Entries, Output, Plugin, Source, StartError
from fluent_ld.registry import plugin_class
from fluent_ld.router import Router

__all__ = ["Node"]

log = logging.getLogger("fluent_ld.node")

# How often gauges read from the stores (depth, oldest age) are brought up to date, so that the
# worker serving /metrics sees every worker's within this long.
METRICS_REFRESH_INTERVAL = 1.0


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
            cls = plugin_class("output", pc.type_name)
            self.outputs.append((pc, cls(pc.conf, pc.id, worker)))
        self.router: Router[Output] = Router([(pc.pattern, out) for pc, out in self.outputs])
        self.sources: list[tuple[PluginConf, Source]] = []
        self.elsewhere: list[PluginConf] = []  # sources worker 0 serves for every worker
        for pc in config.sources:
            cls = plugin_class("source", pc.type_name)
            if cls.served_once and worker != 0:
                self.elsewhere.append(pc)
                continue
            self.sources.append((pc, cls(pc.conf, pc.id, self)))
        self._started: list[Plugin] = []
        self._refresher: asyncio.Task | None = None

    async def emit(self, tag: str, entries: Entries) -> None:
        output = self.router.resolve(tag)
        if output is None:
            if self.router.count_unmatched(tag, len(entries)):
                log.warning(
                    "No <match> takes tag %r: its records are dropped and counted "
                    "(logged once per tag).",
                    tag,
                )
            return
        await output.admit(tag, entries)

    async def dead_letter(self, tag: str, record: bytes, reason: str) -> None:
        output = self.router.resolve(tag)
        if output is None:
            log.error("No <match> takes tag %r: a dead letter is dropped: %s.", tag, reason)
            return
        await output.dead_letter(tag, record, reason)

    async def start(self) -> None:
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

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            log.info("fluent-ld stopping.")
            await self.stop()
            log.info("fluent-ld stopped.")
