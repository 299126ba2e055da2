"""Fluent forward protocol codec, sans I/O: bytes in, typed requests out (Forward Protocol
Specification v1 and v1.5; the facts are in the project's forward-protocol notes).

The server feeds what it reads with :meth:`Decoder.receive_data` and calls :meth:`Decoder.next_event`
until it returns :data:`NEED_DATA`. A malformed stream raises :class:`ProtocolError`: the stream
cannot be resynchronised after it, so the caller closes that connection (and only that one).
Invalid single entries inside a sound request are skipped and counted instead.

Every mode is decoded:

- Message ``[tag, time, record, option?]``
- Forward ``[tag, [[time, record], ...], option?]``
- PackedForward ``[tag, bin-or-str of concatenated [time, record], option?]`` (Fluentd's out_forward
  sends the entries as *str32* holding raw msgpack, not UTF-8)
- CompressedPackedForward: the same with ``compressed: "gzip"`` (several members) or ``"zstd"``
  (several frames, no content size); ``compressed: "text"`` means uncompressed.

Times: integer seconds, EventTime (ext 0, fixext8 or ext8), float seconds, the v1.5
``[EventTime, {metadata}]`` form, and 0 or nil for "now". Fluent Bit's group markers (EventTime
seconds 0xFFFFFFFF / 0xFFFFFFFE) are recognised and not emitted as events.
"""

from __future__ import annotations

import struct
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zstandard

__all__ = [
    "NEED_DATA",
    "DecoderLimits",
    "Decoder",
    "Heartbeat",
    "Ping",
    "ProtocolError",
    "Request",
    "encode_ack",
    "encode_event_time",
    "encode_helo",
    "encode_pong",
]


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Any = _NeedData()

EVENT_TIME_EXT = 0
# Fluent Bit 4.x+ brackets groups of records with these EventTime seconds (nanoseconds 0).
GROUP_START = 0xFFFFFFFF
GROUP_END = 0xFFFFFFFE
SIGNAL_NAMES = {0: "logs", 1: "metrics", 2: "traces"}
NS = 1_000_000_000

# How much of a message still incomplete the unpacker may parse. msgpack builds each container as
# soon as its header arrives (for a large declared length, a list of ~64 KiB) and holds what it
# built until the message is whole: a thousand nested array headers (5 KB, the unpacker's depth
# limit) held ~66 MB per connection, for as long as the client kept the message incomplete. So
# the rest of a message is parsed once a framer (which skips without building anything) has seen
# its end. The first bytes are still parsed as they come: a declared length over the limits at the
# start of a message is refused at once.
_HEAD = 5


class ProtocolError(Exception):
    """The peer sent something that is not the forward protocol (or breaks a limit): close the
    connection. ``str()`` says what, for the log line."""


@dataclass(frozen=True, slots=True)
class DecoderLimits:
    """Every buffer has a limit, with its reason.

    ``chunk_size_limit``: the largest request on the wire. Fluentd's in_forward default is 32 MiB
    for the same parameter; Fluent Bit's out_forward sends chunks of a few MiB.

    ``decompression_size_limit``: the most bytes one compressed request may inflate to (a gzip bomb
    of 32 MiB would otherwise inflate to tens of GiB).

    ``max_array_len`` / ``max_map_len``: msgpack's C unpacker allocates a declared length before
    the elements arrive, so five bytes could ask for hundreds of MiB. A request holds at most a few
    thousand entries in practice (Fluent Bit: one chunk; Fluentd: one buffer chunk). Within these
    limits it still builds each container as its header arrives (see ``_HEAD``), which is why the
    decoder parses a request only once it is whole.

    ``max_str_len`` / ``max_bin_len``: bounded by the request size anyway; kept explicit so the
    unpacker never trusts a declared length beyond what could arrive.
    """

    chunk_size_limit: int = 32 * 1024 * 1024
    decompression_size_limit: int = 128 * 1024 * 1024
    max_array_len: int = 1_000_000
    max_map_len: int = 100_000

    def unpacker(self, max_bytes: int) -> msgpack.Unpacker:
        return msgpack.Unpacker(
            raw=False,
            # str values holding raw bytes (PackedForward entries, binary chunk ids) survive
            # decoding and are recovered byte for byte with .encode("utf-8", "surrogateescape").
            unicode_errors="surrogateescape",
            strict_map_key=True,  # non-string keys are a protocol error, not a silent coercion
            max_buffer_size=max_bytes,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_array_len=min(self.max_array_len, max_bytes),
            max_map_len=min(self.max_map_len, max_bytes),
            max_ext_len=max_bytes,
            ext_hook=_ext_hook,
        )


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A msgpack nil: the client checks the connection; nothing to answer."""


@dataclass(frozen=True, slots=True)
class Ping:
    """The client's answer to HELO: ``["PING", hostname, salt, digest, username, password]``.
    Byte fields are the raw bytes however they were sent (str or bin)."""

    hostname: str
    salt: bytes
    digest: str
    username: str
    password_digest: str


@dataclass(slots=True)
class Request:
    """One request: the events it carries (time in integer nanoseconds, record), its ack token
    (``chunk``, exactly as sent: str or bytes) and what was skipped."""

    tag: str
    entries: list[tuple[int, dict[str, Any]]]
    chunk: str | bytes | None = None
    mode: str = "forward"
    wire_size: int = 0
    invalid: int = 0  # entries skipped as invalid
    markers: int = 0  # Fluent Bit group markers skipped
    option: dict[str, Any] = field(default_factory=dict)


class EventTime(int):
    """Nanoseconds since the epoch decoded from an EventTime ext (an int that remembers it was an
    EventTime, so integer seconds are not mistaken for it)."""

    __slots__ = ()


class _GroupMarker:
    __slots__ = ()


GROUP_MARKER = _GroupMarker()

_EVENT_TIME = struct.Struct(">II")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EVENT_TIME_EXT:
        if len(data) != 8:
            raise ValueError(f"EventTime must hold 8 bytes, got {len(data)}")
        seconds, nanos = _EVENT_TIME.unpack(data)
        if nanos == 0 and seconds in (GROUP_START, GROUP_END):
            return GROUP_MARKER
        if nanos >= NS:
            raise ValueError(f"EventTime nanoseconds out of range: {nanos}")
        return EventTime(seconds * NS + nanos)
    return msgpack.ExtType(code, data)


def _time_ns(value: Any, now_ns: int) -> int | None:
    """An entry's time as nanoseconds; None when it is not a time at all."""
    kind = type(value)
    if kind is EventTime:
        return int(value) or now_ns
    if kind is int:
        if value < 0:
            return None
        return value * NS if value else now_ns
    if kind is float:
        if not 0 <= value < 2**33:  # NaN, negative or absurd
            return None
        return round(value * NS) if value else now_ns
    if value is None:
        return now_ns
    return None


class Decoder:
    """Decodes one connection's byte stream. ``skip_invalid_event``: skip and count an invalid
    entry (True) or treat it as a protocol error (False)."""

    def __init__(self, limits: DecoderLimits = DecoderLimits(), skip_invalid_event: bool = True) -> None:
        self.limits = limits
        self.skip_invalid_event = skip_invalid_event
        self._unpacker = limits.unpacker(limits.chunk_size_limit)
        # Fed the same bytes; skips whole messages without building them (see _HEAD and _unpack).
        # It keeps only what it has not skipped yet: a small first buffer (it grows as needed).
        self._framer: msgpack.Unpacker | None = msgpack.Unpacker(
            read_size=min(16384, limits.chunk_size_limit), max_buffer_size=limits.chunk_size_limit
        )
        self._framed = False  # the framer has seen the end of the message being decoded
        self._last_offset = 0  # stream offset where the message being decoded starts
        self._fed = 0  # bytes fed to the unpacker so far
        # Messages already split off by receive_data (see there), with their wire sizes, and the
        # error that followed them: handed out by next_event in stream order.
        self._ahead: deque[tuple[Any, int]] = deque()
        self._error: ProtocolError | None = None

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the stream. Raises :class:`ProtocolError` at once when the message in
        progress grows past ``chunk_size_limit`` (and nothing decoded precedes it).

        The limit is on the bytes of one message, counted from its first byte. The unpacker's own
        ``max_buffer_size`` cannot be the limit: it counts only the bytes not yet parsed, so (1) a
        request trickled in as many small elements was never limited at all (the unpacker parses
        them into objects as they come: a 1 MB request passed a 1 KiB limit), and (2) one read
        holding the end of a request and the next pipelined ones was refused as "too large" although
        every request in it was within the limit."""
        if self._error is not None:
            return  # the stream is already broken: the caller is closing it
        limit = self.limits.chunk_size_limit
        if len(data) <= limit - (self._fed - self._last_offset):
            self._feed(data)  # the common case: fits in what the current message may use
            return
        # More bytes than the current message may still grow by: they may hold its end and whole
        # messages after it. Feed no more than the room left, split off what completes (kept in
        # self._ahead, bounded by this one read), and go on until all is fed or a message is too big.
        view = memoryview(data)
        while True:
            # First what is whole in the unpacker (including messages fed earlier and not yet
            # asked for), so that the room below counts only the message in progress.
            while True:
                try:
                    message = self._unpack()
                except msgpack.OutOfData:
                    break
                except (ValueError, TypeError, OverflowError) as exc:
                    self._fail(ProtocolError(f"malformed msgpack: {exc}"))
                    return
                self._ahead.append((message, self._advance()))
            if not view:
                return
            room = limit - (self._fed - self._last_offset)
            if room <= 0:
                self._fail(ProtocolError(f"request larger than chunk_size_limit ({limit} bytes)"))
                return
            piece = view[:room]
            self._feed(piece)
            view = view[len(piece):]

    def _feed(self, data: bytes | memoryview) -> None:
        self._unpacker.feed(data)
        self._fed += len(data)
        if self._framer is not None:
            try:
                self._framer.feed(data)
            except Exception:
                self._framer = None  # never expected (it holds no more than the unpacker); parse as it comes

    def _unpack(self) -> Any:
        """The next message from the unpacker; :class:`msgpack.OutOfData` while it is incomplete
        (and more than its first ``_HEAD`` bytes have arrived: those are parsed as they come)."""
        framer = self._framer
        if framer is not None and not self._framed:
            try:
                framer.skip()  # a malformed message raises here as it would below (nothing built)
            except msgpack.OutOfData:
                if self._fed - self._last_offset > _HEAD:
                    raise
            else:
                self._framed = True
        message = self._unpacker.unpack()
        self._framed = False
        return message

    def _fail(self, error: ProtocolError) -> None:
        """Raise ``error`` now, or after the messages decoded before it have been handed out (they
        arrived whole: the caller must get them before it closes the connection)."""
        self._error = error
        if not self._ahead:
            raise error

    def _advance(self) -> int:
        """After a whole message: its wire size; the next one starts here."""
        offset = self._unpacker.tell()
        wire_size = offset - self._last_offset
        self._last_offset = offset
        return wire_size

    def next_event(self, now_ns: int) -> Request | Heartbeat | Ping | Any:
        """The next complete message, or :data:`NEED_DATA`. ``now_ns`` is used for time 0/nil."""
        if self._ahead:
            message, wire_size = self._ahead.popleft()
        elif self._error is not None:
            raise self._error
        else:
            try:
                message = self._unpack()
            except msgpack.OutOfData:
                return NEED_DATA
            except (ValueError, TypeError, OverflowError) as exc:
                # ExtraData, FormatError, StackError and the limit errors are ValueErrors too.
                self._error = ProtocolError(f"malformed msgpack: {exc}")
                raise self._error from None
            wire_size = self._advance()
        if message is None:
            return Heartbeat()
        if type(message) is not list:
            raise ProtocolError(f"a request must be an array, got {type(message).__name__}")
        if message and message[0] == "PING" and len(message) == 6:
            return _ping(message)
        return self._request(message, wire_size, now_ns)

    def _request(self, message: list, wire_size: int, now_ns: int) -> Request:
        if len(message) < 2:
            raise ProtocolError(f"a request needs a tag and entries, got {len(message)} element(s)")
        tag = message[0]
        if type(tag) is bytes:
            tag = tag.decode("utf-8", "surrogateescape")
        if type(tag) is not str or not tag:
            raise ProtocolError("the tag must be a non-empty string")
        try:
            tag.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError("the tag is not valid UTF-8") from None
        body = message[1]
        kind = type(body)
        if kind is list:
            option = _option(message, 2)
            entries = message[1]
            mode = "forward"
        elif kind is str or kind is bytes:
            option = _option(message, 2)
            payload = body.encode("utf-8", "surrogateescape") if kind is str else body
            compressed = option.get("compressed")
            if compressed in (None, "text"):
                mode = "packed_forward"
            elif compressed == "gzip":
                payload = _gunzip(payload, self.limits.decompression_size_limit)
                mode = "compressed_packed_forward"
            elif compressed == "zstd":
                payload = _unzstd(payload, self.limits.decompression_size_limit)
                mode = "compressed_packed_forward"
            else:
                raise ProtocolError(f"unknown compression {compressed!r}")
            entries = self._unpack_entries(payload)
        elif kind is int or kind is EventTime or kind is float or body is None:
            if len(message) < 3:
                raise ProtocolError("a Message mode request needs a record")
            option = _option(message, 3)
            entries = [[body, message[2]]]
            mode = "message"
        else:
            raise ProtocolError(f"unknown request mode: element 1 is {kind.__name__}")

        signal = option.get("fluent_signal", 0)
        if signal not in (0, None):
            name = SIGNAL_NAMES.get(signal, repr(signal))
            raise ProtocolError(f"fluent_signal {name}: only logs are accepted here")

        request = Request(tag, [], _chunk(option), mode, wire_size, option=option)
        self._collect(request, entries, now_ns)
        return request

    def _unpack_entries(self, payload: bytes) -> list:
        unpacker = self.limits.unpacker(len(payload) + 1)
        try:
            unpacker.feed(payload)
            # A trailing nil as a sentinel: it comes back as its own object only if the last entry
            # was whole; a truncated entry swallows it (or stays incomplete). This lets the C
            # iterator do the loop instead of Python.
            unpacker.feed(b"\xc0")
            entries = list(unpacker)
        except (ValueError, TypeError, OverflowError) as exc:
            raise ProtocolError(f"malformed packed entries: {exc}") from None
        if not entries or entries[-1] is not None or unpacker.tell() != len(payload) + 1:
            raise ProtocolError("packed entries end in the middle of an entry")
        entries.pop()
        return entries

    def _collect(self, request: Request, entries: list, now_ns: int) -> None:
        out = request.entries
        append = out.append
        for entry in entries:
            # The common shape first: [time, record] with an EventTime or an integer.
            if type(entry) is list and len(entry) == 2:
                time, record = entry
                if type(record) is dict:
                    kind = type(time)
                    if kind is EventTime and time:
                        append((int(time), record))
                        continue
                    if kind is int and time > 0:
                        append((time * NS, record))
                        continue
            self._collect_slow(request, entry, now_ns)

    def _collect_slow(self, request: Request, entry: Any, now_ns: int) -> None:
        if type(entry) is list and len(entry) >= 2:
            time, record = entry[0], entry[1]
            if type(time) is list and time:  # v1.5: [EventTime, {metadata}]
                time = time[0]
            if time is GROUP_MARKER:
                request.markers += 1
                return
            time_ns = _time_ns(time, now_ns)
            if time_ns is not None and type(record) is dict:
                request.entries.append((time_ns, record))
                return
        if not self.skip_invalid_event:
            raise ProtocolError("invalid entry (expected [time, record]) and skip_invalid_event is false")
        request.invalid += 1


def _option(message: list, index: int) -> dict[str, Any]:
    if len(message) <= index or message[index] is None:
        return {}
    option = message[index]
    if type(option) is not dict:
        raise ProtocolError(f"the option must be a map, got {type(option).__name__}")
    return option


def _chunk(option: dict[str, Any]) -> str | bytes | None:
    chunk = option.get("chunk")
    if chunk is None:
        return None
    if type(chunk) not in (str, bytes):
        raise ProtocolError(f"the chunk option must be a string, got {type(chunk).__name__}")
    return chunk


def _ping(message: list) -> Ping:
    def text(value: Any, what: str) -> str:
        if type(value) is bytes:
            return value.decode("utf-8", "surrogateescape")
        if type(value) is not str:
            raise ProtocolError(f"PING {what} must be a string")
        return value

    def raw(value: Any, what: str) -> bytes:
        if type(value) is str:
            return value.encode("utf-8", "surrogateescape")
        if type(value) is not bytes:
            raise ProtocolError(f"PING {what} must be a string")
        return value

    _, hostname, salt, digest, username, password = message
    return Ping(
        text(hostname, "hostname"),
        raw(salt, "salt"),
        text(digest, "digest"),
        text(username, "username"),
        text(password, "password digest"),
    )


def _gunzip(data: bytes, cap: int) -> bytes:
    """Every gzip member, concatenated, refusing more than ``cap`` bytes of output."""
    out = bytearray()
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        for piece in _pieces(view, pos):
            pos += len(piece)
            try:
                out += inflater.decompress(piece, cap - len(out) + 1)
            except zlib.error as exc:
                raise ProtocolError(f"bad gzip data: {exc}") from None
            if len(out) > cap or inflater.unconsumed_tail:
                raise ProtocolError(f"gzip data inflates past decompression_size_limit ({cap} bytes)")
            if inflater.eof:
                break
        if not inflater.eof:
            raise ProtocolError("gzip data ends in the middle of a member")
        pos -= len(inflater.unused_data)
    return bytes(out)


def _pieces(view: memoryview, pos: int):
    """``view[pos:]`` in pieces that double from 64 bytes (slices, not copies). A decompressor
    copies what follows the end of its member (``unused_data``); fed the whole rest at once, that
    copy made a request of many small members (or frames) quadratic: 4 MiB of empty gzip members
    kept the event loop busy for 8 s, 32 MiB for hours. Fed in doubling pieces, what is copied at a
    member's end is never more than the member's own size plus 64 bytes."""
    size = 64
    while pos < len(view):
        yield view[pos : pos + size]
        pos += size
        size = min(size * 2, 1 << 20)


_ZSTD = zstandard.ZstdDecompressor()


def _unzstd(data: bytes, cap: int) -> bytes:
    """Every zstd frame (content size not required), refusing more than ``cap`` bytes of output.

    Two passes: a capped streaming read stops a bomb before it allocates, then frame-by-frame
    decoding (bounded by that first answer) checks that every frame is whole, which the streaming
    reader does not report."""
    try:
        with _ZSTD.stream_reader(data, read_across_frames=True) as reader:
            if len(reader.read(cap + 1)) > cap:
                raise ProtocolError(f"zstd data inflates past decompression_size_limit ({cap} bytes)")
        out = bytearray()
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            frame = _ZSTD.decompressobj()
            for piece in _pieces(view, pos):
                pos += len(piece)
                out += frame.decompress(piece)
                if frame.eof:
                    break
            if not frame.eof:
                raise ProtocolError("zstd data ends in the middle of a frame")
            pos -= len(frame.unused_data)
    except zstandard.ZstdError as exc:
        raise ProtocolError(f"bad zstd data: {exc}") from None
    return bytes(out)


# -- encoding ------------------------------------------------------------------------------------

_PACKER_OPTIONS = dict(use_bin_type=True, unicode_errors="surrogateescape")


def encode_ack(chunk: str | bytes) -> bytes:
    """``{"ack": chunk}`` with the chunk echoed in the type it came in (str stays str: Fluent Bit
    refuses a bin ack; Fluentd's token keeps its trailing newline)."""
    return msgpack.packb({"ack": chunk}, **_PACKER_OPTIONS)


def encode_event_time(time_ns: int) -> msgpack.ExtType:
    seconds, nanos = divmod(time_ns, NS)
    return msgpack.ExtType(EVENT_TIME_EXT, _EVENT_TIME.pack(seconds, nanos))


def encode_helo(nonce: bytes, auth: bytes, keepalive: bool) -> bytes:
    """``["HELO", {"nonce": bin, "auth": bin, "keepalive": bool}]``, nonce and auth as bin like
    Fluentd (``auth`` empty when no user authentication is configured)."""
    return msgpack.packb(["HELO", {"nonce": nonce, "auth": auth, "keepalive": keepalive}], use_bin_type=True)


def encode_pong(ok: bool, reason: str, hostname: str, digest: str) -> bytes:
    """``["PONG", ok, reason, server_hostname, digest]``; on failure hostname and digest are ""."""
    return msgpack.packb(["PONG", ok, reason, hostname, digest], **_PACKER_OPTIONS)
