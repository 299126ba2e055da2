"""The LaunchDarkly output against the LaunchDarkly-compatible server: exact requests, every
fault, dead letters, backpressure. In process, real HTTP over loopback."""

import asyncio
import json

from ld_harness import TOKEN, ld_node, order, until

from fluent_ld.dev.ldserver import Fault, LaunchDarklyServer
from fluent_ld.plugin import BufferFullError

T = 1_795_000_000_000_000_000


def run(coro):
    return asyncio.run(coro)


def test_the_exact_request(tmp_path):
    async def scenario():
        async with ld_node(tmp_path) as (node, out, ld):
            await node.emit("signal.web", [(T, order(1)), (T, order(2))])
            await until(lambda: len(ld.events) == 2)
            (request,) = ld.requests
            assert request.path == "/v2/event-data-import/default/production"
            headers = {k.lower(): v for k, v in request.headers.items()}
            assert headers["authorization"] == TOKEN
            assert headers["content-type"] == "application/json"
            assert headers["x-launchdarkly-event-schema"] == "4"
            assert headers["user-agent"] == "MetricImport-Datafly-int/1.0"
            assert len(headers["x-launchdarkly-payload-id"]) == 36
            assert json.loads(request.body) == [
                {
                    "kind": "custom",
                    "key": "order_completed",
                    "creationDate": 1795521600000,
                    "metricValue": n,
                    "contextKeys": {"user": f"anon-{n}"},
                    "data": {"order_id": f"O-{n}"},
                }
                for n in (1, 2)
            ]
            await until(lambda: out.store.pending_events == 0)

    run(scenario())


def test_gzip(tmp_path):
    async def scenario():
        async with ld_node(tmp_path, extra="compress gzip") as (node, out, ld):
            await node.emit("signal.web", [(T, order(1))])
            await until(lambda: ld.events)
            request = ld.requests[0]
            assert request.headers["Content-Encoding"] == "gzip"
            assert int(request.headers["Content-Length"]) < len(request.body)  # compressed on the wire
            assert json.loads(request.body)[0]["key"] == "order_completed"

    run(scenario())


def test_503_twice_then_202_sends_the_same_bytes_and_payload_id(tmp_path):
    async def scenario():
        async with ld_node(tmp_path) as (node, out, ld):
            ld.script(503, Fault(status=502), 202)
            await node.emit("signal.web", [(T, order(n)) for n in range(5)])
            await until(lambda: len(ld.requests) == 3 and ld.requests[-1].status == 202)
            assert [r.status for r in ld.requests] == [503, 502, 202]
            assert len({r.payload_id for r in ld.requests}) == 1
            assert len({r.body for r in ld.requests}) == 1
            await until(lambda: out.store.pending_events == 0)

    run(scenario())


def test_a_timeout_or_a_dropped_connection_is_retried(tmp_path):
    async def scenario():
        async with ld_node(tmp_path, extra="request_timeout 200ms") as (node, out, ld):
            ld.script(Fault(delay=1.0), Fault(drop=True))
            await node.emit("signal.web", [(T, order(1))])
            await until(lambda: ld.events, timeout=15)
            assert len({r.payload_id for r in ld.requests}) == 1
            assert out.stats["retries"] >= 2

    run(scenario())


def test_429_retry_after_pauses_the_whole_output(tmp_path):
    async def scenario():
        async with ld_node(tmp_path) as (node, out, ld):
            ld.script(Fault(status=429, headers={"Retry-After": "1"}))
            await node.emit("signal.web", [(T, order(1))])
            await until(lambda: ld.requests)
            await node.emit("signal.web", [(T, order(2))])  # a new batch waits too
            await until(lambda: len(ld.events) == 2, timeout=15)
            first, *later = ld.requests
            assert first.status == 429
            assert all(r.time - first.time >= 0.95 for r in later)  # nothing before Retry-After
            assert out.stats["retry_after_pauses"] == 1

    run(scenario())


def test_401_pauses_keeps_everything_probes_and_resumes_when_fixed(tmp_path, caplog):
    async def scenario():
        server = LaunchDarklyServer("the-right-token")  # the node sends a token this server refuses
        async with ld_node(tmp_path, server=server) as (node, out, ld):
            await node.emit("signal.web", [(T, order(1))])
            await asyncio.sleep(0.05)
            await node.emit("signal.web", [(T, order(2))])
            await until(lambda: len(ld.requests) >= 3, timeout=15)  # probes, one batch at a time
            assert {r.status for r in ld.requests} == {401}
            assert out.auth_error == 401 and out.store.pending_events == 2
            ld.token = TOKEN  # the operator fixes the token
            await until(lambda: len(ld.events) == 2, timeout=15)
            await until(lambda: out.auth_error is None and out.store.pending_events == 0)

    run(scenario())
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "importEventData" in errors[0]


def test_404_names_the_hosts(tmp_path, caplog):
    async def scenario():
        server = LaunchDarklyServer(TOKEN, projects={"other": ["production"]})
        async with ld_node(tmp_path, server=server) as (node, out, ld):
            await node.emit("signal.web", [(T, order(1))])
            await until(lambda: ld.requests)
            await until(lambda: out.auth_error == 404)
            assert out.store.pending_events == 1

    run(scenario())
    assert any("events.eu.launchdarkly.com" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")


def test_a_poison_event_in_a_batch_of_1000_is_isolated(tmp_path):
    async def scenario():
        server = LaunchDarklyServer(TOKEN, refuse=lambda e: "poison" if e["data"].get("poison") else None)
        async with ld_node(tmp_path, server=server) as (node, out, ld):
            records = [(T, order(n, poison=(n == 637))) for n in range(1000)]
            await node.emit("signal.web", records)
            await until(lambda: len(ld.events) == 999 and out.store.pending_events == 0, timeout=30)
            letters = await out.store.dead_letters()
            assert len(letters) == 1
            assert letters[0]["kind"] == "rejected" and letters[0]["status"] == 400
            assert json.loads(letters[0]["event"])["data"]["order_id"] == "O-637"
            assert "poison" in letters[0]["reason"]
            assert sorted(e["data"]["order_id"] for e in ld.events) == sorted(f"O-{n}" for n in range(1000) if n != 637)
            payload_ids = [r.payload_id for r in ld.requests]
            assert len(set(payload_ids)) == len(payload_ids)  # every split half is a new payload

    run(scenario())


def test_413_splits_the_batch(tmp_path):
    async def scenario():
        async with ld_node(tmp_path) as (node, out, ld):
            ld.script(413)
            await node.emit("signal.web", [(T, order(n)) for n in range(10)])
            await until(lambda: len(ld.events) == 10)
            assert ld.requests[0].status == 413
            assert out.stats["batches_split"] == 1

    run(scenario())


def test_batches_respect_the_size_and_record_limits(tmp_path):
    async def scenario():
        async with ld_node(tmp_path, buffer="chunk_limit_size 2k\n    chunk_limit_records 7") as (node, out, ld):
            await node.emit("signal.web", [(T, order(n)) for n in range(100)])
            await until(lambda: len(ld.events) == 100)
            assert all(len(r.body) <= 2048 and len(r.events) <= 7 for r in ld.requests)
            assert [e["data"]["order_id"] for e in ld.events] == [f"O-{n}" for n in range(100)]

    run(scenario())


def test_expired_batches_go_to_the_dead_letter_store(tmp_path):
    async def scenario():
        async with ld_node(tmp_path, buffer="retry_timeout 1s") as (node, out, ld):
            ld.script(*([503] * 1000))
            await node.emit("signal.web", [(T, order(n)) for n in range(3)])
            await until(lambda: out.store.dead_letter_count == 3, timeout=15)
            letters = await out.store.dead_letters()
            assert {x["kind"] for x in letters} == {"expired"}
            assert out.store.pending_events == 0

    run(scenario())


def test_invalid_and_oversized_records_are_dead_lettered_at_admit(tmp_path):
    async def scenario():
        async with ld_node(tmp_path, buffer="chunk_limit_size 1k") as (node, out, ld):
            await node.emit(
                "signal.web",
                [
                    (T, order(1)),
                    (T, {"type": "track", "event": "Order Completed", "properties": {"revenue": 1}}),
                    (T, order(2, note="x" * 2000)),
                    (T, {"type": "track", "event": "Not Mapped", "user_id": "u"}),
                ],
            )
            letters = await out.store.dead_letters()
            assert [(x["kind"], x["reason"][:11]) for x in letters] == [("invalid", "no identity"), ("too_large", "the encoded")]
            assert json.loads(letters[0]["record"])["properties"] == {"revenue": 1}
            assert out.stats["records_unmapped"] == 1
            await until(lambda: len(ld.events) == 1)

    run(scenario())


def test_backpressure_over_the_high_watermark(tmp_path):
    async def scenario():
        buffer = "total_limit_size 4k\n    high_watermark 2k\n    low_watermark 1k"
        async with ld_node(tmp_path, buffer=buffer) as (node, out, ld):
            ld.script(*([503] * 3))
            for n in range(30):  # ~150 bytes each: over 2k after a dozen
                try:
                    await node.emit("signal.web", [(T, order(n))])
                except BufferFullError as full:
                    assert n > 5
                    await asyncio.wait_for(full.wait_for_room(), 15)  # room comes once delivered
                    await node.emit("signal.web", [(T, order(n))])
            await until(lambda: len(ld.events) == 30, timeout=15)
            assert out.stats["backpressure_refusals"] >= 1

    run(scenario())


def test_undelivered_events_survive_a_restart(tmp_path):
    async def scenario():
        server = LaunchDarklyServer(TOKEN)
        await server.start()
        server.script(*([503] * 10_000))
        async with ld_node(tmp_path, server=server) as (node, out, ld):
            await node.emit("signal.web", [(T, order(n)) for n in range(20)])
            await until(lambda: len(ld.requests) >= 1)
        first_ids = {r.payload_id for r in server.requests}
        server = LaunchDarklyServer(TOKEN)
        async with ld_node(tmp_path, server=server) as (node, out, ld):
            assert out.store.pending_events == 20
            await until(lambda: len(ld.events) == 20)
            assert {r.payload_id for r in ld.requests} <= first_ids  # frozen batches keep their ids

    run(scenario())
