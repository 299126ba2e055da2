"""The plugin types known by ``@type``."""

from __future__ import annotations

from collections.abc import Mapping

from fluent_ld.config.schema import PluginSpec
from fluent_ld.plugin import Output, Plugin, Source

__all__ = ["catalogue", "plugin_class", "register"]

_TYPES: dict[str, dict[str, type[Plugin]]] = {"source": {}, "output": {}}


def register(cls: type[Plugin]) -> type[Plugin]:
    """Class decorator: make a plugin type available to configs under its ``type_name``."""
    kinds = _TYPES[cls.kind]
    if cls.type_name in kinds and kinds[cls.type_name] is not cls:
        raise ValueError(f"{cls.kind} type {cls.type_name!r} is registered twice")
    kinds[cls.type_name] = cls
    return cls


def _load_builtin() -> None:
    # Importing the packages registers every built-in plugin.
    import fluent_ld.outputs  # noqa: F401
    import fluent_ld.sources  # noqa: F401


def plugin_class(kind: str, type_name: str) -> type[Source] | type[Output]:
    _load_builtin()
    return _TYPES[kind][type_name]  # type: ignore[return-value]


def catalogue() -> Mapping[str, Mapping[str, PluginSpec]]:
    """Every plugin's declaration, by kind and type name, in the form config checking takes."""
    _load_builtin()
    return {
        kind: {
            name: PluginSpec(kind, name, cls.summary, cls.section, cls.check, getattr(cls, "served_once", False))
            for name, cls in sorted(types.items())
        }
        for kind, types in _TYPES.items()
    }
