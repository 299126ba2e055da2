"""What ``fluent-ld dlq replay`` does with each dead letter, decided without a store: through the
mapper for an output that maps (LaunchDarkly), the stored entry as it was, under its tag, for one
that does not (forward)."""

import asyncio
import json
import time
import types

from fluent_ld.replay import plan, replay
from fluent_ld.store import DeadLetter, Store


class Mapper:
    last_created = 0

    def map_encoded(self, record, time_ns):
        if record.get("ok"):
            self.last_created = time_ns // 1_000_000
            return json.dumps({"mapped": record["n"]}).encode()
        return types.SimpleNamespace(reason="still no identity")

    @staticmethod
    def creation_ms(event):
        return json.loads(event).get("creationDate")


def letter(id, record=None, event=None, tag="app.x", time_ns=None):
    return {"id": id, "tag": tag, "record": record, "event": event, "time_ns": time_ns}


LETTERS = [
    letter(1, record=b'{"ok": true, "n": 1}', time_ns=5_000_000),  # a fixed mapping rescues it
    letter(2, record=b'{"ok": false}'),  # refused again: kept, with the new reason
    letter(3, event=b'{"sent": 3, "creationDate": 4}', tag="app.y"),  # expired or refused by the receiver
    letter(4, record=b"not json"),  # a source's raw body
    letter(5),  # nothing to put back
    letter(6, record=b'{"ok": true, "n": 6}', event=b'{"too": "large"}', time_ns=9_000_000),
]


def test_an_output_that_maps_replays_records_through_its_mapper():
    p = plan(LETTERS, Mapper(), keep_tags=False, now_ns=lambda: 7_000_000_000)
    assert p.events == [(None, b'{"mapped": 1}'), (None, b'{"sent": 3, "creationDate": 4}'), (None, b'{"mapped": 6}')]
    assert p.done == [1, 3, 6] and p.kept == 3 and p.reasons == {2: "still no identity"}
    assert p.oldest_ms == 4  # the oldest creationDate among the events put back


def test_an_output_that_does_not_map_puts_its_entries_back_as_they_were():
    p = plan(LETTERS, None, keep_tags=True, now_ns=lambda: 7_000_000_000)
    assert p.events == [("app.y", b'{"sent": 3, "creationDate": 4}'), ("app.x", b'{"too": "large"}')]
    assert p.done == [3, 6] and p.kept == 4 and p.reasons == {}
    assert p.oldest_ms == 7_000  # no record rescued: the replay's time


def test_replay_puts_the_events_back_and_deletes_their_letters_in_one_go(tmp_path):
    async def scenario():
        store = Store(str(tmp_path / "f.sqlite3"), b"", 0)
        await store.open()
        await store.add_dead_letters(
            [
                DeadLetter("expired", "x", tag="a", event=b"\x01\x02"),
                DeadLetter("expired", "x", tag="b", event=b"\x03"),
                DeadLetter("invalid", "cannot be encoded", tag="a", record=b"{...}"),
            ]
        )
        assert await replay(store, None, None, keep_tags=True) == (2, 1)
        assert (store.pending_events, store.pending_bytes, store.dead_letter_count) == (2, 3, 1)
        status = await store.status()
        assert (status["events"], status["bytes"], status["pending_rows"], status["dead_letters"]) == (2, 3, 2, {"invalid": 1})
        while await store.cut_batches(1000, 1000, 0, 1e12, 0):
            pass
        batches = await store.due_batches(1e12, 10)
        assert sorted((b.tag, b.data) for b in batches) == [("a", b"\x01\x02"), ("b", b"\x03")]
        assert await replay(store, None, None, keep_tags=True) == (0, 1)  # nothing left to put back
        await store.close()

    asyncio.run(scenario())


def test_a_replayed_event_over_chunk_limit_size_is_sent_alone_and_the_events_behind_it_too(tmp_path):
    # A too_large letter's record maps to the same event again: replay puts it back, over the
    # limit. The drain must still cut it (alone) and every event admitted after it.
    from ld_harness import ld_config, ld_node, order, until

    from fluent_ld import cli

    T = 1_795_000_000_000_000_000
    store = tmp_path / "store"

    async def oversized():
        async with ld_node(store, buffer="chunk_limit_size 1k") as (node, out, ld):
            await node.emit("signal.web", [(T, order(1, note="x" * 2000))])
            assert out.store.dead_letter_count == 1 and out.store.pending_events == 0

    asyncio.run(oversized())
    conf = tmp_path / "node.conf"
    conf.write_text(ld_config("http://127.0.0.1:9", str(store), "chunk_limit_size 1k"))
    assert cli.main(["dlq", "replay", "-c", str(conf)]) == 0

    async def after():
        async with ld_node(store, buffer="chunk_limit_size 1k") as (node, out, ld):
            await node.emit("signal.web", [(T, order(2))])
            await until(lambda: sorted(e["data"]["order_id"] for e in ld.events) == ["O-1", "O-2"], timeout=5)
            await until(lambda: out.store.pending_events == 0)
            assert not out._drainer.done()

    asyncio.run(after())


def test_replayed_events_keep_their_creation_date_so_stale_ones_are_counted(tmp_path):
    # A batch LaunchDarkly refused (400) is a dead letter with its event only; replayed, it goes
    # back as it is, and the store's oldest time must still be its creationDate: stale_after (a
    # day, by default) is measured against it.
    from ld_harness import ld_config, ld_node, until

    from fluent_ld import cli

    old = {
        "type": "track",
        "event": "Order Completed",
        "user_id": "u1",
        "timestamp": "2020-01-01T00:00:00Z",
        "properties": {"order_id": "O-1", "revenue": 1},
    }
    store = tmp_path / "store"

    async def refused():
        async with ld_node(store) as (node, out, ld):
            ld.script(400)
            await node.emit("signal.web", [(time.time_ns(), old)])
            await until(lambda: out.store.dead_letter_count == 1)
            assert out.stale_counts == {}

    asyncio.run(refused())
    conf = tmp_path / "node.conf"
    conf.write_text(ld_config("http://127.0.0.1:9", str(store)))
    assert cli.main(["dlq", "replay", "-c", str(conf)]) == 0

    async def replayed():
        async with ld_node(store) as (node, out, ld):
            await until(lambda: len(ld.events) == 1)
            await until(lambda: out.store.pending_events == 0)
            assert out.stale_counts == {"order_completed": 1}

    asyncio.run(replayed())
