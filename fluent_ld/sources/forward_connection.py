"""One forward connection: bytes to the codec, requests to the router in order, acks back.

A few lines of asyncio around the sans-I/O codec and handshake. The order of things per request:
decode -> admit (the router hands the records to their output, which decides durability) -> ack.
Acks go out in request order, one write each. A request whose admit failed is not acked (the
client sends it again); a malformed stream closes this connection only.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from fluent_ld.admission import Admitted, Decoding
from fluent_ld.forward.codec import Decoder, Frame, Heartbeat, Ping, ProtocolError, Request, encode_ack
from fluent_ld.forward.handshake import Handshake
from fluent_ld.plugin import BufferFullError

if TYPE_CHECKING:
    from fluent_ld.sources.forward import ForwardSource

# Requests decoded but not yet admitted, per connection: up to MAX_PENDING_REQUESTS while together
# they hold less than PENDING_BYTES, and always PENDING_ALWAYS (a few large requests pipeline).
# Past that the socket stops being read, so a fast client waits in its own send buffer rather than
# in our memory: a connection holds at most PENDING_ALWAYS chunks, or PENDING_BYTES plus one. Many
# small requests pending at once (Message mode: one record each) share store commits, which is what
# lets a client that does not wait for acks go faster than one commit per record.
# Bytes already read beyond that stay undecoded in the decoder (at most one read plus one request)
# until there is room.
MAX_PENDING_REQUESTS = 64
PENDING_BYTES = 1 << 20
PENDING_ALWAYS = 4

# A connection the server closes (idle, malformed, refused handshake, half-closed by its client)
# first flushes what it still has to write (its last acks). A client that never reads them kept it
# open for good, and with it a max_connections slot. Past this many seconds it is dropped: those
# acks are lost and the client sends the records again, as for any ack it did not get.
CLOSE_TIMEOUT = 10.0


class ForwardConnection(asyncio.Protocol):
    def __init__(self, source: ForwardSource) -> None:
        self.source = source
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self.peer_address = ""
        self.hostname: str | None = None
        self.decoder = Decoder(source.limits, source.conf.skip_invalid_event, lazy=True)
        self.handshake: Handshake | None = None
        self.pending: deque[Frame | Request] = deque()  # a Request: small, decoded by the codec
        self.pending_bytes = 0  # their wire sizes
        # One admit task per pending request, started as soon as it is decoded: admits of one
        # connection overlap (their store commits share an fsync) while acks still go out in order.
        self.admits: deque[asyncio.Task[Admitted]] = deque()
        self.worker: asyncio.Task | None = None
        self.paused = False  # reading paused, for any of the reasons below
        self.writing_paused = False  # between the transport's pause_writing and resume_writing
        self.backlog = False  # the decoder may hold requests not decoded yet (pending was full)
        self.eof = False  # the client half-closed while a backlog was waiting
        self.draining = False  # shutdown: never resume reading
        self.lost = False  # the transport is gone (what was read is still admitted)
        self.closing = False  # no more reading nor decoding: finishing what is pending
        self.last_activity = time.monotonic()
        self.handshake_timer: asyncio.TimerHandle | None = None
        self.close_timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Resolved by connection_lost: drain_and_close waits on it for the last acks to be flushed.
        self.lost_waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer_address = peer[0]
            self.peer = f"{peer[0]}:{peer[1]}"
        else:
            self.peer = "unix socket"
        source = self.source
        if source.stopping:
            # Accepted just as the source stopped: stop() has already listed the connections to
            # drain, so this one would never be closed (on Python 3.12+ stop() would then wait for it).
            transport.abort()
            return
        if len(source.connections) >= source.conf.max_connections:
            source.count("connections_refused")
            source.closed_for("refused")
            source.log.warning(
                "Refusing a connection from %s: max_connections (%d) reached.",
                self.peer,
                source.conf.max_connections,
            )
            transport.abort()
            return
        source.connections.add(self)
        source.count("connections")
        source.accepted.inc()
        if source.security is not None:
            self.handshake = Handshake(
                source.security,
                self.peer_address,
                nonce=os.urandom(16),
                auth_salt=os.urandom(16),
                keepalive=not source.conf.deny_keepalive,
            )
            self.transport.write(self.handshake.helo())
            loop = asyncio.get_running_loop()
            self.handshake_timer = loop.call_later(
                source.conf.handshake_timeout, self._handshake_timed_out
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.lost_waiter.done():
            self.lost_waiter.set_result(None)
        if self.handshake_timer:
            self.handshake_timer.cancel()
        if self.close_timer:
            self.close_timer.cancel()
        # Requests that arrived whole before a reset are still admitted (not acked: there is no one
        # to ack). Until they are, the connection stays in the source's set, so that shutdown waits
        # for them and max_connections bounds the memory they hold (before, a client could reset
        # and reconnect to pile up admits in the background, and stop() did not wait for them).
        self._maybe_resume()
        if self.worker is not None and not self.worker.done():
            self.worker.add_done_callback(lambda _: self.source.connections.discard(self))
        else:
            self.source.connections.discard(self)

    def pause_writing(self) -> None:
        # The client does not read its acks: stop reading its requests until it does.
        self.writing_paused = True
        self._pause("client not reading acks")

    def resume_writing(self) -> None:
        # Only here may reading resume after pause_writing: the transport calls pause_writing once
        # per crossing of its high-water mark, so resuming earlier (say with the buffer between
        # the low and high marks) would leave acks piling up with no pause_writing to stop them.
        self.writing_paused = False
        self._maybe_resume()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_activity = time.monotonic()
        try:
            self.decoder.receive_data(data)
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        self._decode()

    def _decode(self) -> None:
        """Turn what the decoder holds into requests, but no more than :meth:`_full` allows:
        one read can hold thousands of small requests, and before this they were all decoded (and
        held) at once. The rest waits in the decoder, reading paused, until admits make room."""
        try:
            now = time.time_ns()
            while not self.closing:
                if self._full():
                    self.backlog = True
                    self._pause("requests pending")
                    return
                event = self.decoder.next_event(now)
                if type(event) is Frame or type(event) is Request:
                    self._received(event, now)
                elif type(event) is Ping:
                    self._ping(event)
                elif type(event) is Heartbeat:
                    continue
                else:  # NEED_DATA
                    break
            self.backlog = False
        except ProtocolError as exc:
            self.backlog = False
            self._protocol_error(exc)

    def _protocol_error(self, exc: ProtocolError) -> None:
        self.source.count("protocol_errors")
        self.source.closed_for("protocol")
        self.source.log.warning("Closing the connection from %s: %s.", self.peer, exc)
        self.finish_then_close()

    def eof_received(self) -> bool:
        # Half-close from the client: finish what it sent (and ack it), then close. With requests
        # still undecoded (reading was paused), that waits until they are decoded: _maybe_resume.
        if self.backlog:
            self.eof = True
        else:
            self.finish_then_close()
        return True

    # -- handshake ---------------------------------------------------------------------------

    def _ping(self, ping: Ping) -> None:
        if self.handshake is None:
            raise ProtocolError("PING without a handshake in progress")
        ok, reason, pong = self.handshake.check(ping)
        self.transport.write(pong)
        if self.handshake_timer:
            self.handshake_timer.cancel()
        self.handshake = None
        if not ok:
            self.source.count("handshake_failures")
            self.source.closed_for("handshake")
            self.source.log.warning(
                "Handshake refused for %s (client hostname %r): %s.", self.peer, ping.hostname, reason
            )
            self.close()

    def _handshake_timed_out(self) -> None:
        if self.handshake is not None and not self.closing:
            self.source.count("handshake_failures")
            self.source.closed_for("handshake")
            self.source.log.warning("Closing the connection from %s: no PING within handshake_timeout.", self.peer)
            self.close()

    # -- requests ----------------------------------------------------------------------------

    def _received(self, frame: Frame | Request, now_ns: int) -> None:
        if self.handshake is not None:
            raise ProtocolError("a request before the handshake completed")
        source = self.source
        source.count("requests")
        warn_limit = source.conf.chunk_size_warn_limit
        if warn_limit is not None and frame.wire_size > warn_limit:
            source.log.warning(
                "A request of %d bytes from %s is over chunk_size_warn_limit (%d).",
                frame.wire_size,
                self.peer,
                source.conf.chunk_size_warn_limit,
            )
        self.pending.append(frame)
        self.pending_bytes += frame.wire_size
        self.admits.append(asyncio.get_running_loop().create_task(self._admit(frame, now_ns)))
        if self.worker is None or self.worker.done():
            self.worker = asyncio.get_running_loop().create_task(self._admit_pending())
        if source.conf.deny_keepalive:
            self.finish_then_close()  # one request per connection, as Fluentd's deny_keepalive

    async def _admit_pending(self) -> None:
        source = self.source
        while self.pending:
            frame = self.pending[0]
            try:
                admitted = await self.admits[0]
            except ProtocolError as exc:
                # Framed but not the forward protocol inside (a broken payload, an unknown mode):
                # not acked; what was received before it is still acked, then the connection closes.
                self._protocol_error(exc)
            except Exception:
                source.count("admit_failures")
                source.log.exception(
                    "Records from %s (tag %r) were not admitted; no ack is sent, so the client "
                    "will send them again.",
                    self.peer,
                    frame.tag,
                )
            else:
                if admitted.chunk is not None and not self.transport.is_closing():
                    self.transport.write(encode_ack(admitted.chunk))
            self.pending_bytes -= self.pending.popleft().wire_size
            self.admits.popleft()
            self._maybe_resume()

    async def _admit(self, frame: Frame | Request, now_ns: int) -> Admitted:
        source = self.source
        conf = source.conf
        tag = conf.tag or frame.tag
        if conf.add_tag_prefix:
            tag = f"{conf.add_tag_prefix}.{tag}"
        extra: dict[str, Any] | None = None
        if conf.source_address_key or conf.source_hostname_key:
            extra = {}
            if conf.source_address_key:
                extra[conf.source_address_key] = self.peer_address
            if conf.source_hostname_key:
                extra[conf.source_hostname_key] = await self._peer_hostname()
        emitter = source.emitter
        if type(frame) is Request:
            if extra:
                for _, record in frame.entries:
                    record.update(extra)
            admitted = Admitted(frame.chunk, frame.mode, frame.invalid, frame.markers, entries=frame.entries)
        else:
            admitted = await emitter.admit_frame(tag, frame, Decoding(source.limits, conf.skip_invalid_event, now_ns, extra))
        if admitted.invalid:
            source.count("invalid_events", admitted.invalid)
            source.invalid.inc(admitted.invalid)
        while True:
            try:
                await emitter.commit(tag, admitted)
                records = admitted.records
                source.count("records", records)
                source.received.inc(records)
                return admitted
            except BufferFullError as full:
                # Backpressure: keep the connection, stop reading it, wait for room, try again.
                source.count("backpressure_waits")
                self._pause("destination full")
                await full.wait_for_room()

    async def _peer_hostname(self) -> str:
        if self.hostname is None:
            self.hostname = self.peer_address
            if self.peer_address:
                try:
                    loop = asyncio.get_running_loop()
                    host, _ = await asyncio.wait_for(
                        loop.getnameinfo((self.peer_address, 0)), timeout=5
                    )
                    self.hostname = host
                except (OSError, asyncio.TimeoutError):
                    pass  # keep the address: a missing reverse record is not an error
        return self.hostname

    # -- flow control and closing ---------------------------------------------------------------

    def _full(self) -> bool:
        n = len(self.pending)
        return n >= MAX_PENDING_REQUESTS or (n >= PENDING_ALWAYS and self.pending_bytes >= PENDING_BYTES)

    def _pause(self, why: str) -> None:
        if not self.paused and self.transport and not self.transport.is_closing():
            self.paused = True
            self.transport.pause_reading()

    def _maybe_resume(self) -> None:
        """Called when a reason to pause may have gone (an admit finished, resume_writing, the
        connection lost): decode the backlog first, then resume reading if nothing holds it."""
        if not (self.paused or self.backlog) or self.closing or self._full():
            return
        if self.backlog:
            # Held while the client does not read its acks; decoded anyway at shutdown or once the
            # connection is lost (read whole, so admitted: nothing that arrived whole is dropped).
            if self.writing_paused and not (self.draining or self.lost):
                return
            self._decode()
            if self.backlog or self.closing:
                return
        if self.writing_paused or self.draining or self.lost:
            return
        if self.eof:
            self.finish_then_close()  # the client's half-close came while the backlog waited
            return
        if self.transport and not self.transport.is_closing():
            self.paused = False
            self.last_activity = time.monotonic()  # paused by us is not idle
            self.transport.resume_reading()

    def finish_then_close(self) -> None:
        """Read no more, admit and ack what was already decoded, then close. Records that arrived
        whole are never thrown away because a later frame was bad."""
        self.closing = True
        if self.transport and not self.transport.is_closing():
            self.transport.pause_reading()
        if self.worker is not None and not self.worker.done():
            self.worker.add_done_callback(lambda _: self.close())
        else:
            self.close()

    def close(self) -> None:
        """Close after pending writes (a refusing PONG, the last ack) are flushed."""
        self.closing = True
        if self.transport and not self.transport.is_closing():
            self.transport.close()
            if not self.lost and not self.draining:  # at shutdown, drain_and_close bounds it
                self.close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._close_timed_out)

    def _close_timed_out(self) -> None:
        if not self.lost and self.transport:
            self.source.log.warning(
                "Dropping the connection from %s: it did not read its last acks within %ss of being closed.",
                self.peer,
                CLOSE_TIMEOUT,
            )
            self.transport.abort()

    async def drain_and_close(self, timeout: float) -> None:
        """At shutdown: stop reading, let the requests already received be admitted and acked
        (within ``timeout``), then close.

        Reading stays paused for good (``draining``): before, each finished admit resumed it, so a
        client that kept sending kept the shutdown going until ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.draining = True
        if self.transport and not self.transport.is_closing():
            self.transport.pause_reading()
            self.paused = True
        self._maybe_resume()  # decodes a backlog already read (it never resumes reading now)
        if self.worker is not None and not self.worker.done():
            try:
                await asyncio.wait_for(asyncio.shield(self.worker), timeout)
            except asyncio.TimeoutError:
                self.source.log.warning(
                    "%d request(s) from %s were not admitted before shutdown; they were not "
                    "acked and the client will send them again.",
                    len(self.pending),
                    self.peer,
                )
                self.worker.cancel()
                for task in self.admits:
                    task.cancel()
        self.close()
        # close() waits for the write buffer to be flushed: a client that does not read its acks
        # would hold the connection (and, on Python 3.12+, Server.wait_closed and so the whole
        # shutdown) forever. Give it what is left of the timeout (at least a moment, so acks to a
        # reading client go out even with shutdown_timeout 0), then drop it; those acks are lost
        # and the client sends the records again, as for any ack it did not get.
        try:
            await asyncio.wait_for(asyncio.shield(self.lost_waiter), max(deadline - loop.time(), 0.2))
        except asyncio.TimeoutError:
            self.source.log.warning(
                "Dropping the connection from %s at shutdown: it did not read its acks.", self.peer
            )
            if self.transport:
                self.transport.abort()
