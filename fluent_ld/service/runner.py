"""One process running a node, until stopped; SIGHUP (via :meth:`Runner.reload`) applies a new config.

A reload checks the new config completely before touching anything; a refused config leaves the
running node as it was. A valid one replaces the node: the old one stops the way it always stops
(what was received is admitted and acked, stores are closed with every event in them), then the new
one starts on the same stores. If the new one cannot start (a port taken, a folder not writable) the
old config starts again, so a bad reload never leaves the process without a node.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable

from fluent_ld.config.errors import ConfigErrors
from fluent_ld.config.loader import load
from fluent_ld.config.schema import NodeConfig
from fluent_ld.outputs.durable import DurableOutput
from fluent_ld.pipeline.node import Node
from fluent_ld.plugin import StartError

__all__ = ["Runner", "load_for_reload"]

log = logging.getLogger("fluent_ld.service.runner")


class Runner:
    def __init__(self, path: str, config: NodeConfig, worker: int = 0, report: Callable[[str], None] | None = None) -> None:
        """``report``: told "ready", "reloaded" or "reload-failed" (a worker tells its supervisor)."""
        self.path = path
        self.worker = worker
        self.node = Node(config, worker)
        self.report = report or (lambda status: None)
        self._lock = asyncio.Lock()  # a reload and the final stop never overlap
        self._stop: asyncio.Event | None = None
        self.failed: StartError | None = None  # neither the new nor the old config could start
        self.reloads = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Raises :class:`StartError` if the node cannot start (or, after a reload, restart)."""
        self._stop = stop
        async with self._lock:  # a SIGHUP now waits until this node has started
            await self.node.start()
            _freeze()
        self.report("ready")
        try:
            await stop.wait()
        finally:
            async with self._lock:
                log.info("fluent-ld stopping.")
                await self.node.stop()
                log.info("fluent-ld stopped.")
        if self.failed is not None:
            raise self.failed

    async def reload(self) -> bool:
        """Apply the config file as it is now. True if the new config runs."""
        async with self._lock:
            ok = await self._reload()
        self.report("reloaded" if ok else "reload-failed")
        return ok

    async def _reload(self) -> bool:
        if self._stop is None or self._stop.is_set():
            log.warning("Reload ignored: the node is not running (starting up or stopping).")
            return False
        config = load_for_reload(self.path, self.node.workers)
        if config is None:
            return False
        try:
            new = Node(config, self.worker)
        except Exception as exc:  # a plugin refusing its checked config: a bug, but not fatal here
            log.exception("Reload refused: the new config cannot be built (%s); the running config is kept.", exc)
            return False
        old = self.node
        handed = _hand_over_memory_stores(old, new)
        await old.stop()
        try:
            await new.start()  # its outputs keep handed-over stores open should it fail
            for _, out in new.outputs:
                out.keep_store_open = False
        except StartError as exc:
            log.error("The new config could not start (%s); starting the previous config again.", exc)
            self.node = Node(old.config, self.worker)
            _hand_over_memory_stores(new, self.node, handed)
            try:
                await self.node.start()
            except StartError as again:
                log.error("The previous config could not start again either (%s); stopping.", again)
                self.failed = again
                if self._stop is not None:
                    self._stop.set()
            return False
        self.node = new
        _freeze()
        self.reloads += 1
        log.info("Reloaded: %s.", new.config.summary())
        return True


def load_for_reload(path: str, workers: int) -> NodeConfig | None:
    """The config file as it is now, checked; None (every reason logged, the running config kept)
    if it is refused or changes ``<system> workers``, which needs a restart."""
    log.info("Reloading the config from %s.", path)
    try:
        config = load(path)
    except ConfigErrors as exc:
        for error in exc.errors:
            log.error("Reload refused: %s", error)
        log.error("Reload refused (%d error(s)); the running config is kept.", len(exc.errors))
        return None
    if config.system.workers != workers:
        log.error(
            "Reload refused: <system> workers changed from %d to %d, which needs a restart; the running config is kept.",
            workers,
            config.system.workers,
        )
        return None
    return config


def _freeze() -> None:
    """Move what start-up built (modules, compiled validators, plugins) out of the collector's
    sight: full collections then scan only what the traffic allocates. Unfrozen first, so a node a
    reload replaced can still be collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _hand_over_memory_stores(old: Node, new: Node, stores: dict | None = None) -> dict:
    """``<buffer> @type memory`` keeps its events in the process: the output that replaces one with
    the same id takes its store over (open, with its events) instead of starting empty; the old
    output leaves it open. Returns the stores handed over, by output id."""
    if stores is None:
        stores = {pc.id: out.store for pc, out in old.outputs if isinstance(out, DurableOutput) and out.store.path is None}
    handed = {}
    for pc, out in new.outputs:
        store = stores.get(pc.id)
        if store is not None and isinstance(out, DurableOutput) and out.store.path is None and store.kind == out.store.kind:
            out.store = store
            out.keep_store_open = True  # until it has started: a failed start must not close it
            handed[pc.id] = store
        elif store is not None and isinstance(out, DurableOutput) and out.store.path is None:
            log.warning(
                "Output %s changes from @type %s to %s: the %d events in its memory buffer are not handed over (another format) and are lost.",
                pc.id,
                store.kind,
                out.store.kind,
                store.pending_events,
            )
    for pc, out in old.outputs:
        if pc.id in handed:
            out.keep_store_open = True
    return handed
