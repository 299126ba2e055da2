"""What the metric event import API's answer to one batch means: a pure function from the answer
to an :mod:`~fluent_ld.outputs.outcome`, tested per status without a server."""

from __future__ import annotations

from fluent_ld.outputs.outcome import Bury, Delivered, Outcome, Pause, Retry, Split
from fluent_ld.outputs.retry import RetryPolicy, parse_retry_after

__all__ = ["AUTH_FIXES", "launchdarkly_outcome"]

# What an operator must fix when LaunchDarkly refuses the credentials or the address: nothing will
# be accepted until then, so the output pauses rather than retrying every batch.
AUTH_FIXES = {
    401: "the access token is invalid or lacks the importEventData permission: issue a token with it (Account settings > Authorization) and set access_token",
    403: "the access token lacks the importEventData permission: issue a token with it and set access_token",
    404: "the project or environment key is wrong, or the account is on another cell: check project_key and environment_key; EU accounts use events_host events.eu.launchdarkly.com, US federal events.launchdarkly.us",
}


def launchdarkly_outcome(
    status: int | None,
    text: str,
    retry_after: str | None,
    count: int,
    attempts: int,
    policy: RetryPolicy,
    now: float,
    draw: float,
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
