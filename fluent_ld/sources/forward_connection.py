"""One forward connection: bytes to the codec, requests to the router in order, acks back.

A few lines of asyncio around the sans-I/O codec and handshake. The order of things per request:
decode -> admit (the router hands the records to their output, which decides durability) -> ack.
Acks go out in request order, one write each. A request whose admit failed is not acked (the
client sends it again); a malformed stream closes this connection only.

A connection has one :class:`State` and a set of :class:`Pause` reasons: it reads while it is in
HANDSHAKE or OPEN and the set is empty, and resumes reading when the set becomes empty. What it asks
of the source that accepted it is the :class:`Listener` interface, nothing more.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from fluent_ld.forward.codec import (
    Decoder,
    DecoderLimits,
    Frame,
    Heartbeat,
    Ping,
    ProtocolError,
    Request,
    encode_ack,
)
from fluent_ld.forward.handshake import Handshake, Security
from fluent_ld.pipeline.admission import Admitted, Decoding
from fluent_ld.plugin import BufferFullError, Emitter

__all__ = ["ConnectionSettings", "ForwardConnection", "Listener", "Pause", "State"]

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
# first flushes what it still has to write (its last acks). A client that never reads them would
# keep it open for good, and with it a max_connections slot. Past this many seconds it is dropped:
# those acks are lost and the client sends the records again, as for any ack it did not get.
CLOSE_TIMEOUT = 10.0


class State(enum.Enum):
    """Where a connection is in its life (one value; why its reading is paused is :class:`Pause`).

    HANDSHAKE -> OPEN when the PING is accepted (a connection without ``<security>`` starts OPEN).
    HANDSHAKE, OPEN or HALF_CLOSED -> CLOSING when the server closes it. OPEN -> HALF_CLOSED on the
    client's half-close while requests it sent wait undecoded. OPEN or HALF_CLOSED -> LOST when the
    transport goes; any other state -> CLOSED. LOST -> CLOSED when decoding stops (a bad frame,
    shutdown)."""

    HANDSHAKE = "handshake"  # HELO sent (<security>): the client's PING must come first
    OPEN = "open"  # requests are read, decoded, admitted and acked in order
    HALF_CLOSED = "half-closed"  # the client half-closed: its backlog is decoded and acked, then closed
    CLOSING = "closing"  # closed by the server: no more reading or decoding; what is pending is
    #                      admitted and acked, then the transport closes once its acks are flushed
    LOST = "lost"  # the transport is gone: what arrived whole is still decoded and admitted, unacked
    CLOSED = "closed"  # the transport is gone and nothing more is decoded (started admits finish)

    # Members are singletons: hash them by identity, in C. Enum's own hash is a Python call, and
    # the decode loop asks for the state once per request.
    __hash__ = object.__hash__


class Pause(enum.Enum):
    """A reason the socket is not read. A connection in HANDSHAKE or OPEN reads again when it has
    none left; in any other state it reads no more whatever the reasons."""

    PENDING_FULL = "requests pending"  # the pending cap is reached: the rest waits in the decoder
    WRITING = "client not reading acks"  # between the transport's pause_writing and resume_writing
    OUTPUT_FULL = "destination full"  # an admit waits for room in its output
    SHUTDOWN = "shutdown"  # the source is stopping: reading never resumes

    __hash__ = object.__hash__


_READING = frozenset({State.HANDSHAKE, State.OPEN})  # the socket is read unless a Pause holds it
_DECODING = frozenset({State.HANDSHAKE, State.OPEN, State.HALF_CLOSED, State.LOST})
# What the per-request paths test (each request while a backlog waits), as module names: on Python
# 3.11 reading an attribute of an Enum class costs ~70 ns (its metaclass defeats the attribute
# cache), a global ~10.
_PENDING_FULL, _WRITING, _SHUTDOWN = Pause.PENDING_FULL, Pause.WRITING, Pause.SHUTDOWN
_HALF_CLOSED = State.HALF_CLOSED


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """What a connection reads from its source's configuration (``<source> @type forward``)."""

    limits: DecoderLimits
    skip_invalid_event: bool = True
    tag: str | None = None
    add_tag_prefix: str | None = None
    source_address_key: str | None = None
    source_hostname_key: str | None = None
    chunk_size_warn_limit: int | None = None
    deny_keepalive: bool = False
    handshake_timeout: float = 30.0
    security: Security | None = None  # the shared-key handshake, when <security> is set


class Listener(Protocol):
    """The source side of a connection: all a :class:`ForwardConnection` asks of the source that
    accepted it (:class:`~fluent_ld.sources.forward.ForwardSource` is one)."""

    settings: ConnectionSettings
    emitter: Emitter  # admits the requests (admit_frame, then commit)
    log: logging.Logger

    def register(self, conn: ForwardConnection) -> bool:
        """Count a new connection in. False: refused (the source is stopping, or max_connections
        is reached: counted and logged); the connection aborts its transport."""

    def unregister(self, conn: ForwardConnection) -> None:
        """The connection is done: its transport is gone and its admits have finished."""

    def count(self, name: str, n: int = 1) -> None:
        """Count something that happened (requests, admit_failures, ...) in the source's stats."""

    def closed_for(self, reason: str) -> None:
        """Count a connection closed by the server: protocol, handshake, idle."""

    def records_received(self, n: int) -> None:
        """Count records admitted."""

    def invalid_events(self, n: int) -> None:
        """Count entries skipped as not ``[time, record]``."""


class ForwardConnection(asyncio.Protocol):
    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        settings = self.settings = listener.settings
        self.state = State.HANDSHAKE if settings.security is not None else State.OPEN
        self.pause_reasons: set[Pause] = set()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made, before any use
        self.peer = "unknown"
        self.peer_address = ""
        self.hostname: str | None = None
        self.decoder = Decoder(settings.limits, settings.skip_invalid_event, lazy=True)
        self.handshake: Handshake | None = None  # the handshake in progress (state HANDSHAKE)
        self.pending: deque[Frame | Request] = deque()  # a Request: small, decoded by the codec
        self.pending_bytes = 0  # their wire sizes
        # One admit task per pending request, started as soon as it is decoded: admits of one
        # connection overlap (their store commits share an fsync) while acks still go out in order.
        self.admits: deque[asyncio.Task[Admitted]] = deque()
        self.worker: asyncio.Task | None = None
        self.last_activity = time.monotonic()
        self.handshake_timer: asyncio.TimerHandle | None = None
        self.close_timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a stream: TCP, TLS or a Unix socket
        self.transport = transport
        # Resolved by connection_lost: drain_and_close waits on it for the last acks to be flushed.
        self.lost_waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer_address = peer[0]
            self.peer = f"{peer[0]}:{peer[1]}"
        else:
            self.peer = "unix socket"
        if not self.listener.register(self):
            self.state = State.CLOSED
            transport.abort()
            return
        settings = self.settings
        if settings.security is not None:
            self.handshake = Handshake(
                settings.security,
                self.peer_address,
                nonce=os.urandom(16),
                auth_salt=os.urandom(16),
                keepalive=not settings.deny_keepalive,
            )
            self.transport.write(self.handshake.helo())
            loop = asyncio.get_running_loop()
            self.handshake_timer = loop.call_later(settings.handshake_timeout, self._handshake_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost_waiter.done():
            self.lost_waiter.set_result(None)
        if self.handshake_timer:
            self.handshake_timer.cancel()
        if self.close_timer:
            self.close_timer.cancel()
        # Requests that arrived whole before a reset are still decoded and admitted (not acked:
        # there is no one to ack). Until they are, the connection stays registered, so that
        # shutdown waits for them and max_connections bounds the memory they hold.
        self.state = State.LOST if self.state is State.OPEN or self.state is State.HALF_CLOSED else State.CLOSED
        self.pause_reasons.discard(Pause.WRITING)  # nothing more is written: no resume_writing comes
        self._decode_backlog()
        if self.worker is not None and not self.worker.done():
            self.worker.add_done_callback(lambda _: self.listener.unregister(self))
        else:
            self.listener.unregister(self)

    def pause_writing(self) -> None:
        # The client does not read its acks: stop reading its requests until it does.
        self._pause(Pause.WRITING)

    def resume_writing(self) -> None:
        # Only here may this reason go: the transport calls pause_writing once per crossing of its
        # high-water mark, so resuming earlier (say with the buffer between the low and high marks)
        # would leave acks piling up with no pause_writing to stop them.
        self._resume(Pause.WRITING)

    def data_received(self, data: bytes) -> None:
        if self.state not in _READING:
            return
        self.last_activity = time.monotonic()
        try:
            self.decoder.receive_data(data)
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        self._decode()

    def _decode(self) -> bool:
        """Turn what the decoder holds into requests, but no more than :meth:`_full` allows: one
        read can hold thousands of small requests. The rest waits in the decoder, reading paused
        (:attr:`Pause.PENDING_FULL`), until admits make room: :meth:`_decode_backlog`. True once
        the decoder holds no whole request."""
        try:
            now = time.time_ns()
            while self.state in _DECODING:
                if self._full():
                    self._pause(_PENDING_FULL)
                    return False
                event = self.decoder.next_event(now)
                if type(event) is Frame or type(event) is Request:
                    self._received(event, now)
                elif type(event) is Ping:
                    self._ping(event)
                elif type(event) is Heartbeat:
                    continue
                else:  # NEED_DATA
                    return True
        except ProtocolError as exc:
            self._protocol_error(exc)
        return False

    def _protocol_error(self, exc: ProtocolError) -> None:
        self.listener.count("protocol_errors")
        self.listener.closed_for("protocol")
        self.listener.log.warning("Closing the connection from %s: %s.", self.peer, exc)
        self.finish_then_close()

    def eof_received(self) -> bool:
        # Half-close from the client: finish what it sent (and ack it), then close. With requests
        # still undecoded (reading was paused), that waits until they are decoded: _decode_backlog.
        if self.state in _READING:
            if Pause.PENDING_FULL in self.pause_reasons:
                self.state = State.HALF_CLOSED
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
        if ok:
            self.state = State.OPEN
            return
        self.listener.count("handshake_failures")
        self.listener.closed_for("handshake")
        self.listener.log.warning("Handshake refused for %s (client hostname %r): %s.", self.peer, ping.hostname, reason)
        self.close()

    def _handshake_timed_out(self) -> None:
        if self.state is State.HANDSHAKE:
            self.listener.count("handshake_failures")
            self.listener.closed_for("handshake")
            self.listener.log.warning("Closing the connection from %s: no PING within handshake_timeout.", self.peer)
            self.close()

    # -- requests ----------------------------------------------------------------------------

    def _received(self, frame: Frame | Request, now_ns: int) -> None:
        if self.handshake is not None:
            raise ProtocolError("a request before the handshake completed")
        listener = self.listener
        listener.count("requests")
        warn_limit = self.settings.chunk_size_warn_limit
        if warn_limit is not None and frame.wire_size > warn_limit:
            listener.log.warning(
                "A request of %d bytes from %s is over chunk_size_warn_limit (%d).",
                frame.wire_size,
                self.peer,
                warn_limit,
            )
        self.pending.append(frame)
        self.pending_bytes += frame.wire_size
        self.admits.append(asyncio.get_running_loop().create_task(self._admit(frame, now_ns)))
        if self.worker is None or self.worker.done():
            self.worker = asyncio.get_running_loop().create_task(self._admit_pending())
        if self.settings.deny_keepalive:
            self.finish_then_close()  # one request per connection, as Fluentd's deny_keepalive

    async def _admit_pending(self) -> None:
        listener = self.listener
        while self.pending:
            frame = self.pending[0]
            try:
                admitted = await self.admits[0]
            except ProtocolError as exc:
                # Framed but not the forward protocol inside (a broken payload, an unknown mode):
                # not acked; what was received before it is still acked, then the connection closes.
                self._protocol_error(exc)
            except Exception:
                listener.count("admit_failures")
                listener.log.exception(
                    "Records from %s (tag %r) were not admitted; no ack is sent, so the client will send them again.",
                    self.peer,
                    frame.tag,
                )
            else:
                if admitted.chunk is not None and not self.transport.is_closing():
                    self.transport.write(encode_ack(admitted.chunk))
            self.pending_bytes -= self.pending.popleft().wire_size
            self.admits.popleft()
            self._decode_backlog()

    async def _admit(self, frame: Frame | Request, now_ns: int) -> Admitted:
        settings = self.settings
        listener = self.listener
        tag = settings.tag or frame.tag
        if settings.add_tag_prefix:
            tag = f"{settings.add_tag_prefix}.{tag}"
        extra: dict[str, Any] | None = None
        if settings.source_address_key or settings.source_hostname_key:
            extra = {}
            if settings.source_address_key:
                extra[settings.source_address_key] = self.peer_address
            if settings.source_hostname_key:
                extra[settings.source_hostname_key] = await self._peer_hostname()
        emitter = listener.emitter
        if isinstance(frame, Request):
            if extra:
                for _, record in frame.entries:
                    record.update(extra)
            admitted = Admitted(frame.chunk, frame.mode, frame.invalid, frame.markers, entries=frame.entries)
        else:
            decoding = Decoding(settings.limits, settings.skip_invalid_event, now_ns, extra)
            admitted = await emitter.admit_frame(tag, frame, decoding)
        if admitted.invalid:
            listener.invalid_events(admitted.invalid)
        while True:
            try:
                await emitter.commit(tag, admitted)
                listener.records_received(admitted.records)
                return admitted
            except BufferFullError as full:
                # Backpressure: keep the connection, stop reading it, wait for room, try again.
                listener.count("backpressure_waits")
                self._pause(Pause.OUTPUT_FULL)
                try:
                    await full.wait_for_room()
                finally:
                    self._resume(Pause.OUTPUT_FULL)

    async def _peer_hostname(self) -> str:
        if self.hostname is None:
            self.hostname = self.peer_address
            if self.peer_address:
                try:
                    loop = asyncio.get_running_loop()
                    host, _ = await asyncio.wait_for(loop.getnameinfo((self.peer_address, 0)), timeout=5)
                    self.hostname = host
                except (OSError, TimeoutError):
                    pass  # keep the address: a missing reverse record is not an error
        return self.hostname

    # -- flow control --------------------------------------------------------------------------

    def _full(self) -> bool:
        n = len(self.pending)
        return n >= MAX_PENDING_REQUESTS or (n >= PENDING_ALWAYS and self.pending_bytes >= PENDING_BYTES)

    def _pause(self, reason: Pause) -> None:
        """Stop reading for ``reason`` (the socket is paused with the first reason)."""
        reasons = self.pause_reasons
        if reason not in reasons:
            if not reasons and self.state in _READING and not self.transport.is_closing():
                self.transport.pause_reading()
            reasons.add(reason)

    def _resume(self, reason: Pause) -> None:
        """``reason`` is gone: read again if no other reason holds the socket."""
        reasons = self.pause_reasons
        if reason not in reasons:
            return
        reasons.discard(reason)
        if reasons:
            self._decode_backlog()  # the reason gone may have been what held the backlog
        else:
            self._read_again()

    def _decode_backlog(self) -> None:
        """Called when there may be room for the requests waiting in the decoder (an admit
        finished, resume_writing, the connection lost, shutdown): decode them, and once they are
        all decoded, read again (or close, after a half-close) if nothing else holds the socket."""
        reasons = self.pause_reasons
        if _PENDING_FULL not in reasons or self._full():
            return
        # Held while the client does not read its acks (each request decoded is one more ack for
        # a buffer nobody drains); decoded anyway at shutdown or once the client is gone (read
        # whole, so admitted: nothing that arrived whole is dropped).
        if _WRITING in reasons and _SHUTDOWN not in reasons:
            return
        if not self._decode():
            return  # full again, or closing
        reasons.discard(_PENDING_FULL)
        if self.state is _HALF_CLOSED:
            self.finish_then_close()  # the client's half-close came while the backlog waited
        elif not reasons:
            self._read_again()

    def _read_again(self) -> None:
        if self.state in _READING and not self.transport.is_closing():
            self.last_activity = time.monotonic()  # paused by us is not idle
            self.transport.resume_reading()

    def idle(self, since: float) -> bool:
        """Silent since before ``since`` (``time.monotonic()``) while free to read: not waiting for
        room in its destination nor for its client to read its acks (silence the server asked
        for), nothing pending, not already closing (closing it again would count and log it again
        while its last acks are flushed)."""
        return self.state in _READING and not self.pause_reasons and not self.pending and self.last_activity < since

    # -- closing -------------------------------------------------------------------------------

    def _stop_decoding(self) -> None:
        self.state = State.CLOSED if self.state is State.LOST or self.state is State.CLOSED else State.CLOSING
        self.pause_reasons.discard(Pause.PENDING_FULL)  # what the decoder still holds is dropped

    def finish_then_close(self) -> None:
        """Read no more, admit and ack what was already decoded, then close. Records that arrived
        whole are never thrown away because a later frame was bad."""
        self._stop_decoding()
        if self.transport and not self.transport.is_closing():
            self.transport.pause_reading()
        if self.worker is not None and not self.worker.done():
            self.worker.add_done_callback(lambda _: self.close())
        else:
            self.close()

    def close(self) -> None:
        """Close after pending writes (a refusing PONG, the last ack) are flushed."""
        self._stop_decoding()
        if self.transport and not self.transport.is_closing():
            self.transport.close()
            if Pause.SHUTDOWN not in self.pause_reasons:  # at shutdown, drain_and_close bounds it
                self.close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._close_timed_out)

    def _close_timed_out(self) -> None:
        if self.state is State.CLOSING and self.transport:
            self.listener.log.warning(
                "Dropping the connection from %s: it did not read its last acks within %ss of being closed.",
                self.peer,
                CLOSE_TIMEOUT,
            )
            self.transport.abort()

    async def drain_and_close(self, timeout: float) -> None:
        """At shutdown: stop reading for good, let the requests already received be admitted and
        acked (within ``timeout``), then close."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._pause(Pause.SHUTDOWN)
        self._decode_backlog()  # decodes a backlog already read (reading never resumes now)
        if self.worker is not None and not self.worker.done():
            try:
                await asyncio.wait_for(asyncio.shield(self.worker), timeout)
            except TimeoutError:
                self.listener.log.warning(
                    "%d request(s) from %s were not admitted before shutdown; they were not acked and the client will send them again.",
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
        except TimeoutError:
            self.listener.log.warning("Dropping the connection from %s at shutdown: it did not read its acks.", self.peer)
            if self.transport:
                self.transport.abort()
