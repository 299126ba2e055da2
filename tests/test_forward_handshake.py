"""The HELO/PING/PONG handshake matrix, with digests computed as Fluentd's and Fluent Bit's
out_forward compute them."""

import hashlib
import ipaddress

import msgpack
import pytest

from fluent_ld.forward.codec import NEED_DATA, Decoder
from fluent_ld.forward.handshake import Client, Handshake, Security, User

NONCE = bytes(range(16))
AUTH = bytes(range(16, 32))


def sha512(*parts: bytes) -> str:
    return hashlib.sha512(b"".join(parts)).hexdigest()


def ping_bytes(hostname="client", key="k3y", salt=b"0123456789abcdef", user="", password="", auth=AUTH, salt_as_str=True):
    digest = sha512(salt, hostname.encode(), NONCE, key.encode())
    password_digest = sha512(auth, user.encode(), password.encode()) if user else ""
    message = ["PING", hostname, salt, digest, user, password_digest]
    # Fluentd sends the salt as a (hex) str; Fluent Bit as raw random bytes in a str.
    packed = msgpack.packb(message, use_bin_type=not salt_as_str)
    decoder = Decoder()
    decoder.receive_data(packed)
    ping = decoder.next_event(0)
    assert ping is not NEED_DATA
    return ping


def pong(raw: bytes) -> list:
    return msgpack.unpackb(raw, raw=False)


SEC = Security(self_hostname="fluent-ld", shared_key="k3y")


def test_helo_carries_nonce_auth_and_keepalive():
    hs = Handshake(Security("fluent-ld", "k", user_auth=True, users=(User("u", "p"),)), "127.0.0.1", NONCE, AUTH)
    assert msgpack.unpackb(hs.helo(), raw=False) == ["HELO", {"nonce": NONCE, "auth": AUTH, "keepalive": True}]
    hs = Handshake(SEC, "127.0.0.1", NONCE, AUTH, keepalive=False)
    assert msgpack.unpackb(hs.helo(), raw=False) == ["HELO", {"nonce": NONCE, "auth": b"", "keepalive": False}]


@pytest.mark.parametrize(
    "salt, as_str",
    [
        (b"0123456789abcdef0123456789abcdef", True),  # Fluentd: a hex string
        (bytes(range(200, 216)), True),  # Fluent Bit: random bytes inside a str
        (bytes(range(200, 216)), False),  # the same as bin
    ],
    ids=["fluentd-hex-str", "fluent-bit-raw-str", "bin"],
)
def test_good_ping_gets_a_pong_the_client_can_verify(salt, as_str):
    ok, reason, reply = Handshake(SEC, "127.0.0.1", NONCE, AUTH).check(ping_bytes(salt=salt, salt_as_str=as_str))
    assert (ok, reason) == (True, "")
    assert pong(reply) == ["PONG", True, "", "fluent-ld", sha512(salt, b"fluent-ld", NONCE, b"k3y")]


@pytest.mark.parametrize(
    "security, peer, ping, reason",
    [
        (SEC, "127.0.0.1", dict(key="wrong"), "shared_key mismatch"),
        (SEC, "127.0.0.1", dict(hostname="fluent-ld"), "same hostname between input and output: invalid configuration"),
        (
            Security("fluent-ld", "k3y", allow_anonymous_source=False, clients=(Client((ipaddress.ip_network("10.0.0.0/8"),)),)),
            "127.0.0.1",
            {},
            "anonymous source host '127.0.0.1' denied",
        ),
        (
            Security("fluent-ld", "k3y", user_auth=True, users=(User("alice", "pw"),)),
            "127.0.0.1",
            dict(user="alice", password="nope"),
            "username/password mismatch",
        ),
        (
            Security("fluent-ld", "k3y", user_auth=True, users=(User("alice", "pw"),)),
            "127.0.0.1",
            dict(user="bob", password="pw"),
            "username/password mismatch",
        ),
        (
            Security(
                "fluent-ld",
                "k3y",
                user_auth=True,
                users=(User("alice", "pw"), User("bob", "pw2")),
                clients=(Client((ipaddress.ip_network("127.0.0.0/8"),), users=("alice",)),),
            ),
            "127.0.0.1",
            dict(user="bob", password="pw2"),
            "username/password mismatch",
        ),
    ],
    ids=["wrong-key", "same-hostname", "denied-network", "bad-password", "unknown-user", "user-not-allowed-for-client"],
)
def test_refusals(security, peer, ping, reason):
    ok, got, reply = Handshake(security, peer, NONCE, AUTH).check(ping_bytes(**ping))
    assert (ok, got) == (False, reason)
    assert pong(reply) == ["PONG", False, reason, "", ""]


def test_user_auth_and_per_client_shared_key():
    security = Security(
        "fluent-ld",
        "global",
        user_auth=True,
        users=(User("alice", "pw"),),
        allow_anonymous_source=False,
        clients=(Client((ipaddress.ip_network("192.168.0.0/16"), ipaddress.ip_network("::1/128")), shared_key="per-client"),),
    )
    for peer in ("192.168.3.4", "::ffff:192.168.3.4", "::1"):
        ok, reason, _ = Handshake(security, peer, NONCE, AUTH).check(ping_bytes(key="per-client", user="alice", password="pw"))
        assert (ok, reason) == (True, ""), peer
    ok, reason, _ = Handshake(security, "192.168.3.4", NONCE, AUTH).check(ping_bytes(key="global", user="alice", password="pw"))
    assert (ok, reason) == (False, "shared_key mismatch")
