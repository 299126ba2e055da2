"""The plugin types known by ``@type``: the built-in table below, plus any registered at run time
(:func:`register`: tests' own outputs, an embedding program's plugins)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from fluent_ld.config.schema import PluginSpec
from fluent_ld.plugin import Output, Plugin, Source

__all__ = ["BUILTIN", "catalogue", "output_class", "plugin_class", "register", "source_class"]

# Every built-in plugin: kind -> @type -> "module:class". A module is imported when a config, the
# reference docs or check-config first needs its plugin, never as a side effect of another import.
BUILTIN: Mapping[str, Mapping[str, str]] = {
    "source": {
        "forward": "fluent_ld.sources.forward:ForwardSource",
        "launchdarkly_webhook": "fluent_ld.sources.webhook:LaunchDarklyWebhookSource",
        "monitor_agent": "fluent_ld.sources.monitor:MonitorAgentSource",
        "sample": "fluent_ld.sources.sample:SampleSource",
    },
    "output": {
        "forward": "fluent_ld.outputs.forward:ForwardOutput",
        "launchdarkly": "fluent_ld.launchdarkly.output:LaunchDarklyOutput",
        "null": "fluent_ld.outputs.null:NullOutput",
        "stdout": "fluent_ld.outputs.stdout:StdoutOutput",
    },
}

_REGISTERED: dict[str, dict[str, type[Plugin]]] = {"source": {}, "output": {}}


def register(cls: type[Plugin]) -> type[Plugin]:
    """Class decorator: make a plugin type that is not built in available under its ``type_name``."""
    if cls.type_name in BUILTIN[cls.kind]:
        raise ValueError(f"{cls.kind} type {cls.type_name!r} is built in")
    kinds = _REGISTERED[cls.kind]
    if cls.type_name in kinds and kinds[cls.type_name] is not cls:
        raise ValueError(f"{cls.kind} type {cls.type_name!r} is registered twice")
    kinds[cls.type_name] = cls
    return cls


def _load(kind: str, type_name: str) -> type[Plugin]:
    module, name = BUILTIN[kind][type_name].split(":")
    cls = getattr(importlib.import_module(module), name)
    if cls.kind != kind or cls.type_name != type_name:
        raise TypeError(f"{BUILTIN[kind][type_name]} is a {cls.kind} named {cls.type_name!r}, not a {kind} named {type_name!r}")
    return cls


def _types(kind: str) -> dict[str, type[Plugin]]:
    return {**{name: _load(kind, name) for name in BUILTIN[kind]}, **_REGISTERED[kind]}


def plugin_class(kind: str, type_name: str) -> type[Plugin]:
    if type_name in BUILTIN[kind]:
        return _load(kind, type_name)
    return _REGISTERED[kind][type_name]


def source_class(type_name: str) -> type[Source]:
    cls = plugin_class("source", type_name)
    assert issubclass(cls, Source)
    return cls


def output_class(type_name: str) -> type[Output]:
    cls = plugin_class("output", type_name)
    assert issubclass(cls, Output)
    return cls


def catalogue() -> Mapping[str, Mapping[str, PluginSpec]]:
    """Every plugin's declaration, by kind and type name, in the form config checking takes."""
    return {
        kind: {
            name: PluginSpec(kind, name, cls.summary, cls.section, cls.check, getattr(cls, "served_once", False)) for name, cls in sorted(_types(kind).items())
        }
        for kind in BUILTIN
    }
