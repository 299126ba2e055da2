"""The whole config: ``<system>``, ``<source>`` and ``<match>`` checked against the plugins'
declarations. Pure: the catalogue of plugin declarations comes in as an argument.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fluent_ld.config.errors import ConfigError, ConfigErrors, Where
from fluent_ld.config.params import REQUIRED, Conf, Enum, Integer, Param, Section, String, validate_section
from fluent_ld.config.parser import Element
from fluent_ld.pipeline.router import MatchPattern, PatternError

__all__ = ["LOG_LEVELS", "NodeConfig", "PluginConf", "PluginSpec", "SYSTEM", "validate_root"]

LOG_LEVELS = ("trace", "debug", "info", "warn", "error", "fatal")

SYSTEM = Section(
    "system",
    "Settings of the whole node.",
    params=(
        Param("log_level", Enum(*LOG_LEVELS), "info", "The lowest level of log lines the node writes."),
        Param("log_format", Enum("text", "json"), "text", "Log lines as readable text, or one JSON object per line."),
        Param("workers", Integer(1, 64), 1, "Worker processes; they share the forward port (SO_REUSEPORT) and each keeps its own stores."),
        Param(
            "pool_size",
            Integer(0, 256),
            None,
            "Processes per worker that decode, validate, map and encode records off the event loop (default: the cores available divided by workers; 0: all on the event loop).",
        ),
    ),
)

# Parameters every plugin takes, written with '@' as in Fluentd.
COMMON_PARAMS = (
    Param("@type", String(), REQUIRED, "The plugin type."),
    Param("@id", String(), None, "A unique name for this plugin, used in logs and metrics."),
    Param("@log_level", Enum(*LOG_LEVELS), None, "The log level of this plugin (default: the node's)."),
)

KINDS = {"source": "source", "match": "output"}


@dataclass(frozen=True)
class PluginSpec:
    """What checking a config needs to know of one plugin type."""

    kind: str  # "source" or "output"
    type_name: str
    summary: str
    section: Section
    check: Callable[[Conf], list[ConfigError]] = field(default=lambda conf: [])
    served_once: bool = False  # a source only worker 0 runs (see plugin.Source.served_once)


@dataclass(frozen=True)
class PluginConf:
    """One ``<source>`` or ``<match>`` after checking."""

    kind: str
    type_name: str
    id: str
    conf: Conf
    pattern: MatchPattern | None = None

    @property
    def where(self) -> Where:
        return self.conf.where

    @property
    def label(self) -> str:
        head = "<source>" if self.pattern is None else f"<match {self.pattern.text}>"
        return f"{head} @type {self.type_name}"


@dataclass(frozen=True)
class NodeConfig:
    system: Conf
    sources: list[PluginConf]
    matches: list[PluginConf]

    def summary(self) -> str:
        def counted(items: list[PluginConf], word: str) -> str:
            types = ", ".join(p.type_name for p in items)
            plural = "" if len(items) == 1 else ("es" if word.endswith("ch") else "s")
            return f"{len(items)} {word}{plural}" + (f" ({types})" if items else "")

        return f"{counted(self.sources, 'source')}, {counted(self.matches, 'match')}"

    def dump(self) -> str:
        """The config as checked, in config syntax, with every secret masked."""
        lines: list[str] = []
        if any(self.system.is_given(name) for name in ("log_level", "log_format", "workers")):
            lines += self.system.dump()
        for p in (*self.sources, *self.matches):
            lines += p.conf.dump(arg=p.pattern.text if p.pattern else None)
        return "\n".join(lines) + "\n"


def validate_root(root: Element, catalogue: Mapping[str, Mapping[str, PluginSpec]]) -> NodeConfig:
    """Check a parsed config; raise :class:`ConfigErrors` listing every problem found."""
    errors: list[ConfigError] = []
    for key, value in root.params:
        errors.append(
            ConfigError(
                value.where,
                f"parameter '{key}' is outside any section; parameters go inside <system>, <source> or <match>",
            )
        )

    systems = [e for e in root.elements if e.name == "system"]
    for extra in systems[1:]:
        errors.append(ConfigError(extra.where, f"<system> may appear only once (first at line {systems[0].where.line})"))
    if systems:
        system = validate_section(systems[0], SYSTEM, "<system>", errors)
    else:
        system = validate_section(Element("system", "", root.where), SYSTEM, "<system>", errors)

    sources: list[PluginConf] = []
    matches: list[PluginConf] = []
    for element in root.elements:
        if element.name == "system":
            continue
        if element.name not in KINDS:
            errors.append(
                ConfigError(
                    element.where,
                    f"section <{element.name}> is not supported at the top level; use <system>, <source> or <match>",
                )
            )
            continue
        plugin = _validate_plugin(element, catalogue.get(KINDS[element.name], {}), errors)
        if plugin is not None:
            (sources if element.name == "source" else matches).append(plugin)

    plugins = _assign_ids([*sources, *matches], errors)
    workers = getattr(system, "workers", 1)  # missing when the value itself was refused
    if workers > 1:
        _check_shared(sources, catalogue.get("source", {}), workers, errors)
    if errors:
        raise ConfigErrors(errors)
    return NodeConfig(
        system,
        [p for p in plugins if p.kind == "source"],
        [p for p in plugins if p.kind == "output"],
    )


def _validate_plugin(element: Element, known: Mapping[str, PluginSpec], errors: list[ConfigError]) -> PluginConf | None:
    kind = KINDS[element.name]
    pattern = None
    head = f"<{element.name}" + (f" {element.arg}" if element.arg else "") + ">"
    if element.name == "match":
        try:
            pattern = MatchPattern(element.arg)
        except PatternError as exc:
            errors.append(ConfigError(element.where, f"{head}: {exc}"))
        except RecursionError:  # {...} or regex groups nested past what re.compile can take
            errors.append(ConfigError(element.where, f"{head}: the pattern is nested too deeply"))
    elif element.arg:
        errors.append(ConfigError(element.where, f"<source> takes no argument, got {element.arg!r}"))

    type_value = element.param("@type")
    if type_value is None or not type_value.text:
        errors.append(ConfigError(element.where, f"{head}: missing required parameter '@type'"))
        return None
    type_name = type_value.text
    spec = known.get(type_name)
    if spec is None:
        close = difflib.get_close_matches(type_name, list(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        errors.append(
            ConfigError(
                type_value.where,
                f"{head}: unknown {kind} type '{type_name}'{hint}; known: {', '.join(sorted(known))}",
            )
        )
        return None
    label = f"{head} @type {type_name}"
    section = spec.section.with_params(*COMMON_PARAMS)
    section = Section(element.name, section.desc, section.params, section.sections, section.arg)
    if element.name == "match":
        # The match's patterns are its argument; already checked above.
        element = Element(element.name, "", element.where, element.params, element.elements)
    n = len(errors)
    conf = validate_section(element, section, label, errors)
    if len(errors) == n:
        errors.extend(spec.check(conf))  # cross-parameter rules, once each value is sound
    return PluginConf(kind, type_name, conf["@id"] or "", conf, pattern)


def _assign_ids(plugins: list[PluginConf], errors: list[ConfigError]) -> list[PluginConf]:
    """Give each plugin without ``@id`` a stable one (``type.N`` in config order) and refuse
    duplicates: ids name metrics and, later, on-disk stores."""
    seen: dict[str, PluginConf] = {}
    counters: dict[str, int] = {}
    explicit = {p.id for p in plugins if p.id}
    for i, p in enumerate(plugins):
        plugin_id = p.id
        if not plugin_id:
            n = counters.get(p.type_name, 0)
            while f"{p.type_name}.{n}" in explicit:
                n += 1
            plugin_id = f"{p.type_name}.{n}"
            counters[p.type_name] = n + 1
            plugins[i] = p = PluginConf(p.kind, p.type_name, plugin_id, p.conf, p.pattern)
        if plugin_id in seen:
            errors.append(
                ConfigError(
                    p.conf.where_of("@id"),
                    f"@id '{plugin_id}' is used twice (first at line {seen[plugin_id].where.line})",
                )
            )
        seen[plugin_id] = p
    return plugins


def _check_shared(sources: list[PluginConf], specs: Mapping[str, PluginSpec], workers: int, errors: list[ConfigError]) -> None:
    """Sources every worker runs share one listening port; it must be known before they start."""
    for p in sources:
        spec = specs.get(p.type_name)
        if spec is None or spec.served_once:
            continue
        names = {param.name for param in spec.section.params}
        if "path" in names and p.conf.is_given("path"):
            errors.append(
                ConfigError(p.conf.where_of("path"), f"{p.label}: a Unix socket cannot be shared by {workers} workers; listen on a TCP port, or run one worker")
            )
        elif "port" in names and getattr(p.conf, "port", None) == 0:  # missing when the value was refused
            errors.append(ConfigError(p.conf.where_of("port"), f"{p.label}: port 0 (any free port) cannot be shared by {workers} workers; set a port"))
