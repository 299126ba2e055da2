"""The whole node with durable acks: client processes send PackedForward chunks (with acks) over
loopback to a node process (forward -> launchdarkly, file store, fsync before each ack) that
delivers to the LaunchDarkly-compatible server; beside the in-process floor (decode + validate +
map + encode, no I/O) measured in the same run on the same bytes.

    python benchmarks/node.py            # full run, writes benchmarks/results/node.json
    python benchmarks/node.py --quick    # seconds
    python benchmarks/node.py --out F    # also the rows of benchmarks/run.py, to F

Rows: one worker and two workers (2 client processes each), ack latency with the clients paced at
half the rate one worker reached, and the node's RSS while its store holds 1M undelivered events
(LaunchDarkly answering 503).
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

from forward import client_process

from fluent_ld.dev.ldserver import Fault, LaunchDarklyServer
from fluent_ld.forward.codec import NEED_DATA, Decoder, encode_event_time
from fluent_ld.launchdarkly.mapping import Mapper
from fluent_ld.launchdarkly.preset.loader import load_preset

PER_REQUEST = 500
# Client connections per run: SO_REUSEPORT spreads connections over workers by their addresses, so a
# handful are needed for two workers to share the load evenly (two connections land on the same
# worker half the time).
CLIENTS = 4
# After the node listens: its pool processes get ready in about a second (the node works inline
# until then). The rows measure the steady state.
WARM_UP = 1.5
TOKEN = "api-bench"


def chunk(first: int, n: int = PER_REQUEST) -> bytes:
    entries = b"".join(
        msgpack.packb(
            [
                encode_event_time(1_795_000_000 * 10**9 + i),
                {
                    "type": "track",
                    "event": "Order Completed",
                    "user_id": f"user-{i}",
                    "anonymous_id": "a1b2c3d4",
                    "properties": {"order_id": f"O-{i}", "revenue": 89.99, "currency": "GBP"},
                },
            ],
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


def start_node(url: str, store: str, port: int, workers: int = 1, system: str = "", buffer: str = "") -> subprocess.Popen:
    """A node process (forward -> launchdarkly, file store); ``system`` and ``buffer``: more lines
    for those sections."""
    conf = Path(store) / "node.conf"
    conf.write_text(
        f"<system>\n  workers {workers}\n{system}</system>\n"
        f"<source>\n  @type forward\n  port {port}\n</source>\n"
        f"<match signal.**>\n  @type launchdarkly\n  access_token {TOKEN}\n  project_key default\n"
        f"  environment_key production\n  events_host {url}\n  <buffer>\n    path {store}\n"
        f"    retry_wait 200ms\n    retry_max_interval 1s\n{buffer}  </buffer>\n</match>\n"
    )
    proc = subprocess.Popen([sys.executable, "-m", "fluent_ld", "run", "-c", str(conf)], stderr=subprocess.DEVNULL)
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            time.sleep(WARM_UP)
            return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit("node did not start")


def proc_stats(pid: int) -> tuple[float, int, int]:
    """CPU seconds, current RSS and peak RSS (bytes) of a process and its descendants (the
    workers of a supervisor), from /proc."""
    cpu = rss = peak = 0
    for p in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("VmHWM:"):
                        peak += int(line.split()[1]) * 1024
        except FileNotFoundError:
            continue
    return cpu, rss, peak


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError):
                continue
            children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def paced_client(port: int, payload: bytes, requests: int, per_request: int, rate: float, results) -> None:
    """Send chunks at ``rate`` records/s (one chunk every per_request/rate seconds, acks read as
    they come): the ack latency a client sees when the node is not saturated."""
    sock = socket.create_connection(("127.0.0.1", port))
    unpacker = msgpack.Unpacker(raw=False)
    interval = per_request / rate
    sent_at: list[float] = []
    latencies: list[float] = []
    start = time.perf_counter()
    sock.setblocking(False)
    acked = 0
    while acked < requests:
        now = time.perf_counter()
        if len(sent_at) < requests and now >= start + len(sent_at) * interval:
            sock.setblocking(True)
            sock.sendall(payload)
            sock.setblocking(False)
            sent_at.append(time.perf_counter())
            continue
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            time.sleep(0.0005)
            continue
        if not data:
            raise SystemExit("server closed the connection")
        unpacker.feed(data)
        for _ in unpacker:
            latencies.append(time.perf_counter() - sent_at[acked])
            acked += 1
    sock.close()
    results.put((requests * per_request, time.perf_counter() - start, latencies))


def node_run(ld: ServerThread, clients: int, requests: int, workers: int = 1, rate: float | None = None) -> dict:
    """``rate``: pace the clients at this many records/s in all (None: as fast as acks allow)."""
    payload = chunk(0)
    with tempfile.TemporaryDirectory() as store:
        port = free_port()
        proc = start_node(ld.server.url, store, port, workers)
        if workers > 1:
            time.sleep(1.0)  # every worker listening, not only the first
        try:
            cpu0, _, _ = proc_stats(proc.pid)
            before = ld.server.unique_events
            results = multiprocessing.Queue()
            if rate is None:
                procs = [multiprocessing.Process(target=client_process, args=(port, payload, requests, PER_REQUEST, results)) for _ in range(clients)]
            else:
                procs = [
                    multiprocessing.Process(target=paced_client, args=(port, payload, requests, PER_REQUEST, rate / clients, results)) for _ in range(clients)
                ]
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


def summarise(samples: list[dict]) -> dict:
    row = {k: statistics.median(s[k] for s in samples) for k in samples[0] if k != "delivered_all"}
    row["spread"] = (min(s["records_per_s"] for s in samples), max(s["records_per_s"] for s in samples))
    row["delivered_all"] = all(s["delivered_all"] for s in samples)
    row["runs"] = len(samples)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", metavar="FILE", help="write the rows (benchmarks/run.py's format) here")
    args = parser.parse_args()
    runs, requests, pending = (1, 20, 20_000) if args.quick else (3, 400, 1_000_000)
    ld = ServerThread()
    payload = chunk(0)
    floor = [floor_rate(payload, 40 if not args.quick else 4) for _ in range(runs)]
    fl = statistics.median(floor)
    rows = {}
    for workers in (1, 2):
        rows[f"{workers} worker(s)"] = summarise([node_run(ld, CLIENTS, requests // CLIENTS, workers) for _ in range(runs)])
    half = rows["1 worker(s)"]["records_per_s"] / 2
    rows["half rate"] = summarise([node_run(ld, CLIENTS, requests // (2 * CLIENTS), 1, rate=half) for _ in range(runs)])
    memory = rss_with_pending(ld, pending)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"machine: {machine}")
    print(f"floor (decode+validate+map+encode, in process): {fl:,.0f} records/s")
    for name, r in rows.items():
        print(
            f"node, {name}, {CLIENTS} clients: {r['records_per_s']:,.0f} records/s "
            f"({r['spread'][0]:,.0f}..{r['spread'][1]:,.0f}), ratio {r['records_per_s'] / fl:.2f}, "
            f"p50/p99 ack {r['p50_ack_ms']:.1f}/{r['p99_ack_ms']:.1f} ms, {r['cpu_us_per_record']:.2f} us CPU/record, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB, all delivered: {r['delivered_all']}"
        )
    scale = rows["2 worker(s)"]["records_per_s"] / rows["1 worker(s)"]["records_per_s"]
    print(f"two workers / one worker: {scale:.2f}x")
    print(
        f"store holding {memory['pending_events']:,} undelivered events: node RSS {memory['rss_mb']:.0f} MB "
        f"(peak {memory['peak_rss_mb']:.0f} MB); filled at {memory['fill_records_per_s']:,.0f} records/s"
    )
    report = {"benchmark": "node", "machine": machine, "quick": args.quick, "floor_per_s": floor, "node": rows, "memory": memory}
    report["rows"] = [
        {
            "figure": f"node, {name}" if name != "half rate" else f"node, 1 worker, paced at half ({half:,.0f}/s)",
            "value": r["records_per_s"],
            "unit": "records/s",
            "spread": list(r["spread"]),
            "runs": r["runs"],
            # The paced row is a latency figure: its rate is set by the clients, so it has no ratio.
            "floor": fl if name != "half rate" else None,
            "floor_figure": "decode+validate+map+encode in process, no I/O" if name != "half rate" else None,
            "ratio": r["records_per_s"] / fl if name != "half rate" else None,
            "extra": {
                "p50_ack_ms": round(r["p50_ack_ms"], 1),
                "p99_ack_ms": round(r["p99_ack_ms"], 1),
                "cpu_us_per_record": round(r["cpu_us_per_record"], 2),
                "peak_rss_mb": round(r["peak_rss_mb"]),
                "delivered_all": r["delivered_all"],
                **({"vs_1_worker": round(scale, 2)} if name == "2 worker(s)" else {}),
            },
        }
        for name, r in rows.items()
    ]
    report["rows"].append(
        {
            "figure": f"store holding {memory['pending_events']:,} undelivered events",
            "value": memory["rss_mb"],
            "unit": "MB RSS",
            "spread": [memory["rss_mb"], memory["rss_mb"]],
            "runs": 1,
            "floor": None,
            "floor_figure": None,
            "ratio": None,
            "extra": {"peak_rss_mb": round(memory["peak_rss_mb"]), "fill_records_per_s": round(memory["fill_records_per_s"])},
        }
    )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if not args.quick:
        out = Path(__file__).resolve().parent / "results" / "node.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
