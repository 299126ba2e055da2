"""``@type forward`` output: records to another Fluent node (Fluentd, Fluent Bit, fluent-ld) over
the forward protocol, held in the durable store until that node acknowledges them.

Each frozen batch is one PackedForward request of one tag (optionally gzip-compressed) whose
``chunk`` is the batch's payload id, so a resend after a missing or mismatched ack carries the same
id. Servers: weighted choice among the healthy non-standby ones, standby servers when none is
healthy; a failed server is probed (TCP connect, as Fluentd's transport heartbeat) until it answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import ssl
import time
from dataclasses import dataclass, field

import msgpack

from fluent_ld import metrics
from fluent_ld.config.errors import ConfigError
from fluent_ld.config.params import REQUIRED, Bool, Enum, Integer, Param, Section, String, Time
from fluent_ld.encode import gzip_body
from fluent_ld.outputs.buffer import BUFFER
from fluent_ld.outputs.durable import DurableOutput
from fluent_ld.outputs.outcome import Delivered, Outcome, transport_failure
from fluent_ld.pipeline.admission import ForwardEncoder
from fluent_ld.store import Batch

SERVER = Section(
    "server",
    "A node to send to; several give load balancing and failover.",
    params=(
        Param("host", String(), REQUIRED, "Its host name or address."),
        Param("port", Integer(1, 65535), 24224, "Its forward port."),
        Param("name", String(), None, "A name for logs (default host:port)."),
        Param("weight", Integer(1, 1000), 60, "Its share of the batches among the servers in use."),
        Param("standby", Bool(), False, "Used only while no other server is healthy."),
        Param("username", String(), "", "The user for the handshake when the server requires user authentication."),
        Param("password", String(), "", "That user's password.", secret=True),
    ),
    multi=True,
    required=True,
)

SECURITY = Section(
    "security",
    "The shared-key handshake the receiving node requires.",
    params=(
        Param("self_hostname", String(), REQUIRED, "This node's name in the handshake; must differ from the server's."),
        Param("shared_key", String(), REQUIRED, "The shared key.", secret=True),
    ),
)


# What a receiver sends back (an ack, HELO, PONG) is a few hundred bytes; one that sends more
# than this without completing a message is broken, and its connection is dropped.
REPLY_LIMIT = 64 * 1024


@dataclass
class _Server:
    host: str
    port: int
    name: str
    weight: int
    standby: bool
    username: str
    password: str
    healthy: bool = True
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter, msgpack.Unpacker] | None = field(default=None, repr=False)


class _SendError(Exception):
    pass


class ForwardOutput(DurableOutput):
    type_name = "forward"
    separator = b""  # a batch's data is its entries' msgpack, one after another
    framing = 0
    keeps_tags = True  # a request carries one tag
    noun = "records"
    summary = "Sends records to another Fluent node (Fluentd, Fluent Bit, fluent-ld) over the forward protocol, durably."
    section = Section(
        "match",
        summary,
        params=(
            Param("require_ack_response", Bool(), False, "Wait for the receiver's ack before a batch counts as delivered (resend otherwise)."),
            Param("ack_response_timeout", Time(min=0.01), 190.0, "How long to wait for an ack before resending."),
            Param("compress", Enum("text", "gzip"), "text", "gzip sends CompressedPackedForward."),
            Param("connect_timeout", Time(min=0.01), 10.0, "How long a connection (and its handshake) may take."),
            Param("send_timeout", Time(min=0.01), 60.0, "How long writing one batch may take."),
            Param("heartbeat_interval", Time(min=0.01), 1.0, "How often a failed server is probed."),
            Param("transport", Enum("tcp", "tls"), "tcp", "tls encrypts the connections."),
            Param("tls_ca_cert_path", String(), None, "CA certificates (PEM) to verify the servers (default: the system's)."),
            Param("tls_verify_hostname", Bool(), True, "Check that the server certificate names the host."),
            Param("tls_insecure_mode", Bool(), False, "Skip certificate verification entirely (tests only)."),
        ),
        sections=(SERVER, SECURITY, BUFFER),
    )

    @classmethod
    def check(cls, conf) -> list[ConfigError]:
        errors = super().check(conf)
        if not any(not s.standby for s in conf.server):
            errors.append(ConfigError(conf.where, "<match> @type forward: at least one <server> must not be a standby"))
        return errors

    def __init__(self, conf, plugin_id, worker: int = 0) -> None:
        super().__init__(conf, plugin_id, worker)
        self.servers = [_Server(s.host, s.port, s.name or f"{s.host}:{s.port}", s.weight, s.standby, s.username, s.password.reveal()) for s in conf.server]
        self.encoder = ForwardEncoder()
        self._heartbeat_task: asyncio.Task | None = None

    async def open(self) -> None:
        self._heartbeat_task = asyncio.get_running_loop().create_task(self._heartbeat(), name=f"heartbeat:{self.id}")

    async def close(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
        for server in self.servers:
            self._drop(server)

    def started(self) -> str:
        return "Forwarding to " + ", ".join(s.name + (" (standby)" if s.standby else "") for s in self.servers) + "."

    async def deliver(self, batch: Batch) -> Outcome:
        server = self._pick()
        if server is None:
            return transport_failure("no server is reachable", batch.attempts, self.policy, random.random())
        started = time.perf_counter()
        try:
            await self._write(server, batch)
        except (TimeoutError, OSError, _SendError, ssl.SSLError, msgpack.UnpackException, ValueError) as exc:
            metrics.REQUESTS.labels(self.id, "error").inc()
            self._failed_server(server, exc)
            return transport_failure(f"{server.name}: {exc or type(exc).__name__}", batch.attempts, self.policy, random.random())
        metrics.REQUESTS.labels(self.id, "ack").inc()
        metrics.REQUEST_SECONDS.labels(self.id).observe(time.perf_counter() - started)
        return Delivered()

    def delivered(self, batch: Batch) -> None:
        self.count("records_forwarded", batch.count)

    def _pick(self) -> _Server | None:
        for standby in (False, True):
            usable = [s for s in self.servers if s.healthy and s.standby == standby]
            if usable:
                return random.choices(usable, weights=[s.weight for s in usable])[0]
        return None

    def _failed_server(self, server: _Server, exc: BaseException) -> None:
        if server.healthy:
            self.log.warning(
                "Server %s failed (%s): trying the others and probing it every %gs.", server.name, exc or type(exc).__name__, self.conf.heartbeat_interval
            )
        server.healthy = False
        self._drop(server)

    def _drop(self, server: _Server) -> None:
        if server.conn is not None:
            server.conn[1].close()
            server.conn = None

    async def _write(self, server: _Server, batch: Batch) -> None:
        conf = self.conf
        reader, writer, unpacker = await self._connection(server)
        option: dict = {"size": batch.count, "chunk": batch.payload_id}
        payload = batch.data
        if conf.compress == "gzip":
            payload = gzip_body(payload)
            option["compressed"] = "gzip"
        writer.write(msgpack.packb([batch.tag or "fluent_ld", payload, option], use_bin_type=True))
        await asyncio.wait_for(writer.drain(), conf.send_timeout)
        if conf.require_ack_response:
            reply = await asyncio.wait_for(_read(reader, unpacker), conf.ack_response_timeout)
            if not isinstance(reply, dict) or reply.get("ack") != batch.payload_id:
                raise _SendError(f"ack mismatch: expected {batch.payload_id!r}, got {reply!r}")

    async def _connection(self, server: _Server):
        if server.conn is not None and not server.conn[1].is_closing():
            return server.conn
        conf = self.conf
        tls = self._tls_context() if conf.transport == "tls" else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(server.host, server.port, ssl=tls, server_hostname=server.host if tls else None),
            conf.connect_timeout,
        )
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=REPLY_LIMIT)
        try:
            if conf.security is not None:
                await asyncio.wait_for(self._handshake(server, reader, writer, unpacker), conf.connect_timeout)
        except BaseException:
            writer.close()
            raise
        server.conn = (reader, writer, unpacker)
        return server.conn

    async def _handshake(self, server: _Server, reader, writer, unpacker) -> None:
        """The client side of HELO / PING / PONG, as Fluentd's out_forward does it."""
        sec = self.conf.security
        key = sec.shared_key.reveal().encode()
        helo = await _read(reader, unpacker)
        if not (isinstance(helo, list) and len(helo) == 2 and helo[0] == "HELO" and isinstance(helo[1], dict)):
            raise _SendError(f"expected HELO, got {helo!r}")
        nonce = _raw(helo[1].get("nonce", b""))
        auth = _raw(helo[1].get("auth", b""))
        salt = os.urandom(16).hex().encode()
        me = sec.self_hostname.encode()
        digest = hashlib.sha512(salt + me + nonce + key).hexdigest()
        password = hashlib.sha512(auth + server.username.encode() + server.password.encode()).hexdigest() if auth else ""
        writer.write(msgpack.packb(["PING", sec.self_hostname, salt.decode(), digest, server.username, password]))
        await writer.drain()
        pong = await _read(reader, unpacker)
        if not (isinstance(pong, list) and len(pong) == 5 and pong[0] == "PONG"):
            raise _SendError(f"expected PONG, got {pong!r}")
        _, ok, reason, their_name, their_digest = pong
        if not ok:
            raise _SendError(f"handshake refused: {reason}")
        if their_name == sec.self_hostname:
            raise _SendError("the server has this node's own self_hostname")
        expected = hashlib.sha512(salt + str(their_name).encode() + nonce + key).hexdigest()
        if their_digest != expected:
            raise _SendError("the server's handshake digest is wrong (another shared key?)")

    def _tls_context(self) -> ssl.SSLContext:
        conf = self.conf
        context = ssl.create_default_context(cafile=conf.tls_ca_cert_path)
        if conf.tls_insecure_mode:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif not conf.tls_verify_hostname:
            context.check_hostname = False
        return context

    async def _heartbeat(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.conf.heartbeat_interval)
            for server in self.servers:
                if server.healthy:
                    continue
                try:
                    _, writer = await asyncio.wait_for(asyncio.open_connection(server.host, server.port), self.conf.connect_timeout)
                    writer.close()
                except (TimeoutError, OSError):
                    continue
                server.healthy = True
                self.log.info("Server %s answers again.", server.name)
                self.wake.set()


async def _read(reader: asyncio.StreamReader, unpacker: msgpack.Unpacker):
    while True:
        for obj in unpacker:
            return obj
        data = await reader.read(65536)
        if not data:
            raise _SendError("the server closed the connection")
        try:
            unpacker.feed(data)
        except msgpack.BufferFull:
            raise _SendError(f"the server sent more than {REPLY_LIMIT} bytes without completing a reply") from None


def _raw(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
