"""The pool: forward requests decoded, validated, mapped and encoded in pool processes, the same
result as on the event loop, and nothing acked lost when a pool process dies. In process (the node
on this test's loop, its pool processes real), real sockets, the LaunchDarkly-compatible server."""

import asyncio
import gzip
import os
import re
import signal

import msgpack
from ld_harness import ld_node, order, until

from fluent_ld import metrics
from fluent_ld.forward.codec import encode_event_time
from fluent_ld.pipeline import pool as pool_module
from fluent_ld.pipeline.node import POOL_MIN_BYTES

T = 1_795_000_000_000_000_000


def run(coro):
    return asyncio.run(coro)


def source(pool_size: int) -> str:
    return f"<system>\n  pool_size {pool_size}\n</system>\n<source>\n  @type forward\n  port 0\n</source>"


def packed(tag: str, records: list[dict], chunk: str, gzipped: bool = False) -> bytes:
    """Fluent Bit's form: [[EventTime, {}], record] entries, PackedForward (gzip: compressed)."""
    entries = b"".join(msgpack.packb([[encode_event_time(T + i), {}], r], use_bin_type=True) for i, r in enumerate(records))
    option = {"chunk": chunk, "size": len(records)}
    if gzipped:
        entries, option["compressed"] = gzip.compress(entries), "gzip"
    return msgpack.packb([tag, entries, option], use_bin_type=True)


def forward(tag: str, records: list[dict], chunk: str) -> bytes:
    entries = [[[encode_event_time(T + i), {}], r] for i, r in enumerate(records)]
    return msgpack.packb([tag, entries, {"chunk": chunk}], use_bin_type=True)


def mixed(first: int, n: int) -> list[dict]:
    """Orders, with an invalid record (no identity) and an unmapped one every 50."""
    out = []
    for i in range(first, first + n):
        if i % 50 == 7:
            out.append({"type": "track", "event": "Order Completed", "properties": {"revenue": 1}})
        elif i % 50 == 9:
            out.append({"type": "identify", "anonymous_id": f"a-{i}"})
        else:
            out.append(order(i, note=os.urandom(24).hex()))  # gzip cannot make it small
    return out


class Client:
    def __init__(self, reader, writer) -> None:
        self.reader, self.writer = reader, writer
        self.unpacker = msgpack.Unpacker(raw=False)

    @classmethod
    async def connect(cls, port: int) -> "Client":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def ack(self, timeout: float = 30) -> str:
        while True:
            for reply in self.unpacker:
                return reply["ack"]
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise ConnectionError("closed")
            self.unpacker.feed(data)

    def close(self) -> None:
        self.writer.close()


def pooled() -> float:
    return metrics.POOL_REQUESTS.labels("pool")._value.get()


def test_the_pool_and_the_event_loop_store_the_same_events(tmp_path):
    """The same requests (each framing, big enough for the pool) through a node with the pool and
    one without: the same events reach LaunchDarkly and the same dead letters are kept."""
    requests = [
        forward("signal.web", mixed(0, 200), "f"),
        packed("signal.web", mixed(200, 200), "p"),
        packed("signal.web", mixed(400, 200), "g", gzipped=True),
    ]
    assert all(len(r) >= POOL_MIN_BYTES for r in requests)

    async def through(pool_size: int, path):
        async with ld_node(path, source=source(pool_size)) as (node, out, ld):
            if pool_size:
                await until(lambda: node.pool.ready and all(p.ready for p in node.pool.processes))
            before = pooled()
            client = await Client.connect(node.sources[0][1].port)
            for wire in requests:
                client.writer.write(wire)
            assert {await client.ack() for _ in requests} == {"f", "p", "g"}
            client.close()
            assert (pooled() - before) == (len(requests) if pool_size else 0)
            await until(lambda: out.store.pending_events == 0)
            letters = await out.store.dead_letters()
            events = sorted((e["contextKeys"]["user"], e["creationDate"], e.get("metricValue")) for e in ld.events)
            return events, sorted((d["kind"], d["reason"]) for d in letters), out.stats["records_unmapped"]

    async def scenario():
        inline = await through(0, tmp_path / "inline")
        pool = await through(2, tmp_path / "pool")
        assert pool == inline
        events, letters, unmapped = pool
        assert len(events) == 600 - 12 - 12 and len(letters) == 12 and unmapped == 12

    run(scenario())


def test_a_killed_pool_process_loses_nothing_acked_and_is_replaced(tmp_path, caplog):
    """Two clients keep requests in flight while one pool process is SIGKILLed: every request that
    was acked is delivered, those it held are not acked (a client would send them again), its death
    is logged and counted, and another process takes its place."""

    async def scenario():
        async with ld_node(tmp_path, source=source(2)) as (node, out, ld):
            pool = node.pool
            await until(lambda: all(p.ready for p in pool.processes))
            port = node.sources[0][1].port
            deaths = metrics.POOL_DEATHS._value.get()
            acked: set[str] = set()
            sent: dict[str, int] = {}

            async def client(name: str) -> None:
                c = await Client.connect(port)
                inflight = 0
                for i in range(60):
                    chunk = f"{name}-{i}"
                    sent[chunk] = i
                    c.writer.write(forward("signal.web", [order(1000 * i + j, client=name) for j in range(100)], chunk))
                    inflight += 1
                    while inflight >= 4:
                        try:
                            acked.add(await c.ack(timeout=2))
                        except TimeoutError:
                            pass  # an ack that never comes: the request died with its process
                        inflight -= 1
                while inflight:
                    try:
                        acked.add(await c.ack(timeout=2))
                    except TimeoutError:
                        pass
                    inflight -= 1
                c.close()

            async def killer() -> None:
                await until(lambda: len(acked) >= 20)
                victim = next(p for p in pool.processes if p.jobs) if any(p.jobs for p in pool.processes) else pool.processes[0]
                os.kill(victim.pid, signal.SIGKILL)

            await asyncio.gather(client("a"), client("b"), killer())
            assert metrics.POOL_DEATHS._value.get() == deaths + 1
            assert any("was killed by signal 9" in r.getMessage() for r in caplog.records)
            await until(lambda: sum(p.ready for p in pool.processes) == 2, timeout=15)
            await until(lambda: out.store.pending_events == 0)
            delivered = {e["data"]["client"] + "-" + str(e["metricValue"] // 1000) for e in ld.events}
            assert acked <= delivered  # every acked request's events reached LaunchDarkly
            # The requests the dead process held (none if it had just answered) are the ones not
            # acked, as its death's log line says.
            (line,) = [r.getMessage() for r in caplog.records if "was killed by signal 9" in r.getMessage()]
            held = int(re.search(r"the (\d+) request\(s\) it held", line).group(1))
            assert len(sent) - len(acked) == held <= pool_module.JOBS_PER_PROCESS

    run(scenario())


def test_a_broken_payload_in_a_pooled_request_closes_only_its_connection(tmp_path):
    """Framed fine but broken inside (gzip that is not gzip, large enough for the pool): the
    requests before it on the connection are acked, it is not, the connection closes, and another
    connection is served as before."""

    async def scenario():
        async with ld_node(tmp_path, source=source(2)) as (node, out, ld):
            await until(lambda: node.pool.ready)
            port = node.sources[0][1].port
            c = await Client.connect(port)
            bad = msgpack.packb(["signal.web", os.urandom(3 * POOL_MIN_BYTES), {"compressed": "gzip", "chunk": "bad"}], use_bin_type=True)
            c.writer.write(packed("signal.web", [order(n) for n in range(100)], "good") + bad)
            assert await c.ack() == "good"
            assert await c.reader.read() == b""  # closed, with no ack for the bad one
            other = await Client.connect(port)
            other.writer.write(packed("signal.web", [order(n) for n in range(100, 200)], "next"))
            assert await other.ack() == "next"
            other.close()
            assert node.sources[0][1].stats["protocol_errors"] == 1
            await until(lambda: len(ld.events) == 200)

    run(scenario())


def test_a_big_request_in_the_pool_does_not_hold_up_another_connection(tmp_path):
    """While a pool process works on a request of 40,000 records, a small request on another
    connection is acked first (its ack does not wait for the big one)."""

    async def scenario():
        async with ld_node(tmp_path, source=source(2), buffer="total_limit_size 1g") as (node, out, ld):
            await until(lambda: node.pool.ready)
            port = node.sources[0][1].port
            big, small = await Client.connect(port), await Client.connect(port)
            big.writer.write(packed("signal.web", [order(n) for n in range(40_000)], "big"))
            await big.writer.drain()
            await until(lambda: any(p.jobs for p in node.pool.processes))
            order_of_acks = []

            async def wait(client: Client) -> None:
                order_of_acks.append(await client.ack(timeout=60))

            small.writer.write(packed("signal.web", [order(n) for n in range(3)], "small"))
            await asyncio.gather(wait(big), wait(small))
            assert order_of_acks == ["small", "big"]
            big.close()
            small.close()

    run(scenario())
