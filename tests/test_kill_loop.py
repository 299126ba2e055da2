"""The kill loop: a real node under load from forward clients (PackedForward as Fluent Bit sends
it, Forward mode as Fluentd does, both waiting for acks), killed with SIGKILL at random moments and
restarted each time, with an oracle that tracks every acknowledged event.

At the end every acknowledged event has reached the LaunchDarkly-compatible server, each under one
payload id only (a batch resent after a kill keeps its payload id, which LaunchDarkly deduplicates;
the clients here never resend, so no event is stored twice), and the store is empty.

CI runs 20 kills; ``FLUENT_LD_KILLS=200`` runs a longer loop locally. ``FLUENT_LD_SEED`` picks the
random moments (the seed is printed, so a failure can be replayed).
"""

import os
import random
import signal
import sqlite3
import threading
import time

import msgpack
import pytest
from harness import RawClient
from ld_harness import TOKEN, ServerThread, free_port, ld_config, start_node

from fluent_ld.dev.ldserver import Fault, LaunchDarklyServer

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("FLUENT_LD_KILLS", "20"))
SEED = int(os.environ.get("FLUENT_LD_SEED", str(random.randrange(1 << 30))))
PER_REQUEST = 40


def record(n: int) -> dict:
    return {"type": "track", "event": "Order Completed", "user_id": f"u{n}", "properties": {"order_id": f"O-{n}", "revenue": 1, "n": n}}


def packed_request(first: int, chunk: str) -> bytes:
    """PackedForward with binary entries, as Fluent Bit sends it."""
    entries = b"".join(msgpack.packb([1_700_000_000 + i, record(n)], use_bin_type=True) for i, n in enumerate(range(first, first + PER_REQUEST)))
    return msgpack.packb(["signal.kill", entries, {"chunk": chunk, "size": PER_REQUEST}], use_bin_type=True)


def forward_request(first: int, chunk: str) -> bytes:
    """Forward mode, as Fluentd's out_forward sends small chunks."""
    return msgpack.packb(["signal.kill", [[1_700_000_000, record(n)] for n in range(first, first + PER_REQUEST)], {"chunk": chunk}], use_bin_type=True)


class Loader(threading.Thread):
    """Sends requests one at a time and waits for each ack; reconnects while the node is down.
    ``acked`` holds exactly the events the node acknowledged."""

    def __init__(self, port: int, first: int, encode) -> None:
        super().__init__(daemon=True)
        self.port, self.next, self.encode = port, first, encode
        self.acked: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        client = None
        while not self.stop.is_set():
            try:
                if client is None:
                    client = RawClient(self.port, timeout=3)
                first = self.next
                self.next += PER_REQUEST  # never resent: an event is stored at most once
                chunk = f"k{first}"
                client.send(self.encode(first, chunk))
                if client.reply() == {"ack": chunk}:
                    self.acked.update(range(first, first + PER_REQUEST))
            except (OSError, EOFError):
                if client is not None:
                    client.close()
                client = None
                time.sleep(0.02)
        if client is not None:
            client.close()


def test_every_acked_event_survives_random_sigkills(console_script, tmp_path):
    print(f"kill loop: {KILLS} kills, FLUENT_LD_SEED={SEED}")
    rng = random.Random(SEED)
    port = free_port()
    server = LaunchDarklyServer(TOKEN, keep=True)
    # Some slow and failing answers, so that kills also land while batches are in flight.
    server.script(*[rng.choice([Fault(delay=0.05), Fault(status=503), Fault(delay=0.01)]) for _ in range(KILLS * 3)])
    with ServerThread(server) as ld, open(tmp_path / "node.log", "w") as log:
        conf = tmp_path / "node.conf"
        conf.write_text(ld_config(ld.url, str(tmp_path / "store"), source=f"<source>\n  @type forward\n  bind 127.0.0.1\n  port {port}\n</source>"))
        proc = start_node(console_script, str(conf), port, log)
        loaders = [Loader(port, 0, packed_request), Loader(port, 10_000_000, forward_request)]
        for loader in loaders:
            loader.start()
        try:
            for _ in range(KILLS):
                time.sleep(rng.uniform(0.05, 0.5))  # a random moment of the load
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                proc = start_node(console_script, str(conf), port, log)
            time.sleep(0.5)
        finally:
            for loader in loaders:
                loader.stop.set()
            for loader in loaders:
                loader.join(10)
        acked = set().union(*(loader.acked for loader in loaders))
        assert len(acked) >= KILLS * PER_REQUEST, "the load was too small to mean anything"

        def delivered() -> dict[int, set[str]]:
            ids: dict[int, set[str]] = {}
            for request in list(ld.requests):
                if request.status == 202:
                    for event in request.events:
                        ids.setdefault(event["data"]["n"], set()).add(request.payload_id)
            return ids

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not acked <= set(delivered()):
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    arrived = delivered()
    missing = acked - set(arrived)
    assert not missing, f"{len(missing)} acknowledged events never reached LaunchDarkly (seed {SEED})"
    twice = {n: ids for n, ids in arrived.items() if len(ids) > 1}
    assert not twice, f"events under two payload ids (seed {SEED}): {dict(list(twice.items())[:5])}"
    with sqlite3.connect(tmp_path / "store" / "launchdarkly.0-worker0.sqlite3") as db:
        left = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("pending", "pending_data", "batches")}
        assert left == {"pending": 0, "pending_data": 0, "batches": 0}, left
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
