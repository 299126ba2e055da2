"""A node running in a background thread (so blocking clients can talk to it), a capturing output,
and a small raw forward client."""

from __future__ import annotations

import asyncio
import socket
import textwrap
import threading
import time

import msgpack

from fluent_ld.config.loader import load_text
from fluent_ld.config.params import Section
from fluent_ld.pipeline.node import Node
from fluent_ld.plugin import BufferFullError, Entries, Output
from fluent_ld.registry import register


@register
class CaptureOutput(Output):
    """Keeps what it admits. Tests script failures: ``fail`` admits raise, ``full`` admits report
    the destination full until ``room`` is set."""

    type_name = "capture"
    summary = "Test output that keeps records in memory."
    section = Section("match", summary)

    def __init__(self, conf, plugin_id, worker: int = 0) -> None:
        super().__init__(conf, plugin_id, worker)
        self.records: list[tuple[str, int, dict]] = []
        self.dead: list[tuple[str, bytes, str]] = []
        self.fail = 0
        self.full = 0
        self.room: asyncio.Event | None = None
        self.delay = 0.0

    async def admit(self, tag: str, entries: Entries) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("scripted admit failure")
        if self.full:
            self.full -= 1
            self.room = self.room or asyncio.Event()
            room = self.room

            async def wait() -> None:
                await room.wait()

            raise BufferFullError("scripted: full", wait)
        self.records.extend((tag, t, r) for t, r in entries)

    async def dead_letter(self, tag: str, record: bytes, reason: str) -> None:
        self.dead.append((tag, record, reason))


class RunningNode:
    """``with RunningNode(conf_text) as node:`` a node on its own event loop thread."""

    def __init__(self, text: str) -> None:
        self.config = load_text(textwrap.dedent(text), "test.conf")
        self.node = Node(self.config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.node.start())
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def __enter__(self) -> RunningNode:
        self.thread.start()
        self._ready.wait(10)
        if self._error:
            raise self._error
        return self

    def __exit__(self, *exc) -> None:
        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self.node.stop(), self.loop).result(30)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def call(self, fn, *args):
        """Run ``fn(*args)`` on the node's loop and return its result."""

        async def call():
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(10)

    @property
    def source(self):
        return self.node.sources[0][1]

    @property
    def port(self) -> int:
        return self.source.port

    def output(self, index: int = 0):
        return self.node.outputs[index][1]

    def wait_records(self, n: int, index: int = 0, timeout: float = 10) -> list:
        out = self.output(index)
        deadline = time.monotonic() + timeout
        while len(out.records) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"got {len(out.records)} records, expected {n}")
            time.sleep(0.005)
        return list(out.records)


class RawClient:
    """A blocking forward client that sends exact bytes and reads msgpack replies."""

    def __init__(self, port: int | None = None, sock: socket.socket | None = None, timeout: float = 5) -> None:
        self.sock = sock or socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.unpacker = msgpack.Unpacker(raw=False)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self):
        """The next msgpack object from the server; raises EOFError when it closed."""
        while True:
            for obj in self.unpacker:
                return obj
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed by the server")
            self.unpacker.feed(data)

    def raw_reply(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError("connection closed by the server")
            data += chunk
        return data

    def closed_by_server(self, timeout: float = 5) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def forward_request(tag: str, records: list[dict], chunk=None, time_s: int = 1_700_000_000) -> bytes:
    option = {"chunk": chunk} if chunk is not None else {}
    return msgpack.packb([tag, [[time_s, r] for r in records], option], use_bin_type=True)


# A forward source on a free port feeding the capture output.
CAPTURE_CONF = """
<source>
  @type forward
  port 0
  {extra}
</source>
<match **>
  @type capture
</match>
"""


def capture_node(extra: str = "") -> RunningNode:
    return RunningNode(CAPTURE_CONF.format(extra=extra))
