"""Validate + map + encode per record, beside a hand-written check of the same rules (the floor),
in the same run on the same records.

    python benchmarks/pipeline.py            # full run, writes benchmarks/results/pipeline.json
    python benchmarks/pipeline.py --quick    # seconds
    python benchmarks/pipeline.py --out F    # the results (benchmarks/report.py's format) to F instead
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fluent_ld.launchdarkly.mapping import Mapper, Rejection
from fluent_ld.launchdarkly.preset.loader import load_preset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report as results

PRESET = load_preset("default")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def records(n: int) -> list[dict]:
    shapes = [
        {
            "type": "track",
            "event": "Order Completed",
            "user_id": "user-1001",
            "anonymous_id": "a1b2",
            "timestamp": "2026-11-24T12:00:00.000Z",
            "properties": {"order_id": "ORD-1", "revenue": 89.99, "currency": "GBP"},
        },
        {"type": "page", "anonymous_id": "e5f6", "name": "Pricing", "properties": {"path": "/pricing", "title": "Pricing"}},
        {"type": "track", "event": "Product Viewed", "anonymousId": "c3d4", "properties": {"value": 19.5, "sku": "S-1"}},
        {"type": "track", "event": "Signed Up", "userId": "user-2", "timestamp": "2026-11-24T12:00:01+01:00", "properties": {"plan": "team"}},
    ]
    return [dict(shapes[i % len(shapes)], n=i) for i in range(n)]


def floor(batch: list[dict], now_ns: int) -> int:
    """The same rules written by hand: event name, identity, timestamp, metric type; then the
    event and its JSON."""
    events, ids = PRESET.events, ("user_id", "userId", "anonymous_id", "anonymousId")
    out = 0
    for r in batch:
        name = "page" if r.get("type") == "page" else r.get("event")
        rule = events.get(name)
        if rule is None:
            continue
        key = next((r[i] for i in ids if type(r.get(i)) is str and r[i]), None)
        if key is None:
            continue
        props = r.get("properties") or {}
        stamp = r.get("timestamp")
        created = (datetime.fromisoformat(stamp) - EPOCH) // 1000 if stamp else now_ns // 10**6
        event = {"kind": "custom", "key": rule.key, "creationDate": int(created.total_seconds() * 1000) if stamp else created}
        skip = None
        if rule.metric_value:
            value = props.get(rule.metric_value)
            if value is not None:
                if type(value) not in (int, float) or not math.isfinite(value):
                    continue
                event["metricValue"] = value
                skip = rule.metric_value
        event["contextKeys"] = {"user": key}
        event["data"] = {k: v for k, v in props.items() if k != skip and type(v) in (str, int, float, bool)}
        orjson.dumps(event)
        out += 1
    return out


def pipeline(mapper: Mapper, batch: list[dict], now_ns: int) -> int:
    out = 0
    for r in batch:
        if type(mapper.map_encoded(r, now_ns)) is not Rejection:
            out += 1
    return out


def rate(fn, batch, runs) -> list[float]:
    values = []
    for _ in range(runs):
        start = time.perf_counter()
        n = fn(batch)
        values.append(n / (time.perf_counter() - start))
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", metavar="FILE", help="write the results here (instead of results/pipeline.json)")
    args = parser.parse_args()
    n, runs = (5_000, 2) if args.quick else (100_000, 7)
    batch = records(n)
    mapper = Mapper(PRESET)
    now = time.time_ns()
    assert pipeline(mapper, batch, now) == floor(batch, now) == n
    fig = rate(lambda b: pipeline(mapper, b, now), batch, runs)
    flo = rate(lambda b: floor(b, now), batch, runs)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    med, fmed = statistics.median(fig), statistics.median(flo)
    print(f"machine: {machine}")
    print(f"{'figure':<34} {'records/s':>10} {'spread':>21} {'floor/s':>10} {'ratio':>6}")
    print(f"{'validate+map+encode (one core)':<34} {med:>10,.0f} {min(fig):>10,.0f}..{max(fig):<10,.0f} {fmed:>10,.0f} {med / fmed:>6.2f}")
    report = {"benchmark": "pipeline", "machine": machine, "quick": args.quick, "records_per_s": fig, "floor_per_s": flo, "ratio": med / fmed}
    report["rows"] = [
        results.row(
            "validate+map+encode (one core)",
            fig,
            "records/s",
            flo,
            "the same rules by hand (lookup, identity, timestamp, metric, orjson), no schema",
            {"us_per_record": round(1e6 / med, 2)},
        )
    ]
    results.write(report, args.out, args.quick, "pipeline.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
