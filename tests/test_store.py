"""The SQLite store on its own: group commit, exact cuts, splits, restarts, dead letters."""

import asyncio
import json
import os
import sqlite3
import time

from fluent_ld.encode import unpack_lengths
from fluent_ld.store import MAX_BATCHES_PER_CUT, PAGE_SIZE, DeadLetter, Store


def fragments(first: int, n: int) -> list[bytes]:
    return [json.dumps({"n": i, "pad": "x" * (i % 7)}).encode() for i in range(first, first + n)]


async def append(store: Store, frags: list[bytes]) -> None:
    await store.append(b",".join(frags), [len(f) for f in frags], sum(len(f) for f in frags), 1)


def count_rows(path: str, query: str) -> tuple:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(query).fetchone()
    finally:
        conn.close()


def test_concurrent_appends_share_one_commit_and_one_row_and_are_delivered_once(tmp_path):
    async def scenario():
        path = str(tmp_path / "s.sqlite3")
        store = Store(path)
        await store.open()
        before = store.fsyncs
        await asyncio.gather(*(append(store, fragments(i * 10, 10)) for i in range(20)))
        assert store.fsyncs - before < 20  # grouped
        # A dead letter between appends is its own operation; the appends around it still commit.
        await asyncio.gather(append(store, fragments(200, 5)), store.add_dead_letters([DeadLetter("invalid", "why")]))
        assert store.pending_events == 205 and store.dead_letter_count == 1
        rows, events = count_rows(path, "SELECT COUNT(*), SUM(count) FROM pending")
        assert events == 205 and rows < 21  # coalesced
        await store.cut_batches(10**6, 10**6, 0, time.time(), 0)
        (batch,) = await store.due_batches(float("inf"), 10)
        assert sorted(e["n"] for e in json.loads(batch.body)) == list(range(205))
        await store.delivered(batch)
        assert store.pending_events == 0 and store.pending_bytes == 0
        assert count_rows(path, "SELECT COUNT(*) FROM pending") == (0,)
        await store.close()

    asyncio.run(scenario())


def test_a_new_store_uses_large_pages_and_an_old_one_keeps_its_own(tmp_path):
    """Stores created before the page size changed (4 KiB) open, keep their events and their pages."""

    async def scenario():
        new, old = str(tmp_path / "new.sqlite3"), str(tmp_path / "old.sqlite3")
        conn = sqlite3.connect(old)
        conn.execute("PRAGMA page_size=4096")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
        for path in (new, old):
            store = Store(path)
            await store.open()
            await append(store, fragments(0, 3))
            await store.close()
            store = Store(path)
            await store.open()
            assert store.pending_events == 3
            await store.close()
        assert count_rows(new, "PRAGMA page_size") == (PAGE_SIZE,)
        assert count_rows(old, "PRAGMA page_size") == (4096,)

    asyncio.run(scenario())


def test_the_wal_is_copied_into_the_database_beside_the_writer(tmp_path):
    """The writer does not checkpoint at the end of its commits; the checkpointer thread does."""

    async def scenario():
        path = str(tmp_path / "s.sqlite3")
        store = Store(path)
        await store.open()
        before = os.path.getsize(path)
        frag = b'"' + b"x" * 4000 + b'"'
        for _ in range(4):  # ~8 MB: past SQLite's own 1,000-page threshold, which is off here
            await store.append(b",".join([frag] * 500), [len(frag)] * 500, len(frag) * 500, 1)
        deadline = time.monotonic() + 10
        while os.path.getsize(path) - before < 7_000_000:
            assert time.monotonic() < deadline, "nothing was checkpointed into the database file"
            await asyncio.sleep(0.05)
        pokes = 0
        while store._checkpointer.backlog:
            assert time.monotonic() < deadline
            await append(store, fragments(0, 1))  # each commit pokes the checkpointer
            pokes += 1
            await asyncio.sleep(0.1)
        await store.close()
        assert count_rows(path, "SELECT SUM(count) FROM pending") == (2000 + pokes,)  # all there after close

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


def rows(path: str, table: str) -> int:
    import sqlite3

    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_batches_refer_to_rows_that_go_once_every_batch_is_done(tmp_path):
    """Cutting writes no event twice; a row split across batches stays until both are done, its
    bytes unchanged across a restart and a split; an empty store has no rows left."""

    async def scenario():
        path = str(tmp_path / "s.sqlite3")
        store = Store(path)
        await store.open()
        frags = fragments(0, 100)
        for i in range(0, 100, 25):
            await append(store, frags[i : i + 25])  # rows of 25 events
        while await store.cut_batches(400, 30, 0, time.time(), 0):  # batches end inside rows
            pass
        batches = await store.due_batches(time.time(), 1000)
        assert b",".join(b.data for b in batches) == b",".join(frags)
        from fluent_ld.store.batches import unpack_segments

        assert any(start > 0 for b in batches for _, start, _ in unpack_segments(b.segments))  # rows shared
        assert store.pending_events == 100 and rows(path, "pending") == 4
        before = {b.payload_id: b.body for b in batches}
        await store.close()

        store = Store(path)
        await store.open()
        again = await store.due_batches(time.time(), 1000)
        assert {b.payload_id: b.body for b in again} == before  # the same bytes, the same ids
        assert store.pending_events == 100
        halves = await store.split(again[1], 0)
        assert b",".join(h.data for h in halves) == again[1].data
        reread = {b.payload_id: b.data for b in await store.due_batches(time.time(), 1000)}
        assert [reread[h.payload_id] for h in halves] == [h.data for h in halves]
        for batch in await store.due_batches(time.time(), 1000):
            await store.delivered(batch)
        assert store.pending_events == 0 and store.pending_bytes == 0
        assert rows(path, "pending") == 0 and rows(path, "pending_data") == 0 and rows(path, "batches") == 0
        await store.close()

    asyncio.run(scenario())


V1_SCHEMA = """
CREATE TABLE pending (id INTEGER PRIMARY KEY, tag TEXT, data BLOB NOT NULL, lengths BLOB NOT NULL,
    count INTEGER NOT NULL, bytes INTEGER NOT NULL, oldest_ms INTEGER NOT NULL, admitted_at REAL NOT NULL);
CREATE TABLE batches (id INTEGER PRIMARY KEY, payload_id TEXT NOT NULL UNIQUE, tag TEXT, data BLOB NOT NULL,
    lengths BLOB NOT NULL, count INTEGER NOT NULL, bytes INTEGER NOT NULL, oldest_ms INTEGER NOT NULL,
    created_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,
    last_status INTEGER, last_error TEXT);
CREATE TABLE dead_letters (id INTEGER PRIMARY KEY, created_at REAL NOT NULL, kind TEXT NOT NULL,
    reason TEXT NOT NULL, status INTEGER, tag TEXT, time_ns INTEGER, record BLOB, event BLOB, payload_id TEXT);
CREATE INDEX batches_due ON batches (next_attempt_at);
"""


def test_a_store_from_the_previous_layout_keeps_its_events_and_payload_ids(tmp_path):
    import sqlite3

    from fluent_ld.encode import pack_lengths

    path = str(tmp_path / "old.sqlite3")
    frozen, waiting = fragments(0, 3), fragments(3, 2)
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_SCHEMA)
        conn.execute(
            "INSERT INTO batches (payload_id, data, lengths, count, bytes, oldest_ms, created_at, attempts, next_attempt_at, last_status) "
            "VALUES ('the-old-id', ?, ?, 3, ?, 1, 1.0, 2, 0, 503)",
            (b",".join(frozen), pack_lengths([len(f) for f in frozen]), sum(map(len, frozen))),
        )
        conn.execute(
            "INSERT INTO pending (data, lengths, count, bytes, oldest_ms, admitted_at) VALUES (?, ?, 2, ?, 1, 1.0)",
            (b",".join(waiting), pack_lengths([len(f) for f in waiting]), sum(map(len, waiting))),
        )

    async def scenario():
        store = Store(path)
        await store.open()
        assert store.pending_events == 5
        (old,) = await store.due_batches(time.time(), 10)
        assert (old.payload_id, old.data, old.attempts) == ("the-old-id", b",".join(frozen), 2)
        await store.cut_batches(10_000, 100, 0, time.time(), 0)
        batches = await store.due_batches(time.time(), 10)
        assert [b.data for b in batches] == [b",".join(frozen), b",".join(waiting)]
        for batch in batches:
            await store.delivered(batch)
        assert store.pending_events == 0 and rows(path, "pending") == 0
        await store.close()

    asyncio.run(scenario())


def test_a_stale_batch_dropped_twice_changes_nothing(tmp_path):
    """Delivering (or burying, splitting) a Batch that is no longer stored must not release its
    rows' references again: that deleted rows a sibling batch still used."""

    async def scenario():
        path = str(tmp_path / "s.sqlite3")
        store = Store(path)
        await store.open()
        await append(store, fragments(0, 10))  # one row
        await store.cut_batches(10_000, 5, 0, time.time(), 0)  # two batches sharing that row
        first, second = await store.due_batches(time.time(), 10)
        await store.delivered(first)
        await store.delivered(first)  # stale
        await store.bury(first, "rejected", "stale", 400)
        assert await store.split(first, 0) == []
        assert store.pending_events == 5 and store.dead_letter_count == 0
        (again,) = await store.due_batches(time.time(), 10)
        assert again.data == second.data
        await store.delivered(again)
        assert store.pending_events == 0 and rows(path, "pending_data") == 0
        await store.close()

    asyncio.run(scenario())


def test_the_newest_dead_letters_newest_first(tmp_path):
    async def scenario():
        store = Store(str(tmp_path / "s.sqlite3"))
        await store.open()
        await store.add_dead_letters([DeadLetter("invalid", f"letter {n}") for n in range(5)])
        assert [x["reason"] for x in await store.dead_letters(2)] == ["letter 0", "letter 1"]
        assert [x["reason"] for x in await store.dead_letters(2, newest=True)] == ["letter 4", "letter 3"]
        await store.close()

    asyncio.run(scenario())
