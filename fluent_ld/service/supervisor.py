"""``<system> workers N``: N worker processes, each a whole node with its own stores, sharing the
forward port (SO_REUSEPORT: the kernel spreads connections across them). Python runs one core per
process, so this is how a node uses its cores.

The supervisor starts the workers and waits until each is ready (if one cannot start, the node does
not start); restarts a worker that dies, after a backoff that doubles up to
``RESTART_BACKOFF_MAX`` and resets once a worker has run ``RESTART_BACKOFF_RESET`` seconds; forwards
SIGTERM and SIGHUP (a reload, worker by worker, after checking the config itself); and owns the
folder where workers share their metrics. Each worker holds one end of a socket pair: it reports
"ready"/"reloaded" on it, and sees the supervisor die as end-of-file, and then stops by itself
rather than live on as an orphan holding the port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time

from prometheus_client.multiprocess import mark_process_dead

from fluent_ld import metrics
from fluent_ld.config.schema import NodeConfig
from fluent_ld.plugin import StartError
from fluent_ld.service.runner import load_for_reload

__all__ = ["Supervisor"]

log = logging.getLogger("fluent_ld.service.supervisor")

RESTART_BACKOFF_FIRST = 1.0
RESTART_BACKOFF_MAX = 30.0
RESTART_BACKOFF_RESET = 60.0  # a worker that ran this long restarts at once again next time
# A worker's own shutdown takes at most the forward source's shutdown_timeout plus the outputs'
# in-flight requests; past this the supervisor kills it (what it acked is on disk already).
STOP_TIMEOUT = 60.0
READY_TIMEOUT = 60.0
RELOAD_TIMEOUT = 120.0
FOLDER_PREFIX = "fluent-ld-metrics-"


class _Worker:
    def __init__(self, number: int) -> None:
        self.number = number
        self.process: asyncio.subprocess.Process | None = None
        self.status: asyncio.Queue[str] = asyncio.Queue()
        self.channel: socket.socket | None = None
        self.listener: asyncio.Task | None = None  # held: a collected task would close the channel
        self.ready = False  # started and not since died: it has its signal handlers
        self.restarts = 0

    @property
    def proc(self) -> asyncio.subprocess.Process:
        """The process, once spawned."""
        assert self.process is not None, f"worker {self.number} was never spawned"
        return self.process


class Supervisor:
    def __init__(self, path: str, config: NodeConfig, log_level: str | None = None) -> None:
        self.path = path
        self.config = config
        self.log_level = log_level
        self.workers = [_Worker(n) for n in range(config.system.workers)]
        _remove_orphaned_folders()
        self.folder = tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-")
        self.stopping = False
        self._lock = asyncio.Lock()

    # -- the whole node --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Raises :class:`StartError` if a worker cannot start."""
        self._write_state()
        try:
            async with self._lock:  # a SIGHUP now waits until every worker has started
                await self._start_all()
            log.info("fluent-ld started %d workers (pids %s): %s.", len(self.workers), ", ".join(str(w.proc.pid) for w in self.workers), self.config.summary())
            keepers = [asyncio.create_task(self._keep(w)) for w in self.workers]
            await stop.wait()
            log.info("fluent-ld stopping %d workers.", len(self.workers))
            self.stopping = True
            for task in keepers:
                task.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
            async with self._lock:  # a reload in progress stops at the next worker
                await self._stop_all()
            log.info("fluent-ld stopped.")
        finally:
            self.stopping = True
            await self._stop_all()
            shutil.rmtree(self.folder, ignore_errors=True)

    async def _start_all(self) -> None:
        for worker in self.workers:
            await self._spawn(worker)
        for worker in self.workers:
            status = await self._next_status(worker, READY_TIMEOUT)
            if status != "ready":
                raise StartError(f"worker {worker.number} did not start ({status}); see its log lines above")
            worker.ready = True

    async def _stop_all(self) -> None:
        running = [w for w in self.workers if w.process is not None and w.process.returncode is None]
        for worker in running:
            worker.proc.send_signal(signal.SIGTERM)
        for worker in running:
            try:
                await asyncio.wait_for(worker.proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                log.error("Worker %d did not stop within %gs: killing it (what it acknowledged is stored).", worker.number, STOP_TIMEOUT)
                worker.proc.kill()
                await worker.proc.wait()
        for worker in self.workers:
            if worker.listener is not None:
                worker.listener.cancel()
                worker.listener = None
            if worker.channel is not None:
                worker.channel.close()
                worker.channel = None

    async def reload(self) -> bool:
        """SIGHUP: check the config here first, then have each worker in turn apply it."""
        async with self._lock:
            if self.stopping:
                return False
            config = load_for_reload(self.path, len(self.workers))
            if config is None:
                return False
            ok = True
            for worker in self.workers:  # one at a time: the others keep serving the port
                if self.stopping:
                    return False
                if not worker.ready or worker.process is None or worker.process.returncode is not None:
                    continue  # restarting: it reads the new config as it starts
                _drain(worker.status)
                worker.process.send_signal(signal.SIGHUP)
                status = await self._next_status(worker, RELOAD_TIMEOUT)
                if status != "reloaded":
                    log.error("Worker %d did not apply the new config (%s).", worker.number, status)
                    ok = False
            self.config = config
            if ok:
                log.info("Reloaded %d workers: %s.", len(self.workers), config.summary())
            return ok

    # -- one worker ------------------------------------------------------------------------------

    async def _spawn(self, worker: _Worker) -> None:
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", "fluent_ld", "worker", "-c", self.path, "--number", str(worker.number), "--channel", str(theirs.fileno())]
        if self.log_level:
            command += ["--log-level", self.log_level]
        env = {**os.environ, metrics.MULTIPROC_ENV: self.folder}
        worker.process = await asyncio.create_subprocess_exec(
            *command,
            env=env,
            pass_fds=(theirs.fileno(),),
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only; it stops the workers in order
        )
        theirs.close()
        worker.channel = ours
        worker.status = asyncio.Queue()
        worker.listener = asyncio.get_running_loop().create_task(self._listen(worker, ours))

    async def _listen(self, worker: _Worker, channel: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=channel)
        try:
            while line := await reader.readline():
                worker.status.put_nowait(line.decode().strip())
        except (OSError, ValueError):
            pass
        finally:
            writer.close()
            worker.status.put_nowait("exited")

    async def _next_status(self, worker: _Worker, timeout: float) -> str:
        try:
            return await asyncio.wait_for(worker.status.get(), timeout)
        except TimeoutError:
            return f"no answer within {timeout:g}s"

    async def _keep(self, worker: _Worker) -> None:
        """Restart the worker whenever it dies, with a backoff. Never ends by itself: an error here
        (fork failing, /tmp full) is logged and the restart tried again."""
        backoff = RESTART_BACKOFF_FIRST
        started = time.monotonic()
        while True:
            try:
                process = worker.proc
                code = await process.wait()
                worker.ready = False
                mark_process_dead(process.pid, self.folder)  # its live gauges leave the sums
                if self.stopping:
                    return
                ran = time.monotonic() - started
                if ran >= RESTART_BACKOFF_RESET:
                    backoff = RESTART_BACKOFF_FIRST
                log.error("Worker %d (pid %d) died (%s) after %.1fs; restarting it in %gs.", worker.number, process.pid, _how(code), ran, backoff)
                await asyncio.sleep(backoff)  # cancelled when the node stops
                backoff = min(backoff * 2, RESTART_BACKOFF_MAX)
                worker.restarts += 1
                self._write_state()
                async with self._lock:  # never while a reload signals the workers
                    if self.stopping:
                        return
                    if worker.listener is not None:
                        worker.listener.cancel()
                    if worker.channel is not None:
                        worker.channel.close()
                    started = time.monotonic()
                    await self._spawn(worker)
                    status = await self._next_status(worker, READY_TIMEOUT)
                    if status == "ready":
                        worker.ready = True
                        log.info("Worker %d restarted (pid %d).", worker.number, worker.proc.pid)
                    else:
                        log.error("Worker %d did not start again (%s); trying again.", worker.number, status)
                        if worker.proc.returncode is None:
                            worker.proc.kill()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Restarting worker %d failed; trying again in %gs.", worker.number, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RESTART_BACKOFF_MAX)
                if worker.process is None or worker.process.returncode is not None:
                    try:
                        await self._spawn(worker)
                    except Exception:
                        log.exception("Worker %d could not be started.", worker.number)

    def _write_state(self) -> None:
        state = {"workers": len(self.workers), "restarts": {str(w.number): w.restarts for w in self.workers}}
        path = os.path.join(self.folder, metrics.SUPERVISOR_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(state, f)
        os.replace(path + ".tmp", path)


def _how(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:  # real-time signals have no name
        return f"signal {-code}"


def _drain(queue: asyncio.Queue) -> None:
    while not queue.empty():
        queue.get_nowait()


def _remove_orphaned_folders() -> None:
    """Metrics folders left by a supervisor that was killed (its pid is in the name)."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        if not name.startswith(FOLDER_PREFIX):
            continue
        try:
            pid = int(name[len(FOLDER_PREFIX) :].split("-", 1)[0])
            if pid == os.getpid():  # this pid's earlier life (PID 1 in a restarted container)
                raise ProcessLookupError
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        except PermissionError:
            continue  # another user's live supervisor
