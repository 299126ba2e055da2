"""The forward output: a signed webhook through one node to another over the forward protocol,
with the receiver stopped and restarted, the handshake, gzip, and failover to a standby."""

import hashlib
import hmac
import json
import socket
import time
import urllib.request

from harness import RunningNode

SECRET = "whsec-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def receiver(port: int, security: str = "") -> RunningNode:
    return RunningNode(f"<source>\n  @type forward\n  port {port}\n  {security}\n</source>\n<match **>\n  @type capture\n</match>\n")


def sender(tmp_path, servers: str, extra: str = "", security: str = "") -> RunningNode:
    return RunningNode(
        f"""
<source>
  @type launchdarkly_webhook
  port 0
  secret {SECRET}
</source>
<match launchdarkly.**>
  @type forward
  require_ack_response true
  ack_response_timeout 2s
  connect_timeout 1s
  heartbeat_interval 100ms
  {extra}
  {servers}
  {security}
  <buffer>
    path {tmp_path}
    flush_interval 50ms
    retry_wait 100ms
    retry_max_interval 300ms
    retry_randomize false
  </buffer>
</match>
"""
    )


def server(port: int, extra: str = "") -> str:
    return f"<server>\n    host 127.0.0.1\n    port {port}\n    {extra}\n  </server>"


def webhook(node: RunningNode, n: int) -> int:
    body = json.dumps(
        {
            "_id": f"id-{n}",
            "date": 1_749_200_000_000 + n,
            "kind": "flag",
            "accesses": [{"action": "updateOn", "resource": "proj/default:env/production:flag/f"}],
        }
    ).encode()
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(f"http://127.0.0.1:{node.source.port}/launchdarkly/webhook", data=body, headers={"X-LD-Signature": signature})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def wait_for(predicate, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.02)


def test_webhooks_reach_a_second_node_even_while_it_is_down(tmp_path):
    port = free_port()
    with sender(tmp_path, server(port), extra="compress gzip") as a:
        with receiver(port) as b:
            assert webhook(a, 1) == 200
            b.wait_records(1)
        # The receiving node is down: webhooks are still accepted (stored), and wait.
        for n in range(2, 6):
            assert webhook(a, n) == 200
        time.sleep(0.5)
        assert a.output().store.pending_events == 4
        with receiver(port) as b:  # back: everything that waited arrives
            records = b.wait_records(4)
            wait_for(lambda: a.output().store.pending_events == 0)
    assert sorted(r[2]["_id"] for r in records) == [f"id-{n}" for n in range(2, 6)]
    assert {r[0] for r in records} == {"launchdarkly.audit"}
    assert records[0][2]["flag"] == "f"


def test_shared_key_handshake_with_the_receiver(tmp_path):
    port = free_port()
    security_in = "<security>\n    self_hostname receiver\n    shared_key s3cr3t\n  </security>"
    security_out = "<security>\n    self_hostname sender\n    shared_key s3cr3t\n  </security>"
    with receiver(port, security_in) as b, sender(tmp_path, server(port), security=security_out) as a:
        assert webhook(a, 1) == 200
        assert b.wait_records(1)[0][2]["_id"] == "id-1"
        assert b.source.stats["handshake_failures"] == 0


def test_a_wrong_shared_key_keeps_the_records(tmp_path):
    port = free_port()
    security_in = "<security>\n    self_hostname receiver\n    shared_key right\n  </security>"
    security_out = "<security>\n    self_hostname sender\n    shared_key wrong\n  </security>"
    with receiver(port, security_in) as b, sender(tmp_path, server(port), security=security_out) as a:
        assert webhook(a, 1) == 200
        wait_for(lambda: b.source.stats["handshake_failures"] >= 2)
        assert b.output().records == [] and a.output().store.pending_events == 1


def test_failover_to_a_standby_server(tmp_path):
    primary, standby = free_port(), free_port()  # nothing listens on the primary
    servers = server(primary) + "\n  " + server(standby, "standby true")
    with receiver(standby) as b, sender(tmp_path, servers) as a:
        for n in range(3):
            assert webhook(a, n) == 200
        records = b.wait_records(3)
        assert sorted(r[2]["_id"] for r in records) == ["id-0", "id-1", "id-2"]
        assert not a.output().servers[0].healthy


def test_tls_to_the_receiver(tmp_path, pki):
    ca, d = pki
    port = free_port()
    transport_in = f"<transport tls>\n    cert_path {d}/server.crt\n    private_key_path {d}/server.key\n  </transport>"
    with receiver(port, transport_in) as b, sender(tmp_path, server(port), extra=f"transport tls\n  tls_ca_cert_path {d}/ca.crt") as a:
        assert webhook(a, 7) == 200
        assert b.wait_records(1)[0][2]["_id"] == "id-7"


def test_a_time_past_2106_is_a_dead_letter_not_a_crash(tmp_path):
    """EventTime holds 32-bit seconds: a record timed later cannot be forwarded; it becomes a dead
    letter while the rest of its request is stored."""
    import asyncio

    port = free_port()
    with RunningNode(f"<match **>\n  @type forward\n  {server(port)}\n  <buffer>\n    path {tmp_path}\n  </buffer>\n</match>\n") as node:
        output = node.node.outputs[0][1]
        entries = [(2**32 * 10**9, {"late": True}), (1_700_000_000 * 10**9, {"ok": True})]
        asyncio.run_coroutine_threadsafe(output.admit("app.x", entries), node.loop).result(10)
        assert output.store.pending_events == 1 and output.store.dead_letter_count == 1
