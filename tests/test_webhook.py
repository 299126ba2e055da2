"""The LaunchDarkly webhook source over real HTTP: signatures, replays, policy, ordering, limits."""

import concurrent.futures
import hashlib
import hmac
import json
import urllib.error
import urllib.request

import pytest

from fluent_ld.config.errors import ConfigErrors
from fluent_ld.config.loader import load_text
from harness import RunningNode

SECRET = "whsec-test"

CONF = """
<source>
  @type launchdarkly_webhook
  port 0
  secret {secret}
  {extra}
</source>
<match launchdarkly.**>
  @type capture
</match>
"""


def entry(entry_id="5f1a", date=1_749_200_000_000, resource="proj/default:env/production:flag/new-checkout", action="updateOn", **extra):
    return {
        "_id": entry_id,
        "date": date,
        "kind": "flag",
        "name": "New checkout",
        "title": "Ada turned on the flag New checkout in Production",
        "accesses": [{"action": action, "resource": resource}],
        "member": {"_id": "m1", "email": "ada@example.com", "firstName": "Ada"},
        **extra,
    }


def post(node, body: bytes, signature: str | None = "auto", secret: str = SECRET) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if signature == "auto":
        signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if signature is not None:
        headers["X-LD-Signature"] = signature
    url = f"http://127.0.0.1:{node.source.port}/launchdarkly/webhook"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def node(extra: str = "", secret: str = SECRET) -> RunningNode:
    return RunningNode(CONF.format(secret=secret, extra=extra))


def test_a_signed_entry_becomes_an_enriched_record():
    with node() as n:
        status, _ = post(n, json.dumps(entry()).encode())
        assert status == 200
        ((tag, time_ns, record),) = n.wait_records(1)
    assert tag == "launchdarkly.audit" and time_ns == 1_749_200_000_000 * 10**6
    assert record["project"] == "default" and record["environment"] == "production"
    assert record["flag"] == "new-checkout" and record["actions"] == ["updateOn"]
    assert record["member_email"] == "ada@example.com" and record["_id"] == "5f1a"


@pytest.mark.parametrize(
    "signature, body_change",
    [("0" * 64, None), (None, None), ("auto-then-alter", b' '), ("not-hex", None)],
    ids=["wrong", "missing", "body-altered-after-signing", "garbage"],
)
def test_bad_signatures_are_refused_and_nothing_is_kept(signature, body_change):
    with node() as n:
        body = json.dumps(entry()).encode()
        if signature == "auto-then-alter":
            signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            body = body + body_change
        status, _ = post(n, body, signature)
        assert status == 401
        assert n.output().records == [] and n.output().dead == []
        assert n.source.stats["bad_signature"] == 1


def test_a_replayed_id_is_forwarded_once_even_after_a_restart(tmp_path):
    extra = f"state_path {tmp_path}"
    with node(extra) as n:
        body = json.dumps(entry()).encode()
        assert post(n, body)[0] == 200
        assert post(n, body) == (200, {"status": "duplicate"})
        assert len(n.wait_records(1)) == 1
    with node(extra) as n:  # remembered on disk
        assert post(n, json.dumps(entry()).encode()) == (200, {"status": "duplicate"})
        assert post(n, json.dumps(entry("another")).encode())[0] == 200
        assert [r[2]["_id"] for r in n.wait_records(1)] == ["another"]


def test_out_of_order_deliveries_are_emitted_in_date_order():
    with node("reorder_window 300ms") as n:
        dates = [1_749_200_003_000, 1_749_200_001_000, 1_749_200_002_000]
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            statuses = list(pool.map(lambda d: post(n, json.dumps(entry(f"id-{d}", d)).encode())[0], dates))
        assert statuses == [200, 200, 200]
        records = n.wait_records(3)
    assert [r[2]["date"] for r in records] == sorted(dates)


POLICY = 'policy [{"effect": "allow", "actions": ["*"], "resources": ["proj/*:env/production:flag/*"]}]'


def test_the_policy_filters_entries():
    with node(POLICY) as n:
        assert post(n, json.dumps(entry("staging", resource="proj/default:env/staging:flag/x")).encode()) == (
            200,
            {"status": "filtered by policy"},
        )
        assert post(n, json.dumps(entry("prod")).encode())[0] == 200
        assert [r[2]["_id"] for r in n.wait_records(1)] == ["prod"]
        assert n.source.stats["denied"] == 1


def test_a_signed_body_that_is_not_an_entry_is_a_dead_letter():
    with node() as n:
        status, _ = post(n, b'{"hello": "world"}')
        assert status == 202
        ((tag, body, reason),) = n.output().dead
        assert tag == "launchdarkly.audit" and body == b'{"hello": "world"}' and "no '_id'" in reason
        assert n.output().records == []


def test_body_size_limit():
    with node("body_size_limit 2k") as n:
        big = json.dumps(entry(description="x" * 5000)).encode()
        assert post(n, big)[0] == 413
        assert n.output().records == []


def test_backpressure_answers_503_with_retry_after():
    with node() as n:
        n.call(setattr, n.output(), "full", 1)
        body = json.dumps(entry()).encode()
        url = f"http://127.0.0.1:{n.source.port}/launchdarkly/webhook"
        signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        request = urllib.request.Request(url, data=body, headers={"X-LD-Signature": signature}, method="POST")
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(request, timeout=10)
        assert exc.value.code == 503 and exc.value.headers["Retry-After"] == "5"
        assert post(n, body)[0] == 200  # LaunchDarkly's retry gets through, not a duplicate
        assert len(n.wait_records(1)) == 1


def test_unsigned_requires_an_explicit_choice():
    text = CONF.replace("  secret {secret}\n", "").format(extra="")
    with pytest.raises(ConfigErrors, match="set 'secret'"):
        load_text(text)
    with RunningNode(CONF.replace("  secret {secret}\n", "").format(extra="allow_unsigned true")) as n:
        assert post(n, json.dumps(entry()).encode(), signature=None)[0] == 200


def test_a_bad_policy_is_refused_at_config_time():
    with pytest.raises(ConfigErrors, match="parameter 'policy'"):
        load_text(CONF.format(secret=SECRET, extra='policy [{"effect": "maybe", "actions": ["*"], "resources": ["proj/*"]}]'))
