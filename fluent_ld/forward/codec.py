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

import pickle
import struct
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zstandard

__all__ = [
    "NEED_DATA",
    "DecoderLimits",
    "Decoder",
    "Frame",
    "Heartbeat",
    "Ping",
    "ProtocolError",
    "Request",
    "encode_ack",
    "encode_event_time",
    "encode_helo",
    "encode_pong",
    "open_request",
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

# The first bytes of a message are parsed as soon as they arrive, so that a declared length over the
# limits at the start of a message (an array of 2**32 - 1 elements) is refused at once. The rest is
# only framed (skipped without building anything) until the message is whole: msgpack builds each
# container as soon as its header arrives (for a large declared length, a list of ~64 KiB), so a
# thousand nested array headers (5 KB) would hold ~66 MB per connection for as long as the client
# kept the message incomplete.
_HEAD = 5
# Packed entries are fed to their unpacker in pieces this big: decoding streams through the payload
# (cache-friendly) instead of copying all of it into the unpacker first.
_FEED = 256 * 1024


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


@dataclass(frozen=True, slots=True)
class Frame:
    """A request whose framing has been checked (it is one whole msgpack message, an array whose
    first element is a valid tag) but which is not decoded yet: :func:`open_request` decodes it,
    wherever that is cheapest (on the event loop for small ones, in a pool process for the rest).
    ``data`` is the whole message as it came on the wire (any bytes-like object: it is only read).
    Pickled with protocol 5, ``data`` travels out of band, not copied into the pickle."""

    tag: str
    data: bytes | bytearray | memoryview
    wire_size: int

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        data = pickle.PickleBuffer(self.data) if protocol >= 5 else bytes(self.data)
        return (Frame, (self.tag, data, self.wire_size))


@dataclass(slots=True)
class Request:
    """One request: the events it carries (time in integer nanoseconds, record), its ack token
    (``chunk``, exactly as sent: str or bytes) and what was skipped.

    From :meth:`Decoder.next_event` ``entries`` is a list. From :func:`open_request` it is an
    iterator that decodes one entry at a time from the payload; ``invalid`` and ``markers`` are
    final once it is exhausted (and, in Forward mode, whose option follows the entries, ``chunk``
    and ``option``), and a payload broken in its middle or an option refused raises
    :class:`ProtocolError` from the iteration."""

    tag: str
    entries: Any  # list[tuple[int, dict]] or an iterator of them
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
    """Frames one connection's byte stream into messages. ``skip_invalid_event``: skip and count an
    invalid entry (True) or treat it as a protocol error (False). ``lazy``: hand out requests as
    :class:`Frame` (the caller decodes them with :func:`open_request`) instead of decoded
    :class:`Request` objects."""

    def __init__(self, limits: DecoderLimits = DecoderLimits(), skip_invalid_event: bool = True, lazy: bool = False) -> None:
        self.limits = limits
        self.skip_invalid_event = skip_invalid_event
        self.lazy = lazy
        # Fed every byte; finds where each message ends without building anything. It keeps only
        # what it has not skipped yet: a small first buffer (it grows as needed).
        self._framer = msgpack.Unpacker(read_size=min(16384, limits.chunk_size_limit), max_buffer_size=limits.chunk_size_limit)
        # The stream from the start of the message being framed, as the pieces it came in (joined
        # once, when the message is whole: no copy of a growing buffer per read).
        self._parts: deque[bytes | memoryview] = deque()
        self._start = 0  # stream offset of the first byte in self._parts, where that message starts
        self._fed = 0  # bytes fed so far
        self._head_checked = False  # the first bytes of the message being framed were checked
        # Messages already split off by receive_data (see there), with their wire sizes, and the
        # error that followed them: handed out by next_event in stream order.
        self._ahead: deque[bytes | memoryview] = deque()
        self._error: ProtocolError | None = None
        self._small = limits.unpacker(limits.chunk_size_limit)  # for small messages (see _SMALL)

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the stream. Raises :class:`ProtocolError` at once when the message in
        progress grows past ``chunk_size_limit`` (and nothing decoded precedes it).

        The limit is on the bytes of one message, counted from its first byte: a read holding the
        end of a request and the next pipelined ones is within the limit when each request is."""
        if self._error is not None:
            return  # the stream is already broken: the caller is closing it
        limit = self.limits.chunk_size_limit
        if len(data) <= limit - (self._fed - self._start):
            self._feed(data)  # the common case: fits in what the current message may use
            return
        # More bytes than the current message may still grow by: they may hold its end and whole
        # messages after it. Feed no more than the room left, split off what completes (kept in
        # self._ahead, bounded by this one read), and go on until all is fed or a message is too big.
        view = memoryview(data)
        while True:
            while True:
                try:
                    message = self._frame()
                except msgpack.OutOfData:
                    break
                except ProtocolError as exc:
                    self._fail(exc)
                    return
                self._ahead.append(message)
            if not view:
                return
            room = limit - (self._fed - self._start)
            if room <= 0:
                self._fail(ProtocolError(f"request larger than chunk_size_limit ({limit} bytes)"))
                return
            piece = view[:room]
            self._feed(piece)
            view = view[len(piece) :]

    def _feed(self, data: bytes | memoryview) -> None:
        if not data:
            return
        if type(data) is not bytes and not (type(data) is memoryview and data.readonly):
            data = bytes(data)  # a buffer its owner may reuse: keep a copy
        self._framer.feed(data)
        self._parts.append(data)
        self._fed += len(data)

    def _take(self, size: int) -> bytes | memoryview:
        """The first ``size`` bytes of the pieces held, removed from them: the piece itself when
        the message is all in one (a read holding whole messages hands them out without a copy)."""
        parts = self._parts
        out: list[bytes | memoryview] = []
        got = 0
        while got < size:
            part = parts[0]
            n = len(part)
            if got + n <= size:
                out.append(parts.popleft())
                got += n
            else:
                view = memoryview(part)
                out.append(view[: size - got])
                parts[0] = view[size - got :]
                got = size
        return out[0] if len(out) == 1 else b"".join(out)

    def _peek(self, size: int) -> bytes:
        """Up to ``size`` bytes from the start of the message being framed."""
        out, got = [], 0
        for part in self._parts:
            out.append(part[: size - got])
            got += len(out[-1])
            if got >= size:
                break
        return b"".join(out)

    def _frame(self) -> bytes | memoryview:
        """The next whole message's bytes; :class:`msgpack.OutOfData` while it is incomplete."""
        if self._fed == self._start:
            raise msgpack.OutOfData
        try:
            self._framer.skip()
        except msgpack.OutOfData:
            if not self._head_checked:  # a whole message is checked when it is decoded
                try:
                    self._check_head()
                except msgpack.OutOfData:
                    pass
            raise
        except (ValueError, TypeError, OverflowError) as exc:
            raise ProtocolError(f"malformed msgpack: {exc}") from None
        end = self._framer.tell()
        message = self._take(end - self._start)
        self._start = end
        self._head_checked = False
        return message

    def _check_head(self) -> None:
        """A declared length over the limits at the start of a message is refused before its
        elements arrive (its first bytes are parsed as they come)."""
        if self._fed - self._start < _LENGTH_BYTES.get(self._parts[0][0], 1):
            raise msgpack.OutOfData  # the length is not whole yet: checked with more bytes
        unpacker = self.limits.unpacker(self.limits.chunk_size_limit)
        unpacker.feed(self._peek(_HEAD))
        try:
            unpacker.unpack()
        except msgpack.OutOfData:
            pass
        except (ValueError, TypeError, OverflowError) as exc:
            raise ProtocolError(f"malformed msgpack: {exc}") from None
        self._head_checked = True

    def _fail(self, error: ProtocolError) -> None:
        """Raise ``error`` now, or after the messages framed before it have been handed out (they
        arrived whole: the caller must get them before it closes the connection)."""
        self._error = error
        if not self._ahead:
            raise error

    def _small_message(self, message: bytes | memoryview, now_ns: int) -> Request | Ping:
        if message[0] not in _ARRAY_HEADER:
            raise ProtocolError(f"a request must be an array, got {_KINDS.get(message[0], 'a scalar')}")
        unpacker = self._small
        unpacker.feed(message)
        try:
            decoded = unpacker.unpack()
        except (ValueError, TypeError, OverflowError) as exc:
            self._small = self.limits.unpacker(self.limits.chunk_size_limit)  # it may hold a part
            raise ProtocolError(f"malformed msgpack: {exc}") from None
        except msgpack.OutOfData:  # framed whole, so never: start afresh rather than hold a part
            self._small = self.limits.unpacker(self.limits.chunk_size_limit)
            raise ProtocolError("malformed msgpack: the message ends early") from None
        if decoded and decoded[0] == "PING" and len(decoded) == 6:
            return _ping(decoded)
        return _small_request(decoded, len(message), self.limits, self.skip_invalid_event, now_ns)

    def next_event(self, now_ns: int) -> Request | Frame | Heartbeat | Ping | Any:
        """The next complete message, or :data:`NEED_DATA`. ``now_ns`` is used for time 0/nil."""
        if self._ahead:
            message = self._ahead.popleft()
        elif self._error is not None:
            raise self._error
        else:
            try:
                message = self._frame()
            except msgpack.OutOfData:
                return NEED_DATA
            except ProtocolError as exc:
                self._error = exc
                raise
        if len(message) <= _SMALL and message != b"\xc0":
            return self._small_message(message, now_ns)
        event = _head(message, self.limits)
        if type(event) is not Frame or self.lazy:
            return event
        request = open_request(event, self.limits, self.skip_invalid_event, now_ns)
        request.entries = list(request.entries)
        return request


# How many bytes a container header takes whose length is not in its first byte.
_LENGTH_BYTES = {0xDC: 3, 0xDD: 5, 0xDE: 3, 0xDF: 5}
# Messages up to this size are decoded whole, at once, by one unpacker the decoder keeps: creating
# the unpackers that framing and streaming take costs more than decoding a small request (Message
# mode: one record each), and a small request is not worth a pool process anyway.
_SMALL = 4096
# What the first byte of a message that is not an array or nil holds, for the error message.
_KINDS = {
    **{b: "a map" for b in (*range(0x80, 0x90), 0xDE, 0xDF)},
    **{b: "a string" for b in (*range(0xA0, 0xC0), 0xD9, 0xDA, 0xDB)},
    **{b: "bytes" for b in (0xC4, 0xC5, 0xC6)},
}
# Where the payload of a str or bin element starts after its first byte.
_STR_HEADER = {**{b: 1 for b in range(0xA0, 0xC0)}, 0xD9: 2, 0xDA: 3, 0xDB: 5, 0xC4: 2, 0xC5: 3, 0xC6: 5}
_ARRAY_HEADER = {**{b: 1 for b in range(0x90, 0xA0)}, 0xDC: 3, 0xDD: 5}


def _head(message: bytes | memoryview, limits: DecoderLimits, head_bytes: int = 4096) -> Frame | Heartbeat | Ping:
    """A whole message: a heartbeat, a PING, or a request framed with its tag (the rest is decoded
    by :func:`open_request`)."""
    if message == b"\xc0":
        return Heartbeat()
    first = message[0]
    if first not in _ARRAY_HEADER:
        raise ProtocolError(f"a request must be an array, got {_KINDS.get(first, 'a scalar')}")
    unpacker = limits.unpacker(len(message))
    # The head is all that is read here: a large request is not copied into the unpacker whole.
    unpacker.feed(message[:head_bytes] if len(message) > head_bytes else message)
    try:
        try:
            size = unpacker.read_array_header()
            if size < 2:
                raise ProtocolError(f"a request needs a tag and entries, got {size} element(s)")
            tag = unpacker.unpack()
            if size == 6 and tag == "PING":
                return _ping([tag, *(unpacker.unpack() for _ in range(5))])
        except msgpack.OutOfData:  # a tag (or PING) longer than that: read it all
            if head_bytes >= len(message):
                raise ProtocolError("malformed msgpack: the message ends early") from None
            return _head(message, limits, len(message))
    except (ValueError, TypeError, OverflowError) as exc:
        raise ProtocolError(f"malformed msgpack: {exc}") from None
    return Frame(_tag(tag), message, len(message))


def _tag(tag: Any) -> str:
    if type(tag) is bytes:
        tag = tag.decode("utf-8", "surrogateescape")
    if type(tag) is not str or not tag:
        raise ProtocolError("the tag must be a non-empty string")
    try:
        tag.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("the tag is not valid UTF-8") from None
    return tag


def _small_request(message: list, wire_size: int, limits: DecoderLimits, skip_invalid_event: bool, now_ns: int) -> Request:
    """A small request decoded whole (see ``_SMALL``): the same checks as :func:`open_request`."""
    if len(message) < 2:
        raise ProtocolError(f"a request needs a tag and entries, got {len(message)} element(s)")
    tag = _tag(message[0])
    body = message[1]
    kind = type(body)
    if kind is list:
        option, mode, entries = _small_option(message, 2), "forward", iter(body)
    elif kind is str or kind is bytes:
        option = _small_option(message, 2)
        payload = body.encode("utf-8", "surrogateescape") if kind is str else body
        compressed = option.get("compressed")
        if compressed in (None, "text"):
            mode = "packed_forward"
        elif compressed == "gzip":
            payload, mode = _gunzip(payload, limits.decompression_size_limit), "compressed_packed_forward"
        elif compressed == "zstd":
            payload, mode = _unzstd(payload, limits.decompression_size_limit), "compressed_packed_forward"
        else:
            raise ProtocolError(f"unknown compression {compressed!r}")
        entries = _stream(payload, limits, "malformed packed entries")
    elif kind is int or kind is EventTime or kind is float or body is None or body is GROUP_MARKER:
        if len(message) < 3:
            raise ProtocolError("a Message mode request needs a record")
        option, mode, entries = _small_option(message, 3), "message", iter(((body, message[2]),))
    else:
        raise ProtocolError(f"unknown request mode: element 1 is {kind.__name__}")
    signal = option.get("fluent_signal", 0)
    if signal not in (0, None):
        name = SIGNAL_NAMES.get(signal, repr(signal))
        raise ProtocolError(f"fluent_signal {name}: only logs are accepted here")
    request = Request(tag, [], _chunk(option), mode, wire_size, option=option)
    request.entries = list(_entries(request, entries, skip_invalid_event, now_ns))
    return request


def _small_option(message: list, index: int) -> dict[str, Any]:
    if len(message) <= index or message[index] is None:
        return {}
    option = message[index]
    if type(option) is not dict:
        raise ProtocolError(f"the option must be a map, got {type(option).__name__}")
    return option


def open_request(frame: Frame, limits: DecoderLimits, skip_invalid_event: bool, now_ns: int) -> Request:
    """Decode a framed request's mode and option; its entries come as an iterator that decodes one
    at a time (see :class:`Request`). Raises :class:`ProtocolError` for a request that is not the
    forward protocol."""
    data = frame.data
    unpacker = limits.unpacker(len(data))
    unpacker.feed(data)
    try:
        size = unpacker.read_array_header()
        unpacker.skip()  # the tag, already read by the framing
        at = unpacker.tell()
        first = data[at]
        body: Any = None
        if first in _ARRAY_HEADER:
            # Forward mode: the entries come straight from this unpacker, which holds the whole
            # message already (no second pass over them to find the option first). The option
            # follows them: the ack token and its checks are filled in once they are read.
            count = unpacker.read_array_header()
            request = Request(frame.tag, (), None, "forward", frame.wire_size, option={})
            request.entries = _entries(request, _forward_entries(unpacker, count, size, request), skip_invalid_event, now_ns)
            return request
        if first in _STR_HEADER:
            unpacker.skip()
            body = memoryview(data)[at : unpacker.tell()]
            option = _option(unpacker, size, 2)
        else:
            time = unpacker.unpack()
            kind = type(time)
            if not (kind is int or kind is EventTime or kind is float or time is None or time is GROUP_MARKER):
                raise ProtocolError(f"unknown request mode: element 1 is {kind.__name__}")
            if size < 3:
                raise ProtocolError("a Message mode request needs a record")
            record = unpacker.unpack()
            option = _option(unpacker, size, 3)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ProtocolError(f"malformed msgpack: {exc}") from None

    _check_signal(option)
    request = Request(frame.tag, (), _chunk(option), "forward", frame.wire_size, option=option)
    if body is None:
        request.mode = "message"
        request.entries = _entries(request, iter(((time, record),)), skip_invalid_event, now_ns)
    else:
        payload = body[_STR_HEADER[first] :]
        compressed = option.get("compressed")
        if compressed in (None, "text"):
            request.mode = "packed_forward"
        elif compressed == "gzip":
            payload = _gunzip(payload, limits.decompression_size_limit)
            request.mode = "compressed_packed_forward"
        elif compressed == "zstd":
            payload = _unzstd(payload, limits.decompression_size_limit)
            request.mode = "compressed_packed_forward"
        else:
            raise ProtocolError(f"unknown compression {compressed!r}")
        request.entries = _entries(request, _stream(payload, limits, "malformed packed entries"), skip_invalid_event, now_ns)
    return request


def _check_signal(option: dict[str, Any]) -> None:
    signal = option.get("fluent_signal", 0)
    if signal not in (0, None):
        name = SIGNAL_NAMES.get(signal, repr(signal))
        raise ProtocolError(f"fluent_signal {name}: only logs are accepted here")


def _forward_entries(unpacker: msgpack.Unpacker, count: int, size: int, request: Request) -> Iterator[Any]:
    """A Forward mode request's entries from the unpacker holding it, then its option: the request
    is refused (ProtocolError at the end of the entries) if the option is not one to accept."""
    try:
        for _ in range(count):
            yield unpacker.unpack()
        option = _option(unpacker, size, 2)
    except (ValueError, TypeError, OverflowError, msgpack.OutOfData) as exc:
        raise ProtocolError(f"malformed msgpack: {exc}") from None
    _check_signal(option)
    request.chunk = _chunk(option)
    request.option = option


def _stream(payload: bytes | memoryview, limits: DecoderLimits, what: str) -> Iterator[Any]:
    """The msgpack objects concatenated in ``payload``, one at a time, fed in pieces.

    A trailing nil is fed as a sentinel: it comes back as its own object, at the very end, only if
    the last entry was whole (the unpacker's offset counts the bytes of an incomplete object too,
    so it cannot tell)."""
    total = len(payload)
    unpacker = limits.unpacker(total + 1)
    view = memoryview(payload)
    pos = 0
    while True:
        try:
            for obj in unpacker:
                if obj is None and pos > total and unpacker.tell() == total + 1:
                    return
                yield obj
        except (ValueError, TypeError, OverflowError) as exc:
            raise ProtocolError(f"{what}: {exc}") from None
        if pos > total:
            raise ProtocolError("packed entries end in the middle of an entry")
        if pos == total:
            unpacker.feed(b"\xc0")
            pos += 1
        else:
            piece = view[pos : pos + _FEED]
            unpacker.feed(piece)
            pos += len(piece)


def _entries(request: Request, entries: Iterator[Any], skip_invalid_event: bool, now_ns: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """[time, record] entries as (nanoseconds, record); invalid ones and group markers are
    counted on ``request`` and skipped (or, invalid ones, refused)."""
    for entry in entries:
        # The common shapes first: [time, record] with an EventTime or an integer, or Fluent Bit's
        # [[EventTime, {metadata}], record].
        if (type(entry) is list or type(entry) is tuple) and len(entry) == 2:
            time, record = entry
            if type(record) is dict:
                kind = type(time)
                if kind is list and time:
                    time = time[0]
                    kind = type(time)
                if kind is EventTime and time:
                    yield int(time), record
                    continue
                if kind is int and time > 0:
                    yield time * NS, record
                    continue
        time_ns = _slow_entry(request, entry, skip_invalid_event, now_ns)
        if time_ns is not None:
            yield time_ns, entry[1]


def _slow_entry(request: Request, entry: Any, skip_invalid_event: bool, now_ns: int) -> int | None:
    """The time of an entry off the common path, or None when it is skipped (counted)."""
    if (type(entry) is list or type(entry) is tuple) and len(entry) >= 2:
        time, record = entry[0], entry[1]
        if type(time) is list and time:  # v1.5: [EventTime, {metadata}]
            time = time[0]
        if time is GROUP_MARKER:
            request.markers += 1
            return None
        time_ns = _time_ns(time, now_ns)
        if time_ns is not None and type(record) is dict:
            return time_ns
    if not skip_invalid_event:
        raise ProtocolError("invalid entry (expected [time, record]) and skip_invalid_event is false")
    request.invalid += 1
    return None


def _option(unpacker: msgpack.Unpacker, size: int, index: int) -> dict[str, Any]:
    """The option element at ``index`` (if the message has one); later elements are ignored."""
    option = unpacker.unpack() if size > index else None
    for _ in range(index + 1, size):
        unpacker.skip()
    if option is None:
        return {}
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


def _ping(message: list[Any]) -> Ping:
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
