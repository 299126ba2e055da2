"""Webhook policy filters: LaunchDarkly's custom-role policy syntax, applied to audit-log entries.

A policy is a JSON array of statements::

    {"effect": "allow" | "deny",
     "actions": [glob, ...]    | "notActions": [glob, ...],
     "resources": [spec, ...]  | "notResources": [spec, ...]}

and an audit-log entry carries ``accesses``: ``[{"action": "updateOn", "resource":
"proj/default:env/production:flag/new-checkout"}, ...]``.

Matching (LaunchDarkly's documented rules):

* A statement matches an access when its action clause matches (``actions``: the action matches
  one of the globs; ``notActions``: it matches none of them) and its resource clause matches
  (``resources``: the resource matches one of the specifiers; ``notResources``: none of them).
* An access is allowed when some ``allow`` statement matches it and no ``deny`` statement does:
  deny beats allow, statement order is irrelevant, and an access nothing matches is denied.
* An entry is allowed when at least one of its accesses is allowed.

Resource specifiers: segments ``type/name`` joined by ``:`` (``proj/*:env/production:flag/*``).
Types match literally; names are globs (``*`` any run of characters, ``?`` one character, all
else literal, case-sensitive); a specifier only matches a resource with the same number of
segments and the same types in the same order (``proj/*`` covers projects, not their
environments). ``acct`` (the account) is the one segment without a ``/name``.

Where LaunchDarkly's documentation is silent, this module decides:

* **No policy = everything.** ``compile_policy([])`` (and ``compile_policy(None)``) gives a
  policy that allows every entry, even one without accesses, as a webhook without a policy
  receives every change.
* **An entry without accesses** (missing, empty, or not a list) is denied by any non-empty
  policy: nothing in it can be matched.
* **A malformed access** (not an object, ``action`` or ``resource`` not a string, a resource
  that is not a specifier) is never allowed; the entry's other accesses still count.
* **Tags, property selectors and views cannot be checked**: a webhook payload names a resource
  (``proj/default:env/production:flag/x``) but carries neither its tags, nor its properties (such
  as an environment's ``critical``), nor the views a flag is linked to. Such terms
  (``flag/*;tag1,tag2``, ``env/*;{critical:true}``, ``flag/*{key:value}``, ``flag/*;view:team``)
  are parsed and validated, then **treated as satisfied**: the specifier matches by its types and
  names alone. So ``allow`` on a tagged specifier allows whatever the tags (more is forwarded
  than LaunchDarkly would send), ``deny`` denies whatever the tags (less), and in
  ``notResources`` the reverse. :attr:`Policy.warnings` says so, one sentence per specifier and
  kind of term, for the webhook source to log at start.
* **Role attributes** (``${roleAttribute/...}``) belong to member roles and have no value in a
  webhook policy: refused.
* Validation is strict: unknown statement keys, ``effect`` other than lower-case ``allow`` or
  ``deny``, both or neither of ``actions``/``notActions`` (or ``resources``/``notResources``),
  empty lists, non-strings, empty strings, whitespace, and malformed specifiers are refused
  with a :class:`PolicyError` naming the statement (1-based, like "item 1" elsewhere in the
  configuration) and the field.

Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Decision", "Policy", "PolicyError", "Segment", "Specifier", "Statement", "compile_policy", "parse_specifier"]

ALLOW = "allow"
DENY = "deny"
KEYS = ("effect", "actions", "notActions", "resources", "notResources")

# Resource types that stand alone, without "/name": the account.
NAMELESS_TYPES = frozenset({"acct"})

_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_TAG = re.compile(r"[A-Za-z0-9._*?-]+")
_PROPERTY = re.compile(r"\{([A-Za-z0-9._-]+):([^{}:;,\s]+)\}")
_NAME_STOP = ":;/{},"
_TERM_STOP = ":;/{},"


class PolicyError(ValueError):
    """A policy that cannot be used; the message names the statement (1-based) and the field."""


class _Malformed(ValueError):
    """A specifier that does not parse (the caller adds where it was)."""


def _glob(pattern: str) -> re.Pattern[str]:
    """``*`` any run of characters (possibly empty), ``?`` exactly one, everything else literal.

    For ``fullmatch``. Each piece between two stars is matched at its first occurrence, inside an
    atomic group (never retried further on): a glob matches iff that placement does, and the time
    stays within the name's length times the pattern's. Plain ``.*`` per star backtracked to the
    power of the stars (``*-*-*-*-x`` against a name of 400 dashes took 4 s, on the event loop)."""

    def literal(piece: str) -> str:
        return "".join("." if char == "?" else re.escape(char) for char in piece)

    first, *middle, last = pattern.split("*") if "*" in pattern else (pattern, None)
    if last is None:
        return re.compile(literal(first), re.DOTALL)
    regex = literal(first) + "".join(f"(?>.*?{literal(piece)})" for piece in middle) + ".*" + literal(last)
    return re.compile(regex, re.DOTALL)


@dataclass(frozen=True)
class Segment:
    """One ``type/name`` of a specifier, with the terms a webhook cannot check."""

    type: str
    name: str | None  # None for a nameless type (acct)
    tags: tuple[str, ...] = ()
    properties: tuple[str, ...] = ()  # "{key:value}" as written
    views: tuple[str, ...] = ()
    _pattern: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def matches(self, type_: str, name: str | None) -> bool:
        if type_ != self.type:
            return False
        if self.name is None or name is None:
            return self.name is None and name is None
        assert self._pattern is not None
        return self._pattern.fullmatch(name) is not None


@dataclass(frozen=True)
class Specifier:
    """A parsed resource specifier, e.g. ``proj/*:env/production:flag/*``."""

    text: str
    segments: tuple[Segment, ...]

    def matches(self, resource: tuple[tuple[str, str | None], ...]) -> bool:
        """Same number of segments, same types in order, every name matching its glob; tags,
        properties and views are treated as satisfied."""
        if len(resource) != len(self.segments):
            return False
        return all(seg.matches(t, n) for seg, (t, n) in zip(self.segments, resource))

    def unchecked(self) -> dict[str, list[str]]:
        """The terms a webhook payload cannot check, by kind (only kinds present)."""
        found: dict[str, list[str]] = {}
        for seg in self.segments:
            for kind, terms in (("tags", seg.tags), ("properties", seg.properties), ("views", seg.views)):
                if terms:
                    found.setdefault(kind, []).extend(terms)
        return found


def _read_brace(text: str, i: int) -> tuple[str, int]:
    """A ``{key:value}`` property selector starting at ``text[i] == "{"``; returns it and the
    index after it."""
    end = text.find("}", i)
    if end < 0:
        raise _Malformed(f"unclosed '{{' at position {i + 1}")
    term = text[i : end + 1]
    if not _PROPERTY.fullmatch(term):
        raise _Malformed(f"property selector {term!r} is not of the form {{key:value}}")
    return term, end + 1


def _scan(text: str, i: int, stops: str) -> int:
    while i < len(text) and text[i] not in stops:
        i += 1
    return i


def parse_specifier(text: str) -> Specifier:
    """Parse a resource specifier (or an access's resource) into segments; raises ``ValueError``
    with the reason when it is malformed."""
    if not text:
        raise _Malformed("is empty")
    if any(c.isspace() for c in text):
        raise _Malformed("contains whitespace")
    if "${" in text:
        raise _Malformed("uses a role attribute (${...}), which has no value in a webhook policy")
    segments: list[Segment] = []
    i, n = 0, len(text)
    while True:
        number = len(segments) + 1
        j = _scan(text, i, _NAME_STOP)
        type_ = text[i:j]
        if not type_:
            raise _Malformed(f"segment {number} has no resource type (expected type/name, e.g. proj/*)")
        if not _TYPE.fullmatch(type_):
            raise _Malformed(f"segment {number} has a malformed resource type {type_!r} (types are literal: no globs)")
        name: str | None = None
        if j < n and text[j] == "/":
            k = _scan(text, j + 1, _NAME_STOP)
            name = text[j + 1 : k]
            if not name:
                raise _Malformed(f"segment {number} '{type_}/' has no name (use '{type_}/*' for every one)")
            j = k
        elif type_ not in NAMELESS_TYPES:
            raise _Malformed(f"segment {number} '{type_}' has no '/name' (use '{type_}/*' for every one)")
        tags: list[str] = []
        properties: list[str] = []
        views: list[str] = []
        if j < n and text[j] == "{":  # name{key:value}
            term, j = _read_brace(text, j)
            properties.append(term)
        if j < n and text[j] == ";":  # ;tag1,tag2,{key:value},view:key
            j += 1
            while True:
                if j < n and text[j] == "{":
                    term, j = _read_brace(text, j)
                    properties.append(term)
                elif text.startswith("view:", j) and "/" not in text[j + 5 : _scan(text, j + 5, ",:;")]:
                    k = _scan(text, j + 5, _TERM_STOP)
                    view = text[j + 5 : k]
                    if not _TAG.fullmatch(view):
                        raise _Malformed(f"segment {number} has an empty or malformed view term")
                    views.append(view)
                    j = k
                else:
                    k = _scan(text, j, _TERM_STOP)
                    tag = text[j:k]
                    if not _TAG.fullmatch(tag):
                        raise _Malformed(f"segment {number} has an empty or malformed tag after ';'")
                    tags.append(tag)
                    j = k
                if j < n and text[j] == ",":
                    j += 1
                    continue
                break
        segments.append(
            Segment(
                type_,
                name,
                tuple(tags),
                tuple(properties),
                tuple(views),
                _glob(name) if name is not None else None,
            )
        )
        if j == n:
            return Specifier(text, tuple(segments))
        if text[j] != ":":
            raise _Malformed(f"unexpected {text[j]!r} at position {j + 1}")
        i = j + 1
        if i == n:
            raise _Malformed("ends with ':'")


def _resource_key(resource: str) -> tuple[tuple[str, str | None], ...] | None:
    """An access's resource as (type, name) pairs; any tags it carries are dropped. None when it
    does not parse."""
    try:
        spec = parse_specifier(resource)
    except _Malformed:
        return None
    return tuple((seg.type, seg.name) for seg in spec.segments)


@dataclass(frozen=True)
class Statement:
    """One compiled statement; ``number`` is its 1-based position in the policy."""

    number: int
    effect: str
    actions: tuple[str, ...]
    negate_actions: bool  # notActions
    resources: tuple[Specifier, ...]
    negate_resources: bool  # notResources
    _action_patterns: tuple[re.Pattern[str], ...] = field(default=(), compare=False, repr=False)

    def matches(self, action: str, resource: tuple[tuple[str, str | None], ...]) -> bool:
        action_hit = any(p.fullmatch(action) for p in self._action_patterns)
        if action_hit == self.negate_actions:
            return False
        resource_hit = any(spec.matches(resource) for spec in self.resources)
        return resource_hit != self.negate_resources


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


class Policy:
    """A compiled policy. ``warnings``: one human sentence per specifier and kind of term (tags,
    property selectors, views) that a webhook cannot check; ``statements``: the statements."""

    def __init__(self, statements: tuple[Statement, ...], warnings: list[str]) -> None:
        self.statements = statements
        self.warnings = warnings
        self._allow = tuple(s for s in statements if s.effect == ALLOW)
        self._deny = tuple(s for s in statements if s.effect == DENY)

    def __len__(self) -> int:
        return len(self.statements)

    def __repr__(self) -> str:
        return f"Policy({len(self.statements)} statements, {len(self.warnings)} warnings)"

    def decide(self, action: Any, resource: Any) -> Decision:
        """The verdict on one access, with its reason."""
        if not isinstance(action, str) or not isinstance(resource, str):
            return Decision(False, "malformed access (action and resource must be strings)")
        key = _resource_key(resource)
        if key is None:
            return Decision(False, f"malformed resource {resource!r}")
        for statement in self._deny:
            if statement.matches(action, key):
                return Decision(False, f"denied by statement {statement.number}")
        for statement in self._allow:
            if statement.matches(action, key):
                return Decision(True, f"allowed by statement {statement.number}")
        return Decision(False, "no allow statement matches")

    def allows_access(self, action: str, resource: str) -> bool:
        """Whether one access (action on resource) is allowed."""
        if not self.statements:
            return True
        return self.decide(action, resource).allowed

    def allows(self, accesses: Any) -> bool:
        """Whether an entry with these accesses passes: at least one access allowed. An empty
        policy allows everything; otherwise an entry without accesses is denied."""
        if not self.statements:
            return True
        for access in _access_list(accesses):
            if isinstance(access, dict) and self.decide(access.get("action"), access.get("resource")).allowed:
                return True
        return False

    def explain(self, accesses: Any) -> str:
        """A short reason for the verdict on an entry, for debug logs."""
        if not self.statements:
            return "no policy: every entry is allowed"
        items = _access_list(accesses)
        if not items:
            return "the entry has no accesses, so no statement can allow it"
        reasons = []
        for index, access in enumerate(items, 1):
            if not isinstance(access, dict):
                reasons.append(f"access {index}: malformed access (not an object)")
                continue
            action, resource = access.get("action"), access.get("resource")
            decision = self.decide(action, resource)
            if decision.allowed:
                return f"allowed: access {index} ({action} on {resource}) {decision.reason}"
            reasons.append(f"access {index} ({action} on {resource}): {decision.reason}")
        return "denied: " + "; ".join(reasons)


def _access_list(accesses: Any) -> list:
    return accesses if isinstance(accesses, list) else []


def _strings(statement: dict, key: str, number: int) -> tuple[str, ...]:
    value = statement[key]
    if not isinstance(value, list) or not value:
        raise PolicyError(f"statement {number}: field '{key}' must be a non-empty list of strings")
    for index, item in enumerate(value, 1):
        if not isinstance(item, str):
            raise PolicyError(f"statement {number}: field '{key}' item {index} must be a string, not {type(item).__name__}")
        if not item or any(c.isspace() for c in item):
            raise PolicyError(f"statement {number}: field '{key}' item {index} {item!r} is empty or contains whitespace")
    return tuple(value)


def _one_of(statement: dict, positive: str, negative: str, number: int) -> tuple[tuple[str, ...], bool]:
    has_pos, has_neg = positive in statement, negative in statement
    if has_pos and has_neg:
        raise PolicyError(f"statement {number}: has both '{positive}' and '{negative}': give exactly one")
    if not (has_pos or has_neg):
        raise PolicyError(f"statement {number}: needs '{positive}' or '{negative}'")
    key = positive if has_pos else negative
    return _strings(statement, key, number), has_neg


_TERM_WORDS = {
    "tags": ("uses tags", "tags"),
    "properties": ("uses property selectors", "property values"),
    "views": ("uses views", "views"),
}
_CONSEQUENCES = {
    (ALLOW, False): "allows those resources whatever their {any}: more may be forwarded than LaunchDarkly would send",
    (DENY, False): "denies those resources whatever their {any}: less may be forwarded than LaunchDarkly would send",
    (ALLOW, True): "never allows those resources, whatever their {any}: less may be forwarded than LaunchDarkly would send",
    (DENY, True): "never denies those resources, whatever their {any}: more may be forwarded than LaunchDarkly would send",
}


def _warnings(statement: Statement) -> list[str]:
    found = []
    label = "notResources item" if statement.negate_resources else "resource"
    for spec in statement.resources:
        for kind, terms in spec.unchecked().items():
            uses, anything = _TERM_WORDS[kind]
            consequence = _CONSEQUENCES[(statement.effect, statement.negate_resources)].format(any=anything)
            found.append(
                f"statement {statement.number}: {label} {spec.text!r} {uses} ({', '.join(terms)}), which a webhook "
                f"payload does not carry: the term is ignored (treated as matching any {anything}), "
                f"so this statement {consequence}"
            )
    return found


def _compile_statement(statement: Any, number: int) -> Statement:
    if not isinstance(statement, dict):
        raise PolicyError(f"statement {number}: must be an object with 'effect', 'actions' or 'notActions', and 'resources' or 'notResources'")
    unknown = sorted(str(k) for k in statement if k not in KEYS)
    if unknown:
        raise PolicyError(f"statement {number}: unknown field {', '.join(repr(k) for k in unknown)} (known: {', '.join(KEYS)})")
    if "effect" not in statement:
        raise PolicyError(f'statement {number}: field \'effect\' is missing ("allow" or "deny")')
    effect = statement["effect"]
    if effect not in (ALLOW, DENY):
        raise PolicyError(f'statement {number}: field \'effect\' must be "allow" or "deny", not {effect!r}')
    actions, negate_actions = _one_of(statement, "actions", "notActions", number)
    raw_resources, negate_resources = _one_of(statement, "resources", "notResources", number)
    key = "notResources" if negate_resources else "resources"
    specifiers = []
    for index, text in enumerate(raw_resources, 1):
        try:
            specifiers.append(parse_specifier(text))
        except _Malformed as exc:
            raise PolicyError(f"statement {number}: field '{key}' item {index} {text!r}: {exc}") from None
    return Statement(
        number,
        effect,
        actions,
        negate_actions,
        tuple(specifiers),
        negate_resources,
        tuple(_glob(a) for a in actions),
    )


def compile_policy(statements: Any) -> Policy:
    """Validate and compile a policy (a list of statement objects). ``[]`` or None: no policy,
    which allows everything. Raises :class:`PolicyError` on the first unusable statement."""
    if statements is None:
        statements = []
    if not isinstance(statements, list):
        raise PolicyError(f"the policy must be a JSON array of statements, not {type(statements).__name__}")
    compiled = tuple(_compile_statement(s, number) for number, s in enumerate(statements, 1))
    warnings = [w for s in compiled for w in _warnings(s)]
    return Policy(compiled, warnings)
