"""The Event Debugger (``@type monitor_agent`` with ``debugger true``): the page in a real browser
(Debian's chromium driven by playwright-core) against a real node fed by fluent-logger and the
LaunchDarkly-compatible server; its JSON over HTTP (nothing of it without ``debugger true``, never
the token); what the request log keeps of each body; the outputs' states; ``<system> workers 2``;
and ``fluent-ld demo --serve``."""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import textwrap
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import aiohttp
import pytest
from fluent import sender
from ld_harness import TOKEN, ServerThread, free_port, ld_node, order, until
from process_harness import NodeProcess, get, get_json, scrape, value

from fluent_ld import metrics
from fluent_ld.dev.ldserver import Fault, LaunchDarklyServer, metric
from fluent_ld.launchdarkly.response import AUTH_FIXES
from fluent_ld.metrics import DEBUG_BODY_BYTES, DEBUG_EVENTS, DEBUG_EVENTS_KEPT, DEBUGGER_FILE, RequestLog, first_events
from fluent_ld.sources.debugger import MAP_BODY_LIMIT, output_state

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = Path(__file__).resolve().parent / "node"
CHROMIUM = "/usr/bin/chromium"
# Kept after the run (CI uploads the folder): what the browser saw at each step.
SCREENSHOTS = ROOT / "test-artifacts" / "debugger"

NO_IDENTITY = {"type": "track", "event": "Order Completed", "properties": {"order_id": "O-x", "revenue": 1}}
NOT_IN_PRESET = {"type": "track", "event": "Coupon Applied", "user_id": "u-1"}
# Fields /api/debug/requests has always shown: the debugger adds none to it.
REQUEST_FIELDS = {"time", "plugin_id", "url", "payload_id", "events", "bytes", "status", "latency_ms", "error"}

SOURCES = """
<source>
  @type forward
  @id in_fwd_{u}
  bind 127.0.0.1
  port 0
</source>
<source>
  @type monitor_agent
  @id debug_{u}
  bind 127.0.0.1
  port 0
  debugger true
</source>
"""
PLAIN_MONITOR = """
<source>
  @type monitor_agent
  @id plain_{u}
  bind 127.0.0.1
  port 0
</source>
"""


def plugin(node, plugin_id):
    return next(p for pc, p in [*node.sources, *node.outputs] if pc.id == plugin_id)


def send_with_fluent_logger(port, records):
    logger = sender.FluentSender("signal", host="127.0.0.1", port=port, nanosecond_precision=True)
    try:
        for record in records:
            assert logger.emit("web", record), logger.last_error
    finally:
        logger.close()


class Monitor:
    def __init__(self, node, plugin_id):
        self.base = f"http://127.0.0.1:{plugin(node, plugin_id).port}"

    async def get(self, path, **params):
        async with aiohttp.ClientSession() as session, session.get(self.base + path, params=params) as response:
            return response.status, await response.read()

    async def json(self, path, **params):
        status, body = await self.get(path, **params)
        return status, json.loads(body)

    async def map(self, body, output=None):
        params = {"output": output} if output is not None else {}
        async with aiohttp.ClientSession() as session, session.post(self.base + "/api/debugger/map", params=params, data=body) as response:
            return response.status, await response.read()


# -- in a real browser --------------------------------------------------------------------------------


def browser_missing() -> str | None:
    if shutil.which("node") is None:
        return "Node.js is not installed"
    if not (NODE_DIR / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed (npm ci --prefix tests/node)"
    if not os.path.exists(CHROMIUM):
        return "chromium is not installed (scripts/system-deps)"
    return None


@pytest.fixture
def browser():
    missing = browser_missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}: scripts/test installs it", pytrace=False)
        pytest.skip(missing)


def test_the_page_in_a_real_browser(tmp_path, browser):
    u = uuid.uuid4().hex[:8]
    ld_id = f"ld_{u}"
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    valid = order(7)
    options = {"url": None, "screenshots": str(SCREENSHOTS), "valid": json.dumps(valid), "invalid": json.dumps(NO_IDENTITY), "chromium": CHROMIUM}

    async def scenario():
        metrics.REQUEST_LOG.entries.clear()  # the log is the process's: earlier tests' requests are not this page's
        server = LaunchDarklyServer(TOKEN, metrics={"default": [metric("orders", "order_completed", numeric=True, name="Orders")]})
        async with ld_node(tmp_path, extra=f"@id {ld_id}\n  verify_on_start true", source=SOURCES.format(u=u), server=server) as (node, out, ld):
            records = [order(n) for n in range(3)] + [NO_IDENTITY, NOT_IN_PRESET]
            await asyncio.to_thread(send_with_fluent_logger, plugin(node, f"in_fwd_{u}").port, records)
            await until(lambda: len(ld.events) == 3 and out.store.pending_events == 0 and out.store.dead_letter_count == 1 and out.verification is not None)
            options["url"] = Monitor(node, f"debug_{u}").base + "/"
            proc = await asyncio.create_subprocess_exec(
                "node",
                str(NODE_DIR / "debugger_check.mjs"),
                json.dumps(options),
                cwd=NODE_DIR,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                stdout, stderr = await asyncio.wait_for(proc.communicate(), 100)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise
            return proc.returncode, stdout.decode(), stderr.decode(), [r.payload_id for r in ld.requests]

    rc, stdout, stderr, sent = asyncio.run(scenario())
    assert stdout.strip(), stderr
    seen = json.loads(stdout)
    assert rc == 0 and "error" not in seen, seen.get("error", "") + stderr
    assert seen["title"] == "fluent-ld Event Debugger"
    assert seen["foreign_requests"] == [] and seen["console_errors"] == []  # no external assets, no script errors
    assert seen["live"] == "live"

    (card,) = seen["outputs"]
    assert card["id"] == ld_id and card["state"] == "sending"
    assert card["pending"] == "0" and card["dead_letters"] == "1"
    assert card["dead_letter_reasons"][0].startswith("no identity")
    assert card["replay"] == f"fluent-ld dlq replay -c ld.conf --id {ld_id}"
    assert "stop the node, then" in card["text"]
    assert "some mapped events will not count" in card["text"] and "checked at" in card["text"]  # the verification

    assert [r["payload_id"] for r in seen["requests"]] == sent[::-1]
    assert all(r["cells"][2] == "202" for r in seen["requests"])

    clicked = seen["clicked"]
    assert clicked["payload_id"] == sent[-1] and clicked["still_selected"]
    assert 1 <= len(clicked["first_events"]) <= DEBUG_EVENTS
    assert {e["key"] for e in clicked["first_events"]} == {"order_completed"}
    assert {e["contextKeys"]["user"] for e in clicked["first_events"]} <= {"anon-0", "anon-1", "anon-2"}

    assert seen["map_valid"]["outcome"] == "mapped"
    event = seen["map_valid"]["event"]
    assert event["key"] == "order_completed" and event["contextKeys"] == {"user": "anon-7"} and event["metricValue"] == 7
    assert "It counts in" in seen["map_valid"]["text"]
    assert seen["map_invalid"]["badge"] == "refused: invalid"
    assert seen["map_invalid"]["reason"].startswith("no identity")

    assert TOKEN not in seen["html"]
    names = ["1-overview.png", "2-request-events.png", "3-mapping-mapped.png", "4-mapping-refused.png"]
    assert [Path(p).name for p in seen["screenshots"]] == names
    assert all((SCREENSHOTS / n).stat().st_size > 10_000 for n in names)


# -- over HTTP ----------------------------------------------------------------------------------------


def test_without_debugger_the_page_is_not_served_and_no_event_contents_show(tmp_path):
    """A monitor without ``debugger true`` serves none of the debugger, even while another
    monitor of the node has one on (and the request log keeps events for it)."""
    u = uuid.uuid4().hex[:8]
    ld_id = f"ld_{u}"

    async def scenario():
        async with ld_node(tmp_path, extra=f"@id {ld_id}", source=SOURCES.format(u=u) + PLAIN_MONITOR.format(u=u)) as (node, out, ld):
            await asyncio.to_thread(send_with_fluent_logger, plugin(node, f"in_fwd_{u}").port, [order(n) for n in range(3)])
            await until(lambda: len(ld.events) == 3)
            plain, debugger = Monitor(node, f"plain_{u}"), Monitor(node, f"debug_{u}")
            payload_id = ld.requests[0].payload_id

            for path in ("/", "/api/debugger/state", "/api/debugger/events"):
                status, _ = await plain.get(path, payload_id=payload_id)
                assert status == 404, path
            status, _ = await plain.map(json.dumps(order(1)))
            assert status in (404, 405)
            for monitor in (plain, debugger):
                status, body = await monitor.json("/api/debug/requests")
                assert status == 200
                mine = [e for e in body["requests"] if e["plugin_id"] == ld_id]
                assert mine and all(set(e) == REQUEST_FIELDS for e in mine)
                assert b"anon-" not in json.dumps(body).encode()

            status, body = await debugger.json("/api/debugger/events", payload_id=payload_id)
            assert status == 200 and {e["contextKeys"]["user"] for e in body["first_events"]} <= {"anon-0", "anon-1", "anon-2"}

    asyncio.run(scenario())


def test_the_request_log_keeps_no_events_without_a_debugger(tmp_path):
    u = uuid.uuid4().hex[:8]
    ld_id = f"ld_{u}"
    source = SOURCES.format(u=u).replace("debugger true", "")

    async def scenario():
        async with ld_node(tmp_path, extra=f"@id {ld_id}", source=source) as (node, out, ld):
            assert not metrics.REQUEST_LOG.keep_events
            await asyncio.to_thread(send_with_fluent_logger, plugin(node, f"in_fwd_{u}").port, [order(1)])
            await until(lambda: len(ld.events) == 1)
            mine = [e for e in metrics.REQUEST_LOG.entries if e["plugin_id"] == ld_id]
            assert mine and all("first_events" not in e for e in mine)
            status, _ = await Monitor(node, f"debug_{u}").get("/")
            assert status == 404

    asyncio.run(scenario())


def test_the_mapping_endpoint_says_what_an_event_becomes_or_why_it_is_refused(tmp_path):
    u = uuid.uuid4().hex[:8]
    ld_id = f"ld_{u}"

    async def scenario():
        async with ld_node(tmp_path, extra=f"@id {ld_id}", source=SOURCES.format(u=u)) as (node, out, ld):
            m = Monitor(node, f"debug_{u}")
            status, body = await m.map(json.dumps(NO_IDENTITY), ld_id)
            answer = json.loads(body)
            assert status == 200 and answer["mapped"] is False and answer["kind"] == "invalid"
            assert answer["reason"] == out.mapper.map(NO_IDENTITY, 0).reason  # the output's own mapper
            assert answer["reason"].startswith("no identity") and answer["event_name"] == "Order Completed"

            status, body = await m.map(b'{"type": "track", "event": ')
            answer = json.loads(body)
            assert status == 200 and answer["kind"] == "invalid" and answer["reason"].startswith("not JSON")

            status, body = await m.map(json.dumps(NOT_IN_PRESET))
            answer = json.loads(body)
            assert answer["kind"] == "unmapped" and "Coupon Applied" in answer["reason"]

            status, body = await m.map(json.dumps(order(5)))
            answer = json.loads(body)
            assert status == 200 and answer["mapped"] is True and answer["output"] == ld_id
            assert answer["event"]["key"] == "order_completed" and answer["event"]["contextKeys"] == {"user": "anon-5"}
            assert answer["verified"] is False  # no verification yet

            status, body = await m.map(json.dumps(order(5)), "no_such_output")
            assert status == 404 and "no_such_output" in json.loads(body)["error"]
            status, _ = await m.map(b"x" * (MAP_BODY_LIMIT + 1))
            assert status == 413
            assert ld.requests == []  # nothing was sent

    asyncio.run(scenario())


def test_paused_on_401_the_state_has_the_fix_and_no_response_has_the_token(tmp_path):
    u = uuid.uuid4().hex[:8]
    ld_id = f"ld_{u}"

    async def scenario():
        server = LaunchDarklyServer("api-another-token")  # ours is refused: 401
        async with ld_node(tmp_path, extra=f"@id {ld_id}", source=SOURCES.format(u=u), server=server) as (node, out, ld):
            m = Monitor(node, f"debug_{u}")
            await asyncio.to_thread(send_with_fluent_logger, plugin(node, f"in_fwd_{u}").port, [order(1), order(2), NO_IDENTITY])
            await until(lambda: out.paused_for is not None and out.store.dead_letter_count == 1)
            status, state = await m.json("/api/debugger/state")
            assert status == 200
            (card,) = [o for o in state["outputs"] if o["id"] == ld_id]
            assert card["state"]["state"] == "paused" and card["state"]["status"] == 401
            assert card["state"]["fix"] == AUTH_FIXES[401] == out.paused_for.fix
            assert card["state"]["until"] > state["now"]  # the next probe
            assert card["pending_events"] == 2 and card["oldest_pending_age_seconds"] >= 0
            assert card["dead_letters"]["count"] == 1 and card["dead_letters"]["by_kind"] == {"invalid": 1}
            assert card["verification"] is None
            (request,) = [r for r in state["requests"] if r["plugin_id"] == ld_id][:1]
            assert request["status"] == 401 and "invalid access token" in request["error"]

            bodies = [json.dumps(state).encode()]
            for path, params in (("/", {}), ("/api/debug/requests", {}), ("/api/debugger/events", {"payload_id": request["payload_id"]})):
                status, body = await m.get(path, **params)
                assert status == 200, path
                bodies.append(body)
            bodies.append((await m.map(json.dumps(order(3))))[1])
            bodies.append((await m.map(json.dumps(NO_IDENTITY)))[1])
            assert all(TOKEN.encode() not in body for body in bodies)
            assert b"anon-1" in bodies[3]  # the events endpoint does show event contents

    asyncio.run(scenario())


def test_retrying_says_until_when_and_why(tmp_path):
    u = uuid.uuid4().hex[:8]
    ld_id = f"ld_{u}"

    async def scenario():
        server = LaunchDarklyServer(TOKEN)
        server.script(*[Fault(status=503, body="try later")] * 100)
        buffer = "retry_wait 30s\nretry_max_interval 60s"
        async with ld_node(tmp_path, extra=f"@id {ld_id}", source=SOURCES.format(u=u), server=server, buffer=buffer) as (node, out, ld):
            await node.emit("signal.web", [(time.time_ns(), order(1))])
            await until(lambda: len(ld.requests) == 1)
            await asyncio.sleep(0.1)
            status, state = await Monitor(node, f"debug_{u}").json("/api/debugger/state")
            (card,) = [o for o in state["outputs"] if o["id"] == ld_id]
            assert card["state"]["state"] == "retrying"
            assert card["state"]["reason"] == "LaunchDarkly answered 503: try later"
            assert state["now"] + 10 < card["state"]["until"] < state["now"] + 60

    asyncio.run(scenario())


def test_stale_events_are_shown_by_key(tmp_path):
    u = uuid.uuid4().hex[:8]
    ld_id = f"ld_{u}"

    async def scenario():
        old = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3 * 3600))
        async with ld_node(tmp_path, extra=f"@id {ld_id}\n  stale_after 1h", source=SOURCES.format(u=u)) as (node, out, ld):
            fresh = {k: v for k, v in order(2).items() if k != "timestamp"}  # its time: now
            await node.emit("signal.web", [(time.time_ns(), order(1) | {"timestamp": old}), (time.time_ns(), fresh)])
            await until(lambda: len(ld.events) == 2 and out.store.pending_events == 0)
            status, state = await Monitor(node, f"debug_{u}").json("/api/debugger/state")
            (card,) = [o for o in state["outputs"] if o["id"] == ld_id]
            assert card["stale_events"] == {"order_completed": 1} and card["stale_after"] == 3600

    asyncio.run(scenario())


# -- what the request log keeps, and the states (no network) ------------------------------------------


def test_first_events_reads_only_the_head_of_the_body():
    events = [{"kind": "custom", "key": "k", "n": i} for i in range(10)]
    body = json.dumps(events, separators=(",", ":")).encode()
    assert first_events(body) == events[:DEBUG_EVENTS]
    assert first_events(body[1:-1]) == events[:DEBUG_EVENTS]  # the store's data: events joined by commas
    assert first_events(b"[]") == [] and first_events(b"") == []
    # An event that does not end within DEBUG_BODY_BYTES is left out, and so is the rest.
    big = {"key": "k", "data": "é" * DEBUG_BODY_BYTES}
    assert first_events(json.dumps([events[0], big, events[1]]).encode()) == [events[0]]
    # Cut in the middle of a character: the events before it still parse.
    sized = [{"key": "k", "data": "€" * 400} for _ in range(6)]
    got = first_events(json.dumps(sized, ensure_ascii=False).encode())
    assert 0 < len(got) < 5 and got == sized[: len(got)]


def test_the_request_log_keeps_events_while_a_debugger_is_on_and_for_the_newest_only():
    log = RequestLog()

    def add(n):
        log.add("ld", "http://x", f"p{n}", 1, 10, 202, 0.01, "", body=b'[{"key":"k","n":%d}]' % n)

    add(0)
    assert "first_events" not in log.entries[-1]
    log.debugger(True)
    for n in range(1, DEBUG_EVENTS_KEPT + 11):
        add(n)
    kept = [e["payload_id"] for e in log.entries if "first_events" in e]
    assert len(kept) == DEBUG_EVENTS_KEPT and kept[-1] == f"p{DEBUG_EVENTS_KEPT + 10}"
    assert log.entries[-1]["first_events"] == [{"key": "k", "n": DEBUG_EVENTS_KEPT + 10}]
    log.debugger(False)
    add(999)
    assert "first_events" not in log.entries[-1]


def test_across_workers_a_file_turns_the_other_workers_debugger_on(tmp_path, monkeypatch):
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    worker0, worker1 = RequestLog(), RequestLog()
    worker0.debugger(True)
    assert (tmp_path / DEBUGGER_FILE).exists()
    assert not worker1.keep_events
    worker1.flush()  # every second, in every worker
    assert worker1.keep_events
    worker0.debugger(False)
    assert not (tmp_path / DEBUGGER_FILE).exists()
    worker1.flush()
    assert not worker1.keep_events
    assert DEBUG_BODY_BYTES <= 8192  # cheap: a few KB read per request at most


NOW = 1_800_000_000.0
FAILED = {"status": 503, "error": "busy"}
NO_ANSWER = {"status": None, "error": "connection refused"}
OK = {"status": 202, "error": ""}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((0, "", 0.0, None, 0, None), {"state": "sending"}),
        ((0, "", 0.0, None, 5, OK), {"state": "sending"}),
        ((0, "", 0.0, None, 0, FAILED), {"state": "sending"}),  # nothing left to retry
        ((0, "", 0.0, NOW + 4, 5, FAILED), {"state": "retrying", "until": NOW + 4, "reason": "LaunchDarkly answered 503: busy"}),
        ((0, "", 0.0, NOW - 1, 5, NO_ANSWER), {"state": "retrying", "until": None, "reason": "no answer from LaunchDarkly: connection refused"}),
        (
            (0, "", NOW + 30, None, 5, {"status": 429, "error": "slow down"}),
            {"state": "retrying", "until": NOW + 30, "reason": "LaunchDarkly asked to wait (Retry-After); LaunchDarkly answered 429: slow down"},
        ),
        ((403, "fix it", NOW + 60, None, 5, {"status": 403, "error": ""}), {"state": "paused", "status": 403, "fix": "fix it", "until": NOW + 60}),
        ((404, "fix it", 0.0, None, 5, None), {"state": "paused", "status": 404, "fix": "fix it", "until": None}),
    ],
)
def test_output_state(args, expected):
    auth, fix, paused_until, next_attempt, pending, last = args
    assert output_state(auth, fix, paused_until, next_attempt, pending, last, NOW) == expected


# -- <system> workers 2 -------------------------------------------------------------------------------


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, json.loads(response.read())


@pytest.mark.slow
def test_with_two_workers_the_requests_of_both_show_their_events(console_script, tmp_path):
    forward, monitor = free_port(), free_port()
    conf = tmp_path / "node.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            <system>
              workers 2
            </system>
            <source>
              @type forward
              @id in_forward
              bind 127.0.0.1
              port {forward}
            </source>
            <source>
              @type monitor_agent
              bind 127.0.0.1
              port {monitor}
              debugger true
            </source>
            <match signal.**>
              @type launchdarkly
              @id to_ld
              access_token {TOKEN}
              project_key default
              environment_key production
              events_host URL
              <buffer>
                path {tmp_path / "store"}
                flush_interval 50ms
              </buffer>
            </match>
            """
        )
    )
    base = f"http://127.0.0.1:{monitor}"
    with ServerThread() as ld:
        conf.write_text(conf.read_text().replace("URL", ld.url))
        with NodeProcess(console_script, str(conf)) as node:
            node.wait_for_log("fluent-ld started 2 workers")
            node.wait_for_log("Serving the Event Debugger")
            time.sleep(1.5)  # worker 1 sees the debugger within a second
            n = 0
            for _ in range(20):  # a new connection each: the kernel picks a worker
                send_with_fluent_logger(forward, [order(n), order(n + 1)])
                n += 2
            deadline = time.monotonic() + 30
            while len(ld.events) < n and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(ld.events) == n
            m = scrape(monitor)
            assert min(value(m, "fluentld_forward_connections_total", plugin_id="in_forward", worker=w) for w in ("0", "1")) > 0

            def state():
                return get_json(base + "/api/debugger/state")[1]

            # Worker 1's log reaches worker 0's monitor within a second.
            deadline = time.monotonic() + 10
            while len(state()["requests"]) < len(ld.requests) and time.monotonic() < deadline:
                time.sleep(0.2)
            got = state()
            assert got["workers"] == 2
            assert sorted(r["payload_id"] for r in got["requests"]) == sorted(r.payload_id for r in ld.requests)
            assert all(r["shown_events"] >= 1 for r in got["requests"])  # both workers kept their first events
            users = set()
            for r in got["requests"]:
                status, events = get_json(base + "/api/debugger/events?payload_id=" + r["payload_id"])
                assert status == 200
                users |= {e["contextKeys"]["user"] for e in events["first_events"]}
            assert len(users) >= len(got["requests"])
            (card,) = got["outputs"]
            assert card["delivered"] == n and card["dead_letters"]["from_worker"] == 0
            status, answer = post(base + "/api/debugger/map?output=to_ld", json.dumps(NO_IDENTITY).encode())
            assert status == 200 and answer["reason"].startswith("no identity")
            status, page = get(base + "/")
            assert status == 200 and b"Event Debugger" in page
            assert node.stop() == 0


# -- fluent-ld demo --serve ---------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_serve_keeps_running_with_the_debugger_until_stopped(console_script, signum):
    proc = subprocess.Popen([console_script, "demo", "--serve"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            url = next((line.split(": ", 1)[1].strip() for line in list(lines) if line.startswith("The Event Debugger: ")), None)
            time.sleep(0.05)
        assert url is not None and url.startswith("http://127.0.0.1:"), "".join(lines) + proc.stderr.read()
        out = "".join(lines)
        assert "Summary: 9 sent, 7 delivered" in out and "Ctrl-C stops the demo." in out

        status, page = get(url)
        assert status == 200 and b"<title>fluent-ld Event Debugger</title>" in page
        status, state = get_json(url + "api/debugger/state")
        (card,) = state["outputs"]
        assert card["delivered"] == 7 and card["dead_letters"]["count"] == 1
        assert card["verification"]["status"] == 1  # the demo project has no metric for begin_checkout
        assert state["requests"] and all(r["shown_events"] for r in state["requests"])
        time.sleep(0.5)
        assert proc.poll() is None  # still serving

        proc.send_signal(signum)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
