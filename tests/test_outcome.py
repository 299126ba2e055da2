"""What each answer to a delivery means, per status, with no server: the pure half of the
durable outputs (fluent_ld.outputs.outcome, fluent_ld.launchdarkly.response)."""

import pytest

from fluent_ld.launchdarkly.response import AUTH_FIXES, launchdarkly_outcome
from fluent_ld.outputs.outcome import Bury, Delivered, Pause, Retry, Split, expired, transport_failure
from fluent_ld.outputs.retry import MAX_RETRY_AFTER, RetryPolicy

POLICY = RetryPolicy(retry_wait=1.0, retry_max_interval=300.0, retry_timeout=3600.0, retry_randomize=False)
NOW = 1_800_000_000.0


def outcome(status, count=10, attempts=0, retry_after=None, text="why"):
    return launchdarkly_outcome(status, text, retry_after, count, attempts, POLICY, NOW, 0.5)


@pytest.mark.parametrize("status", [200, 202, 204, 299])
def test_2xx_is_delivered(status):
    assert outcome(status) == Delivered()


@pytest.mark.parametrize("status", [400, 413])
def test_400_and_413_split_a_batch_and_bury_a_single_event(status):
    assert outcome(status, count=2, text="too big") == Split(status, "too big")
    assert outcome(status, count=1, text="bad") == Bury("rejected", f"LaunchDarkly answered {status}: bad", status)


@pytest.mark.parametrize("status", [401, 403, 404])
def test_credentials_and_keys_pause_the_output_with_the_fix(status):
    result = outcome(status, count=1000)
    assert result == Pause(status, AUTH_FIXES[status], "why")
    assert "access_token" in result.fix or "project_key" in result.fix


def test_406_is_a_schema_dead_letter_never_retried():
    result = outcome(406, count=5)
    assert type(result) is Bury and result.kind == "schema" and result.status == 406


@pytest.mark.parametrize("status", [402, 405, 409, 410, 415, 418, 422, 451, 499])
def test_any_other_4xx_is_buried_as_rejected(status):
    result = outcome(status, count=7)
    assert result == Bury("rejected", f"LaunchDarkly answered {status}: why", status)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 301, 302, 307, 100])
def test_429_5xx_and_3xx_are_retried_with_backoff(status):
    assert outcome(status, attempts=0) == Retry(1.0, f"LaunchDarkly answered {status}: why", status, None)
    assert outcome(status, attempts=3).delay == 8.0
    assert outcome(status, attempts=40).delay == 300.0  # retry_max_interval


def test_no_answer_is_retried_with_its_reason():
    assert outcome(None, text="connection refused") == Retry(1.0, "connection refused", None, None)


def test_retry_after_seconds_and_dates_lengthen_the_wait_and_pause_the_output():
    assert outcome(429, retry_after="30") == Retry(30.0, "LaunchDarkly answered 429: why", 429, 30.0)
    assert outcome(503, retry_after="Fri, 15 Jan 2027 08:00:10 GMT").retry_after is not None
    assert outcome(429, attempts=8, retry_after="2").delay == 256.0  # the backoff when it is longer
    assert outcome(429, retry_after="999999").retry_after == MAX_RETRY_AFTER
    assert outcome(429, retry_after="soon") == Retry(1.0, "LaunchDarkly answered 429: why", 429, None)


def test_a_2xx_ignores_retry_after():
    assert outcome(202, retry_after="60") == Delivered()


def test_expiry_by_age():
    assert expired(POLICY, NOW - 3599, 4, NOW) is None
    result = expired(POLICY, NOW - 3600, 4, NOW)
    assert type(result) is Bury and result.kind == "expired" and "4 attempt(s)" in result.reason


def test_a_transport_failure_backs_off_by_attempt():
    assert transport_failure("no server is reachable", 2, POLICY, 0.5) == Retry(4.0, "no server is reachable")
