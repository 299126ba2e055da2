"""The forward protocol's HELO / PING / PONG handshake (spec v1 "Handshake Messages"), as
Fluentd's in_forward implements it. Pure: the nonce and salt come in as arguments, and ``<client>``
hosts arrive already resolved to networks.

1. server -> ``["HELO", {"nonce", "auth", "keepalive"}]``
2. client -> ``["PING", hostname, salt, sha512_hex(salt + hostname + nonce + shared_key),
   username, sha512_hex(auth_salt + username + password)]``
3. server -> ``["PONG", true, "", self_hostname, sha512_hex(salt + self_hostname + nonce +
   shared_key)]``, or ``["PONG", false, reason, "", ""]`` and the connection is closed.

Digests are computed over raw bytes (the salt may arrive as str holding random bytes, as Fluent Bit
sends it, or as a hex str, as Fluentd does) and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from fluent_ld.forward.codec import Ping, encode_helo, encode_pong

__all__ = ["Client", "Handshake", "Security", "User"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class User:
    username: str
    password: str


@dataclass(frozen=True)
class Client:
    """A ``<client>``: the networks it covers, its own shared key (or the global one), and the
    users it may authenticate as (empty: any configured user)."""

    networks: tuple[Network, ...]
    shared_key: str | None = None
    users: tuple[str, ...] = ()


@dataclass(frozen=True)
class Security:
    self_hostname: str
    shared_key: str
    user_auth: bool = False
    users: tuple[User, ...] = ()
    allow_anonymous_source: bool = True
    clients: tuple[Client, ...] = field(default_factory=tuple)


def _hexdigest(*parts: bytes) -> str:
    h = hashlib.sha512()
    for part in parts:
        h.update(part)
    return h.hexdigest()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))


class Handshake:
    """One connection's handshake. ``nonce`` and ``auth_salt`` must be fresh random bytes (16 each)
    per connection; ``auth_salt`` is sent only when user authentication is on."""

    def __init__(self, security: Security, peer: str, nonce: bytes, auth_salt: bytes, keepalive: bool = True) -> None:
        self.security = security
        self.peer = peer
        self.nonce = nonce
        self.auth_salt = auth_salt if security.user_auth else b""
        self.keepalive = keepalive

    def helo(self) -> bytes:
        return encode_helo(self.nonce, self.auth_salt, self.keepalive)

    def _client(self) -> Client | None:
        try:
            address = ipaddress.ip_address(self.peer)
        except ValueError:  # a Unix socket peer has no address: only anonymous rules apply
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        for client in self.security.clients:
            if any(address.version == n.version and address in n for n in client.networks):
                return client
        return None

    def check(self, ping: Ping) -> tuple[bool, str, bytes]:
        """Check a PING; returns (accepted, reason, PONG bytes to send). On refusal, send the PONG
        and close the connection."""
        ok, reason, shared_key = self._verify(ping)
        if not ok:
            return False, reason, encode_pong(False, reason, "", "")
        sec = self.security
        digest = _hexdigest(ping.salt, sec.self_hostname.encode(), self.nonce, shared_key.encode())
        return True, "", encode_pong(True, "", sec.self_hostname, digest)

    def _verify(self, ping: Ping) -> tuple[bool, str, str]:
        sec = self.security
        client = self._client()
        if client is None and not sec.allow_anonymous_source:
            return False, f"anonymous source host '{self.peer}' denied", ""
        if ping.hostname == sec.self_hostname:
            return False, "same hostname between input and output: invalid configuration", ""
        shared_key = client.shared_key if client and client.shared_key is not None else sec.shared_key
        expected = _hexdigest(ping.salt, ping.hostname.encode("utf-8", "surrogateescape"), self.nonce, shared_key.encode())
        if not _same(ping.digest, expected):
            return False, "shared_key mismatch", ""
        if sec.user_auth and not self._user_ok(ping, client):
            return False, "username/password mismatch", ""
        return True, "", shared_key

    def _user_ok(self, ping: Ping, client: Client | None) -> bool:
        allowed: Sequence[str] = client.users if client and client.users else [u.username for u in self.security.users]
        ok = False
        for user in self.security.users:
            if user.username not in allowed:
                continue
            expected = _hexdigest(self.auth_salt, user.username.encode(), user.password.encode())
            # Check every user (no early exit) so the time taken does not tell which name exists.
            ok |= _same(ping.username, user.username) & _same(ping.password_digest, expected)
        return ok
