"""The ``dead_letters`` table: events and records that will not be sent, with kind, reason, status
and time; read, purged, and put back among the pending events (``fluent-ld dlq replay`` decides
which, :mod:`fluent_ld.replay`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from fluent_ld.encode import pack_lengths
from fluent_ld.pipeline.admission import DeadLetter
from fluent_ld.store.rows import insert_pending

__all__ = ["COLUMNS", "insert", "purge", "read", "readmit", "tag_runs"]

COLUMNS = ("id", "created_at", "kind", "reason", "status", "tag", "time_ns", "record", "event", "payload_id")


def insert(conn: sqlite3.Connection, dead: Sequence[DeadLetter], now: float) -> None:
    if dead:
        conn.executemany(
            "INSERT INTO dead_letters (created_at, kind, reason, status, tag, time_ns, record, event, payload_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(now, d.kind, d.reason, d.status, d.tag, d.time_ns, d.record, d.event, d.payload_id) for d in dead],
        )


def read(conn: sqlite3.Connection, limit: int, ids: Sequence[int] | None, newest: bool = False) -> list[dict[str, Any]]:
    """Letters by id (``ids``), or the first ``limit`` (-1: all) in id order (``newest``: the last
    ``limit``, newest first), as dicts."""
    cols = ", ".join(COLUMNS)
    if ids is not None:
        marks = ",".join("?" * len(ids))
        rows = conn.execute(f"SELECT {cols} FROM dead_letters WHERE id IN ({marks}) ORDER BY id", list(ids)).fetchall()
    else:
        order = "DESC" if newest else ""
        rows = conn.execute(f"SELECT {cols} FROM dead_letters ORDER BY id {order} LIMIT ?", (limit,)).fetchall()
    return [dict(zip(COLUMNS, r, strict=True)) for r in rows]


def purge(conn: sqlite3.Connection, ids: Sequence[int] | None) -> int:
    """Delete letters by id, or all of them (None). Returns how many were deleted."""
    if ids is None:
        return conn.execute("DELETE FROM dead_letters").rowcount
    marks = ",".join("?" * len(ids))
    return conn.execute(f"DELETE FROM dead_letters WHERE id IN ({marks})", list(ids)).rowcount


def readmit(
    conn: sqlite3.Connection,
    events: Sequence[tuple[str | None, bytes]],
    sep: bytes,
    oldest_ms: int,
    now: float,
    letter_ids: Sequence[int],
    reasons: Mapping[int, str],
) -> int:
    """Append ``events`` (tag, fragment) as pending rows, one per run of one tag, delete the
    letters they came from and give letters kept their new reasons. Returns the letters deleted."""
    for tag, frags in tag_runs(events):
        lengths = [len(f) for f in frags]
        insert_pending(conn, tag, sep.join(frags), pack_lengths(lengths), len(lengths), sum(lengths), oldest_ms, now)
    conn.executemany("UPDATE dead_letters SET reason = ? WHERE id = ?", [(why, i) for i, why in reasons.items()])
    return conn.executemany("DELETE FROM dead_letters WHERE id = ?", [(i,) for i in letter_ids]).rowcount


def tag_runs(events: Sequence[tuple[str | None, bytes]]) -> list[tuple[str | None, list[bytes]]]:
    """Events in order, grouped into runs of one tag (a pending row holds one tag)."""
    runs: list[tuple[str | None, list[bytes]]] = []
    for tag, fragment in events:
        if runs and runs[-1][0] == tag:
            runs[-1][1].append(fragment)
        else:
            runs.append((tag, [fragment]))
    return runs
