"""Signal event -> LaunchDarkly custom event (the mapping of LaunchDarkly's metric import guide), with validation.

Every record is validated against its event's JSON Schema (generated from the preset, compiled once
with jsonschema-rs, formats checked) before it is mapped; a record LaunchDarkly would silently drop
becomes a :class:`Rejection` with the reason instead. The reason is worked out (with jsonschema,
which explains errors) only for rejected records, so the hot path pays for one ``is_valid``.

Pure: the event time comes in as an argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import jsonschema_rs
import orjson

from fluent_ld.launchdarkly.preset import PAGE, Preset
from fluent_ld.launchdarkly.preset.schema import schemas

__all__ = ["INVALID", "UNMAPPED", "Mapper", "Rejection"]

INVALID = "invalid"  # LaunchDarkly would drop it: dead-letter it with the reason
UNMAPPED = "unmapped"  # the preset does not map it: count it and skip it

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_PLAIN = (str, int, float, bool)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record that does not become a LaunchDarkly event, and why."""

    kind: str
    reason: str
    record: Any
    event: str | None = None


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if type(obj) is not dict:
            return None
        obj = obj.get(part)
    return obj


class Mapper:
    """Maps records with one preset. ``record_key``: the record carries the event as a JSON
    string (or an object) under this key, as Fluent Bit's ``tail`` without a parser gives
    ``{"log": "..."}``."""

    def __init__(self, preset: Preset, record_key: str | None = None) -> None:
        self.preset = preset
        self.record_key = record_key
        self.last_created = 0  # the creationDate of the last event mapped (the encoder keeps the oldest)
        self.schemas = schemas(preset)
        self._validators = {name: jsonschema_rs.validator_for(schema, validate_formats=True) for name, schema in self.schemas.items()}
        # Field paths as tuples; a one-segment path is kept as a plain key (a dict lookup, no loop).
        self._contexts = [(c.kind, [p if "." not in p else tuple(p.split(".")) for p in c.key]) for c in preset.contexts]
        # Per mapped event, what the hot path needs in one lookup: key, validator, metric path.
        self._events = {name: (rule, self._validators[name], _path(rule.metric_value)) for name, rule in preset.events.items()}

    # -- the hot path --------------------------------------------------------------------------

    def map(self, record: Any, time_ns: int) -> dict[str, Any] | Rejection:
        """The LaunchDarkly custom event for ``record``, or a :class:`Rejection`."""
        if self.record_key is not None:
            record = self._unwrap(record)
            if type(record) is Rejection:
                return record
        if type(record) is not dict:
            return Rejection(INVALID, f"the event is not a JSON object but {_kind(record)}", record)
        kind = record.get("type")
        if kind == "page":
            name = PAGE
        else:
            name = record.get("event")  # type: ignore[assignment]  # checked next
            if type(name) is not str or not name:
                if kind == "track" or (kind is None and "event" in record):
                    return Rejection(INVALID, "event: a track call needs a non-empty event name", record)
                return Rejection(UNMAPPED, f"{kind or 'untyped'} calls are not mapped", record)
        known = self._events.get(name)
        if known is None:
            rule = self.preset.rule_for(name)  # derived, when unmapped events are derived
            if rule is None:
                return Rejection(UNMAPPED, f"event {name!r} is not in the {self.preset.name!r} preset", record, name)
            known = (rule, self._validators["envelope"], None)
        rule, validator, metric_path = known
        if not validator.is_valid(record):
            return Rejection(INVALID, self.explain(record, name), record, name)

        props = record.get("properties")
        if type(props) is not dict:
            props = {}
        stamp = record.get("timestamp")
        created = time_ns // 1_000_000 if stamp is None else _creation_ms(stamp)
        if created is None:
            return Rejection(INVALID, "timestamp: not a date-time this node can read", record, name)
        event: dict[str, Any] = {"kind": "custom", "key": rule.key, "creationDate": created}
        self.last_created = created
        skip = None
        if metric_path is not None:
            value = props.get(metric_path) if type(metric_path) is str else _get(props, metric_path)  # type: ignore[arg-type]  # type() is faster than isinstance here, and mypy does not narrow it
            if value is not None:
                if not math.isfinite(value):
                    return Rejection(INVALID, f"properties.{rule.metric_value}: not a finite number", record, name)
                event["metricValue"] = value
            if type(metric_path) is str:
                skip = metric_path
        context_keys = {}
        for kind_name, paths in self._contexts:
            for path in paths:
                value = record.get(path) if type(path) is str else _get(record, path)  # type: ignore[arg-type]  # as above
                if type(value) is str and value:
                    context_keys[kind_name] = value
                    break
        event["contextKeys"] = context_keys
        event["data"] = {k: v for k, v in props.items() if k != skip and type(v) in _PLAIN and (type(v) is not float or math.isfinite(v))}
        return event

    def map_encoded(self, record: Any, time_ns: int) -> bytes | Rejection:
        """:meth:`map`, then the event as compact JSON (what a batch body is made of)."""
        event = self.map(record, time_ns)
        if type(event) is Rejection:
            return event
        try:
            return orjson.dumps(event)
        except (TypeError, orjson.JSONEncodeError) as exc:  # e.g. an integer beyond 64 bits
            return Rejection(INVALID, f"cannot be encoded as JSON: {exc}", record, event["key"])  # type: ignore[index]  # a dict here

    @staticmethod
    def creation_ms(event: bytes) -> int | None:
        """The creationDate of an event this mapper encoded (:meth:`map_encoded`), None if it has none."""
        try:
            created = orjson.loads(event).get("creationDate")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return created if type(created) is int else None

    def _unwrap(self, record: Any) -> Any:
        if type(record) is not dict or self.record_key not in record:
            return Rejection(INVALID, f"the record has no {self.record_key!r} field", record)
        inner = record[self.record_key]
        if type(inner) is dict:
            return inner
        if type(inner) in (str, bytes):
            try:
                return orjson.loads(inner)
            except orjson.JSONDecodeError as exc:
                return Rejection(INVALID, f"{self.record_key}: not JSON ({exc})", record)
        return Rejection(INVALID, f"{self.record_key}: expected a JSON string, got {_kind(inner)}", record)

    # -- only for rejected records ---------------------------------------------------------------

    def explain(self, record: Any, name: str) -> str:
        """Why ``record`` fails its schema: the JSON path of the first problem and what it is."""
        schema = self.schemas.get(name) or self.schemas["envelope"]
        validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
        errors = list(validator.iter_errors(record))
        identity = [e for e in errors if e.validator == "anyOf" and str(e.schema.get("description", "")).startswith("An identity")]
        # A precise error (a field of the wrong type) explains more than "no identity" does.
        best = jsonschema.exceptions.best_match(e for e in errors if e not in identity)
        if best is None and identity:
            fields = ", ".join(p for c in self.preset.contexts for p in c.key)
            return f"no identity: none of {fields} is a non-empty string"
        if best is None:
            # What jsonschema-rs refuses and jsonschema does not: numbers that are not JSON.
            where = _non_finite(record)
            return f"{where}: not a finite number" if where else "does not match its schema"
        where = ".".join(str(p) for p in best.absolute_path) or "(the event)"
        return f"{where}: {best.message}"


def _path(path: str | None) -> str | tuple[str, ...] | None:
    if path is None:
        return None
    return path if "." not in path else tuple(path.split("."))


def _creation_ms(stamp: Any) -> int | None:
    """An RFC 3339 timestamp (valid per the schema) in Unix ms; None if it cannot be read
    (fromisoformat reads all of RFC 3339 but leap seconds, ":60")."""
    if type(stamp) is not str:
        return None
    try:
        when = datetime.fromisoformat(stamp.upper())
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return (when - _EPOCH) // _MS


def _non_finite(value: Any, path: str = "") -> str | None:
    """The dotted path of the first NaN or infinity in a decoded record."""
    if type(value) is float and not math.isfinite(value):
        return path or "(the event)"
    items = value.items() if type(value) is dict else enumerate(value) if type(value) is list else ()
    for key, item in items:
        found = _non_finite(item, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", type(None): "null"}.get(type(value), type(value).__name__)
