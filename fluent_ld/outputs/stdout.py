"""``@type stdout``: each record as one JSON line on standard output, for trying a pipeline."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from fluent_ld.config.params import Enum, Param, Section
from fluent_ld.plugin import Entries, Output


def format_time(time_ns: int) -> str:
    """Event time as RFC 3339 UTC with nanoseconds: ``2026-11-24T12:00:00.123456789Z``."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def _fallback(value: Any) -> Any:
    # msgpack bin values arrive as bytes; show them as text rather than refuse the record.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    return repr(value)


class StdoutOutput(Output):
    type_name = "stdout"
    summary = "Prints each record as a JSON line (tag, time, record) on standard output."
    section = Section(
        "match",
        summary,
        params=(
            Param(
                "time_format",
                Enum("iso8601", "unix"),
                "iso8601",
                "How the event time is printed: RFC 3339 UTC with nanoseconds, or Unix seconds.",
            ),
        ),
    )

    def __init__(self, conf, plugin_id, worker: int = 0, stream: TextIO | None = None) -> None:
        super().__init__(conf, plugin_id, worker)
        self.stream = stream
        self.records = 0

    async def admit(self, tag: str, entries: Entries) -> None:
        if not entries:
            return
        stream = self.stream or sys.stdout
        iso = self.conf.time_format == "iso8601"
        lines = []
        for time_ns, record in entries:
            when = format_time(time_ns) if iso else time_ns / 1e9
            lines.append(
                orjson.dumps(
                    {"tag": tag, "time": when, "record": record},
                    default=_fallback,
                    option=orjson.OPT_NON_STR_KEYS,
                ).decode()
            )
        stream.write("\n".join(lines) + "\n")
        stream.flush()
        self.records += len(entries)
