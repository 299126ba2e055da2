"""Will the events count? `fluent-ld verify` against the LaunchDarkly-compatible server's REST API
(real HTTP, the real console script), the pure assessment per case, and the runtime check
(verify_on_start, events for keys with no metric, stale events)."""

import asyncio
import json
import subprocess
import textwrap
import time
from collections import Counter

import pytest
from ld_harness import TOKEN, ServerThread, ld_node, order, until
from prometheus_client import REGISTRY

from fluent_ld.dev.ldserver import LaunchDarklyServer, metric
from fluent_ld.launchdarkly.preset import EventRule
from fluent_ld.launchdarkly.verification import CANNOT_TELL, COUNTS, DOES_NOT_COUNT, api_base, assess

# The Default preset's keys: the ones that send a value (metric_value) and those that do not.
VALUED = {"product_viewed", "add_to_cart", "begin_checkout", "order_completed"}
PLAIN = {"page_view", "sign_up"}


def every_metric() -> list[dict]:
    return [metric(k, numeric=True) for k in sorted(VALUED)] + [metric(k) for k in sorted(PLAIN)]


# -- the assessment, pure ------------------------------------------------------------------------------


def test_api_base_follows_the_events_host():
    assert api_base("events.launchdarkly.com", None) == "https://app.launchdarkly.com"
    assert api_base("events.eu.launchdarkly.com", None) == "https://app.eu.launchdarkly.com"
    assert api_base("events.launchdarkly.us", None) == "https://app.launchdarkly.us"
    assert api_base("http://127.0.0.1:8080/", None) == "http://127.0.0.1:8080"
    assert api_base("events.launchdarkly.com", "app.example.com") == "https://app.example.com"
    assert api_base("events.launchdarkly.com", "http://127.0.0.1:9") == "http://127.0.0.1:9"


def test_each_case_of_the_assessment():
    rules = [
        EventRule("Order Completed", "order_completed", "revenue"),
        EventRule("Signed Up", "sign_up"),
        EventRule("Page", "page_view"),
        EventRule("Product Viewed", "product_viewed", "value"),
    ]
    metrics = [
        metric("revenue", "order_completed", numeric=True),
        metric("signups", "sign_up", numeric=True),  # numeric, and the preset sends no value
        metric("viewed", "product_viewed"),  # a conversion metric while a value is sent
        metric("orphan", "newsletter_opened"),
        metric("clicks", kind="click"),
    ]
    report = assess(rules, metrics, "p/e", 1.0)
    by_key = {k.key: k for k in report.keys}
    assert report.status == DOES_NOT_COUNT and report.missing == {"page_view"}
    assert by_key["order_completed"].problem is None and by_key["order_completed"].kind == "numeric"
    assert "needs a value" in by_key["sign_up"].problem
    assert by_key["product_viewed"].problem is None and "ignores the metricValue" in by_key["product_viewed"].note
    assert "no custom metric" in by_key["page_view"].problem
    assert report.unused == ("orphan (newsletter_opened)",)
    assert len(report.problems()) == 2
    assert assess(rules[:1], metrics, "p/e", 1.0).status == COUNTS


# -- fluent-ld verify against the development server ------------------------------------------------------


def write_config(tmp_path, url: str, environment: str = "production", extra: str = "") -> str:
    conf = tmp_path / "verify.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            <match signal.**>
              @type launchdarkly
              @id to_ld
              access_token {TOKEN}
              project_key default
              environment_key {environment}
              events_host {url}
              {extra}
              <buffer>
                path {tmp_path}
              </buffer>
            </match>
            """
        )
    )
    return str(conf)


def verify(console_script, conf: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([console_script, "verify", "-c", conf, *args], capture_output=True, text=True, timeout=60)


def test_keys_with_and_without_metrics(console_script, tmp_path):
    metrics = [metric("checkout-revenue", "order_completed", numeric=True), metric("signups", "sign_up")]
    metrics += [metric(f"filler-{n}", f"other_{n}") for n in range(30)]  # the project's metrics span two pages
    metrics.append(metric("carts", "add_to_cart", numeric=True))  # on the second page
    server = LaunchDarklyServer(TOKEN, metrics={"default": metrics})
    with ServerThread(server) as ld:
        result = verify(console_script, write_config(tmp_path, ld.url))
        assert result.returncode == 1, result.stdout + result.stderr
        lines = {key: line for line in result.stdout.splitlines() for key in VALUED | PLAIN if f" {key} " in line}
        assert "checkout-revenue" in lines["order_completed"] and lines["order_completed"].rstrip().endswith("ok")
        assert "carts" in lines["add_to_cart"]  # found on the second page
        for key in ("page_view", "product_viewed", "begin_checkout"):
            assert "PROBLEM: no custom metric" in lines[key]
        assert "WILL NOT COUNT: 3 of 6 mapped event(s) will not count" in result.stdout
        assert "metrics no mapped event feeds (information): filler-0 (other_0)" in result.stdout
        assert any("offset=20" in path for path in ld.rest_requests)

        report = json.loads(verify(console_script, write_config(tmp_path, ld.url), "--json").stdout)["to_ld"]
        assert report["status"] == 1 and {k["key"] for k in report["keys"] if k["problem"]} == {"page_view", "product_viewed", "begin_checkout"}


def test_every_key_with_a_metric_exits_0(console_script, tmp_path):
    with ServerThread(LaunchDarklyServer(TOKEN, metrics={"default": every_metric()})) as ld:
        result = verify(console_script, write_config(tmp_path, ld.url))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "OK: all 6 mapped event(s) will count" in result.stdout


def test_a_token_that_cannot_read_metrics_exits_2_and_says_what_reading_needs(console_script, tmp_path):
    server = LaunchDarklyServer(TOKEN, metrics={"default": every_metric()}, api_token="a-reader-token")
    with ServerThread(server) as ld:
        result = verify(console_script, write_config(tmp_path, ld.url))
        assert result.returncode == 2
        assert "answered 401" in result.stdout and "Event imports may still work" in result.stdout
        assert "Reader role" in result.stdout and "api_token" in result.stdout
        # The reading token as api_token: it can tell.
        result = verify(console_script, write_config(tmp_path, ld.url, extra="api_token a-reader-token"))
        assert result.returncode == 0, result.stdout
        server.rest_fault = 403
        assert verify(console_script, write_config(tmp_path, ld.url)).returncode == 2


def test_a_wrong_environment_or_project_key_is_named(console_script, tmp_path):
    with ServerThread(LaunchDarklyServer(TOKEN, metrics={"default": every_metric()})) as ld:
        result = verify(console_script, write_config(tmp_path, ld.url, environment="prod"))
        assert result.returncode == 1
        assert "environment 'prod' does not exist in project 'default'" in result.stdout
        assert "its environments: production, test" in result.stdout
        conf = write_config(tmp_path, ld.url)
        (tmp_path / "verify.conf").write_text(open(conf).read().replace("project_key default", "project_key nope"))
        result = verify(console_script, conf)
        assert result.returncode == 1 and "project 'nope' does not exist" in result.stdout


def test_no_answer_exits_2(console_script, tmp_path):
    result = verify(console_script, write_config(tmp_path, "http://127.0.0.1:9"))
    assert result.returncode == 2 and "cannot reach the REST API" in result.stdout


# -- at run time ------------------------------------------------------------------------------------------


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_verify_on_start_counts_events_for_keys_with_no_metric_and_stale_events(tmp_path, caplog):
    async def scenario():
        server = LaunchDarklyServer(TOKEN, metrics={"default": [m for m in every_metric() if m["eventKey"] != "order_completed"]})
        await server.start()
        async with ld_node(tmp_path, extra="verify_on_start true\n  stale_after 1h", server=server) as (node, out, ld):
            await until(lambda: out.verification is not None)
            assert out.verification["status"] == 1
            assert out.missing_keys == {"order_completed"}
            assert value("fluentld_verify_metric_found", plugin_id=out.id, key="order_completed") == 0
            assert value("fluentld_verify_metric_found", plugin_id=out.id, key="sign_up") == 1
            assert value("fluentld_verify_status", plugin_id=out.id) == 1
            assert any("order_completed: no custom metric" in r.getMessage() for r in caplog.records)
            before = value("fluentld_events_without_metric_total", plugin_id=out.id, key="order_completed")
            stale_before = value("fluentld_stale_events_total", plugin_id=out.id, key="sign_up")
            now_ns = time.time_ns()
            old = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3 * 3600))
            await node.emit(
                "signal.web",
                [
                    (now_ns, order(1)),
                    (now_ns, order(2)),
                    (now_ns, {"type": "track", "event": "Signed Up", "user_id": "u1", "timestamp": old}),
                    (now_ns, {"type": "track", "event": "Signed Up", "user_id": "u2"}),
                ],
            )
            await until(lambda: len(ld.events) == 4)
            await until(lambda: out.store.pending_events == 0)
            assert value("fluentld_events_without_metric_total", plugin_id=out.id, key="order_completed") - before == 2
            assert value("fluentld_stale_events_total", plugin_id=out.id, key="sign_up") - stale_before == 1
            assert out.stale_counts["sign_up"] >= 1

    asyncio.run(scenario())


@pytest.mark.parametrize("status", [401, 500])
def test_verify_on_start_that_cannot_tell_keeps_sending(tmp_path, caplog, status):
    async def scenario():
        server = LaunchDarklyServer(TOKEN, metrics={"default": every_metric()})
        server.rest_fault = status
        await server.start()
        async with ld_node(tmp_path, extra="verify_on_start true", server=server) as (node, out, ld):
            await until(lambda: out.verification is not None)
            assert out.verification["status"] == CANNOT_TELL
            assert value("fluentld_verify_status", plugin_id=out.id) == 2
            assert any("Cannot verify against LaunchDarkly" in r.getMessage() for r in caplog.records)
            await node.emit("signal.web", [(time.time_ns(), order(1))])
            await until(lambda: len(ld.events) == 1)

    asyncio.run(scenario())


def test_stale_events_are_counted_once_their_delivery_is_committed(tmp_path):
    # The store fails to record the first delivery (a full disk): the batch is sent again, with
    # the same payload id, and its events must not be counted twice.
    from fluent_ld.store import StoreError

    async def scenario():
        async with ld_node(tmp_path) as (node, out, ld):
            store_delivered = out.store.delivered
            failures = []

            async def fails_once(batch):
                if not failures:
                    failures.append(batch.payload_id)
                    raise StoreError("database or disk is full")
                await store_delivered(batch)

            out.store.delivered = fails_once
            stale_before = value("fluentld_stale_events_total", plugin_id=out.id, key="order_completed")
            await node.emit("signal.web", [(time.time_ns(), order(1))])  # its timestamp is weeks old
            await until(lambda: out.store.pending_events == 0)
            assert len(failures) == 1 and len(ld.requests) == 2
            assert out.stale_counts == {"order_completed": 1}
            assert value("fluentld_stale_events_total", plugin_id=out.id, key="order_completed") - stale_before == 1

    asyncio.run(scenario())


def test_a_next_page_on_another_host_is_not_followed_with_the_token(tmp_path):
    """The token goes with every page read: a next link to another origin is refused."""
    from aiohttp import web

    from fluent_ld.launchdarkly.rest import verify as check

    async def scenario():
        seen = []

        async def environment(request):
            return web.json_response({"key": "production"})

        async def metrics(request):
            seen.append(request.headers.get("Authorization"))
            return web.json_response(
                {"items": [metric("orders", "order_completed")], "_links": {"next": {"href": "http://example.invalid/api/v2/metrics/default?offset=20"}}}
            )

        app = web.Application()
        app.router.add_get("/api/v2/projects/default/environments/production", environment)
        app.router.add_get("/api/v2/metrics/default", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            report = await check(base, TOKEN, "default", "production", [EventRule("Order Completed", "order_completed")], timeout=5)
        finally:
            await runner.cleanup()
        assert report.status == CANNOT_TELL and "another host" in report.message
        assert seen == [TOKEN]  # one page read, on the REST host

    asyncio.run(scenario())


def test_counting_by_key_in_the_regex_engine_is_exact():
    """count_events against a plain parse of every event, for creationDates on both sides of many
    cutoffs (fewer digits, the same digits, negatives, keys with escapes)."""
    import random

    import orjson

    from fluent_ld.launchdarkly.verification import count_events

    rng = random.Random(7)
    keys = ["order_completed", "sign_up", 'odd"key\\x', "page_view"]
    for _ in range(200):
        cutoff = rng.choice([rng.randrange(10**12, 10**13), rng.randrange(1, 10**6), 10**12, 1795521600000])
        events = []
        for _ in range(rng.randrange(1, 60)):
            created = rng.choice([cutoff, cutoff - 1, cutoff + 1, rng.randrange(0, 2 * cutoff + 2), -rng.randrange(1, 10**6), rng.randrange(0, 10)])
            events.append({"kind": "custom", "key": rng.choice(keys), "creationDate": created, "metricValue": 1, "data": {"key": "x"}})
        data = b",".join(orjson.dumps(e) for e in events)
        missing = {"sign_up", 'odd"key\\x'}
        no_metric, stale = count_events(data, missing, cutoff, True)
        assert no_metric == Counter(e["key"] for e in events if e["key"] in missing)
        assert stale == Counter(e["key"] for e in events if e["creationDate"] < cutoff)
