"""Shared-key handshake and TLS over real sockets, and the malformed-input table against the live
server (after each bad client, a good one is still served)."""

import hashlib
import socket
import ssl

import msgpack
import pytest
from harness import RawClient, RunningNode, forward_request
from test_forward_codec import MALFORMED

SECURE = """
<source>
  @type forward
  port 0
  <security>
    self_hostname fluent-ld-test
    shared_key s3cr3t
    {security}
  </security>
</source>
<match **>
  @type capture
</match>
"""


def sha512(*parts: bytes) -> str:
    return hashlib.sha512(b"".join(parts)).hexdigest()


def ping(helo, key="s3cr3t", hostname="client-host", salt=b"a1b2c3d4e5f60718", user="", password=""):
    """A PING as Fluentd (hex str salt) or Fluent Bit (random bytes in a str) would build it."""
    _, options = helo
    digest = sha512(salt, hostname.encode(), options["nonce"], key.encode())
    password_digest = sha512(options["auth"], user.encode(), password.encode()) if user else ""
    # use_bin_type=False packs bytes as str, which is how both clients send the salt.
    return msgpack.packb(["PING", hostname, salt, digest, user, password_digest], use_bin_type=False)


def connect(port):
    c = RawClient(port)
    helo = c.reply()
    assert helo[0] == "HELO" and len(helo[1]["nonce"]) == 16
    return c, helo


@pytest.mark.parametrize("salt", [b"0123456789abcdef0123456789abcdef", bytes(range(240, 256))], ids=["fluentd-hex", "fluent-bit-raw"])
def test_handshake_then_requests_on_a_kept_alive_connection(salt):
    with RunningNode(SECURE.format(security="")) as n:
        c, helo = connect(n.port)
        assert helo[1]["keepalive"] is True
        c.send(ping(helo, salt=salt))
        pong = c.reply()
        assert pong == ["PONG", True, "", "fluent-ld-test", sha512(salt, b"fluent-ld-test", helo[1]["nonce"], b"s3cr3t")]
        for i in range(3):  # keepalive: one handshake, many requests
            c.send(forward_request("a", [{"n": i}], chunk=f"c{i}"))
            assert c.reply() == {"ack": f"c{i}"}
        c.close()
        assert len(n.wait_records(3)) == 3


def test_ping_coalesced_with_the_first_request():
    with RunningNode(SECURE.format(security="")) as n:
        c, helo = connect(n.port)
        c.send(ping(helo) + forward_request("a", [{"first": True}], chunk="first"))
        assert c.reply()[:2] == ["PONG", True]
        assert c.reply() == {"ack": "first"}
        c.close()


@pytest.mark.parametrize(
    "security, kwargs, reason",
    [
        ("", dict(key="wrong"), "shared_key mismatch"),
        ("", dict(hostname="fluent-ld-test"), "same hostname between input and output: invalid configuration"),
        ("allow_anonymous_source false\n    <client>\n      network 10.0.0.0/8\n    </client>", {}, "anonymous source host '127.0.0.1' denied"),
        (
            "user_auth true\n    <user>\n      username alice\n      password pw\n    </user>",
            dict(user="alice", password="wrong"),
            "username/password mismatch",
        ),
    ],
    ids=["wrong-key", "same-hostname", "denied-network", "bad-password"],
)
def test_refused_handshake_gets_a_reason_and_is_closed(security, kwargs, reason):
    with RunningNode(SECURE.format(security=security)) as n:
        c, helo = connect(n.port)
        c.send(ping(helo, **kwargs) + forward_request("a", [{}], chunk="never"))
        assert c.reply() == ["PONG", False, reason, "", ""]
        assert c.closed_by_server()
        assert n.output().records == []
        assert n.source.stats["handshake_failures"] == 1


def test_user_auth_and_per_client_key_succeed():
    security = """user_auth true
    allow_anonymous_source false
    <user>
      username alice
      password pw
    </user>
    <client>
      host localhost
      shared_key per-client
    </client>
    <client>
      network 127.0.0.0/8
      shared_key loopback-key
      users alice
    </client>"""
    with RunningNode(SECURE.format(security=security)) as n:
        c, helo = connect(n.port)
        assert len(helo[1]["auth"]) == 16
        key = "per-client"  # 'localhost' resolves to 127.0.0.1 and comes first
        c.send(ping(helo, key=key, user="alice", password="pw"))
        assert c.reply()[:2] == ["PONG", True]
        c.close()


def test_a_request_before_the_ping_closes_the_connection():
    with RunningNode(SECURE.format(security="")) as n:
        c, _ = connect(n.port)
        c.send(forward_request("a", [{}], chunk="early"))
        assert c.closed_by_server()
        assert n.output().records == []


def test_handshake_timeout():
    with RunningNode(SECURE.format(security="").replace("port 0", "port 0\n  handshake_timeout 200ms")) as n:
        c, _ = connect(n.port)
        assert c.closed_by_server()
        assert n.source.stats["handshake_failures"] == 1


TLS = """
<source>
  @type forward
  port 0
  <transport tls>
    cert_path {d}/server.crt
    private_key_path {d}/server.key
    {extra}
  </transport>
</source>
<match **>
  @type capture
</match>
"""


def tls_client(ca, port, client_cert=None):
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if client_cert is not None:
        client_cert.configure_cert(context)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return RawClient(sock=context.wrap_socket(raw, server_hostname="127.0.0.1"))


def test_tls(pki):
    ca, d = pki
    with RunningNode(TLS.format(d=d, extra="")) as n:
        with tls_client(ca, n.port) as c:
            c.send(forward_request("tls", [{"secure": True}], chunk="t"))
            assert c.reply() == {"ack": "t"}
        with RawClient(n.port) as plain:  # plain text to a TLS port: refused, node unharmed
            plain.send(forward_request("tls", [{}], chunk="p"))
            assert plain.closed_by_server()
        assert [r[2] for r in n.wait_records(1)] == [{"secure": True}]


def test_tls_client_certificate_required(pki):
    ca, d = pki
    with RunningNode(TLS.format(d=d, extra=f"client_cert_auth true\n    ca_path {d}/ca.crt")) as n:
        with pytest.raises((ssl.SSLError, ConnectionResetError, EOFError, BrokenPipeError)):
            with tls_client(ca, n.port) as c:
                c.send(forward_request("tls", [{}], chunk="no-cert"))
                c.reply()
        with tls_client(ca, n.port, ca.issue_cert("client.example")) as c:
            c.send(forward_request("tls", [{}], chunk="with-cert"))
            assert c.reply() == {"ack": "with-cert"}


PLAIN = """
<source>
  @type forward
  port 0
  chunk_size_limit 1m
  decompression_size_limit 1m
</source>
<match **>
  @type capture
</match>
"""


def test_malformed_table_over_sockets_never_hurts_the_next_client():
    with RunningNode(PLAIN) as n:
        for name, wire, _ in MALFORMED:
            with RawClient(n.port) as bad:
                bad.send(wire)
                assert bad.closed_by_server(), name
            with RawClient(n.port) as good:
                good.send(forward_request("ok", [{"after": name}], chunk=name))
                assert good.reply() == {"ack": name}, name
        assert n.source.stats["protocol_errors"] == len(MALFORMED)
        assert len(n.wait_records(len(MALFORMED))) == len(MALFORMED)
