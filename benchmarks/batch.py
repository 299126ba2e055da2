"""Encode and batch: LaunchDarkly batch bodies cut from stored events by the real store, with and
without gzip, beside a plain join of the same fragments (the floor) in the same run.

    python benchmarks/batch.py            # full run, writes benchmarks/results/batch.json
    python benchmarks/batch.py --quick    # seconds
    python benchmarks/batch.py --out F    # the results (benchmarks/report.py's format) to F instead

The events are LaunchDarkly custom events encoded by fluent_ld's mapper (about 250 bytes each),
stored as the LaunchDarkly output stores them: rows of 500 fragments joined by "," with their packed
lengths. Each run appends the rows to a fresh in-memory ``Store`` (not timed), then times what the
output's drain does: ``cut_batches`` (exact-size batches: body at most 9 MiB, at most 50,000
events) until nothing is left, ``due_batches`` and ``batch.body`` (and ``gzip_body``) for every
batch. Floor: ``b"[" + b",".join(fragments) + b"]"`` of each batch's fragments, from a list
(and ``gzip.compress`` at the same level for the gzip row). Figure and floor runs alternate.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import report as results

from fluent_ld.encode import gzip_body
from fluent_ld.launchdarkly.mapping import Mapper
from fluent_ld.launchdarkly.preset.loader import load_preset
from fluent_ld.store import Store

MAX_BODY = 9 * 1024 * 1024  # the <buffer> default chunk_limit_size
MAX_RECORDS = 50_000  # the <buffer> default chunk_limit_records
ROW = 500  # fragments per stored row (one admitted request)
GZIP_LEVEL = 6  # what fluent_ld.encode.gzip_body uses
T0 = 1_795_000_000 * 10**9


def signal_record(i: int) -> dict:
    """A Signal event, one of four shapes, with values that vary from event to event."""
    shape = i % 4
    if shape == 0:
        return {
            "type": "track",
            "event": "Order Completed",
            "user_id": f"user-{i * 7919 % 1_000_003:07d}",
            "anonymous_id": f"{i * 2654435761 % 2**32:08x}-4b1d-9c2e-{i:012x}",
            "properties": {
                "order_id": f"ORD-{i:09d}",
                "revenue": round(5 + i * 37 % 50_000 / 100, 2),
                "currency": "GBP",
                "coupon": "WINTER-10" if i % 3 else "",
                "shipping": "express",
                "items": 1 + i % 7,
                "payment_method": ("card", "paypal", "apple_pay")[i % 3],
            },
        }
    if shape == 1:
        return {
            "type": "track",
            "event": "Product Viewed",
            "anonymousId": f"{i * 40503 % 2**32:08x}-77aa-41c0-{i:012x}",
            "properties": {
                "value": round(i * 13 % 10_000 / 100, 2),
                "sku": f"SKU-{i * 31 % 100_000:05d}",
                "name": "Merino wool crew neck jumper",
                "category": "knitwear/men",
                "in_stock": True,
            },
        }
    if shape == 2:
        return {
            "type": "page",
            "anonymous_id": f"{i * 69069 % 2**32:08x}-c0de-4e11-{i:012x}",
            "name": "Pricing",
            "properties": {"path": f"/pricing/{i % 12}", "title": "Pricing - plans for teams", "referrer": "https://www.example.com/blog/launch"},
        }
    return {
        "type": "track",
        "event": "Signed Up",
        "userId": f"user-{i * 104729 % 1_000_003:07d}",
        "timestamp": f"2026-11-24T12:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}+01:00",
        "properties": {
            "plan": ("team", "business", "enterprise")[i % 3],
            "source": "newsletter-2026-11",
            "seats": 1 + i % 50,
            "company_size": ("1-10", "11-50", "51-200", "201-1000")[i % 4],
            "trial": i % 2 == 0,
            "role": "engineering manager",
        },
    }


def fragments(n: int) -> list[bytes]:
    """``n`` LaunchDarkly custom events as JSON, as the LaunchDarkly output stores them."""
    mapper = Mapper(load_preset("default"))
    out = []
    for i in range(n):
        event = mapper.map_encoded(signal_record(i), T0 + i * 1_000_000)
        assert type(event) is bytes, event
        out.append(event)
    return out


def stored_rows(frags: list[bytes]) -> list[tuple[bytes, list[int], int]]:
    """Rows as ``Store.append`` takes them: data (fragments joined by ","), lengths, bytes."""
    rows = []
    for i in range(0, len(frags), ROW):
        part = frags[i : i + ROW]
        lengths = [len(f) for f in part]
        rows.append((b",".join(part), lengths, sum(lengths)))
    return rows


async def filled_store(rows: list[tuple[bytes, list[int], int]]) -> Store:
    store = Store(None)
    await store.open()
    for i in range(0, len(rows), 256):  # concurrent appends: one group commit for many rows
        await asyncio.gather(*(store.append(d, lengths, n, T0 // 10**6) for d, lengths, n in rows[i : i + 256]))
    return store


async def store_run(rows: list, compress: bool, keep: bool = False) -> dict:
    """Time cutting every stored event into batches and building each body, the way the
    LaunchDarkly output's drain does (two batches loaded at a time)."""
    store = await filled_store(rows)
    try:
        now = time.time()
        bodies: list[bytes] = []
        counts: list[int] = []
        events = body_bytes = out_bytes = 0
        cpu = time.process_time()  # both threads: the event loop's and the store writer's
        start = time.perf_counter()
        while await store.cut_batches(MAX_BODY, MAX_RECORDS, 0.0, now, now):
            pass
        cut = time.perf_counter() - start
        seen: list[int] = []
        while batches := await store.due_batches(now, 2, seen):
            for batch in batches:
                body = batch.body
                sent = gzip_body(body) if compress else body
                events += batch.count
                body_bytes += len(body)
                out_bytes += len(sent)
                seen.append(batch.id)
                if keep:
                    bodies.append(body)
                    counts.append(batch.count)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
    finally:
        await store.close()
    return {
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "cut_seconds": cut,
        "events": events,
        "body_bytes": body_bytes,
        "out_bytes": out_bytes,
        "batches": len(seen),
        "bodies": bodies,
        "counts": counts,
    }


def floor_run(parts: list[list[bytes]], compress: bool) -> dict:
    events = body_bytes = out_bytes = 0
    start = time.perf_counter()
    for part in parts:
        body = b"[" + b",".join(part) + b"]"
        sent = gzip.compress(body, compresslevel=GZIP_LEVEL) if compress else body
        events += len(part)
        body_bytes += len(body)
        out_bytes += len(sent)
    return {"seconds": time.perf_counter() - start, "events": events, "body_bytes": body_bytes, "out_bytes": out_bytes}


def check(frags: list[bytes], bodies: list[bytes], counts: list[int]) -> list[list[bytes]]:
    """The store's batches hold every event once, in order, each body within the limits and every
    batch but the last full (the next event would not fit). Returns each batch's fragments."""
    parts, pos = [], 0
    for body, count in zip(bodies, counts):
        part = frags[pos : pos + count]
        assert body == b"[" + b",".join(part) + b"]", "a batch body differs from the join of its fragments"
        assert len(body) <= MAX_BODY and count <= MAX_RECORDS
        pos += count
        if pos < len(frags):
            assert len(body) + 1 + len(frags[pos]) > MAX_BODY or count == MAX_RECORDS, "a batch was cut short"
        parts.append(part)
    assert pos == len(frags), f"{pos} of {len(frags)} events came out of the store"
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", metavar="FILE", help="write the results here (instead of results/batch.json)")
    args = parser.parse_args()
    n, runs = (80_000, 3) if args.quick else (300_000, 7)
    frags = fragments(n)
    rows = stored_rows(frags)
    first = asyncio.run(store_run(rows, False, keep=True))
    parts = check(frags, first["bodies"], first["counts"])
    full_batch = first["counts"][0]
    del first
    mean_fragment = sum(map(len, frags)) / n

    report_rows = []
    printed = []
    for compress in (False, True):
        fig, flo = [], []
        for _ in range(runs):  # alternate, so the machine's noise falls on both alike
            fig.append(asyncio.run(store_run(rows, compress)))
            flo.append(floor_run(parts, compress))
        for r in fig + flo:
            assert r["events"] == n
        rate = [r["events"] / r["seconds"] for r in fig]
        floor = [r["events"] / r["seconds"] for r in flo]
        mb = statistics.median(r["body_bytes"] / r["seconds"] / 1e6 for r in fig)
        floor_mb = statistics.median(r["body_bytes"] / r["seconds"] / 1e6 for r in flo)
        extra = {
            "mb_per_s": round(mb, 1),
            "floor_mb_per_s": round(floor_mb, 1),
            "batches": fig[0]["batches"],
            "events_per_full_batch": full_batch,
            # CPU time of the process over the same span: the store's calls also wait out its
            # group-commit window (2 ms each), which costs wall time but no CPU.
            "records_per_cpu_s": round(statistics.median(r["events"] / r["cpu_seconds"] for r in fig)),
            "cut_share": round(statistics.median(r["cut_seconds"] / r["seconds"] for r in fig), 3),
        }
        if compress:
            extra["gzip_size"] = round(fig[0]["out_bytes"] / fig[0]["body_bytes"], 3)
        figure = "cut + load + body" + (" + gzip" if compress else "") + f", 9 MiB bodies, {n:,} events"
        floor_figure = 'b"[" + b",".join(fragments) + b"]"' + (f" + gzip.compress level {GZIP_LEVEL}" if compress else "") + " per batch"
        report_rows.append(results.row(figure, rate, "records/s", floor, floor_figure, extra))
        printed.append((figure, rate, floor, mb, floor_mb))

    machine = results.machine()
    print(f"machine: {machine}")
    print(f"{n:,} events of {mean_fragment:.0f} bytes on average, {len(rows)} stored rows of {ROW}, {report_rows[0]['extra']['batches']} batches")
    print(f"{'figure':<52} {'records/s':>11} {'spread':>23} {'floor/s':>11} {'ratio':>6} {'MB/s':>7} {'floor MB/s':>10}")
    for figure, rate, floor, mb, floor_mb in printed:
        med, fmed = statistics.median(rate), statistics.median(floor)
        print(f"{figure:<52} {med:>11,.0f} {min(rate):>11,.0f}..{max(rate):<11,.0f} {fmed:>11,.0f} {med / fmed:>6.2f} {mb:>7.0f} {floor_mb:>10.0f}")
    report = {
        "benchmark": "batch",
        "machine": machine,
        "quick": args.quick,
        "events": n,
        "mean_fragment_bytes": mean_fragment,
        "rows": report_rows,
    }
    results.write(report, args.out, args.quick, "batch.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
