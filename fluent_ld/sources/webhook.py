"""``@type launchdarkly_webhook``: LaunchDarkly audit-log entries (flag, environment, member
changes) into the log pipeline, verified, filtered, deduplicated and in ``date`` order.

Per request: size limit (413) -> ``X-LD-Signature`` = hex HMAC-SHA256 of the raw body, compared in
constant time (401, nothing kept) -> JSON audit entry (a signed body that is not one: dead letter,
202, since a retry would not help) -> seen ``_id`` (200, not forwarded again: LaunchDarkly retries
once and a signature does not stop replays) -> policy (denied: 200, counted) -> optionally held
``reorder_window`` to be emitted in ``date`` order -> admitted by the output the tag routes to ->
2xx. Under backpressure: 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import hmac
import itertools
import os
import sqlite3
import ssl
import time
from collections import OrderedDict
from typing import Any

import orjson
from aiohttp import web

from fluent_ld import metrics
from fluent_ld.config.errors import ConfigError
from fluent_ld.config.params import Arg, Bool, Enum, Integer, JSONValue, Param, Section, Size, String, Time
from fluent_ld.plugin import BufferFullError, Source, StartError
from fluent_ld.sources.webhook_policy import PolicyError, compile_policy

TRANSPORT = Section(
    "transport",
    "Serve HTTPS: `<transport tls>` with a certificate.",
    params=(
        Param("cert_path", String(), None, "The server certificate (PEM), with its chain."),
        Param("private_key_path", String(), None, "The server's private key (PEM)."),
    ),
    arg=Arg("protocol", "tcp or tls.", Enum("tcp", "tls")),
)

RETRY_AFTER_SECONDS = 5
# The latest ``date`` (Unix ms) every output can carry: the forward protocol's EventTime holds
# 32-bit seconds (February 2106). Later dates would fail at the output, answered 500 forever.
MAX_DATE_MS = (2**32 - 1) * 1000 + 999
# The most entry ids remembered in memory (no state_path), within dedup_window: ~200 bytes each, so
# ~20 MB. LaunchDarkly's audit log of even a large account sees far fewer changes a day. Past it the
# oldest ids are forgotten first, and a replay of one of them would be forwarded again (logged);
# state_path keeps any number of them on disk.
MAX_IDS_IN_MEMORY = 100_000
# Stat names -> the outcome label of fluentld_webhook_requests_total.
_OUTCOMES = {"duplicates": "duplicate", "admit_failures": "admit_failure"}


class LaunchDarklyWebhookSource(Source):
    type_name = "launchdarkly_webhook"
    served_once = True  # one HTTP port; with workers, worker 0 serves it
    summary = "Receives LaunchDarkly webhooks (audit-log entries), verifies and filters them, and emits them as records."
    section = Section(
        "source",
        summary,
        params=(
            Param("bind", String(), "127.0.0.1", "The address to listen on (0.0.0.0: every interface)."),
            Param("port", Integer(0, 65535), 9880, "The HTTP port (0: any free port)."),
            Param("path", String(), "/launchdarkly/webhook", "The URL path LaunchDarkly posts to."),
            Param("secret", String(), None, "The webhook's signing secret: every request must carry a valid X-LD-Signature.", secret=True),
            Param("allow_unsigned", Bool(), False, "Accept requests without a signature when no secret is set (logged as a warning at start)."),
            Param("tag", String(), "launchdarkly.audit", "The tag of the emitted records."),
            Param("body_size_limit", Size(min=1024, max=64 * 1024 * 1024), 1024 * 1024, "The largest request body; larger ones get 413."),
            Param("policy", JSONValue(), None, "A JSON array of policy statements (LaunchDarkly's custom-role syntax) that entries must pass."),
            Param("dedup_window", Time(min=0), 24 * 3600.0, "How long an entry `_id` is remembered, to drop LaunchDarkly's retries and replays."),
            Param("state_path", String(), None, "A folder for the remembered ids (survive restarts); unset: in memory."),
            Param("reorder_window", Time(min=0), 0.0, "Hold entries this long and emit them in `date` order (0: as they come)."),
        ),
        sections=(TRANSPORT,),
    )

    @classmethod
    def check(cls, conf) -> list[ConfigError]:
        label = "<source> @type launchdarkly_webhook"
        errors = []
        if conf.secret is None and not conf.allow_unsigned:
            errors.append(
                ConfigError(conf.where, f"{label}: set 'secret' (the webhook's signing secret), or 'allow_unsigned true' to accept unsigned requests")
            )
        if conf.policy is not None:
            try:
                compile_policy(conf.policy)
            except PolicyError as exc:
                errors.append(ConfigError(conf.where_of("policy"), f"{label}: parameter 'policy': {exc}"))
        if not conf.path.startswith("/"):
            errors.append(ConfigError(conf.where_of("path"), f"{label}: parameter 'path' must start with '/'"))
        transport = conf.transport
        if transport is not None and transport.arg == "tls" and not (transport.cert_path and transport.private_key_path):
            errors.append(ConfigError(transport.where, f"{label} <transport tls>: needs 'cert_path' and 'private_key_path'"))
        return errors

    def __init__(self, conf, plugin_id, emitter) -> None:
        super().__init__(conf, plugin_id, emitter)
        self.policy = compile_policy(conf.policy) if conf.policy is not None else None
        self.secret = conf.secret.reveal().encode() if conf.secret is not None else None
        self.port: int | None = None
        self.seen = SeenIds(os.path.join(conf.state_path, f"{plugin_id}.sqlite3") if conf.state_path else None, conf.dedup_window)
        self._runner: web.AppRunner | None = None
        self._held: list[tuple[int, int, dict, asyncio.Future]] = []  # (date, seq, entry, future)
        self._seq = itertools.count()
        self._flusher: asyncio.Task | None = None
        self._in_flight: set[str] = set()
        self._warned_forgotten = False

    def count(self, name: str, n: int = 1) -> None:
        super().count(name, n)
        if name == "requests":
            return
        metrics.WEBHOOK_REQUESTS.labels(self.id, _OUTCOMES.get(name, name)).inc(n)
        if name == "forwarded":
            metrics.RECORDS_RECEIVED.labels(self.id).inc(n)

    async def start(self) -> None:
        conf = self.conf
        if self.secret is None:
            self.log.warning("Accepting UNSIGNED webhooks (allow_unsigned true): anyone who can reach %s:%s can inject records.", conf.bind, conf.port)
        if self.policy is not None:
            for warning in self.policy.warnings:
                self.log.warning("Policy: %s", warning)
        await self.seen.open()
        app = web.Application(client_max_size=conf.body_size_limit)
        app.router.add_post(conf.path, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        tls = None
        if conf.transport is not None and conf.transport.arg == "tls":
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                tls.load_cert_chain(conf.transport.cert_path, conf.transport.private_key_path)
            except (OSError, ssl.SSLError) as exc:
                raise StartError(f"<transport tls>: cannot load the certificates: {exc}") from exc
        site = web.TCPSite(self._runner, conf.bind, conf.port, ssl_context=tls)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise StartError(f"cannot listen on {conf.bind}:{conf.port}: {exc.strerror or exc}") from exc
        self.port = self._runner.addresses[0][1]
        if conf.reorder_window:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_held())
        scheme = "https" if tls else "http"
        self.log.info("Listening for LaunchDarkly webhooks on %s://%s:%d%s.", scheme, conf.bind, self.port, conf.path)

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        # Entries still held for ordering are emitted now: they were accepted.
        while self._held:
            await self._emit_held(heapq.heappop(self._held))
        if self._runner is not None:
            await self._runner.cleanup()
        await self.seen.close()

    # -- a request -------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        self.count("requests")
        if request.content_length is not None and request.content_length > self.conf.body_size_limit:
            self.count("too_large")
            return web.json_response({"error": "body too large"}, status=413)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.count("too_large")
            return web.json_response({"error": "body too large"}, status=413)
        if self.secret is not None:
            given = request.headers.get("X-LD-Signature", "")
            expected = hmac.new(self.secret, body, hashlib.sha256).hexdigest()
            # "replace": a header may carry any byte (aiohttp decodes it with surrogateescape).
            if not hmac.compare_digest(given.strip().lower().encode("utf-8", "replace"), expected.encode()):
                self.count("bad_signature")
                self.log.warning("Refused a webhook from %s: %s X-LD-Signature.", request.remote, "wrong" if given else "no")
                return web.json_response({"error": "invalid signature"}, status=401)
        entry, reason = _parse_entry(body)
        if entry is None:
            self.count("invalid")
            await self.emitter.dead_letter(self.conf.tag, body, f"not a LaunchDarkly audit entry: {reason}")
            self.log.warning("A signed webhook is not an audit entry (%s): kept as a dead letter.", reason)
            return web.json_response({"status": "not an audit entry: kept as a dead letter"}, status=202)
        entry_id = entry["_id"]
        if entry_id in self._in_flight or await self.seen.contains(entry_id):
            self.count("duplicates")
            return web.json_response({"status": "duplicate"}, status=200)
        accesses = entry.get("accesses") or []
        if self.policy is not None and not self.policy.allows(accesses):
            self.count("denied")
            self.log.debug("Entry %s denied by the policy: %s", entry_id, self.policy.explain(accesses))
            return web.json_response({"status": "filtered by policy"}, status=200)
        self._in_flight.add(entry_id)
        try:
            if self.conf.reorder_window:
                future = asyncio.get_running_loop().create_future()
                heapq.heappush(self._held, (entry["date"], next(self._seq), entry, future))
                await future
            else:
                await self._admit(entry)
        except BufferFullError:
            self.count("backpressure")
            return web.json_response({"error": "busy"}, status=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        except Exception:
            self.count("admit_failures")
            self.log.exception("Entry %s could not be admitted; answering 500 so LaunchDarkly retries.", entry_id)
            return web.json_response({"error": "not stored"}, status=500)
        finally:
            self._in_flight.discard(entry_id)
        self.count("forwarded")
        return web.json_response({"status": "stored"}, status=200)

    async def _admit(self, entry: dict) -> None:
        await self.emitter.emit(self.conf.tag, [(entry["date"] * 1_000_000, enrich(entry))])
        await self.seen.add(entry["_id"])  # only once stored: a failed admit can be retried
        if self.seen.forgotten and not self._warned_forgotten:
            self._warned_forgotten = True
            self.log.warning(
                "More than %d entry ids within dedup_window: the oldest are forgotten, so a replay "
                "of one of them would be forwarded again. Set state_path to remember them all.",
                MAX_IDS_IN_MEMORY,
            )

    async def _emit_held(self, held: tuple[int, int, dict, asyncio.Future]) -> None:
        _, _, entry, future = held
        try:
            await self._admit(entry)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(None)

    async def _flush_held(self) -> None:
        """Emit held entries in ``date`` order once the oldest has waited ``reorder_window``."""
        window = self.conf.reorder_window
        arrived: dict[int, float] = {}
        while True:
            now = time.monotonic()
            for _, seq, _, _ in self._held:
                arrived.setdefault(seq, now)
            due = [h for h in self._held if now - arrived[h[1]] >= window]
            if due:
                # Everything held that is not newer than the newest due entry goes out, oldest first.
                cutoff = max(h[0] for h in due)
                while self._held and self._held[0][0] <= cutoff:
                    held = heapq.heappop(self._held)
                    arrived.pop(held[1], None)
                    await self._emit_held(held)
            await asyncio.sleep(min(window / 4, 0.25))


def _parse_entry(body: bytes) -> tuple[dict | None, str]:
    try:
        entry = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return None, f"not JSON ({exc})"
    if type(entry) is not dict:
        return None, "not a JSON object"
    if type(entry.get("_id")) is not str or not entry["_id"]:
        return None, "no '_id'"
    if type(entry.get("date")) is not int or entry["date"] < 0:
        return None, "no 'date' in Unix milliseconds"
    if entry["date"] > MAX_DATE_MS:
        return None, "'date' is out of range (after February 2106)"
    accesses = entry.get("accesses", [])
    if type(accesses) is not list or not all(type(a) is dict for a in accesses):
        return None, "'accesses' is not a list of objects"
    return entry, ""


def _resource_parts(resource: str) -> dict[str, str]:
    """``proj/default:env/production:flag/new-checkout`` -> {proj: default, env: production, flag: ...}."""
    parts = {}
    for segment in resource.split(":"):
        kind, _, name = segment.partition("/")
        name = name.split(";", 1)[0]  # drop tags
        if kind and name:
            parts[kind] = name
    return parts


def enrich(entry: dict) -> dict[str, Any]:
    """The audit entry plus top-level fields a log pipeline can filter on: project, environment,
    flag (from the first resource that names them), actions, member_email."""
    record = dict(entry)
    accesses = entry.get("accesses") or []
    found: dict[str, str] = {}
    for access in accesses:
        for key, value in _resource_parts(str(access.get("resource", ""))).items():
            found.setdefault(key, value)
    for field, kind in (("project", "proj"), ("environment", "env"), ("flag", "flag")):
        if kind in found:
            record[field] = found[kind]
    record["actions"] = sorted({a["action"] for a in accesses if isinstance(a.get("action"), str)})
    member = entry.get("member")
    if isinstance(member, dict) and isinstance(member.get("email"), str):
        record["member_email"] = member["email"]
    return record


class SeenIds:
    """Entry ids seen within the dedup window: SQLite (fsynced) when a path is set, else memory (at
    most MAX_IDS_IN_MEMORY, the oldest forgotten first)."""

    # Run at every add: the index on ``at`` (seen_at) makes it a range search, not a table scan.
    PRUNE = "DELETE FROM seen WHERE at < ?"

    def __init__(self, path: str | None, window: float) -> None:
        self.path = path
        self.window = window
        self._memory: OrderedDict[str, float] = OrderedDict()  # id -> when added, oldest first
        self.forgotten = 0  # ids dropped from memory while still within the window
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        """The ids held in memory (none with a path: those are on disk)."""
        return len(self._memory)

    async def open(self) -> None:
        path = self.path
        if path is not None:

            def connect() -> sqlite3.Connection:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, at REAL NOT NULL)")
                # Also added to a store whose table lacks it.
                conn.execute("CREATE INDEX IF NOT EXISTS seen_at ON seen (at)")
                return conn

            try:
                self._conn = await asyncio.to_thread(connect)
            except (OSError, sqlite3.Error) as exc:
                raise StartError(f"cannot open {self.path}: {exc}") from exc

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def contains(self, entry_id: str) -> bool:
        cutoff = time.time() - self.window
        if self._conn is None:
            at = self._memory.get(entry_id)
            return at is not None and at >= cutoff
        conn = self._conn
        async with self._lock:
            row = await asyncio.to_thread(lambda: conn.execute("SELECT at FROM seen WHERE id = ?", (entry_id,)).fetchone())
        return row is not None and row[0] >= cutoff

    async def add(self, entry_id: str) -> None:
        now = time.time()
        if self._conn is None:
            self._remember(entry_id, now)
            return

        conn = self._conn

        def write() -> None:
            conn.execute("INSERT OR REPLACE INTO seen (id, at) VALUES (?, ?)", (entry_id, now))
            conn.execute(self.PRUNE, (now - self.window,))

        async with self._lock:
            await asyncio.to_thread(write)

    def _remember(self, entry_id: str, now: float) -> None:
        memory = self._memory
        memory[entry_id] = now
        memory.move_to_end(entry_id)
        cutoff = now - self.window
        while memory:
            at = next(iter(memory.values()))
            if at >= cutoff and len(memory) <= MAX_IDS_IN_MEMORY:
                break
            memory.popitem(last=False)
            if at >= cutoff:
                # LOSSY: an id still within the window is forgotten; a replay of it is forwarded.
                self.forgotten += 1
