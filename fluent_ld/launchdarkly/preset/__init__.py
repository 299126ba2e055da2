"""Presets: which Signal events become which LaunchDarkly custom events, as data.

A preset names, per Signal event, the LaunchDarkly event key, where the metric value comes from (a
property path under ``properties``), whether it is required, and which properties must be present;
and, per context kind, the ordered field paths whose first non-empty value is the context key.
The Default preset ships as ``default.json`` beside this file; a config may name another preset
file and override any of it (the "blueprint editor").

Pure: presets come in as decoded JSON, errors name the field they are about.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "ContextRule",
    "EventRule",
    "PAGE",
    "Preset",
    "PresetError",
    "derive_key",
    "preset_from_dict",
]

PAGE = "page"  # the preset's name for page calls (``"type": "page"``), which have no event name
UNMAPPED_POLICIES = ("skip", "derive")
# LaunchDarkly context kinds: letters, digits, '.', '_', '-'; "kind" and "multi" are reserved.
_KIND = re.compile(r"[-a-zA-Z0-9._]+")
_RESERVED_KINDS = ("kind", "multi")
_PATH = re.compile(r"[^.\s]+(?:\.[^.\s]+)*")


class PresetError(ValueError):
    """A preset (or an override) that cannot be used; the message names the field (and ``where``,
    when it comes from a config, the line)."""

    where: Any = None


@dataclass(frozen=True)
class EventRule:
    """How one Signal event maps. ``metric_value`` is a dotted path under ``properties``."""

    name: str
    key: str
    metric_value: str | None = None
    metric_value_required: bool = False
    required_properties: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContextRule:
    """One context kind and the field paths (from the event's root) tried in order for its key."""

    kind: str
    key: tuple[str, ...]


@dataclass(frozen=True)
class Preset:
    name: str
    events: Mapping[str, EventRule]
    contexts: tuple[ContextRule, ...]
    unmapped_events: str = "skip"
    description: str = ""

    def rule_for(self, event_name: str) -> EventRule | None:
        """The rule of a Signal event, derived from its name when unmapped events are derived."""
        rule = self.events.get(event_name)
        if rule is None and self.unmapped_events == "derive":
            return EventRule(event_name, derive_key(event_name))
        return rule

    def with_overrides(
        self,
        events: Sequence[EventRule] = (),
        contexts: Sequence[ContextRule] = (),
        unmapped_events: str | None = None,
    ) -> Preset:
        """This preset with events replaced or added by name, contexts replaced when any are given,
        and the unmapped policy changed when given."""
        merged = dict(self.events)
        for rule in events:
            check_event_rule(rule, f"event {rule.name!r}")
            merged[rule.name] = rule
        new_contexts = tuple(contexts) or self.contexts
        for context in new_contexts:
            check_context_rule(context, f"context {context.kind!r}")
        if len({c.kind for c in new_contexts}) != len(new_contexts):
            raise PresetError("each context kind may appear only once")
        policy = unmapped_events or self.unmapped_events
        if policy not in UNMAPPED_POLICIES:
            raise PresetError(f"unmapped_events must be one of {', '.join(UNMAPPED_POLICIES)}")
        return replace(self, events=merged, contexts=new_contexts, unmapped_events=policy)


def derive_key(name: str) -> str:
    """A LaunchDarkly key from a Signal event name: ``Order Completed`` -> ``order_completed``,
    ``checkoutStarted`` -> ``checkout_started``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.strip())
    return re.sub(r"[^a-z0-9]+", "_", spaced.lower()).strip("_")


def check_path(path: Any, what: str) -> str:
    if not isinstance(path, str) or not _PATH.fullmatch(path):
        raise PresetError(f"{what}: expected a field path such as 'revenue' or 'context.device.id', got {path!r}")
    return path


def check_event_rule(rule: EventRule, what: str) -> None:
    if not rule.name:
        raise PresetError(f"{what}: the Signal event name is empty")
    if not isinstance(rule.key, str) or not rule.key.strip():
        raise PresetError(f"{what}: 'key' must be a non-empty string")
    if rule.metric_value is not None:
        check_path(rule.metric_value, f"{what}: metric_value")
    elif rule.metric_value_required:
        raise PresetError(f"{what}: metric_value_required needs metric_value")
    for p in rule.required_properties:
        check_path(p, f"{what}: required_properties")


def check_context_rule(rule: ContextRule, what: str) -> None:
    if not _KIND.fullmatch(rule.kind) or rule.kind in _RESERVED_KINDS:
        raise PresetError(f"{what}: a context kind is letters, digits, '.', '_' or '-', and not 'kind' or 'multi'")
    if not rule.key:
        raise PresetError(f"{what}: 'key' needs at least one field path")
    for p in rule.key:
        check_path(p, f"{what}: key")


def preset_from_dict(data: Any, source: str) -> Preset:
    """A preset from its JSON form (see ``default.json``); ``source`` names it in errors."""
    if not isinstance(data, dict):
        raise PresetError(f"{source}: a preset is a JSON object")
    unknown = set(data) - {"name", "description", "events", "contexts", "unmapped_events"}
    if unknown:
        raise PresetError(f"{source}: unknown field(s) {', '.join(sorted(unknown))}")
    events_data = data.get("events")
    if not isinstance(events_data, dict) or not events_data:
        raise PresetError(f"{source}: 'events' must be a non-empty object of Signal event name -> mapping")
    events = {}
    for name, spec in events_data.items():
        what = f"{source}: events.{name}"
        if not isinstance(spec, dict):
            raise PresetError(f"{what}: expected an object with 'key'")
        extra = set(spec) - {"key", "metric_value", "metric_value_required", "required_properties"}
        if extra:
            raise PresetError(f"{what}: unknown field(s) {', '.join(sorted(extra))}")
        required = spec.get("required_properties", [])
        if not isinstance(required, list):
            raise PresetError(f"{what}: required_properties must be an array")
        rule = EventRule(
            name,
            spec.get("key", ""),
            spec.get("metric_value"),
            bool(spec.get("metric_value_required", False)),
            tuple(required),
        )
        check_event_rule(rule, what)
        events[name] = rule
    contexts_data = data.get("contexts", [{"kind": "user", "key": ["user_id", "userId", "anonymous_id", "anonymousId"]}])
    if not isinstance(contexts_data, list) or not contexts_data:
        raise PresetError(f"{source}: 'contexts' must be a non-empty array")
    contexts = []
    for i, spec in enumerate(contexts_data):
        what = f"{source}: contexts[{i}]"
        if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
            raise PresetError(f"{what}: expected an object with 'kind' and 'key'")
        keys = spec.get("key")
        keys = [keys] if isinstance(keys, str) else keys
        if not isinstance(keys, list):
            raise PresetError(f"{what}: 'key' must be a field path or an array of them")
        context = ContextRule(spec["kind"], tuple(keys))
        check_context_rule(context, what)
        contexts.append(context)
    preset = Preset(
        name=str(data.get("name", source)),
        events=events,
        contexts=tuple(contexts),
        description=str(data.get("description", "")),
    )
    return preset.with_overrides(unmapped_events=data.get("unmapped_events", "skip"))
