"""Forward protocol benchmark: the codec per mode and the server over loopback with acks, each
beside a floor measured in the same run on the same bytes (a bare ``msgpack.Unpacker`` loop).

    python benchmarks/forward.py            # full run, writes benchmarks/results/forward.json
    python benchmarks/forward.py --quick    # a few seconds, to keep the benchmark from rotting
    python benchmarks/forward.py --out F    # the results (benchmarks/report.py's format) to F instead

Figures are records per second; each is the median of several runs, with the spread (min..max).
The ratio is figure / floor: 1.0 means protocol handling costs nothing over decoding msgpack.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import multiprocessing
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

import msgpack
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fluent_ld.config.loader import load_text
from fluent_ld.forward.codec import NEED_DATA, Decoder, encode_event_time
from fluent_ld.pipeline.node import Node

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report as results

RECORD = {
    "type": "track",
    "event": "Order Completed",
    "user_id": "user-1001",
    "anonymous_id": "a1b2c3d4-anonymous-id",
    "timestamp": "2026-11-24T12:00:00.000Z",
    "properties": {"order_id": "ORD-1001", "revenue": 89.99, "currency": "GBP"},
}
T0 = 1_795_000_000


def entries(n: int) -> list:
    return [[encode_event_time((T0 + i) * 10**9 + i), dict(RECORD, n=i)] for i in range(n)]


def request(mode: str, n: int, chunk: str | None = None) -> bytes:
    option = {"size": n}
    if chunk:
        option["chunk"] = chunk
    items = entries(n)
    if mode == "message":
        return b"".join(msgpack.packb(["signal", t, r, option], use_bin_type=True) for t, r in items)
    if mode == "forward":
        return msgpack.packb(["signal", items, option], use_bin_type=True)
    packed = b"".join(msgpack.packb(e, use_bin_type=True) for e in items)
    if mode == "gzip":
        packed, option["compressed"] = gzip.compress(packed), "gzip"
    elif mode == "zstd":
        packed = zstandard.ZstdCompressor(write_content_size=False).compress(packed)
        option["compressed"] = "zstd"
    # Fluentd's out_forward sends the entries as str32 (use_bin_type=False for bytes).
    return msgpack.packb(["signal", packed, option], use_bin_type=(mode != "packed"))


def floor_decode(stream: bytes) -> int:
    """A bare msgpack loop: unpack each request and, for packed modes, its entries (after
    decompressing), touching every record once. No validation, no limits, no time handling."""
    records = 0
    outer = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape", max_buffer_size=len(stream))
    outer.feed(stream)
    for message in outer:
        body = message[1]
        if isinstance(body, list):
            records += len(body)
        elif isinstance(body, (bytes, str)):
            data = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else body
            compressed = message[2].get("compressed")
            if compressed == "gzip":
                data = gzip.decompress(data)
            elif compressed == "zstd":
                data = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True).read()
            inner = msgpack.Unpacker(raw=False, max_buffer_size=len(data))
            inner.feed(data)
            records += sum(1 for _ in inner)
        else:
            records += 1
    return records


def codec_decode(stream: bytes) -> int:
    decoder = Decoder()
    records = 0
    step = 256 * 1024  # as a socket delivers it
    for i in range(0, len(stream), step):
        decoder.receive_data(stream[i : i + step])
        while (event := decoder.next_event(0)) is not NEED_DATA:
            records += len(event.entries)
    return records


def rate(fn, stream: bytes, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        n = fn(stream)
        out.append(n / (time.perf_counter() - start))
    return out


# -- server over loopback ------------------------------------------------------------------------


def client_process(port: int, payload: bytes, requests: int, per_request: int, results) -> None:
    """Send ``requests`` pre-encoded chunks with acks, keeping a window of 8 in flight."""
    sock = socket.create_connection(("127.0.0.1", port))
    unpacker = msgpack.Unpacker(raw=False)
    window, sent, acked = 8, 0, 0
    start = time.perf_counter()
    latencies = []
    sent_at = []
    while acked < requests:
        while sent < requests and sent - acked < window:
            sock.sendall(payload)
            sent_at.append(time.perf_counter())
            sent += 1
        data = sock.recv(65536)
        if not data:
            raise SystemExit("server closed the connection")
        unpacker.feed(data)
        for _ in unpacker:
            latencies.append(time.perf_counter() - sent_at[acked])
            acked += 1
    elapsed = time.perf_counter() - start
    sock.close()
    results.put((requests * per_request, elapsed, latencies))


def server_rate(clients: int, requests: int, per_request: int) -> tuple[float, float]:
    """Records/s through a node (forward -> null) with acks, and p99 ack latency in ms."""
    payload = request("packed", per_request, chunk="YmVuY2htYXJr\n")
    config = load_text("<source>\n  @type forward\n  port 0\n</source>\n<match **>\n  @type null\n</match>\n")

    async def run() -> tuple[float, float]:
        node = Node(config)
        await node.start()
        port = node.sources[0][1].port
        results = multiprocessing.Queue()
        procs = [multiprocessing.Process(target=client_process, args=(port, payload, requests, per_request, results)) for _ in range(clients)]
        start = time.perf_counter()
        for p in procs:
            p.start()
        loop = asyncio.get_running_loop()
        outcomes = [await loop.run_in_executor(None, results.get) for _ in procs]
        elapsed = time.perf_counter() - start
        for p in procs:
            p.join()
        await node.stop()
        total = sum(o[0] for o in outcomes)
        latencies = sorted(x for o in outcomes for x in o[2])
        p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
        return total / elapsed, p99

    return asyncio.run(run())


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds; no results file unless --out")
    parser.add_argument("--out", metavar="FILE", help="write the results here (instead of results/forward.json)")
    args = parser.parse_args()
    runs = 2 if args.quick else 7
    n_requests = 20 if args.quick else 200
    per_request = 100

    rows = []  # (figure, records/s, floor/s, raw samples, raw floor samples[, p99 ack ms])
    for mode in ("message", "forward", "packed", "gzip", "zstd"):
        per = 1 if mode == "message" else per_request
        count = n_requests * per_request // per
        stream = b"".join(request(mode, per) for _ in range(count))
        assert codec_decode(stream) == floor_decode(stream) == n_requests * per_request
        floor = rate(floor_decode, stream, runs)
        codec = rate(codec_decode, stream, runs)
        rows.append((f"codec {mode}", summary(codec), summary(floor), codec, floor))

    floor_stream = b"".join(request("packed", per_request) for _ in range(n_requests))
    floor = rate(floor_decode, floor_stream, runs)
    for clients in (1, 2):
        samples = [server_rate(clients, n_requests * (5 if not args.quick else 1), per_request) for _ in range(max(1, runs // 2))]
        rows.append(
            (
                f"server packed+ack, {clients} client(s)",
                summary([s[0] for s in samples]),
                summary(floor),
                [s[0] for s in samples],
                floor,
                statistics.median(s[1] for s in samples),
            )
        )

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, msgpack {'.'.join(map(str, msgpack.version))}"
    print(f"machine: {machine}")
    print(f"{'figure':<36} {'records/s':>12} {'spread':>23} {'floor/s':>12} {'ratio':>6} {'p99 ack':>9}")
    report = {"benchmark": "forward", "machine": machine, "quick": args.quick, "rows": []}
    for name, fig, fl, values, floor_values, *extra in rows:
        ratio = fig["median"] / fl["median"]
        p99 = f"{extra[0]:.1f}ms" if extra else ""
        print(f"{name:<36} {fig['median']:>12,.0f} {fig['min']:>11,.0f}..{fig['max']:<11,.0f} {fl['median']:>12,.0f} {ratio:>6.2f} {p99:>9}")
        floor_figure = "bare msgpack loop over the same chunks, in process" if extra else "bare msgpack.Unpacker loop over the same bytes"
        uniform = results.row(name, values, "records/s", floor_values, floor_figure, {"p99_ack_ms": round(extra[0], 1)} if extra else {})
        # The keys of earlier runs (records_per_s, floor_per_s, p99_ack_ms) beside the uniform ones.
        report["rows"].append({**uniform, "records_per_s": fig, "floor_per_s": fl, "ratio": ratio, "p99_ack_ms": extra[0] if extra else None})
    out = results.write(report, args.out, args.quick, "forward.json")
    if out is not None:
        print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
