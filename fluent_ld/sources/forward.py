"""``@type forward``: receive records from Fluent Bit, Fluentd or any forward client, as a Fluentd
node does (Fluentd's in_forward parameters, where the meaning is the same)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl
import time
from typing import Any

from fluent_ld import metrics
from fluent_ld.config.errors import ConfigError
from fluent_ld.config.params import (
    REQUIRED,
    Arg,
    Array,
    Bool,
    Enum,
    Integer,
    Param,
    Section,
    Size,
    String,
    Time,
)
from fluent_ld.forward.codec import DecoderLimits
from fluent_ld.forward.handshake import Client, Security, User
from fluent_ld.plugin import Source, StartError
from fluent_ld.sources.forward_connection import ConnectionSettings, ForwardConnection

TRANSPORT = Section(
    "transport",
    "How connections are secured: `tcp` (plain, the default) or `tls`.",
    params=(
        Param("cert_path", String(), None, "The server certificate (PEM), with its chain."),
        Param("private_key_path", String(), None, "The server's private key (PEM)."),
        Param("private_key_passphrase", String(), None, "The passphrase of the private key.", secret=True),
        Param("client_cert_auth", Bool(), False, "Require clients to present a certificate signed by `ca_path`."),
        Param("ca_path", String(), None, "CA certificates (PEM) that client certificates must chain to."),
        Param("min_version", Enum("TLS1_2", "TLS1_3"), "TLS1_2", "The oldest TLS version accepted."),
    ),
    arg=Arg("protocol", "tcp or tls.", Enum("tcp", "tls")),
)

SECURITY = Section(
    "security",
    "The shared-key handshake (HELO/PING/PONG) that Fluentd's and Fluent Bit's out_forward speak.",
    params=(
        Param("self_hostname", String(), REQUIRED, "This node's name in the handshake; must differ from the clients'."),
        Param("shared_key", String(), REQUIRED, "The key clients must prove they know.", secret=True),
        Param("user_auth", Bool(), False, "Also require a username and password (`<user>` sections)."),
        Param(
            "allow_anonymous_source",
            Bool(),
            True,
            "Accept clients that no `<client>` section covers.",
        ),
    ),
    sections=(
        Section(
            "user",
            "A user allowed to connect when `user_auth` is on.",
            params=(
                Param("username", String(), REQUIRED, "The user name."),
                Param("password", String(), REQUIRED, "The password.", secret=True),
            ),
            multi=True,
        ),
        Section(
            "client",
            "Clients by host name or network, with their own shared key or users.",
            params=(
                Param("host", String(), None, "A client host name or address (resolved at start)."),
                Param("network", String(), None, "A client network in CIDR form, e.g. 10.0.0.0/8."),
                Param("shared_key", String(), None, "This client's shared key (default: the global one).", secret=True),
                Param("users", Array(), [], "Users this client may authenticate as (default: any)."),
            ),
            multi=True,
        ),
    ),
)


class ForwardSource(Source):
    type_name = "forward"
    summary = "Receives records over the Fluent forward protocol (Fluent Bit, Fluentd, forward clients)."
    section = Section(
        "source",
        summary,
        params=(
            Param("bind", String(), "127.0.0.1", "The address to listen on (0.0.0.0: every interface)."),
            Param("port", Integer(0, 65535), 24224, "The TCP port, also used for the UDP heartbeat (0: any free port)."),
            Param("path", String(), None, "Listen on this Unix socket instead of TCP."),
            Param("tag", String(), None, "Replace the tag of every record with this one."),
            Param("add_tag_prefix", String(), None, "Prefix every tag with this (and a dot)."),
            Param("source_address_key", String(), None, "Add the client's IP address to each record under this key."),
            Param("source_hostname_key", String(), None, "Add the client's host name (reverse DNS) under this key."),
            Param("chunk_size_warn_limit", Size(min=1), None, "Log a warning for requests larger than this."),
            Param("chunk_size_limit", Size(min=1024), 32 * 1024 * 1024, "The largest request accepted; a larger one closes its connection and is not acked."),
            Param("decompression_size_limit", Size(min=1024), 128 * 1024 * 1024, "The most a compressed request may inflate to."),
            Param("skip_invalid_event", Bool(), True, "Skip (and count) entries that are not [time, record]; false closes the connection instead."),
            Param("deny_keepalive", Bool(), False, "Close each connection after its first request."),
            Param("max_connections", Integer(1, 1_000_000), 1024, "Connections served at once; more are refused."),
            Param("idle_timeout", Time(min=0), 3600.0, "Close a connection silent this long (0: never)."),
            Param("handshake_timeout", Time(min=0.001), 30.0, "Close a connection that has not sent its PING by then."),
            Param("shutdown_timeout", Time(min=0), 10.0, "At shutdown, how long requests already received may take to be admitted and acked."),
        ),
        sections=(TRANSPORT, SECURITY),
    )

    @classmethod
    def check(cls, conf) -> list[ConfigError]:
        label = "<source> @type forward"
        errors = []
        transport = conf.transport
        if transport is not None and transport.arg == "tls":
            for name in ("cert_path", "private_key_path"):
                if not transport[name]:
                    errors.append(ConfigError(transport.where, f"{label} <transport tls>: missing required parameter '{name}'"))
            if transport.client_cert_auth and not transport.ca_path:
                errors.append(ConfigError(transport.where_of("client_cert_auth"), f"{label} <transport tls>: client_cert_auth needs 'ca_path'"))
        security = conf.security
        if security is not None:
            if security.user_auth and not security.user:
                errors.append(ConfigError(security.where_of("user_auth"), f"{label} <security>: user_auth needs at least one <user>"))
            for client in security.client:
                if bool(client.host) == bool(client.network):
                    errors.append(ConfigError(client.where, f"{label} <security> <client>: give exactly one of 'host' or 'network'"))
                elif client.network:
                    try:
                        ipaddress.ip_network(client.network, strict=False)
                    except ValueError as exc:
                        errors.append(ConfigError(client.where_of("network"), f"{label} <security> <client>: parameter 'network': {exc}"))
                known = {u.username for u in security.user}
                for name in client.users:
                    if name not in known:
                        errors.append(ConfigError(client.where_of("users"), f"{label} <security> <client>: user '{name}' has no <user> section"))
        return errors

    def __init__(self, conf, plugin_id, emitter) -> None:
        super().__init__(conf, plugin_id, emitter)
        self.connections: set[ForwardConnection] = set()
        self.security: Security | None = None
        self.settings = self._settings()
        self.port: int | None = None
        self._server: asyncio.AbstractServer | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._sweeper: asyncio.Task | None = None
        self.stopping = False  # new connections are refused from here on
        worker = str(getattr(emitter, "worker", 0))
        self.accepted = metrics.FORWARD_CONNECTIONS.labels(plugin_id, worker)
        self.received = metrics.RECORDS_RECEIVED.labels(plugin_id)
        self.invalid = metrics.RECORDS_REJECTED.labels(plugin_id, "invalid_event")

    def _settings(self) -> ConnectionSettings:
        conf = self.conf
        return ConnectionSettings(
            limits=DecoderLimits(conf.chunk_size_limit, conf.decompression_size_limit),
            skip_invalid_event=conf.skip_invalid_event,
            tag=conf.tag,
            add_tag_prefix=conf.add_tag_prefix,
            source_address_key=conf.source_address_key,
            source_hostname_key=conf.source_hostname_key,
            chunk_size_warn_limit=conf.chunk_size_warn_limit,
            deny_keepalive=conf.deny_keepalive,
            handshake_timeout=conf.handshake_timeout,
            security=self.security,
        )

    # -- what connections ask of their source (forward_connection.Listener) -----------------------

    def register(self, conn: ForwardConnection) -> bool:
        if self.stopping:
            # Accepted just as the source stopped: stop() has already listed the connections to
            # drain, so this one would never be closed (on Python 3.12+ stop() would then wait for it).
            return False
        if len(self.connections) >= self.conf.max_connections:
            self.count("connections_refused")
            self.closed_for("refused")
            self.log.warning("Refusing a connection from %s: max_connections (%d) reached.", conn.peer, self.conf.max_connections)
            return False
        self.connections.add(conn)
        self.count("connections")
        self.accepted.inc()
        return True

    def unregister(self, conn: ForwardConnection) -> None:
        self.connections.discard(conn)

    def closed_for(self, reason: str) -> None:
        """Count a connection closed (or refused) for a reason: protocol, handshake, refused, idle."""
        metrics.FORWARD_ERRORS.labels(self.id, reason).inc()

    def records_received(self, n: int) -> None:
        self.stats["records"] += n
        self.received.inc(n)

    def invalid_events(self, n: int) -> None:
        self.stats["invalid_events"] += n
        self.invalid.inc(n)

    async def refresh_metrics(self) -> None:
        metrics.FORWARD_OPEN.labels(self.id).set(len(self.connections))

    async def start(self) -> None:
        conf = self.conf
        loop = asyncio.get_running_loop()
        if conf.security is not None:
            self.security = await self._security(conf.security)
            self.settings = self._settings()
        tls = self._tls_context()
        try:
            if conf.path:
                if os.path.exists(conf.path) and not os.path.isdir(conf.path):
                    os.unlink(conf.path)  # a stale socket from a previous run
                self._server = await loop.create_unix_server(lambda: ForwardConnection(self), conf.path, ssl=tls, backlog=1024)
                where = f"unix:{conf.path}"
            else:
                # Workers each bind the same port; the kernel spreads connections across them.
                shared = getattr(self.emitter, "workers", 1) > 1
                self._server = await loop.create_server(
                    lambda: ForwardConnection(self),
                    conf.bind,
                    conf.port,
                    ssl=tls,
                    backlog=1024,
                    reuse_address=True,
                    reuse_port=shared or None,
                )
                self.port = self._server.sockets[0].getsockname()[1]
                self._udp, _ = await loop.create_datagram_endpoint(_Heartbeat, local_addr=(conf.bind, self.port), reuse_port=shared or None)
                where = f"{conf.bind}:{self.port}"
        except OSError as exc:
            await self.stop()
            target = conf.path or f"{conf.bind}:{conf.port}"
            raise StartError(f"cannot listen on {target}: {exc.strerror or exc}") from exc
        if conf.idle_timeout:  # 0: idle connections are never closed (handshake_timeout is per connection)
            self._sweeper = loop.create_task(self._sweep_idle(conf.idle_timeout), name=f"{self.id}: idle sweeper")
        extras = [("tls" if tls else "tcp")]
        if not conf.path:
            extras.append("udp heartbeat")
        if self.security is not None:
            extras.append("shared-key handshake")
        self.log.info("Listening for forward clients on %s (%s).", where, ", ".join(extras))

    async def stop(self) -> None:
        self.stopping = True
        if self._server is not None:
            self._server.close()
        if self._udp is not None:
            self._udp.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await asyncio.gather(
            *(c.drain_and_close(self.conf.shutdown_timeout) for c in list(self.connections)),
            return_exceptions=True,
        )
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self.conf.path and os.path.exists(self.conf.path):
            os.unlink(self.conf.path)

    async def _sweep_idle(self, idle: float) -> None:
        """Close the connections silent for ``idle`` seconds (ForwardConnection.idle), looking four
        times per ``idle`` (every 50 ms to 5 s)."""
        period = max(0.05, min(idle / 4, 5.0))
        while True:
            await asyncio.sleep(period)
            cutoff = time.monotonic() - idle
            for conn in list(self.connections):
                if conn.idle(cutoff):
                    self.count("idle_closed")
                    self.closed_for("idle")
                    self.log.info("Closing the connection from %s: idle for %ss.", conn.peer, idle)
                    conn.close()

    async def _security(self, sec) -> Security:
        loop = asyncio.get_running_loop()
        clients = []
        for client in sec.client:
            networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
            if client.network:
                networks = (ipaddress.ip_network(client.network, strict=False),)
            else:
                try:
                    infos = await loop.getaddrinfo(client.host, None, type=socket.SOCK_STREAM)
                except OSError as exc:
                    raise StartError(f"{client.where}: <client> host {client.host!r} cannot be resolved: {exc}") from exc
                networks = tuple({ipaddress.ip_network(info[4][0]) for info in infos})
            key = client.shared_key.reveal() if client.shared_key is not None else None
            clients.append(Client(networks, key, tuple(client.users)))
        return Security(
            self_hostname=sec.self_hostname,
            shared_key=sec.shared_key.reveal(),
            user_auth=sec.user_auth,
            users=tuple(User(u.username, u.password.reveal()) for u in sec.user),
            allow_anonymous_source=sec.allow_anonymous_source,
            clients=tuple(clients),
        )

    def _tls_context(self) -> ssl.SSLContext | None:
        transport = self.conf.transport
        if transport is None or transport.arg != "tls":
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3 if transport.min_version == "TLS1_3" else ssl.TLSVersion.TLSv1_2
        passphrase = transport.private_key_passphrase
        try:
            context.load_cert_chain(
                transport.cert_path,
                transport.private_key_path,
                password=passphrase.reveal() if passphrase is not None else None,
            )
            if transport.client_cert_auth:
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(transport.ca_path)
        except (OSError, ssl.SSLError) as exc:
            raise StartError(f"{transport.where}: <transport tls>: cannot load the certificates: {exc}") from exc
        return context


class _Heartbeat(asyncio.DatagramProtocol):
    """Fluentd's UDP heartbeat: any datagram to the forward port is answered with one zero byte."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(b"\0", addr)
