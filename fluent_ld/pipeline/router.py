"""Fluentd tag patterns and first-match routing.

Pattern rules (Fluentd's ``GlobMatchPattern``):

- ``*`` matches one tag part (``a.*`` matches ``a.b``, not ``a`` or ``a.b.c``);
- ``**`` matches zero or more parts (``a.**`` matches ``a``, ``a.b`` and ``a.b.c``; ``**`` matches
  every tag);
- ``{x,y}`` matches either alternative, and alternatives may hold patterns (``{a,b.*}.c``);
- ``/regex/`` matches the whole tag against a regular expression;
- several patterns in one ``<match a b>`` match when any of them does.

Pure: the wiring counts and logs what is unmatched with what :meth:`Router.resolve` tells it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Generic, TypeVar

__all__ = ["MatchPattern", "PatternError", "Router", "compile_pattern"]

T = TypeVar("T")

# Tags are few in practice (one per application or log stream), but a client can send any tag: the
# cache of decisions is bounded so that a flood of distinct tags costs CPU, not memory.
ROUTE_CACHE_SIZE = 4096
OTHER_TAGS = "(other tags)"


class PatternError(ValueError):
    """A tag pattern that cannot be compiled."""


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """One Fluentd glob (or ``/regex/``) as an anchored regular expression."""
    if pattern.startswith("/"):
        if len(pattern) < 2 or not pattern.endswith("/"):
            raise PatternError(f"regular expression pattern {pattern!r} must end with '/'")
        try:
            return re.compile(pattern[1:-1] + r"\Z")
        except re.error as exc:
            raise PatternError(f"invalid regular expression {pattern!r}: {exc}") from None
    stack: list[list[str]] = []  # open {...}: the alternatives finished so far
    parts: list[str] = [""]  # the regex being built, one entry per open level
    i = 0
    dot = False  # a '.' is pending: "**" after it may also match nothing
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            if dot:
                parts[-1] += r"\."
                dot = False
            parts[-1] += re.escape(pattern[i + 1])
            i += 2
            continue
        if pattern.startswith("**", i):
            if dot:
                # "a.**" also matches "a" itself: the dot is optional, but "ab" must not match.
                parts[-1] += r"(?![^.])"
                dot = False
            if pattern.startswith(".", i + 2):
                parts[-1] += r"(?:.*\.|\A)"  # "**.b": any parts then ".", or nothing at all
                i += 3
            else:
                parts[-1] += ".*"
                i += 2
            continue
        if dot:
            parts[-1] += r"\."
            dot = False
        if c == ".":
            dot = True
        elif c == "*":
            parts[-1] += r"[^.]*"
        elif c == "{":
            stack.append([])
            parts.append("")
        elif c == "}" and stack:
            stack[-1].append(parts.pop())
            parts[-1] += "(?:" + "|".join(stack.pop()) + ")"
        elif c == "," and stack:
            stack[-1].append(parts.pop())
            parts.append("")
        else:
            parts[-1] += re.escape(c)
        i += 1
    if stack:
        raise PatternError(f"pattern {pattern!r} has an unclosed '{{'")
    if dot:
        parts[-1] += r"\."
    return re.compile(r"\A" + parts[-1] + r"\Z")


class MatchPattern:
    """The patterns of one ``<match>``: it matches a tag when any of them does."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.patterns = text.split()
        if not self.patterns:
            raise PatternError("a <match> needs at least one tag pattern")
        self._regexes = [compile_pattern(p) for p in self.patterns]

    def match(self, tag: str) -> bool:
        return any(r.match(tag) for r in self._regexes)

    def __repr__(self) -> str:
        return f"MatchPattern({self.text!r})"


class Router(Generic[T]):
    """Routes a tag to the target of the first ``<match>`` whose pattern matches it."""

    def __init__(self, routes: Sequence[tuple[MatchPattern, T]]) -> None:
        self.routes = list(routes)
        self._cache: dict[str, T | None] = {}
        self.unmatched: Counter[str] = Counter()

    def resolve(self, tag: str) -> T | None:
        try:
            return self._cache[tag]
        except KeyError:
            pass
        target = next((t for pattern, t in self.routes if pattern.match(tag)), None)
        if len(self._cache) >= ROUTE_CACHE_SIZE:
            self._cache.clear()
        self._cache[tag] = target
        return target

    def count_unmatched(self, tag: str, records: int) -> bool:
        """Count records that no ``<match>`` takes; True the first time a tag is seen, so the
        caller can log it once."""
        if tag not in self.unmatched and len(self.unmatched) >= ROUTE_CACHE_SIZE:
            self.unmatched[OTHER_TAGS] += records  # bounded, like the route cache
            return False
        first = tag not in self.unmatched
        self.unmatched[tag] += records
        return first
