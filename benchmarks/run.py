"""Every benchmark, one table: runs forward.py, pipeline.py, batch.py, store.py, node.py and realistic.py, each
in its own process (one that fails does not stop the others), prints their rows as one markdown
table with the machine, and writes them all to benchmarks/results/all.json.

    python benchmarks/run.py            # full run (the node benchmark takes a few minutes)
    python benchmarks/run.py --quick    # well under a minute; keeps the benchmarks from rotting
    python benchmarks/run.py store batch    # only these

Ratios are figure / floor, both measured in the same run on the same machine; timings are
reported, never asserted: the exit code is 0 however poor a ratio, and non-zero only when a
benchmark script failed (crashed, timed out, or wrote no rows).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report as results  # noqa: E402

BENCHMARKS = ("forward", "pipeline", "batch", "store", "node", "realistic")
TIMEOUT = {True: 300, False: 3600}  # seconds per benchmark script, --quick or not
ROW_KEYS = ("figure", "value", "unit", "spread", "runs", "floor", "floor_figure", "ratio", "extra")


def machine() -> str:
    cpu = results.cpu_model()
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}" + (f", {cpu}" if cpu else "")


def run_one(name: str, quick: bool, out: Path) -> dict[str, Any]:
    """Run benchmarks/NAME.py as a subprocess (its own process group, so a timeout takes its
    children too); returns its outcome and rows."""
    cmd = [sys.executable, str(HERE / f"{name}.py"), *(["--quick"] if quick else []), "--out", str(out)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT[quick])
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return {"ok": False, "seconds": time.perf_counter() - started, "error": f"timed out after {TIMEOUT[quick]} s", "stderr": stderr}
    seconds = time.perf_counter() - started
    outcome: dict[str, Any] = {"ok": False, "seconds": seconds, "returncode": proc.returncode}
    if proc.returncode != 0:
        last = stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {**outcome, "error": f"exit code {proc.returncode}: {last[0]}", "stderr": stderr}
    try:
        report = json.loads(out.read_text())
        rows = [{key: row.get(key) for key in ROW_KEYS} for row in report["rows"]]
        if not rows:
            raise ValueError("no rows")
        for row in rows:
            if row["figure"] is None or row["value"] is None:
                raise ValueError(f"a row without figure or value: {row}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return {**outcome, "error": f"no results in --out ({exc})", "stderr": stderr, "stdout": stdout}
    return {**outcome, "ok": True, "machine": report.get("machine"), "quick": report.get("quick"), "rows": rows}


def number(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(outcomes: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| benchmark | figure | value | unit | spread | floor | ratio | extra |",
        "|---|---|---:|---|---:|---:|---:|---|",
    ]
    for name, outcome in outcomes.items():
        if not outcome["ok"]:
            lines.append(f"| {name} | FAILED: {cell(outcome['error'])} | | | | | | |")
            continue
        for row in outcome["rows"]:
            spread = row["spread"] or []
            extra = ", ".join(f"{k}={number(v)}" for k, v in (row["extra"] or {}).items())
            lines.append(
                "| "
                + " | ".join(
                    cell(x)
                    for x in (
                        name,
                        row["figure"],
                        number(row["value"]),
                        row["unit"] or "",
                        "..".join(number(s) for s in spread) if len(spread) == 2 and spread[0] != spread[1] else "",
                        number(row["floor"]),
                        "" if row["ratio"] is None else f"{row['ratio']:.2f}",
                        extra,
                    )
                )
                + " |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark in its quick mode (well under a minute in all)")
    parser.add_argument("--out", metavar="FILE", default=str(results.RESULTS / "all.json"), help="where to write all the rows (default: %(default)s)")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"only these ({', '.join(BENCHMARKS)})")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    started = datetime.now(UTC)
    outcomes: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="fluent-ld-bench-") as tmp:
        for name in names:
            print(f"{name} ...", end=" ", file=sys.stderr, flush=True)
            outcomes[name] = run_one(name, args.quick, Path(tmp) / f"{name}.json")
            o = outcomes[name]
            print(f"{'ok' if o['ok'] else 'FAILED'} ({o['seconds']:.1f} s)", file=sys.stderr, flush=True)

    desc = machine()
    print(f"\nmachine: {desc}; {'quick run' if args.quick else 'full run'}, {started:%Y-%m-%d %H:%M} UTC; ratio = value / floor, both medians over the runs\n")
    print(table(outcomes))
    failed = [n for n, o in outcomes.items() if not o["ok"]]
    for name in failed:
        tail = "\n".join((outcomes[name].get("stderr") or "").strip().splitlines()[-15:])
        print(f"\n{name} failed: {outcomes[name]['error']}" + (f"\n{tail}" if tail else ""))

    summary = {
        "date": started.isoformat(timespec="seconds"),
        "machine": desc,
        "quick": args.quick,
        "benchmarks": {n: {k: o[k] for k in ("ok", "seconds", "returncode", "error", "machine") if k in o} for n, o in outcomes.items()},
        "rows": [{"benchmark": n, **row} for n, o in outcomes.items() if o["ok"] for row in o["rows"]],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
