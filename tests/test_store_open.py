"""Opening a store: the lock a file store holds while it is open (another process is refused, by
pid; the same process may open it twice), reading beside the node that writes it, and the format a
store records (a store of another output type's events is refused by name; an older store without
one takes its opener's)."""

import asyncio
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from fluent_ld.outputs.buffer import store_for
from fluent_ld.store import Store, StoreError, StoreFormatError, StoreInUseError, store_file

OPEN_ELSEWHERE = textwrap.dedent(
    """
    import asyncio, sys
    from fluent_ld.store import Store, StoreError

    async def main():
        store = Store(sys.argv[1])
        try:
            await store.open()
        except StoreError as exc:
            print(exc)
            return
        await store.close()
        print("opened")

    asyncio.run(main())
    """
)


def open_in_another_process(path: str) -> str:
    done = subprocess.run([sys.executable, "-c", OPEN_ELSEWHERE, path], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def append(store: Store, frags: list[bytes]) -> None:
    await store.append(store.separator.join(frags), [len(f) for f in frags], sum(map(len, frags)), 1)


def test_an_open_store_is_refused_to_another_process_by_pid(tmp_path):
    path = str(tmp_path / "s.sqlite3")

    async def scenario():
        store = Store(path)
        await store.open()
        assert open_in_another_process(path) == f"{path} is in use by a running fluent-ld (pid {os.getpid()})"
        await store.close()
        assert open_in_another_process(path) == "opened"

    asyncio.run(scenario())


def test_one_process_may_hold_a_store_twice_and_keeps_the_lock_until_both_close(tmp_path):
    """A reload may open an output's store in the node replacing one that still has it open."""
    path = str(tmp_path / "s.sqlite3")

    async def scenario():
        old, new = Store(path), Store(path)
        await old.open()
        await new.open()
        await append(new, [b"1"])
        await old.close()
        assert "in use" in open_in_another_process(path)
        await append(new, [b"2"])
        assert new.pending_events == 2
        await new.close()
        assert open_in_another_process(path) == "opened"

    asyncio.run(scenario())


def test_a_store_that_cannot_open_leaves_no_lock_behind(tmp_path):
    path = str(tmp_path / "s.sqlite3")
    with open(path, "wb") as f:
        f.write(b"not a database" * 1000)

    async def scenario():
        store = Store(path)
        with pytest.raises(StoreError, match="not a database"):
            await store.open()
        assert not store.is_open
        elsewhere = open_in_another_process(path)
        assert "not a database" in elsewhere and "in use" not in elsewhere  # the lock was released

    asyncio.run(scenario())


def test_reading_beside_the_writer_takes_no_lock_and_writes_nothing(tmp_path):
    path = str(tmp_path / "s.sqlite3")

    async def scenario():
        writer = Store(path)
        await writer.open()
        await append(writer, [b"1", b"22"])
        reader = Store(path, readonly=True)
        await reader.open()
        status = await reader.status()
        assert (status["events"], status["bytes"]) == (2, 3)
        await append(writer, [b"333"])  # the writer goes on while the reader is open
        assert (await reader.status())["events"] == 3
        assert await reader.dead_letters() == []
        await reader.close()
        assert writer.pending_events == 3
        await writer.close()

        missing = str(tmp_path / "nothing-yet.sqlite3")
        reader = Store(missing, readonly=True)
        await reader.open()
        assert (await reader.status())["events"] == 0  # reads as an empty store
        await reader.close()
        assert not os.path.exists(missing) and not os.path.exists(missing + ".lock")

    asyncio.run(scenario())


def test_a_store_of_another_output_type_is_refused_by_name(tmp_path):
    path = str(tmp_path / "out-worker0.sqlite3")

    async def scenario():
        ld = Store(path, kind="launchdarkly")
        await ld.open()
        await append(ld, [b'{"a":1}'])
        await ld.close()
        forward = Store(path, b"", 0, kind="forward")
        with pytest.raises(StoreFormatError) as refused:
            await forward.open()
        assert str(refused.value).startswith(f"{path} holds launchdarkly events (JSON); this output writes forward (msgpack): ")
        assert not forward.is_open
        again = Store(path, kind="launchdarkly")  # refused without a trace: the right type opens it
        await again.open()
        assert again.pending_events == 1
        await again.close()

    asyncio.run(scenario())


def test_a_store_from_before_formats_were_recorded_takes_its_openers(tmp_path):
    path = str(tmp_path / "out-worker0.sqlite3")

    async def scenario():
        store = Store(path, b"", 0)  # no kind: records nothing
        await store.open()
        await append(store, [b"\x92\x01\x02"])
        await store.close()
        with sqlite3.connect(path) as conn:  # as a store written before the meta table existed
            conn.execute("DROP TABLE meta")
        forward = Store(path, b"", 0, kind="forward")
        await forward.open()
        assert forward.pending_events == 1
        await forward.close()
        with pytest.raises(StoreFormatError, match="holds forward events \\(msgpack\\); this output writes launchdarkly \\(JSON\\)"):
            await Store(path, kind="launchdarkly").open()

    asyncio.run(scenario())


class Buffer(dict):
    def __init__(self, kind: str, path: str | None) -> None:
        super().__init__({"@type": kind})
        self.path = path


def test_store_for_names_the_file_and_passes_the_kind(tmp_path):
    store = store_for(Buffer("file", str(tmp_path)), "out", 2, b"", 0, kind="forward")
    assert (store.path, store.separator, store.framing, store.kind) == (store_file(str(tmp_path), "out", 2), b"", 0, "forward")
    assert store_for(Buffer("memory", None), "out", 0).path is None


def test_in_use_error_names_the_pid():
    assert str(StoreInUseError("/x.sqlite3", 42)) == "/x.sqlite3 is in use by a running fluent-ld (pid 42)"
    assert str(StoreInUseError("/x.sqlite3", None)).endswith("(pid unknown)")
