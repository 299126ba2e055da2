"""Frozen batches and how they are cut and split. Pure: no SQLite here.

A batch refers to the events it holds as segments ``(row id, first event, end)`` of pending rows
(see :mod:`fluent_ld.store.rows`), so cutting or splitting one writes a few dozen bytes, not its
events again. What a cut or a split makes is decided here, from the rows' event lengths alone.
"""

from __future__ import annotations

import builtins
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from fluent_ld.encode import unpack_lengths

__all__ = [
    "MAX_BATCHES_PER_CUT",
    "Batch",
    "Cut",
    "Half",
    "cut_is_due",
    "fragments",
    "pack_segments",
    "plan_cuts",
    "plan_split",
    "segment_slice",
    "split_segments",
    "unpack_segments",
]

# Batches cut per call (each call is one writer operation): bounds its time and memory.
MAX_BATCHES_PER_CUT = 4

Segment = tuple[int, int, int]  # (pending row id, first event, end)


@dataclass(frozen=True, slots=True)
class Batch:
    id: int
    payload_id: str
    tag: str | None  # set when the output batches by tag (forward); None for LaunchDarkly
    data: bytes  # fragments joined by the store's separator (LaunchDarkly: "," and the body is [data])
    lengths: bytes
    count: int
    bytes: int
    oldest_ms: int
    created_at: float
    attempts: int
    segments: builtins.bytes = b""  # (row id, first event, end) triples of the pending rows it refers to

    @property
    def body(self) -> builtins.bytes:
        return b"".join((b"[", self.data, b"]"))  # one copy (two "+" would make two)


@dataclass(slots=True)
class Cut:
    """One batch a cut freezes: the segments it refers to (and the bytes each takes from its
    row), its events' lengths, their bytes and the oldest event's time."""

    tag: str | None
    segments: list[Segment]
    segment_bytes: list[int]
    lengths: array
    nbytes: int
    oldest_ms: int


@dataclass(frozen=True, slots=True)
class Half:
    """One half of a split batch: its data, its events' lengths and the segments it refers to."""

    data: bytes
    lengths: Sequence[int]
    segments: list[Segment]


def cut_is_due(
    first_admitted_at: float | None,
    estimated_body: int | None,
    events: int | None,
    now: float,
    linger: float,
    max_body: int,
    max_records: int,
) -> bool:
    """Whether pending events are cut now: once the oldest pending row has waited ``linger``
    seconds, or a full batch is waiting. ``estimated_body``: the waiting events' bytes plus one
    per event (a separator each), without the framing's last byte."""
    if first_admitted_at is None or estimated_body is None or events is None:
        return False
    return not (now - first_admitted_at < linger and estimated_body + 1 < max_body and events < max_records)


def plan_cuts(
    rows: Iterable[tuple[int, str | None, Sequence[int], int, int]],
    max_body: int,
    max_records: int,
    seplen: int,
    framing: int,
    limit: int = MAX_BATCHES_PER_CUT,
) -> Iterator[Cut]:
    """Freeze waiting events, in order, into batches that fit the limits exactly, at most
    ``limit`` of them.

    ``rows``: the pending rows with events not yet in a batch, in id order, as (row id, tag, the
    lengths of all its events, its first event not yet taken, oldest_ms). A batch holds one tag. A
    row a batch ends inside is taken up to there and the next batch starts from that event. Each
    batch is yielded before the next row is asked for, so the caller can store it first."""
    made = 0
    tag: str | None = None  # the tag of the batch being filled
    segments: list[Segment] = []
    segment_bytes: list[int] = []
    lengths = array("I")
    nbytes = 0
    oldest: int | None = None

    def take() -> Cut:
        nonlocal segments, segment_bytes, lengths, nbytes, oldest, made
        assert oldest is not None  # set with the batch's first event
        cut = Cut(tag, segments, segment_bytes, lengths, nbytes, oldest)
        segments, segment_bytes, lengths, nbytes, oldest = [], [], array("I"), 0, None
        made += 1
        return cut

    for row_id, row_tag, row_lengths, start, oldest_ms in rows:
        count = len(row_lengths)
        if lengths and row_tag != tag:
            yield take()
            if made >= limit:
                return
        tag = row_tag
        while start < count:  # start: the first event of this row not yet in a batch
            # What the batch holds: framing, its fragments and the separators between them; the
            # separator before the next fragment is counted with that fragment (``add``).
            room_bytes = max_body - framing - (nbytes + max(len(lengths) - 1, 0) * seplen)
            room_records = max_records - len(lengths)
            # How many of this row's remaining fragments fit.
            n, size = 0, 0
            while start + n < count and n < room_records:
                add = row_lengths[start + n] + (seplen if (lengths or n) else 0)
                if size + add > room_bytes:
                    break
                size += add
                n += 1
            if n == 0 and not lengths:
                # A single event over the limit: admit refuses those, but a replayed dead letter or
                # a chunk_limit_size lowered since it was stored can bring one here. It goes alone,
                # and the receiver's answer decides (LaunchDarkly's 413 makes it a dead letter);
                # refusing to cut would hold every event behind it for good.
                n = 1
            if n == 0:
                yield take()
                if made >= limit:
                    return
                continue
            taken = sum(row_lengths[start : start + n])
            segments.append((row_id, start, start + n))
            segment_bytes.append(taken)
            lengths.extend(row_lengths[start : start + n])
            nbytes += taken
            oldest = oldest_ms if oldest is None else min(oldest, oldest_ms)
            start += n
            if start < count:  # the batch is full in the middle of this row
                yield take()
                if made >= limit:
                    return
    if lengths:
        yield take()


def plan_split(batch: Batch, seplen: int) -> tuple[Half, Half]:
    """A batch's first half of its events and the rest, each with its data and segments."""
    lengths = unpack_lengths(batch.lengths)
    if len(lengths) < 2:
        raise ValueError("a batch of one event cannot be split")
    half = len(lengths) // 2
    end = sum(lengths[:half]) + (half - 1) * seplen  # the first half's fragments and separators
    first, second = split_segments(unpack_segments(batch.segments), half)
    return (
        Half(batch.data[:end], lengths[:half], first),
        Half(batch.data[end + seplen :], lengths[half:], second),
    )


def split_segments(segments: list[Segment], half: int) -> tuple[list[Segment], list[Segment]]:
    """The segments of a batch's first ``half`` events, and of the rest."""
    first, second, seen = [], [], 0
    for row, start, end in segments:
        n = end - start
        if seen + n <= half:
            first.append((row, start, end))
        elif seen >= half:
            second.append((row, start, end))
        else:
            cut = start + (half - seen)
            first.append((row, start, cut))
            second.append((row, cut, end))
        seen += n
    return first, second


def segment_slice(lengths: Sequence[int], first: int, end: int, seplen: int) -> tuple[int, int]:
    """(offset, size) of events ``first`` to ``end`` in a row's data, separators between them."""
    start = sum(lengths[:first]) + first * seplen
    size = sum(lengths[first:end]) + (end - first - 1) * seplen
    return start, size


def fragments(batch: Batch, seplen: int) -> list[bytes]:
    """A batch's events, one by one."""
    out, pos = [], 0
    for n in unpack_lengths(batch.lengths):
        out.append(batch.data[pos : pos + n])
        pos += n + seplen
    return out


def pack_segments(segments: Sequence[Segment]) -> bytes:
    return array("q", [n for segment in segments for n in segment]).tobytes()


def unpack_segments(blob: bytes) -> list[Segment]:
    flat = array("q")
    flat.frombytes(blob)
    return [(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]
