"""The whole node with durable acks: client processes send PackedForward chunks (with acks) over
loopback to a node process (forward -> launchdarkly, file store, fsync before each ack) that
delivers to the LaunchDarkly-compatible server; beside the in-process floor (decode + validate +
map + encode, no I/O) measured in the same run on the same bytes.

    python benchmarks/node.py            # full run, writes benchmarks/results/node.json
    python benchmarks/node.py --quick    # seconds

Also: the node's RSS while its store holds 1M undelivered events (LaunchDarkly answering 503).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from forward import client_process  # noqa: E402

from fluent_ld.forward.codec import NEED_DATA, Decoder, encode_event_time  # noqa: E402
from fluent_ld.ldserver import Fault, LaunchDarklyServer  # noqa: E402
from fluent_ld.mapping import Mapper  # noqa: E402
from fluent_ld.preset_loader import load_preset  # noqa: E402

PER_REQUEST = 500
TOKEN = "api-bench"


def chunk(first: int, n: int = PER_REQUEST) -> bytes:
    entries = b"".join(
        msgpack.packb(
            [encode_event_time(1_795_000_000 * 10**9 + i), {
                "type": "track", "event": "Order Completed", "user_id": f"user-{i}",
                "anonymous_id": "a1b2c3d4", "properties": {"order_id": f"O-{i}", "revenue": 89.99, "currency": "GBP"},
            }],
            use_bin_type=True,
        )
        for i in range(first, first + n)
    )
    return msgpack.packb(["signal.bench", entries, {"chunk": "YmVuY2g=\n", "size": n}], use_bin_type=False)


def floor_rate(payload: bytes, repeat: int) -> float:
    mapper = Mapper(load_preset("default"))
    start = time.perf_counter()
    records = 0
    for _ in range(repeat):
        decoder = Decoder()
        decoder.receive_data(payload)
        request = decoder.next_event(0)
        assert request is not NEED_DATA
        for time_ns, record in request.entries:
            mapper.map_encoded(record, time_ns)
            records += 1
    return records / (time.perf_counter() - start)


class ServerThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = LaunchDarklyServer(TOKEN, keep=False)  # counts only: the harness stays light
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(url: str, store: str, port: int) -> subprocess.Popen:
    conf = Path(store) / "node.conf"
    conf.write_text(
        f"<source>\n  @type forward\n  port {port}\n</source>\n"
        f"<match signal.**>\n  @type launchdarkly\n  access_token {TOKEN}\n  project_key default\n"
        f"  environment_key production\n  events_host {url}\n  <buffer>\n    path {store}\n"
        f"    retry_wait 200ms\n    retry_max_interval 1s\n  </buffer>\n</match>\n"
    )
    proc = subprocess.Popen([sys.executable, "-m", "fluent_ld", "run", "-c", str(conf)], stderr=subprocess.DEVNULL)
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit("node did not start")


def proc_stats(pid: int) -> tuple[float, int, int]:
    """CPU seconds, current RSS and peak RSS (bytes) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = peak = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return cpu, rss, peak


def node_run(ld: ServerThread, clients: int, requests: int) -> dict:
    payload = chunk(0)
    with tempfile.TemporaryDirectory() as store:
        port = free_port()
        proc = start_node(ld.server.url, store, port)
        try:
            cpu0, _, _ = proc_stats(proc.pid)
            before = ld.server.unique_events
            results = multiprocessing.Queue()
            procs = [multiprocessing.Process(target=client_process, args=(port, payload, requests, PER_REQUEST, results)) for _ in range(clients)]
            start = time.perf_counter()
            for p in procs:
                p.start()
            outcomes = [results.get() for _ in procs]
            elapsed = time.perf_counter() - start
            for p in procs:
                p.join()
            cpu1, rss, peak = proc_stats(proc.pid)
            total = sum(o[0] for o in outcomes)
            latencies = sorted(x for o in outcomes for x in o[2])
            deadline = time.time() + 120
            delivered = 0
            while time.time() < deadline:
                delivered = ld.server.unique_events - before
                if delivered >= total:
                    break
                time.sleep(0.05)
            return {
                "records_per_s": total / elapsed,
                "p50_ack_ms": latencies[len(latencies) // 2] * 1000,
                "p99_ack_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
                "cpu_us_per_record": (cpu1 - cpu0) / total * 1e6,
                "peak_rss_mb": peak / 2**20,
                "delivered_all": delivered >= total,
            }
        finally:
            proc.terminate()
            proc.wait(30)
            ld.server.requests.clear()
            ld.server.accepted.clear()


def rss_with_pending(ld: ServerThread, events: int) -> dict:
    ld.server.script(*([Fault(status=503)] * 1_000_000))
    with tempfile.TemporaryDirectory() as store:
        port = free_port()
        proc = start_node(ld.server.url, store, port)
        try:
            results = multiprocessing.Queue()
            requests = events // PER_REQUEST
            p = multiprocessing.Process(target=client_process, args=(port, chunk(0), requests, PER_REQUEST, results))
            p.start()
            total, elapsed, _ = results.get()
            p.join()
            time.sleep(2)  # let batches be cut and retried a few times
            _, rss, peak = proc_stats(proc.pid)
            return {"pending_events": total, "rss_mb": rss / 2**20, "peak_rss_mb": peak / 2**20, "fill_records_per_s": total / elapsed}
        finally:
            proc.terminate()
            proc.wait(60)
            ld.server.faults.clear()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runs, requests, pending = (1, 20, 20_000) if args.quick else (3, 400, 1_000_000)
    ld = ServerThread()
    payload = chunk(0)
    floor = [floor_rate(payload, 40 if not args.quick else 4) for _ in range(runs)]
    rows = {}
    for clients in (1, 2):
        samples = [node_run(ld, clients, requests // clients) for _ in range(runs)]
        rows[clients] = {k: statistics.median(s[k] for s in samples) for k in samples[0] if k != "delivered_all"}
        rows[clients]["spread"] = (min(s["records_per_s"] for s in samples), max(s["records_per_s"] for s in samples))
        rows[clients]["delivered_all"] = all(s["delivered_all"] for s in samples)
    memory = rss_with_pending(ld, pending)
    fl = statistics.median(floor)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"machine: {machine}")
    print(f"floor (decode+validate+map+encode, in process): {fl:,.0f} records/s")
    for clients, r in rows.items():
        print(
            f"node, {clients} client(s): {r['records_per_s']:,.0f} records/s "
            f"({r['spread'][0]:,.0f}..{r['spread'][1]:,.0f}), ratio {r['records_per_s'] / fl:.2f}, "
            f"p50/p99 ack {r['p50_ack_ms']:.1f}/{r['p99_ack_ms']:.1f} ms, {r['cpu_us_per_record']:.2f} us CPU/record, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB, all delivered: {r['delivered_all']}"
        )
    print(
        f"store holding {memory['pending_events']:,} undelivered events: node RSS {memory['rss_mb']:.0f} MB "
        f"(peak {memory['peak_rss_mb']:.0f} MB); filled at {memory['fill_records_per_s']:,.0f} records/s"
    )
    if not args.quick:
        out = Path(__file__).resolve().parent / "results" / "node.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({"machine": machine, "floor_per_s": floor, "node": rows, "memory": memory}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
