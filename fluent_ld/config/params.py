"""Typed, documented parameters: each declared once, with the declaration driving validation,
``check-config`` and the reference docs (as Fluentd's ``config_param`` + ``desc`` do).

Pure: an :class:`~fluent_ld.config.parser.Element` and a :class:`Section` declaration go in, a
:class:`Conf` (attribute access to typed values) and a list of errors come out.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fluent_ld.config.errors import ConfigError, Where
from fluent_ld.config.parser import Element, Value

__all__ = [
    "REQUIRED",
    "Arg",
    "Array",
    "Bool",
    "Conf",
    "Enum",
    "Float",
    "Hash",
    "Integer",
    "Param",
    "ParamType",
    "Secret",
    "Section",
    "Size",
    "String",
    "Time",
    "validate_section",
]

MASK = "xxxxxx"  # what Fluentd prints in place of a secret


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


class Secret:
    """A secret value. ``str()`` and ``repr()`` show a mask; :meth:`reveal` gives the value, so a
    secret only leaves this wrapper where the code asks for it by name."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# -- types ---------------------------------------------------------------------------------------


class ParamType:
    """Converts a written :class:`Value` to a Python value, raising ``ValueError`` with a sentence
    that can follow ``parameter 'x': ``."""

    name = "string"

    def convert(self, value: Value) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        """The type as the reference docs show it."""
        return self.name

    def render(self, value: Any) -> str:
        """A typed value written back in config syntax (for defaults in docs, and dumps)."""
        if value is None:
            return ""
        return str(value)


def _bounded(kind: str, n: float, lo: float | None, hi: float | None, render: Callable) -> None:
    if lo is not None and n < lo:
        raise ValueError(f"{kind} must be at least {render(lo)}")
    if hi is not None and n > hi:
        raise ValueError(f"{kind} must be at most {render(hi)}")


@dataclass(frozen=True)
class String(ParamType):
    name = "string"

    def convert(self, value: Value) -> str:
        return value.text


@dataclass(frozen=True)
class Integer(ParamType):
    min: int | None = None
    max: int | None = None
    name = "integer"

    def convert(self, value: Value) -> int:
        text = value.text.strip().replace("_", "")
        if not re.fullmatch(r"[+-]?\d+", text):
            raise ValueError(f"expected an integer, got {value.text!r}")
        n = int(text)
        _bounded("the value", n, self.min, self.max, str)
        return n

    def describe(self) -> str:
        return _range_doc("integer", self.min, self.max, str)


@dataclass(frozen=True)
class Float(ParamType):
    min: float | None = None
    max: float | None = None
    name = "float"

    def convert(self, value: Value) -> float:
        try:
            n = float(value.text)
        except ValueError:
            raise ValueError(f"expected a number, got {value.text!r}") from None
        if not math.isfinite(n):
            raise ValueError(f"expected a finite number, got {value.text!r}")
        _bounded("the value", n, self.min, self.max, _num)
        return n

    def describe(self) -> str:
        return _range_doc("float", self.min, self.max, _num)

    def render(self, value: Any) -> str:
        return "" if value is None else _num(value)


@dataclass(frozen=True)
class Bool(ParamType):
    name = "bool"

    def convert(self, value: Value) -> bool:
        text = value.text.strip().lower()
        if text in ("true", "yes", ""):  # a bare key is a flag set to true, as in Fluentd
            return True
        if text in ("false", "no"):
            return False
        raise ValueError(f"expected true or false, got {value.text!r}")

    def render(self, value: Any) -> str:
        return "" if value is None else ("true" if value else "false")


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class Size(ParamType):
    """Bytes, with Fluentd's 1024-based suffixes: ``512k``, ``8m``, ``1g``, ``1t``."""

    min: int | None = None
    max: int | None = None
    name = "size"

    def convert(self, value: Value) -> int:
        m = _SIZE.fullmatch(value.text.strip())
        if not m:
            raise ValueError(f"expected a size such as 512k, 8m or 1g, got {value.text!r}")
        n = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
        if not math.isfinite(n):  # hundreds of digits read as float infinity
            raise ValueError(f"expected a finite size, got {value.text!r}")
        n = int(n)
        _bounded("the size", n, self.min, self.max, render_size)
        return n

    def describe(self) -> str:
        return _range_doc("size", self.min, self.max, render_size)

    def render(self, value: Any) -> str:
        return "" if value is None else render_size(value)


_TIME = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?", re.IGNORECASE)
_TIME_UNITS = {"ms": 0.001, "s": 1, "": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Time(ParamType):
    """Seconds, with suffixes ``ms``, ``s``, ``m``, ``h``, ``d``; a bare number is seconds."""

    min: float | None = None
    max: float | None = None
    name = "time"

    def convert(self, value: Value) -> float:
        m = _TIME.fullmatch(value.text.strip())
        if not m:
            raise ValueError(f"expected a duration such as 500ms, 10s, 5m or 1h, got {value.text!r}")
        n = float(m.group(1)) * _TIME_UNITS[(m.group(2) or "").lower()]
        if not math.isfinite(n):  # hundreds of digits read as float infinity
            raise ValueError(f"expected a finite duration, got {value.text!r}")
        _bounded("the duration", n, self.min, self.max, render_time)
        return n

    def describe(self) -> str:
        return _range_doc("time", self.min, self.max, render_time)

    def render(self, value: Any) -> str:
        return "" if value is None else render_time(value)


@dataclass(frozen=True)
class Enum(ParamType):
    choices: tuple[str, ...] = ()
    name = "enum"

    def __init__(self, *choices: str) -> None:
        object.__setattr__(self, "choices", tuple(choices))

    def convert(self, value: Value) -> str:
        text = value.text.strip()
        if text not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}; got {value.text!r}")
        return text

    def describe(self) -> str:
        return "enum (" + ", ".join(self.choices) + ")"


@dataclass(frozen=True)
class Array(ParamType):
    """A JSON array, or a comma-separated list (``a, b, c``) as Fluentd accepts; with
    ``spaces=True`` blanks separate items too (``user_id anonymous_id``)."""

    item: ParamType = field(default_factory=String)
    spaces: bool = False
    name = "array"

    def convert(self, value: Value) -> list[Any]:
        if value.is_json:
            if not isinstance(value.json, list):
                raise ValueError("expected an array, got a JSON object")
            items = value.json
        elif value.text.lstrip().startswith("["):
            items = _json_text(value.text, list, "array")
        else:
            text = value.text.replace(",", " ") if self.spaces else value.text
            items = [s.strip() for s in text.split(None if self.spaces else ",") if s.strip()]
        out = []
        for i, item in enumerate(items):
            text = item if isinstance(item, str) else json.dumps(item)
            try:
                out.append(self.item.convert(Value(text, value.where)))
            except ValueError as exc:
                raise ValueError(f"item {i + 1}: {exc}") from None
        return out

    def describe(self) -> str:
        return f"array of {self.item.describe()}"

    def render(self, value: Any) -> str:
        return "" if value is None else json.dumps(value)


@dataclass(frozen=True)
class Hash(ParamType):
    """A JSON object, or ``key1:value1,key2:value2`` as Fluentd accepts."""

    name = "hash"

    def convert(self, value: Value) -> dict[str, Any]:
        if value.is_json:
            if not isinstance(value.json, dict):
                raise ValueError("expected an object, got a JSON array")
            return dict(value.json)
        if value.text.lstrip().startswith("{"):
            return _json_text(value.text, dict, "object")
        out = {}
        for pair in value.text.split(","):
            if not pair.strip():
                continue
            key, sep, val = pair.partition(":")
            if not sep or not key.strip():
                raise ValueError(f"expected key:value pairs or a JSON object, got {pair.strip()!r}")
            out[key.strip()] = val.strip()
        return out

    def render(self, value: Any) -> str:
        return "" if value is None else json.dumps(value)


@dataclass(frozen=True)
class JSONValue(ParamType):
    """Any JSON value written inline (an array or object may span lines)."""

    name = "json"

    def convert(self, value: Value) -> Any:
        if value.is_json:
            return value.json
        try:
            return json.loads(value.text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON: {exc.msg}") from None
        except RecursionError:  # a quoted value nested deeper than the decoder goes
            raise ValueError("invalid JSON: nested too deeply") from None

    def render(self, value: Any) -> str:
        return json.dumps(value)


def _json_text(text: str, kind: type, what: str) -> Any:
    try:
        decoded = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON {what}: {exc.msg}") from None
    except RecursionError:  # a quoted value nested deeper than the decoder goes
        raise ValueError(f"invalid JSON {what}: nested too deeply") from None
    if not isinstance(decoded, kind):
        raise ValueError(f"expected a JSON {what}")
    return decoded


def _num(n: float) -> str:
    return f"{n:g}"


def render_size(n: int) -> str:
    for suffix, unit in (("t", 1 << 40), ("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def render_time(seconds: float) -> str:
    for suffix, unit in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= unit and seconds % unit == 0:
            return f"{int(seconds // unit)}{suffix}"
    if seconds < 1 and round(seconds * 1000, 6) == int(round(seconds * 1000)):
        return f"{int(round(seconds * 1000))}ms"
    return f"{seconds:g}s"


def _range_doc(name: str, lo: Any, hi: Any, render: Callable) -> str:
    if lo is not None and hi is not None:
        return f"{name} ({render(lo)}..{render(hi)})"
    if lo is not None:
        return f"{name} (>= {render(lo)})"
    if hi is not None:
        return f"{name} (<= {render(hi)})"
    return name


# -- declarations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One parameter: name, type, default (``REQUIRED`` if it must be given, ``None`` if it may be
    left unset), a one-sentence description, and whether it is a secret (masked everywhere)."""

    name: str
    type: ParamType
    default: Any
    desc: str
    secret: bool = False
    shown_default: str | None = None  # how the docs show a default too long to print

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class Arg:
    """The argument of a section, as in ``<event "Order Completed">`` or ``<transport tls>``."""

    name: str
    desc: str
    type: ParamType = field(default_factory=String)
    required: bool = True


@dataclass(frozen=True)
class Section:
    """A section: its parameters, nested sections, optional argument, and how often it may
    appear inside its parent (``multi``) and whether it must (``required``)."""

    name: str
    desc: str
    params: tuple[Param, ...] = ()
    sections: tuple[Section, ...] = ()
    arg: Arg | None = None
    multi: bool = False
    required: bool = False

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def with_params(self, *params: Param) -> Section:
        return Section(
            self.name,
            self.desc,
            params + self.params,
            self.sections,
            self.arg,
            self.multi,
            self.required,
        )


class Conf:
    """A validated section: typed parameter values as attributes, nested sections as attributes
    (a :class:`Conf`, or a list of them for ``multi`` sections), ``arg``, and where it was written.
    """

    def __init__(
        self,
        spec: Section,
        where: Where,
        arg: Any,
        values: dict[str, Any],
        given: dict[str, Value],
    ) -> None:
        self._spec = spec
        self._where = where
        self._arg = arg
        self._values = values
        self._given = given

    @property
    def spec(self) -> Section:
        return self._spec

    @property
    def where(self) -> Where:
        return self._where

    @property
    def arg(self) -> Any:
        return self._arg

    def where_of(self, name: str) -> Where:
        """Where a parameter was given, or where its section starts if it took its default."""
        given = self._given.get(name)
        return given.where if given else self._where

    def is_given(self, name: str) -> bool:
        return name in self._given

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __repr__(self) -> str:
        shown = {k: (v if not isinstance(v, (Conf, list)) else "...") for k, v in self._values.items()}
        return f"<Conf {self._spec.name} {shown}>"

    def dump(self, indent: str = "", arg: str | None = None) -> list[str]:
        """This section and its children in config syntax, as given, with secrets masked."""
        arg = self._arg if arg is None else arg
        head = f"<{self._spec.name}" + (f" {arg}" if arg not in (None, "") else "") + ">"
        lines = [indent + head]
        inner = indent + "  "
        for p in self._spec.params:
            if p.name in self._given:
                text = MASK if p.secret else self._given[p.name].text
                lines.append(f"{inner}{p.name} {text}".rstrip())
        for s in self._spec.sections:
            child = self._values.get(s.name)
            for c in child if isinstance(child, list) else [child]:
                if isinstance(c, Conf) and c._given_anything():
                    lines.extend(c.dump(inner))
        lines.append(f"{indent}</{self._spec.name}>")
        return lines

    def given_params(self) -> dict[str, str]:
        """The parameters given in this section (not its children), as written, secrets masked."""
        return {p.name: MASK if p.secret else self._given[p.name].text for p in self._spec.params if p.name in self._given}

    def _given_anything(self) -> bool:
        return (
            bool(self._given)
            or self._arg not in (None, "")
            or any(isinstance(v, list) and v or isinstance(v, Conf) and v._given_anything() for v in self._values.values())
        )


def validate_section(element: Element, spec: Section, label: str, errors: list[ConfigError]) -> Conf:
    """Check ``element`` against ``spec``; append every problem to ``errors`` and return the
    :class:`Conf` (with defaults where a value was missing or bad, so checking can go on)."""
    values: dict[str, Any] = {}
    given: dict[str, Value] = {}

    arg = _validate_arg(element, spec, label, errors)

    seen_at: dict[str, Where] = {}
    for key, value in element.params:
        p = spec.param(key)
        if p is None:
            errors.append(ConfigError(value.where, f"{label}: {_unknown('parameter', key, spec)}"))
            continue
        if key in seen_at:
            errors.append(ConfigError(value.where, f"{label}: parameter '{key}' is given twice (first at line {seen_at[key].line})"))
            continue
        seen_at[key] = value.where
        try:
            converted = p.type.convert(value)
        except ValueError as exc:
            reason = str(exc)
            if p.secret:  # never echo a secret, not even a malformed one
                reason = "invalid value (not shown: secret)"
            errors.append(ConfigError(value.where, f"{label}: parameter '{key}': {reason}"))
            continue
        values[key] = Secret(converted) if p.secret and isinstance(converted, str) else converted
        given[key] = value

    for p in spec.params:
        if p.name in values or p.name in seen_at:
            continue
        if p.required:
            errors.append(ConfigError(element.where, f"{label}: missing required parameter '{p.name}'"))
        values[p.name] = _default(p)

    for child_spec in spec.sections:
        children = [e for e in element.elements if e.name == child_spec.name]
        if child_spec.required and not children:
            errors.append(ConfigError(element.where, f"{label}: missing required section <{child_spec.name}>"))
        if not child_spec.multi and len(children) > 1:
            errors.append(
                ConfigError(
                    children[1].where,
                    f"{label}: section <{child_spec.name}> may appear only once (first at line {children[0].where.line})",
                )
            )
        confs = [validate_section(c, child_spec, f"{label} <{_tag(c)}>", errors) for c in children]
        if child_spec.multi:
            values[child_spec.name] = confs
        elif confs:
            values[child_spec.name] = confs[0]
        else:
            values[child_spec.name] = _defaults(child_spec, element.where)

    for child in element.elements:
        if spec.section(child.name) is None:
            errors.append(ConfigError(child.where, f"{label}: {_unknown('section', child.name, spec)}"))

    return Conf(spec, element.where, arg, values, given)


def _validate_arg(element: Element, spec: Section, label: str, errors: list[ConfigError]) -> Any:
    if spec.arg is None:
        if element.arg:
            errors.append(ConfigError(element.where, f"{label}: <{spec.name}> takes no argument, got {element.arg!r}"))
        return None
    if not element.arg:
        if spec.arg.required:
            errors.append(ConfigError(element.where, f"{label}: <{spec.name}> needs its {spec.arg.name} as argument"))
        return None
    try:
        return spec.arg.type.convert(Value(element.arg, element.where))
    except ValueError as exc:
        errors.append(ConfigError(element.where, f"{label}: {spec.arg.name}: {exc}"))
        return None


def _defaults(spec: Section, where: Where) -> Conf | None:
    """An absent, optional single section: its defaults, so code can read ``conf.buffer.x``.
    None when it has a required parameter (it is then really absent)."""
    if any(p.required for p in spec.params):
        return None
    values: dict[str, Any] = {p.name: _default(p) for p in spec.params}
    for s in spec.sections:
        values[s.name] = [] if s.multi else _defaults(s, where)
    return Conf(spec, where, None, values, {})


def _default(p: Param) -> Any:
    # A secret is a Secret whether it was given or took its default.
    return Secret(p.default) if p.secret and isinstance(p.default, str) else p.default


def _unknown(kind: str, name: str, spec: Section) -> str:
    names = [p.name for p in spec.params] if kind == "parameter" else [s.name for s in spec.sections]
    if kind == "section":
        name_shown = f"<{name}>"
        if not names:
            return f"section {name_shown} is not allowed here (no sections are)"
    else:
        name_shown = f"'{name}'"
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    if kind == "section":
        allowed = ", ".join(f"<{n}>" for n in names)
        return f"section {name_shown} is not allowed here{hint}; allowed: {allowed}"
    return f"unknown parameter {name_shown}{hint}"


def _tag(element: Element) -> str:
    return element.name + (f" {element.arg}" if element.arg else "")
