"""Will the events count? The mapping compared with the project's metrics, as LaunchDarkly's REST
API lists them. Pure: what was read comes in as arguments (the reads are
:mod:`fluent_ld.launchdarkly.rest`).

An event LaunchDarkly accepts (202) counts in an experiment only when a custom metric listens to its
key. For each event the preset maps (after the config's overrides):

- no custom metric has its key: a **problem** (it is delivered and counts nowhere);
- a numeric metric (``isNumeric``) on its key while the preset sends no ``metricValue``: a
  **problem** (a numeric metric needs the value);
- a conversion metric on its key while the preset sends a value: a **note** (LaunchDarkly ignores
  the value);
- otherwise it counts.

Custom metrics whose event key nothing maps are listed as information.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

from fluent_ld.launchdarkly.preset import EventRule

__all__ = [
    "CANNOT_TELL",
    "COUNTS",
    "DOES_NOT_COUNT",
    "KeyCheck",
    "Report",
    "api_base",
    "assess",
    "cannot_tell",
    "count_events",
    "render",
    "wrong_keys",
]

COUNTS, DOES_NOT_COUNT, CANNOT_TELL = 0, 1, 2  # the exit codes of fluent-ld verify

# The events hosts and the REST API base that serves the same accounts.
API_BASES = {
    "events.launchdarkly.com": "https://app.launchdarkly.com",
    "events.eu.launchdarkly.com": "https://app.eu.launchdarkly.com",
    "events.launchdarkly.us": "https://app.launchdarkly.us",
}
# What reading metrics needs, for the message when the token cannot.
READ_PERMISSION = (
    "reading them needs a token whose role can view the project (the built-in Reader role, or a custom role "
    "allowing viewProject on proj/<project>); an access token with only importEventData cannot"
)


def api_base(events_host: str, api_host: str | None) -> str:
    """The REST API's base URL: ``api_host`` when given (a host or a full URL), else the one that
    serves ``events_host``'s accounts; a full ``http(s)://`` events host is its own REST base (one
    local server for both, in tests and the demo)."""
    host = api_host or events_host
    if host.startswith(("http://", "https://")):
        return host.rstrip("/")
    if api_host is None:
        return API_BASES.get(host, f"https://{host}")
    return f"https://{host}"


@dataclass(frozen=True)
class KeyCheck:
    """One mapped event: its key, the custom metrics on it, and what is wrong (or worth saying)."""

    event: str
    key: str
    sends_value: bool
    metrics: tuple[str, ...] = ()  # names (keys) of the custom metrics on this event key
    kind: str | None = None  # "numeric", "conversion", "numeric+conversion", or None (no metric)
    problem: str | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "key": self.key,
            "sends_value": self.sends_value,
            "metric": self.metrics[0] if self.metrics else None,
            "metrics": list(self.metrics),
            "kind": self.kind,
            "problem": self.problem,
            "note": self.note,
        }


@dataclass(frozen=True)
class Report:
    """The outcome of one check: ``status`` is :data:`COUNTS`, :data:`DOES_NOT_COUNT` or
    :data:`CANNOT_TELL`; ``message`` says why in a sentence."""

    status: int
    message: str
    keys: tuple[KeyCheck, ...] = ()
    unused: tuple[str, ...] = ()  # custom metrics whose event key nothing maps: "name (eventKey)"
    checked_at: float = 0.0
    target: str = ""  # project/environment at which REST base
    missing: frozenset[str] = field(default_factory=frozenset)  # mapped keys with no metric

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "checked_at": self.checked_at,
            "message": self.message,
            "target": self.target,
            "keys": [k.to_json() for k in self.keys],
            "unused_metrics": list(self.unused),
        }

    def problems(self) -> tuple[str, ...]:
        """One line per problem (what the runtime check logs when it changes)."""
        if self.status == CANNOT_TELL or not self.keys:
            return (self.message,) if self.status != COUNTS else ()
        return tuple(f"{k.event} -> {k.key}: {k.problem}" for k in self.keys if k.problem)


def _kind(metric: Mapping[str, Any]) -> str:
    return "numeric" if metric.get("isNumeric") else "conversion"


def assess(events: Iterable[EventRule], metrics: Sequence[Mapping[str, Any]], target: str, checked_at: float) -> Report:
    """The mapped ``events`` against the project's ``metrics`` (the REST API's items)."""
    by_key: dict[str, list[Mapping[str, Any]]] = {}
    for m in metrics:
        if m.get("kind") == "custom" and isinstance(m.get("eventKey"), str):
            by_key.setdefault(m["eventKey"], []).append(m)
    checks = []
    for rule in sorted(events, key=lambda r: r.key):
        sends = rule.metric_value is not None
        found = by_key.get(rule.key, [])
        if not found:
            checks.append(
                KeyCheck(rule.name, rule.key, sends, problem="no custom metric has this event key: LaunchDarkly accepts the events and counts them nowhere")
            )
            continue
        names = tuple(str(m.get("key") or m.get("name")) for m in found)
        kinds = sorted({_kind(m) for m in found})
        problem = note = None
        numeric = [str(m.get("key")) for m in found if m.get("isNumeric")]
        conversion = [str(m.get("key")) for m in found if not m.get("isNumeric")]
        if numeric and not sends:
            problem = f"numeric metric {', '.join(numeric)} needs a value, and the preset sends no metricValue for this event (set metric_value)"
        elif conversion and sends:
            note = f"conversion metric {', '.join(conversion)} ignores the metricValue the preset sends"
        checks.append(KeyCheck(rule.name, rule.key, sends, names, "+".join(kinds), problem, note))
    mapped = {rule.key for rule in events}
    unused = tuple(sorted(f"{m.get('key')} ({m.get('eventKey')})" for key, ms in by_key.items() if key not in mapped for m in ms))
    missing = frozenset(k.key for k in checks if not k.metrics)
    bad = [k for k in checks if k.problem]
    if bad:
        message = f"{len(bad)} of {len(checks)} mapped event(s) will not count"
        return Report(DOES_NOT_COUNT, message, tuple(checks), unused, checked_at, target, missing)
    return Report(COUNTS, f"all {len(checks)} mapped event(s) will count", tuple(checks), unused, checked_at, target, missing)


def wrong_keys(project: str, environment: str, project_exists: bool, environments: Sequence[str], target: str, checked_at: float) -> Report:
    """The project or the environment key does not exist (a 404 from the REST API)."""
    if not project_exists:
        message = f"project {project!r} does not exist (or the token cannot see it): check project_key"
    else:
        listed = ", ".join(environments) if environments else "none"
        message = f"environment {environment!r} does not exist in project {project!r}: check environment_key (its environments: {listed})"
    return Report(DOES_NOT_COUNT, message, (), (), checked_at, target)


def cannot_tell(reason: str, target: str, checked_at: float) -> Report:
    return Report(CANNOT_TELL, reason, (), (), checked_at, target)


def render(output_id: str, report: Report) -> str:
    """A table a person reads at a glance."""
    lines = [f"{output_id}: {report.target}"]
    if report.keys:
        rows = [("EVENT", "KEY", "METRIC", "KIND", "STATUS")]
        for k in report.keys:
            status = f"PROBLEM: {k.problem}" if k.problem else (f"ok (note: {k.note})" if k.note else "ok")
            rows.append((k.event, k.key, ", ".join(k.metrics) or "-", k.kind or "-", status))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            lines.append("  " + "  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
    if report.unused:
        lines.append("  metrics no mapped event feeds (information): " + ", ".join(report.unused))
    verdict = {COUNTS: "OK", DOES_NOT_COUNT: "WILL NOT COUNT", CANNOT_TELL: "CANNOT TELL"}[report.status]
    lines.append(f"  {verdict}: {report.message}")
    return "\n".join(lines)


# -- counting delivered events by key, in the regex engine ------------------------------------------------
# A batch's data is the events as the mapper encodes them, each starting
# {"kind":"custom","key":"K","creationDate":N (orjson keeps the order the mapper builds).
_HEAD = rb'\{"kind":"custom","key":"([^"\\]*(?:\\.[^"\\]*)*)","creationDate":'  # the key: runs of plain characters between escapes


@lru_cache(maxsize=8)
def _older_than(cutoff_ms: int) -> re.Pattern[bytes]:
    """The heads of events whose creationDate is below ``cutoff_ms``: a JSON integer (no leading
    zeros) is below it when it is negative, has fewer digits, or has as many and is below it
    digit by digit. The regex engine does the comparing, so counting costs no Python per event."""
    digits = str(cutoff_ms)
    below = [rb"-\d+"]
    if len(digits) > 1:
        below.append(rb"\d{1,%d}" % (len(digits) - 1))
    for i, d in enumerate(digits):
        if d != "0":
            below.append(digits[:i].encode() + b"[0-%d]" % (int(d) - 1) + rb"\d{%d}" % (len(digits) - i - 1))
    return re.compile(_HEAD + rb"(?:" + rb"|".join(below) + rb")[,}]")


def count_events(data: bytes, missing: Iterable[str], cutoff_ms: int, check_stale: bool) -> tuple[Counter[str], Counter[str]]:
    """In a batch's ``data``: the events of each ``missing`` key, and (``check_stale``) the events
    older than ``cutoff_ms`` by key."""
    no_metric: Counter[str] = Counter()
    for key in missing:
        n = data.count(b'{"kind":"custom","key":' + orjson.dumps(key) + b',"creationDate":')
        if n:
            no_metric[key] = n
    stale: Counter[str] = Counter()
    if check_stale and cutoff_ms > 0:
        for raw, n in Counter(_older_than(cutoff_ms).findall(data)).items():
            key = orjson.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode("utf-8", "replace")
            stale[key] += n
    return no_metric, stale
