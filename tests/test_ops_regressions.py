"""Regressions in metrics, the monitor, the supervisor and reloads: each test reproduces a bug
found by trying to break them (races around SIGHUP, a worker dying of a real-time signal, memory
buffers across a reload, leaks, double counting, stale gauges); the comment above each says what
it shows."""

import asyncio
import gc
import os
import re
import signal
import textwrap
import time
import uuid
import weakref

import pytest
from ld_harness import TOKEN, free_port, ld_node, order
from process_harness import NodeProcess, until
from prometheus_client import REGISTRY

from fluent_ld.config.loader import load
from fluent_ld.dev.ldserver import Fault, LaunchDarklyServer
from fluent_ld.plugin import BufferFullError, StartError
from fluent_ld.service.runner import Runner
from fluent_ld.store import Store

T = 1_795_000_000_000_000_000


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels)


def children(pid):
    """Pids whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


def workers_config(tmp_path, workers=2):
    """A node whose LaunchDarkly is unreachable (nothing listens there): events wait in the store."""
    conf = tmp_path / "node.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            <system>
              workers {workers}
            </system>
            <source>
              @type forward
              bind 127.0.0.1
              port {free_port()}
            </source>
            <match signal.**>
              @type launchdarkly
              @id to_ld
              access_token {TOKEN}
              project_key default
              environment_key production
              events_host http://127.0.0.1:{free_port()}
              <buffer>
                path {tmp_path / "store"}
                retry_wait 10s
              </buffer>
            </match>
            """
        )
    )
    return str(conf)


# -- supervisor (real process trees) ------------------------------------------------------------


# Guards against: a SIGHUP while the workers are still starting (supervisor.reload does not wait for
# _start_all, and signals workers that have not installed their handlers yet) kills the workers
# with SIGHUP's default action, and the whole node exits "could not start".
def test_sighup_while_the_workers_start_does_not_kill_the_node(console_script, tmp_path):
    with NodeProcess(console_script, workers_config(tmp_path)) as node:
        until(lambda: children(node.proc.pid), timeout=15, interval=0.002, what="a worker process")
        node.signal(signal.SIGHUP)
        node.wait_for_log("fluent-ld started 2 workers", timeout=10)  # ~2s normally
        assert node.stop(20) == 0


# Guards against: a SIGHUP while a dead worker is being restarted (reload() only skips processes that have
# already exited, not ones still starting) kills the new worker with SIGHUP; and the reload then
# waits on a status queue that _keep consumed/replaced, holding the supervisor lock for
# RELOAD_TIMEOUT (120s), so a SIGTERM in that window takes ~2 minutes to stop the node.
def test_sighup_during_a_worker_restart(console_script, tmp_path):
    with NodeProcess(console_script, workers_config(tmp_path)) as node:
        started = node.wait_for_log("fluent-ld started 2 workers", timeout=20)
        pids = [int(p) for p in re.search(r"pids (\d+), (\d+)", started).groups()]
        os.kill(pids[1], signal.SIGKILL)
        node.wait_for_log(f"Worker 1 (pid {pids[1]}) died")
        until(lambda: [c for c in children(node.proc.pid) if c not in pids], timeout=10, interval=0.002, what="the new worker 1")
        node.signal(signal.SIGHUP)
        node.wait_for_log("Worker 1 restarted", timeout=15)
        killed_by_sighup = "died (signal SIGHUP)" in node.log
        t0 = time.monotonic()
        node.signal(signal.SIGTERM)
        try:
            node.proc.wait(8)
        except Exception:
            pass
        stop_seconds = time.monotonic() - t0
        problems = []
        if killed_by_sighup:
            problems.append("the reload killed the restarting worker with SIGHUP")
        if node.proc.returncode is None:
            problems.append(f"SIGTERM did not stop the node within {stop_seconds:.0f}s (a stuck reload holds the lock)")
        assert not problems, "; ".join(problems) + "\n" + node.log


# Guards against: _keep() formats the exit with signal.Signals(-code); a worker killed by a signal Python's
# enum does not name (real-time signals 35..63) raises ValueError in the keeper task, which dies
# silently: the worker is never restarted and nothing is logged.
def test_a_worker_killed_by_a_realtime_signal_is_restarted(console_script, tmp_path):
    with NodeProcess(console_script, workers_config(tmp_path)) as node:
        started = node.wait_for_log("fluent-ld started 2 workers", timeout=20)
        pids = [int(p) for p in re.search(r"pids (\d+), (\d+)", started).groups()]
        try:
            os.kill(pids[1], signal.SIGRTMIN + 6)
            node.wait_for_log("Worker 1 restarted", timeout=6)  # ~2s normally (1s backoff)
        finally:
            node.stop(30)


# -- single-process runner (in process) ----------------------------------------------------------


def runner_config(path, *, workers=1, port=None, plugin_id="to_ld", buffer="", store=None):
    port = free_port() if port is None else port
    store_line = f"path {store}" if store else ""
    path.write_text(
        textwrap.dedent(
            f"""\
            <system>
              workers {workers}
            </system>
            <source>
              @type forward
              bind 127.0.0.1
              port {port}
            </source>
            <match signal.**>
              @type launchdarkly
              @id {plugin_id}
              access_token {TOKEN}
              project_key default
              environment_key production
              events_host http://127.0.0.1:{free_port()}
              <buffer>
                {store_line}
                retry_wait 10s
                {buffer}
              </buffer>
            </match>
            """
        )
    )
    return str(path)


# Guards against: Runner.run() starts the node outside the lock, so a SIGHUP during start-up makes
# _reload() "stop" a half-started node and start a second one. With one worker the two fight for
# the port and the process exits with StartError (the new node left running); in a worker
# (workers > 1, SO_REUSEPORT) both bind, and two nodes run on the same store and port, the old one
# never stopped.
@pytest.mark.parametrize("workers", [1, 2])
def test_a_reload_during_start_up_leaves_exactly_one_node(tmp_path, workers):
    conf = runner_config(tmp_path / "node.conf", workers=workers, store=tmp_path / "store")

    async def scenario():
        runner = Runner(conf, load(conf))
        first = runner.node
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        await asyncio.sleep(0)  # run() is inside node.start() now
        await runner.reload()  # SIGHUP at that moment
        await asyncio.sleep(0.3)
        crashed = task.exception() if task.done() else None
        leaked = [p.id for p in first._started] if runner.node is not first else []
        stop.set()
        try:
            await task
        except StartError:
            pass
        for node in (first, runner.node):  # clean up whatever is still running
            await node.stop()
        return crashed, leaked

    try:
        crashed, leaked = asyncio.run(scenario())
    finally:
        gc.unfreeze()
    assert crashed is None, f"the process would exit: {crashed}"
    assert leaked == [], f"the first node still runs beside the new one: {leaked}"


# Guards against: a reload closes a <buffer @type memory> store and the new node opens an empty one: events
# already admitted (acked to the client) are dropped by a SIGHUP, though the docs say "Stored
# events are kept either way" and memory buffers only lose data "on a crash".
def test_a_reload_keeps_the_events_of_a_memory_buffer(tmp_path):
    conf = runner_config(tmp_path / "node.conf", buffer="@type memory")

    async def scenario():
        runner = Runner(conf, load(conf))
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        await asyncio.sleep(0.2)
        await runner.node.emit("signal.web", [(T, order(n)) for n in range(5)])
        before = runner.node.outputs[0][1].store.pending_events
        assert await runner.reload()
        after = runner.node.outputs[0][1].store.pending_events
        stop.set()
        await task
        return before, after

    try:
        before, after = asyncio.run(scenario())
    finally:
        gc.unfreeze()
    assert before == 5
    assert after == 5, f"{before - after} acked events lost by the reload"


# Guards against: _freeze() calls gc.freeze() after every start and reload.
# Frozen objects are never collected, and a node is cyclic (sources hold the node as emitter), so
# every SIGHUP leaks the whole previous node (plugins, mapper, sessions, validators).
def test_reloads_do_not_leak_the_previous_nodes(tmp_path):
    conf = runner_config(tmp_path / "node.conf", buffer="@type memory")

    async def scenario():
        runner = Runner(conf, load(conf))
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        await asyncio.sleep(0.2)
        first = weakref.ref(runner.node)
        for _ in range(2):
            assert await runner.reload()
            await asyncio.sleep(0.2)
        stop.set()
        await task
        gc.collect()
        return first() is None

    try:
        collected = asyncio.run(scenario())
    finally:
        gc.unfreeze()
    assert collected, "the first node is still in memory after two reloads"


# Guards against: a reload that removes or renames an output leaves its gauges at their last values forever
# (fluentld_pending_events, oldest age, store_writable...): an alert on them never clears, and
# the frozen oldest-age looks like a stuck output.
def test_a_removed_output_leaves_no_stale_gauges(tmp_path):
    u = uuid.uuid4().hex[:8]
    old, new = f"ops_old_{u}", f"ops_new_{u}"
    path = tmp_path / "node.conf"
    conf = runner_config(path, plugin_id=old, store=tmp_path / "store")

    async def scenario():
        runner = Runner(conf, load(conf))
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        await asyncio.sleep(0.2)
        await runner.node.emit("signal.web", [(T, order(n)) for n in range(3)])
        await runner.node.refresh_metrics()
        assert sample("fluentld_pending_events", plugin_id=old) == 3
        runner_config(path, plugin_id=new, store=tmp_path / "store")
        assert await runner.reload()
        await runner.node.refresh_metrics()
        stale = sample("fluentld_pending_events", plugin_id=old)
        stop.set()
        await task
        return stale

    try:
        stale = asyncio.run(scenario())
    finally:
        gc.unfreeze()
    assert not stale, f"fluentld_pending_events{{plugin_id={old!r}}} is still {stale} after the output was removed"


# -- metrics --------------------------------------------------------------------------------------


# Guards against: fluentld_backpressure_seconds_total only grows when the Room opens again, so during a
# backpressure episode (what the README says a *rising* value reveals) it stays flat, and the time
# of an episode still going on at stop/reload is never counted.
def test_backpressure_seconds_grow_while_sources_are_held(tmp_path):
    u = uuid.uuid4().hex[:8]
    ld_id = f"ops_bp_{u}"

    async def scenario():
        server = LaunchDarklyServer(TOKEN)
        server.script(*[Fault(status=503)] * 1000)
        async with ld_node(tmp_path, buffer="high_watermark 1\nlow_watermark 0", extra=f"@id {ld_id}", server=server) as (node, out, ld):
            await node.emit("signal.web", [(T, order(1))])
            with pytest.raises(BufferFullError):
                await node.emit("signal.web", [(T, order(2))])  # over high_watermark: sources are held
            await node.refresh_metrics()
            before = sample("fluentld_backpressure_seconds_total", plugin_id=ld_id) or 0.0
            await asyncio.sleep(1.2)
            await node.refresh_metrics()  # what the node does every second
            return before, sample("fluentld_backpressure_seconds_total", plugin_id=ld_id) or 0.0

    before, during = asyncio.run(scenario())
    assert during - before >= 1.0, f"held for 1.2s but the counter moved by {during - before:.2f}s"


# Guards against: Store._run_group calls on_commit (fluentld_fsync_duration_seconds) for every writer
# transaction, including read-only polls (cut_batches/due_batches/next_attempt_at every loop,
# oldest_wait every refresh) that write and fsync nothing: an idle node reports hundreds of
# "fsyncs" a minute, and real fsync latency is diluted by near-zero samples.
def test_fsync_histogram_counts_only_commits_that_wrote(tmp_path):
    async def scenario():
        store = Store(str(tmp_path / "s.sqlite3"))
        commits = []
        store.on_commit = commits.append
        await store.open()
        commits.clear()
        for _ in range(5):
            await store.next_attempt_at()
        await store.oldest_wait(time.time())
        await store.close()
        return len(commits)

    assert asyncio.run(scenario()) == 0


# Guards against: LaunchDarklyOutput.admit (and ForwardOutput.admit) count records_received /
# records_rejected / records_dead_lettered *before* the append commits. Since c9a4808 a full disk
# makes the source hold the request and retry it every second, so each retry counts the same
# records again: on a full disk the counters climb though nothing (not even the dead letters)
# was stored.
def test_records_are_counted_once_when_a_full_disk_makes_the_source_retry(tmp_path):
    u = uuid.uuid4().hex[:8]
    ld_id = f"ops_full_{u}"

    async def scenario():
        server = LaunchDarklyServer(TOKEN)
        server.script(*[Fault(status=503)] * 1000)
        async with ld_node(tmp_path, extra=f"@id {ld_id}", server=server) as (node, out, ld):
            pages = await out.store._call(lambda c, s: c.execute("PRAGMA page_count").fetchone()[0])
            await out.store._call(lambda c, s: c.execute(f"PRAGMA max_page_count = {pages}"))
            batch = [(T, order(n, blob="x" * 2000)) for n in range(200)]
            batch.append((T, {"type": "track", "event": "Order Completed", "properties": {"revenue": 1}}))  # invalid
            for _ in range(3):  # what a held forward request does: the same records, every second
                with pytest.raises(BufferFullError):
                    await node.emit("signal.web", batch)
            return (
                sample("fluentld_records_received_total", plugin_id=ld_id),
                sample("fluentld_records_dead_lettered_total", plugin_id=ld_id, reason="invalid"),
                out.store.pending_events,
                out.store.dead_letter_count,
            )

    received, dead, pending, letters = asyncio.run(scenario())
    assert (pending, letters) == (0, 0)  # nothing was stored
    assert (received, dead) in ((None, None), (0, 0)), f"counted {received} received and {dead} dead-lettered, none stored"
