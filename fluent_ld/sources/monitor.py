"""``@type monitor_agent``: what the node is doing, over HTTP.

- ``/metrics``: Prometheus text format (every worker's, summed, in a multi-worker node).
- ``/api/plugins.json``: one entry per plugin in the shape of Fluentd's monitor_agent, so the tools
  that read Fluentd's (Telegraf, Netdata, Datadog) read this one.
- ``/healthz``: the process answers. ``/readyz``: every store is writable and no output is paused on
  a 401/403/404 from LaunchDarkly (503 with the reasons otherwise).
- ``/api/debug/requests``: the last requests to LaunchDarkly with its answers, the first place to
  look when an experiment shows no data.
- With ``debugger true``: ``/``, the Event Debugger (:mod:`fluent_ld.sources.debugger`), and the
  JSON it reads: ``/api/debugger/state``, ``/api/debugger/events?payload_id=`` (a request's first
  events) and ``POST /api/debugger/map?output=`` (what a pasted Signal event becomes). These show
  event contents (user ids); without ``debugger true`` none of them is served.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fluent_ld import metrics
from fluent_ld.config.params import Bool, Integer, Param, Section, String
from fluent_ld.plugin import Source, StartError
from fluent_ld.sources.debugger import MAP_BODY_LIMIT, Debugger, page

AUTH_MEANING = {
    401: "the access token is invalid",
    403: "the access token lacks importEventData",
    404: "the project or environment key is wrong, or the account is on another cell",
}


class MonitorAgentSource(Source):
    type_name = "monitor_agent"
    served_once = True  # one HTTP port; with workers, worker 0 serves every worker's metrics
    summary = "Serves metrics (Prometheus), plugin status (Fluentd's monitor_agent shape), health and readiness over HTTP."
    section = Section(
        "source",
        summary,
        params=(
            Param("bind", String(), "0.0.0.0", "The address to listen on (keep it off public networks)."),
            Param("port", Integer(0, 65535), 24220, "The HTTP port (0: any free port)."),
            Param("include_config", Bool(), True, "Include each plugin's parameters (secrets masked) in /api/plugins.json."),
            Param("debug_requests", Integer(1, metrics.REQUEST_LOG_SIZE), 50, "How many recent LaunchDarkly requests /api/debug/requests shows at most."),
            Param(
                "debugger",
                Bool(),
                False,
                "Serve the Event Debugger at /: each output's state, the last requests with their first events, dead letters, a mapping box. It shows event contents (user ids): keep the port internal.",
            ),
        ),
    )

    def __init__(self, conf, plugin_id, emitter) -> None:
        super().__init__(conf, plugin_id, emitter)
        self.port: int | None = None
        self.registry = metrics.registry()
        self._runner: web.AppRunner | None = None
        self._started_at = time.time()
        self.debugger = Debugger(emitter) if conf.debugger else None
        self._page = page() if conf.debugger else b""
        self._debugging = False  # this monitor told the request log to keep events

    async def start(self) -> None:
        app = web.Application(client_max_size=MAP_BODY_LIMIT)  # the only body it reads: a pasted event
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/plugins.json", self._plugins)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/api/debug/requests", self._requests)
        if self.debugger is not None:
            app.router.add_get("/", self._debugger_page)
            app.router.add_get("/api/debugger/state", self._debugger_state)
            app.router.add_get("/api/debugger/events", self._debugger_events)
            app.router.add_post("/api/debugger/map", self._debugger_map)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.conf.bind, self.conf.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise StartError(f"cannot listen on {self.conf.bind}:{self.conf.port}: {exc.strerror or exc}") from exc
        self.port = self._runner.addresses[0][1]
        self.log.info("Serving /metrics, /api/plugins.json, /healthz and /readyz on http://%s:%d.", self.conf.bind, self.port)
        if self.debugger is not None:
            self._debugging = True
            try:
                metrics.REQUEST_LOG.debugger(True)
            except OSError as exc:  # its file in the shared folder: this worker keeps events all the same
                self.log.warning("The other workers cannot be told to keep their requests' first events: %s.", exc)
            self.log.info("Serving the Event Debugger on http://%s:%d/.", self.conf.bind, self.port)
            if not _loopback(self.conf.bind):
                self.log.warning(
                    "The Event Debugger shows event contents (user ids) to anyone who reaches %s:%d: keep this port on the internal network.",
                    self.conf.bind,
                    self.port,
                )

    async def stop(self) -> None:
        if self._debugging:
            self._debugging = False
            try:
                metrics.REQUEST_LOG.debugger(False)
            except OSError as exc:
                self.log.warning("The other workers cannot be told to stop keeping their requests' first events: %s.", exc)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _collect(self, fn):
        """``fn(registry)`` with this worker's gauges brought up to date first (the other workers
        refresh theirs every second); off the event loop: across workers it reads every worker's
        metric files."""
        refresh = getattr(self.emitter, "refresh_metrics", None)
        if refresh is not None:
            await refresh()
        return await asyncio.to_thread(fn, self.registry)

    async def _refresh(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        return await self._collect(metrics.samples)

    # -- endpoints -----------------------------------------------------------------------------------

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await self._collect(generate_latest)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "pid": os.getpid(), "uptime_seconds": round(time.time() - self._started_at, 3)})

    async def _readyz(self, request: web.Request) -> web.Response:
        values = await self._refresh()
        outputs = {pc.id for pc in self._config().matches}
        problems = []
        for labels, value in values.get("fluentld_store_writable", []):
            if labels.get("plugin_id") in outputs and value < 1:
                problems.append(f"{labels['plugin_id']}: its store is not writable (disk full or read-only?)")
        for labels, value in values.get("fluentld_output_auth_error", []):
            if labels.get("plugin_id") in outputs and value:
                status = int(value)
                problems.append(
                    f"{labels['plugin_id']}: paused since LaunchDarkly answered {status} ({AUTH_MEANING.get(status, 'see the log')}); nothing is dropped"
                )
        body = {"ready": not problems, "problems": sorted(problems)}
        return web.json_response(body, status=200 if not problems else 503)

    async def _plugins(self, request: web.Request) -> web.Response:
        values = await self._refresh()

        def total(name: str, plugin_id: str) -> float:
            return sum(v for labels, v in values.get(name, []) if labels.get("plugin_id") == plugin_id)

        plugins: list[dict[str, Any]] = []
        config = self._config()
        for pc in (*config.sources, *config.matches):
            output = pc.kind == "output"
            entry: dict[str, Any] = {
                "plugin_id": pc.id,
                "plugin_category": "output" if output else "input",
                "type": pc.type_name,
                "output_plugin": output,
                "emit_records": int(total("fluentld_records_received_total", pc.id)),
            }
            if self.conf.include_config:
                entry["config"] = pc.conf.given_params()
            if output:
                # Fluentd counts chunks; fluent-ld's queue is counted in events.
                entry.update(
                    buffer_queue_length=int(total("fluentld_pending_events", pc.id)),
                    buffer_total_queued_size=int(total("fluentld_pending_bytes", pc.id)),
                    retry_count=int(total("fluentld_retries_total", pc.id)),
                    write_count=int(total("fluentld_requests_total", pc.id)),
                    delivered_records=int(total("fluentld_records_delivered_total", pc.id)),
                    dead_letters=int(total("fluentld_dead_letters", pc.id)),
                    oldest_pending_event_age_seconds=total("fluentld_oldest_pending_event_age_seconds", pc.id),
                )
            plugins.append(entry)
        return web.json_response({"plugins": plugins})

    async def _requests(self, request: web.Request) -> web.Response:
        try:
            limit = min(int(request.query.get("limit", self.conf.debug_requests)), metrics.REQUEST_LOG_SIZE)
        except ValueError:
            return web.json_response({"error": "limit must be an integer"}, status=400)
        entries = []
        for e in metrics.REQUEST_LOG.recent(max(limit, 0)):
            e = {k: v for k, v in e.items() if k != "first_events"}  # event contents: the debugger's only
            e["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(e["time"])) + f".{int(e['time'] % 1 * 1000):03d}Z"
            entries.append(e)
        return web.json_response({"requests": entries})

    # -- the Event Debugger (debugger true) ------------------------------------------------------------

    async def _debugger_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self._page, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)

    async def _recent(self, limit: int) -> list[dict[str, Any]]:
        return await asyncio.to_thread(metrics.REQUEST_LOG.recent, limit)  # across workers it reads files

    async def _debugger_state(self, request: web.Request) -> web.Response:
        assert self.debugger is not None
        values = await self._refresh()
        state = await self.debugger.state(values, await self._recent(self.conf.debug_requests), time.time())
        return _json(state)

    async def _debugger_events(self, request: web.Request) -> web.Response:
        found = Debugger.events(await self._recent(metrics.REQUEST_LOG_SIZE), request.query.get("payload_id", ""))
        if found is None:
            return _json({"error": "no request with this payload id kept its events (they are kept for the newest requests only)"}, 404)
        return _json(found)

    async def _debugger_map(self, request: web.Request) -> web.Response:
        assert self.debugger is not None
        body = await request.read()  # at most client_max_size: 413 past it
        status, answer = self.debugger.map(request.query.get("output"), body, time.time_ns())
        return _json(answer, status)

    def _config(self):
        return self.emitter.config


# The page has its style and script inline and talks only to this monitor: the policy lets nothing
# else in (no external assets) and nothing frame it.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def _json(body: Any, status: int = 200) -> web.Response:
    """orjson: mapped events hold what the mapper made; event contents are never cached."""
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers={"Cache-Control": "no-store"})


def _loopback(bind: str) -> bool:
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return bind == "localhost"
