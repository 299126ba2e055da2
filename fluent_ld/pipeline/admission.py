"""What an output stores for one request, and the encoders that make it. Pure.

An output's admit has two halves: the CPU half (validate, map, encode every record) and the I/O
half (append to the store, then the source acks). The CPU half is an :class:`Encoder`: a picklable
object that turns a request's entries, streamed one at a time, into an :class:`Encoded`: the
stored fragments already joined, their lengths, and the dead letters. It runs on the event loop
for small requests and in a pool process for the rest; either way the I/O half costs no
per-record Python.
"""

from __future__ import annotations

import pickle
import struct
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import orjson

from fluent_ld.forward.codec import DecoderLimits, Frame, Request, encode_event_time, open_request
from fluent_ld.launchdarkly.mapping import INVALID, Mapper
from fluent_ld.launchdarkly.preset import Preset

__all__ = [
    "Admitted",
    "CountEncoder",
    "DeadLetter",
    "Encoded",
    "Encoder",
    "ForwardEncoder",
    "LaunchDarklyEncoder",
    "Decoding",
    "decode_frame",
    "encode_frame",
]

Entries = Iterable[tuple[int, dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    kind: str  # invalid, too_large, rejected (by LaunchDarkly), expired, schema (406)
    reason: str
    status: int | None = None
    tag: str | None = None
    time_ns: int | None = None
    record: bytes | None = None  # the original record as JSON, when there is one
    event: bytes | None = None  # the mapped LaunchDarkly event as JSON, when there is one
    payload_id: str | None = None


@dataclass(slots=True)
class Encoded:
    """One request, ready for the store: ``data`` is the fragments joined by the store's
    separator, ``lengths`` their lengths (uint32), ``nbytes`` their bytes without separators.
    Pickled with protocol 5 (from a pool process), ``data`` travels out of band and arrives as a
    read-only memoryview."""

    data: bytes | memoryview = b""
    lengths: array = field(default_factory=lambda: array("I"))
    nbytes: int = 0
    oldest_ms: int = 0
    dead: list[DeadLetter] = field(default_factory=list)
    records: int = 0  # entries received
    unmapped: int = 0  # entries skipped because nothing maps them (not an error)

    @property
    def count(self) -> int:
        return len(self.lengths)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        data = pickle.PickleBuffer(self.data) if protocol >= 5 and self.data else self.data
        return (Encoded, (data, self.lengths, self.nbytes, self.oldest_ms, self.dead, self.records, self.unmapped))


class Encoder:
    """Turns entries into an :class:`Encoded`. Subclasses pickle to what rebuilds them."""

    def encode(self, tag: str, entries: Entries) -> Encoded:
        raise NotImplementedError


class LaunchDarklyEncoder(Encoder):
    """Signal records -> LaunchDarkly custom events as JSON fragments joined by ``,``. ``cap``:
    the largest event that fits in a batch body."""

    def __init__(self, preset: Preset, record_key: str | None, cap: int) -> None:
        self.preset, self.record_key, self.cap = preset, record_key, cap
        self.mapper = Mapper(preset, record_key)

    def __reduce__(self) -> tuple[Any, ...]:
        return (LaunchDarklyEncoder, (self.preset, self.record_key, self.cap))

    def encode(self, tag: str, entries: Entries) -> Encoded:
        """``oldest_ms`` of the result: the oldest creationDate among the events kept (what
        LaunchDarkly sees as their time, and what ``stale_after`` is measured against)."""
        mapper = self.mapper
        map_encoded, cap = mapper.map_encoded, self.cap
        fragments: list[bytes] = []
        keep = fragments.append
        lengths = array("I")
        measure = lengths.append
        dead: list[DeadLetter] = []
        records = unmapped = 0
        oldest = None
        for time_ns, record in entries:
            records += 1
            result = map_encoded(record, time_ns)
            if type(result) is bytes:
                size = len(result)
                if size > cap:
                    dead.append(
                        DeadLetter("too_large", f"the encoded event is {size} bytes, over chunk_limit_size", None, tag, time_ns, record_json(record), result)
                    )
                    continue
                keep(result)
                measure(size)
                created = mapper.last_created
                if oldest is None or created < oldest:
                    oldest = created
            elif result.kind == INVALID:  # type: ignore[union-attr]  # a Rejection (type() is not narrowed)
                dead.append(DeadLetter("invalid", result.reason, None, tag, time_ns, record_json(result.record)))  # type: ignore[union-attr]
            else:
                unmapped += 1
        data = b",".join(fragments)
        nbytes = len(data) - max(len(fragments) - 1, 0)
        return Encoded(data, lengths, nbytes, oldest or 0, dead, records, unmapped)


class ForwardEncoder(Encoder):
    """Records -> ``[EventTime, record]`` msgpack entries, concatenated (PackedForward's form)."""

    def __init__(self) -> None:
        self._pack = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape").pack

    def __reduce__(self) -> tuple[Any, ...]:
        return (ForwardEncoder, ())

    def encode(self, tag: str, entries: Entries) -> Encoded:
        pack = self._pack
        fragments: list[bytes] = []
        lengths = array("I")
        dead: list[DeadLetter] = []
        records = 0
        oldest = None
        for time_ns, record in entries:
            records += 1
            try:
                fragment = pack([encode_event_time(time_ns), record])
            except (TypeError, ValueError, OverflowError, struct.error) as exc:  # struct: a time past 2106
                dead.append(DeadLetter("invalid", f"cannot be encoded as msgpack: {exc}", None, tag, time_ns, repr(record).encode()))
                continue
            fragments.append(fragment)
            lengths.append(len(fragment))
            if oldest is None or time_ns < oldest:
                oldest = time_ns
        data = b"".join(fragments)
        return Encoded(data, lengths, len(data), (oldest or 0) // 1_000_000, dead, records)


class CountEncoder(Encoder):
    """Only counts the entries (an output that discards them)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (CountEncoder, ())

    def encode(self, tag: str, entries: Entries) -> Encoded:
        records = 0
        for _ in entries:
            records += 1
        return Encoded(records=records)


@dataclass(frozen=True, slots=True)
class Decoding:
    """How a source decodes its requests (picklable: it travels with each request to the pool).
    ``extra``: fields added to every record (``source_address_key``, ``source_hostname_key``)."""

    limits: DecoderLimits
    skip_invalid_event: bool
    now_ns: int
    extra: dict[str, Any] | None = None


@dataclass(slots=True)
class Admitted:
    """One request decoded and encoded: its ack token, what its decoding skipped, and what the
    output stores (``encoded``) or, for an output without an encoder, the decoded entries."""

    chunk: str | bytes | None
    mode: str
    invalid: int
    markers: int
    encoded: Encoded | None = None
    entries: list[tuple[int, dict[str, Any]]] | None = None

    @property
    def records(self) -> int:
        return self.encoded.records if self.encoded is not None else len(self.entries or ())


def decode_frame(frame: Frame, decoding: Decoding) -> tuple[Request, Entries]:
    """The request in ``frame`` and its entries, streamed (with the source's extra fields)."""
    request = open_request(frame, decoding.limits, decoding.skip_invalid_event, decoding.now_ns)
    entries: Entries = request.entries
    if decoding.extra:
        entries = _with_extra(entries, decoding.extra)
    return request, entries


def encode_frame(frame: Frame, tag: str, decoding: Decoding, encoder: Encoder | None) -> Admitted:
    """A framed request, decoded one entry at a time straight into ``encoder`` (or into a list
    when there is none). Raises :class:`~fluent_ld.forward.codec.ProtocolError`."""
    request, entries = decode_frame(frame, decoding)
    if encoder is None:
        listed = list(entries)
        return Admitted(request.chunk, request.mode, request.invalid, request.markers, entries=listed)
    encoded = encoder.encode(tag, entries)
    return Admitted(request.chunk, request.mode, request.invalid, request.markers, encoded)


def _with_extra(entries: Entries, extra: dict[str, Any]) -> Entries:
    for time_ns, record in entries:
        record.update(extra)
        yield time_ns, record


def record_json(record: Any) -> bytes:
    """A record as JSON for the dead-letter store, whatever it holds (bytes as text)."""
    return orjson.dumps(record, default=lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else repr(v))
