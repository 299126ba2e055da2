"""The pool: processes that do a node's CPU work (decompress, decode, validate, map, encode) so that
the event loop only does socket I/O, acks, the store and the sender, and one node uses every core
even when its client opens one or two connections.

Each pool process (:mod:`fluent_ld.pipeline.pool_process`) holds the encoders of the node's outputs and
takes whole framed requests: the bytes as they came on the wire go in, an
:class:`~fluent_ld.pipeline.admission.Admitted` (fragments already joined, lengths, dead letters, the ack
token) comes back. A process that dies fails the requests it held with :class:`PoolError` (they are
not acked, so the client sends them again), is logged and counted, and is replaced; while no process
is ready (start-up, a crash loop) the node does the work on the event loop instead.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import mmap
import os
import socket
import subprocess
import sys
from collections import deque
from typing import Any

from fluent_ld import metrics
from fluent_ld.forward.codec import Frame, ProtocolError
from fluent_ld.pipeline.admission import Admitted, Decoding, Encoder
from fluent_ld.pipeline.pool_process import HEAD, LENGTH, buffer, pack, unpack

__all__ = ["Pool", "PoolError", "PoolUnavailable", "default_size"]

log = logging.getLogger("fluent_ld.pipeline.pool")

# Requests sent to one process before it answers the first: one being worked on and one waiting in
# its socket, so the process never idles while the event loop gets round to its answer.
JOBS_PER_PROCESS = 2
# A request under SMALL_JOB_BYTES is done on the event loop (a few milliseconds at most) rather than
# wait behind a process's work of BUSY_BYTES or more (tens of milliseconds and up: a 32 MiB
# request takes the better part of a second), so that one large request does not hold up the acks
# of every other connection.
SMALL_JOB_BYTES = 256 * 1024
BUSY_BYTES = 1024 * 1024
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
        self._setup = pack(self.encoders)
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
        size = frame.wire_size
        while True:
            process = self._pick(size)
            if process is not None:
                break
            if self._stopping or not self.ready or (size < SMALL_JOB_BYTES and self._busy()):
                raise PoolUnavailable
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        job_id = next(self._jobs)
        return await process.submit(job_id, (job_id, output_id, tag, frame, decoding), size)

    def _pick(self, size: int) -> _Process | None:
        """The ready process with a free slot and the least work; none for a small request when
        that one is busy with a large one (it would wait behind it)."""
        best = None
        for process in self.processes:
            if process.ready and len(process.jobs) < JOBS_PER_PROCESS:
                if best is None or process.outstanding < best.outstanding:
                    best = process
        if best is not None and size < SMALL_JOB_BYTES and self._busy():
            return None
        return best

    def _busy(self) -> bool:
        """A process is working on a large request: its core is taken for a while, and a small
        request is answered sooner on the loop than in a process competing with it for a core."""
        return any(p.outstanding >= BUSY_BYTES for p in self.processes if p.ready)

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
            "Pool process %d (pid %s) %s; the %d request(s) it held were not acknowledged and their clients will send them again. Starting another in %gs.",
            process.number,
            process.pid,
            why,
            process.lost,
            process.wait,
        )
        task = asyncio.get_running_loop().create_task(process.respawn())
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)


class _Process:
    """One pool process and the node's end of its socket pair (non-blocking, read and written
    here directly: a request of tens of MB goes out with ``sendmsg`` from its own buffer, never
    copied into a transport's buffer and moved along it as it drains)."""

    def __init__(self, pool: Pool, number: int) -> None:
        self.pool = pool
        self.number = number
        self.popen: subprocess.Popen | None = None
        self.pid: int | None = None
        self.sock: socket.socket | None = None
        self.jobs: dict[int, asyncio.Future[Admitted]] = {}
        self.job_bytes: dict[int, int] = {}
        self.outstanding = 0  # wire bytes of the jobs it holds
        self.ready = False
        self.lost = 0  # jobs failed by the last death
        self.wait = 0.0  # before the next restart
        self._started_at = 0.0
        self._out: deque[memoryview] = deque()  # what is still to be sent
        self._writing = False
        self._reader = _Reader()

    async def spawn(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "fluent_ld.pipeline.pool_process", str(theirs.fileno())],
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
        ours.setblocking(False)
        self.sock = ours
        self._out.clear()
        self._writing = False
        self._reader = _Reader()
        loop.add_reader(ours.fileno(), self._readable)
        self._send(self.pool._setup)

    async def respawn(self) -> None:
        await asyncio.sleep(self.wait)
        if not self.pool._stopping:
            await self.spawn()

    async def submit(self, job_id: int, job: tuple[Any, ...], size: int) -> Admitted:
        future: asyncio.Future[Admitted] = asyncio.get_running_loop().create_future()
        self.jobs[job_id] = future
        self.job_bytes[job_id] = size
        self.outstanding += size
        self._send(pack(job))
        try:
            return await future
        finally:
            self.jobs.pop(job_id, None)
            self.outstanding -= self.job_bytes.pop(job_id, 0)
            self.pool._wake_one()

    # -- the socket -------------------------------------------------------------------------------

    def _send(self, parts: list[Any]) -> None:
        if self.sock is None:
            return  # dead: its jobs have failed already
        self._out.extend(memoryview(p).cast("B") for p in parts)
        if not self._writing:
            self._writable()

    def _writable(self) -> None:
        sock, out = self.sock, self._out
        while out and sock is not None:
            try:
                sent = sock.sendmsg(list(itertools.islice(out, _IOV_MAX)))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._lost(exc)
                return
            while sent:
                first = out[0]
                if sent >= first.nbytes:
                    sent -= first.nbytes
                    out.popleft()
                else:
                    out[0] = first[sent:]
                    sent = 0
        if sock is None:
            return
        loop = asyncio.get_running_loop()
        if out and not self._writing:
            loop.add_writer(sock.fileno(), self._writable)
            self._writing = True
        elif not out and self._writing:
            loop.remove_writer(sock.fileno())
            self._writing = False

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            messages = self._reader.read(sock)
        except (BlockingIOError, InterruptedError):
            return
        except Exception as exc:  # a broken stream or answer: the process is of no use any more
            self._lost(exc)
            return
        for message in messages:
            self._answer(message)
        if self._reader.closed:
            self._lost(None)

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

    def _close_socket(self) -> None:
        sock, self.sock = self.sock, None
        if sock is None:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())
        if self._writing:
            loop.remove_writer(sock.fileno())
            self._writing = False
        self._out.clear()
        sock.close()

    def _lost(self, exc: BaseException | None) -> None:
        """The process's end of the socket closed (it died) or the stream broke."""
        if self.sock is None:
            return
        self._close_socket()
        self.ready = False
        self.lost = 0
        for future in self.jobs.values():
            if not future.done():
                future.set_exception(PoolError(f"pool process {self.number} (pid {self.pid}) died"))
                self.lost += 1
        if self.pool._stopping:
            return  # stop() waits for the process
        why = "closed its connection" if exc is None else f"broke its connection ({exc!r})"
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
        self._close_socket()  # the process sees the end of its stream and exits
        if self.popen is not None and self.popen.poll() is None:
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(loop.run_in_executor(None, self.popen.wait), STOP_TIMEOUT)
            except TimeoutError:
                self.popen.kill()
                await loop.run_in_executor(None, self.popen.wait)


class _Reader:
    """Reads messages (see :func:`fluent_ld.pipeline.pool_process.pack`) from a non-blocking socket straight
    into buffers of their exact sizes: the head, the buffer lengths, the pickle, each buffer."""

    def __init__(self) -> None:
        self.closed = False
        self._start(bytearray(HEAD.size), self._got_head)

    def _start(self, target: bytearray | mmap.mmap, then: Any) -> None:
        self._target, self._view, self._got, self._then = target, memoryview(target).cast("B"), 0, then

    def read(self, sock: socket.socket) -> list[Any]:
        """The messages completed by what the socket has now; raises BlockingIOError when it
        has nothing."""
        done: list[Any] = []
        while True:
            want = len(self._target) - self._got
            if want:
                try:
                    n = sock.recv_into(self._view[self._got :], min(want, _READ_MAX))
                except (BlockingIOError, InterruptedError):
                    if done:
                        return done
                    raise
                if n == 0:
                    self.closed = True
                    return done
                self._got += n
                if n < want:
                    continue
            message = self._then(self._target)
            if message is not _MORE:
                done.append(message)

    def _got_head(self, head: bytearray) -> Any:
        self._size, count = HEAD.unpack(head)
        self._buffers: list[Any] = []
        if count:
            self._start(bytearray(LENGTH.size * count), self._got_lengths)
        else:
            self._lengths: list[int] = []
            self._start(buffer(self._size), self._got_body)
        return _MORE

    def _got_lengths(self, lengths: bytearray) -> Any:
        self._lengths = [n for (n,) in LENGTH.iter_unpack(lengths)]
        self._start(buffer(self._size), self._got_body)
        return _MORE

    def _got_body(self, body: Any) -> Any:
        self._body = body
        return self._next_buffer()

    def _got_buffer(self, received: Any) -> Any:
        self._buffers.append(received)
        return self._next_buffer()

    def _next_buffer(self) -> Any:
        if len(self._buffers) < len(self._lengths):
            self._start(buffer(self._lengths[len(self._buffers)]), self._got_buffer)
            return _MORE
        message = unpack(self._body, self._buffers)
        self._body, self._buffers = bytearray(), []
        self._start(bytearray(HEAD.size), self._got_head)
        return message


_MORE = object()
_IOV_MAX = 64
_READ_MAX = 1 << 22  # per recv_into: a big answer is read in pieces of at most 4 MiB
