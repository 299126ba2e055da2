"""Soak: a node process under a steady load for a bounded time, its memory sampled every second.
RSS must stay flat once warm: no growth trend, and the last samples close to the first warm ones.

CI runs 40 s at about 5,000 records/s; ``FLUENT_LD_SOAK_SECONDS=900`` runs longer locally.
"""

import os
import signal
import statistics
import subprocess
import threading
import time

import msgpack
import pytest
from harness import RawClient
from ld_harness import TOKEN, ServerThread, free_port, ld_config

from fluent_ld.dev.ldserver import LaunchDarklyServer

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("FLUENT_LD_SOAK_SECONDS", "40"))
PER_REQUEST = 100
INTERVAL = 0.02  # one request every 20 ms: 5,000 records/s


def request(first: int) -> bytes:
    entries = b"".join(
        msgpack.packb(
            [1_700_000_000, {"type": "track", "event": "Order Completed", "user_id": f"u{n % 5000}", "properties": {"order_id": f"O-{n}", "revenue": 1}}],
            use_bin_type=True,
        )
        for n in range(first, first + PER_REQUEST)
    )
    return msgpack.packb(["signal.soak", entries, {"chunk": f"c{first}"}], use_bin_type=True)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of RSS over time."""
    ts, ms = [t for t, _ in samples], [m for _, m in samples]
    mt, mm = statistics.fmean(ts), statistics.fmean(ms)
    var = sum((t - mt) ** 2 for t in ts)
    return sum((t - mt) * (m - mm) for t, m in samples) / var * 60 if var else 0.0


def test_rss_stays_flat_under_a_steady_load(console_script, tmp_path):
    port = free_port()
    with ServerThread(LaunchDarklyServer(TOKEN, keep=False)) as ld, open(tmp_path / "node.log", "w") as log:
        conf = tmp_path / "node.conf"
        conf.write_text(ld_config(ld.url, str(tmp_path / "store"), source=f"<source>\n  @type forward\n  bind 127.0.0.1\n  port {port}\n</source>"))
        proc = subprocess.Popen([console_script, "run", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    client = RawClient(port, timeout=10)
                    break
                except OSError:
                    assert time.monotonic() < deadline and proc.poll() is None, "the node did not start"
                    time.sleep(0.05)
            stop = threading.Event()
            sent = [0]

            def load() -> None:
                next_at = time.monotonic()
                while not stop.is_set():
                    client.send(request(sent[0]))
                    assert client.reply() == {"ack": f"c{sent[0]}"}
                    sent[0] += PER_REQUEST
                    next_at += INTERVAL
                    time.sleep(max(0.0, next_at - time.monotonic()))

            thread = threading.Thread(target=load, daemon=True)
            thread.start()
            samples: list[tuple[float, float]] = []
            start = time.monotonic()
            while time.monotonic() - start < SECONDS:
                time.sleep(1.0)
                assert thread.is_alive(), "the load stopped: an ack was missing"
                samples.append((time.monotonic() - start, rss_mb(proc.pid)))
            stop.set()
            thread.join(10)
            client.close()
            deadline = time.monotonic() + 30
            while ld.unique_events < sent[0] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert ld.unique_events == sent[0]
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    warm = [s for s in samples if s[0] >= SECONDS / 4]  # start-up and first allocations settle first
    first, last = statistics.median(m for _, m in warm[:5]), statistics.median(m for _, m in warm[-5:])
    slope = slope_mb_per_min(warm)
    print(f"soak: {sent[0]:,} records in {SECONDS:.0f}s; RSS {first:.1f} -> {last:.1f} MB, trend {slope:+.2f} MB/min")
    assert last - first < 10, f"RSS grew from {first:.1f} to {last:.1f} MB"
    assert slope < 6, f"RSS trend {slope:+.2f} MB/min"
