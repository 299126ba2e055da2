"""Signal events -> LaunchDarkly custom events: the Default preset, the seed example byte for
byte, overrides, every rejection class, and property tests against LaunchDarkly's event contract."""

import json
import math
from pathlib import Path

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluent_ld.launchdarkly.mapping import INVALID, UNMAPPED, Mapper, Rejection
from fluent_ld.launchdarkly.preset import ContextRule, EventRule, PresetError, derive_key, preset_from_dict
from fluent_ld.launchdarkly.preset.loader import load_preset
from fluent_ld.launchdarkly.preset.schema import schemas

SEED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "launchdarkly-metric-import.txt"
DEFAULT = load_preset("default")
T = 1_749_200_000_000_000_000  # Fluent event time (ns) used when an event has no timestamp
MAPPER = Mapper(DEFAULT)

# The LaunchDarkly custom event as the metric import API takes it (launchdarkly-api-notes.md).
LD_CUSTOM_EVENT = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["kind", "key", "creationDate", "contextKeys"],
    "additionalProperties": False,
    "properties": {
        "kind": {"const": "custom"},
        "key": {"type": "string", "minLength": 1},
        "creationDate": {"type": "integer", "minimum": 0},
        "metricValue": {"type": "number"},
        "contextKeys": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": "^[-a-zA-Z0-9._]+$", "not": {"enum": ["kind", "multi"]}},
            "additionalProperties": {"type": "string", "minLength": 1},
        },
        "data": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}},
    },
}
LD_VALIDATOR = jsonschema.Draft202012Validator(LD_CUSTOM_EVENT)


def track(event, **fields):
    return {"type": "track", "event": event, **fields}


# -- the seed ----------------------------------------------------------------------------------------


# The seed's "Resulting payload delivered to LaunchDarkly", kept beside the tests (the seed itself
# lives outside the repository; the test below checks the copy against it when it is there).
SEED_PAYLOAD = Path(__file__).resolve().parent / "data" / "seed-order-completed-payload.json"


def seed_payload() -> str:
    if not SEED.exists():
        return SEED_PAYLOAD.read_text()
    text = SEED.read_text()
    start = text.index("Resulting payload delivered to LaunchDarkly:")
    body = text[text.index("[", start) :]
    return body[: body.index("\n]") + 2]


def test_the_kept_copy_is_the_seed_payload():
    if not SEED.exists():
        pytest.skip("the seed document is not beside this checkout")
    assert SEED_PAYLOAD.read_text() == seed_payload()


def test_the_seed_example_maps_byte_for_byte():
    # datafly.track("Order Completed", {order_id: "ORD-1001", revenue: 89.99, currency: "GBP"})
    record = track(
        "Order Completed",
        anonymous_id="a1b2c3d4-anonymous-id",
        timestamp="2025-06-06T08:53:20.000Z",
        properties={"order_id": "ORD-1001", "revenue": 89.99, "currency": "GBP"},
    )
    event = MAPPER.map(record, 0)
    assert orjson.dumps([event], option=orjson.OPT_INDENT_2).decode() == SEED_PAYLOAD.read_text()


# -- the Default preset, event by event --------------------------------------------------------------

GOLDEN = [
    (
        {"type": "page", "user_id": "u1", "name": "Pricing", "properties": {"path": "/pricing", "title": "Pricing"}},
        {"kind": "custom", "key": "page_view", "creationDate": T // 10**6, "contextKeys": {"user": "u1"}, "data": {"path": "/pricing", "title": "Pricing"}},
    ),
    (
        track("Signed Up", userId="u2", properties={"plan": "team", "seats": 5, "trial": True}),
        {"kind": "custom", "key": "sign_up", "creationDate": T // 10**6, "contextKeys": {"user": "u2"}, "data": {"plan": "team", "seats": 5, "trial": True}},
    ),
    (
        track("Product Viewed", anonymousId="a3", properties={"value": 19.5, "sku": "S-1"}),
        {"kind": "custom", "key": "product_viewed", "creationDate": T // 10**6, "metricValue": 19.5, "contextKeys": {"user": "a3"}, "data": {"sku": "S-1"}},
    ),
    (
        track("Product Added", user_id="u4", anonymous_id="a4", properties={"value": 3}),
        {"kind": "custom", "key": "add_to_cart", "creationDate": T // 10**6, "metricValue": 3, "contextKeys": {"user": "u4"}, "data": {}},
    ),
    (
        track("Checkout Started", user_id="", anonymous_id="a5", timestamp="2026-01-02T03:04:05.678+01:00", properties={}),
        {"kind": "custom", "key": "begin_checkout", "creationDate": 1767319445678, "contextKeys": {"user": "a5"}, "data": {}},
    ),
    (
        track("Order Completed", user_id="u6", properties={"revenue": 10, "items": [{"sku": "x"}], "meta": {"a": 1}, "note": None, "coupon": "C"}),
        {"kind": "custom", "key": "order_completed", "creationDate": T // 10**6, "metricValue": 10, "contextKeys": {"user": "u6"}, "data": {"coupon": "C"}},
    ),
]


@pytest.mark.parametrize("record, expected", GOLDEN, ids=[g[1]["key"] for g in GOLDEN])
def test_default_preset_golden(record, expected):
    event = MAPPER.map(record, T)
    assert event == expected
    assert list(event) == list(expected)  # field order as in the seed
    LD_VALIDATOR.validate(event)


def test_metric_value_is_absent_when_the_event_has_none():
    event = MAPPER.map(track("Order Completed", user_id="u", properties={"order_id": "o"}), T)
    assert "metricValue" not in event and event["data"] == {"order_id": "o"}


# -- overrides -----------------------------------------------------------------------------------------


def test_overrides_rename_keys_change_metrics_and_send_several_context_kinds():
    preset = DEFAULT.with_overrides(
        events=[
            EventRule("Order Completed", "purchase", "total.amount", metric_value_required=True, required_properties=("order_id",)),
            EventRule("Trial Started", "trial_started"),
        ],
        contexts=[
            ContextRule("user", ("user_id",)),
            ContextRule("device", ("context.device.id", "anonymous_id")),
        ],
    )
    mapper = Mapper(preset)
    record = track(
        "Order Completed",
        user_id="u1",
        anonymous_id="a1",
        context={"device": {"id": "d1"}},
        properties={"order_id": "o1", "total": {"amount": 42}},
    )
    assert mapper.map(record, T) == {
        "kind": "custom",
        "key": "purchase",
        "creationDate": T // 10**6,
        "metricValue": 42,
        "contextKeys": {"user": "u1", "device": "d1"},
        "data": {"order_id": "o1"},
    }
    no_device = track("Trial Started", user_id="u1")
    assert mapper.map(no_device, T)["contextKeys"] == {"user": "u1"}
    no_metric = mapper.map(track("Order Completed", user_id="u", properties={"order_id": "o"}), T)
    assert (no_metric.kind, no_metric.reason) == (INVALID, "properties: 'total' is a required property")
    missing = mapper.map(track("Order Completed", user_id="u", properties={"total": {"amount": 1}}), T)
    assert missing.kind == INVALID and "order_id" in missing.reason


def test_unmapped_events_skip_or_derive():
    skipped = MAPPER.map(track("Coupon Applied", user_id="u"), T)
    assert skipped == Rejection(UNMAPPED, "event 'Coupon Applied' is not in the 'default' preset", skipped.record, "Coupon Applied")
    derived = Mapper(DEFAULT.with_overrides(unmapped_events="derive")).map(track("Coupon Applied", user_id="u"), T)
    assert derived["key"] == "coupon_applied"
    assert [derive_key(n) for n in ("Order Completed", "checkoutStarted", "  Sign-Up v2 ")] == ["order_completed", "checkout_started", "sign_up_v2"]


def test_record_key_with_json_string_from_fluent_bit_tail():
    mapper = Mapper(DEFAULT, record_key="log")
    line = json.dumps(track("Signed Up", user_id="u1"))
    assert mapper.map({"log": line}, T)["key"] == "sign_up"
    assert mapper.map({"log": track("Signed Up", user_id="u1")}, T)["key"] == "sign_up"
    assert mapper.map({"log": "not json"}, T).reason.startswith("log: not JSON")
    assert mapper.map({"message": line}, T).reason == "the record has no 'log' field"


# -- rejections ------------------------------------------------------------------------------------------

REJECTIONS = [
    ("no identity", track("Signed Up", properties={}), INVALID, "no identity: none of user_id, userId, anonymous_id, anonymousId is a non-empty string"),
    (
        "empty identity",
        track("Signed Up", user_id="", anonymous_id=""),
        INVALID,
        "no identity: none of user_id, userId, anonymous_id, anonymousId is a non-empty string",
    ),
    ("identity not a string", track("Signed Up", user_id=42), INVALID, "user_id: 42 is not of type 'string'"),
    (
        "metric not a number",
        track("Order Completed", user_id="u", properties={"revenue": "89.99"}),
        INVALID,
        "properties.revenue: '89.99' is not of type 'number'",
    ),
    ("metric a boolean", track("Order Completed", user_id="u", properties={"revenue": True}), INVALID, "properties.revenue: True is not of type 'number'"),
    ("metric not finite", track("Order Completed", user_id="u", properties={"revenue": math.inf}), INVALID, "properties.revenue: not a finite number"),
    ("bad timestamp", track("Signed Up", user_id="u", timestamp="yesterday"), INVALID, "timestamp: 'yesterday' is not a 'date-time'"),
    (
        "timestamp without zone",
        track("Signed Up", user_id="u", timestamp="2026-01-01T00:00:00"),
        INVALID,
        "timestamp: '2026-01-01T00:00:00' is not a 'date-time'",
    ),
    ("timestamp a number", track("Signed Up", user_id="u", timestamp=1749200000000), INVALID, "timestamp: 1749200000000 is not of type 'string'"),
    ("properties not an object", track("Signed Up", user_id="u", properties=[1]), INVALID, "properties: [1] is not of type 'object'"),
    ("not an object", ["Order Completed"], INVALID, "the event is not a JSON object but an array"),
    ("track without event", {"type": "track", "user_id": "u"}, INVALID, "event: a track call needs a non-empty event name"),
    ("unknown event", track("Coupon Applied", user_id="u"), UNMAPPED, "event 'Coupon Applied' is not in the 'default' preset"),
    ("identify call", {"type": "identify", "user_id": "u"}, UNMAPPED, "identify calls are not mapped"),
]


@pytest.mark.parametrize("name, record, kind, reason", REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_rejections(name, record, kind, reason):
    rejection = MAPPER.map(record, T)
    assert isinstance(rejection, Rejection)
    assert (rejection.kind, rejection.reason) == (kind, reason)
    assert rejection.record == record or rejection.record is record


def test_required_property_missing():
    mapper = Mapper(DEFAULT.with_overrides(events=[EventRule("Signed Up", "sign_up", required_properties=("plan",))]))
    rejection = mapper.map(track("Signed Up", user_id="u", properties={}), T)
    assert (rejection.kind, rejection.reason) == (INVALID, "properties: 'plan' is a required property")


def test_integer_beyond_64_bits_is_a_rejection_when_encoding():
    result = MAPPER.map_encoded(track("Signed Up", user_id="u", properties={"big": 2**70}), T)
    assert isinstance(result, Rejection) and "cannot be encoded as JSON" in result.reason
    assert MAPPER.map_encoded(track("Signed Up", user_id="u"), T).startswith(b'{"kind":"custom","key":"sign_up"')


# -- schemas ------------------------------------------------------------------------------------------------


def test_every_generated_schema_is_valid_draft_2020_12():
    generated = schemas(DEFAULT)
    assert set(generated) == {"envelope", *DEFAULT.events}
    for schema in generated.values():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_preset_file_errors_name_the_field():
    with pytest.raises(PresetError, match=r"p\.json: events\.Order Completed: 'key' must be a non-empty string"):
        preset_from_dict({"events": {"Order Completed": {"key": ""}}}, "p.json")
    with pytest.raises(PresetError, match="metric_value_required needs metric_value"):
        preset_from_dict({"events": {"X": {"key": "x", "metric_value_required": True}}}, "p.json")
    with pytest.raises(PresetError, match="not 'kind' or 'multi'"):
        preset_from_dict({"events": {"X": {"key": "x"}}, "contexts": [{"kind": "multi", "key": "user_id"}]}, "p.json")
    with pytest.raises(PresetError, match="neither a built-in preset"):
        load_preset("no-such-preset.json")


# -- properties ---------------------------------------------------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
signal_events = st.fixed_dictionaries(
    {"type": st.sampled_from(["track", "page", "identify", "screen"])},
    optional={
        "event": st.sampled_from([*DEFAULT.events, "Other", ""]) | st.text(max_size=8),
        "user_id": st.text(max_size=6) | st.integers(),
        "anonymous_id": st.text(max_size=6),
        "userId": st.text(max_size=6),
        "timestamp": st.sampled_from(["2026-11-24T10:00:00Z", "2026-11-24T10:00:00.5+02:00", "nope", "2026-13-01T00:00:00Z"]) | st.text(max_size=5),
        "properties": st.dictionaries(st.sampled_from(["value", "revenue", "order_id", "x"]) | st.text(max_size=4), json_values, max_size=4) | json_values,
    },
)


@settings(max_examples=400, deadline=None)
@given(signal_events, st.integers(0, 2**62))
def test_mapper_returns_an_ld_event_or_a_rejection_never_raises(record, time_ns):
    result = MAPPER.map(record, time_ns)
    if isinstance(result, Rejection):
        assert result.kind in (INVALID, UNMAPPED) and result.reason
    else:
        LD_VALIDATOR.validate(result)


@settings(max_examples=300, deadline=None)
@given(signal_events)
def test_what_the_envelope_and_event_schema_accept_maps_to_a_valid_ld_event(record):
    name = "page" if record.get("type") == "page" else record.get("event")
    schema = schemas(DEFAULT).get(name)
    checker = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER) if schema else None
    if checker is None or not checker.is_valid(record):
        return
    event = MAPPER.map(record, 0)
    assert not isinstance(event, Rejection), event
    LD_VALIDATOR.validate(event)
