"""The LaunchDarkly webhook source over real HTTP: signatures, replays, policy, ordering, limits;
and its store of seen entry ids."""

import ast
import asyncio
import concurrent.futures
import hashlib
import hmac
import json
import sqlite3
import urllib.error
import urllib.request

import pytest
from harness import RunningNode

from fluent_ld.config.errors import ConfigErrors
from fluent_ld.config.loader import load_text
from fluent_ld.sources import webhook
from fluent_ld.sources.webhook import MAX_IDS_IN_MEMORY, SeenIds

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
    [("0" * 64, None), (None, None), ("auto-then-alter", b" "), ("not-hex", None)],
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


# -- the id store ------------------------------------------------------------------------------------


def test_the_in_memory_ids_are_strictly_bounded_and_the_oldest_forgotten_first():
    extra = 5_000

    async def fill() -> tuple[SeenIds, int]:
        seen = SeenIds(None, window=24 * 3600)
        await seen.open()
        largest = 0
        for i in range(MAX_IDS_IN_MEMORY + extra):  # all within the window
            await seen.add(f"id-{i}")
            largest = max(largest, len(seen))
        return seen, largest

    async def check(seen: SeenIds) -> None:
        assert not await seen.contains("id-0")
        assert not await seen.contains(f"id-{extra - 1}")
        assert await seen.contains(f"id-{extra}")
        assert await seen.contains(f"id-{MAX_IDS_IN_MEMORY + extra - 1}")

    seen, largest = asyncio.run(fill())
    assert largest == len(seen) == MAX_IDS_IN_MEMORY
    assert seen.forgotten == extra
    asyncio.run(check(seen))


def test_in_memory_ids_past_the_window_are_forgotten_on_the_next_add():
    async def main() -> None:
        seen = SeenIds(None, window=0.05)
        await seen.open()
        for i in range(10):
            await seen.add(f"old-{i}")
        await asyncio.sleep(0.1)
        assert not await seen.contains("old-0")
        await seen.add("new")
        assert len(seen) == 1 and await seen.contains("new")
        assert seen.forgotten == 0  # past the window: nothing lost

    asyncio.run(main())


def plan(path, statement: str) -> str:
    db = sqlite3.connect(path)
    try:
        return " | ".join(row[-1] for row in db.execute("EXPLAIN QUERY PLAN " + statement, (0.0,)))
    finally:
        db.close()


@pytest.mark.parametrize("existing", [False, True], ids=["new-store", "store-without-the-index"])
def test_pruning_the_id_store_searches_an_index_on_its_time_column(tmp_path, existing):
    path = tmp_path / "ids" / "seen.sqlite3"
    if existing:  # a store whose table has no index on its time column
        path.parent.mkdir()
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE seen (id TEXT PRIMARY KEY, at REAL NOT NULL)")
        db.executemany("INSERT INTO seen VALUES (?, ?)", [(f"id-{i}", float(i)) for i in range(1000)])
        db.commit()
        db.close()
        assert "USING" not in plan(path, SeenIds.PRUNE)  # a scan of the whole table

    async def main() -> None:
        seen = SeenIds(str(path), window=3600)
        await seen.open()
        await seen.add("new")
        assert await seen.contains("new") and not await seen.contains("id-1")
        await seen.close()

    asyncio.run(main())
    assert "USING INDEX seen_at" in plan(path, SeenIds.PRUNE) or "USING COVERING INDEX seen_at" in plan(path, SeenIds.PRUNE)


def test_the_webhook_source_touches_no_private_attribute_of_another_object():
    """Only public aiohttp API (a private attribute such as a site's ``_server`` may go in any
    release): no ``x._name`` where x is not ``self``."""
    path = webhook.__file__
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    private = [
        f"{path}:{node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
    ]
    assert private == []


def test_forgetting_ids_within_the_window_is_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(webhook, "MAX_IDS_IN_MEMORY", 2)
    with node() as n:
        for i in range(5):
            assert post(n, json.dumps(entry(f"id-{i}")).encode())[0] == 200
        assert post(n, json.dumps(entry("id-4")).encode()) == (200, {"status": "duplicate"})
        assert post(n, json.dumps(entry("id-0")).encode())[0] == 200  # forgotten: forwarded again
        assert len(n.wait_records(6)) == 6
    warnings = [r for r in caplog.records if "the oldest are forgotten" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
