"""The whole node on what users send: ~1 KB Signal events (benchmarks/corpus.py) in the framings real
clients use, with durable acks, delivered to the LaunchDarkly-compatible server, beside the
single-process floor measured in the same run on the same bytes.

    python benchmarks/realistic.py            # full run (about 5 minutes), writes results/realistic.json
    python benchmarks/realistic.py --quick    # seconds
    python benchmarks/realistic.py --out F    # also the rows of benchmarks/run.py, to F

The node: a process (``python -m fluent_ld run``) with forward (127.0.0.1) -> launchdarkly, a file
store (fsync before each ack, ``flush_interval 250ms``), delivering to the LaunchDarkly-compatible
server in this process (counts only). ``pool on`` is the default pool size (the cores divided by
workers), ``pool off`` is ``pool_size 0`` (all CPU work on the event loop); ``pool: n/a`` when the
node does not know ``pool_size``.

Rows:
- Fluent Bit Forward mode, Fluent Bit gzip and Fluentd's str32 PackedForward, 100 to 2,500 records
  per request: 2 client connections (as Fluent Bit's out_forward opens) with acks, 8 requests in
  flight each. The value is **delivered** records/s: records over the time from the first send to
  the last event received by the LaunchDarkly-compatible server; acked/s and ack latency beside it.
- Fluent Bit's real traffic pattern: 30-record chunks (~30 KB), 2 connections, 32 in flight each.
- Message mode with the real fluent-logger client (2 processes, one record per request, no acks).
- node.py's slim corpus (PackedForward, 500 ~200-byte records per request, 4 connections) for
  comparison with node.py's rows.
- The worst gap between the acks of a client sending 10 records every 20 ms, while another client
  sends a ~31 MiB request and then a gzip request that inflates to ~64 MiB (both acked): pool on,
  off, and ``pool_size 1`` (the default on one core); the median of the runs, each sample beside it,
  and the worst gap in each phase of the median sample (while the big request is in, while the gzip
  one is, after both were acked).

Floor: one process, no I/O, the same bytes: each request through one msgpack unpacker (the entries of
a packed or gzip payload streamed through a second one, never a list of them), the EventTime and entry
checks, ``Mapper.map_encoded`` (validate, map, orjson) one record at a time, the fragments joined
once per request. CPU is the node's and its pool's (from /proc), per record delivered.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import gzip
import math
import multiprocessing
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from collections import deque
from pathlib import Path
from typing import Any

import msgpack
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402
import report as results  # noqa: E402
from node import TOKEN, ServerThread, proc_stats  # noqa: E402
from node import chunk as slim_chunk  # noqa: E402

from fluent_ld.forward.codec import EventTime  # noqa: E402
from fluent_ld.launchdarkly.mapping import Mapper  # noqa: E402
from fluent_ld.launchdarkly.preset.loader import load_preset  # noqa: E402

FLOOR_FIGURE = "one process, same bytes: streamed msgpack decode, time checks, map_encoded, one join per request"
FRAMING_NAMES = {
    "fluentbit_forward": "Fluent Bit forward",
    "fluentbit_gzip": "Fluent Bit gzip",
    "fluentd_packed": "Fluentd str32 packed",
    "message": "Message mode",
    "slim_packed": "slim PackedForward",
}
CLIENT_DEADLINE = 90.0  # seconds a load client may send for, whatever its count
DELIVERY_TIMEOUT = 120.0

# -- the floor -----------------------------------------------------------------------------------------

_ARRAY = {**{b: 1 for b in range(0x90, 0xA0)}, 0xDC: 3, 0xDD: 5}
_STR_BIN = {**{b: 1 for b in range(0xA0, 0xC0)}, 0xD9: 2, 0xDA: 3, 0xDB: 5, 0xC4: 2, 0xC5: 3, 0xC6: 5}
_PAIR = struct.Struct(">II")


def _ext(code: int, data: bytes) -> Any:
    """The codec's checks on an EventTime: 8 bytes, nanoseconds in range."""
    if code == 0:
        if len(data) != 8:
            raise ValueError("EventTime must hold 8 bytes")
        seconds, nanos = _PAIR.unpack(data)
        if nanos >= 1_000_000_000:
            raise ValueError("EventTime nanoseconds out of range")
        return EventTime(seconds * 1_000_000_000 + nanos)
    return msgpack.ExtType(code, data)


def _unpacker(size: int) -> msgpack.Unpacker:
    return msgpack.Unpacker(raw=False, strict_map_key=True, ext_hook=_ext, max_buffer_size=max(size, 1))


def _time_ns(entry: Any) -> int:
    """An entry's time (``[EventTime, record]`` or v1.5 ``[[EventTime, {meta}], record]``), or -1."""
    if type(entry) is list and len(entry) == 2 and type(entry[1]) is dict:
        t = entry[0]
        if type(t) is list and t:
            t = t[0]
        if type(t) is EventTime and t:
            return int(t)
        if type(t) is int and t > 0:
            return t * 1_000_000_000
    return -1


def floor_requests(wires: list[bytes], mapper: Mapper) -> int:
    """Decode -> checks -> map -> orjson, one record at a time; the fragments joined once per
    request. Returns the records mapped."""
    map_encoded = mapper.map_encoded
    records = 0
    for wire in wires:
        outer = _unpacker(len(wire))
        outer.feed(wire)
        outer.read_array_header()
        outer.skip()  # the tag
        at = outer.tell()
        first = wire[at]
        fragments = []
        if first in _ARRAY:  # Forward mode: the entries streamed from the request's own unpacker
            for _ in range(outer.read_array_header()):
                entry = outer.unpack()
                t = _time_ns(entry)
                if t >= 0:
                    fragments.append(map_encoded(entry[1], t))
            option = outer.unpack()
        else:  # packed: the payload's bytes as they are (str or bin), then a second unpacker over them
            head = _STR_BIN[first]
            length = first & 0x1F if head == 1 else int.from_bytes(wire[at + 1 : at + head], "big")
            payload: Any = memoryview(wire)[at + head : at + head + length]
            outer.skip()
            option = outer.unpack()
            if option.get("compressed") == "gzip":
                payload = zlib.decompress(payload, 31)
            inner = _unpacker(len(payload))
            inner.feed(payload)
            for entry in inner:
                t = _time_ns(entry)
                if t >= 0:
                    fragments.append(map_encoded(entry[1], t))
        b",".join(f for f in fragments if type(f) is bytes)
        records += len(fragments)
    return records


def floor_messages(stream: bytes, mapper: Mapper) -> int:
    """Message mode: one unpacker over the whole stream of ``[tag, time, record]`` requests."""
    map_encoded = mapper.map_encoded
    records = 0
    unpacker = _unpacker(len(stream))
    unpacker.feed(stream)
    for message in unpacker:
        t = message[1]
        if type(t) is EventTime and type(message[2]) is dict:
            b",".join([map_encoded(message[2], int(t))])
            records += 1
    return records


def floor_rate(wires: list[bytes], mapper: Mapper, framing: str) -> float:
    start = time.perf_counter()
    n = floor_messages(wires[0], mapper) if framing == "message" else floor_requests(wires, mapper)
    return n / (time.perf_counter() - start)


# -- the node ------------------------------------------------------------------------------------------

_NODES: list[subprocess.Popen] = []


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the node's process group (the node and its pool), SIGKILL if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
    except ProcessLookupError:
        pass
    proc.wait()


@atexit.register
def _kill_all() -> None:
    for proc in _NODES:
        _kill_group(proc)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1 (held open together, so no two are the same)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def pool_supported() -> bool:
    """Whether the node takes ``<system> pool_size`` (check-config accepts it)."""
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "check.conf"
        conf.write_text("<system>\n  pool_size 0\n</system>\n<source>\n  @type forward\n  port 0\n</source>\n<match **>\n  @type null\n</match>\n")
        done = subprocess.run([sys.executable, "-m", "fluent_ld", "check-config", "-c", str(conf)], capture_output=True, timeout=60)
        return done.returncode == 0


class Node:
    """A node process in its own session (killed with its group on exit), with a monitor_agent on
    127.0.0.1 to tell when its pool is ready and where requests were decoded."""

    def __init__(self, ld: ServerThread, pool: int | None, store: str) -> None:
        self.port, self.monitor = free_ports(2)
        system = f"  pool_size {pool}\n" if pool is not None else ""
        conf = Path(store) / "node.conf"
        conf.write_text(
            f"<system>\n  workers 1\n{system}</system>\n"
            f"<source>\n  @type forward\n  bind 127.0.0.1\n  port {self.port}\n</source>\n"
            f"<source>\n  @type monitor_agent\n  bind 127.0.0.1\n  port {self.monitor}\n</source>\n"
            f"<match signal.**>\n  @type launchdarkly\n  access_token {TOKEN}\n  project_key default\n"
            f"  environment_key production\n  events_host {ld.server.url}\n  <buffer>\n    path {store}\n"
            f"    flush_interval 250ms\n    total_limit_size 2g\n    retry_wait 200ms\n    retry_max_interval 1s\n  </buffer>\n</match>\n"
        )
        self.log = Path(store) / "node.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "fluent_ld", "run", "-c", str(conf)], stdout=log, stderr=log, start_new_session=True)
        _NODES.append(self.proc)
        try:
            self._wait_ready(pool)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, pool: int | None) -> None:
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("node did not start listening in 30 s") from None
                time.sleep(0.05)
        # The pool's processes take about a second (each imports the mapping); until then the node
        # works inline. Wait for them (at most 10 s: a node without the gauge goes on after that).
        want = default_pool_size() if pool is None else pool
        deadline = time.monotonic() + 10
        while want and time.monotonic() < deadline:
            if self.metrics().get("fluentld_pool_processes", 0) >= want:
                break
            time.sleep(0.1)

    def metrics(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out = {}
        for line in text.splitlines():
            if line.startswith("fluentld_pool_") and " " in line:
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stats(self) -> tuple[float, int, int]:
        """CPU seconds, RSS and peak RSS of the node and its pool (every descendant)."""
        return proc_stats(self.proc.pid)

    def loop_cpu(self) -> float:
        """CPU seconds of the node's own process (the event loop and its threads: the store's
        writer, the HTTP client), without the pool."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        _kill_group(self.proc)
        if self.proc in _NODES:
            _NODES.remove(self.proc)


# -- the clients (separate processes) ------------------------------------------------------------------


def acked_client(port: int, wires: list[bytes], per: int, count: int, inflight: int, results) -> None:
    """Send ``count`` requests (``wires`` in turn) with acks, ``inflight`` at a time, for at most
    CLIENT_DEADLINE seconds; report records acked, first send and last ack (wall clock), ack
    latencies and this process's CPU."""
    try:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.settimeout(60)
        unpacker = msgpack.Unpacker(raw=False)
        sent_at: deque[float] = deque()  # acks come back in request order on one connection
        latencies = []
        sent = acked = 0
        first = time.time()
        deadline = time.monotonic() + CLIENT_DEADLINE
        while acked < sent or (sent < count and time.monotonic() < deadline):
            while sent < count and sent - acked < inflight and time.monotonic() < deadline:
                sent_at.append(time.perf_counter())
                sock.sendall(wires[sent % len(wires)])
                sent += 1
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("the node closed the connection")
            unpacker.feed(data)
            for _ in unpacker:
                latencies.append(time.perf_counter() - sent_at.popleft())
                acked += 1
        last = time.time()
        sock.close()
        results.put({"records": acked * per, "first": first, "last": last, "latencies": latencies, "cpu": sum(os.times()[:2])})
    except Exception as exc:  # the parent reports it
        results.put({"error": repr(exc)})


def logger_client(port: int, records: list[dict], count: int, results) -> None:
    """fluent-logger as an application uses it: one emit per record (Message mode, no acks)."""
    try:
        from fluent import sender

        logger = sender.FluentSender("signal", host="127.0.0.1", port=port, nanosecond_precision=True)
        emitted = 0
        first = time.time()
        deadline = time.monotonic() + CLIENT_DEADLINE
        for i in range(count):
            if i % 1000 == 0 and time.monotonic() > deadline:
                break
            if not logger.emit("web", records[i % len(records)]):
                raise RuntimeError(f"emit failed: {logger.last_error!r}")
            emitted += 1
        logger.close()
        results.put({"records": emitted, "first": first, "last": time.time(), "latencies": [], "cpu": sum(os.times()[:2])})
    except Exception as exc:
        results.put({"error": repr(exc)})


def steady_client(port: int, records: list[dict], stop, max_seconds: float, results) -> None:
    """10 records every 20 ms, each acked before the next: the gaps between consecutive acks."""
    try:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.settimeout(30)
        unpacker = msgpack.Unpacker(raw=False)
        latencies, gaps, acks, last = [], [], [], None
        start = time.monotonic()
        i = 0
        while not stop.is_set() and time.monotonic() - start < max_seconds:
            sent = time.perf_counter()
            sock.sendall(corpus.fluentbit_forward(records, "signal.steady", f"steady-{i}"))
            i += 1
            got = False
            while not got:
                data = sock.recv(65536)
                if not data:
                    raise RuntimeError("the node closed the connection")
                unpacker.feed(data)
                for _ in unpacker:
                    got = True
            now = time.perf_counter()
            latencies.append(now - sent)
            acks.append(now)
            if last is not None:
                gaps.append(now - last)
            last = now
            time.sleep(max(0.0, start + i * 0.02 - time.monotonic()))
        sock.close()
        results.put({"records": i * len(records), "gaps": gaps, "latencies": latencies, "acks": acks})
    except Exception as exc:
        results.put({"error": repr(exc)})


def _collect(results, procs: list[multiprocessing.Process], timeout: float) -> list[dict]:
    try:
        outcomes = [results.get(timeout=timeout) for _ in procs]
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join()
    errors = [o["error"] for o in outcomes if "error" in o]
    if errors:
        raise RuntimeError(f"client failed: {errors[0]}")
    return outcomes


def _delivered(ld: ServerThread, before: int, total: int) -> tuple[int, float]:
    """Wait until the LaunchDarkly-compatible server has ``total`` new events (at most
    DELIVERY_TIMEOUT); the events it has and the wall time of the last accepted request."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while ld.server.unique_events - before < total and time.monotonic() < deadline:
        time.sleep(0.005)
    accepted = [r.time for r in list(ld.server.requests) if r.status == 202]
    return ld.server.unique_events - before, max(accepted, default=time.time())


def _p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[max(0, math.ceil(len(values) * q) - 1)] if values else 0.0


def quiet_heap() -> None:
    """Move this process's objects (the corpus, its requests: millions) out of the collector's
    sight. Otherwise every full collection, which the LaunchDarkly-compatible server's parsing of
    each body triggers, walks them all, and the harness takes CPU the node should have."""
    gc.collect()
    gc.freeze()


def load_run(ld: ServerThread, pool: int | None, clients: list[tuple[Any, tuple]]) -> dict:
    """One node, the given client processes; delivered and acked rates, ack latency, node CPU."""
    quiet_heap()
    ld.server.requests.clear()
    ld.server.accepted.clear()
    with tempfile.TemporaryDirectory(prefix="fluent-ld-realistic-") as store:
        node = Node(ld, pool, store)
        try:
            before = ld.server.unique_events
            cpu0, _, _ = node.stats()
            loop0 = node.loop_cpu()
            queue = multiprocessing.Queue()
            procs = [multiprocessing.Process(target=target, args=(node.port, *args, queue), daemon=True) for target, args in clients]
            for p in procs:
                p.start()
            outcomes = _collect(queue, procs, CLIENT_DEADLINE + 90)
            total = sum(o["records"] for o in outcomes)
            got, last = _delivered(ld, before, total)
            cpu1, _, peak = node.stats()
            loop1 = node.loop_cpu()
            where = node.metrics()
        finally:
            node.stop()
    first = min(o["first"] for o in outcomes)
    latencies = [x for o in outcomes for x in o["latencies"]]
    pooled = where.get('fluentld_pool_requests_total{where="pool"}', 0.0)
    inline = where.get('fluentld_pool_requests_total{where="inline"}', 0.0)
    return {
        "delivered_per_s": got / max(last - first, 1e-9),
        "acked_per_s": total / max(max(o["last"] for o in outcomes) - first, 1e-9),
        "p50_ack_ms": _p(latencies, 0.5) * 1000,
        "p99_ack_ms": _p(latencies, 0.99) * 1000,
        "cpu_us_per_record": (cpu1 - cpu0) / max(got, 1) * 1e6,
        "loop_cpu_us_per_record": (loop1 - loop0) / max(got, 1) * 1e6,
        "client_cpu_us_per_record": sum(o["cpu"] for o in outcomes) / max(total, 1) * 1e6,
        "peak_rss_mb": peak / 2**20,
        "delivered_all": got >= total,
        "records": total,
        "pooled_share": pooled / (pooled + inline) if pooled + inline else None,
    }


# -- ack gaps beside huge requests ---------------------------------------------------------------------


def huge_requests(records: list[dict], quick: bool) -> tuple[bytes, int, bytes, int, int]:
    """A Fluentd PackedForward request just under 31 MiB and a Fluent Bit gzip request whose entries
    inflate to ~64 MiB (quick: 4 and 8 MiB); their record counts and the inflated size."""
    big_target, zip_target = (4, 8) if quick else (31, 64)
    pack = msgpack.Packer(use_bin_type=True).pack
    t = corpus.T0

    def fill(target: int, v15: bool) -> tuple[bytes, int]:
        parts, size, n = [], 0, 0
        while True:
            r = records[n % len(records)]
            entry = pack([[corpus.encode_event_time(t + n), {}] if v15 else corpus.encode_event_time(t + n), r])
            if size + len(entry) > target * 2**20:
                return b"".join(parts), n
            parts.append(entry)
            size += len(entry)
            n += 1

    payload, big_n = fill(big_target - 0.01, False)
    big = b"\x93" + msgpack.packb("signal.big") + b"\xdb" + struct.pack(">I", len(payload)) + payload
    big += msgpack.packb({"size": big_n, "compressed": "text", "chunk": "YmlnLWNodW5rLTAwMDE=\n"})
    raw, zip_n = fill(zip_target, True)
    zipped = msgpack.packb(
        ["signal.big", gzip.compress(raw, 6, mtime=0), {"size": zip_n, "chunk": "Z3ppcC1jaHVuay0wMDAx", "fluent_signal": 0, "compressed": "gzip"}],
        use_bin_type=True,
    )
    return big, big_n, zipped, zip_n, len(raw)


def ack_gap_run(ld: ServerThread, pool: int | None, big: bytes, big_n: int, zipped: bytes, zip_n: int) -> dict:
    quiet_heap()
    ld.server.requests.clear()
    ld.server.accepted.clear()
    small = corpus.realistic(10, seed=5)
    with tempfile.TemporaryDirectory(prefix="fluent-ld-realistic-") as store:
        node = Node(ld, pool, store)
        try:
            before = ld.server.unique_events
            ctx = multiprocessing.get_context("fork")
            stop, queue = ctx.Event(), ctx.Queue()
            steady = ctx.Process(target=steady_client, args=(node.port, small, stop, 120.0, queue), daemon=True)
            steady.start()
            big_ms: list[float] = []
            marks: list[float] = []  # big sent, gzip sent, gzip acked (perf_counter: one clock for all processes)
            try:
                time.sleep(0.5)
                with socket.create_connection(("127.0.0.1", node.port)) as sock:
                    sock.settimeout(120)
                    unpacker = msgpack.Unpacker(raw=False)
                    for wire in (big, zipped):
                        sent = time.perf_counter()
                        marks.append(sent)
                        sock.sendall(wire)
                        got = False
                        while not got:
                            data = sock.recv(65536)
                            if not data:
                                raise RuntimeError(f"the node closed the connection: {node.log.read_text()[-1000:]}")
                            unpacker.feed(data)
                            for _ in unpacker:
                                got = True
                        big_ms.append((time.perf_counter() - sent) * 1000)
                marks.append(time.perf_counter())
                time.sleep(1.0)  # the steady client goes on while the big requests are stored and sent
            finally:
                stop.set()
            (outcome,) = _collect(queue, [steady], 60)
            total = outcome["records"] + big_n + zip_n
            got, _ = _delivered(ld, before, total)
            _, _, peak = node.stats()
        finally:
            node.stop()
    # Each gap counted in the phase it overlaps most: while the 31 MiB request was in (sent, not yet
    # acked), the gzip one, or after both were acked (their events cut into batches and delivered).
    phases = {"gap_during_big_ms": (marks[0], marks[1]), "gap_during_gzip_ms": (marks[1], marks[2]), "gap_after_ms": (marks[2], math.inf)}
    worst = dict.fromkeys(phases, 0.0)
    for end, gap in zip(outcome["acks"][1:], outcome["gaps"]):
        overlaps = {name: min(end, b) - max(end - gap, a) for name, (a, b) in phases.items()}
        name = max(overlaps, key=overlaps.get)
        if overlaps[name] > 0:
            worst[name] = max(worst[name], gap * 1000)
    return {
        "worst_ack_gap_ms": max(outcome["gaps"], default=0.0) * 1000,
        **worst,
        "p99_ack_ms": _p(outcome["latencies"], 0.99) * 1000,
        "big_ack_ms": big_ms[0],
        "gzip_ack_ms": big_ms[1],
        "peak_rss_mb": peak / 2**20,
        "delivered_all": got >= total,
    }


# -- the plan ------------------------------------------------------------------------------------------


def default_pool_size() -> int:
    """The node's default pool_size with one worker: the cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pool_label(pool: int | None, supported: bool) -> str:
    if not supported:
        return "pool: n/a"
    if pool is None:
        return "pool on"
    return "pool off" if pool == 0 else f"pool_size {pool}"


def median_row(figure: str, samples: list[dict], floors: list[float] | None, extra_keys: list[str]) -> dict:
    values = [s["delivered_per_s"] for s in samples]
    extra: dict[str, Any] = {}
    for key in extra_keys:
        vals = [s[key] for s in samples if s.get(key) is not None]
        if not vals:
            continue
        if key == "peak_rss_mb":
            extra[key] = round(max(vals))
        elif key in ("acked_per_s",):
            extra[key] = round(statistics.median(vals))
        else:
            extra[key] = round(
                statistics.median(vals), 2 if key in ("cpu_us_per_record", "loop_cpu_us_per_record", "client_cpu_us_per_record", "pooled_share") else 1
            )
    extra["delivered_all"] = all(s["delivered_all"] for s in samples)
    return results.row(figure, values, "records/s", floors, FLOOR_FIGURE if floors else None, extra)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a couple of small rows, seconds")
    parser.add_argument("--out", metavar="FILE", help="write the rows (benchmarks/run.py's format) here")
    parser.add_argument("--runs", type=int, default=0, help="samples per row (default 3, 1 with --quick)")
    parser.add_argument(
        "--only",
        metavar="PART",
        action="append",
        default=[],
        help="run only the rows whose kind contains PART: FRAMING/PER_REQUEST/on|off for the load rows "
        "(fluentbit_forward/1000/on, fluentbit_gzip, fluentd_packed), message, slim, gap/on|off|1; repeatable",
    )
    args = parser.parse_args()

    def wanted(kind: str) -> bool:
        return not args.only or any(part in kind for part in args.only)

    quick = args.quick
    runs = args.runs or (1 if quick else 3)
    started = time.monotonic()

    records = corpus.realistic(6_000 if quick else 50_000)
    mapper = Mapper(load_preset("default"))
    sample = records[:5_000]
    sizes = [len(orjson.dumps(r)) for r in sample]
    accepted = sum(type(mapper.map_encoded(r, corpus.T0)) is bytes for r in sample) / len(sample)
    supported = pool_supported()
    pools = f"pool on = the default pool_size ({default_pool_size()} processes here)" if supported else "pool_size unknown to this node (pool: n/a)"
    print(f"machine: {results.machine()}; {pools}", flush=True)
    print(
        f"corpus: {len(records):,} records, mean JSON size {statistics.mean(sizes):,.0f} bytes "
        f"({min(sizes)}..{max(sizes)}), accepted by the Default preset: {accepted:.2%}",
        flush=True,
    )

    ld = ServerThread()
    rows: list[dict] = []
    extra_keys = [
        "acked_per_s",
        "p50_ack_ms",
        "p99_ack_ms",
        "cpu_us_per_record",
        "loop_cpu_us_per_record",
        "client_cpu_us_per_record",
        "peak_rss_mb",
        "pooled_share",
    ]

    def record_row(row: dict) -> None:
        rows.append(row)
        ratio = f", ratio {row['ratio']:.2f}" if row["ratio"] is not None else ""
        floor = f" (floor {row['floor']:,.0f}{ratio})" if row["floor"] else ""
        print(f"{row['figure']}: {row['value']:,.1f} {row['unit']}{floor} {row['extra']}", flush=True)

    # (framing, records per request, requests per run, pool_size or None for the default, in flight)
    if quick:
        plan = [("fluentbit_forward", 1000, 40, None, 8), ("fluentbit_gzip", 1000, 40, 0, 8)]
    else:
        plan = [
            ("fluentbit_forward", 1000, 400, None, 8),
            ("fluentbit_forward", 1000, 400, 0, 8),
            ("fluentbit_gzip", 1000, 400, None, 8),
            ("fluentbit_gzip", 1000, 400, 0, 8),
            ("fluentd_packed", 1000, 400, None, 8),
            ("fluentbit_forward", 100, 3000, None, 8),
            ("fluentbit_forward", 2500, 160, None, 8),
            ("fluentbit_forward", 30, 6000, None, 32),  # Fluent Bit's traffic pattern
        ]
    floors_done: dict[tuple[str, int], list[float]] = {}
    for framing, per, count, pool, inflight in plan:
        if (pool == 0 and not supported) or not wanted(f"{framing}/{per}/{'off' if pool == 0 else 'on'}"):
            continue
        distinct = corpus.requests(framing, records, per, max(1, len(records) // per))
        key = (framing, per)
        if key not in floors_done:  # the same bytes for pool on and off: one floor, measured once per run
            floors_done[key] = [floor_rate(distinct[: max(2, 20_000 // per)], mapper, framing) for _ in range(runs)]
        halves = [distinct[0::2], distinct[1::2]] if len(distinct) > 1 else [distinct, distinct]
        clients = [(acked_client, (half, per, count // 2, inflight)) for half in halves]
        samples = [load_run(ld, None if not supported else pool, clients) for _ in range(runs)]
        size_kb = statistics.mean(len(w) for w in distinct) / 1024
        figure = f"{FRAMING_NAMES[framing]}, {per:,}/request (~{size_kb:,.0f} KB), 2 connections x {inflight} in flight, {pool_label(pool, supported)}"
        record_row(median_row(figure, samples, floors_done[key], extra_keys))

    # Message mode, with the real fluent-logger client: 2 processes, one record per request.
    per_client = 5_000 if quick else 60_000
    if not quick and wanted("message"):
        stream = corpus.message(records[:20_000], "signal.web")
        floor = [floor_rate([stream], mapper, "message") for _ in range(runs)]
        half = len(records) // 2
        clients = [(logger_client, (records[:half], per_client)), (logger_client, (records[half:], per_client))]
        samples = [load_run(ld, None, clients) for _ in range(runs)]
        record_row(median_row(f"Message mode, fluent-logger FluentSender.emit, 2 client processes, {pool_label(None, supported)}", samples, floor, extra_keys))
    if not quick and wanted("slim"):
        # node.py's slim corpus and framing, as node.py sends it (4 connections, 8 in flight).
        wire = slim_chunk(0)
        floor = [floor_rate([wire] * 40, mapper, "slim_packed") for _ in range(runs)]
        for pool in (None, 0) if supported else (None,):
            clients = [(acked_client, ([wire], 500, 100, 8)) for _ in range(4)]
            samples = [load_run(ld, pool, clients) for _ in range(runs)]
            record_row(
                median_row(
                    f"node.py's slim corpus: PackedForward, 500/request (~{len(wire) / 1024:.0f} KB), 4 connections x 8 in flight, {pool_label(pool, supported)}",
                    samples,
                    floor,
                    extra_keys,
                )
            )

    # The worst gap between a small client's acks beside a huge request and a gzip bomb-sized one.
    big, big_n, zipped, zip_n, inflated = huge_requests(records, quick)
    # pool_size 1 (the default on a one-core machine): small requests share the one process with the
    # huge ones.
    for pool in (None, 0, 1) if supported and not quick else (None,):
        if not wanted(f"gap/{ {None: 'on', 0: 'off'}.get(pool, pool) }"):
            continue
        gaps = sorted((ack_gap_run(ld, pool, big, big_n, zipped, zip_n) for _ in range(runs)), key=lambda g: g["worst_ack_gap_ms"])
        gap = gaps[len(gaps) // 2]  # the median sample, with its phases
        figure = (
            f"worst ack gap, 10 records every 20 ms beside a {len(big) / 2**20:.0f} MiB Fluentd request "
            f"and a {len(zipped) / 2**20:.1f} MiB gzip request inflating to {inflated / 2**20:.0f} MiB, {pool_label(pool, supported)}"
        )
        extra = {k: round(v, 1) if isinstance(v, float) else v for k, v in gap.items() if k != "worst_ack_gap_ms"}
        extra["samples_ms"] = [round(g["worst_ack_gap_ms"], 1) for g in gaps]
        extra["goal_met"] = gap["worst_ack_gap_ms"] < 100
        record_row({**results.row(figure, [g["worst_ack_gap_ms"] for g in gaps], "ms"), "extra": extra})

    print()
    print_table(rows)
    print(f"\n{time.monotonic() - started:.0f} s")
    report = {
        "benchmark": "realistic",
        "machine": results.machine(),
        "quick": quick,
        "rows": rows,
        "corpus": {"records": len(records), "mean_json_bytes": statistics.mean(sizes), "accepted": accepted},
    }
    out = results.write(report, args.out, quick or bool(args.only or args.runs), "realistic.json")  # only a full run replaces results/
    if out is not None:
        print(f"written: {out}")
    return 0


def print_table(rows: list[dict]) -> None:
    print(f"{'figure':<118} {'value':>10} {'unit':<10} {'spread':>21} {'floor':>9} {'ratio':>5}  extra")
    for row in rows:
        spread = row["spread"]
        spread_text = f"{spread[0]:,.0f}..{spread[1]:,.0f}" if spread[0] != spread[1] else ""
        floor = f"{row['floor']:,.0f}" if row["floor"] else ""
        ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else ""
        extra = ", ".join(f"{k}={v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k}={v}" for k, v in row["extra"].items())
        print(f"{row['figure']:<118} {row['value']:>10,.0f} {row['unit']:<10} {spread_text:>21} {floor:>9} {ratio:>5}  {extra}")


if __name__ == "__main__":
    sys.exit(main())
