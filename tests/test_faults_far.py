"""Faults at the far end, nothing lost: the LaunchDarkly output against a LaunchDarkly-compatible
server that fails in every way it can (long outages, refused connections, answers slower than
request_timeout, connections reset in the middle of a body, answers lost after the events were
accepted, 429 storms with Retry-After, 401/403/404 until fixed, 5xx bursts, redirects, all of it
mixed), in process, over real HTTP on 127.0.0.1.

The oracle, after every scenario: every admitted event reached the server, each exactly once as
the server counts (it deduplicates by payload id, as LaunchDarkly does); no event was ever sent
under two payload ids, and a payload id always carried the same bytes; the store is empty; nothing
is in the dead-letter store unless the scenario says so.

Timing assertions are lower bounds ("not before Retry-After", "not before the backoff") and loose
upper bounds (SLACK), so that a loaded machine does not make them flake.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import textwrap
import time
from collections import defaultdict
from datetime import UTC, datetime
from email.utils import format_datetime

import orjson
import pytest
from aiohttp import web
from ld_harness import TOKEN, order, until
from prometheus_client import REGISTRY

from fluent_ld.config.loader import load_text
from fluent_ld.dev.ldserver import Fault, LaunchDarklyServer
from fluent_ld.outputs.retry import MAX_RETRY_AFTER, RetryPolicy, parse_retry_after
from fluent_ld.pipeline.node import Node

T = 1_795_000_000_000_000_000
WAIT, MAX_INTERVAL = 0.05, 0.3  # retry_wait 50ms, retry_max_interval 300ms in the live tests
SLACK = 1.0  # a loaded machine: event loop and fsync latency on top of a computed time
JITTER_HIGH = 1.125


def run(coro):
    return asyncio.run(coro)


# -- the node, the server, the oracle ----------------------------------------------------------------


def far_config(url: str, path: str, *, records: int = 5, timeout: str = "5s", concurrency: int = 4, extra: str = "", buffer: str = "") -> str:
    return textwrap.dedent(
        f"""\
        <match signal.**>
          @type launchdarkly
          access_token {TOKEN}
          project_key default
          environment_key production
          events_host {url}
          request_timeout {timeout}
          max_concurrent_requests {concurrency}
          {extra}
          <buffer>
            path {path}
            flush_interval 50ms
            chunk_limit_records {records}
            retry_wait {int(WAIT * 1000)}ms
            retry_max_interval {int(MAX_INTERVAL * 1000)}ms
            retry_randomize true
            {buffer}
          </buffer>
        </match>
        """
    )


@contextlib.asynccontextmanager
async def far_node(tmp_path, server: LaunchDarklyServer | None = None, **conf):
    server = server or LaunchDarklyServer(TOKEN)
    if server.port is None:
        await server.start()
    node = Node(load_text(far_config(server.url, str(tmp_path), **conf), "far.conf"))
    await node.start()
    try:
        out = node.outputs[0][1]
        yield node, out, server, Attempts(out)
    finally:
        await node.stop()
        await server.stop()


class Attempts:
    """Every send as the output saw it: (started, ended, payload id, status or None, text,
    Retry-After, sent while paused on 401/403/404)."""

    def __init__(self, out) -> None:
        self.log: list[tuple] = []
        self.active = 0
        self.probes_active = 0
        self.probes_peak = 0  # sends in flight at once among those started while paused on 401/403/404
        real = out.sender.post

        async def post(batch):
            probe = out.auth_error is not None
            self.active += 1
            if probe:
                self.probes_active += 1
                self.probes_peak = max(self.probes_peak, self.probes_active)
            started = time.time()
            try:
                answer = await real(batch)
            finally:
                self.active -= 1
                if probe:
                    self.probes_active -= 1
            self.log.append((started, time.time(), batch.payload_id, answer.status, answer.text, answer.retry_after, probe))
            return answer

        out.sender.post = post

    def of(self, payload_id: str) -> list[tuple]:
        return [a for a in self.log if a[2] == payload_id]


class Producer:
    """Admits orders O-0, O-1, ... (each content distinct); ``n`` is how many were admitted."""

    def __init__(self, node) -> None:
        self.node = node
        self.n = 0

    async def emit(self, k: int) -> None:
        records = [(T + self.n + i, order(self.n + i)) for i in range(k)]
        await self.node.emit("signal.web", records)
        self.n += k

    async def steady(self, stop: asyncio.Event, rng: random.Random, max_batch: int = 4, pause: float = 0.04) -> None:
        while not stop.is_set():
            await self.emit(rng.randint(1, max_batch))
            await asyncio.sleep(rng.uniform(0, pause))


def by_payload(ld: LaunchDarklyServer) -> dict[str, list]:
    requests = defaultdict(list)
    for r in ld.requests:
        requests[r.payload_id].append(r)
    return requests


async def nothing_lost(out, ld: LaunchDarklyServer, admitted: int, dead: int = 0, timeout: float = 30.0) -> None:
    """The oracle (see the module docstring)."""
    await until(lambda: out.store.pending_events == 0 and not out.inflight and len(ld.events) >= admitted, timeout)
    assert len(ld.events) == admitted and ld.unique_events == admitted
    assert sorted(e["data"]["order_id"] for e in ld.events) == sorted(f"O-{n}" for n in range(admitted))
    assert out.store.dead_letter_count == dead
    # A payload id always carries the same bytes (a cut body is a prefix of them); an event's content
    # is only ever sent under one payload id, whatever the server answered.
    payloads_of: dict[bytes, set[str]] = defaultdict(set)
    for payload_id, requests in by_payload(ld).items():
        assert payload_id and len(payload_id) == 36
        whole = {r.body for r in requests if r.status != 0 or r.events is not None}
        whole |= {r.body for r in requests if r.status == 0 and _is_json(r.body)}
        assert len(whole) == 1, f"payload {payload_id} was sent with {len(whole)} different bodies"
        (body,) = whole
        assert all(body.startswith(r.body) for r in requests if r.status == 0)
        for event in orjson.loads(body):
            payloads_of[orjson.dumps(event, option=orjson.OPT_SORT_KEYS)].add(payload_id)
    assert len(payloads_of) == admitted
    assert all(len(ids) == 1 for ids in payloads_of.values())


def _is_json(body: bytes) -> bool:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


def retry_after_seconds(out) -> float:
    return REGISTRY.get_sample_value("fluentld_retry_after_seconds_total", {"plugin_id": out.id}) or 0.0


def http_date(when: float) -> str:
    return format_datetime(datetime.fromtimestamp(when, UTC), usegmt=True)


# -- 1. a long outage -----------------------------------------------------------------------------------


def test_backoff_doubles_is_capped_and_stays_within_the_jitter_bounds():
    policy = RetryPolicy(retry_wait=1.0, retry_max_interval=300.0, retry_timeout=72 * 3600.0, retry_randomize=True)
    exact = RetryPolicy(retry_wait=1.0, retry_max_interval=300.0, retry_randomize=False)
    draws = [0.0, 1e-9, 0.25, 0.5, 0.75, 0.999999, 1 - 2**-53]
    for attempts in range(1, 80):
        base = min(2.0 ** (attempts - 1), 300.0)
        assert exact.delay(attempts, 0.5) == base
        for draw in draws:
            delay = policy.delay(attempts, draw)
            assert 0.875 * base - 1e-9 <= delay <= min(JITTER_HIGH * base, 300.0) + 1e-9
            assert delay <= 300.0  # never over retry_max_interval, jitter included
            if attempts > 1:
                assert delay >= policy.delay(attempts - 1, draw)  # grows with the attempts
    assert exact.delay(0, 0.5) == 1.0  # before any attempt: retry_wait
    assert policy.delay(10**6, 0.999) == 300.0  # no overflow after a million attempts
    assert [exact.delay(a, 0) for a in range(1, 11)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    # Below the cap the jitter spreads both ways; at the cap only below it.
    assert policy.delay(3, 0.999) > 4.0 and policy.delay(3, 0.0) == 3.5
    assert policy.delay(20, 0.0) == 262.5 and policy.delay(20, 0.999) == 300.0


def test_a_72_hour_outage_on_a_fake_clock_with_retry_after_answers():
    """The output's schedule (delay = backoff, or Retry-After when longer; expiry once older than
    retry_timeout), driven through three days of explicit times."""
    policy = RetryPolicy(retry_wait=1.0, retry_max_interval=300.0, retry_timeout=72 * 3600.0, retry_randomize=True)
    rng = random.Random(7)
    created = now = 1_795_000_000.0
    attempts, gaps, retry_afters = 0, [], 0
    while not policy.expired(created, now):
        attempts += 1
        delay = policy.delay(attempts, rng.random())
        assert delay <= policy.retry_max_interval
        if rng.random() < 0.05:  # now and then the far end asks for a pause, in seconds or as a date
            header = str(rng.randint(1, 900)) if rng.random() < 0.5 else http_date(now + rng.randint(1, 900))
            asked = parse_retry_after(header, now)
            assert asked is not None and 0 <= asked <= 900
            delay = max(delay, asked)
            retry_afters += 1
            assert delay >= asked  # nothing before Retry-After
        gaps.append(delay)
        now += delay
    waited = now - created
    assert 72 * 3600 <= waited < 72 * 3600 + 900  # expired at the first attempt after retry_timeout
    capped = [g for g in gaps[12:]]
    assert min(capped) >= 0.875 * 300 - 1e-9  # at the cap the jitter keeps it within 87.5%..100%
    assert 760 < attempts < 1000 and retry_afters > 20
    assert gaps[:5] == sorted(gaps[:5])  # it grows first
    # The same outage ending after 71 hours: delivered at the next attempt, not expired.
    assert not policy.expired(created, created + 71 * 3600 + 299)


def test_retry_after_values():
    now = 1_795_000_000.0
    assert parse_retry_after("0", now) == 0.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 7 ", now) == 7.0
    assert parse_retry_after(str(10**30), now) == MAX_RETRY_AFTER  # capped: keep probing
    assert parse_retry_after(http_date(now + 42), now) == 42.0
    assert parse_retry_after(http_date(now - 42), now) == 0.0  # a date past: no pause
    assert parse_retry_after(http_date(now + 10 * 86400), now) == MAX_RETRY_AFTER
    for unreadable in (None, "", "soon", "-1", "1.5", "1e3", "+5", "0x10", "Sun, 31 Feb 2026 00:00:00 GMT", "²", "³³", "½"):
        assert parse_retry_after(unreadable, now) is None, unreadable  # ignored, never raised


def test_retry_after_dates_in_the_obsolete_formats_are_gmt_whatever_the_local_time_zone():
    """HTTP-date has three forms (RFC 9110 5.6.7), all GMT; asctime's carries no zone and the
    email parser returns it naive, which .timestamp() would read as local time."""
    now = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC).timestamp()
    forms = ("Tue, 24 Nov 2026 12:00:30 GMT", "Tuesday, 24-Nov-26 12:00:30 GMT", "Tue Nov 24 12:00:30 2026", "Tue, 24 Nov 2026 12:00:30 -0000")
    saved = os.environ.get("TZ")
    try:
        for zone in ("UTC", "America/New_York", "Asia/Kolkata"):
            os.environ["TZ"] = zone
            time.tzset()
            assert [parse_retry_after(form, now) for form in forms] == [30.0] * 4, zone
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()


def test_a_long_503_outage_backs_off_capped_and_delivers_promptly_once_it_ends(tmp_path):
    async def scenario():
        async with far_node(tmp_path) as (node, out, ld, attempts):
            ld.script(*[503] * 100_000)
            producer = Producer(node)
            await producer.emit(4)
            await asyncio.sleep(0.5)
            await producer.emit(6)
            await asyncio.sleep(1.0)
            await producer.emit(5)
            await asyncio.sleep(2.5)
            assert len(ld.events) == 0 and out.store.pending_events == 15
            ld.faults.clear()  # the outage ends
            ended = time.time()
            await nothing_lost(out, ld, producer.n)

            for requests in by_payload(ld).values():
                times = [r.time for r in requests]
                statuses = [r.status for r in requests]
                assert statuses[-1] == 202 and set(statuses[:-1]) == {503}
                gaps = [b - a for a, b in zip(times, times[1:])]
                for k, gap in enumerate(gaps, 1):
                    # Not before the backoff after the k-th failure (87.5% of it, at least) ...
                    assert gap >= 0.875 * min(WAIT * 2 ** (k - 1), MAX_INTERVAL) - 0.002, (k, gaps)
                    # ... and never longer than retry_max_interval with its jitter (plus the machine).
                    assert gap <= MAX_INTERVAL * JITTER_HIGH + SLACK, (k, gaps)
                after = [r.time for r in requests if r.time >= ended]
                assert after and after[0] - ended <= MAX_INTERVAL * JITTER_HIGH + SLACK
            longest = max(by_payload(ld).values(), key=len)
            assert len(longest) >= 10  # an outage long against the cap: it was reached
            assert max(b.time - a.time for a, b in zip(longest, longest[1:])) >= 0.875 * MAX_INTERVAL
            assert out.stats["retries"] == sum(1 for r in ld.requests if r.status == 503)

    run(scenario())


def test_a_refused_connection_outage_server_stopped_and_started_again_on_the_same_port(tmp_path):
    async def scenario():
        async with far_node(tmp_path) as (node, out, ld, attempts):
            producer = Producer(node)
            await producer.emit(3)
            await until(lambda: len(ld.events) == 3)  # a kept-alive connection to the old server
            port = ld.port
            await ld.stop()
            down = time.time()
            await producer.emit(7)
            await asyncio.sleep(0.8)
            await producer.emit(5)
            await asyncio.sleep(1.7)
            assert out.store.pending_events == 12
            await ld.start(port)
            up = time.time()
            await nothing_lost(out, ld, producer.n)

            refused = [a for a in attempts.log if down <= a[0] < up]
            assert refused and all(a[3] is None for a in refused)
            assert any("Connect" in a[4] or "Disconnect" in a[4] for a in refused)
            for payload_id in {a[2] for a in refused}:
                mine = attempts.of(payload_id)
                assert len(mine) >= 3
                for before, after in zip(mine, mine[1:]):
                    assert after[0] - before[1] <= MAX_INTERVAL * JITTER_HIGH + SLACK
                first_up = min(r.time for r in ld.requests if r.payload_id == payload_id)
                assert first_up - up <= MAX_INTERVAL * JITTER_HIGH + SLACK

    run(scenario())


# -- 2. answers slower than request_timeout ---------------------------------------------------------------


def test_answers_slower_than_request_timeout_are_retried_under_the_same_payload_id(tmp_path):
    async def scenario():
        async with far_node(tmp_path, timeout="200ms", extra="compress gzip") as (node, out, ld, attempts):
            # Three slow before handling (the server handles them after the sender gave up), then
            # three accepted at once and answered too late, then normal answers.
            ld.script(*[Fault(delay=0.6)] * 3, *[Fault(late=True, delay=0.6)] * 3)
            producer = Producer(node)
            await producer.emit(15)  # three batches of five, sent at once
            await nothing_lost(out, ld, producer.n)
            await asyncio.sleep(0.7)  # the last slow handlers finish: their events are duplicates
            await nothing_lost(out, ld, producer.n)

            failed = [a for a in attempts.log if a[3] is None]
            assert len(failed) >= 6 and all("no answer within 0.2s" in a[4] for a in failed)
            assert all(a[1] - a[0] <= 0.2 + SLACK for a in failed)  # the sender did not wait for them
            assert sum(r.duplicate for r in ld.requests) >= 3  # accepted twice, counted once
            assert len(by_payload(ld)) == 3
            assert out.stats["retries"] >= 6

    run(scenario())


# -- 3. connections reset mid-body, answers lost ------------------------------------------------------------


def test_connections_reset_mid_body_and_answers_lost_after_acceptance(tmp_path):
    async def scenario():
        async with far_node(tmp_path, records=40, concurrency=2) as (node, out, ld, attempts):
            ld.script(
                Fault(cut=1000),
                Fault(cut=1),
                Fault(cut=0),
                Fault(drop=True),
                Fault(drop=True, late=True),
                Fault(cut=4000),
                Fault(drop=True, late=True),
                Fault(cut=2500),
            )
            producer = Producer(node)
            await producer.emit(120)  # three batches of ~6.5 kB
            await nothing_lost(out, ld, producer.n)

            cut = [r for r in ld.requests if r.status == 0 and not _is_json(r.body)]
            assert len(cut) >= 4 and any(0 < len(r.body) < 6000 for r in cut)
            assert sum(r.duplicate for r in ld.requests) >= 2  # accepted, answer lost, sent again
            assert sum(1 for a in attempts.log if a[3] is None) == 8
            assert out.stats["retries"] == 8

    run(scenario())


def test_a_reset_while_the_sender_is_still_writing_a_large_body(tmp_path):
    async def scenario():
        async with far_node(tmp_path, records=50_000, buffer="chunk_limit_size 8m") as (node, out, ld, attempts):
            ld.script(Fault(cut=10_000), Fault(cut=3_000_000))
            producer = Producer(node)
            await producer.emit(30_000)  # one ~5 MB batch: the reset comes mid-transfer
            await nothing_lost(out, ld, producer.n, timeout=45)
            assert [r.status for r in ld.requests] == [0, 0, 202]
            assert len(ld.requests[0].body) == 10_000 and len(ld.requests[1].body) == 3_000_000
            assert len(ld.requests[2].body) > 4_000_000
            assert [a[3] for a in attempts.log] == [None, None, 202]

    run(scenario())


# -- 4. a 429 storm with Retry-After -----------------------------------------------------------------------


def test_429_with_retry_after_in_seconds_and_as_a_date_then_recovery(tmp_path):
    async def scenario():
        async with far_node(tmp_path, concurrency=1) as (node, out, ld, attempts):
            seconds_before = retry_after_seconds(out)
            ld.script(Fault(status=429, headers={"Retry-After": "1"}))
            producer = Producer(node)
            await producer.emit(10)  # two batches, one request at a time
            await until(lambda: ld.requests)
            date = math.ceil(time.time()) + 2
            ld.script(
                Fault(status=429, headers={"Retry-After": http_date(date)}),
                Fault(status=503, headers={"Retry-After": "1"}),  # Retry-After on a 5xx pauses too
                Fault(status=429),  # no Retry-After: the backoff
            )
            await nothing_lost(out, ld, producer.n)

            answers = [(r.time, r.status) for r in ld.requests]
            assert [s for _, s in answers] == [429, 429, 503, 429, 202, 202]
            first, second, third = ld.requests[:3]
            pauses = [(first.time, first.time + 1), (second.time, float(date)), (third.time, third.time + 1)]
            for start, end in pauses:
                later = [r.time for r in ld.requests if r.time > start]
                assert later and min(later) >= end  # no request before Retry-After passed
            assert min(r.time for r in ld.requests[4:]) - third.time >= 1.0
            assert out.stats["retry_after_pauses"] == 3
            paused = 1 + (date - second.time) + 1
            assert retry_after_seconds(out) - seconds_before >= paused - 0.1
            assert ld.requests[-1].time - ld.requests[3].time <= 0.3 * JITTER_HIGH + SLACK  # then recovers

    run(scenario())


def test_a_429_storm_with_many_requests_in_flight(tmp_path):
    async def scenario():
        async with far_node(tmp_path, records=2, concurrency=4) as (node, out, ld, attempts):
            ld.script(*[Fault(status=429, headers={"Retry-After": "1"})] * 12)
            producer = Producer(node)
            await producer.emit(20)  # ten batches, four in flight at once
            await nothing_lost(out, ld, producer.n, timeout=40)

            for requests in by_payload(ld).values():
                for before, after in zip(requests, requests[1:]):
                    if before.status == 429:
                        assert after.time - before.time >= 1.0  # this payload waited its Retry-After
            storm = [r for r in ld.requests if r.status == 429]
            assert len(storm) == 12 and out.stats["retry_after_pauses"] == 12
            # Pauses do not pile up: the storm is over within a few Retry-Afters, not twelve.
            assert max(r.time for r in ld.requests) - ld.requests[0].time < 12

    run(scenario())


def test_an_unreadable_retry_after_is_ignored_and_the_backoff_applies(tmp_path):
    async def scenario():
        async with far_node(tmp_path) as (node, out, ld, attempts):
            ld.script(
                Fault(status=503, headers={"Retry-After": "²"}),
                Fault(status=503, headers={"Retry-After": "soon"}),
                Fault(status=429, headers={"Retry-After": "-3"}),
            )
            producer = Producer(node)
            await producer.emit(1)
            await nothing_lost(out, ld, producer.n)
            assert [r.status for r in ld.requests] == [503, 503, 429, 202]
            times = [r.time for r in ld.requests]
            for k, (a, b) in enumerate(zip(times, times[1:]), 1):
                assert b - a >= 0.875 * WAIT * 2 ** (k - 1) - 0.002
            assert out.stats["retry_after_pauses"] == 0 and out.stats["retries"] == 3

    run(scenario())


@pytest.mark.parametrize("first", ["429", "401"])
def test_a_401_from_a_request_in_flight_never_cuts_a_retry_after_pause_short(tmp_path, first):
    """Two requests in flight: one answered 429 Retry-After: 2, the other 401 (or first the 401,
    then the 429), then a third answered 202 by a server that takes the token again. Nothing may
    reach the server before the Retry-After pause has passed."""

    async def scenario():
        async with far_node(tmp_path, records=1, concurrency=3) as (node, out, ld, attempts):
            limited = Fault(status=429, headers={"Retry-After": "2"})
            if first == "429":
                ld.script(limited, Fault(delay=0.1, status=401), Fault(delay=0.2))
            else:
                ld.script(Fault(status=401), Fault(delay=0.1, status=429, headers={"Retry-After": "2"}), Fault(delay=0.2))
            producer = Producer(node)
            await producer.emit(3)  # three batches of one, in flight at once
            await nothing_lost(out, ld, producer.n)

            (asked,) = [r for r in ld.requests if r.status == 429]
            assert [r.status for r in ld.requests[:3]] == ([429, 401, 202] if first == "429" else [401, 429, 202])
            # The three were in flight before the 429; everything after waited for its end.
            assert [r.status for r in ld.requests[3:]] == [202, 202]
            assert all(r.time >= asked.time + 2 for r in ld.requests[3:]), [(round(r.time - asked.time, 3), r.status) for r in ld.requests]
            assert out.auth_error is None

    run(scenario())


def test_a_pause_that_comes_while_the_store_is_read_holds_the_batches_already_read(tmp_path):
    """The drain checks the pause, then reads due batches from the store (a writer-thread round
    trip: long on a loaded disk). A 429 Retry-After answered meanwhile must hold those batches too."""

    async def scenario():
        async with far_node(tmp_path, records=1, concurrency=4) as (node, out, ld, attempts):
            ld.script(Fault(delay=0.1, status=429, headers={"Retry-After": "2"}))
            real_cut = out.store.cut_batches

            async def slow_cut(*args, **kwargs):
                await asyncio.sleep(0.6)  # a loaded disk
                return await real_cut(*args, **kwargs)

            # Slow from the start: an event emitted later can only be cut by a cycle that began
            # after it (a cut already under way could take it in the same writer group, and its
            # batch would go out before the 429 came back).
            out.store.cut_batches = slow_cut
            producer = Producer(node)
            await producer.emit(1)
            await until(lambda: attempts.active == 1)  # the first batch is in flight, its answer coming
            await producer.emit(1)  # the drain wakes, finds no pause, and reads the store slowly
            await until(lambda: ld.requests)
            await asyncio.sleep(0.8)
            out.store.cut_batches = real_cut
            await nothing_lost(out, ld, producer.n)

            asked = ld.requests[0]
            assert asked.status == 429
            assert all(r.time >= asked.time + 2 for r in ld.requests[1:]), [(round(r.time - asked.time, 3), r.status) for r in ld.requests]

    run(scenario())


# -- 5. 401 (403, 404) until fixed, while events keep arriving --------------------------------------------


@pytest.mark.parametrize("status", [401, 403, 404])
def test_refused_credentials_then_a_fix_while_events_keep_arriving(tmp_path, status):
    async def scenario():
        if status == 401:
            server = LaunchDarklyServer("the-rotated-token")
        elif status == 404:
            server = LaunchDarklyServer(TOKEN, projects={"default": ["staging"]})
        else:
            server = LaunchDarklyServer(TOKEN)
        async with far_node(tmp_path, server=server, records=3) as (node, out, ld, attempts):
            if status == 403:
                ld.script(*[Fault(status=403, delay=0.1)] * 10_000)
            else:
                ld.script(*[Fault(delay=0.1)] * 10_000)  # every answer takes 100 ms: overlaps would show
            rng = random.Random(status)
            producer = Producer(node)
            stop = asyncio.Event()
            producing = asyncio.get_running_loop().create_task(producer.steady(stop, rng, max_batch=3, pause=0.08))
            await asyncio.sleep(1.5)
            assert out.auth_error == status and len(ld.events) == 0
            assert out.store.pending_events == producer.n  # everything admitted meanwhile is kept
            assert {r.status for r in ld.requests} == {status}
            # The fix.
            if status == 401:
                ld.token = TOKEN
            elif status == 404:
                ld.projects["default"].append("production")
            else:
                ld.faults[:] = [Fault(delay=0.1)] * 10_000
            fixed = time.time()
            await asyncio.sleep(0.6)
            stop.set()
            await producing
            ld.faults.clear()
            await nothing_lost(out, ld, producer.n)

            refused = [r for r in ld.requests if r.status == status]
            assert len(refused) >= 3
            assert attempts.probes_peak == 1  # while paused, one batch at a time
            # Probes (sent while paused) come every min(60 s, retry_max_interval), not faster.
            probes = [a for a in attempts.log if a[6]]
            assert len(probes) >= 3
            for before, after in zip(probes, probes[1:]):
                if before[3] == status:
                    assert after[0] - before[1] >= MAX_INTERVAL - 0.002
            first_accepted = min(r.time for r in ld.requests if r.status == 202)
            assert first_accepted - fixed <= MAX_INTERVAL + 0.1 + SLACK
            assert out.auth_error is None
            assert REGISTRY.get_sample_value("fluentld_output_auth_error", {"plugin_id": out.id}) == 0

    run(scenario())


# -- 6. 5xx bursts between successes under a steady stream ----------------------------------------------------


def test_5xx_and_timeout_bursts_between_successes_under_a_steady_stream(tmp_path):
    async def scenario():
        rng = random.Random(7)
        menu = [500, 502, 503, 504, Fault(delay=0.4), Fault(late=True, delay=0.4)]
        script: list[Fault | int] = []
        while len(script) < 400:
            script += [rng.choice(menu) for _ in range(rng.randint(1, 8))]
            script += [Fault() for _ in range(rng.randint(1, 6))]
        async with far_node(tmp_path, timeout="200ms") as (node, out, ld, attempts):
            ld.script(*script)
            producer = Producer(node)
            stop = asyncio.Event()
            producing = asyncio.get_running_loop().create_task(producer.steady(stop, random.Random(8)))
            await asyncio.sleep(1.5)
            assert ld.events  # deliveries between the bursts, not only at the end
            await asyncio.sleep(1.5)
            stop.set()
            await producing
            ld.faults.clear()
            await nothing_lost(out, ld, producer.n)

            statuses = {r.status for r in ld.requests}
            assert {500, 502, 503, 504, 202} <= statuses
            assert any(a[3] is None for a in attempts.log)  # timeouts
            assert producer.n > 100

    run(scenario())


# -- 7. all of it, mixed ------------------------------------------------------------------------------


def test_everything_mixed_in_one_seeded_run(tmp_path):
    async def scenario():
        rng = random.Random(7)
        async with far_node(tmp_path, timeout="250ms", records=6) as (node, out, ld, attempts):
            port = ld.port
            producer = Producer(node)
            stop = asyncio.Event()
            producing = asyncio.get_running_loop().create_task(producer.steady(stop, random.Random(8), pause=0.06))
            kinds = ["burst", "slow", "reset", "storm", "refuse", "auth", "calm"] * 2
            rng.shuffle(kinds)
            for kind in kinds:
                if kind == "burst":
                    ld.script(*[rng.choice([500, 502, 503, 504]) for _ in range(rng.randint(1, 8))])
                elif kind == "slow":
                    ld.script(*[Fault(delay=0.5, late=rng.random() < 0.5) for _ in range(rng.randint(1, 3))])
                elif kind == "reset":
                    resets = [Fault(cut=rng.randint(0, 900)), Fault(drop=True), Fault(drop=True, late=True)]
                    ld.script(*[rng.choice(resets) for _ in range(rng.randint(1, 3))])
                elif kind == "storm":
                    ld.script(
                        *[
                            Fault(status=429, headers={"Retry-After": "1" if rng.random() < 0.5 else http_date(math.ceil(time.time()) + 1)})
                            for _ in range(rng.randint(1, 4))
                        ]
                    )
                elif kind == "refuse":
                    await ld.stop()
                    down = time.time()
                    await asyncio.sleep(rng.uniform(0.3, 1.0))
                    await until(lambda: any(a[0] >= down and a[3] is None for a in attempts.log), 20)
                    await ld.start(port)
                elif kind == "auth":
                    rotated = time.time()
                    ld.token = "rotated"
                    await asyncio.sleep(rng.uniform(0.3, 1.0))
                    await until(lambda: any(r.time >= rotated and r.status == 401 for r in ld.requests), 20)
                    ld.token = TOKEN
                await asyncio.sleep(rng.uniform(0.2, 0.7))
            await until(lambda: not ld.faults, 20)  # every scripted fault met a request
            stop.set()
            await producing
            await nothing_lost(out, ld, producer.n, timeout=45)

            statuses = {r.status for r in ld.requests}
            assert {0, 401, 429, 202} <= statuses and statuses & {500, 502, 503, 504}
            # No send started before a Retry-After the output had been answered had passed.
            for _, ended, _, status, _, retry_after, _ in attempts.log:
                if retry_after is not None:
                    end = ended + parse_retry_after(retry_after, ended)
                    assert all(a[0] >= end - 0.002 for a in attempts.log if a[0] > ended), (status, retry_after)
            assert out.auth_error is None and out.paused_until <= time.time()

    run(scenario())


# -- beyond LaunchDarkly: a redirect at the far end -------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_never_taken_for_a_delivery(tmp_path, status):
    """A proxy or load balancer in front of the import API answers a redirect: to a page that
    answers 200 to anything (a portal), or, for 307/308, to the import path of another environment.
    Following it would count the batch delivered while LaunchDarkly never imported it there."""

    async def scenario():
        async def portal(request):
            await request.read()
            return web.Response(status=200, text="welcome")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", portal)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        elsewhere = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/welcome"
        try:
            async with far_node(tmp_path) as (node, out, ld, attempts):
                same_host_other_env = f"{ld.url}/v2/event-data-import/default/test"
                target = same_host_other_env if status in (307, 308) else elsewhere
                ld.script(*[Fault(status=status, headers={"Location": target})] * 2)
                producer = Producer(node)
                await producer.emit(3)
                await nothing_lost(out, ld, producer.n)
                assert [r.status for r in ld.requests] == [status, status, 202]
                assert all(r.path.endswith("/default/production") for r in ld.requests)
                assert [a[3] for a in attempts.log] == [status, status, 202]
        finally:
            await runner.cleanup()

    run(scenario())
