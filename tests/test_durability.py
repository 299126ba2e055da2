"""The node as a process: SIGKILL under load and restart, the demo, the default config, and the
dead-letter and buffer commands on a real store."""

import asyncio
import json
import os
import signal
import subprocess
import threading
import time

import pytest
from harness import RawClient, forward_request
from ld_harness import ServerThread, free_port, ld_config
from ld_harness import start_node as start_with_log

TOKEN = "api-test-token"


def node_config(tmp_path, url: str, port: int) -> str:
    conf = tmp_path / "node.conf"
    source = f"<source>\n  @type forward\n  port {port}\n</source>"
    conf.write_text(ld_config(url, str(tmp_path / "store"), source=source))
    return str(conf)


def start_node(console_script, conf: str, port: int) -> subprocess.Popen:
    return start_with_log(console_script, conf, port, open(os.path.join(os.path.dirname(conf), "node.log"), "a"))


def record(n: int) -> dict:
    return {"type": "track", "event": "Order Completed", "user_id": f"u{n}", "properties": {"order_id": f"O-{n}", "revenue": 1, "n": n}}


class Loader(threading.Thread):
    """Sends 50-record requests with acks, one at a time, reconnecting when the node is gone.
    Records in ``acked`` only what the node acknowledged."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.acked: set[int] = set()
        self.stop = threading.Event()
        self.next = 0

    def run(self) -> None:
        client = None
        while not self.stop.is_set():
            try:
                if client is None:
                    client = RawClient(self.port, timeout=2)
                first = self.next
                self.next += 50
                client.send(forward_request("signal.load", [record(n) for n in range(first, first + 50)], chunk=f"c{first}"))
                if client.reply() == {"ack": f"c{first}"}:
                    self.acked.update(range(first, first + 50))
            except (OSError, EOFError):
                if client is not None:
                    client.close()
                client = None
                time.sleep(0.05)


def test_every_acked_event_survives_sigkill(console_script, tmp_path):
    port = free_port()
    with ServerThread() as ld:
        conf = node_config(tmp_path, ld.url, port)
        proc = start_node(console_script, conf, port)
        loader = Loader(port)
        loader.start()
        try:
            for _ in range(3):  # three kills at different moments of the load
                deadline = time.monotonic() + 10
                start = len(loader.acked)
                while len(loader.acked) < start + 1000 and time.monotonic() < deadline:
                    time.sleep(0.01)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                proc = start_node(console_script, conf, port)
            time.sleep(0.5)
        finally:
            loader.stop.set()
            loader.join(10)
        acked = set(loader.acked)
        assert len(acked) >= 3000
        deadline = time.monotonic() + 30
        delivered: list[int] = []
        while time.monotonic() < deadline:
            delivered = [e["data"]["n"] for e in ld.events]
            if acked <= set(delivered):
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        missing = acked - set(delivered)
        assert not missing, f"{len(missing)} acked events never reached LaunchDarkly"
        # LaunchDarkly dedupes by payload id, so an event counted twice would mean two payloads.
        assert len(delivered) == len(set(delivered))


def test_demo(console_script):
    result = subprocess.run([console_script, "demo"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "POST /v2/event-data-import/default/production -> 202" in out
    assert "X-LaunchDarkly-Event-Schema: 4" in out
    assert "Authorization: api-...oken" in out and "api-demo-0000-token" not in out
    assert '"key": "order_completed"' in out and '"user": "a1b2c3d4-anonymous-id"' in out
    assert "Summary: 9 sent, 7 delivered to LaunchDarkly in" in out
    assert "dead letter: invalid: no identity" in out
    assert "begin_checkout   -" in out and "PROBLEM: no custom metric" in out  # the verification
    assert "WILL NOT COUNT: 1 of 6 mapped event(s) will not count" in out


def test_run_without_config_needs_the_launchdarkly_settings(console_script):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    result = subprocess.run([console_script, "run"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1
    assert "environment variable 'LD_ACCESS_TOKEN' is not set" in result.stderr
    assert "needs LD_ACCESS_TOKEN, LD_PROJECT_KEY and LD_ENVIRONMENT_KEY" in result.stderr


def test_dlq_and_buffer_commands_on_a_real_store(console_script, tmp_path):
    port = free_port()
    with ServerThread() as ld:
        ld.script(*([503] * 100_000))  # nothing is delivered while this runs
        conf = node_config(tmp_path, ld.url, port)
        proc = start_node(console_script, conf, port)
        with RawClient(port) as c:
            bad = {"type": "track", "event": "Order Completed", "properties": {"revenue": 1}}  # no identity
            c.send(forward_request("signal.x", [record(1), bad, record(2)], chunk="k"))
            assert c.reply() == {"ack": "k"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0

    def cli(*args):
        return subprocess.run([console_script, *args, "-c", conf], capture_output=True, text=True, timeout=60)

    status = json.loads(cli("buffer", "status").stdout)
    assert status["events"] == 2 and status["dead_letters"] == {"invalid": 1}
    listing = cli("dlq", "list").stdout.splitlines()
    assert len(listing) == 1 and "\tinvalid\t-\tno identity" in listing[0]
    letter_id = listing[0].split("\t")[0]
    shown = json.loads(cli("dlq", "show", letter_id).stdout)
    assert json.loads(shown["record"]) == {"type": "track", "event": "Order Completed", "properties": {"revenue": 1}}
    still = cli("dlq", "replay")
    assert "replayed 0 dead letter(s); 1 still rejected and kept" in still.stdout
    # "Fix" the mapping so that the letter maps: a context kind keyed by a field the event has.
    text = open(conf).read().replace("events_host", "<context>\n    kind account\n    key user_id event\n  </context>\n  events_host")
    open(conf, "w").write(text)
    fixed = cli("dlq", "replay")
    assert "replayed 1 dead letter(s); 0 still rejected and kept" in fixed.stdout, fixed.stdout + fixed.stderr
    status = json.loads(cli("buffer", "status").stdout)
    assert status["events"] == 3 and status["dead_letters"] == {}
    assert cli("dlq", "purge").returncode == 1  # needs ids or --all
    assert "purged 0 dead letter(s)" in cli("dlq", "purge", "--all").stdout


def test_node_client_to_launchdarkly_end_to_end(tmp_path):
    """@fluent-org/logger (PackedForward, acks) -> forward -> launchdarkly -> the server."""
    from test_forward_node_client import node_client_available, send

    if not node_client_available():
        pytest.skip("@fluent-org/logger not installed")
    from harness import RunningNode

    with ServerThread() as ld:
        text = open(node_config(tmp_path, ld.url, 0)).read().replace("<match signal.**>", "<match node.**>")
        with RunningNode(text) as n:
            send(port=n.port, mode="CompressedPackedForward", ack=True, count=30, eventTime=True, prefix="node", tag="signal", signal=True)
            deadline = time.monotonic() + 20
            while len(ld.events) < 30 and time.monotonic() < deadline:
                time.sleep(0.02)
    assert sorted(e["contextKeys"]["user"] for e in ld.events) == sorted(f"node-{i}" for i in range(30))
    assert {e["creationDate"] for e in ld.events} == {1749200000123 + i for i in range(30)}
    assert all(r.headers["X-LaunchDarkly-Event-Schema"] == "4" for r in ld.requests)


def test_backpressure_slows_the_client_without_disconnecting_it(tmp_path):
    from harness import RunningNode

    with ServerThread() as ld:
        ld.script(*([503] * 100_000))  # LaunchDarkly is down
        text = (
            open(node_config(tmp_path, ld.url, 0))
            .read()
            .replace("flush_interval 50ms", "flush_interval 50ms\n    total_limit_size 64k\n    high_watermark 32k\n    low_watermark 16k")
        )
        with RunningNode(text) as n, RawClient(n.port) as c:
            acked = 0
            c.sock.settimeout(0.5)
            stalled = False
            for i in range(40):  # ~25 KB per request: the watermark is crossed quickly
                c.send(forward_request("signal.bp", [record(n) for n in range(i * 100, i * 100 + 100)], chunk=f"c{i}"))
                try:
                    assert c.reply() == {"ack": f"c{i}"}
                    acked += 1
                except TimeoutError:
                    stalled = True
                    break
            assert stalled and acked >= 1
            out = n.output()
            assert out.store.pending_bytes < 32 * 1024 + 100 * 300  # bounded: at most one request over
            ld.faults.clear()  # LaunchDarkly is back
            c.sock.settimeout(20)
            assert c.reply() == {"ack": f"c{acked}"}  # the same connection goes on
            deadline = time.monotonic() + 20
            while len(ld.events) < (acked + 1) * 100 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(ld.events) == (acked + 1) * 100


def test_buffer_and_dlq_cover_every_workers_store(console_script, tmp_path):
    from fluent_ld.store import DeadLetter, Store

    async def fill():
        for worker, events in ((0, 1), (1, 2)):
            store = Store(str(tmp_path / "store" / f"launchdarkly.0-worker{worker}.sqlite3"))
            await store.open()
            await store.append(b",".join([b"{}"] * events), [2] * events, 2 * events, 0)
            await store.add_dead_letters([DeadLetter("invalid", f"from worker {worker}", None, "signal.x", None, b"{}")])
            await store.close()

    asyncio.run(fill())
    conf = node_config(tmp_path, "http://127.0.0.1:9", free_port())

    def cli(*args):
        return subprocess.run([console_script, *args, "-c", conf], capture_output=True, text=True, timeout=60)

    statuses = [json.loads(line) for line in cli("buffer", "status").stdout.splitlines()]
    assert [(s["store"].rsplit("-", 1)[1], s["events"]) for s in statuses] == [("worker0.sqlite3", 1), ("worker1.sqlite3", 2)]
    listing = cli("dlq", "list").stdout
    assert "from worker 0" in listing and "from worker 1" in listing and listing.count("# launchdarkly.0:") == 2
    ambiguous = cli("dlq", "show", "1")
    assert ambiguous.returncode == 1 and "--worker" in ambiguous.stderr
    shown = json.loads(cli("dlq", "show", "1", "--worker", "1").stdout)
    assert shown["reason"] == "from worker 1"
    assert [json.loads(line)["events"] for line in cli("buffer", "status", "--worker", "1").stdout.splitlines()] == [2]
