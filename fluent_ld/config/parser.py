"""Fluentd v1 config syntax: text -> a tree of elements.

Pure: no files, no environment, no clock. What the syntax reaches outside the text comes in as
arguments: the environment and the host name for ``"#{...}"`` in double-quoted strings, and a callback
that returns the sources an ``@include`` names. Syntax errors are raised at once as
:class:`ConfigSyntaxError` with the file and line; everything that only needs the declarations
(unknown parameters, bad values, duplicates) is left to :mod:`fluent_ld.config.params`.

The rules follow Fluentd's ``v1_parser.rb`` and ``literal_parser.rb``:

- ``<name arg>`` ... ``</name>`` sections, nested to any depth; the argument may be quoted.
- ``key value`` parameters; a key alone on its line has the value ``""``.
- Unquoted values run to the end of the line; whitespace followed by ``#`` starts a comment, a ``#``
  inside a word is kept (``color#1``). Trailing whitespace is dropped.
- ``"double"`` quotes take the escapes ``\\" \\' \\\\ \\n \\r \\t \\f \\b`` and ``#{...}`` embedded
  code; ``'single'`` quotes take ``\\'`` and ``\\\\`` only. A double-quoted value may span lines
  (its line breaks are kept; a backslash at the end of a line joins it to the next).
- A value starting with ``[`` or ``{`` is JSON and may span lines, with ``#`` comments outside strings.
- ``@include PATTERN`` pulls other files in at that point, at the root or inside a section.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fluent_ld.config.errors import ConfigSyntaxError, Where

__all__ = [
    "Element",
    "EvalContext",
    "IncludedSource",
    "Value",
    "parse",
]

# Deep enough for any real layout of included files, small enough to stop a cycle that hides
# behind different spellings of one path (symlinks, ``./a/../a``) long before the stack runs out.
MAX_INCLUDE_DEPTH = 32
# Far deeper than any real config; keeps garbage like "<a>" x 5000 a syntax error, not a RecursionError.
MAX_SECTION_DEPTH = 64

_NAME = re.compile(r"[A-Za-z0-9_]+")
_HSPACE = re.compile(r"[ \t]*")
# Fluentd's LINE_END: optional blanks, an optional comment, then a newline or the end of the text.
_LINE_END = re.compile(r"[ \t]*(?:#[^\r\n]*)?(?:\r\n|\r|\n|\Z)")
# Fluentd's SPACING: any run of whitespace and whole-line comments.
_SPACING = re.compile(r"(?:[ \t\r\n]+|#[^\r\n]*)*")
_ENV_INDEX = re.compile(r"""\s*ENV\s*\[\s*(['"])([^'"]*)\1\s*\]\s*\Z""")
# In the default, a backslash always escapes the next character ("[^\\]", not "."): with both
# alternatives able to take a backslash, a run of them was split every possible way before a
# mismatch was reported (exponential: 40 backslashes hung the parser).
_ENV_FETCH = re.compile(r"""\s*ENV\.fetch\s*\(\s*(['"])([^'"]*)\1\s*(?:,\s*(['"])((?:\\.|(?!\3)[^\\])*)\3\s*)?\)\s*\Z""")
_HOSTNAME = re.compile(r"""\s*(?:Socket\.gethostname|hostname)\s*\Z""")


@dataclass(frozen=True)
class Value:
    """A parameter value as written.

    ``text`` is the string the parameter's type converts (for a JSON value, the JSON re-encoded
    compactly); ``json`` holds the decoded list or dict when the value was written as JSON.
    """

    text: str
    where: Where
    json: Any = None
    is_json: bool = False


@dataclass
class Element:
    """A section: its name, argument, parameters in order (duplicates kept) and child sections."""

    name: str
    arg: str
    where: Where
    params: list[tuple[str, Value]] = field(default_factory=list)
    elements: list[Element] = field(default_factory=list)

    def param(self, key: str) -> Value | None:
        """The last value given for ``key``, or None."""
        found = None
        for k, v in self.params:
            if k == key:
                found = v
        return found


@dataclass(frozen=True)
class IncludedSource:
    """One file an ``@include`` resolved to: its display name (also the base of its own includes)
    and its text."""

    name: str
    text: str


IncludeResolver = Callable[[str, Where], Iterable[IncludedSource]]


@dataclass(frozen=True)
class EvalContext:
    """What ``"#{...}"`` may read: the environment and this host's name."""

    env: Mapping[str, str]
    hostname: str = "localhost"


def parse(
    text: str,
    name: str,
    context: EvalContext,
    include: IncludeResolver | None = None,
) -> Element:
    """Parse a whole config text into its root element (named ``ROOT``)."""
    root = Element("ROOT", "", Where(name, 1))
    _Parser(text, name, context, include, (name,)).parse_body(root, is_root=True)
    return root


class _Parser:
    def __init__(
        self,
        text: str,
        name: str,
        context: EvalContext,
        include: IncludeResolver | None,
        stack: tuple[str, ...],
        depth: int = 0,
    ) -> None:
        self.text = text
        self.name = name
        self.context = context
        self.include = include
        self.stack = stack
        self.pos = 0
        self.line = 1
        self.depth = depth  # sections open around this point, counting those of including files

    # -- scanning helpers -------------------------------------------------------------------

    def where(self) -> Where:
        return Where(self.name, self.line)

    def error(self, message: str, line: int | None = None) -> ConfigSyntaxError:
        return ConfigSyntaxError(Where(self.name, line or self.line), message)

    def advance(self, n: int) -> str:
        chunk = self.text[self.pos : self.pos + n]
        self.line += chunk.count("\n") + chunk.count("\r") - chunk.count("\r\n")
        if chunk.startswith("\n") and self.pos > 0 and self.text[self.pos - 1] == "\r":
            self.line -= 1  # the "\r" of this "\r\n" was counted by the previous call
        self.pos += n
        return chunk

    def match(self, pattern: re.Pattern[str]) -> str:
        m = pattern.match(self.text, self.pos)
        return self.advance(m.end() - self.pos) if m else ""

    def startswith(self, s: str) -> bool:
        return self.text.startswith(s, self.pos)

    def eof(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect_line_end(self, what: str) -> None:
        m = _LINE_END.match(self.text, self.pos)
        if not m:
            raise self.error(f"expected end of line after {what}, found {self.rest_of_line()!r}")
        self.advance(m.end() - self.pos)

    def rest_of_line(self) -> str:
        end = len(self.text)
        for stop in ("\n", "\r"):
            i = self.text.find(stop, self.pos)
            if i != -1:
                end = min(end, i)
        return self.text[self.pos : end].strip()

    # -- structure -----------------------------------------------------------------------------

    def parse_body(self, element: Element, is_root: bool) -> None:
        while True:
            self.match(_SPACING)
            if self.eof():
                if is_root:
                    return
                raise self.error(f"<{element.name}> opened at line {element.where.line} is never closed: expected </{element.name}> before the end of the file")
            if self.startswith("</"):
                self.parse_end_tag(element, is_root)
                return
            if self.startswith("<"):
                element.elements.append(self.parse_section())
                continue
            self.parse_parameter(element)

    def parse_end_tag(self, element: Element, is_root: bool) -> None:
        line = self.line
        self.advance(2)
        name = self.match(_NAME)
        self.match(_HSPACE)
        if self.peek() != ">":
            raise self.error(f"expected '>' to close the end tag </{name}")
        self.advance(1)
        self.expect_line_end(f"</{name}>")
        if is_root:
            raise self.error(f"</{name}> closes a section that was never opened", line)
        if name != element.name:
            raise self.error(
                f"</{name}> does not match <{element.name}> opened at line {element.where.line}",
                line,
            )

    def parse_section(self) -> Element:
        where = self.where()
        self.advance(1)
        name = self.match(_NAME)
        if not name:
            raise self.error(f"expected a section name after '<', found {self.rest_of_line()!r}")
        self.match(_HSPACE)
        arg = ""
        if self.peek() in ('"', "'"):
            arg = self.scan_quoted()
        else:
            start = self.pos
            while not self.eof() and self.peek() not in ">\r\n":
                self.advance(1)
            arg = self.text[start : self.pos].rstrip(" \t")
        self.match(_HSPACE)
        if self.peek() != ">":
            raise self.error(f"expected '>' to close <{name}")
        self.advance(1)
        self.expect_line_end(f"<{name}>")
        element = Element(name, arg, where)
        if self.depth >= MAX_SECTION_DEPTH:
            raise ConfigSyntaxError(where, f"sections nested deeper than {MAX_SECTION_DEPTH}")
        self.depth += 1
        self.parse_body(element, is_root=False)
        self.depth -= 1
        return element

    def parse_parameter(self, element: Element) -> None:
        where = self.where()
        key = self.scan_quoted() if self.peek() in ('"', "'") else self.scan_key()
        self.match(_HSPACE)
        line_end = _LINE_END.match(self.text, self.pos)
        if line_end:
            # A key alone on its line (or followed by a comment): Fluentd reads it as "".
            if key == "@include":
                raise ConfigSyntaxError(where, "@include needs a path or a glob pattern")
            self.advance(line_end.end() - self.pos)
            value = Value("", where)
        elif key == "@include":
            self.parse_include(element, where)
            return
        else:
            value = self.parse_value(where)
            self.expect_line_end(f"the value of {key!r}")
        element.params.append((key, value))

    def scan_key(self) -> str:
        start = self.pos
        while not self.eof() and self.peek() not in " \t\r\n":
            self.advance(1)
        return self.text[start : self.pos]

    # -- values --------------------------------------------------------------------------------

    def parse_value(self, where: Where) -> Value:
        c = self.peek()
        if c in "[{":
            decoded = self.scan_json()
            text = json.dumps(decoded, ensure_ascii=False, separators=(",", ":"))
            return Value(text, where, decoded, True)
        if c in ('"', "'"):
            return Value(self.scan_quoted(multiline=True), where)
        return Value(self.scan_unquoted(), where)

    def scan_unquoted(self) -> str:
        out = []
        while not self.eof():
            c = self.peek()
            if c in " \t":
                # Blanks end the value when a comment, a line break or the end follows them. Each
                # run is looked at once: matching _LINE_END at every blank would be quadratic in
                # the run's length.
                end = _HSPACE.match(self.text, self.pos).end()  # type: ignore[union-attr]  # c is a blank: it matches
                if end == len(self.text) or self.text[end] in "#\r\n":
                    break
                out.append(self.advance(end - self.pos))
            elif c in "\r\n":
                break
            else:  # a '#' inside a word is part of it; only ' #' starts a comment
                out.append(self.advance(1))
        return "".join(out)

    def scan_quoted(self, multiline: bool = False) -> str:
        """A quoted string. A double-quoted parameter value (``multiline``) may span lines, as in
        Fluentd: its line breaks are kept, and a backslash right before one joins the lines."""
        quote = self.advance(1)
        start_line = self.line
        multiline = multiline and quote == '"'
        out: list[str] = []
        while True:
            if self.eof() or (self.peek() in "\r\n" and not multiline):
                kind = "double" if quote == '"' else "single"
                raise self.error(f"unterminated {kind}-quoted string", start_line)
            c = self.peek()
            if c == quote:
                self.advance(1)
                return "".join(out)
            if multiline and c == "\\" and self.text[self.pos + 1 : self.pos + 2] in ("\r", "\n"):
                self.advance(1)
                self.advance(2 if self.startswith("\r\n") else 1)
            elif c == "\\":
                out.append(self.scan_escape(quote))
            elif quote == '"' and self.startswith("#{"):
                out.append(self.scan_embedded())
            else:
                out.append(self.advance(1))

    def scan_escape(self, quote: str) -> str:
        pair = self.text[self.pos : self.pos + 2]
        if quote == "'":
            # Single quotes: only \' and \\ are escapes; any other backslash is literal.
            if pair in ("\\'", "\\\\"):
                self.advance(2)
                return pair[1]
            return self.advance(1)
        if len(pair) < 2:
            raise self.error("unterminated double-quoted string")
        c = pair[1]
        simple = {'"': '"', "'": "'", "\\": "\\", "r": "\r", "n": "\n", "t": "\t", "f": "\f", "b": "\b"}
        if c in simple:
            self.advance(2)
            return simple[c]
        if c.isalnum():
            raise self.error(f"unknown escape '\\{c}' in a double-quoted string")
        self.advance(2)
        return c

    def scan_embedded(self) -> str:
        """``#{...}`` in a double-quoted string. Fluentd evaluates Ruby here; we accept the forms
        configs use for secrets and host names, and refuse the rest by name."""
        line = self.line
        self.advance(2)
        start = self.pos
        quote = ""
        while True:
            if self.eof() or self.peek() in "\r\n":
                raise self.error("unterminated '#{' in a double-quoted string", line)
            c = self.peek()
            if quote:
                if self.startswith(quote):
                    self.advance(len(quote))
                    quote = ""
                    continue
                if c == "\\":
                    self.advance(1)
            elif self.startswith('\\"'):  # "#{ENV[\"NAME\"]}": quotes escaped for the outer string
                quote = '\\"'
                self.advance(2)
                continue
            elif c in "'\"":
                quote = c
            elif c == "}":
                break
            self.advance(1)
        code = self.text[start : self.pos].replace('\\"', '"')
        self.advance(1)
        return self.evaluate(code, line)

    def evaluate(self, code: str, line: int) -> str:
        env = self.context.env
        m = _ENV_INDEX.match(code)
        if m:
            name = m.group(2)
            if name not in env:
                raise self.error(
                    f"environment variable {name!r} is not set (write \"#{{ENV.fetch('{name}', 'default')}}\" to give a default)",
                    line,
                )
            return env[name]
        m = _ENV_FETCH.match(code)
        if m:
            name, default = m.group(2), m.group(4)
            if name in env:
                return env[name]
            if default is None:
                raise self.error(f"environment variable {name!r} is not set and has no default", line)
            return re.sub(r"\\(.)", r"\1", default)
        if _HOSTNAME.match(code):
            return self.context.hostname
        raise self.error(
            f"unsupported embedded code #{{{code}}}: only ENV['NAME'], ENV.fetch('NAME', 'default') and Socket.gethostname are evaluated",
            line,
        )

    def scan_json(self) -> Any:
        """A JSON array or object that may span lines, with ``#`` comments outside its strings."""
        start_line = self.line
        kind = "array" if self.peek() == "[" else "object"
        out: list[str] = []
        depth = 0
        in_string = False
        while True:
            if self.eof():
                raise self.error(f"JSON {kind} is not closed before the end of the file", start_line)
            c = self.advance(1)
            if in_string:
                out.append(c)
                if c == "\\" and not self.eof():
                    out.append(self.advance(1))
                elif c == '"':
                    in_string = False
                continue
            if c == "#":
                while not self.eof() and self.peek() not in "\r\n":
                    self.advance(1)
                continue
            out.append(c)
            if c == '"':
                in_string = True
            elif c in "[{":
                depth += 1
            elif c in "]}":
                depth -= 1
                if depth == 0:
                    break
        source = "".join(out)
        try:
            return json.loads(source, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            raise self.error(f"invalid JSON {kind}: {exc.msg}", start_line + exc.lineno - 1) from None
        except (ValueError, RecursionError) as exc:  # NaN/Infinity, a number too long, too deep
            raise self.error(f"invalid JSON {kind}: {exc}", start_line) from None

    # -- @include -------------------------------------------------------------------------------

    def parse_include(self, element: Element, where: Where) -> None:
        pattern = self.scan_quoted() if self.peek() in ('"', "'") else self.scan_unquoted()
        self.expect_line_end("@include")
        if not pattern:
            raise ConfigSyntaxError(where, "@include needs a path or a glob pattern")
        if self.include is None:
            raise ConfigSyntaxError(where, "@include is not available here")
        for source in self.include(pattern, where):
            if source.name in self.stack:
                chain = " -> ".join((*self.stack[self.stack.index(source.name) :], source.name))
                raise ConfigSyntaxError(where, f"@include cycle: {chain}")
            if len(self.stack) >= MAX_INCLUDE_DEPTH:
                raise ConfigSyntaxError(where, f"@include nested deeper than {MAX_INCLUDE_DEPTH} files (a cycle?)")
            nested = _Parser(
                source.text,
                source.name,
                self.context,
                self.include,
                (*self.stack, source.name),
                self.depth,
            )
            nested.parse_body(element, is_root=True)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
