"""The mapping parameters of ``<match> @type launchdarkly`` (the "blueprint editor"): which preset,
per-event overrides, context kinds, what to do with unmapped events, and where the event sits in
the record. Declared once here; the LaunchDarkly output and the ``map`` and ``schema`` commands
build their :class:`~fluent_ld.launchdarkly.mapping.Mapper` from them."""

from __future__ import annotations

import os

from fluent_ld.config.errors import ConfigError, ConfigErrors, Where
from fluent_ld.config.params import Arg, Array, Bool, Conf, Enum, Param, Section, String, validate_section
from fluent_ld.config.parser import Element, Value
from fluent_ld.launchdarkly.mapping import Mapper
from fluent_ld.launchdarkly.preset import ContextRule, EventRule, Preset, PresetError
from fluent_ld.launchdarkly.preset.loader import load_preset

__all__ = [
    "MAPPING_PARAMS",
    "MAPPING_SECTIONS",
    "build_mapper",
    "build_preset",
    "check_mapping",
    "mapping_conf",
]

EVENT = Section(
    "event",
    "Override or add the mapping of one Signal event (`page` for page calls); what is not given here comes from the preset.",
    params=(
        Param("key", String(), None, "The LaunchDarkly event key (must equal the metric's event key)."),
        Param("metric_value", String(), None, "The property (path under `properties`) that gives metricValue."),
        Param("metric_value_required", Bool(), None, "Reject the event when it has no metric value."),
        Param("required_properties", Array(spaces=True), None, "Properties the event must have."),
    ),
    arg=Arg("name", 'The Signal event name, e.g. "Order Completed".'),
    multi=True,
)

CONTEXT = Section(
    "context",
    "A context kind and where its key comes from; several sections send several kinds. Given any, they replace the preset's.",
    params=(
        Param("kind", String(), "user", "The LaunchDarkly context kind."),
        Param(
            "key",
            Array(spaces=True),
            ["user_id", "userId", "anonymous_id", "anonymousId"],
            "Field paths tried in order; the first non-empty string is the context key.",
        ),
    ),
    multi=True,
)

MAPPING_PARAMS = (
    Param("preset", String(), "default", "A built-in preset name, or a path to a preset JSON file."),
    Param(
        "unmapped_events",
        Enum("skip", "derive"),
        None,
        "Events the preset does not map: skip them, or send them with a snake_case key derived from their name (default: the preset's).",
    ),
    Param("record_key", String(), None, "The record carries the event under this key (e.g. `log` from Fluent Bit's tail)."),
    Param("parse", Enum("json"), "json", "How the `record_key` value is read when it is a string."),
)
MAPPING_SECTIONS = (EVENT, CONTEXT)


def build_preset(conf: Conf) -> Preset:
    """The preset named by ``conf``, with its overrides. Raises :class:`PresetError`."""
    base_dir = os.path.dirname(conf.where_of("preset").file) or "."
    preset = load_preset(conf.preset, base_dir)
    events = []
    for section in conf.event:
        base = preset.events.get(section.arg)
        key = section.key or (base.key if base else None)
        if key is None:
            error = PresetError(f'<event "{section.arg}"> is not in the preset, so it needs a key')
            error.where = section.where
            raise error

        def pick(name, default):
            value = section[name]  # noqa: B023  # called within this iteration
            return value if value is not None else default

        events.append(
            EventRule(
                section.arg,
                key,
                pick("metric_value", base.metric_value if base else None),
                pick("metric_value_required", base.metric_value_required if base else False),
                tuple(pick("required_properties", base.required_properties if base else ())),
            )
        )
    contexts = [ContextRule(c.kind, tuple(c.key)) for c in conf.context]
    return preset.with_overrides(events, contexts, conf.unmapped_events)


def build_mapper(conf: Conf) -> Mapper:
    return Mapper(build_preset(conf), conf.record_key)


def check_mapping(conf: Conf, label: str) -> list[ConfigError]:
    """Config-time check: the preset loads and the overrides make sense."""
    try:
        build_preset(conf)
    except PresetError as exc:
        return [ConfigError(getattr(exc, "where", None) or conf.where_of("preset"), f"{label}: {exc}")]
    return []


MAPPING = Section("match", "The mapping parameters of a LaunchDarkly output.", MAPPING_PARAMS, MAPPING_SECTIONS)


def mapping_conf(element: Element | None, label: str) -> Conf:
    """The mapping parameters of a ``<match>`` element (the rest of its parameters are left to the
    output that owns them), or the defaults when ``element`` is None. Raises :class:`ConfigErrors`."""
    if element is None:
        element = Element("match", "", Where("(defaults)", 0))
    names = {p.name for p in MAPPING_PARAMS}
    subset = Element(
        "match",
        "",
        element.where,
        [(k, v) for k, v in element.params if k in names],
        [e for e in element.elements if e.name in ("event", "context")],
    )
    errors: list[ConfigError] = []
    conf = validate_section(subset, MAPPING, label, errors)
    if not errors:
        errors.extend(check_mapping(conf, label))
    if errors:
        raise ConfigErrors(errors)
    return conf


def preset_element(preset: str) -> Element:
    """A ``<match>`` element that names only a preset (for ``--preset`` on the command line)."""
    where = Where("(command line)", 0)
    return Element("match", "", where, [("preset", Value(preset, where))])
