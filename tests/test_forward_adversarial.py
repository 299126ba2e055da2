"""The forward source against clients that try to break its promises, over real sockets.

The promises: an acked request was admitted (never ack before admit returns); acks in request order,
one per request with a chunk, none for a request whose admit failed; nothing that arrived whole is
dropped; a malformed, slow or hostile client affects only its own connection; memory per connection
is bounded (pending requests capped, reading paused while the client does not read its acks or the
destination is full); shutdown admits and acks what was already received, within shutdown_timeout.

Every loop here is bounded in count and in time; every test takes at most a few seconds.
"""

import asyncio
import random
import select
import socket
import struct
import threading
import time

import pytest
from harness import CAPTURE_CONF, RawClient, RunningNode, capture_node, forward_request
from test_forward_security import SECURE, connect, ping

from fluent_ld.plugin import BufferFullError
from fluent_ld.sources import forward_connection
from fluent_ld.sources.forward_connection import MAX_PENDING_REQUESTS, PENDING_ALWAYS, ForwardConnection, Pause

BASE = CAPTURE_CONF
node = capture_node


def wait_until(predicate, timeout: float = 5, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def connection(n: RunningNode, index: int = 0) -> ForwardConnection:
    """The server side of the only (or the index-th oldest) live connection."""
    wait_until(lambda: len(n.source.connections) > index, what="the server side of the connection")
    return n.call(lambda: sorted(n.source.connections, key=lambda c: c.last_activity)[index])


def raw_socket(port: int, rcvbuf: int | None = None, timeout: float = 5) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def acks(client: RawClient, n: int) -> list:
    return [client.reply() for _ in range(n)]


class Probe:
    """Watches every connection of the node under test, at the exact points where its memory can
    grow: the pending queue (after each decoded request) and the write buffer (after each write).

    It also gives the server's sockets a small kernel send buffer: on loopback Linux grows it to
    4 MiB, which would swallow every ack these tests send before asyncio's own write buffer (the
    one the server must keep bounded) sees any of them. Over a real network with a slow reader the
    same happens with any buffer size, only later."""

    def __init__(self) -> None:
        self.max_pending = 0
        self.max_write_buffer = 0


@pytest.fixture
def probe(monkeypatch):
    p = Probe()
    received = ForwardConnection._received
    made = ForwardConnection.connection_made

    def _received(self, frame, now_ns):
        received(self, frame, now_ns)
        p.max_pending = max(p.max_pending, len(self.pending))

    def connection_made(self, transport):
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        made(self, transport)
        write = transport.write

        def counted_write(data):
            write(data)
            p.max_write_buffer = max(p.max_write_buffer, transport.get_write_buffer_size())

        transport.write = counted_write

    monkeypatch.setattr(ForwardConnection, "_received", _received)
    monkeypatch.setattr(ForwardConnection, "connection_made", connection_made)
    return p


class Sender(threading.Thread):
    """Sends bytes from a thread (sendall blocks while the server does not read), bounded in time."""

    def __init__(self, sock: socket.socket, pieces: list[bytes], pause: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.sock, self.pieces, self.pause = sock, pieces, pause
        self.error: BaseException | None = None
        self.sent = 0

    def run(self) -> None:
        try:
            for piece in self.pieces:
                self.sock.sendall(piece)
                self.sent += 1
                if self.pause:
                    time.sleep(self.pause)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self, timeout: float = 5) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the sender is still blocked"
        assert self.error is None, self.error


# -- 1. a client that does not read its acks ------------------------------------------------------


def test_a_client_not_reading_its_acks_is_paused_with_bounded_memory_and_later_gets_every_ack(probe):
    token = "t" * 8192  # big acks fill the socket buffers quickly
    count = 300
    with node() as n:
        slow = raw_socket(n.port, rcvbuf=4096)
        wire = [forward_request("slow", [{"n": i}], chunk=f"{i:04d}{token}") for i in range(count)]
        sender = Sender(slow, wire)
        sender.start()
        conn = connection(n)
        wait_until(lambda: Pause.WRITING in conn.pause_reasons and conn.transport.get_write_buffer_size() > 0, what="the pause")
        # Another client is served normally meanwhile.
        with RawClient(n.port) as other:
            for i in range(5):
                start = time.monotonic()
                other.send(forward_request("other", [{"i": i}], chunk=f"o{i}"))
                assert other.reply() == {"ack": f"o{i}"}
                assert time.monotonic() - start < 1
        time.sleep(0.2)
        # Reading is paused: most requests are still on the client's side (or in kernel buffers).
        assert Pause.WRITING in conn.pause_reasons and n.source.stats["requests"] < count / 2
        high = n.call(lambda: conn.transport.get_write_buffer_limits()[1])
        ack_size = len(forward_connection.encode_ack(f"0000{token}"))
        assert probe.max_pending <= MAX_PENDING_REQUESTS
        assert probe.max_write_buffer <= high + (MAX_PENDING_REQUESTS + 1) * ack_size
        # Now it reads: every ack, in order.
        with RawClient(sock=slow) as c:
            got = [c.reply()["ack"] for _ in range(count)]
            sender.finish()
        assert got == [f"{i:04d}{token}" for i in range(count)]
        records = n.wait_records(count + 5)
    assert [r[2]["n"] for r in records if r[0] == "slow"] == list(range(count))
    assert probe.max_pending <= MAX_PENDING_REQUESTS


def test_pending_requests_stay_capped_when_one_read_holds_many_requests(probe):
    count = 500
    with node() as n, RawClient(n.port) as c:
        n.call(setattr, n.output(), "delay", 0.0005)
        c.send(b"".join(forward_request("a", [{"n": i}], chunk=f"c{i}") for i in range(count)))
        assert acks(c, count) == [{"ack": f"c{i}"} for i in range(count)]
        assert [r[2]["n"] for r in n.wait_records(count)] == list(range(count))
    # Before the fix one read (up to 256 KiB) was decoded at once: hundreds of requests pending.
    assert probe.max_pending <= MAX_PENDING_REQUESTS


def test_large_pending_requests_are_capped_by_bytes(probe):
    """Small requests may pile up to MAX_PENDING_REQUESTS (they share store commits), but requests
    that hold PENDING_BYTES together stop the reading at PENDING_ALWAYS."""
    count = 12
    big = [{"n": i, "pad": "x" * 400_000} for i in range(count)]  # ~400 KB each
    with node() as n, RawClient(n.port) as c:
        n.call(setattr, n.output(), "delay", 0.05)
        c.send(b"".join(forward_request("a", [r], chunk=f"c{i}") for i, r in enumerate(big)))
        assert acks(c, count) == [{"ack": f"c{i}"} for i in range(count)]
        assert [r[2]["n"] for r in n.wait_records(count)] == list(range(count))
    assert 1 < probe.max_pending <= PENDING_ALWAYS


def test_many_small_requests_pend_together_up_to_the_cap(probe):
    count = 300
    with node() as n, RawClient(n.port) as c:
        n.call(setattr, n.output(), "delay", 0.05)  # admits overlap: the pending ones pile up
        c.send(b"".join(forward_request("a", [{"n": i}], chunk=f"c{i}") for i in range(count)))
        assert acks(c, count) == [{"ack": f"c{i}"} for i in range(count)]
        assert [r[2]["n"] for r in n.wait_records(count)] == list(range(count))
    assert PENDING_ALWAYS < probe.max_pending <= MAX_PENDING_REQUESTS


def test_reading_stays_paused_until_the_transport_says_resume_writing():
    """White box: after pause_writing, a finished admit must not resume reading while the transport
    still counts the protocol as paused (its buffer between the low and high water marks): the
    transport would not call pause_writing again, and acks would pile up without bound."""
    with node() as n, RawClient(n.port) as c:
        conn = connection(n)
        n.call(conn.pause_writing)
        assert conn.pause_reasons == {Pause.WRITING} and not n.call(conn.transport.is_reading)
        n.call(conn._decode_backlog)  # what each finished admit calls; the buffer is now empty
        assert conn.pause_reasons == {Pause.WRITING}, "resumed reading without resume_writing"
        assert not n.call(conn.transport.is_reading), "resumed reading without resume_writing"
        n.call(conn.resume_writing)
        assert not conn.pause_reasons and n.call(conn.transport.is_reading)
        c.send(forward_request("a", [{}], chunk="after"))
        assert c.reply() == {"ack": "after"}


# -- 2. slowloris ----------------------------------------------------------------------------------


def test_slowloris_does_not_delay_other_clients():
    with node() as n:
        slow = raw_socket(n.port)
        wire = forward_request("slow", [{"pad": "x" * 150}], chunk="slow")
        loris = Sender(slow, [wire[i : i + 1] for i in range(len(wire))], pause=0.004)
        loris.start()
        with RawClient(n.port) as good:
            for i in range(20):
                start = time.monotonic()
                good.send(forward_request("good", [{"i": i}], chunk=f"g{i}"))
                assert good.reply() == {"ack": f"g{i}"}
                assert time.monotonic() - start < 0.5
                time.sleep(0.01)
        loris.finish()
        with RawClient(sock=slow) as c:
            assert c.reply() == {"ack": "slow"}
        records = n.wait_records(21)
    assert [r[2] for r in records if r[0] == "slow"] == [{"pad": "x" * 150}]


# -- 3. many idle connections ----------------------------------------------------------------------


def test_idle_connections_up_to_max_connections_then_refusal_then_service_after_some_close():
    with node("max_connections 200") as n:
        idle = [raw_socket(n.port) for _ in range(200)]
        try:
            wait_until(lambda: len(n.source.connections) == 200, what="200 connections")
            with RawClient(n.port) as extra:
                assert extra.closed_by_server(timeout=3)
            assert n.source.stats["connections_refused"] == 1
            for s in idle[:20]:
                s.close()
            wait_until(lambda: len(n.source.connections) == 180, what="the closed ones to be gone")
            with RawClient(n.port) as fresh:
                fresh.send(forward_request("a", [{"fresh": 1}], chunk="fresh"))
                assert fresh.reply() == {"ack": "fresh"}
            with RawClient(sock=idle[-1]) as old:  # the idle ones still work
                old.send(forward_request("a", [{"old": 1}], chunk="old"))
                assert old.reply() == {"ack": "old"}
        finally:
            for s in idle:
                s.close()


# -- 4. half-open handshakes -----------------------------------------------------------------------


def test_clients_that_never_ping_are_closed_after_handshake_timeout_while_others_get_in():
    with RunningNode(SECURE.format(security="").replace("port 0", "port 0\n  handshake_timeout 500ms")) as n:
        silent = [RawClient(n.port) for _ in range(20)]
        try:
            for s in silent:
                assert s.reply()[0] == "HELO"
            good = []
            for i in range(5):
                c, helo = connect(n.port)
                c.send(ping(helo) + forward_request("a", [{"i": i}], chunk=f"g{i}"))
                assert c.reply()[:2] == ["PONG", True]
                assert c.reply() == {"ack": f"g{i}"}
                good.append(c)
            for s in silent:
                assert s.closed_by_server(timeout=3)
            assert n.source.stats["handshake_failures"] == 20
            for i, c in enumerate(good):  # past handshake_timeout: the good ones are kept
                c.send(forward_request("a", [{"again": i}], chunk=f"again{i}"))
                assert c.reply() == {"ack": f"again{i}"}
                c.close()
        finally:
            for s in silent:
                s.close()


# -- 5. half-close ----------------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [0.0, 0.01])
def test_half_close_still_gets_every_ack_before_the_server_closes(delay):
    count = 50
    with node() as n, RawClient(n.port) as c:
        n.call(setattr, n.output(), "delay", delay)
        c.send(b"".join(forward_request("a", [{"n": i}], chunk=f"c{i}") for i in range(count)))
        c.sock.shutdown(socket.SHUT_WR)
        assert acks(c, count) == [{"ack": f"c{i}"} for i in range(count)]
        assert c.closed_by_server()
        assert [r[2]["n"] for r in n.wait_records(count)] == list(range(count))


# -- 6. failures and backpressure, pipelined --------------------------------------------------------


def test_pipelined_requests_with_failures_and_backpressure_ack_exactly_what_was_admitted():
    # Admits of one connection overlap, so which request meets which scripted outcome is not
    # fixed; what must hold is: acks in request order, for exactly the requests that were
    # admitted, and records exactly those.
    rng = random.Random(7)
    count = 60
    chunked = [i % 5 != 0 for i in range(count)]  # every fifth request asks for no ack
    outcomes = [rng.choice(["ok", "ok", "fail", "full"]) for _ in range(4 * count)]

    with node() as n, RawClient(n.port) as c:
        out = n.output()
        script = iter(outcomes)
        admit = out.admit
        admitted: list = []

        async def scripted(tag, entries):
            outcome = "ok" if entries[0][1]["n"] == "end" else next(script, "ok")
            if outcome == "fail":
                raise RuntimeError("scripted admit failure")
            if outcome == "full":
                raise BufferFullError("scripted: full", lambda: asyncio.sleep(0.005))
            await admit(tag, entries)
            admitted.append(entries[0][1]["n"])

        n.call(setattr, out, "admit", scripted)
        c.send(b"".join(forward_request("a", [{"n": i}], chunk=f"c{i}" if chunked[i] else None) for i in range(count)))
        c.send(forward_request("a", [{"n": "end"}], chunk="end"))
        got = []
        while (reply := c.reply()) != {"ack": "end"}:
            got.append(reply)
        done = sorted(i for i in admitted if i != "end")
        assert got == [{"ack": f"c{i}"} for i in done if chunked[i]]
        assert 0 < len(done) < count  # the script did fail some
        records = n.wait_records(len(done) + 1)
    assert sorted(r[2]["n"] for r in records if r[2]["n"] != "end") == done
    assert n.source.stats["admit_failures"] == count - len(done)


# -- 7. abrupt disconnect ---------------------------------------------------------------------------


def test_a_reset_while_requests_wait_for_admit_keeps_the_records():
    with node() as n:
        n.call(setattr, n.output(), "delay", 0.05)
        s = raw_socket(n.port)
        s.sendall(b"".join(forward_request("a", [{"n": i}], chunk=f"c{i}") for i in range(10)))
        wait_until(lambda: n.source.stats["requests"] >= PENDING_ALWAYS, what="requests decoded")
        reset(s)
        assert [r[2]["n"] for r in n.wait_records(10)] == list(range(10))
        n.call(setattr, n.output(), "delay", 0)
        with RawClient(n.port) as c:  # the server is fine
            c.send(forward_request("a", [{"n": "next"}], chunk="next"))
            assert c.reply() == {"ack": "next"}


def test_records_of_a_reset_connection_are_admitted_before_shutdown_returns():
    with node() as n:
        n.call(setattr, n.output(), "delay", 0.1)
        s = raw_socket(n.port)
        s.sendall(b"".join(forward_request("a", [{"n": i}], chunk=f"c{i}") for i in range(3)))
        wait_until(lambda: n.source.stats["requests"] == 3, what="requests decoded")
        reset(s)
        wait_until(lambda: n.call(lambda: all(c.transport.is_closing() for c in n.source.connections)), what="reset seen")
    # Before the fix the lost connection left the source's set at once, so shutdown did not wait
    # for its admits: the outputs stopped while they were still running.
    assert [r[2]["n"] for r in n.output().records] == [0, 1, 2]


# -- 8. huge declared lengths and trickled requests --------------------------------------------------


def trickle_until_closed(sock: socket.socket, header: bytes, piece: bytes, pause: float, limit_pieces: int) -> int:
    """Sends ``header`` then ``piece`` after ``piece``; returns the bytes sent when the server closed."""
    sock.sendall(header)
    sent = len(header)
    for _ in range(limit_pieces):
        readable, _, _ = select.select([sock], [], [], pause)
        if readable:
            try:
                if sock.recv(1) == b"":
                    return sent
            except ConnectionResetError:
                return sent
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return sent
        sent += len(piece)
    raise AssertionError(f"still open after {sent} bytes")


def test_a_1_gib_declared_bin_trickled_is_closed_once_past_chunk_size_limit():
    with node("chunk_size_limit 4k") as n:
        s = raw_socket(n.port)
        sent = trickle_until_closed(s, b"\xc6" + (1 << 30).to_bytes(4, "big"), b"x" * 256, 0.01, 200)
        s.close()
        assert 4096 < sent <= 4096 + 4 * 256
        assert n.source.stats["protocol_errors"] == 1
        with RawClient(n.port) as c:
            c.send(forward_request("a", [{"after": 1}], chunk="after"))
            assert c.reply() == {"ack": "after"}


def test_a_request_trickled_as_small_elements_is_held_to_chunk_size_limit():
    # [tag, [[1, [1, 1, ...]], ...]]: the unpacker parses each element as it comes, so its buffer
    # never fills; before the fix this request passed a 4 KiB limit at any size.
    with node("chunk_size_limit 4k") as n:
        s = raw_socket(n.port)
        header = b"\x92\xa1a\xdc" + (1000).to_bytes(2, "big") + b"\x92\x01\xdc" + (4000).to_bytes(2, "big")
        sent = trickle_until_closed(s, header, b"\x01" * 256, 0.002, 400)
        s.close()
        assert 4096 < sent <= 4096 + 4 * 256
        assert n.source.stats["protocol_errors"] == 1


def test_pipelined_small_requests_larger_together_than_chunk_size_limit_are_all_accepted():
    # Before the fix one read holding more than chunk_size_limit of small requests was refused as
    # one "request larger than chunk_size_limit": the client would resend them forever.
    count = 200
    with node("chunk_size_limit 2k") as n, RawClient(n.port) as c:
        wire = b"".join(forward_request("a", [{"n": i, "pad": "p" * 40}], chunk=f"c{i}") for i in range(count))
        assert len(wire) > 5 * 2048
        c.send(wire)
        assert acks(c, count) == [{"ack": f"c{i}"} for i in range(count)]
        assert n.source.stats["protocol_errors"] == 0


def test_requests_before_an_oversized_one_in_the_same_read_are_admitted_and_acked():
    with node("chunk_size_limit 2k") as n, RawClient(n.port) as c:
        good = b"".join(forward_request("a", [{"n": i}], chunk=f"c{i}") for i in range(10))
        c.send(good + forward_request("a", [{"big": "x" * 4096}], chunk="big"))
        assert acks(c, 10) == [{"ack": f"c{i}"} for i in range(10)]
        assert c.closed_by_server()
        assert [r[2]["n"] for r in n.wait_records(10)] == list(range(10))


def test_a_malformed_frame_after_a_long_pipeline_keeps_every_request_before_it(probe):
    count = 300
    with node() as n, RawClient(n.port) as c:
        n.call(setattr, n.output(), "delay", 0.0005)
        c.send(b"".join(forward_request("a", [{"n": i}], chunk=f"c{i}") for i in range(count)) + b"\xc1junk")
        assert acks(c, count) == [{"ack": f"c{i}"} for i in range(count)]
        assert c.closed_by_server()
        assert [r[2]["n"] for r in n.wait_records(count)] == list(range(count))
    assert probe.max_pending <= MAX_PENDING_REQUESTS


# -- idle sweeper and backpressure ------------------------------------------------------------------


def test_the_idle_sweeper_spares_a_connection_waiting_for_room_in_its_destination():
    with node("idle_timeout 200ms") as n, RawClient(n.port) as c:
        n.call(setattr, n.output(), "full", 1)
        c.send(forward_request("a", [{"n": 1}], chunk="c1"))
        assert not c.closed_by_server(timeout=0.8)  # 4 idle timeouts while paused
        n.call(lambda: n.output().room.set())
        assert c.reply() == {"ack": "c1"}
        assert n.source.stats["idle_closed"] == 0


def test_the_idle_sweeper_spares_a_connection_paused_because_its_client_does_not_read_acks(probe):
    token = "t" * 8192
    count = 60
    with node("idle_timeout 200ms") as n:
        slow = raw_socket(n.port, rcvbuf=4096)
        slow.sendall(b"".join(forward_request("a", [{"n": i}], chunk=f"{i:03d}{token}") for i in range(count)))
        conn = connection(n)
        wait_until(lambda: Pause.WRITING in conn.pause_reasons and not conn.pending, what="paused with nothing pending")
        time.sleep(0.8)  # 4 idle timeouts, paused by the server, not by the client's silence
        assert n.source.stats["idle_closed"] == 0
        with RawClient(sock=slow) as c:
            assert [c.reply()["ack"] for _ in range(count)] == [f"{i:03d}{token}" for i in range(count)]
            c.send(forward_request("a", [{"n": "more"}], chunk="more"))
            assert c.reply() == {"ack": "more"}


def test_an_idle_connection_whose_last_acks_cannot_be_flushed_is_closed_and_counted_once(probe):
    """close() waits for the write buffer to drain, so a client that stopped reading keeps the
    connection in the source's set; before the fix every sweep closed (and counted, and logged) it
    again."""
    token = "t" * 8192
    with node("idle_timeout 200ms") as n:
        s = raw_socket(n.port, rcvbuf=4096)
        conn = None
        for i in range(200):  # until some acks wait in asyncio's buffer, below its high-water mark
            s.sendall(forward_request("a", [{"n": i}], chunk=f"{i:03d}{token}"))
            conn = conn or connection(n)
            time.sleep(0.005)
            if n.call(conn.transport.get_write_buffer_size):
                break
        assert n.call(conn.transport.get_write_buffer_size) and not conn.pause_reasons
        wait_until(lambda: n.source.stats["idle_closed"] >= 1, timeout=3, what="the idle close")
        time.sleep(0.5)  # ten sweeps
        assert n.source.stats["idle_closed"] == 1
        s.close()


# -- shutdown ---------------------------------------------------------------------------------------


def test_shutdown_stops_reading_and_acks_exactly_what_it_admitted():
    """A client keeps sending while the node stops: the requests already received are admitted and
    acked, reading does not resume (before the fix each finished admit resumed it, so shutdown went
    on reading until shutdown_timeout)."""
    with node("shutdown_timeout 3s") as n:
        # Admits overlap: slow enough that the connection's pending requests reach their cap.
        n.call(setattr, n.output(), "delay", 0.3)
        s = raw_socket(n.port)
        sender = Sender(s, [forward_request("a", [{"n": i}], chunk=f"c{i}") for i in range(400)], pause=0.002)
        sender.start()
        conn = connection(n)
        wait_until(lambda: Pause.PENDING_FULL in conn.pause_reasons and n.source.stats["requests"] >= 10, what="a paused connection")
        start = time.monotonic()
    took = time.monotonic() - start
    sender.join(5)
    admitted = [r[2]["n"] for r in n.output().records]
    with RawClient(sock=s) as c:
        got = []
        for _ in range(400):
            try:
                got.append(c.reply()["ack"])
            except (EOFError, ConnectionResetError):
                break
    assert took < 1.5, f"shutdown took {took:.2f}s"
    assert admitted == list(range(len(admitted)))
    assert got == [f"c{i}" for i in admitted]


def test_shutdown_does_not_wait_forever_for_a_client_that_never_reads(probe):
    token = "t" * 8192
    with node("shutdown_timeout 500ms") as n:
        slow = raw_socket(n.port, rcvbuf=4096)
        Sender(slow, [forward_request("a", [{"n": i}], chunk=f"{i:03d}{token}") for i in range(100)]).start()
        conn = connection(n)
        wait_until(lambda: Pause.WRITING in conn.pause_reasons and conn.transport.get_write_buffer_size() > 0, what="pause")
        source = n.source
        start = time.monotonic()
    assert time.monotonic() - start < 3
    # The server let go of the connection (its unread acks were dropped: those records were
    # admitted, and the client sends them again, as for any ack it did not get).
    assert not source.connections
    slow.close()


# -- handshake and keepalive odds ---------------------------------------------------------------------


def test_deny_keepalive_acks_the_first_of_pipelined_requests_only():
    with node("deny_keepalive true") as n, RawClient(n.port) as c:
        c.send(b"".join(forward_request("a", [{"n": i}], chunk=f"c{i}") for i in range(5)))
        assert c.reply() == {"ack": "c0"}
        assert c.closed_by_server()
        assert [r[2]["n"] for r in n.wait_records(1)] == [0]
