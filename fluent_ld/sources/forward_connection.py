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

from fluent_ld.forward.codec import Decoder, Heartbeat, Ping, ProtocolError, Request, encode_ack
from fluent_ld.forward.handshake import Handshake
from fluent_ld.plugin import BufferFullError

if TYPE_CHECKING:
    from fluent_ld.sources.forward import ForwardSource

# Requests decoded but not yet admitted, per connection. Past this the socket stops being read, so
# a fast client waits in its own send buffer rather than in our memory (one request can be up to
# chunk_size_limit, so this also bounds a connection's memory at a few chunks).
MAX_PENDING_REQUESTS = 4


class ForwardConnection(asyncio.Protocol):
    def __init__(self, source: ForwardSource) -> None:
        self.source = source
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self.peer_address = ""
        self.hostname: str | None = None
        self.decoder = Decoder(source.limits, source.conf.skip_invalid_event)
        self.handshake: Handshake | None = None
        self.pending: deque[Request] = deque()
        self.worker: asyncio.Task | None = None
        self.paused = False
        self.closing = False
        self.last_activity = time.monotonic()
        self.handshake_timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer_address = peer[0]
            self.peer = f"{peer[0]}:{peer[1]}"
        else:
            self.peer = "unix socket"
        source = self.source
        if len(source.connections) >= source.conf.max_connections:
            source.count("connections_refused")
            source.log.warning(
                "Refusing a connection from %s: max_connections (%d) reached.",
                self.peer,
                source.conf.max_connections,
            )
            transport.abort()
            return
        source.connections.add(self)
        source.count("connections")
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
        self.closing = True
        self.source.connections.discard(self)
        if self.handshake_timer:
            self.handshake_timer.cancel()

    def pause_writing(self) -> None:
        # The client does not read its acks: stop reading its requests until it does.
        self._pause("client not reading acks")

    def resume_writing(self) -> None:
        self._maybe_resume()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_activity = time.monotonic()
        try:
            self.decoder.receive_data(data)
            now = time.time_ns()
            while not self.closing:
                event = self.decoder.next_event(now)
                if type(event) is Request:
                    self._received(event)
                elif type(event) is Ping:
                    self._ping(event)
                elif type(event) is Heartbeat:
                    continue
                else:  # NEED_DATA
                    break
        except ProtocolError as exc:
            self.source.count("protocol_errors")
            self.source.log.warning("Closing the connection from %s: %s.", self.peer, exc)
            self.finish_then_close()

    def eof_received(self) -> bool:
        # Half-close from the client: finish what it sent (and ack it), then close.
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
            self.source.log.warning(
                "Handshake refused for %s (client hostname %r): %s.", self.peer, ping.hostname, reason
            )
            self.close()

    def _handshake_timed_out(self) -> None:
        if self.handshake is not None and not self.closing:
            self.source.count("handshake_failures")
            self.source.log.warning("Closing the connection from %s: no PING within handshake_timeout.", self.peer)
            self.close()

    # -- requests ----------------------------------------------------------------------------

    def _received(self, request: Request) -> None:
        if self.handshake is not None:
            raise ProtocolError("a request before the handshake completed")
        source = self.source
        source.count("requests")
        if request.invalid:
            source.count("invalid_events", request.invalid)
        warn_limit = source.conf.chunk_size_warn_limit
        if warn_limit is not None and request.wire_size > warn_limit:
            source.log.warning(
                "A request of %d bytes from %s is over chunk_size_warn_limit (%d).",
                request.wire_size,
                self.peer,
                source.conf.chunk_size_warn_limit,
            )
        self.pending.append(request)
        if self.worker is None or self.worker.done():
            self.worker = asyncio.get_running_loop().create_task(self._admit_pending())
        if source.conf.deny_keepalive:
            self.finish_then_close()  # one request per connection, as Fluentd's deny_keepalive
        elif len(self.pending) >= MAX_PENDING_REQUESTS:
            self._pause("requests pending")

    async def _admit_pending(self) -> None:
        source = self.source
        while self.pending:
            request = self.pending[0]
            try:
                await self._admit(request)
            except Exception:
                source.count("admit_failures")
                source.log.exception(
                    "Records from %s (tag %r) were not admitted; no ack is sent, so the client "
                    "will send them again.",
                    self.peer,
                    request.tag,
                )
            else:
                if request.chunk is not None and not self.transport.is_closing():
                    self.transport.write(encode_ack(request.chunk))
            self.pending.popleft()
            self._maybe_resume()

    async def _admit(self, request: Request) -> None:
        source = self.source
        conf = source.conf
        tag = conf.tag or request.tag
        if conf.add_tag_prefix:
            tag = f"{conf.add_tag_prefix}.{tag}"
        entries = request.entries
        if conf.source_address_key or conf.source_hostname_key:
            extra: dict[str, Any] = {}
            if conf.source_address_key:
                extra[conf.source_address_key] = self.peer_address
            if conf.source_hostname_key:
                extra[conf.source_hostname_key] = await self._peer_hostname()
            for _, record in entries:
                record.update(extra)
        while True:
            try:
                if entries:
                    await source.emitter.emit(tag, entries)
                source.count("records", len(entries))
                return
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

    def _pause(self, why: str) -> None:
        if not self.paused and self.transport and not self.transport.is_closing():
            self.paused = True
            self.transport.pause_reading()

    def _maybe_resume(self) -> None:
        if (
            self.paused
            and len(self.pending) < MAX_PENDING_REQUESTS
            and self.transport
            and not self.transport.is_closing()
            and self.transport.get_write_buffer_size() <= self.transport.get_write_buffer_limits()[1]
        ):
            self.paused = False
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

    async def drain_and_close(self, timeout: float) -> None:
        """At shutdown: stop reading, let the requests already decoded be admitted and acked
        (within ``timeout``), then close."""
        if self.transport and not self.transport.is_closing():
            self.transport.pause_reading()
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
        self.close()
