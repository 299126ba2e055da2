"""Pending rows and frozen batches in SQLite: the statements the writer thread runs for them.

``pending``: one row per admitted request (not per record: a 2,500-event chunk is one insert):
its events' lengths, count and bytes; ``taken`` counts its events (from the start) already frozen
into batches and ``refs`` the batches that refer to it. It is deleted once every event is taken
and no batch refers to it. Its events' fragments, joined by the store's separator, are in
``pending_data`` under the same id, written once and never rewritten (updating the counters of a
row that held them would make SQLite rewrite them).

``batches``: frozen batches, each referring to segments of pending rows (what a cut or split makes
is decided in :mod:`fluent_ld.store.batches`). A batch gets its payload id before its first
attempt; the rows it refers to never change, so its bytes never change either, and a retry sends
exactly them with the same payload id.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from fluent_ld.encode import pack_lengths, unpack_lengths
from fluent_ld.store.batches import (
    MAX_BATCHES_PER_CUT,
    Batch,
    Half,
    Segment,
    pack_segments,
    plan_cuts,
    segment_slice,
    unpack_segments,
)

__all__ = [
    "cut",
    "drop_batch",
    "due_batches",
    "insert_batch",
    "insert_pending",
    "is_stored",
    "load_batch",
    "oldest_admitted",
    "split_batch",
    "status",
    "totals",
    "waiting",
]


def insert_pending(conn: sqlite3.Connection, tag: str | None, data: Any, packed: bytes, count: int, nbytes: int, oldest_ms: int, now: float) -> int:
    row = conn.execute(
        "INSERT INTO pending (tag, lengths, count, bytes, oldest_ms, admitted_at) VALUES (?, ?, ?, ?, ?, ?)",
        (tag, packed, count, nbytes, oldest_ms, now),
    ).lastrowid
    assert row is not None  # set by an INSERT
    conn.execute("INSERT INTO pending_data (id, data) VALUES (?, ?)", (row, data))
    return row


def insert_batch(
    conn: sqlite3.Connection,
    tag: str | None,
    data: bytes,
    lengths: Sequence[int],
    nbytes: int,
    oldest_ms: int,
    created_at: float,
    retry_at: float,
    segments: Sequence[Segment],
) -> Batch:
    """A new frozen batch referring to ``segments``; each row it refers to counts the reference."""
    payload_id = str(uuid.uuid4())
    packed = pack_lengths(lengths)
    packed_segments = pack_segments(segments)
    cursor = conn.execute(
        "INSERT INTO batches (payload_id, tag, segments, lengths, count, bytes, oldest_ms, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (payload_id, tag, packed_segments, packed, len(lengths), nbytes, oldest_ms, created_at, retry_at),
    )
    conn.executemany("UPDATE pending SET refs = refs + 1 WHERE id = ?", [(row,) for row, _, _ in segments])
    assert cursor.lastrowid is not None  # set by an INSERT
    return Batch(cursor.lastrowid, payload_id, tag, data, packed, len(lengths), nbytes, oldest_ms, created_at, 0, packed_segments)


def drop_batch(conn: sqlite3.Connection, batch: Batch) -> bool:
    """Delete a batch (delivered, buried or split) and the rows nothing refers to any more. False,
    changing nothing, if it is no longer stored (a stale Batch: dropping it twice would release
    its rows' references twice; ids are reused, so the payload id is checked too)."""
    if conn.execute("DELETE FROM batches WHERE id = ? AND payload_id = ?", (batch.id, batch.payload_id)).rowcount == 0:
        return False
    rows = [(row,) for row, _, _ in unpack_segments(batch.segments)]
    conn.executemany("UPDATE pending SET refs = refs - 1 WHERE id = ?", rows)
    marks = ",".join("?" * len(rows))
    done = [(r[0],) for r in conn.execute(f"SELECT id FROM pending WHERE id IN ({marks}) AND refs = 0 AND taken = count", [r for (r,) in rows])]
    conn.executemany("DELETE FROM pending WHERE id = ?", done)
    conn.executemany("DELETE FROM pending_data WHERE id = ?", done)
    return True


def is_stored(conn: sqlite3.Connection, batch: Batch) -> bool:
    return conn.execute("SELECT 1 FROM batches WHERE id = ? AND payload_id = ?", (batch.id, batch.payload_id)).fetchone() is not None


def split_batch(conn: sqlite3.Connection, batch: Batch, halves: Sequence[Half], now: float) -> list[Batch]:
    """Replace a stored batch with its halves (new batches, new payload ids); [] if it is no
    longer stored (a stale Batch: nothing to split)."""
    if not is_stored(conn, batch):
        return []
    out = [insert_batch(conn, batch.tag, h.data, h.lengths, sum(h.lengths), batch.oldest_ms, batch.created_at, now, h.segments) for h in halves]
    drop_batch(conn, batch)  # after the halves took their references: the rows stay
    return out


def load_batch(
    conn: sqlite3.Connection,
    sep: bytes,
    batch_id: int,
    payload_id: str,
    tag: str | None,
    segments: bytes,
    lengths: bytes,
    count: int,
    nbytes: int,
    oldest_ms: int,
    created_at: float,
    attempts: int,
) -> Batch:
    """A batch with its bytes, joined from the pending rows it refers to (always the same bytes:
    those rows are never rewritten while a batch refers to them). Only the bytes the batch holds
    are read from each row (a row of a 64 MiB request is cut into many batches): SQLite slices
    them while the GIL is released, and only the slice is copied into Python."""
    triples = unpack_segments(segments)
    ids = sorted({row for row, _, _ in triples})
    marks = ",".join("?" * len(ids))
    stored = dict(conn.execute(f"SELECT id, lengths FROM pending WHERE id IN ({marks})", ids).fetchall())
    seplen = len(sep)
    parts = []
    for row, first, end in triples:
        row_lengths = unpack_lengths(stored[row])
        if first == 0 and end == len(row_lengths):
            (data,) = conn.execute("SELECT data FROM pending_data WHERE id = ?", (row,)).fetchone()
        else:
            start, size = segment_slice(row_lengths, first, end, seplen)
            (data,) = conn.execute("SELECT substr(data, ?, ?) FROM pending_data WHERE id = ?", (start + 1, size, row)).fetchone()
        parts.append(data)
    return Batch(batch_id, payload_id, tag, sep.join(parts), lengths, count, nbytes, oldest_ms, created_at, attempts, segments)


def due_batches(conn: sqlite3.Connection, sep: bytes, now: float, limit: int, exclude: Sequence[int]) -> list[Batch]:
    rows = conn.execute(
        "SELECT id, payload_id, tag, segments, lengths, count, bytes, oldest_ms, created_at, attempts FROM batches "
        "WHERE next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
        (now, limit + len(exclude)),
    ).fetchall()
    rows = [r for r in rows if r[0] not in exclude][:limit]
    return [load_batch(conn, sep, *r) for r in rows]


def waiting(conn: sqlite3.Connection) -> tuple[float | None, int | None, int | None]:
    """(when the oldest waiting row was admitted, its events' bytes plus one per event, events)
    of the events not yet in a batch: what :func:`~fluent_ld.store.batches.cut_is_due` takes."""
    return conn.execute(
        "SELECT MIN(admitted_at), SUM(bytes - taken_bytes) + SUM(count - taken), SUM(count - taken) FROM pending WHERE taken < count"
    ).fetchone()


def cut(conn: sqlite3.Connection, seplen: int, framing: int, max_body: int, max_records: int, now: float, retry_at: float) -> int:
    """Freeze waiting events into at most ``MAX_BATCHES_PER_CUT`` batches (see
    :func:`~fluent_ld.store.batches.plan_cuts`), so the writer thread is not held long: appends
    waiting for their commit go between two calls. Only the rows' lengths are read: a batch
    refers to the events it holds, so cutting writes no event again. Returns the batches cut."""
    made = 0
    for c in plan_cuts(_waiting_rows(conn), max_body, max_records, seplen, framing, MAX_BATCHES_PER_CUT):
        insert_batch(conn, c.tag, b"", c.lengths, c.nbytes, c.oldest_ms, now, retry_at, c.segments)
        conn.executemany(
            "UPDATE pending SET taken = ?, taken_bytes = taken_bytes + ? WHERE id = ?",
            [(end, n, row) for (row, _, end), n in zip(c.segments, c.segment_bytes, strict=True)],
        )
        made += 1
    return made


def _waiting_rows(conn: sqlite3.Connection) -> Iterator[tuple[int, str | None, Sequence[int], int, int]]:
    """The rows with events not yet in a batch, in id order, 64 at a time (a read per page, not a
    cursor held open across the cut's writes)."""
    last_id = -1
    while True:
        rows = conn.execute(
            "SELECT id, tag, lengths, taken, oldest_ms FROM pending WHERE taken < count AND id > ? ORDER BY id LIMIT 64",
            (last_id,),
        ).fetchall()
        if not rows:
            return
        for row_id, tag, packed, taken, oldest_ms in rows:
            last_id = row_id
            yield row_id, tag, unpack_lengths(packed), taken, oldest_ms


def totals(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """(undelivered events, their bytes, dead letters): the counters a store keeps in memory."""
    p = conn.execute("SELECT COALESCE(SUM(count - taken), 0), COALESCE(SUM(bytes - taken_bytes), 0) FROM pending").fetchone()
    b = conn.execute("SELECT COALESCE(SUM(count), 0), COALESCE(SUM(bytes), 0) FROM batches").fetchone()
    d = conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
    return p[0] + b[0], p[1] + b[1], d[0]


def oldest_admitted(conn: sqlite3.Connection) -> float | None:
    """When the oldest undelivered event was stored; for events already in a batch, when it was
    cut."""
    row = conn.execute("SELECT admitted_at FROM pending WHERE taken < count ORDER BY id LIMIT 1").fetchone()
    batch = conn.execute("SELECT MIN(created_at) FROM batches").fetchone()
    return min([t for t in (row and row[0], batch[0]) if t], default=None)


def status(conn: sqlite3.Connection) -> dict[str, Any]:
    p = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(count - taken), 0), COALESCE(SUM(bytes - taken_bytes), 0), MIN(oldest_ms) FROM pending WHERE taken < count"
    ).fetchone()
    b = conn.execute("SELECT COUNT(*), COALESCE(SUM(count), 0), COALESCE(SUM(bytes), 0), MIN(oldest_ms), MAX(attempts) FROM batches").fetchone()
    d = conn.execute("SELECT kind, COUNT(*) FROM dead_letters GROUP BY kind ORDER BY kind").fetchall()
    oldest = min([x for x in (p[3], b[3]) if x is not None], default=None)
    return {
        "pending_rows": p[0],
        "batches": b[0],
        "events": p[1] + b[1],
        "bytes": p[2] + b[2],
        "oldest_event_ms": oldest,
        "max_attempts": b[4] or 0,
        "dead_letters": dict(d),
    }
