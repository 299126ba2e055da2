"""``fluent-ld dlq replay``: dead letters back into their output's store.

Which letters go back, and as what, is decided here (:func:`plan`); the store only reads the
letters and puts the result back in one transaction (:meth:`~fluent_ld.store.Store.readmit`).

- An output that maps (LaunchDarkly) gives each letter's original record to its mapper again (a
  fixed mapping rescues it); a letter with only its mapped event (expired, refused by LaunchDarkly)
  goes back as it is. Its events carry no tag (LaunchDarkly batches every tag together).
- An output that does not map (forward) puts each letter's stored entry back as it was, under
  its tag; a letter with only a record (one that could not be encoded, or that a source refused)
  has no entry to put back and is kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from fluent_ld.store import Store

__all__ = ["Plan", "plan", "replay"]


@dataclass
class Plan:
    events: list[tuple[str | None, bytes]] = field(default_factory=list)  # (tag, fragment) to append
    done: list[int] = field(default_factory=list)  # letters whose events go back: deleted
    reasons: dict[int, str] = field(default_factory=dict)  # letters the mapper refuses again: kept, new reason
    kept: int = 0  # letters kept
    oldest_ms: int = 0  # the oldest creationDate among the events put back; the replay's time when none has one


def plan(letters: Sequence[dict[str, Any]], mapper: Any | None, keep_tags: bool, now_ns: Callable[[], int] = time.time_ns) -> Plan:
    """What replaying ``letters`` (as :meth:`Store.dead_letters` reads them) does. ``mapper``: the
    output's (``map_encoded``, ``last_created`` and ``creation_ms``), None for an output that
    stores records as they came.

    The store's oldest time of what goes back is the events' creationDate, as at admit: a
    LaunchDarkly output's ``stale_after`` is measured against it (a replayed event is often old)."""
    out = Plan()
    oldest: int | None = None
    for letter in letters:
        created: int | None = None
        if mapper is not None and letter["record"] is not None:
            time_ns = letter["time_ns"] or now_ns()
            try:
                record = orjson.loads(letter["record"])
            except orjson.JSONDecodeError:  # a source's raw body: nothing to map
                out.kept += 1
                continue
            result = mapper.map_encoded(record, time_ns)
            if type(result) is not bytes:
                out.kept += 1
                out.reasons[letter["id"]] = result.reason
                continue
            created = mapper.last_created
        elif letter["event"] is not None:
            result = bytes(letter["event"])
            if mapper is not None:
                created = mapper.creation_ms(result)
        else:
            out.kept += 1
            continue
        if created is not None:
            oldest = created if oldest is None else min(oldest, created)
        out.events.append((letter["tag"] if keep_tags else None, result))
        out.done.append(letter["id"])
    out.oldest_ms = oldest if oldest is not None else now_ns() // 1_000_000
    return out


async def replay(store: Store, ids: Sequence[int] | None, mapper: Any | None = None, keep_tags: bool = False) -> tuple[int, int]:
    """Replay the dead letters ``ids`` (None: all) of an open store. Returns (replayed, kept)."""
    letters = await store.dead_letters(limit=-1, ids=ids)
    result = plan(letters, mapper, keep_tags)
    if result.done or result.reasons:
        await store.readmit(result.events, result.done, result.oldest_ms, result.reasons)
    return len(result.done), result.kept
