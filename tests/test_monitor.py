"""``@type monitor_agent`` against a real node: Prometheus metrics that move with a real run,
Fluentd's plugins.json shape, readiness that follows LaunchDarkly's 401 and its recovery, and the
recent-requests debugger."""

import asyncio
import time
import uuid

import aiohttp
from fluent import sender
from ld_harness import TOKEN, ld_node, order, until
from prometheus_client.parser import text_string_to_metric_families

from fluent_ld.dev.ldserver import Fault, LaunchDarklyServer

T = 1_795_000_000_000_000_000

SOURCES = """
<source>
  @type forward
  @id in_fwd_{u}
  bind 127.0.0.1
  port 0
</source>
<source>
  @type monitor_agent
  @id monitor_{u}
  bind 127.0.0.1
  port 0
</source>
"""


def run(coro):
    return asyncio.run(coro)


def plugin(node, plugin_id):
    return next(p for pc, p in [*node.sources, *node.outputs] if pc.id == plugin_id)


class Monitor:
    def __init__(self, node, u):
        self.base = f"http://127.0.0.1:{plugin(node, f'monitor_{u}').port}"

    async def get(self, path):
        async with aiohttp.ClientSession() as session, session.get(self.base + path) as response:
            return response.status, response.headers.get("Content-Type", ""), await response.read()

    async def json(self, path):
        async with aiohttp.ClientSession() as session, session.get(self.base + path) as response:
            return response.status, await response.json()

    async def metrics(self) -> dict:
        """{(name, frozenset(labels)): value} for every sample."""
        status, content_type, body = await self.get("/metrics")
        assert status == 200 and content_type.startswith("text/plain")
        out = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def send_with_fluent_logger(port, records):
    logger = sender.FluentSender("signal", host="127.0.0.1", port=port, nanosecond_precision=True)
    try:
        for record in records:
            assert logger.emit("web", record), logger.last_error
    finally:
        logger.close()


def test_metrics_are_present_and_move_after_a_real_run(tmp_path):
    u = uuid.uuid4().hex[:8]
    ld_id, fwd_id = f"ld_{u}", f"in_fwd_{u}"

    async def scenario():
        async with ld_node(tmp_path, extra=f"@id {ld_id}", source=SOURCES.format(u=u)) as (node, out, ld):
            monitor = Monitor(node, u)
            before = await monitor.metrics()
            assert value(before, "fluentld_records_received_total", plugin_id=ld_id) == 0
            assert value(before, "fluentld_store_writable", plugin_id=ld_id) == 1
            assert ("fluentld_output_auth_error", frozenset({"plugin_id": ld_id}.items())) in before

            records = [order(n) for n in range(5)]
            records.append({"type": "track", "event": "Order Completed", "properties": {"revenue": 1}})  # no identity
            records.append({"type": "track", "event": "Not In The Preset", "anonymous_id": "a"})
            port = plugin(node, fwd_id).port
            await asyncio.to_thread(send_with_fluent_logger, port, records)
            await until(lambda: len(ld.events) == 5 and out.store.pending_events == 0)

            after = await monitor.metrics()
            assert value(after, "fluentld_records_received_total", plugin_id=fwd_id) == 7
            assert value(after, "fluentld_records_received_total", plugin_id=ld_id) == 7
            assert value(after, "fluentld_records_delivered_total", plugin_id=ld_id) == 5
            assert value(after, "fluentld_records_rejected_total", plugin_id=ld_id, reason="invalid") == 1
            assert value(after, "fluentld_records_rejected_total", plugin_id=ld_id, reason="unmapped") == 1
            assert value(after, "fluentld_records_dead_lettered_total", plugin_id=ld_id, reason="invalid") == 1
            assert value(after, "fluentld_requests_total", plugin_id=ld_id, status="202") == len(ld.requests)
            assert value(after, "fluentld_batch_events_sum", plugin_id=ld_id) == 5
            assert value(after, "fluentld_batch_bytes_sum", plugin_id=ld_id) == sum(len(r.body) for r in ld.requests)
            assert value(after, "fluentld_request_duration_seconds_count", plugin_id=ld_id) == len(ld.requests)
            assert value(after, "fluentld_fsync_duration_seconds_count", plugin_id=ld_id) >= 2  # admit, cut, delivered
            assert value(after, "fluentld_forward_connections_total", plugin_id=fwd_id, worker="0") >= 1
            assert value(after, "fluentld_pending_events", plugin_id=ld_id) == 0
            assert value(after, "fluentld_dead_letters", plugin_id=ld_id) == 1
            assert value(after, "fluentld_oldest_pending_event_age_seconds", plugin_id=ld_id) == 0

    run(scenario())


def test_pending_gauges_and_oldest_age_while_launchdarkly_is_down(tmp_path):
    u = uuid.uuid4().hex[:8]
    ld_id = f"ld_{u}"

    async def scenario():
        server = LaunchDarklyServer(TOKEN)
        server.script(*[Fault(status=503)] * 1000)
        async with ld_node(tmp_path, extra=f"@id {ld_id}", source=SOURCES.format(u=u), server=server) as (node, out, ld):
            monitor = Monitor(node, u)
            await node.emit("signal.web", [(T, order(1)), (T, order(2))])
            await until(lambda: len(ld.requests) >= 2)
            await asyncio.sleep(0.3)
            m = await monitor.metrics()
            assert value(m, "fluentld_pending_events", plugin_id=ld_id) == 2
            assert value(m, "fluentld_pending_bytes", plugin_id=ld_id) == out.store.pending_bytes > 0
            assert value(m, "fluentld_oldest_pending_event_age_seconds", plugin_id=ld_id) >= 0.2
            assert value(m, "fluentld_retries_total", plugin_id=ld_id) >= 1
            assert value(m, "fluentld_requests_total", plugin_id=ld_id, status="503") >= 2
            status, body = await monitor.json("/readyz")
            assert status == 200 and body == {"ready": True, "problems": []}  # 5xx: retrying, not an operator's problem

    run(scenario())


def test_readyz_turns_unready_on_a_401_and_ready_again_after_recovery(tmp_path):
    u = uuid.uuid4().hex[:8]
    ld_id = f"ld_{u}"

    async def scenario():
        server = LaunchDarklyServer("the-right-token")  # refuses the node's token
        async with ld_node(tmp_path, extra=f"@id {ld_id}", source=SOURCES.format(u=u), server=server) as (node, out, ld):
            monitor = Monitor(node, u)
            status, body = await monitor.json("/readyz")
            assert status == 200 and body["ready"] is True
            await node.emit("signal.web", [(T, order(1))])
            await until(lambda: out.auth_error == 401)
            status, body = await monitor.json("/readyz")
            assert status == 503 and body["ready"] is False
            assert len(body["problems"]) == 1 and ld_id in body["problems"][0] and "401" in body["problems"][0]
            assert value(await monitor.metrics(), "fluentld_output_auth_error", plugin_id=ld_id) == 401
            status, _ = await monitor.json("/healthz")
            assert status == 200  # alive: restarting it would not fix a token

            ld.token = TOKEN  # the operator fixes the token; the output's probe notices
            await until(lambda: len(ld.events) == 1, timeout=15)
            status, body = await monitor.json("/readyz")
            assert status == 200 and body == {"ready": True, "problems": []}
            assert value(await monitor.metrics(), "fluentld_output_auth_error", plugin_id=ld_id) == 0

    run(scenario())


def test_readyz_is_unready_while_the_store_cannot_commit(tmp_path):
    u = uuid.uuid4().hex[:8]
    ld_id = f"ld_{u}"

    async def scenario():
        async with ld_node(tmp_path, extra=f"@id {ld_id}", source=SOURCES.format(u=u)) as (node, out, ld):
            monitor = Monitor(node, u)
            out.store._failed_at = time.monotonic()  # what a failed group commit records
            status, body = await monitor.json("/readyz")
            assert status == 503 and "store is not writable" in body["problems"][0]
            await node.emit("signal.web", [(T, order(1))])  # the next commit succeeds: ready again
            status, body = await monitor.json("/readyz")
            assert status == 200, body

    run(scenario())


def test_plugins_json_has_fluentds_shape_with_secrets_masked(tmp_path):
    u = uuid.uuid4().hex[:8]
    ld_id = f"ld_{u}"

    async def scenario():
        async with ld_node(tmp_path, extra=f"@id {ld_id}", source=SOURCES.format(u=u)) as (node, out, ld):
            monitor = Monitor(node, u)
            await node.emit("signal.web", [(T, order(1)), (T, order(2))])
            await until(lambda: len(ld.events) == 2 and out.store.pending_events == 0)
            status, body = await monitor.json("/api/plugins.json")
            assert status == 200
            by_id = {p["plugin_id"]: p for p in body["plugins"]}
            assert set(by_id) == {f"in_fwd_{u}", f"monitor_{u}", ld_id}
            fwd = by_id[f"in_fwd_{u}"]
            assert fwd["plugin_category"] == "input" and fwd["type"] == "forward" and fwd["output_plugin"] is False
            assert fwd["config"] == {"@type": "forward", "@id": f"in_fwd_{u}", "bind": "127.0.0.1", "port": "0"}
            ld_entry = by_id[ld_id]
            assert ld_entry["plugin_category"] == "output" and ld_entry["output_plugin"] is True
            assert ld_entry["config"]["access_token"] == "xxxxxx"
            assert TOKEN not in str(body)
            for key in ("buffer_queue_length", "buffer_total_queued_size", "retry_count", "emit_records"):
                assert isinstance(ld_entry[key], int), key
            assert ld_entry["emit_records"] == 2 and ld_entry["delivered_records"] == 2
            assert ld_entry["buffer_queue_length"] == 0 and ld_entry["retry_count"] == 0

    run(scenario())


def test_debug_requests_show_launchdarklys_answers_newest_first(tmp_path):
    u = uuid.uuid4().hex[:8]
    ld_id = f"ld_{u}"

    async def scenario():
        server = LaunchDarklyServer(TOKEN)
        server.script(Fault(status=503, body="overloaded, try later"))
        async with ld_node(tmp_path, extra=f"@id {ld_id}", source=SOURCES.format(u=u), server=server) as (node, out, ld):
            monitor = Monitor(node, u)
            await node.emit("signal.web", [(T, order(1)), (T, order(2))])
            await until(lambda: len(ld.events) == 2)
            status, body = await monitor.json("/api/debug/requests?limit=200")
            assert status == 200
            mine = [r for r in body["requests"] if r["plugin_id"] == ld_id]
            assert [r["status"] for r in mine] == [202, 503]  # newest first
            ok, failed = mine
            assert ok["payload_id"] == failed["payload_id"] == ld.requests[0].payload_id
            assert ok["events"] == 2 and ok["bytes"] == len(ld.requests[1].body)
            assert failed["error"] == "overloaded, try later" and ok["error"] == ""
            assert ok["url"].endswith("/v2/event-data-import/default/production")
            assert ok["time"].endswith("Z") and ok["latency_ms"] >= 0
            assert TOKEN not in str(body)
            status, _ = await monitor.json("/api/debug/requests?limit=abc")
            assert status == 400

    run(scenario())
