"""A full disk under a running node: requests are held unacknowledged (the client is slowed, not
refused), /readyz says why, nothing crashes, the store stays intact, and everything resumes and is
delivered once there is room again. The disk is filled with SQLite's own size cap
(``PRAGMA max_page_count``), which fails commits exactly as a full filesystem does (SQLITE_FULL)."""

import asyncio
import logging
import sqlite3
import uuid

import aiohttp
from harness import RawClient, forward_request
from ld_harness import TOKEN, ld_node, order, until

from fluent_ld.dev.ldserver import Fault, LaunchDarklyServer

SOURCES = """
<source>
  @type forward
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
HELD_END = 1050  # records 50..1049: ~250 KB of events, several pages
TOTAL = 1060


def test_a_full_disk_holds_requests_unacked_and_recovers(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    u = uuid.uuid4().hex[:8]

    async def readyz(node):
        port = next(p for pc, p in node.sources if pc.id == f"monitor_{u}").port
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/readyz") as response:
            return response.status, await response.json()

    async def scenario():
        server = LaunchDarklyServer(TOKEN)
        server.script(*[Fault(status=503)] * 100_000)  # keep everything in the store meanwhile
        async with ld_node(tmp_path, source=SOURCES.format(u=u), extra=f"@id ld_{u}", server=server) as (node, out, ld):
            port = next(p for pc, p in node.sources if pc.type_name == "forward").port
            with RawClient(port, timeout=5) as first:
                first.send(forward_request("signal.web", [order(n) for n in range(50)], chunk="before"))
                assert await asyncio.to_thread(first.reply) == {"ack": "before"}

            # The disk is full: the database may not grow by a single page. The held request is
            # larger than a page (64 KiB), so it cannot fit in room left in the pages there are.
            pages = await out.store._call(lambda c, s: c.execute("PRAGMA page_count").fetchone()[0])
            await out.store._call(lambda c, s: c.execute(f"PRAGMA max_page_count = {pages}"))
            held = RawClient(port, timeout=1.5)
            held.send(forward_request("signal.web", [order(n) for n in range(50, HELD_END)], chunk="held"))
            try:
                await asyncio.to_thread(held.reply)
                raise AssertionError("acknowledged while nothing could be stored")
            except TimeoutError:
                pass
            status, body = await readyz(node)
            assert status == 503 and "store is not writable" in body["problems"][0]
            with RawClient(port, timeout=1) as other:  # the node keeps accepting connections
                other.send(forward_request("signal.web", [order(n) for n in range(HELD_END, TOTAL)], chunk="other"))

                # Room again: the held requests are stored and acknowledged without being resent.
                await out.store._call(lambda c, s: c.execute("PRAGMA max_page_count = 1073741823"))
                held.sock.settimeout(10)
                other.sock.settimeout(10)
                assert await asyncio.to_thread(held.reply) == {"ack": "held"}
                assert await asyncio.to_thread(other.reply) == {"ack": "other"}
            held.close()
            await until(lambda: out.store.pending_events == TOTAL)
            status, _ = await readyz(node)
            assert status == 200
            ld.faults.clear()
            await until(lambda: len(ld.events) == TOTAL, timeout=20)
            assert sorted(int(e["data"]["order_id"][2:]) for e in ld.events) == list(range(TOTAL))

    asyncio.run(scenario())
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "cannot commit" in errors[0] and "full" in errors[0]  # once, with the cause
    assert any("commits again" in r.getMessage() for r in caplog.records)
    with sqlite3.connect(tmp_path / f"ld_{u}-worker0.sqlite3") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
