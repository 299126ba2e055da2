"""What the answer to one delivery attempt means for its batch. Pure: no store, no metrics, no
logging; the clock and the random draw come in as arguments. The durable outputs carry an outcome
out (:class:`fluent_ld.outputs.durable.DurableOutput`), logging and counting each kind the same way
whichever output produced it.

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

from fluent_ld.retry import RetryPolicy, parse_retry_after

__all__ = [
    "AUTH_FIXES", "Bury", "Delivered", "Outcome", "Pause", "Retry", "Split",
    "expired", "launchdarkly_outcome", "transport_failure",
]


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

# What an operator must fix when LaunchDarkly refuses the credentials or the address: nothing will
# be accepted until then, so the output pauses rather than retrying every batch.
AUTH_FIXES = {
    401: "the access token is invalid or lacks the importEventData permission: issue a token with it (Account settings > Authorization) and set access_token",
    403: "the access token lacks the importEventData permission: issue a token with it and set access_token",
    404: "the project or environment key is wrong, or the account is on another cell: check project_key and environment_key; EU accounts use events_host events.eu.launchdarkly.com, US federal events.launchdarkly.us",
}


def expired(policy: RetryPolicy, created_at: float, attempts: int, now: float) -> Bury | None:
    """A batch past ``retry_timeout`` is not sent again: it goes to the dead letters."""
    if not policy.expired(created_at, now):
        return None
    return Bury("expired", f"not delivered within retry_timeout ({policy.retry_timeout:g}s) after {attempts} attempt(s)")


def transport_failure(reason: str, attempts: int, policy: RetryPolicy, draw: float) -> Retry:
    """No answer (connection refused or lost, timeout, a wrong ack): the same bytes again later."""
    return Retry(policy.delay(attempts + 1, draw), reason)


def launchdarkly_outcome(
    status: int | None, text: str, retry_after: str | None, count: int, attempts: int,
    policy: RetryPolicy, now: float, draw: float,
) -> Outcome:
    """The import API's answer (``status`` None: no answer came, ``text`` says why) to a batch of
    ``count`` events sent ``attempts`` times before. The API's documented rules: 2xx accepted;
    400 and 413 refuse the body (a smaller one may pass: split down to single events, then bury the
    one refused); 401/403/404 are configuration; 406 refuses the event schema (a bug here, never
    retried); any other 4xx but 429 is never retried; 429, 5xx, 3xx (never followed) and no answer
    are retried with backoff, honouring ``Retry-After``."""
    if status is not None and 200 <= status < 300:
        return Delivered()
    if status in (400, 413):
        if count > 1:
            return Split(status, text)
        return Bury("rejected", f"LaunchDarkly answered {status}: {text}", status)
    if status in AUTH_FIXES:
        return Pause(status, AUTH_FIXES[status], text)
    if status == 406:
        return Bury("schema", f"LaunchDarkly answered 406 (event schema 4 not accepted; a bug in fluent-ld): {text}", status)
    if status is not None and 400 <= status < 500 and status != 429:
        return Bury("rejected", f"LaunchDarkly answered {status}: {text}", status)
    delay = policy.delay(attempts + 1, draw)
    wait = parse_retry_after(retry_after, now)
    if wait is not None:
        delay = max(delay, wait)
    return Retry(delay, f"LaunchDarkly answered {status}: {text}" if status is not None else text, status, wait)
