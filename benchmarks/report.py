"""The result format every benchmark writes with ``--out FILE`` and ``benchmarks/run.py`` reads.

    {"benchmark": "store", "machine": "x86_64, 2 cores, Python 3.11.7", "quick": false,
     "rows": [{"figure": ..., "value": ..., "unit": "records/s", "spread": [min, max], "runs": 7,
               "floor": ..., "floor_figure": "what the floor is", "ratio": value / floor,
               "extra": {...}}]}

``value`` and ``floor`` are medians over the runs, ``spread`` is [min, max] of the value, ``ratio``
is median over median; a row without a floor has floor and ratio null. ``extra`` holds secondary
figures (latencies, fsyncs/s, MB/s, RSS). Not a benchmark itself: run.py does not run it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def row(
    figure: str,
    values: Sequence[float],
    unit: str,
    floor: Sequence[float] | None = None,
    floor_figure: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    value = statistics.median(values)
    fl = statistics.median(floor) if floor else None
    return {
        "figure": figure,
        "value": value,
        "unit": unit,
        "spread": [min(values), max(values)],
        "runs": len(values),
        "floor": fl,
        "floor_figure": floor_figure if fl is not None else None,
        "ratio": value / fl if fl else None,
        "extra": extra or {},
    }


def write(report: dict[str, Any], out: str | None, quick: bool, default: str) -> Path | None:
    """Write ``report`` to ``out``; without it, a full run writes results/``default`` and a quick
    run writes nothing. Returns the path written."""
    if out:
        path = Path(out)
    elif not quick:
        path = RESULTS / default
    else:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
