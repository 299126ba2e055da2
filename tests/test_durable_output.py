"""The durable-output skeleton both outputs share (fluent_ld.outputs.durable): every dead letter
logged and counted with its kind, the watermark check, the drain's wake-ups, a receiver that never
completes its reply, the User-Agent. Real sockets on port 0, configs as text."""

import asyncio
import logging
import struct

import pytest
from ld_harness import ld_node, order, until
from prometheus_client import REGISTRY

from fluent_ld.config.errors import ConfigErrors
from fluent_ld.config.loader import load_text
from fluent_ld.outputs.forward import REPLY_LIMIT
from fluent_ld.pipeline.node import Node

T = 1_795_000_000_000_000_000


def dead_lettered(plugin_id: str, kind: str) -> float:
    return REGISTRY.get_sample_value("fluentld_records_dead_lettered_total", {"plugin_id": plugin_id, "reason": kind}) or 0.0


@pytest.mark.parametrize("status,kind", [(422, "rejected"), (409, "rejected"), (406, "schema")])
def test_a_refused_batch_is_logged_and_counted_with_its_kind(tmp_path, caplog, status, kind):
    async def scenario():
        async with ld_node(tmp_path) as (node, out, ld):
            before = dead_lettered(out.id, kind)
            ld.script(status)
            await node.emit("signal.web", [(T, order(n)) for n in range(4)])
            await until(lambda: out.store.dead_letter_count == 4)
            assert out.stats["records_dead_lettered"] == 4
            assert dead_lettered(out.id, kind) - before == 4
            lines = [r for r in caplog.records if "dead-letter store" in r.getMessage()]
            assert len(lines) == 1 and lines[0].levelno == logging.ERROR
            assert f"4 events went to the dead-letter store as {kind}" in lines[0].getMessage()
            assert f"answered {status}" in lines[0].getMessage()

    asyncio.run(scenario())


def test_expired_batches_are_logged_and_counted(tmp_path, caplog):
    async def scenario():
        async with ld_node(tmp_path, buffer="retry_timeout 1s\n    retry_wait 100ms") as (node, out, ld):
            before = dead_lettered(out.id, "expired")
            ld.script(*([503] * 1000))
            await node.emit("signal.web", [(T, order(n)) for n in range(3)])
            await until(lambda: out.store.dead_letter_count == 3, timeout=15)
            assert out.stats["records_dead_lettered"] == 3 and out.stats["batches_expired"] == 1
            assert dead_lettered(out.id, "expired") - before == 3
            assert any("as expired" in r.getMessage() for r in caplog.records)

    asyncio.run(scenario())


def test_dead_letter_lines_are_rate_limited_but_every_letter_is_counted(tmp_path, caplog):
    async def scenario():
        async with ld_node(tmp_path, buffer="flush_interval 0s\n    chunk_limit_records 1") as (node, out, ld):
            ld.script(*([422] * 20))
            for n in range(20):
                await node.emit("signal.web", [(T, order(n))])
            await until(lambda: out.store.dead_letter_count == 20)
            assert out.stats["records_dead_lettered"] == 20
            lines = [r for r in caplog.records if "dead-letter store" in r.getMessage()]
            assert 1 <= len(lines) < 5  # one per kind per DEAD_LETTER_LOG_INTERVAL

    asyncio.run(scenario())


def forward_config(port: int, buffer: str = "", extra: str = "") -> str:
    return (
        "<match **>\n  @type forward\n  require_ack_response true\n  ack_response_timeout 5s\n  connect_timeout 1s\n"
        f"  heartbeat_interval 100ms\n  {extra}\n  <server>\n    host 127.0.0.1\n    port {port}\n  </server>\n"
        f"  <buffer>\n    @type memory\n    flush_interval 0s\n    retry_wait 100ms\n    retry_max_interval 200ms\n    {buffer}\n  </buffer>\n</match>\n"
    )


def test_the_forward_output_refuses_watermarks_in_the_wrong_order():
    text = forward_config(24224, buffer="high_watermark 1k\n    low_watermark 2k")
    with pytest.raises(ConfigErrors) as caught:
        load_text(text, "out.conf")
    (error,) = caught.value.errors
    buffer_line = text.splitlines().index("  <buffer>") + 1
    assert error.where.file == "out.conf" and error.where.line == buffer_line
    assert "low_watermark (2048) must be below high_watermark (1024)" in str(error)


def test_a_receiver_that_never_completes_its_reply_is_dropped_not_buffered(tmp_path, caplog):
    """A server that answers a request with an endless bin32 (a 1 GiB length, then bytes): the
    output stops reading at REPLY_LIMIT, fails that attempt and tries again."""

    async def scenario():
        sent = []

        async def handle(reader, writer):
            await reader.read(65536)
            header = b"\xc6" + struct.pack(">I", 1 << 30)
            try:
                writer.write(header)
                for _ in range(REPLY_LIMIT // 16384 + 4):
                    writer.write(b"x" * 16384)
                    sent.append(16384)
                    await writer.drain()
                await asyncio.sleep(30)
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        node = Node(load_text(forward_config(port), "out.conf"))
        await node.start()
        try:
            out = node.outputs[0][1]
            await node.emit("app.log", [(T, {"message": "hello"})])
            await until(lambda: out.stats["retries"] >= 1, timeout=15)
            assert out.store.pending_events == 1  # kept, to be sent again
            assert any(f"more than {REPLY_LIMIT} bytes" in r.getMessage() for r in caplog.records)
        finally:
            await node.stop()
            server.close()

    asyncio.run(scenario())


def test_a_wake_up_during_a_drain_cycle_is_not_lost(tmp_path):
    """A commit that lands while the drain is busy in its store calls starts the next cycle at
    once; the drain must not clear it afterwards and sleep its full wait (up to a second)."""

    async def scenario():
        async with ld_node(tmp_path, buffer="flush_interval 10s\n    chunk_limit_records 1") as (node, out, ld):
            cut = out.store.cut_batches
            calls = []
            woken = asyncio.Event()

            async def slow_cut(*args):
                calls.append(asyncio.get_running_loop().time())
                if len(calls) == 1:
                    out.wake.set()  # as a commit would, in the middle of the cycle
                    woken.set()
                return await cut(*args)

            await until(lambda: out._drainer is not None)
            out.store.cut_batches = slow_cut
            out.wake.set()  # start a cycle now
            await woken.wait()
            await until(lambda: len(calls) >= 2, timeout=5)
            # The drain waits at most min(flush_interval / 2, 1 s) = 1 s without a wake-up.
            assert calls[1] - calls[0] < 0.5

    asyncio.run(scenario())


def test_the_user_agent_is_a_parameter_with_the_documented_default(tmp_path):
    async def scenario():
        async with ld_node(tmp_path, extra="user_agent acme-pipeline/2.1") as (node, out, ld):
            await node.emit("signal.web", [(T, order(1))])
            await until(lambda: ld.requests)
            assert ld.requests[0].headers["User-Agent"] == "acme-pipeline/2.1"
        async with ld_node(tmp_path / "default") as (node, out, ld):
            await node.emit("signal.web", [(T, order(1))])
            await until(lambda: ld.requests)
            assert ld.requests[0].headers["User-Agent"] == "MetricImport-Datafly-int/1.0"

    asyncio.run(scenario())


def test_an_output_that_changes_type_refuses_the_store_the_old_type_wrote(tmp_path):
    """A config that keeps an @id but changes @type (a reload, a restart) must not hand the old
    output's stored events (JSON fragments) to an output that writes msgpack."""
    from fluent_ld.plugin import StartError

    async def scenario():
        async with ld_node(tmp_path, extra="@id keep", buffer="flush_interval 1h") as (node, out, ld):
            await node.emit("signal.web", [(T, order(1))])
            assert out.store.pending_events == 1
        text = (
            "<match **>\n  @type forward\n  @id keep\n  <server>\n    host 127.0.0.1\n    port 9\n  </server>\n"
            f"  <buffer>\n    path {tmp_path}\n  </buffer>\n</match>\n"
        )
        node = Node(load_text(text, "new.conf"))
        with pytest.raises(StartError) as caught:
            await node.start()
        assert "holds launchdarkly events" in str(caught.value) and "forward" in str(caught.value)
        async with ld_node(tmp_path, extra="@id keep") as (node, out, ld):  # the old type still opens it
            await until(lambda: len(ld.events) == 1)

    asyncio.run(scenario())


def test_an_output_whose_close_fails_still_releases_its_store(tmp_path):
    """stop() closes the store (its writer thread and its lock) even when the output's own close()
    raises: the node can start again on the same store."""

    async def scenario():
        async with ld_node(tmp_path, extra="@id keep") as (node, out, ld):

            async def broken_close():
                raise RuntimeError("a session that would not close")

            out.close = broken_close
            store = out.store
        assert not store.is_open  # the node logged the failure and went on
        async with ld_node(tmp_path, extra="@id keep") as (node, out, ld):  # the lock was released
            await node.emit("signal.web", [(T, order(1))])
            await until(lambda: len(ld.events) == 1)

    asyncio.run(scenario())
