"""@fluent-org/logger (the Node.js forward client) against the forward source: every event mode,
acks, the shared-key handshake and TLS."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import CAPTURE_CONF, RunningNode

NODE_DIR = Path(__file__).resolve().parent / "node"


def node_client_available() -> bool:
    return shutil.which("node") is not None and (NODE_DIR / "node_modules" / "@fluent-org" / "logger").is_dir()


if not node_client_available():
    if os.environ.get("CI"):
        pytest.fail("@fluent-org/logger is not installed: .ci/run must run `npm ci` in tests/node", pytrace=False)
    pytest.skip("@fluent-org/logger not installed (npm ci --prefix tests/node)", allow_module_level=True)


def send(**opts) -> None:
    result = subprocess.run(["node", str(NODE_DIR / "send.js"), json.dumps(opts)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sent {opts['count']}"


CONF = CAPTURE_CONF


@pytest.mark.parametrize("ack", [False, True], ids=["no-ack", "ack"])
@pytest.mark.parametrize("mode", ["Message", "Forward", "PackedForward", "CompressedPackedForward"])
def test_every_event_mode(mode, ack):
    with RunningNode(CONF.format(extra="")) as n:
        send(port=n.port, mode=mode, ack=ack, count=25, flushInterval=20, eventTime=True)
        records = n.wait_records(25)
    assert sorted(r[2]["n"] for r in records) == list(range(25))
    assert {r[0] for r in records} == {"node.signal"}
    assert {r[2]["mode"] for r in records} == {mode}
    assert sorted(r[1] for r in records) == [(1749200000123 + i) * 10**6 for i in range(25)]
    if ack:
        assert n.source.stats["requests"] >= 1


def test_shared_key_handshake():
    extra = "<security>\n    self_hostname fluent-ld\n    shared_key k3y\n  </security>"
    with RunningNode(CONF.format(extra=extra)) as n:
        send(port=n.port, mode="PackedForward", ack=True, count=10, sharedKey="k3y")
        assert len(n.wait_records(10)) == 10
        assert n.source.stats["handshake_failures"] == 0


def test_tls(pki):
    ca, d = pki
    extra = f"<transport tls>\n    cert_path {d}/server.crt\n    private_key_path {d}/server.key\n  </transport>"
    with RunningNode(CONF.format(extra=extra)) as n:
        send(port=n.port, mode="CompressedPackedForward", ack=True, count=10, ca=str(d / "ca.crt"))
        assert len(n.wait_records(10)) == 10


def test_integer_second_times():
    with RunningNode(CONF.format(extra="")) as n:
        send(port=n.port, mode="Forward", ack=True, count=3, eventTime=False)
        records = n.wait_records(3)
    assert sorted(r[1] for r in records) == [1749200000 * 10**9] * 3  # the client truncates to seconds
