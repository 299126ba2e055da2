"""The whole node on what users send: Signal events of about 1 KB (context with ip, userAgent, library,
page and locale; messageId; anonymousId and, for a third, userId; an ISO timestamp; 4-8 properties,
some nested such as a products array), in the framings real clients use, with durable acks, beside
the single-core floor measured in the same run on the same bytes.

    python benchmarks/realistic.py            # full run (a few minutes), writes results/realistic.json
    python benchmarks/realistic.py --quick    # seconds
    python benchmarks/realistic.py --out F    # also the rows of benchmarks/run.py, to F

Framings: Fluent Bit's Forward mode (``[[EventTime, {}], record]`` entries, its default since 5.0.5),
Fluent Bit's CompressedPackedForward (gzip), Fluentd's str32 PackedForward; Message mode with
fluent-logger is in node.py's terms (one record per request, inline by design).

Rows:
- delivered records/s (first send to the last event received by the LaunchDarkly-compatible server)
  for 2 client connections with acks (8 requests in flight each), pool on (the default) and off
  (``pool_size 0``), against the floor: one process, each request streamed through one msgpack
  unpacker straight into the mapper (validate, map, orjson), one record at a time, no I/O;
- Fluent Bit's traffic pattern: 30-record chunks over 2 connections, 32 in flight each;
- the worst gap between the acks of a client sending a small request every 20 ms while another
  client sends a ~31 MiB request and then a gzip request inflating to ~64 MiB (pool on and off).
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from node import ServerThread, free_port, proc_stats  # noqa: E402
from node import start_node as node_process  # noqa: E402
from report import machine  # noqa: E402

from fluent_ld.forward.codec import EventTime, encode_event_time  # noqa: E402
from fluent_ld.mapping import Mapper  # noqa: E402
from fluent_ld.preset_loader import load_preset  # noqa: E402

T0 = 1_795_000_000 * 10**9
UAS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
]
PAGES = ["/", "/products/wool-scarf", "/cart", "/checkout", "/checkout/confirm", "/signup", "/search"]
EVENTS = [("Order Completed", "revenue"), ("Product Viewed", "value"), ("Product Added", "value"), ("Checkout Started", "value"), ("Signed Up", None)]


def record(rng: random.Random, i: int) -> dict:
    """One Signal event shaped like what analytics.js sends, about 1 KB as JSON."""
    path = rng.choice(PAGES)
    event = {
        "type": "track",
        "messageId": f"ajs-next-{rng.getrandbits(128):032x}",
        "anonymousId": f"{rng.getrandbits(32):08x}-{rng.getrandbits(16):04x}-4{rng.getrandbits(12):03x}-{rng.getrandbits(64):016x}",
        "timestamp": f"2026-12-05T{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}.{rng.randrange(1000):03d}Z",
        "context": {
            "ip": f"203.0.{rng.randrange(256)}.{rng.randrange(256)}",
            "userAgent": rng.choice(UAS),
            "library": {"name": "analytics.js", "version": "next-1.64.0"},
            "page": {
                "path": path, "referrer": "https://www.google.com/", "search": "?utm_source=newsletter&utm_medium=email",
                "title": f"{path.strip('/').replace('-', ' ').title() or 'Home'} | Example Shop",
                "url": f"https://www.example.com{path}?utm_source=newsletter&utm_medium=email",
            },
            "locale": rng.choice(["en-GB", "en-US", "de-DE", "fr-FR"]),
        },
    }
    if i % 3 == 0:
        event["userId"] = f"user-{rng.getrandbits(40):010x}"
    name, metric = rng.choice(EVENTS)
    event["event"] = name
    products = [
        {"product_id": f"p-{rng.randrange(10**6)}", "sku": f"SKU-{rng.randrange(10**5):05d}", "name": rng.choice(["Wool scarf", "Leather gloves", "Rain jacket"]),
         "price": round(rng.uniform(5, 200), 2), "quantity": rng.randrange(1, 4)}
        for _ in range(rng.randrange(1, 4))
    ]
    properties = {"currency": "GBP", "products": products, "coupon": rng.choice(["", "WINTER10", "FREESHIP"])}
    extras = [("order_id", f"O-{rng.getrandbits(32)}"), ("shipping", 4.99), ("tax", round(rng.uniform(1, 30), 2)), ("category", "Accessories"), ("step", rng.randrange(1, 5))]
    for key, value in extras[: rng.randrange(1, len(extras) + 1)]:
        properties[key] = value
    if metric:
        properties[metric] = round(sum(p["price"] * p["quantity"] for p in products), 2)
    event["properties"] = properties
    return event


def corpus(n: int, seed: int = 13) -> list[dict]:
    rng = random.Random(seed)
    return [record(rng, i) for i in range(n)]


def fluentbit_forward(tag: str, records: list[dict], chunk: str) -> bytes:
    entries = [[[encode_event_time(T0 + i), {}], r] for i, r in enumerate(records)]
    return msgpack.packb([tag, entries, {"chunk": chunk, "size": len(records)}], use_bin_type=True)


def _entries(records: list[dict], v15: bool) -> bytes:
    return b"".join(
        msgpack.packb([[encode_event_time(T0 + i), {}] if v15 else encode_event_time(T0 + i), r], use_bin_type=True)
        for i, r in enumerate(records)
    )


def fluentbit_gzip(tag: str, records: list[dict], chunk: str) -> bytes:
    payload = gzip.compress(_entries(records, True), 6, mtime=0)
    return msgpack.packb([tag, payload, {"chunk": chunk, "size": len(records), "compressed": "gzip"}], use_bin_type=True)


def fluentd_packed(tag: str, records: list[dict], chunk: str) -> bytes:
    # Fluentd's out_forward: the entries as a str32 of raw msgpack (use_bin_type=False packs bytes as str).
    return msgpack.packb([tag, _entries(records, False), {"chunk": chunk, "size": len(records)}], use_bin_type=False)


FRAMINGS = {"fluentbit_forward": fluentbit_forward, "fluentbit_gzip": fluentbit_gzip, "fluentd_packed": fluentd_packed}


def requests(framing: str, records: list[dict], per: int, count: int) -> list[bytes]:
    make = FRAMINGS[framing]
    out = []
    for i in range(count):
        first = (i * per) % (len(records) - per + 1)
        out.append(make("signal.web", records[first : first + per], f"c{i}"))
    return out


# -- the floor -------------------------------------------------------------------------------------------


def _ext(code: int, data: bytes):
    return EventTime(int.from_bytes(data[:4], "big") * 10**9 + int.from_bytes(data[4:], "big")) if code == 0 else msgpack.ExtType(code, data)


def floor_rate(wires: list[bytes], mapper: Mapper) -> float:
    """Decode -> the time checks -> map (validate, map, orjson) one record at a time, fragments
    joined once per request: the fastest single-process loop over the same bytes."""
    records = 0
    start = time.perf_counter()
    for wire in wires:
        outer = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape", ext_hook=_ext, max_buffer_size=len(wire))
        outer.feed(wire)
        outer.read_array_header()
        outer.skip()
        first = wire[outer.tell()]
        fragments = []
        if 0x90 <= first <= 0x9F or first in (0xDC, 0xDD):  # Forward mode: stream the array's entries
            for _ in range(outer.read_array_header()):
                time_, record_ = outer.unpack()
                fragments.append(mapper.map_encoded(record_, int(time_[0] if type(time_) is list else time_)))
        else:
            payload = outer.unpack()
            option = outer.unpack()
            payload = payload.encode("utf-8", "surrogateescape") if type(payload) is str else payload
            if option.get("compressed") == "gzip":
                payload = gzip.decompress(payload)
            inner = msgpack.Unpacker(raw=False, ext_hook=_ext, max_buffer_size=len(payload) + 1)
            inner.feed(payload)
            for time_, record_ in inner:
                fragments.append(mapper.map_encoded(record_, int(time_[0] if type(time_) is list else time_)))
        records += len(fragments)
        b",".join(f for f in fragments if type(f) is bytes)
    return records / (time.perf_counter() - start)


# -- the node --------------------------------------------------------------------------------------------


def start_node(url: str, store: str, port: int, pool: int | None) -> subprocess.Popen:
    system = f"  pool_size {pool}\n" if pool is not None else ""
    proc = node_process(url, store, port, system=system, buffer="    total_limit_size 2g\n    flush_interval 250ms\n")
    time.sleep(1.0)  # the pool processes get ready
    return proc


def client(port: int, wires: list[bytes], inflight: int, results) -> None:
    """Send with acks, ``inflight`` at a time; report ack latencies."""
    sock = socket.create_connection(("127.0.0.1", port))
    unpacker = msgpack.Unpacker(raw=False)
    sent_at: deque[float] = deque()  # acks come back in request order on a connection
    latencies = []
    sent = got = 0
    while got < len(wires):
        while sent < len(wires) and sent - got < inflight:
            sent_at.append(time.perf_counter())
            sock.sendall(wires[sent])
            sent += 1
        data = sock.recv(65536)
        if not data:
            break
        unpacker.feed(data)
        for reply in unpacker:
            latencies.append(time.perf_counter() - sent_at.popleft())
            got += 1
    sock.close()
    results.put(latencies)


def node_run(ld: ServerThread, wires: list[bytes], per: int, pool: int | None, inflight: int = 8) -> dict:
    ld.server.requests.clear()
    ld.server.accepted.clear()
    total = len(wires) * per
    with tempfile.TemporaryDirectory() as store:
        port = free_port()
        proc = start_node(ld.server.url, store, port, pool)
        try:
            cpu0, _, _ = proc_stats(proc.pid)
            results = multiprocessing.Queue()
            halves = [wires[0::2], wires[1::2]]
            start = time.perf_counter()
            clients = [multiprocessing.Process(target=client, args=(port, h, inflight, results)) for h in halves]
            for c in clients:
                c.start()
            latencies = [x for _ in clients for x in results.get(timeout=600)]
            for c in clients:
                c.join()
            acked = time.perf_counter() - start
            deadline = time.monotonic() + 120
            while sum(r.count for r in ld.server.requests if r.status == 202 and not r.duplicate) < total and time.monotonic() < deadline:
                time.sleep(0.005)
            delivered = time.perf_counter() - start
            cpu1, _, peak = proc_stats(proc.pid)
            got = sum(r.count for r in ld.server.requests if r.status == 202 and not r.duplicate)
        finally:
            proc.terminate()
            proc.wait(60)
    latencies.sort()
    return {
        "records_per_s": total / delivered, "acked_per_s": total / acked,
        "p99_ack_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else 0.0,
        "cpu_us_per_record": (cpu1 - cpu0) / total * 1e6, "peak_rss_mb": peak / 2**20, "delivered_all": got >= total,
    }


def steady_client(port: int, seconds: float, results) -> None:
    """A small acked request every 20 ms; the largest gap between two acks."""
    records = corpus(10, seed=5)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(30)
    unpacker = msgpack.Unpacker(raw=False)
    gaps, last = [], None
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        sock.sendall(fluentbit_forward("signal.steady", records, f"s{i}"))
        i += 1
        while True:
            for _ in unpacker:
                now = time.perf_counter()
                if last is not None:
                    gaps.append(now - last)
                last = now
                break
            else:
                unpacker.feed(sock.recv(65536))
                continue
            break
        time.sleep(0.02)
    sock.close()
    results.put(max(gaps) if gaps else 0.0)


def ack_gap(ld: ServerThread, pool: int | None, quick: bool) -> dict:
    records = corpus(2000, seed=7)
    big_records = records * (16 if quick else 16 * 16)  # about 31 MiB in Fluentd's PackedForward
    big = fluentd_packed("signal.big", big_records[: 2_000 if quick else 30_500], "big")
    raw = _entries(big_records[: 4_000 if quick else 62_000], True)  # inflates to about 64 MiB
    zipped = msgpack.packb(["signal.big", gzip.compress(raw, 6, mtime=0), {"chunk": "zipped", "compressed": "gzip"}], use_bin_type=True)
    with tempfile.TemporaryDirectory() as store:
        port = free_port()
        proc = start_node(ld.server.url, store, port, pool)
        try:
            results = multiprocessing.Queue()
            steady = multiprocessing.Process(target=steady_client, args=(port, 3 if quick else 12, results))
            steady.start()
            time.sleep(0.5)
            sock = socket.create_connection(("127.0.0.1", port))
            sock.settimeout(60)
            unpacker = msgpack.Unpacker(raw=False)
            for wire in (big, zipped):
                sock.sendall(wire)
                while not any(True for _ in unpacker):
                    unpacker.feed(sock.recv(65536))
            sock.close()
            worst = results.get(timeout=120)
            steady.join()
        finally:
            proc.terminate()
            proc.wait(60)
    return {"worst_ack_gap_ms": worst * 1000, "big_mb": len(big) / 2**20, "inflated_mb": len(raw) / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", metavar="FILE", help="write the rows (benchmarks/run.py's format) here")
    args = parser.parse_args()
    quick = args.quick
    runs = 1 if quick else 3
    records = corpus(5_000 if quick else 50_000)
    mapper = Mapper(load_preset("default"))
    sizes = [len(json.dumps(r)) for r in records[:2000]]
    accepted = sum(type(mapper.map_encoded(r, T0)) is bytes for r in records[:2000]) / 2000
    print(f"machine: {machine()}; corpus: mean JSON size {statistics.mean(sizes):.0f} bytes, accepted by the Default preset: {accepted:.1%}")
    ld = ServerThread()
    rows = []
    # (framing, records per request, requests, pool_size or None for the default)
    plan = [("fluentbit_forward", 1000, 40, None), ("fluentbit_forward", 1000, 40, 0)] if quick else [
        ("fluentbit_forward", 1000, 600, None), ("fluentbit_forward", 1000, 600, 0),
        ("fluentbit_gzip", 1000, 600, None), ("fluentbit_gzip", 1000, 600, 0),
        ("fluentd_packed", 1000, 600, None),
        ("fluentbit_forward", 100, 4000, None), ("fluentbit_forward", 2500, 240, None),
        ("fluentbit_forward", 30, 12000, None),  # Fluent Bit's traffic pattern: small chunks, many in flight
    ]
    for framing, per, count, pool in plan:
        wires = requests(framing, records, per, count)
        floor = [floor_rate(wires[: max(4, 40_000 // per)], mapper) for _ in range(runs)]
        inflight = 32 if per <= 30 else 8
        samples = [node_run(ld, wires, per, pool, inflight) for _ in range(runs)]
        value = [s["records_per_s"] for s in samples]
        label = f"{framing}, {per}/request, pool {'off' if pool == 0 else 'on'}" + (f", {inflight} in flight" if inflight != 8 else "")
        fl = statistics.median(floor)
        extra = {
            "acked_per_s": round(statistics.median(s["acked_per_s"] for s in samples)),
            "p99_ack_ms": round(statistics.median(s["p99_ack_ms"] for s in samples), 1),
            "cpu_us_per_record": round(statistics.median(s["cpu_us_per_record"] for s in samples), 2),
            "peak_rss_mb": round(max(s["peak_rss_mb"] for s in samples)),
            "delivered_all": all(s["delivered_all"] for s in samples),
        }
        rows.append({
            "figure": label, "value": statistics.median(value), "unit": "records/s", "spread": [min(value), max(value)], "runs": runs,
            "floor": fl, "floor_figure": "one process: streamed decode -> map -> orjson, same bytes", "ratio": statistics.median(value) / fl, "extra": extra,
        })
        print(f"{label}: {statistics.median(value):,.0f} delivered/s (floor {fl:,.0f}/s, ratio {statistics.median(value) / fl:.2f}) {extra}")
    for pool in (None, 0):
        gap = ack_gap(ld, pool, quick)
        label = f"worst ack gap, small requests every 20 ms beside a {gap['big_mb']:.0f} MiB and a gzip request inflating to {gap['inflated_mb']:.0f} MiB, pool {'off' if pool == 0 else 'on'}"
        rows.append({
            "figure": label, "value": gap["worst_ack_gap_ms"], "unit": "ms", "spread": [gap["worst_ack_gap_ms"]] * 2, "runs": 1,
            "floor": None, "floor_figure": None, "ratio": None, "extra": {},
        })
        print(f"{label}: {gap['worst_ack_gap_ms']:.0f} ms")
    report = {"benchmark": "realistic", "machine": machine(), "quick": quick, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if not quick:
        out = Path(__file__).resolve().parent / "results" / "realistic.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
