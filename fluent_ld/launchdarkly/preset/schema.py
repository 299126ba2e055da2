"""JSON Schemas (draft 2020-12) generated from a preset: what producers can validate upstream, and
what fluent-ld validates every record against before mapping it.

- The **envelope** schema: any Signal event this preset can take: an object with a non-empty identity
  for at least one context kind, a ``date-time`` timestamp when there is one, ``properties`` an object,
  and an ``event`` name on track calls.
- One schema **per mapped event**: the envelope, that event's name, its metric property a number (and
  present, if required), and its required properties.
"""

from __future__ import annotations

from typing import Any

from fluent_ld.launchdarkly.preset import PAGE, EventRule, Preset

__all__ = ["DRAFT", "envelope_schema", "event_schema", "schemas"]

DRAFT = "https://json-schema.org/draft/2020-12/schema"
_ID_BASE = "urn:fluent-ld:schema:"


def _at_path(path: str, leaf: dict[str, Any], required: bool) -> dict[str, Any]:
    """A schema fragment that puts ``leaf`` at a dotted ``path`` of an object (requiring each step
    when ``required``)."""
    schema: dict[str, Any] = leaf
    for part in reversed(path.split(".")):
        node: dict[str, Any] = {"type": "object", "properties": {part: schema}}
        if required:
            node["required"] = [part]
        schema = node
    del schema["type"]  # the outermost object is the one the fragment is applied to
    return schema


def _identity(preset: Preset) -> list[dict[str, Any]]:
    non_empty = {"type": "string", "minLength": 1}
    return [_at_path(path, dict(non_empty), required=True) for context in preset.contexts for path in context.key]


def _identity_types(preset: Preset) -> list[dict[str, Any]]:
    # A present identity field must be a string (an empty one is allowed, then the next is tried).
    return [_at_path(path, {"type": "string"}, required=False) for c in preset.contexts for path in c.key]


def envelope_schema(preset: Preset) -> dict[str, Any]:
    return {
        "$schema": DRAFT,
        "$id": f"{_ID_BASE}{preset.name}:envelope",
        "title": f"Signal event accepted by the {preset.name!r} preset",
        "type": "object",
        "properties": {
            "type": {"type": "string"},
            "event": {"type": "string", "minLength": 1},
            "timestamp": {"type": "string", "format": "date-time"},
            "properties": {"type": "object"},
        },
        "allOf": [
            {
                "description": "An identity: the first non-empty field of a context kind's key list.",
                "anyOf": _identity(preset),
            },
            *_identity_types(preset),
            {
                "description": "A track call names its event.",
                "if": {"properties": {"type": {"const": "track"}}, "required": ["type"]},
                "then": {"required": ["event"]},
            },
        ],
    }


def event_schema(preset: Preset, rule: EventRule) -> dict[str, Any]:
    envelope = envelope_schema(preset)
    if rule.name == PAGE:
        selector: dict[str, Any] = {"properties": {"type": {"const": "page"}}, "required": ["type"]}
    else:
        selector = {"properties": {"event": {"const": rule.name}}, "required": ["event"]}
    checks: list[dict[str, Any]] = [selector]
    if rule.metric_value is not None:
        number = _at_path(rule.metric_value, {"type": "number"}, required=rule.metric_value_required)
        checks.append({"properties": {"properties": number}, **({"required": ["properties"]} if rule.metric_value_required else {})})
    for path in rule.required_properties:
        checks.append({"properties": {"properties": _at_path(path, {}, required=True)}, "required": ["properties"]})
    return {
        **envelope,
        "$id": f"{_ID_BASE}{preset.name}:event:{rule.key}",
        "title": f"Signal event {rule.name!r} -> LaunchDarkly event {rule.key!r}",
        "allOf": envelope["allOf"] + checks,
    }


def schemas(preset: Preset) -> dict[str, dict[str, Any]]:
    """Every schema of a preset: ``envelope`` and one per Signal event name."""
    out = {"envelope": envelope_schema(preset)}
    for name, rule in preset.events.items():
        out[name] = event_schema(preset, rule)
    return out
