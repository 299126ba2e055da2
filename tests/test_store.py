"""The SQLite store on its own: group commit, exact cuts, splits, restarts, dead letters."""

import asyncio
import json
import time

from fluent_ld.encode import unpack_lengths
from fluent_ld.store import MAX_BATCHES_PER_CUT, DeadLetter, Store


def fragments(first: int, n: int) -> list[bytes]:
    return [json.dumps({"n": i, "pad": "x" * (i % 7)}).encode() for i in range(first, first + n)]


async def append(store: Store, frags: list[bytes]) -> None:
    await store.append(b",".join(frags), [len(f) for f in frags], sum(len(f) for f in frags), 1)


def test_concurrent_appends_share_one_commit(tmp_path):
    async def scenario():
        store = Store(str(tmp_path / "s.sqlite3"))
        await store.open()
        before = store.fsyncs
        await asyncio.gather(*(append(store, fragments(i * 10, 10)) for i in range(20)))
        assert store.fsyncs - before < 20  # grouped
        assert store.pending_events == 200
        await store.close()

    asyncio.run(scenario())


def test_a_large_backlog_is_cut_exactly_over_several_calls_and_survives_a_restart(tmp_path):
    async def scenario():
        path = str(tmp_path / "s.sqlite3")
        store = Store(path)
        await store.open()
        frags = fragments(0, 3000)
        for i in range(0, 3000, 250):
            await append(store, frags[i : i + 250])
        cuts = []
        while (n := await store.cut_batches(1000, 40, 0, time.time(), 0)) > 0:
            cuts.append(n)
        assert len(cuts) > 1 and max(cuts) <= MAX_BATCHES_PER_CUT + 1
        await store.close()

        store = Store(path)  # a restart: batches come back as they were
        await store.open()
        batches = await store.due_batches(time.time(), 10_000)
        assert all(len(b.body) <= 1000 and b.count <= 40 for b in batches)
        assert [len(x) for b in batches for x in [unpack_lengths(b.lengths)]] == [b.count for b in batches]
        assert b",".join(b.data for b in batches) == b",".join(frags)  # every event once, in order
        assert store.pending_events == 3000
        halves = await store.split(batches[0], 0)
        assert b",".join(h.data for h in halves) == batches[0].data
        assert len({batches[0].payload_id, *(h.payload_id for h in halves)}) == 3
        await store.bury(halves[0], "rejected", "refused", 400)
        assert store.dead_letter_count == halves[0].count
        await store.close()

    asyncio.run(scenario())


def test_memory_store_and_dead_letters(tmp_path):
    async def scenario():
        store = Store(None)
        await store.open()
        await store.append(b"", [], 0, 0, [DeadLetter("invalid", "no identity", tag="t", record=b"{}")])
        assert store.dead_letter_count == 1
        (letter,) = await store.dead_letters()
        assert (letter["kind"], letter["reason"], letter["record"]) == ("invalid", "no identity", b"{}")
        assert await store.purge_dead_letters(None) == 1
        await store.close()

    asyncio.run(scenario())


def test_msgpack_fragments_without_separator_and_one_tag_per_batch(tmp_path):
    async def scenario():
        store = Store(str(tmp_path / "f.sqlite3"), separator=b"", framing=0)
        await store.open()
        frags = [bytes([0x90 + (i % 10)]) * (5 + i % 3) for i in range(30)]
        for i, tag in ((0, "a"), (10, "a"), (20, "b")):
            part = frags[i : i + 10]
            await store.append(b"".join(part), [len(f) for f in part], sum(len(f) for f in part), 1, tag=tag)
        while await store.cut_batches(40, 1000, 0, time.time(), 0):
            pass
        batches = await store.due_batches(time.time(), 100)
        assert all(b.bytes <= 40 and len(b.data) == b.bytes for b in batches)
        assert {b.tag for b in batches} == {"a", "b"}
        assert b"".join(b.data for b in batches if b.tag == "a") == b"".join(frags[:20])
        assert b"".join(b.data for b in batches if b.tag == "b") == b"".join(frags[20:])
        halves = await store.split(batches[0], 0)
        assert b"".join(h.data for h in halves) == batches[0].data and {h.tag for h in halves} == {batches[0].tag}
        await store.close()

    asyncio.run(scenario())
