"""The Event Debugger of ``@type monitor_agent`` (``debugger true``): is it working? Answered for
this node the way LaunchDarkly's Event Debugger answers it for an SDK:

- each durable output: sending, retrying (until when, and why) or paused on a 401/403/404 (and the
  fix); pending events and the oldest one's age; dead letters by kind, the latest ones and the
  command that replays them; the last verification against LaunchDarkly's REST API;
- the last requests to LaunchDarkly, each with its first events;
- a mapping box: a pasted Signal event through the output's own mapper, as ``fluent-ld map`` does.

The page is one HTML file with its style and script inline (no external assets) that polls
:meth:`Debugger.state`. Event contents carry user ids: the monitor serves none of this without
``debugger true``. With ``<system> workers N``, counts come from every worker's metrics and the
requests from every worker's log (as ``/api/debug/requests``); what only the output object knows
(its pause, its verification, its dead letters, its mapper) comes from worker 0's, which serves the
monitor.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

import orjson

from fluent_ld.launchdarkly.mapping import INVALID, Rejection
from fluent_ld.launchdarkly.response import AUTH_FIXES

__all__ = ["MAP_BODY_LIMIT", "Debugger", "output_state", "page"]

# The dead letters the page lists: the newest.
LATEST_DEAD_LETTERS = 10
# What the page shows of a dead letter's record and event; `fluent-ld dlq show` prints them whole.
SHOWN_BYTES = 2048
# One pasted Signal event is a few KB; the monitor reads no more than this from the mapping box.
MAP_BODY_LIMIT = 64 * 1024

Values = Mapping[str, list[tuple[dict[str, str], float]]]


def page() -> bytes:
    """The page, shipped as package data."""
    return resources.files("fluent_ld.sources").joinpath("debugger.html").read_bytes()


def _ok(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def _answer(request: Mapping[str, Any]) -> str:
    if request["status"] is None:
        return f"no answer from LaunchDarkly: {request['error'][:300]}"
    return f"LaunchDarkly answered {request['status']}: {request['error'][:300]}"


def output_state(
    auth_status: int,
    fix: str,
    paused_until: float,
    next_attempt: float | None,
    pending: int,
    last: Mapping[str, Any] | None,
    now: float,
) -> dict[str, Any]:
    """What an output is doing: ``state`` sending, retrying or paused, with ``until`` (when it
    tries next, when known), ``reason`` or the ``status`` and ``fix`` of a pause.

    ``auth_status``: the 401/403/404 an output is paused on (0: none); ``paused_until``: when the
    output sends again after a Retry-After or a pause; ``next_attempt``: when its earliest batch is
    due; ``last``: its newest request (the request log's entry)."""
    if auth_status:
        return {"state": "paused", "status": auth_status, "fix": fix, "until": paused_until if paused_until > now else None}
    if paused_until > now:
        reason = "LaunchDarkly asked to wait (Retry-After)"
        if last is not None and not _ok(last["status"]):
            reason += f"; {_answer(last)}"
        return {"state": "retrying", "until": paused_until, "reason": reason}
    if pending and last is not None and not _ok(last["status"]):
        return {"state": "retrying", "until": next_attempt if next_attempt is not None and next_attempt > now else None, "reason": _answer(last)}
    return {"state": "sending"}


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    raw = value.encode() if isinstance(value, str) else value
    shown = raw[:SHOWN_BYTES].decode("utf-8", "replace")
    return shown + f"... ({len(raw)} bytes)" if len(raw) > SHOWN_BYTES else shown


def _letter(letter: Mapping[str, Any]) -> dict[str, Any]:
    shown = {k: letter.get(k) for k in ("id", "created_at", "kind", "reason", "status", "tag", "payload_id")}
    shown["record"] = _text(letter.get("record"))
    shown["event"] = _text(letter.get("event"))
    return shown


def brief(request: Mapping[str, Any]) -> dict[str, Any]:
    """A request log entry without its events, and how many of them the debugger can show."""
    out = {k: v for k, v in request.items() if k != "first_events"}
    out["shown_events"] = len(request["first_events"]) if "first_events" in request else None
    return out


class Debugger:
    """What the page shows, from the node the monitor runs in (``emitter``: its ``config`` and
    worker 0's ``outputs``)."""

    def __init__(self, emitter: Any) -> None:
        self.emitter = emitter
        # Per output: its store's dead-letter count when last read, and what was read. While the
        # node runs, letters are only added (dlq replay and purge need it stopped), so the same
        # count means the same letters: the store is read again only when it changes.
        self._letters: dict[str, tuple[int, dict[str, Any]]] = {}

    def outputs(self) -> list[tuple[Any, Any]]:
        """(config, output) of every durable output: those with a store."""
        return [(pc, out) for pc, out in getattr(self.emitter, "outputs", []) if getattr(out, "store", None) is not None]

    async def state(self, values: Values, requests: list[dict[str, Any]], now: float) -> dict[str, Any]:
        """Everything the page shows but the events of a request (:meth:`events`); ``values``: the
        metrics' samples (every worker's), ``requests``: the request log, newest first."""
        workers = self.emitter.config.system.workers
        outputs = [await self._output(pc, out, values, requests, now, workers) for pc, out in self.outputs()]
        return {"now": now, "workers": workers, "outputs": outputs, "requests": [brief(r) for r in requests]}

    async def _output(self, pc: Any, out: Any, values: Values, requests: list[dict[str, Any]], now: float, workers: int) -> dict[str, Any]:
        def mine(name: str) -> list[float]:
            return [v for labels, v in values.get(name, []) if labels.get("plugin_id") == pc.id]

        def by_reason(name: str) -> dict[str, int]:
            counts: dict[str, int] = {}
            for labels, v in values.get(name, []):
                if labels.get("plugin_id") == pc.id and v:
                    counts[labels["reason"]] = counts.get(labels["reason"], 0) + int(v)
            return counts

        pending = int(sum(mine("fluentld_pending_events")))
        auth = int(max(mine("fluentld_output_auth_error"), default=0))  # any worker's
        paused_for = out.paused_for
        fix = paused_for.fix if paused_for is not None and paused_for.status == auth else AUTH_FIXES.get(auth, "see the log")
        last = next((r for r in requests if r["plugin_id"] == pc.id), None)
        next_attempt = None
        if pending and last is not None and not _ok(last["status"]):
            next_attempt = await out.store.next_attempt_at()
        letters = await self._dead_letters(out)
        file_buffer = pc.conf.buffer["@type"] == "file"
        return {
            "id": pc.id,
            "type": pc.type_name,
            "state": output_state(auth, fix, out.paused_until, next_attempt, pending, last, now),
            "pending_events": pending,
            "pending_bytes": int(sum(mine("fluentld_pending_bytes"))),
            "oldest_pending_age_seconds": max(mine("fluentld_oldest_pending_event_age_seconds"), default=0.0),
            "delivered": int(sum(mine("fluentld_records_delivered_total"))),
            "dead_letters": {
                "count": int(sum(mine("fluentld_dead_letters"))),  # every worker's
                "since_start": by_reason("fluentld_records_dead_lettered_total"),
                "from_worker": 0 if workers > 1 else None,
                **letters,
            },
            "replay": f"fluent-ld dlq replay -c {pc.where.file} --id {pc.id}" if file_buffer else None,
            "verification": getattr(out, "verification", None),
            "stale_events": dict(getattr(out, "stale_counts", {})),
            "stale_after": getattr(out.conf, "stale_after", None) if hasattr(out, "stale_counts") else None,
            "can_map": getattr(out, "mapper", None) is not None,
        }

    async def _dead_letters(self, out: Any) -> dict[str, Any]:
        """This worker's dead letters of ``out``: by kind, and the newest LATEST_DEAD_LETTERS."""
        store = out.store
        count = store.dead_letter_count
        cached = self._letters.get(out.id)
        if cached is not None and cached[0] == count:
            return cached[1]
        by_kind = (await store.status())["dead_letters"] if count else {}
        letters = await store.dead_letters(LATEST_DEAD_LETTERS, newest=True) if count else []
        read = {"by_kind": by_kind, "latest": [_letter(x) for x in letters], "order": "newest first"}
        self._letters[out.id] = (count, read)
        return read

    @staticmethod
    def events(requests: list[dict[str, Any]], payload_id: str) -> dict[str, Any] | None:
        """The first events of the newest request with ``payload_id`` (a retry sends the same
        body under the same id), or None when the log kept none."""
        for r in requests:
            if r["payload_id"] == payload_id and "first_events" in r:
                return {**brief(r), "first_events": r["first_events"]}
        return None

    def map(self, output_id: str | None, body: bytes, time_ns: int) -> tuple[int, dict[str, Any]]:
        """``body`` (one Signal event, JSON) through the mapper of the output ``output_id`` (the
        first LaunchDarkly output when None): (HTTP status, what it becomes or why it is refused)."""
        mappers = [(pc, out) for pc, out in self.outputs() if getattr(out, "mapper", None) is not None]
        chosen = next(((pc, out) for pc, out in mappers if output_id in (None, "", pc.id)), None)
        if chosen is None:
            which = f" with @id {output_id!r}" if output_id else ""
            return 404, {"error": f"no LaunchDarkly output{which}"}
        pc, out = chosen
        result: dict[str, Any] | Rejection
        try:
            record = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            result = Rejection(INVALID, f"not JSON: {exc}", None)
        else:
            result = out.mapper.map(record, time_ns)
        if isinstance(result, Rejection):
            return 200, {"output": pc.id, "mapped": False, "kind": result.kind, "reason": result.reason, "event_name": result.event}
        verification = getattr(out, "verification", None)
        check = None
        if verification is not None:
            check = next((k for k in verification.get("keys", []) if k.get("key") == result.get("key")), None)
        return 200, {"output": pc.id, "mapped": True, "event": result, "verification": check, "verified": verification is not None}
