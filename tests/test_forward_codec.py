"""The forward codec on golden wire bytes, whole and one byte at a time, and on bad input."""

import gzip
import struct

import msgpack
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from fluent_ld.forward.codec import (
    NEED_DATA,
    Decoder,
    DecoderLimits,
    Heartbeat,
    Ping,
    ProtocolError,
    Request,
    encode_ack,
    encode_event_time,
    encode_helo,
    encode_pong,
)

NOW = 1_800_000_000_000_000_000
T = 1_749_200_000  # seconds
ET = bytes.fromhex("d700") + struct.pack(">II", T, 123_456_789)  # EventTime as fixext8
ET8 = bytes.fromhex("c70800") + struct.pack(">II", T, 7)  # EventTime as ext8
MARKER = bytes.fromhex("d700") + struct.pack(">II", 0xFFFFFFFF, 0)


def decode_all(data: bytes, byte_at_a_time: bool = False, **kw) -> list:
    decoder = Decoder(**kw)
    events = []
    pieces = [data[i : i + 1] for i in range(len(data))] if byte_at_a_time else [data]
    for piece in pieces:
        decoder.receive_data(piece)
        while (event := decoder.next_event(NOW)) is not NEED_DATA:
            events.append(event)
    return events


def fixmap_record(**fields) -> bytes:
    return msgpack.packb(fields)


def str32(payload: bytes) -> bytes:
    return b"\xdb" + struct.pack(">I", len(payload)) + payload


# Each golden case: wire bytes written out by hand from the specification, and what they mean.
ENTRY_A = b"\x92" + b"\xce" + struct.pack(">I", T) + fixmap_record(message="a")
ENTRY_B = b"\x92" + ET + fixmap_record(message="b")
GOLDEN = {
    # [tag, time, record] with integer seconds.
    "message-int": (
        b"\x93\xa3a.b\xce" + struct.pack(">I", T) + fixmap_record(k="v"),
        Request("a.b", [(T * 10**9, {"k": "v"})], None, "message"),
    ),
    # Message with EventTime and an option carrying the ack token (Python fluent-logger,
    # nanosecond_precision).
    "message-eventtime-chunk": (
        b"\x94\xa3a.b" + ET + fixmap_record(k="v") + b"\x81\xa5chunk\xa4abc=",
        Request("a.b", [(T * 10**9 + 123_456_789, {"k": "v"})], "abc=", "message"),
    ),
    # Message with float seconds (some Python clients).
    "message-float": (
        b"\x93\xa3a.b\xcb" + struct.pack(">d", 1.5) + fixmap_record(k="v"),
        Request("a.b", [(1_500_000_000, {"k": "v"})], None, "message"),
    ),
    # Message with time 0 and nil: "now".
    "message-zero": (b"\x93\xa3a.b\x00\x80", Request("a.b", [(NOW, {})], None, "message")),
    "message-nil": (b"\x94\xa3a.b\xc0\x80\xc0", Request("a.b", [(NOW, {})], None, "message")),
    # Forward: [tag, [[time, record], ...]] with int and ext8 EventTime, no option.
    "forward": (
        b"\x92\xa3a.b\x92" + ENTRY_A + b"\x92" + ET8 + fixmap_record(message="c"),
        Request("a.b", [(T * 10**9, {"message": "a"}), (T * 10**9 + 7, {"message": "c"})], None, "forward"),
    ),
    # Fluent Bit 4.x/5.x default: Forward mode with [[EventTime, {metadata}], record] entries,
    # group markers around them, options size/chunk/fluent_signal 0.
    "fluent-bit-forward-v1.5": (
        b"\x93\xa8app.logs\x93"
        + b"\x92\x92"
        + MARKER
        + b"\x80\x80"
        + b"\x92\x92"
        + ET
        + b"\x80"
        + fixmap_record(log="hello")
        + b"\x92\x92"
        + bytes.fromhex("d700")
        + struct.pack(">II", 0xFFFFFFFE, 0)
        + b"\x80\x80"
        + b"\x83\xa4size\x01\xa5chunk\xb8MDEyMzQ1Njc4OWFiY2RlZg==\xadfluent_signal\x00",
        Request("app.logs", [(T * 10**9 + 123_456_789, {"log": "hello"})], "MDEyMzQ1Njc4OWFiY2RlZg==", "forward", markers=2),
    ),
    # Fluentd out_forward: PackedForward with the entries as str32 holding raw msgpack, and a
    # chunk id from Base64.encode64 (with its trailing newline).
    "fluentd-packed-str32": (
        b"\x93\xa8app.logs" + str32(ENTRY_A + ENTRY_B) + b"\x82\xa4size\x02\xa5chunk\xbdWUFDSElZQU5ZQVJET1lBUkRPWQ==\n",
        Request(
            "app.logs",
            [(T * 10**9, {"message": "a"}), (T * 10**9 + 123_456_789, {"message": "b"})],
            "WUFDSElZQU5ZQVJET1lBUkRPWQ==\n",
            "packed_forward",
        ),
    ),
    # PackedForward with bin entries and a bin chunk (acked as bin).
    "packed-bin": (
        b"\x93\xa3a.b\xc4" + bytes([len(ENTRY_A)]) + ENTRY_A + b"\x81\xa5chunk\xc4\x02\x00\xff",
        Request("a.b", [(T * 10**9, {"message": "a"})], b"\x00\xff", "packed_forward"),
    ),
    # compressed "text" means uncompressed.
    "packed-text": (
        b"\x93\xa3a.b\xc4" + bytes([len(ENTRY_A)]) + ENTRY_A + b"\x81\xaacompressed\xa4text",
        Request("a.b", [(T * 10**9, {"message": "a"})], None, "packed_forward"),
    ),
    # The nil option and a heartbeat.
    "nil-option": (b"\x93\xa3a.b\x90\xc0", Request("a.b", [], None, "forward")),
    "heartbeat": (b"\xc0", Heartbeat()),
}


def gzip_members(*parts: bytes) -> bytes:
    return b"".join(gzip.compress(p) for p in parts)


def zstd_frames(*parts: bytes) -> bytes:
    compressor = zstandard.ZstdCompressor(write_content_size=False)
    return b"".join(compressor.compress(p) for p in parts)


for _name, _blob in (("gzip", gzip_members(ENTRY_A, ENTRY_B)), ("zstd", zstd_frames(ENTRY_A, ENTRY_B))):
    GOLDEN[f"compressed-{_name}-several"] = (
        b"\x93\xa3a.b" + msgpack.packb(_blob, use_bin_type=True) + msgpack.packb({"compressed": _name, "chunk": "k1"}),
        Request(
            "a.b",
            [(T * 10**9, {"message": "a"}), (T * 10**9 + 123_456_789, {"message": "b"})],
            "k1",
            "compressed_packed_forward",
        ),
    )


def same(actual, expected) -> bool:
    if isinstance(expected, Request):
        return isinstance(actual, Request) and (actual.tag, actual.entries, actual.chunk, actual.mode, actual.invalid, actual.markers) == (
            expected.tag,
            expected.entries,
            expected.chunk,
            expected.mode,
            expected.invalid,
            expected.markers,
        )
    return actual == expected


@pytest.mark.parametrize("byte_at_a_time", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden(name, byte_at_a_time):
    wire, expected = GOLDEN[name]
    events = decode_all(wire, byte_at_a_time)
    assert len(events) == 1 and same(events[0], expected), events
    if isinstance(expected, Request):
        assert events[0].wire_size == len(wire)


def test_a_stream_of_every_mode_back_to_back():
    names = sorted(GOLDEN)
    wire = b"".join(GOLDEN[n][0] for n in names)
    events = decode_all(wire, byte_at_a_time=True)
    assert [same(e, GOLDEN[n][1]) for e, n in zip(events, names, strict=True)] == [True] * len(names)


def test_str_chunk_holding_raw_bytes_is_echoed_byte_for_byte():
    raw = b"\x9f\xfe\x00token"
    wire = b"\x93\xa3a.b\x90\x81\xa5chunk" + b"\xa8" + raw
    (request,) = decode_all(wire)
    ack = encode_ack(request.chunk)
    assert ack == b"\x81\xa3ack\xa8" + raw  # still a str (fixstr), same bytes


@pytest.mark.parametrize(
    "chunk, wire",
    [
        ("abc=\n", b"\x81\xa3ack\xa5abc=\n"),
        (b"\x01\x02", b"\x81\xa3ack\xc4\x02\x01\x02"),
    ],
)
def test_ack_keeps_type_and_bytes(chunk, wire):
    assert encode_ack(chunk) == wire


def test_invalid_entries_are_skipped_and_counted():
    wire = msgpack.packb(["a", [[1, {"ok": 1}], [1, "not a map"], ["yesterday", {}], [1], "x", [-5, {}], [2, {"ok": 2}]]])
    (request,) = decode_all(wire)
    assert request.entries == [(10**9, {"ok": 1}), (2 * 10**9, {"ok": 2})]
    assert request.invalid == 5
    with pytest.raises(ProtocolError, match="skip_invalid_event is false"):
        decode_all(wire, skip_invalid_event=False)


def test_ping_with_salt_as_str_or_bin():
    for salt in ("0123456789abcdef", b"\x00\xffsalt"):
        wire = msgpack.packb(["PING", "client", salt, "d1g", "", ""], use_bin_type=True)
        (ping,) = decode_all(wire)
        assert ping == Ping("client", salt.encode() if isinstance(salt, str) else salt, "d1g", "", "")


def test_handshake_messages():
    helo = msgpack.unpackb(encode_helo(b"n" * 16, b"", True), raw=False)
    assert helo == ["HELO", {"nonce": b"n" * 16, "auth": b"", "keepalive": True}]
    assert msgpack.unpackb(encode_pong(False, "shared key mismatch", "", ""), raw=False) == ["PONG", False, "shared key mismatch", "", ""]


def test_event_time_round_trip():
    ext = encode_event_time(T * 10**9 + 5)
    (request,) = decode_all(msgpack.packb(["t", ext, {}]))
    assert request.entries == [(T * 10**9 + 5, {})]


BOMB = gzip.compress(b"\x00" * (2 * 1024 * 1024))


# name, wire bytes, what the error says
MALFORMED = [
    ("top-level map", msgpack.packb({"a": 1}), "must be an array"),
    ("top-level int", b"\x01", "must be an array"),
    ("empty array", b"\x90", "needs a tag and entries"),
    ("only a tag", msgpack.packb(["a"]), "needs a tag and entries"),
    ("tag is an int", msgpack.packb([1, []]), "tag must be a non-empty string"),
    ("empty tag", msgpack.packb(["", []]), "tag must be a non-empty string"),
    ("tag not utf-8", b"\x92\xa2\xff\xfe\x90", "not valid UTF-8"),
    ("entries is a map", msgpack.packb(["a", {}]), "unknown request mode"),
    ("message without record", msgpack.packb(["a", 1]), "needs a record"),
    ("option is a list", msgpack.packb(["a", [], [1]]), "option must be a map"),
    ("chunk is an int", msgpack.packb(["a", [], {"chunk": 5}]), "chunk option must be a string"),
    ("unknown compression", msgpack.packb(["a", b"x", {"compressed": "lz4"}], use_bin_type=True), "unknown compression"),
    ("bad gzip", msgpack.packb(["a", b"not gzip", {"compressed": "gzip"}], use_bin_type=True), "bad gzip"),
    ("truncated gzip", msgpack.packb(["a", gzip.compress(ENTRY_A)[:-6], {"compressed": "gzip"}], use_bin_type=True), "gzip"),
    ("gzip bomb", msgpack.packb(["a", BOMB, {"compressed": "gzip"}], use_bin_type=True), "decompression_size_limit"),
    ("bad zstd", msgpack.packb(["a", b"\x28\xb5\x2f\xfdjunk", {"compressed": "zstd"}], use_bin_type=True), "zstd"),
    ("packed garbage", msgpack.packb(["a", b"\xc1", {}], use_bin_type=True), "malformed packed entries"),
    ("packed truncated", msgpack.packb(["a", ENTRY_A[:-1]], use_bin_type=True), "middle of an entry"),
    ("metrics signal", msgpack.packb(["a", [], {"fluent_signal": 1}]), "fluent_signal metrics"),
    ("traces signal", msgpack.packb(["a", [], {"fluent_signal": 2}]), "fluent_signal traces"),
    ("reserved byte", b"\xc1", "malformed msgpack"),
    ("non-string map key", b"\x93\xa1a\x01\x81\x01\x02", "malformed msgpack"),
    ("EventTime of 4 bytes", b"\x93\xa1a\xd6\x00\x00\x00\x00\x01\x80", "malformed msgpack"),
    ("EventTime nanos out of range", b"\x93\xa1a\xd7\x00" + struct.pack(">II", 1, 2 * 10**9) + b"\x80", "malformed msgpack"),
    ("huge declared array", b"\xdd\xff\xff\xff\xff", "malformed msgpack"),
    ("huge declared map", b"\xdf\xff\xff\xff\xff", "malformed msgpack"),
    ("deep nesting", b"\x91" * 5000, "malformed msgpack"),
    ("message of two elements", b"\x92\xa1a\xcf" + b"\xff" * 8, "needs a record"),
    ("bool as mode", b"\x93\xa1a\xc3\x80", "unknown request mode"),
]


@pytest.mark.parametrize("name, wire, message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input_is_a_protocol_error(name, wire, message):
    limits = DecoderLimits(chunk_size_limit=1024 * 1024, decompression_size_limit=1024 * 1024)
    with pytest.raises(ProtocolError, match=message):
        for _ in range(2):  # some need a second read to find out
            decoder = Decoder(limits)
            decoder.receive_data(wire)
            while decoder.next_event(NOW) is not NEED_DATA:
                pass
            raise ProtocolError("<incomplete, no error>")


def test_a_huge_declared_length_waits_for_bytes_that_the_limit_refuses():
    decoder = Decoder(DecoderLimits(chunk_size_limit=1024))
    decoder.receive_data(b"\xdb\xff\xff\xff\xff")  # a 4 GiB str: nothing is allocated for it
    assert decoder.next_event(NOW) is NEED_DATA
    with pytest.raises(ProtocolError, match="chunk_size_limit"):
        decoder.receive_data(b"x" * 4096)


def test_request_over_chunk_size_limit():
    decoder = Decoder(DecoderLimits(chunk_size_limit=64))
    with pytest.raises(ProtocolError, match="chunk_size_limit"):
        decoder.receive_data(msgpack.packb(["a", [[1, {"k": "x" * 100}]]]))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_protocol_errors(data):
    decoder = Decoder(DecoderLimits(chunk_size_limit=4096, decompression_size_limit=65536))
    try:
        decoder.receive_data(data)
        while decoder.next_event(NOW) is not NEED_DATA:
            pass
    except ProtocolError:
        pass


records = st.dictionaries(st.text(max_size=8), st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=20), st.booleans(), st.none()), max_size=5)
times = st.integers(min_value=1, max_value=2**32 - 3)


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=1, max_size=20),
    st.lists(st.tuples(times, st.integers(0, 10**9 - 1), records), max_size=20),
    st.sampled_from(["forward", "packed", "gzip", "zstd"]),
)
def test_encode_then_decode_round_trips(tag, items, mode):
    entries = [[encode_event_time(s * 10**9 + n), r] for s, n, r in items]
    if mode == "forward":
        wire = msgpack.packb([tag, entries, {"chunk": "c"}], use_bin_type=True)
    else:
        packed = b"".join(msgpack.packb(e, use_bin_type=True) for e in entries)
        option = {"chunk": "c"}
        if mode == "gzip":
            packed, option["compressed"] = gzip.compress(packed), "gzip"
        elif mode == "zstd":
            packed, option["compressed"] = zstd_frames(packed), "zstd"
        wire = msgpack.packb([tag, packed, option], use_bin_type=True)
    (request,) = decode_all(wire)
    assert request.tag == tag and request.chunk == "c"
    assert request.entries == [(s * 10**9 + n, r) for s, n, r in items]
