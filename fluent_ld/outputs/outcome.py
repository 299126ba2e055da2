"""What the answer to one delivery attempt means for its batch. Pure: no store, no metrics, no
logging; the clock and the random draw come in as arguments. The durable outputs carry an outcome
out (:class:`fluent_ld.outputs.durable.DurableOutput`), logging and counting each kind the same way
whichever output produced it. What a receiver's answers mean is the receiver's own rule
(:func:`fluent_ld.launchdarkly.response.launchdarkly_outcome`, and
:func:`transport_failure` for any answer that did not come).

- :class:`Delivered`: the receiver has the events; delete the batch.
- :class:`Split`: the receiver refused the batch as a whole; send each half on its own, to isolate
  what it refuses.
- :class:`Bury`: never retry; keep the events in the dead-letter store with ``kind`` and ``reason``.
- :class:`Pause`: nothing will succeed until an operator fixes the configuration (token, keys);
  the whole output waits, probing with one batch at a time.
- :class:`Retry`: try the same bytes again after ``delay`` (``retry_after``: the receiver asked the
  whole output to wait that long).
"""

from __future__ import annotations

from dataclasses import dataclass

from fluent_ld.outputs.retry import RetryPolicy

__all__ = ["Bury", "Delivered", "Outcome", "Pause", "Retry", "Split", "expired", "transport_failure"]


@dataclass(frozen=True, slots=True)
class Delivered:
    pass


@dataclass(frozen=True, slots=True)
class Split:
    status: int
    text: str


@dataclass(frozen=True, slots=True)
class Bury:
    kind: str  # the dead letter's kind: rejected, schema, expired
    reason: str
    status: int | None = None


@dataclass(frozen=True, slots=True)
class Pause:
    status: int
    fix: str  # what the operator must change, in a sentence
    text: str


@dataclass(frozen=True, slots=True)
class Retry:
    delay: float  # seconds until this batch's next attempt
    reason: str
    status: int | None = None
    retry_after: float | None = None  # the receiver asked every batch to wait this long


Outcome = Delivered | Split | Bury | Pause | Retry


def expired(policy: RetryPolicy, created_at: float, attempts: int, now: float) -> Bury | None:
    """A batch past ``retry_timeout`` is not sent again: it goes to the dead letters."""
    if not policy.expired(created_at, now):
        return None
    return Bury("expired", f"not delivered within retry_timeout ({policy.retry_timeout:g}s) after {attempts} attempt(s)")


def transport_failure(reason: str, attempts: int, policy: RetryPolicy, draw: float) -> Retry:
    """No answer (connection refused or lost, timeout, a wrong ack): the same bytes again later."""
    return Retry(policy.delay(attempts + 1, draw), reason)
