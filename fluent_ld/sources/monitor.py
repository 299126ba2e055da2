"""``@type monitor_agent``: what the node is doing, over HTTP.

- ``/metrics``: Prometheus text format (every worker's, summed, in a multi-worker node).
- ``/api/plugins.json``: one entry per plugin in the shape of Fluentd's monitor_agent, so the tools
  that read Fluentd's (Telegraf, Netdata, Datadog) read this one.
- ``/healthz``: the process answers. ``/readyz``: every store is writable and no output is paused on
  a 401/403/404 from LaunchDarkly (503 with the reasons otherwise).
- ``/api/debug/requests``: the last requests to LaunchDarkly with its answers, the first place to
  look when an experiment shows no data.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fluent_ld import metrics
from fluent_ld.config.params import Bool, Integer, Param, Section, String
from fluent_ld.plugin import Source, StartError

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
        ),
    )

    def __init__(self, conf, plugin_id, emitter) -> None:
        super().__init__(conf, plugin_id, emitter)
        self.port: int | None = None
        self.registry = metrics.registry()
        self._runner: web.AppRunner | None = None
        self._started_at = time.time()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/plugins.json", self._plugins)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/api/debug/requests", self._requests)
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

    async def stop(self) -> None:
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
            e = dict(e)
            e["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(e["time"])) + f".{int(e['time'] % 1 * 1000):03d}Z"
            entries.append(e)
        return web.json_response({"requests": entries})

    def _config(self):
        return self.emitter.config
