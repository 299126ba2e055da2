"""A forward connection's life over real sockets: its one state (HANDSHAKE, OPEN, HALF_CLOSED,
CLOSING, LOST, CLOSED), its set of pause reasons, the Listener interface it asks of its source, and
the source's timers (the idle sweeper, the per-connection handshake timeout)."""

import asyncio
import logging
import socket
import ssl
import time
from collections import Counter

import msgpack
import pytest
from harness import RawClient, RunningNode, capture_node, forward_request
from test_forward_adversarial import wait_until
from test_forward_security import SECURE, TLS, connect, ping

from fluent_ld.forward.codec import DecoderLimits
from fluent_ld.pipeline.admission import encode_frame
from fluent_ld.sources.forward_connection import (
    MAX_PENDING_REQUESTS,
    ConnectionSettings,
    ForwardConnection,
    Pause,
    State,
)


def the_connection(n: RunningNode) -> ForwardConnection:
    wait_until(lambda: len(n.source.connections) == 1, what="the server side of the connection")
    return n.call(lambda: next(iter(n.source.connections)))


def sweepers(n: RunningNode) -> list[asyncio.Task]:
    """The idle sweeper tasks running on the node's loop."""
    return n.call(lambda: [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "ForwardSource._sweep_idle"])


def secure(extra: str) -> RunningNode:
    return RunningNode(SECURE.format(security="").replace("port 0", f"port 0\n  {extra}"))


# -- the idle sweeper and the handshake timeout -------------------------------------------------------


def test_idle_timeout_0_runs_no_idle_sweeper_even_with_security():
    with secure("idle_timeout 0") as n:
        assert sweepers(n) == []
    with capture_node("idle_timeout 0") as n:
        assert sweepers(n) == []
    with secure("idle_timeout 1s") as n:  # and one sweeper when there is something to sweep
        assert len(sweepers(n)) == 1


def test_the_handshake_timeout_is_its_own_timer_and_holds_with_idle_timeout_0():
    """With no idle sweeper, a client that never sends its PING is still closed after
    handshake_timeout, while a client that did the handshake stays connected however long it is
    silent (idle_timeout 0: never closed for being idle)."""
    with secure("idle_timeout 0\n  handshake_timeout 300ms") as n:
        good, helo = connect(n.port)
        good.send(ping(helo))
        assert good.reply()[:2] == ["PONG", True]
        start = time.monotonic()
        silent = RawClient(n.port)
        try:
            assert silent.reply()[0] == "HELO"
            assert silent.closed_by_server(timeout=3)
            assert 0.25 < time.monotonic() - start < 2.5
            assert n.source.stats["handshake_failures"] == 1
            time.sleep(0.6)  # twice handshake_timeout, silent after its handshake
            good.send(forward_request("a", [{"still": "open"}], chunk="late"))
            assert good.reply() == {"ack": "late"}
            assert n.source.stats["idle_closed"] == 0
        finally:
            silent.close()
            good.close()


def test_a_handshake_goes_from_handshake_to_open_and_a_refused_one_to_closing_then_closed():
    with secure("idle_timeout 0") as n:
        c, helo = connect(n.port)
        conn = the_connection(n)
        assert n.call(lambda: conn.state) is State.HANDSHAKE
        c.send(ping(helo))
        assert c.reply()[:2] == ["PONG", True]
        assert n.call(lambda: conn.state) is State.OPEN
        c.close()  # a FIN: the server finishes (CLOSING), then the transport is gone (CLOSED)
        wait_until(lambda: not n.source.connections, what="the connection to go")
        assert conn.state is State.CLOSED

        c, helo = connect(n.port)
        conn = the_connection(n)
        c.send(ping(helo, key="wrong"))
        assert c.reply()[:2] == ["PONG", False]
        assert c.closed_by_server()
        wait_until(lambda: not n.source.connections, what="the refused connection to go")
        assert conn.state is State.CLOSED


# -- pause reasons ---------------------------------------------------------------------------------


def test_a_full_destination_is_a_pause_reason_until_there_is_room():
    with capture_node() as n, RawClient(n.port) as c:
        n.call(setattr, n.output(), "full", 1)
        c.send(forward_request("a", [{"n": 1}], chunk="c1"))
        conn = the_connection(n)
        wait_until(lambda: n.call(lambda: set(conn.pause_reasons)) == {Pause.OUTPUT_FULL}, what="the pause")
        assert not n.call(conn.transport.is_reading)
        n.call(lambda: n.output().room.set())
        assert c.reply() == {"ack": "c1"}
        wait_until(lambda: n.call(lambda: not conn.pause_reasons and conn.transport.is_reading()), what="reading again")
        c.send(forward_request("a", [{"n": 2}], chunk="c2"))
        assert c.reply() == {"ack": "c2"}


def test_a_connection_lost_with_a_backlog_still_admits_every_request_it_read_whole():
    count = 300  # one read, far more than MAX_PENDING_REQUESTS
    with capture_node() as n:
        n.call(setattr, n.output(), "delay", 0.3)
        s = socket.create_connection(("127.0.0.1", n.port), timeout=5)
        s.sendall(b"".join(forward_request("a", [{"n": i}], chunk=f"c{i}") for i in range(count)))
        conn = the_connection(n)
        wait_until(lambda: Pause.PENDING_FULL in conn.pause_reasons, what="the backlog")
        assert n.source.stats["requests"] == MAX_PENDING_REQUESTS
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # a reset
        wait_until(lambda: n.call(lambda: conn.state) is State.LOST, what="the reset")
        records = n.wait_records(count)
        wait_until(lambda: not n.source.connections, what="the connection to go once its admits are done")
    assert sorted(r[2]["n"] for r in records) == list(range(count))
    assert n.source.stats["requests"] == count


def test_a_protocol_error_closes_after_the_acks_closing_then_closed():
    with capture_node() as n, RawClient(n.port) as c:
        c.send(forward_request("a", [{"n": 1}], chunk="ok"))
        assert c.reply() == {"ack": "ok"}
        conn = the_connection(n)
        c.send(b"\xc1")
        assert c.closed_by_server()
        wait_until(lambda: not n.source.connections, what="the connection to go")
        assert conn.state is State.CLOSED
        assert n.source.stats["protocol_errors"] == 1


def test_a_close_notify_arriving_with_a_backlog_still_admits_every_request_read_whole(pki, monkeypatch):
    """Over TLS the client's close_notify can come in the same read as its requests, so the
    half-close is seen while most of them still wait in the decoder: HALF_CLOSED. asyncio's TLS
    transport then closes the connection (TLS has no half-close), so it is LOST: the acks that had
    gone out are in order, and every request that arrived whole is still decoded and admitted."""
    ca, d = pki
    seen = []
    eof_received = ForwardConnection.eof_received

    def spy(self):
        before = (self.state, set(self.pause_reasons))
        kept_open = eof_received(self)
        seen.append((self, before, self.state))
        return kept_open

    monkeypatch.setattr(ForwardConnection, "eof_received", spy)
    count = 300
    conf = TLS.format(d=d, extra="")
    with RunningNode(conf) as n:
        n.call(setattr, n.output(), "delay", 0.01)
        wire = b"".join(forward_request("a", [{"n": i}], chunk=f"c{i}") for i in range(count))
        replies = tls_send_then_close_notify(ca, n.port, wire)
        assert replies == [{"ack": f"c{i}"} for i in range(len(replies))]
        assert [r[2]["n"] for r in n.wait_records(count)] == list(range(count))
        wait_until(lambda: not n.source.connections, what="the connection to go once its admits are done")
    ((conn, (state, reasons), after),) = seen
    if Pause.PENDING_FULL not in reasons:
        pytest.skip("the close_notify came in a read of its own: the half-close met no backlog")
    assert state is State.OPEN and after is State.HALF_CLOSED
    assert conn.state is State.LOST


def tls_send_then_close_notify(ca, port: int, wire: bytes) -> list:
    """A TLS client that sends ``wire`` and its close_notify in one write, then reads replies
    until the server closes."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                data = sock.recv(65536)
                if not data:
                    raise EOFError("closed during the TLS handshake") from None
                incoming.write(data)
        tls.write(wire)
        try:
            tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # close_notify written; the server's comes later
        sock.sendall(outgoing.read())
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            incoming.write(data)
            while True:
                try:
                    chunk = tls.read(65536)
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    break
                if not chunk:
                    break
                unpacker.feed(chunk)
        return list(unpacker)


# -- the Listener interface ------------------------------------------------------------------------


class MinimalListener:
    """Only what forward_connection.Listener declares: a connection needs nothing else from its
    source."""

    def __init__(self) -> None:
        self.settings = ConnectionSettings(DecoderLimits(1 << 20, 1 << 20), add_tag_prefix="in")
        self.emitter = self
        self.log = logging.getLogger("test.listener")
        self.connections: set = set()
        self.stats: Counter = Counter()
        self.committed: list = []

    def register(self, conn) -> bool:
        self.connections.add(conn)
        return True

    def unregister(self, conn) -> None:
        self.connections.discard(conn)

    def count(self, name: str, n: int = 1) -> None:
        self.stats[name] += n

    def closed_for(self, reason: str) -> None:
        self.stats[f"closed_{reason}"] += 1

    def records_received(self, n: int) -> None:
        self.stats["records"] += n

    def invalid_events(self, n: int) -> None:
        self.stats["invalid"] += n

    # the emitter half
    async def admit_frame(self, tag, frame, decoding):
        return encode_frame(frame, tag, decoding, None)

    async def commit(self, tag, admitted) -> None:
        self.committed.extend((tag, record) for _, record in admitted.entries)


def test_a_connection_needs_only_the_listener_interface_of_its_source():
    listener = MinimalListener()

    async def main() -> list:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: ForwardConnection(listener), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        small = [forward_request("t", [{"n": i}], chunk=f"c{i}") for i in range(3)]
        large = forward_request("t", [{"n": 3, "pad": "x" * 10_000}], chunk="c3")  # a Frame: admit_frame
        writer.write(b"".join(small) + large)
        writer.write_eof()
        unpacker = msgpack.Unpacker(raw=False)
        while data := await asyncio.wait_for(reader.read(65536), 5):
            unpacker.feed(data)
        writer.close()
        server.close()
        await server.wait_closed()
        return list(unpacker)

    assert asyncio.run(main()) == [{"ack": f"c{i}"} for i in range(4)]
    assert [(tag, record["n"]) for tag, record in listener.committed] == [("in.t", i) for i in range(4)]
    assert listener.stats == Counter(requests=4, records=4)
    assert not listener.connections
