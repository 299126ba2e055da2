"""The pool: processes that do a node's CPU work (decompress, decode, validate, map, encode) so that
the event loop only does socket I/O, acks, the store and the sender, and one node uses every core
even when its client opens one or two connections.

Each pool process (:mod:`fluent_ld.pool_process`) holds the encoders of the node's outputs and
takes whole framed requests: the bytes as they came on the wire go in, an
:class:`~fluent_ld.admission.Admitted` (fragments already joined, lengths, dead letters, the ack
token) comes back. A process that dies fails the requests it held with :class:`PoolError` (they are
not acked, so the client sends them again), is logged and counted, and is replaced; while no process
is ready (start-up, a crash loop) the node does the work on the event loop instead.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
from collections import deque
from typing import Any

from fluent_ld import metrics
from fluent_ld.admission import Admitted, Decoding, Encoder
from fluent_ld.forward.codec import Frame, ProtocolError

__all__ = ["Pool", "PoolError", "PoolUnavailable", "default_size"]

log = logging.getLogger("fluent_ld.pool")

HEADER = struct.Struct(">I")
# Requests sent to one process before it answers the first: one being worked on and one waiting in
# its socket, so the process never idles while the event loop gets round to its answer.
JOBS_PER_PROCESS = 2
# A process that dies is replaced at once, then after doubling waits up to this long if it keeps
# dying (a broken install must not fork in a tight loop).
RESTART_MAX_WAIT = 30.0
# How long a stopping process may take to exit before it is killed.
STOP_TIMEOUT = 2.0


class PoolError(Exception):
    """The pool process holding a request died: the request was not admitted (not acked)."""


class PoolUnavailable(Exception):
    """No pool process is ready: do the work on the event loop."""


def default_size(workers: int) -> int:
    """The node's share of the cores this process may run on."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, workers))


class Pool:
    def __init__(self, size: int, encoders: dict[str, Encoder]) -> None:
        self.size = size
        self.encoders = encoders
        self.processes: list[_Process] = []
        self._jobs = itertools.count(1)
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._stopping = False
        self._restarts: set[asyncio.Task] = set()

    @property
    def ready(self) -> bool:
        return any(p.ready for p in self.processes)

    async def start(self) -> None:
        """Start the processes; they become ready in the background (about a second: a fresh
        interpreter imports the mapping), and requests are done inline until then."""
        self._setup = pickle.dumps(self.encoders, protocol=pickle.HIGHEST_PROTOCOL)
        for number in range(self.size):
            process = _Process(self, number)
            self.processes.append(process)
            await process.spawn()

    async def stop(self) -> None:
        self._stopping = True
        for task in self._restarts:
            task.cancel()
        await asyncio.gather(*(p.stop() for p in self.processes), return_exceptions=True)
        self._wake_all()
        metrics.POOL_PROCESSES.set(0)

    async def run(self, output_id: str, tag: str, frame: Frame, decoding: Decoding) -> Admitted:
        """Decode and encode ``frame`` in a pool process. Raises :class:`ProtocolError` (the
        request is not the forward protocol), :class:`PoolError` (the process died) or
        :class:`PoolUnavailable` (no process is ready: do it inline)."""
        while True:
            process = self._pick()
            if process is not None:
                break
            if self._stopping or not self.ready:
                raise PoolUnavailable
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        job_id = next(self._jobs)
        return await process.submit(job_id, (job_id, output_id, tag, frame, decoding))

    def _pick(self) -> _Process | None:
        best = None
        for process in self.processes:
            if process.ready and len(process.jobs) < JOBS_PER_PROCESS:
                if best is None or len(process.jobs) < len(best.jobs):
                    best = process
        return best

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _wake_all(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _count_ready(self) -> None:
        metrics.POOL_PROCESSES.set(sum(1 for p in self.processes if p.ready))

    def _died(self, process: _Process, why: str) -> None:
        self._count_ready()
        self._wake_all()  # waiters pick another process, or go inline if none is ready
        if self._stopping:
            return
        metrics.POOL_DEATHS.inc()
        log.error(
            "Pool process %d (pid %s) %s; the %d request(s) it held were not acknowledged and "
            "their clients will send them again. Starting another in %gs.",
            process.number, process.pid, why, process.lost, process.wait,
        )
        task = asyncio.get_running_loop().create_task(process.respawn())
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)


class _Process(asyncio.Protocol):
    """One pool process and its end of the socket pair."""

    def __init__(self, pool: Pool, number: int) -> None:
        self.pool = pool
        self.number = number
        self.popen: subprocess.Popen | None = None
        self.pid: int | None = None
        self.transport: asyncio.Transport | None = None
        self.jobs: dict[int, asyncio.Future[Admitted]] = {}
        self.ready = False
        self.lost = 0  # jobs failed by the last death
        self.wait = 0.0  # before the next restart
        self._buf = bytearray()
        self._started_at = 0.0

    async def spawn(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "fluent_ld.pool_process", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            self.popen = self.pid = None
            self.wait = min(max(self.wait * 2, 1.0), RESTART_MAX_WAIT)
            self.pool._died(self, f"could not start ({exc})")
            return
        finally:
            theirs.close()
        self.pid = self.popen.pid
        self._started_at = loop.time()
        self._buf = bytearray()
        await loop.create_unix_connection(lambda: self, sock=ours)
        assert self.transport is not None
        self.transport.write(_frame_bytes(self.pool._setup))

    async def respawn(self) -> None:
        await asyncio.sleep(self.wait)
        if not self.pool._stopping:
            await self.spawn()

    async def submit(self, job_id: int, job: tuple[Any, ...]) -> Admitted:
        future: asyncio.Future[Admitted] = asyncio.get_running_loop().create_future()
        self.jobs[job_id] = future
        assert self.transport is not None
        self.transport.write(_frame_bytes(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)))
        try:
            return await future
        finally:
            self.jobs.pop(job_id, None)
            self.pool._wake_one()

    # -- asyncio callbacks ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while len(buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(buf)
            end = HEADER.size + size
            if len(buf) < end:
                break
            with memoryview(buf) as view:
                message = pickle.loads(view[HEADER.size : end])
            del buf[:end]
            self._answer(message)

    def _answer(self, message: Any) -> None:
        if message[0] == "ready":
            self.ready = True
            self.pool._count_ready()
            self.pool._wake_all()
            log.debug("Pool process %d (pid %s) is ready.", self.number, self.pid)
            return
        job_id, kind, value = message
        future = self.jobs.get(job_id)
        if future is None or future.done():
            return  # its caller went away (cancelled at shutdown)
        if kind == "ok":
            future.set_result(value)
        elif kind == "protocol":
            future.set_exception(ProtocolError(value))
        else:
            future.set_exception(RuntimeError(f"pool process {self.number}: {value}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.ready = False
        self.transport = None
        self.lost = 0
        for future in self.jobs.values():
            if not future.done():
                future.set_exception(PoolError(f"pool process {self.number} (pid {self.pid}) died"))
                self.lost += 1
        if self.pool._stopping:
            return  # stop() waits for the process
        why = "closed its connection"
        if self.popen is not None:
            code = self.popen.poll()
            if code is None:  # alive but unreachable: of no use any more
                self.popen.kill()
                code = self.popen.wait()
            why = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        # Died soon after starting: restart after a doubling wait, not in a tight loop.
        young = asyncio.get_running_loop().time() - self._started_at < 60
        self.wait = min(max(self.wait * 2, 1.0), RESTART_MAX_WAIT) if young else 0.0
        self.pool._died(self, why)

    async def stop(self) -> None:
        self.ready = False
        if self.transport is not None:
            self.transport.close()  # the process sees the end of its stream and exits
        if self.popen is not None and self.popen.poll() is None:
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(loop.run_in_executor(None, self.popen.wait), STOP_TIMEOUT)
            except asyncio.TimeoutError:
                self.popen.kill()
                await loop.run_in_executor(None, self.popen.wait)


def _frame_bytes(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body
