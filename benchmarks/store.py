"""Store admit with group commit: concurrent ``Store.append`` calls of about 1 MB each on a file
store (WAL, synchronous=FULL: each commit returns after its fsync), beside plain-file writes of the
same bytes with as many fsyncs (the floor), in the same run.

    python benchmarks/store.py            # full run, writes benchmarks/results/store.json
    python benchmarks/store.py --quick    # seconds
    python benchmarks/store.py --out F    # the results (benchmarks/report.py's format) to F instead

Each run opens a fresh store in a temporary directory on the disk (``--dir`` to choose it) and
starts 8 asyncio tasks; each appends pre-built requests of 4,000 LaunchDarkly custom events (about
250 bytes each, joined by ",", as the LaunchDarkly output's admit builds them after mapping), one
after the other. The writer thread groups the appends that arrive within its window into one
transaction and one fsync. Figures: records/s and MB/s over the run, commits (fsyncs) per second,
p50/p99 latency of one append.

Floor: the same requests written with ``os.write`` to a plain file in one thread, with an
``os.fsync`` after every N requests, N being the store's average group in the run just before
(appends per commit): the same bytes made durable as often, without SQLite. The store writes each
byte twice (the WAL, then the checkpoint into the database file); the floor once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import report as results
from batch import fragments

from fluent_ld.store import Store

TASKS = 8
PER_REQUEST = 4_000
T0_MS = 1_795_000_000_000


def requests(tasks: int) -> list[tuple[bytes, list[int], int]]:
    """One request per task (each task sends its own bytes): data, lengths, fragment bytes."""
    frags = fragments(PER_REQUEST * tasks)
    out = []
    for t in range(tasks):
        part = frags[t * PER_REQUEST : (t + 1) * PER_REQUEST]
        lengths = [len(f) for f in part]
        out.append((b",".join(part), lengths, sum(lengths)))
    return out


def remove(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass


async def store_run(directory: str, reqs: list, per_task: int) -> dict:
    path = os.path.join(directory, "store.db")
    remove(path)
    store = Store(path)
    await store.open()
    latencies: list[float] = []

    async def client(data: bytes, lengths: list[int], nbytes: int) -> None:
        for _ in range(per_task):
            started = time.perf_counter()
            await store.append(data, lengths, nbytes, T0_MS)
            latencies.append(time.perf_counter() - started)

    fsyncs = store.fsyncs  # open() committed once already
    cpu = time.process_time()  # both threads: the event loop's and the store writer's
    start = time.perf_counter()
    await asyncio.gather(*(client(*r) for r in reqs))
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    fsyncs = store.fsyncs - fsyncs
    await store.close()
    remove(path)
    latencies.sort()
    appends = len(reqs) * per_task
    return {
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "records": appends * PER_REQUEST,
        "bytes": per_task * sum(len(r[0]) for r in reqs),
        "appends": appends,
        "fsyncs": fsyncs,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
    }


def floor_run(directory: str, reqs: list, per_task: int, group: float) -> dict:
    """The same requests in the same order of arrival (each task's in turn), ``os.write`` each,
    ``os.fsync`` once ``group`` requests (on average) have been written since the last one."""
    path = os.path.join(directory, "floor.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    written = fsyncs = 0
    due = group
    start = time.perf_counter()
    try:
        for _ in range(per_task):
            for data, _lengths, _nbytes in reqs:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                written += 1
                if written >= due:
                    os.fsync(fd)
                    fsyncs += 1
                    due += group
        if written > due - group:  # the tail since the last fsync
            os.fsync(fd)
            fsyncs += 1
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        os.unlink(path)
    return {"seconds": elapsed, "records": written * PER_REQUEST, "bytes": per_task * sum(len(r[0]) for r in reqs), "fsyncs": fsyncs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", metavar="FILE", help="write the results here (instead of results/store.json)")
    parser.add_argument("--dir", help="where the store and the floor's file go (default: a new temporary directory)")
    args = parser.parse_args()
    runs, per_task = (2, 2) if args.quick else (7, 25)
    reqs = requests(TASKS)
    request_mb = statistics.mean(len(r[0]) for r in reqs) / 1e6

    fig, flo = [], []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="fluent-ld-bench-") as directory:
        asyncio.run(store_run(directory, reqs, 1))  # warm up: file creation, page cache, thread start
        for _ in range(runs):  # alternate, so the machine's noise falls on both alike
            s = asyncio.run(store_run(directory, reqs, per_task))
            fig.append(s)
            flo.append(floor_run(directory, reqs, per_task, s["appends"] / s["fsyncs"]))
        fs_type = filesystem(directory)

    rate = [r["records"] / r["seconds"] for r in fig]
    floor = [r["records"] / r["seconds"] for r in flo]
    group = statistics.median(r["appends"] / r["fsyncs"] for r in fig)
    extra = {
        "mb_per_s": round(statistics.median(r["bytes"] / r["seconds"] / 1e6 for r in fig), 1),
        "floor_mb_per_s": round(statistics.median(r["bytes"] / r["seconds"] / 1e6 for r in flo), 1),
        "fsyncs_per_s": round(statistics.median(r["fsyncs"] / r["seconds"] for r in fig), 1),
        "appends_per_fsync": round(group, 2),
        "cpu_s_per_s": round(statistics.median(r["cpu_seconds"] / r["seconds"] for r in fig), 2),
        "p50_append_ms": round(statistics.median(r["p50_ms"] for r in fig), 1),
        "p99_append_ms": round(statistics.median(r["p99_ms"] for r in fig), 1),
        "request_mb": round(request_mb, 2),
    }
    figure = f"store admit, {TASKS} tasks x {per_task} appends of {PER_REQUEST:,} events (~{request_mb:.1f} MB)"
    floor_figure = "the same bytes: os.write per request + os.fsync per store-sized group, one thread, plain file"
    row = results.row(figure, rate, "records/s", floor, floor_figure, extra)

    machine = results.machine()
    print(f"machine: {machine}; store on {fs_type or 'an unknown filesystem'}")
    print(f"{'figure':<62} {'records/s':>10} {'spread':>21} {'floor/s':>10} {'ratio':>6}")
    print(f"{figure:<62} {row['value']:>10,.0f} {min(rate):>10,.0f}..{max(rate):<10,.0f} {row['floor']:>10,.0f} {row['ratio']:>6.2f}")
    print(
        f"  {extra['mb_per_s']:.0f} MB/s (floor {extra['floor_mb_per_s']:.0f}), {extra['fsyncs_per_s']:.0f} fsyncs/s, "
        f"{extra['appends_per_fsync']:.1f} appends per fsync, append p50/p99 {extra['p50_append_ms']:.1f}/{extra['p99_append_ms']:.1f} ms"
    )
    report = {"benchmark": "store", "machine": machine, "quick": args.quick, "filesystem": fs_type, "rows": [row]}
    results.write(report, args.out, args.quick, "store.json")
    return 0


def filesystem(path: str) -> str | None:
    """The type of the filesystem holding ``path`` (ext4, tmpfs...), from /proc/mounts."""
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[1:3] for line in f]
    except OSError:
        return None
    real = os.path.realpath(path)
    best = max((m for m in mounts if real == m[0] or real.startswith(m[0].rstrip("/") + "/")), key=lambda m: len(m[0]), default=None)
    return best[1] if best else None


if __name__ == "__main__":
    sys.exit(main())
