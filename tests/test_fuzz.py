"""Seeded, bounded fuzzing of everything that reads text or bytes from outside: the config parser
and loader, the forward handshake, the LaunchDarkly webhook and its policy language.

Properties (each a hypothesis test with a fixed example budget and ``derandomize=True``, so a CI
run is reproducible: about 15 s, and under 400 HTTP requests to the webhook):

1. Config: any text (arbitrary characters including NUL and lone surrogates, token soup, plugin
   sections built from the real declarations with hostile values, deep nesting, deep JSON, long
   lines, ``@include`` of files that do not exist) gives a config or ``ConfigError``/``ConfigErrors``
   whose every message starts with ``file:line:``; nothing else is raised and nothing takes long.
   A config written from a model (sections, arguments, values needing quotes and escapes, JSON)
   parses back to the model.
2. Handshake: any PING (wrong types, wrong lengths, non-UTF-8 strings, str or bin salts, huge
   fields), decoded as the server decodes it, is refused with a PONG or is a ``ProtocolError``;
   a PING computed from the specification always passes, and any single-byte change of its digest
   (or password digest) fails.
3. Webhook: the real aiohttp app in a running node answers every request 200, 202, 401, 413 or
   503 (never 500); a valid signed entry is emitted once, a signed non-entry becomes a dead letter,
   a wrong signature is 401 and keeps nothing.
4. Policy: any JSON gives a policy or ``PolicyError``; deciding on any accesses never raises, and
   the verdict follows the documented rules (an entry passes when one access does; deny beats
   allow; globs match as a reference matcher does, and in bounded time).

Every crash or hang the fuzzing found has a plain regression test at the end of its part.

Longer local run (25 times as many examples, new random ones each time; a failure prints a
``@reproduce_failure`` blob to replay it)::

    FLUENT_LD_LONG=1 .venv/bin/python -m pytest tests/test_fuzz.py -q

Coverage-guided fuzzing with atheris (optional, never run by pytest; needs ``pip install atheris``)::

    FLUENT_LD_ATHERIS=config .venv/bin/python tests/test_fuzz.py -max_total_time=300

with ``FLUENT_LD_ATHERIS`` one of ``config``, ``handshake``, ``policy``, ``webhook`` and any
libFuzzer flags after the script name.
"""

from __future__ import annotations

import atexit
import glob as globlib
import hashlib
import hmac
import http.client
import ipaddress
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from unittest import mock

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from fluent_ld.config import loader
from fluent_ld.config.errors import ConfigError, ConfigErrors, ConfigSyntaxError, Where
from fluent_ld.config.loader import load_text
from fluent_ld.config.params import Array, Bool, Enum, Float, Hash, Integer, JSONValue, Section, Size, Time
from fluent_ld.config.parser import MAX_INCLUDE_DEPTH, MAX_SECTION_DEPTH, Element, EvalContext, IncludedSource, _Parser, parse
from fluent_ld.forward.codec import NEED_DATA, Decoder, DecoderLimits, Ping, ProtocolError
from fluent_ld.forward.handshake import Client, Handshake, Security, User
from fluent_ld.registry import catalogue
from fluent_ld.sources.webhook import MAX_DATE_MS
from fluent_ld.sources.webhook_policy import Decision, Policy, PolicyError, _glob, compile_policy

sys.path.insert(0, os.path.dirname(__file__))
from harness import RunningNode

LONG = os.environ.get("FLUENT_LD_LONG") == "1"
# The long run takes minutes per test: past the suite's per-test timeout.
pytestmark = [pytest.mark.timeout(3600)] if LONG else []


def budget(n: int) -> settings:
    """``n`` examples from a fixed seed in CI; 25 times as many, freshly random, when LONG."""
    return settings(
        max_examples=n * 25 if LONG else n,
        deadline=None,
        derandomize=not LONG,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )


# ================================================================================================
# 1. Config parser and loader
# ================================================================================================

ENV = {"NAME": "value", "EMPTY": "", "QUOTE": "a\"b'c", "HASH": "#{x}"}
CTX = EvalContext(ENV, "fuzz-host")
# Generous for inputs of at most MAX_TEXT characters on a loaded CI machine; the parser is linear
# and takes milliseconds. A quadratic or exponential path takes far longer.
SLOW = 5.0
MAX_TEXT = 60_000

SANDBOX = tempfile.mkdtemp(prefix="fluent-ld-fuzz-")
atexit.register(shutil.rmtree, SANDBOX, ignore_errors=True)
CONF_NAME = os.path.join(SANDBOX, "fuzz.conf")
# One real file to include, so that @include of something that exists is fuzzed too.
with open(os.path.join(SANDBOX, "exists.conf"), "w", encoding="utf-8") as _f:
    _f.write("# included\n<system>\n  log_level debug\n</system>\n")

_real_include = loader._include


def _sandboxed_include(pattern: str, where: Where):
    """The loader's own @include, confined to the sandbox folder: random text must not read the
    machine's files (``@include /dev/zero``)."""
    base = os.path.dirname(where.file)
    path = os.path.normpath(pattern if os.path.isabs(pattern) else os.path.join(base, pattern))
    if not path.startswith(SANDBOX + os.sep):
        raise ConfigSyntaxError(where, f"@include {pattern!r}: outside the fuzz sandbox")
    return _real_include(pattern, where)


class FakeFiles:
    """An include resolver for the pure parser: a few named texts, an error for anything else."""

    FILES = {
        "a.conf": "<source>\n  @type forward\n  port 0\n</source>\n",
        "params.conf": 'k v\nj "x\\ny"\n',
        "broken.conf": "<a>\n  k v\n",
        "self.conf": "@include self.conf\n",
    }

    def __call__(self, pattern: str, where: Where):
        if pattern not in self.FILES:
            raise ConfigSyntaxError(where, f"@include {pattern}: cannot read: No such file or directory")
        return [IncludedSource(pattern, self.FILES[pattern])]


def line_count(text: str) -> int:
    return len(re.split(r"\r\n|\r|\n", text))


def assert_located(errors: list, texts: dict[str, str]) -> None:
    """Every error is a ConfigError whose message is ``file:line: ...`` for a file we gave and a
    line inside it."""
    assert errors, "an error without any message"
    for error in errors:
        assert isinstance(error, ConfigError), type(error)
        assert str(error).startswith(f"{error.where.file}:{error.where.line}: "), str(error)[:200]
        assert error.message and isinstance(error.message, str)
        assert error.where.file in texts, error.where.file
        assert 1 <= error.where.line <= line_count(texts[error.where.file]), (error.where, str(error)[:200])


@contextmanager
def timed(what: str):
    started = time.perf_counter()
    yield
    elapsed = time.perf_counter() - started
    assert elapsed < SLOW, f"{what} took {elapsed:.1f} s"


def check_config(text: str) -> object:
    """The property of part 1: parse() and load_text() either give a result or raise located
    config errors, quickly. Returns what load_text gave: the NodeConfig or the ConfigErrors."""
    assert len(text) <= MAX_TEXT + 1000
    parsed_texts = {"fuzz.conf": text, **FakeFiles.FILES}
    with timed("parse"):
        try:
            root = parse(text, "fuzz.conf", CTX, FakeFiles())
        except ConfigSyntaxError as exc:
            assert_located([exc], parsed_texts)
        else:
            assert isinstance(root, Element)

    loaded_texts = {CONF_NAME: text}
    for name in globlib.glob(os.path.join(SANDBOX, "*")):
        with open(name, encoding="utf-8") as f:
            loaded_texts[name] = f.read()
    with timed("load_text"), mock.patch.object(loader, "_include", _sandboxed_include):
        try:
            config = load_text(text, CONF_NAME, env=ENV)
        except ConfigErrors as exc:
            assert_located(exc.errors, loaded_texts)
            assert str(exc) == "\n".join(str(e) for e in exc.errors)
            return exc
    # What check-config prints must work for any config that loads.
    assert isinstance(config.summary(), str)
    assert isinstance(config.dump(), str)
    return config


# -- generators ------------------------------------------------------------------------------------

# Every parameter name the real plugins declare, so that token soup reaches the type conversions.
CATALOGUE = catalogue()


def _all_param_names(section: Section) -> set[str]:
    names = {p.name for p in section.params}
    for child in section.sections:
        names |= _all_param_names(child)
    return names


PARAM_NAMES = sorted(set().union(*(_all_param_names(s.section) for kind in CATALOGUE.values() for s in kind.values())))
TYPE_NAMES = sorted({name for kind in CATALOGUE.values() for name in kind})

TOKENS = [
    "<source>",
    "</source>",
    "<match **>",
    "<match launchdarkly.**>",
    "<match {a,b}.*>",
    "</match>",
    "<system>",
    "</system>",
    "<buffer>",
    "</buffer>",
    "<security>",
    "</security>",
    "<server>",
    "</server>",
    "<transport tls>",
    "</transport>",
    "<client>",
    "</client>",
    "<user>",
    "</user>",
    '<event "Order Completed">',
    "</event>",
    "<a",
    "<a b",
    ">",
    "</",
    "<",
    "/>",
    "<1>",
    "@type ",
    "@id ",
    "@log_level ",
    "@include ",
    "@include",
    "nope.conf",
    "exists.conf",
    "nothing*.conf",
    "a.conf",
    "params.conf",
    "broken.conf",
    "self.conf",
    "[a-",
    "../",
    "./",
    "sub/",
    "*",
    "?",
    "\n",
    "\r\n",
    "\r",
    " ",
    "\t",
    "   ",
    "#",
    " #",
    " # note",
    "##",
    '"',
    "'",
    "\\",
    "\\n",
    "\\\\",
    '\\"',
    "\\'",
    "\\q",
    "\\#",
    "\\\n",
    "#{",
    "}",
    "{",
    "ENV['NAME']",
    'ENV["UNSET"]',
    "ENV['QUOTE']",
    "ENV.fetch('UNSET', 'd')",
    "ENV.fetch('NAME')",
    'ENV.fetch("X", "a\\"b")',
    "Socket.gethostname",
    "hostname",
    "`id`",
    "1+1",
    "[",
    "]",
    ":",
    ",",
    '"k":',
    '{"a": [1, {"b": "#"}]}',
    "null",
    "true",
    "NaN",
    "-Infinity",
    "1e999",
    "0",
    "1",
    "-1",
    "65536",
    "1_000",
    "0x10",
    "9" * 40,
    "9" * 400,
    "1.5",
    "512k",
    "8m",
    "1g",
    "99t",
    "1e3",
    "500ms",
    "10s",
    "5m",
    "1h",
    "7d",
    "yes",
    "no",
    "tls",
    "tcp",
    "gzip",
    "file",
    "memory",
    "\x00",
    "\ud800",
    "\udcff",
    "\ufeff",
    "\u2028",
    "\x85",
    "\x0b",
    "\x0c",
    "é",
    "字",
    "\U0001f600",
]
TOKENS += PARAM_NAMES + TYPE_NAMES + [f"{name} " for name in PARAM_NAMES]

# Any character at all, lone surrogates and NUL included.
any_char = st.one_of(
    st.characters(exclude_categories=()),
    st.sampled_from(["\x00", "\ud800", "\udfff", "\udc80", "\r", "\n", "\t", " ", "#", "<", ">", '"', "'", "\\", "{", "}", "[", "]"]),
)
arbitrary_text = st.text(any_char, max_size=400)


@st.composite
def token_soup(draw, max_tokens: int = 80) -> str:
    parts = draw(
        st.lists(
            st.one_of(
                st.sampled_from(TOKENS),
                st.text(any_char, max_size=6),
                # A run: long lines, many blanks, deep brackets, many backslashes.
                st.builds(lambda t, n: t * n, st.sampled_from([" ", "\t", "a", "\\", "[", "{", "<a>\n", "#", "\\\\", " x"]), st.integers(2, 3000)),
            ),
            max_size=max_tokens,
        )
    )
    return "".join(parts)[:MAX_TEXT]


def quote_double(value: str, multiline: bool = False) -> str:
    """``value`` as a double-quoted config string that parses back to exactly ``value``."""
    out = []
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "#":
            out.append("\\#")  # never the start of "#{...}"
        elif char == "\n":
            out.append("\n" if multiline else "\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def quote_single(value: str) -> str | None:
    if "\r" in value or "\n" in value:
        return None
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def unquoted_ok(value: str, where: str) -> bool:
    """Whether ``value`` may be written bare and read back unchanged."""
    if not value or value != value.strip(" \t") or any(c in value for c in "\r\n"):
        return False
    if where == "value":
        return value[0] not in "\"'[{#" and not re.search(r"[ \t]#", value)
    return value[0] not in "\"'" and ">" not in value  # a section argument


@st.composite
def rendered(draw, value: str, where: str = "value") -> str:
    """One of the ways to write ``value`` that must read back as ``value``."""
    choices = ["double"]
    if where == "value" and value:
        choices.append("multiline")
    if quote_single(value) is not None:
        choices.append("single")
    if unquoted_ok(value, where):
        choices.append("bare")
    how = draw(st.sampled_from(choices))
    if how == "double":
        return quote_double(value)
    if how == "multiline":
        return quote_double(value, multiline=True)
    if how == "single":
        return quote_single(value)
    return value


# Values worth converting: plausible ones for each type and hostile ones for any.
hostile_values = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "0",
            "-0",
            "-1",
            "1e400",
            "inf",
            "nan",
            "NaN",
            "9" * 400,
            "9" * 5000,
            "1" + "0" * 30,
            "0.0000001",
            "1.5",
            "99999999999999999999t",
            "9" * 400 + "k",
            "9" * 400 + "ms",
            "9" * 400 + "d",
            "1_000",
            "0x1f",
            "true",
            "no",
            "maybe",
            "[",
            "{",
            "[]",
            "{}",
            "[1,",
            '{"a":',
            "[" * 3000 + "]" * 3000,
            '{"a":' * 1500 + "1" + "}" * 1500,
            "[" + "1" * 5000 + "]",
            "a:b,c:d",
            "a,,b",
            ",",
            ":",
            "\x00",
            "\ud800",
            "a\x00b",
            "/tmp/\x00x",
            "\udcff",
            "http://",
            "https://[::1",
            "::1",
            "10.0.0.0/33",
            "proj/*",
            "default",
            "launchdarkly.**",
        ]
    ),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(any_char, max_size=40),
)


# The launchdarkly output's check reads the preset file it names: built-in names, files that do
# not exist or are not presets, and any text.
PRESETS = st.one_of(st.sampled_from(["default", "nope.json", "exists.conf", "", "sub/x.json", "."]), hostile_values)


def typed_values(param_type) -> st.SearchStrategy[str]:
    number = st.one_of(st.integers(0, 10**12).map(str), st.decimals(0, 10**6, places=3).map(str), st.just("9" * 400))
    if isinstance(param_type, Integer):
        lo = param_type.min if param_type.min is not None else -(10**9)
        hi = param_type.max if param_type.max is not None else 10**9
        return st.one_of(st.integers(lo - 2, hi + 2).map(str), hostile_values)
    if isinstance(param_type, Size):
        return st.one_of(st.tuples(number, st.sampled_from(["", "k", "m", "g", "t", "kb", "MiB", " k"])).map("".join), hostile_values)
    if isinstance(param_type, Time):
        return st.one_of(st.tuples(number, st.sampled_from(["", "ms", "s", "m", "h", "d", "S"])).map("".join), hostile_values)
    if isinstance(param_type, Float):
        return st.one_of(st.floats().map(repr), hostile_values)
    if isinstance(param_type, Bool):
        return st.one_of(st.sampled_from(["true", "false", "yes", "no", "", "TRUE", "1"]), hostile_values)
    if isinstance(param_type, Enum):
        return st.one_of(st.sampled_from(list(param_type.choices)), hostile_values)
    if isinstance(param_type, (Array, Hash, JSONValue)):
        return st.one_of(json_values.map(json.dumps), hostile_values)
    return st.one_of(st.text(any_char, max_size=30), hostile_values)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12)),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=4)),
    max_leaves=20,
)
json_values.validate()  # now, not lazily inside another strategy's draw (where hypothesis misjudges it)


@st.composite
def section_lines(draw, section: Section, head: str, depth: int) -> list[str]:
    indent = "  " * depth
    lines = [indent + head]
    params = list(section.params)
    chosen = draw(st.lists(st.sampled_from(params), max_size=min(8, len(params)))) if params else []
    for param in chosen:
        value = draw(PRESETS if param.name == "preset" else typed_values(param.type))
        if isinstance(param.type, (Array, Hash, JSONValue)) and draw(st.booleans()) and value[:1] in "[{":
            written = value  # bare JSON: the parser reads it (over several lines if need be)
        else:
            written = draw(rendered(value))
        lines.append(f"{indent}  {param.name} {written}")
    if draw(st.integers(0, 9)) == 0:
        lines.append(f"{indent}  {draw(st.sampled_from(PARAM_NAMES + ['unknown_param', '@include']))} {draw(rendered(draw(hostile_values)))}")
    if depth < 4:
        for child in section.sections:
            for _ in range(draw(st.integers(0, 2))):
                arg = ""
                if child.arg is not None or draw(st.integers(0, 9)) == 0:
                    if isinstance(child.arg and child.arg.type, Enum) and draw(st.booleans()):
                        arg = draw(st.sampled_from(child.arg.type.choices))
                    else:
                        arg = draw(st.text(st.characters(exclude_characters="\r\n>\"'"), max_size=12)).strip(" \t")
                child_head = f"<{child.name}" + (f" {draw(rendered(arg, 'arg'))}" if arg else "") + ">"
                lines += draw(section_lines(child, child_head, depth + 1))
    lines.append(f"{indent}</{section.name}>")
    return lines


match_patterns = st.one_of(
    st.sampled_from(["**", "launchdarkly.**", "a.* b", "{a,b}.**", "/a+/", "/(/", "{a", "a.{b,c.*}.**", "\\{"]),
    st.text(st.sampled_from("{},.*ab/()\\+?"), min_size=1, max_size=30).map(lambda t: t.replace(">", "")),
    st.builds(
        lambda n, kind: {"braces": "{" * n + "a" + "}" * n, "alternatives": "{a," * n + "b" + "}" * n, "regex": "/" + "(" * n + "a" + ")" * n + "/"}[kind],
        st.one_of(st.integers(1, 2000), st.just(1000)),
        st.sampled_from(["braces", "alternatives", "regex"]),
    ),
)


@st.composite
def plugin_config(draw) -> str:
    """A config shaped like a real one: every section from the plugins' declarations, with
    plausible and hostile values, so that conversions and the plugins' own checks run."""
    lines: list[str] = []
    if draw(st.booleans()):
        lines += [
            "<system>",
            f"  log_level {draw(st.sampled_from(['info', 'debug', 'verbose', '']))}",
            f"  workers {draw(typed_values(Integer(1, 64)))}",
            "</system>",
        ]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["source", "output"]))
        type_name = draw(st.sampled_from(sorted(CATALOGUE[kind])))
        spec = CATALOGUE[kind][type_name]
        tag = "source" if kind == "source" else "match"
        head = "<source>" if kind == "source" else f"<match {draw(match_patterns)}>"
        section = Section(tag, spec.section.desc, spec.section.params, spec.section.sections)
        body = draw(section_lines(section, head, 0))
        body.insert(1, f"  @type {type_name}")
        lines += body
    separator = draw(st.sampled_from(["\n", "\r\n"]))
    return separator.join(lines)[:MAX_TEXT] + separator


include_patterns = st.one_of(
    st.text(any_char, min_size=1, max_size=20),
    st.lists(
        st.sampled_from(["nope", "exists", ".conf", "*", "?", "[a-z]", "[", "/", "../", "\x00", "\ud800", "\udcff", " ", "é", "**"]), min_size=1, max_size=6
    ).map("".join),
)


@st.composite
def includes(draw) -> str:
    """@include lines with odd patterns, at the top and inside sections."""
    lines = []
    for _ in range(draw(st.integers(1, 3))):
        line = f"@include {draw(rendered(draw(include_patterns)))}"
        lines.append(draw(st.sampled_from([line, f"<source>\n  @type forward\n  {line}\n</source>", f"<system>\n{line}\n</system>"])))
    return "\n".join(lines) + "\n"


@st.composite
def embedded_code(draw) -> str:
    """ "#{...}" in the forms the parser evaluates (ENV['X'], ENV.fetch('X', 'default'),
    Socket.gethostname), with defaults made of quotes and long runs of backslashes, and a tail
    that sometimes breaks the form."""
    q = draw(st.sampled_from(["'", '\\"', '"']))
    name = draw(st.sampled_from(["NAME", "UNSET", "QUOTE", ""]))
    default = "".join(
        draw(
            st.lists(
                st.one_of(
                    st.sampled_from(["a", "'", '"', "\\\\", "\\'", '\\"', "}", " ", "#{"]),
                    st.builds(lambda c, n: c * n, st.sampled_from(["\\\\", "\\'", "\\", "'"]), st.integers(1, 60)),
                ),
                max_size=5,
            )
        )
    )
    tail = draw(st.sampled_from(["", " x", ", 1", "  "]))
    code = draw(
        st.sampled_from(
            [
                f"ENV.fetch({q}{name}{q}, {q}{default}{q}{tail})",
                f"ENV.fetch({q}{name}{q}{tail})",
                f"ENV[{q}{name}{q}{tail}]",
                f"Socket.gethostname{tail}",
                default,
            ]
        )
    )
    return f'k "#{{{code}}}"\n'


@st.composite
def nested(draw) -> str:
    """Sections nested up to a little past the limit, with a parameter at the bottom."""
    depth = draw(st.integers(0, MAX_SECTION_DEPTH + 4))
    names = [draw(st.sampled_from(["a", "source", "buffer", "x_1"])) for _ in range(depth)]
    opening = "".join(f"{'  ' * i}<{n}>\n" for i, n in enumerate(names))
    closing = "".join(f"{'  ' * i}</{n}>\n" for i, n in reversed(list(enumerate(names))))
    return opening + "  " * depth + "k v\n" + closing


# -- properties ------------------------------------------------------------------------------------


@budget(300)
@given(arbitrary_text)
@example("@include exists.conf\n")
@example("<source>\n  @include nope.conf\n</source>\n")
@example("@include nothing*.conf\n")
def test_config_arbitrary_text(text):
    check_config(text)


@budget(500)
@given(token_soup())
def test_config_token_soup(text):
    check_config(text)


@budget(250)
@given(plugin_config())
def test_config_plugin_shaped(text):
    check_config(text)


@budget(150)
@given(includes())
def test_config_includes(text):
    check_config(text)


@budget(150)
@given(embedded_code())
@example("k \"#{ENV.fetch('UNSET', 'a\\\\b')}\"\n")
def test_config_embedded_code(text):
    check_config(text)


@budget(80)
@given(nested())
def test_config_deep_sections(text):
    depth = text.count("</")
    result = check_config(text)
    try:
        parse(text, "n.conf", CTX)
    except ConfigSyntaxError as exc:
        assert depth > MAX_SECTION_DEPTH
        assert str(exc).startswith(f"n.conf:{MAX_SECTION_DEPTH + 1}: sections nested deeper than {MAX_SECTION_DEPTH}")
    else:
        assert depth <= MAX_SECTION_DEPTH
    if depth > MAX_SECTION_DEPTH:
        assert isinstance(result, ConfigErrors)


@budget(60)
@given(st.integers(1, MAX_INCLUDE_DEPTH + 3), st.integers(0, 3))
def test_config_include_chains(files, sections_per_file):
    """A chain of included files, each opening sections: the include limit and the section limit
    both count across files, and every error names the file it is in."""
    texts = {}
    for i in range(files):
        inner = f"@include f{i + 1}.conf\n" if i + 1 < files else "k v\n"
        texts[f"f{i}.conf"] = "<a>\n" * sections_per_file + inner + "</a>\n" * sections_per_file

    def resolve(pattern, where):
        return [IncludedSource(pattern, texts[pattern])]

    try:
        parse(texts["f0.conf"], "f0.conf", CTX, resolve)
    except ConfigSyntaxError as exc:
        assert_located([exc], texts)
        assert files > MAX_INCLUDE_DEPTH or files * sections_per_file > MAX_SECTION_DEPTH
    else:
        assert files <= MAX_INCLUDE_DEPTH and files * sections_per_file <= MAX_SECTION_DEPTH


@budget(60)
@given(
    st.one_of(st.integers(1, 3000), st.sampled_from([990, 1000, 1010, 1500, 3000])),
    st.sampled_from(["[", '{"k":', '[{"k":']),
    st.sampled_from(["bare", "quoted-policy", "quoted-array", "quoted-sample", "bare-sample"]),
)
def test_config_deep_json(depth, opener, how):
    closer = "".join({"[": "]", "{": "}"}[c] for c in reversed(opener) if c in "[{")
    deep = opener * depth + "1" + closer * depth
    if how == "bare":
        text = f"k {deep}\n"
    elif how == "quoted-policy":
        text = f"<source>\n  @type launchdarkly_webhook\n  allow_unsigned true\n  policy {quote_double(deep)}\n</source>\n"
    elif how == "quoted-array":
        text = (
            "<source>\n  @type forward\n  <security>\n    self_hostname a\n    shared_key k\n"
            f"    <client>\n      host h\n      users {quote_double(deep)}\n    </client>\n  </security>\n</source>\n"
        )
    elif how == "quoted-sample":
        text = f"<source>\n  @type sample\n  sample {quote_double(deep)}\n</source>\n"
    else:
        text = f"<source>\n  @type sample\n  sample {deep}\n</source>\n"
    check_config(text)


def test_config_bare_json_at_every_depth_around_the_recursion_limit():
    """The parser decodes bare JSON, then encodes it again: at no depth may one succeed and the
    other raise."""
    for depth in range(850, 1100, 3):
        check_config("k " + "[" * depth + "]" * depth + "\n")


@budget(40)
@given(
    st.sampled_from(["k ", "k a", "<a ", 'k "', "k '", "k [", "@include ", "k #{", "<a>\nk "]),
    st.sampled_from([" ", "a", "\\", "\t", "#", "\\\\", '"', "["]),
    st.one_of(st.integers(1, 25_000), st.just(25_000)),
)
def test_config_long_lines(prefix, filler, n):
    check_config(prefix + filler * n + "b\n")


# -- round trip ------------------------------------------------------------------------------------

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
keys = st.from_regex(r"[A-Za-z_@][A-Za-z0-9_.@-]{0,10}", fullmatch=True).filter(lambda k: k != "@include")
# Values: any text but lone surrogates (a config file is read as UTF-8, so it cannot hold them).
value_text = st.text(st.characters(codec="utf-8"), max_size=30)
arg_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=15)


@st.composite
def model_section(draw, depth: int = 0) -> dict:
    params = []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.integers(0, 4)) == 0:
            params.append((draw(keys), ("json", draw(json_values))))
        else:
            params.append((draw(keys), ("text", draw(value_text))))
    children = draw(st.lists(model_section(depth + 1), max_size=2 if depth < 3 else 0))
    return {"name": draw(names), "arg": draw(arg_text).strip(" \t"), "params": params, "children": children}


@st.composite
def written(draw, section: dict, depth: int = 0) -> list[str]:
    indent = draw(st.sampled_from(["", " ", "\t", "  " * depth]))
    arg = section["arg"]
    lines = [f"{indent}<{section['name']}" + (f" {draw(rendered(arg, 'arg'))}" if arg else "") + ">"]
    for key, (kind, value) in section["params"]:
        if kind == "json":
            if isinstance(value, (list, dict)) and draw(st.booleans()):
                text = json.dumps(value, indent=draw(st.sampled_from([None, 2])))  # bare: may span lines
            else:
                text = quote_double(json.dumps(value))
        elif value == "" and draw(st.booleans()):
            text = ""  # a key alone on its line is ""
        else:
            text = draw(rendered(value))
        comment = draw(st.sampled_from(["", " # a comment", "\t#"]))
        lines.append(f"{indent}  {key} {text}{comment}" if text else f"{indent}  {key}{comment}")
        if draw(st.integers(0, 5)) == 0:
            lines.append(draw(st.sampled_from(["", "# between", "   ", "\t# x"])))
    for child in section["children"]:
        lines += draw(written(child, depth + 1))
    lines.append(f"{indent}</{section['name']}>")
    return lines


def as_model(element: Element) -> dict:
    params = []
    for key, value in element.params:
        params.append((key, ("json", value.json) if value.is_json else ("text", value.text)))
    return {"name": element.name, "arg": element.arg, "params": params, "children": [as_model(e) for e in element.elements]}


@budget(250)
@given(st.lists(model_section(), min_size=1, max_size=3), st.data())
def test_config_round_trip(model, data):
    lines = []
    for section in model:
        lines += data.draw(written(section))
    separator = data.draw(st.sampled_from(["\n", "\r\n"]))
    text = separator.join(lines) + separator
    root = parse(text, "rt.conf", CTX)
    assert len(root.elements) == len(model) and not root.params
    for got, section in zip(root.elements, model):
        same_as_model(as_model(got), section)


def same_as_model(got: dict, model: dict) -> None:
    """Text values come back as written; a JSON value comes back decoded when it was written bare,
    and as its JSON text when it was quoted."""
    assert (got["name"], got["arg"]) == (model["name"], model["arg"])
    assert [k for k, _ in got["params"]] == [k for k, _ in model["params"]]
    for (_, (got_kind, got_value)), (_, (kind, value)) in zip(got["params"], model["params"]):
        if kind == "text":
            assert (got_kind, got_value) == ("text", value)
        elif got_kind == "json":
            assert got_value == value
        else:
            assert json.loads(got_value) == value
    assert len(got["children"]) == len(model["children"])
    for g, m in zip(got["children"], model["children"]):
        same_as_model(g, m)


@budget(60)
@given(
    st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), min_size=1, max_size=30),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=30),
    st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=30),
    st.data(),
)
def test_config_round_trip_through_the_loader(tag, secret, path_tail, data):
    """Values needing quotes reach the plugin unchanged through load_text and the declarations."""
    path = "/" + path_tail
    text = (
        "<source>\n  @type launchdarkly_webhook\n  port 0\n"
        f"  tag {data.draw(rendered(tag))}\n  secret {data.draw(rendered(secret))}\n  path {data.draw(rendered(path))}\n"
        "</source>\n<match **>\n  @type null\n</match>\n"
    )
    config = load_text(text, CONF_NAME, env=ENV)
    conf = config.sources[0].conf
    assert (conf.tag, conf.secret.reveal(), conf.path) == (tag, secret, path)
    assert "\n  secret xxxxxx\n" in config.dump()


# -- regressions found by this fuzzing -------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        # float("9" * 400) is infinity: int() of it raised OverflowError.
        (
            "<source>\n @type launchdarkly_webhook\n allow_unsigned true\n body_size_limit " + "9" * 400 + "\n</source>\n",
            "4: <source> @type launchdarkly_webhook: parameter 'body_size_limit': expected a finite size",
        ),
        # The same digits as a duration were accepted as infinity (aiohttp then fails on it).
        (
            "<match **>\n @type launchdarkly\n access_token t\n project_key p\n environment_key e\n request_timeout "
            + "9" * 400
            + "\n <buffer>\n  @type memory\n </buffer>\n</match>\n",
            "6: <match **> @type launchdarkly: parameter 'request_timeout': expected a finite duration",
        ),
        # Quoted JSON nested past the decoder's recursion limit raised RecursionError.
        (
            '<source>\n @type launchdarkly_webhook\n allow_unsigned true\n policy "' + "[" * 3000 + "]" * 3000 + '"\n</source>\n',
            "4: <source> @type launchdarkly_webhook: parameter 'policy': invalid JSON: nested too deeply",
        ),
        (
            '<source>\n @type forward\n <security>\n  self_hostname a\n  shared_key k\n  <client>\n   host h\n   users "'
            + "[" * 3000
            + "]" * 3000
            + '"\n  </client>\n </security>\n</source>\n',
            "8: <source> @type forward <security> <client>: parameter 'users': invalid JSON array: nested too deeply",
        ),
        # A NUL or a lone surrogate in an @include path raised ValueError / UnicodeEncodeError.
        ("@include a\x00b\n", "1: @include "),
        ("@include a\ud800b\n", "1: @include "),
        ("@include \x00/*\n", "1: @include "),
        ("@include \ud800/*.conf\n", "1: @include "),
        # A <match> pattern nested past the recursion limit raised RecursionError.
        ("<match " + "{" * 1000 + "a" + "}" * 1000 + ">\n @type null\n</match>\n", "1: <match "),
        ("<match /" + "(" * 1000 + "a" + ")" * 1000 + "/>\n @type null\n</match>\n", "1: <match "),
        # With workers, a port refused as a value left no attribute for the shared-port check.
        (
            '<system>\n workers 2\n</system>\n<source>\n @type forward\n port ""\n</source>\n',
            "6: <source> @type forward: parameter 'port': expected an integer",
        ),
    ],
    ids=[
        "size-inf",
        "time-inf",
        "json-deep-policy",
        "json-deep-array",
        "include-nul",
        "include-surrogate",
        "include-glob-nul",
        "include-glob-surrogate",
        "match-deep-braces",
        "match-deep-regex",
        "workers-bad-port",
    ],
)
def test_regression_config_crashes_are_located_errors(text, message):
    with mock.patch.object(loader, "_include", _sandboxed_include), pytest.raises(ConfigErrors) as exc:
        load_text(text, CONF_NAME, env=ENV)
    assert any(str(e).startswith(f"{CONF_NAME}:{message}") for e in exc.value.errors), str(exc.value)[:500]
    check_config(text)


@pytest.mark.parametrize("preset", ['"a\x00b"', '"\ud800"', "binary.bin", "deep.json"], ids=["nul", "surrogate", "not-utf8", "deep-json"])
def test_preset_paths_that_crashed_the_check(tmp_path, preset):
    # Found by this fuzzing: ValueError, UnicodeEncodeError, UnicodeDecodeError and RecursionError
    # escaped config checking.
    (tmp_path / "binary.bin").write_bytes(b"\xd0\x00\xff")
    (tmp_path / "deep.json").write_text("[" * 5000 + "]" * 5000)
    text = (
        "<match **>\n @type launchdarkly\n access_token t\n project_key p\n environment_key e\n"
        f" preset {preset}\n <buffer>\n  @type memory\n </buffer>\n</match>\n"
    )
    name = str(tmp_path / "x.conf")
    with pytest.raises(ConfigErrors) as exc:
        load_text(text, name, env=ENV)
    assert str(exc.value).startswith(f"{name}:6: ")


@pytest.mark.parametrize("filler", ["[", "[a", "*"])
def test_regression_a_long_include_pattern_is_refused_quickly(filler):
    # glob() is quadratic in the "[" of a pattern: an @include of 25,000 of them took 8 s.
    text = "@include " + filler * 25_000 + "\n"
    with timed("load_text"), mock.patch.object(loader, "_include", _sandboxed_include), pytest.raises(ConfigErrors) as exc:
        load_text(text, CONF_NAME, env=ENV)
    assert str(exc.value).startswith(f"{CONF_NAME}:1: @include: a path of ")


@pytest.mark.parametrize("n", [20, 40, 2000])
def test_regression_env_fetch_default_with_many_backslashes_is_quick(n):
    # The default's pattern let a backslash be taken two ways: 40 backslashes took 27 s, 60 forever.
    text = "k \"#{ENV.fetch('A', '" + "\\\\" * n + "' x)}\"\n"
    with timed("parse"), pytest.raises(ConfigSyntaxError, match="unsupported embedded code"):
        parse(text, "t.conf", CTX)


def test_regression_env_fetch_defaults_still_unescape():
    # Written in the file: a "#{ENV.fetch('UNSET', 'x\\y')}" and b "#{ENV.fetch('UNSET', 'it\'s')}"
    text = "a \"#{ENV.fetch('UNSET', 'x\\\\y')}\"\nb \"#{ENV.fetch('UNSET', 'it\\'s')}\"\n"
    root = parse(text, "t.conf", CTX)
    assert [v.text for _, v in root.params] == ["x\\y", "it's"]


@pytest.mark.parametrize("n", [40_000, 400_000])
def test_regression_blanks_inside_a_bare_value_are_linear(n):
    # Matching the end-of-line pattern at every blank was quadratic: 40,000 blanks took 17 s.
    with timed("parse"):
        root = parse("k a" + " " * n + "b # c\nj x  \t\n", "t.conf", CTX)
    assert [(k, v.text) for k, v in root.params] == [("k", "a" + " " * n + "b"), ("j", "x")]


def _reference_unquoted(text: str) -> str:
    """The bare-value rule as first written: stop where the end-of-line pattern matches, except
    at a '#' (inside a word it is kept)."""
    line_end = re.compile(r"[ \t]*(?:#[^\r\n]*)?(?:\r\n|\r|\n|\Z)")
    out, pos = [], 0
    while pos < len(text):
        if text[pos] != "#" and line_end.match(text, pos):
            break
        out.append(text[pos])
        pos += 1
    return "".join(out)


@budget(300)
@given(st.text(st.sampled_from("ab #\t\r\n\\\"'"), max_size=30))
def test_bare_values_read_as_the_reference_rule(text):
    scanner = _Parser(text, "t.conf", CTX, None, ("t.conf",))
    value = scanner.scan_unquoted()
    assert value == _reference_unquoted(text)
    assert scanner.pos == len(value) and scanner.line == 1


# ================================================================================================
# 2. Forward handshake
# ================================================================================================

NONCE = bytes(range(16))
AUTH_SALT = bytes(range(16, 32))


def sha512_hex(*parts: bytes) -> str:
    return hashlib.sha512(b"".join(parts)).hexdigest()


def raw(value) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def decode_events(wire: bytes) -> list:
    """The stream as the server decodes it: events, then a ProtocolError if the stream breaks."""
    decoder = Decoder(DecoderLimits(chunk_size_limit=1 << 20))
    events = []
    try:
        decoder.receive_data(wire)
        while (event := decoder.next_event(0)) is not NEED_DATA:
            events.append(event)
    except ProtocolError as exc:
        events.append(exc)
    return events


SECURITIES = [
    Security("fluent-ld", "k3y"),
    Security(
        "fluent-ld",
        "k3y",
        user_auth=True,
        users=(User("alice", "pw"), User("bob", "")),
        allow_anonymous_source=False,
        clients=(Client((ipaddress.ip_network("127.0.0.0/8"),), shared_key="per-client", users=("alice",)),),
    ),
    Security("", "", user_auth=True, users=()),
]

huge = st.builds(lambda piece, n: piece * n, st.binary(min_size=1, max_size=3), st.integers(1000, 60_000))
ping_field = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40),
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    st.integers(-(2**63), 2**64 - 1),
    st.none(),
    st.booleans(),
    st.floats(),
    st.lists(st.integers(-(2**63), 2**64 - 1), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(-9, 9), max_size=2),
    huge,
    huge.map(lambda b: b.decode("latin-1")),
    st.sampled_from(["fluent-ld", "", "\x00", "\udcff"]),
)


def check_handshake(ping: Ping, security: Security, peer: str) -> tuple[bool, str]:
    ok, reason, pong = Handshake(security, peer, NONCE, AUTH_SALT).check(ping)
    assert type(ok) is bool and type(reason) is str and type(pong) is bytes
    answer = msgpack.unpackb(pong, raw=False)
    if ok:
        assert reason == "" and answer[:3] == ["PONG", True, ""]
    else:
        assert reason and answer == ["PONG", False, reason, "", ""]
    return ok, reason


@budget(400)
@given(
    st.lists(ping_field, min_size=5, max_size=5),
    st.sampled_from(["PING", "PING", "PING", b"PING", "ping", None]),
    st.integers(-2, 2),
    st.booleans(),
    st.sampled_from(["127.0.0.1", "10.1.2.3", "::1", "::ffff:127.0.0.1", "", "/run/fluent.sock", "not-an-ip"]),
)
def test_handshake_arbitrary_pings(fields, head, extra, use_bin, peer):
    message = [head, *fields]
    message = message + fields[:extra] if extra > 0 else message[: len(message) + extra]
    wire = msgpack.packb(message, use_bin_type=use_bin, unicode_errors="surrogatepass")
    for event in decode_events(wire):
        if isinstance(event, Ping):
            for security in SECURITIES:
                ok, _ = check_handshake(event, security, peer)
                assert not ok  # random fields never carry a right digest
        else:
            assert not isinstance(event, Exception) or isinstance(event, ProtocolError)


@st.composite
def spec_ping(draw) -> dict:
    """A handshake set up from the specification: the server's security, a peer, and the PING a
    correct client sends (hostname and salt as raw bytes in a str, as Fluent Bit does, or text
    and bin, as Fluentd does)."""
    self_hostname = draw(st.text(min_size=1, max_size=20))
    shared_key = draw(st.text(max_size=30))
    hostname = draw(st.one_of(st.text(max_size=30), st.binary(max_size=30)))
    assume(raw(hostname) != self_hostname.encode("utf-8"))
    salt = draw(st.binary(max_size=64))
    user_auth = draw(st.booleans())
    users = tuple(
        User(name, password) for name, password in draw(st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=10), min_size=1, max_size=4)).items()
    )
    user = draw(st.sampled_from(users)) if user_auth else None
    peer_net = draw(st.sampled_from(["192.168.0.0/16", "::1/128", "10.0.0.0/8"]))
    peer = {"192.168.0.0/16": "192.168.7.9", "::1/128": "::1", "10.0.0.0/8": "::ffff:10.2.3.4"}[peer_net]
    per_client = draw(st.one_of(st.none(), st.text(max_size=10)))
    use_client = draw(st.booleans())
    clients = ()
    if use_client:
        clients = (Client((ipaddress.ip_network(peer_net),), per_client, (user.username,) if user and draw(st.booleans()) else ()),)
    key = per_client if use_client and per_client is not None else shared_key
    security = Security(self_hostname, shared_key, user_auth, users if user_auth else (), not use_client or draw(st.booleans()), clients)
    digest = sha512_hex(salt, raw(hostname), NONCE, key.encode("utf-8"))
    username = user.username if user else ""
    password_digest = sha512_hex(AUTH_SALT, username.encode(), user.password.encode()) if user else ""
    return {
        "security": security,
        "peer": peer,
        "hostname": hostname,
        "salt": salt,
        "digest": digest,
        "username": username,
        "password_digest": password_digest,
        "key": key,
        "salt_as_str": draw(st.booleans()),
    }


def pack_ping(case: dict, digest: bytes | None = None, password_digest: bytes | None = None) -> bytes:
    """The PING with each string field as a msgpack str holding raw bytes (as Fluent Bit sends
    them; they need not be UTF-8), the salt as str or bin."""
    fields = [
        ("str", raw(case["hostname"])),
        ("str" if case["salt_as_str"] else "bin", case["salt"]),
        ("str", digest if digest is not None else case["digest"].encode()),
        ("str", case["username"].encode()),
        ("str", password_digest if password_digest is not None else case["password_digest"].encode()),
    ]
    out = b"\x96" + msgpack.packb("PING")
    for kind, value in fields:
        out += _msgpack_str(value) if kind == "str" else msgpack.packb(value, use_bin_type=True)
    return out


def _msgpack_str(data: bytes) -> bytes:
    n = len(data)
    if n < 32:
        return bytes([0xA0 | n]) + data
    if n < 256:
        return b"\xd9" + bytes([n]) + data
    return b"\xda" + n.to_bytes(2, "big") + data


def only_ping(wire: bytes) -> Ping:
    (ping,) = decode_events(wire)
    assert isinstance(ping, Ping), ping
    return ping


@budget(200)
@given(spec_ping())
def test_handshake_a_ping_from_the_spec_passes(case):
    ping = only_ping(pack_ping(case))
    ok, reason, pong = Handshake(case["security"], case["peer"], NONCE, AUTH_SALT).check(ping)
    assert (ok, reason) == (True, "")
    sec = case["security"]
    assert msgpack.unpackb(pong, raw=False) == [
        "PONG",
        True,
        "",
        sec.self_hostname,
        sha512_hex(case["salt"], sec.self_hostname.encode(), NONCE, case["key"].encode()),
    ]


@budget(200)
@given(spec_ping(), st.integers(0, 127), st.integers(1, 255), st.booleans())
def test_handshake_any_single_byte_change_of_a_digest_fails(case, index, delta, password):
    if password:
        assume(case["security"].user_auth)
        good = bytearray(case["password_digest"].encode())
    else:
        good = bytearray(case["digest"].encode())
    good[index % len(good)] = (good[index % len(good)] + delta) % 256
    wire = pack_ping(case, password_digest=bytes(good)) if password else pack_ping(case, digest=bytes(good))
    ok, reason = check_handshake(only_ping(wire), case["security"], case["peer"])
    assert not ok
    assert reason == ("username/password mismatch" if password else "shared_key mismatch")


# ================================================================================================
# 3. LaunchDarkly webhook, over HTTP
# ================================================================================================

SECRET = "whsec-fuzz"
BODY_LIMIT = 16 * 1024
ALLOWED = {200, 202, 401, 413, 503}
WEBHOOK_CONF = f"""
<source>
  @type launchdarkly_webhook
  port 0
  secret {SECRET}
  body_size_limit 16k
  {{extra}}
</source>
<match launchdarkly.**>
  @type capture
</match>
"""
_ids = itertools.count()


class Webhook:
    """A running node with the webhook source and a capture output, and what the test expects it
    to hold."""

    def __init__(self, node: RunningNode) -> None:
        self.node = node
        self.accepted: set[str] = set()  # ids stored, so a repeat is a duplicate
        self.posted = 0

    @property
    def out(self):
        return self.node.output()

    def counts(self) -> tuple[int, int]:
        return self.node.call(lambda: (len(self.out.records), len(self.out.dead)))

    def post(self, body: bytes, signature: bytes | str | None = "auto", chunked: bool = False) -> tuple[int, bytes]:
        if signature == "auto":
            signature = sign(body)
        self.posted += 1
        conn = http.client.HTTPConnection("127.0.0.1", self.node.source.port, timeout=30)
        try:
            conn.putrequest("POST", "/launchdarkly/webhook")
            conn.putheader("Content-Type", "application/json")
            if signature is not None:
                conn.putheader("X-LD-Signature", signature)
            if chunked:
                conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders()
                for i in range(0, len(body), 4096):
                    piece = body[i : i + 4096]
                    conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                conn.send(b"0\r\n\r\n")
            else:
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
            response = conn.getresponse()
            return response.status, response.read()
        except (BrokenPipeError, ConnectionResetError):
            # The server may answer 413 and close before the whole body is sent.
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@contextmanager
def running_webhook(extra: str = ""):
    with RunningNode(WEBHOOK_CONF.format(extra=extra)) as node:
        hook = Webhook(node)
        yield hook
        # Every request reached the handler and got an answer (the count bounds the HTTP traffic).
        assert node.source.stats["requests"] == hook.posted
        assert hook.posted <= 1000 or LONG


@pytest.fixture(scope="module")
def webhook():
    with running_webhook() as hook:
        yield hook


POLICY = [
    {"effect": "allow", "actions": ["*"], "resources": ["proj/*:env/production:flag/*"]},
    {"effect": "deny", "actions": ["delete*"], "resources": ["proj/*:env/*:flag/*"]},
]


@pytest.fixture(scope="module")
def policed_webhook():
    with running_webhook(f"policy {json.dumps(POLICY)}") as hook:
        yield hook


def oracle_entry(body: bytes) -> dict | None:
    """An audit entry per the source's contract (decoded with the same JSON library, checked
    independently), or None."""
    try:
        entry = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(entry, dict):
        return None
    if not isinstance(entry.get("_id"), str) or entry["_id"] == "":
        return None
    date = entry.get("date")
    if isinstance(date, bool) or not isinstance(date, int) or not 0 <= date <= MAX_DATE_MS:
        return None
    accesses = entry.get("accesses", [])
    if not isinstance(accesses, list) or not all(isinstance(a, dict) for a in accesses):
        return None
    return entry


# Entries close to valid: right shape, each field sometimes of a wrong type or out of range.
wrong = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), st.integers(-(2**63), 2**64 - 1), st.text(max_size=5), st.just([]), st.just({}))
resource_text = st.text(st.sampled_from("proj/env:flag*?;{},-_abcdefault1 "), max_size=40)
accesses = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {
                "action": st.one_of(st.sampled_from(["updateOn", "deleteFlag", "createFlag"]), wrong),
                "resource": st.one_of(st.sampled_from(["proj/default:env/production:flag/x", "proj/p:env/test:flag/y", "acct"]), resource_text, wrong),
            }
        ),
        wrong,
    ),
    max_size=4,
)


def mostly(draw, good, bad):
    """A good value three times in four, else a bad one: most entries are near valid."""
    return draw(bad) if draw(st.integers(0, 3)) == 0 else draw(good)


valid_dates = st.one_of(st.integers(0, MAX_DATE_MS), st.sampled_from([0, 1_749_200_000_000, MAX_DATE_MS]))
bad_dates = st.one_of(st.integers(MAX_DATE_MS + 1, 2**64 - 1), st.sampled_from([MAX_DATE_MS + 1, 2**63 - 1, 2**64 - 1, 10**13]), st.integers(-5, -1), wrong)


@st.composite
def near_entry(draw) -> dict:
    entry = {
        "_id": mostly(draw, st.text(min_size=1, max_size=12).map(lambda s: f"{s}-{next(_ids)}"), st.one_of(st.just(""), wrong)),
        "date": mostly(draw, valid_dates, bad_dates),
    }
    if draw(st.booleans()):
        entry["accesses"] = mostly(draw, accesses, wrong)
    if draw(st.booleans()):
        entry["member"] = draw(st.one_of(st.fixed_dictionaries({"email": st.one_of(st.text(max_size=10), wrong)}), wrong))
    for key in draw(st.lists(st.sampled_from(["kind", "name", "title", "description", "_links", "target"]), max_size=3)):
        entry[key] = draw(json_values)
    return entry


def deep(n: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * n + b"]" * n
    if kind == "dict":
        return b'{"a":' * n + b"1" + b"}" * n
    # A valid entry with a deeply nested extra field.
    inner = b'{"a":' * n + b"1" + b"}" * n
    return b'{"_id":"deep-%d-%d","date":1749200000000,"extra":%s}' % (n, next(_ids), inner)


webhook_bodies = st.one_of(
    st.binary(max_size=400),
    json_values.map(lambda v: json.dumps(v).encode()),
    near_entry().map(lambda e: json.dumps(e).encode()),
    near_entry().map(lambda e: json.dumps(e).encode()[:-1]),  # cut short
    st.builds(deep, st.integers(1, 5000), st.sampled_from(["list", "dict", "entry"])).filter(lambda b: len(b) <= BODY_LIMIT),
    st.sampled_from([b"", b"null", b"{}", b"[]", b'"x"', b"\xff\xfe", b'{"_id":"\xed\xa0\x80","date":1}', b"NaN", b"1e999"]),
)


def expect_signed(webhook: Webhook, body: bytes) -> None:
    """Post ``body`` correctly signed and check the answer and what the node kept against the
    contract: a new entry is stored once, a known one is a duplicate, anything else a dead letter."""
    entry = oracle_entry(body)
    known = entry is not None and entry["_id"] in webhook.accepted
    before = webhook.counts()
    status, answer = webhook.post(body)
    assert status in ALLOWED and status != 503, (status, answer)
    reply = json.loads(answer)
    if status == 200 and reply == {"status": "stored"}:
        webhook.accepted.add(orjson.loads(body)["_id"])  # known to the node from now on, whatever follows
    records, dead = webhook.counts()
    if entry is None:
        assert status == 202, (status, answer, body[:200])
        assert (records, dead) == (before[0], before[1] + 1)
        tag, kept, reason = webhook.node.call(lambda: webhook.out.dead[-1])
        assert tag == "launchdarkly.audit" and kept == body and reason.startswith("not a LaunchDarkly audit entry")
    elif known:
        assert (status, reply) == (200, {"status": "duplicate"}), body[:200]
        assert (records, dead) == before
    else:
        assert (status, reply) == (200, {"status": "stored"}), body[:200]
        assert (records, dead) == (before[0] + 1, before[1])
        tag, time_ns, record = webhook.node.call(lambda: webhook.out.records[-1])
        assert tag == "launchdarkly.audit" and time_ns == entry["date"] * 1_000_000
        assert record["_id"] == entry["_id"] and isinstance(record["actions"], list)


@budget(160)
@given(webhook_bodies)
def test_webhook_signed_bodies(webhook, body):
    expect_signed(webhook, body)


@budget(40)
@given(near_entry().filter(lambda e: oracle_entry(json.dumps(e).encode()) is not None))
def test_webhook_a_valid_entry_is_emitted_once(webhook, entry):
    entry["_id"] += f"-once-{next(_ids)}"  # new to the node, whatever was drawn
    body = json.dumps(entry).encode()
    before = webhook.counts()
    first = webhook.post(body)
    again = webhook.post(json.dumps(entry, indent=1).encode())  # the same id, written differently
    assert first[0] == 200 and json.loads(first[1]) == {"status": "stored"}
    assert again[0] == 200 and json.loads(again[1]) == {"status": "duplicate"}
    assert webhook.counts() == (before[0] + 1, before[1])
    webhook.accepted.add(entry["_id"])


# What HTTP allows in a field value (visible ASCII, space, tab, and any byte from 0x80): other
# bytes are refused by the HTTP parser (400) before the handler runs.
field_byte = st.one_of(st.integers(0x20, 0x7E), st.integers(0x80, 0xFF), st.just(0x09))
header_bytes = st.lists(field_byte, max_size=100).map(bytes)


@budget(80)
@given(
    webhook_bodies,
    st.one_of(
        st.none(),
        header_bytes,
        st.text(st.characters(codec="utf-8", min_codepoint=0x20, exclude_characters="\x7f"), max_size=70).map(lambda s: s.encode("utf-8")),
        st.integers(0, 63).map(lambda i: ("0" * i).encode()),
        st.tuples(st.integers(0, 63), st.sampled_from("0123456789abcdefg ")).map(lambda t: ("flip", *t)),
        st.just("other-body"),
        st.just("other-secret"),
    ),
)
def test_webhook_a_wrong_signature_is_401_and_keeps_nothing(webhook, body, signature):
    good = sign(body)
    if signature == "other-body":
        signature = sign(body + b" ")
    elif signature == "other-secret":
        signature = sign(body, "not-" + SECRET)
    elif isinstance(signature, tuple):
        _, index, char = signature
        assume(good[index] != char)
        signature = good[:index] + char + good[index + 1 :]
    if isinstance(signature, bytes):
        assume(good.encode() not in signature.lower())
    before = webhook.counts()
    status, answer = webhook.post(body, signature)
    assert (status, json.loads(answer)) == (401, {"error": "invalid signature"})
    assert webhook.counts() == before


@budget(12)
@given(st.integers(BODY_LIMIT + 1, 4 * BODY_LIMIT), st.booleans(), st.booleans())
def test_webhook_over_the_size_limit_is_413(webhook, size, chunked, signed):
    body = json.dumps({"_id": f"big-{next(_ids)}", "date": 1, "pad": "x" * size}).encode()
    before = webhook.counts()
    status, _ = webhook.post(body, "auto" if signed else None, chunked=chunked)
    assert status == 413
    assert webhook.counts() == before


@budget(40)
@given(accesses, st.data())
def test_webhook_policy_decides_what_is_stored(policed_webhook, entry_accesses, data):
    entry = {"_id": f"pol-{next(_ids)}", "date": data.draw(st.integers(0, MAX_DATE_MS)), "accesses": entry_accesses}
    body = json.dumps(entry).encode()
    before = policed_webhook.counts()
    status, answer = policed_webhook.post(body)
    assert status in ALLOWED and status != 503
    if oracle_entry(body) is None:
        assert status == 202
        return
    allowed = compile_policy(POLICY).allows(entry_accesses)
    assert (status, json.loads(answer)) == (200, {"status": "stored" if allowed else "filtered by policy"})
    assert policed_webhook.counts() == (before[0] + allowed, before[1])


# -- regressions found by this fuzzing -------------------------------------------------------------


@pytest.mark.parametrize("signature", [b"\xff\xfe", b"\xc3\xa9" * 32, "é".encode() + b"0" * 63, b"\x80"])
def test_regression_a_non_ascii_signature_is_401_not_500(webhook, signature):
    # The header arrives with surrogateescape'd bytes; .encode() of it raised UnicodeEncodeError.
    before = webhook.counts()
    status, answer = webhook.post(b'{"_id":"x","date":1}', signature)
    assert (status, json.loads(answer)) == (401, {"error": "invalid signature"})
    assert webhook.counts() == before


def test_regression_a_date_no_output_can_carry_is_a_dead_letter():
    # The forward output packs EventTime seconds in 32 bits and the stdout output formats the
    # date: an entry dated past 2106 was answered 500 at every retry.
    conf = WEBHOOK_CONF.format(extra="").replace("@type capture", "@type stdout")
    with RunningNode(conf) as node:
        hook = Webhook(node)
        for date in (MAX_DATE_MS + 1, 10_000_000_000_000, 2**63 - 1, 2**64 - 1):
            status, answer = hook.post(json.dumps({"_id": f"late-{date}", "date": date}).encode())
            assert status == 202, (date, answer)
        status, answer = hook.post(json.dumps({"_id": "last", "date": MAX_DATE_MS}).encode())
        assert status == 200, answer


# ================================================================================================
# 4. Policy
# ================================================================================================

spec_chars = st.sampled_from(
    list("proj/env:flag*?;{},-_acctview.ab1") + ["proj/", "env/", "flag/", ":", "*", ";", "{k:v}", "view:", "${x}", " ", "acct", "\u00e9"]
)
spec_text = st.lists(spec_chars, max_size=14).map("".join)
string_list = st.one_of(st.lists(spec_text, max_size=4), st.lists(st.one_of(spec_text, wrong), max_size=3), wrong)
statement = st.one_of(
    st.dictionaries(
        st.sampled_from(["effect", "actions", "notActions", "resources", "notResources", "Effect", "condition"]),
        st.one_of(st.sampled_from(["allow", "deny", "Allow", ""]), string_list, wrong),
        max_size=5,
    ),
    st.fixed_dictionaries(
        {
            "effect": st.sampled_from(["allow", "deny"]),
            "actions": st.lists(st.text(st.sampled_from("*?updateOnxdel"), min_size=1, max_size=8), min_size=1, max_size=3),
            "resources": st.lists(spec_text, min_size=1, max_size=3),
        }
    ),
    json_values,
)
policies = st.one_of(st.lists(statement, max_size=4), json_values)
arbitrary_accesses = st.one_of(
    accesses,
    json_values,
    st.lists(st.fixed_dictionaries({"action": st.text(st.sampled_from("*?updateOnxdel"), max_size=8), "resource": spec_text}), max_size=4),
)


@budget(600)
@given(policies, arbitrary_accesses)
def test_policy_compiles_or_refuses_and_decides_without_raising(statements, entry_accesses):
    try:
        policy = compile_policy(statements)
    except PolicyError as exc:
        assert str(exc)
        return
    assert isinstance(policy, Policy) and all(isinstance(w, str) for w in policy.warnings)
    verdict = policy.allows(entry_accesses)
    assert type(verdict) is bool
    assert isinstance(policy.explain(entry_accesses), str)
    if not policy.statements:
        assert verdict
        return
    items = entry_accesses if isinstance(entry_accesses, list) else []
    decisions = [policy.decide(a.get("action"), a.get("resource")) for a in items if isinstance(a, dict)]
    assert all(isinstance(d, Decision) and type(d.allowed) is bool for d in decisions)
    assert verdict == any(d.allowed for d in decisions)
    # Deny beats allow: adding a deny statement never lets more through.
    denied = compile_policy([*statements, {"effect": "deny", "actions": ["*"], "resources": ["proj/*:env/*:flag/*"]}])
    assert not denied.allows(entry_accesses) or verdict


@budget(60)
@given(st.text(st.sampled_from("*-?a"), min_size=1, max_size=16), st.sampled_from("-a"), st.one_of(st.integers(1, 3000), st.just(3000)))
def test_policy_matching_time_is_bounded(pattern, filler, n):
    policy = compile_policy([{"effect": "allow", "actions": [pattern], "resources": [f"proj/{pattern}:env/{pattern}"]}])
    name = filler * n + "x"
    with timed("allows"):
        assert type(policy.allows([{"action": name, "resource": f"proj/{name}:env/{name}"}])) is bool


def reference_glob(pattern: str, text: str) -> bool:
    """``*`` any run, ``?`` one character, the rest literal: dynamic programming over both."""
    reach = [True] + [False] * len(text)  # reach[j]: pattern so far matches text[:j]
    for p in pattern:
        if p == "*":
            for j in range(1, len(text) + 1):
                reach[j] = reach[j] or reach[j - 1]
        else:
            reach = [False] + [reach[j] and (p == "?" or p == text[j]) for j in range(len(text))]
    return reach[-1]


@budget(500)
@given(st.text(st.sampled_from("ab*?.-\n"), max_size=10), st.text(st.sampled_from("ab.-\n"), max_size=14))
@example("*a*", "bab")
@example("a*b*a", "abba")
@example("*?", "")
@example("**", "\n")
def test_policy_globs_match_as_the_reference(pattern, text):
    assert (_glob(pattern).fullmatch(text) is not None) == reference_glob(pattern, text)


@pytest.mark.parametrize("pattern", ["*-*-*-*-x", "*-*-*-*-*-*-*-x", "*a*a*a*a*a*a*a*b", "?*?*?*?*?*x"])
def test_regression_policy_globs_are_linear(pattern):
    # With ".*" per star the match backtracked polynomially: "*-*-*-*-x" against a resource name
    # of 400 dashes took 4 s, on the event loop, for every entry.
    policy = compile_policy([{"effect": "allow", "actions": [pattern], "resources": [f"proj/{pattern}"]}])
    name = ("-" if "-" in pattern else "a") * 20_000
    with timed("allows"):
        assert not policy.allows([{"action": name, "resource": f"proj/{name}"}])


# ================================================================================================
# Optional: coverage-guided fuzzing with atheris (never run by pytest)
# ================================================================================================


def _atheris_main() -> None:  # pragma: no cover - a manual tool
    import atheris

    target = os.environ.get("FLUENT_LD_ATHERIS", "config")

    def config(data: bytes) -> None:
        text = atheris.FuzzedDataProvider(data).ConsumeUnicode(MAX_TEXT)
        check_config(text)

    def handshake(data: bytes) -> None:
        for event in decode_events(b"\x96\xa4PING" + data):
            if isinstance(event, Ping):
                for security in SECURITIES:
                    check_handshake(event, security, "127.0.0.1")

    def policy(data: bytes) -> None:
        # Statements built from the bytes (random bytes are almost never JSON, and the decoder is
        # C code the fuzzer cannot see into), then any access decided against them.
        fdp = atheris.FuzzedDataProvider(data)
        statements = []
        for _ in range(fdp.ConsumeIntInRange(0, 3)):
            statement = {"effect": fdp.PickValueInList(["allow", "deny", "Allow", None])}
            for key in ("actions", "notActions", "resources", "notResources"):
                if fdp.ConsumeBool():
                    statement[key] = [fdp.ConsumeUnicodeNoSurrogates(30) for _ in range(fdp.ConsumeIntInRange(0, 2))]
            statements.append(statement)
        accesses = [{"action": fdp.ConsumeUnicodeNoSurrogates(30), "resource": fdp.ConsumeUnicodeNoSurrogates(200)} for _ in range(fdp.ConsumeIntInRange(0, 3))]
        try:
            compiled = compile_policy(statements)
        except PolicyError:
            return
        started = time.perf_counter()
        assert type(compiled.allows(accesses)) is bool
        assert isinstance(compiled.explain(accesses), str)
        assert time.perf_counter() - started < 1

    def webhook(data: bytes) -> None:
        from fluent_ld.sources.webhook import _parse_entry, enrich

        # Either the bytes as they are, or an entry built from them (the JSON decoder is C code).
        fdp = atheris.FuzzedDataProvider(data)
        if fdp.ConsumeBool():
            body = fdp.ConsumeBytes(fdp.remaining_bytes())
        else:
            pick = [None, True, 1.5, -1, 2**63, "", "x", [], {}]
            entry = {
                "_id": fdp.ConsumeUnicodeNoSurrogates(10) if fdp.ConsumeBool() else fdp.PickValueInList(pick),
                "date": fdp.ConsumeIntInRange(-1, 2**64 - 1) if fdp.ConsumeBool() else fdp.PickValueInList(pick),
                "accesses": [
                    {"action": fdp.ConsumeUnicodeNoSurrogates(10), "resource": fdp.ConsumeUnicodeNoSurrogates(40)}
                    if fdp.ConsumeBool()
                    else fdp.PickValueInList(pick)
                    for _ in range(fdp.ConsumeIntInRange(0, 3))
                ],
                "member": {"email": fdp.ConsumeUnicodeNoSurrogates(10)} if fdp.ConsumeBool() else fdp.PickValueInList(pick),
            }
            body = orjson.dumps(entry, option=orjson.OPT_PASSTHROUGH_SUBCLASS) if fdp.ConsumeBool() else json.dumps(entry).encode()
        entry, reason = _parse_entry(body)
        assert (entry is None) == (oracle_entry(body) is None), reason
        if entry is not None:
            enrich(entry)

    targets = {"config": config, "handshake": handshake, "policy": policy, "webhook": webhook}
    atheris.instrument_all()
    atheris.Setup(sys.argv, targets[target])
    atheris.Fuzz()


if __name__ == "__main__" and os.environ.get("FLUENT_LD_ATHERIS"):
    _atheris_main()
