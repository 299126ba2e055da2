"""A LaunchDarkly-compatible metric event import server, for the demo and the tests.

It checks what LaunchDarkly checks (launchdarkly-api-notes.md): the token (401), the project and
environment keys (404), the schema header (406), the body size (413), that the body is a JSON array
of ``custom`` events (400), ``Content-Encoding: gzip``; answers 202; records every request; and
deduplicates by ``X-LaunchDarkly-Payload-ID`` as LaunchDarkly does. Faults can be scripted: answers
for the next requests (``503, 503`` then normal), ``Retry-After``, slow answers, dropped connections,
connections reset after part of the body, answers lost or late after the events were accepted, and
events to refuse.

It also answers the few REST API (``/api/v2``) reads that ``fluent-ld verify`` makes: a project, an
environment, and a project's metrics (paged, ``limit``/``offset`` with a ``next`` link), with the
REST token checked (401) and a scripted status for every REST read (``rest_fault``: 401, 403, 404,
500...).
"""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

__all__ = ["Fault", "LaunchDarklyServer", "ReceivedRequest", "metric"]

BODY_LIMIT = 10_000_000
IMPORT_PATH = "/v2/event-data-import/{project}/{environment}"
# A page of metrics holds at most this many (LaunchDarkly's default page is 20).
METRICS_PAGE = 20


def metric(key: str, event_key: str | None = None, numeric: bool = False, kind: str = "custom", name: str | None = None) -> dict[str, Any]:
    """A metric as the REST API lists it (the fields verify reads)."""
    out: dict[str, Any] = {"key": key, "name": name or key.replace("-", " ").title(), "kind": kind, "_links": {"self": {"href": f"/api/v2/metrics/p/{key}"}}}
    if kind == "custom":
        out["eventKey"] = event_key if event_key is not None else key
        out["isNumeric"] = numeric
    return out


@dataclass
class Fault:
    """One scripted answer: a status (and headers, body), or a delay before answering normally,
    or dropping the connection.

    ``cut=N``: read only the first N bytes of the body, then reset the connection (the request is
    recorded with status 0 and the partial body). ``late=True``: handle the request normally first
    (its events are accepted), then apply ``delay`` or ``drop`` to the answer: the sender sees a
    timeout or a reset for a request that was in fact accepted. ``Fault()`` answers normally."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    delay: float = 0.0
    drop: bool = False
    cut: int | None = None
    late: bool = False


@dataclass
class ReceivedRequest:
    time: float
    path: str
    headers: dict[str, str]
    payload_id: str | None
    body: bytes  # the body (inflated, if it came gzip-compressed)
    events: list[Any] | None
    status: int
    duplicate: bool = False
    count: int = 0  # events in the body (kept even when the body and events are not)


class LaunchDarklyServer:
    def __init__(
        self,
        token: str = "api-test-token",
        projects: dict[str, list[str]] | None = None,
        refuse: Callable[[dict], str | None] | None = None,
        keep: bool = True,
        metrics: dict[str, list[dict[str, Any]]] | None = None,
        api_token: str | None = None,
    ) -> None:
        """``keep=False``: remember only counts, not bodies and events (benchmarks, soak runs).
        ``metrics``: each project's metrics for the REST API (see :func:`metric`); ``api_token``:
        the token the REST API takes (default: ``token``)."""
        self.token = token
        self.api_token = api_token if api_token is not None else token
        self.metrics = metrics if metrics is not None else {}
        self.rest_fault: int | None = None  # answer every REST read with this status
        self.rest_requests: list[str] = []  # the REST paths read, with their queries
        self.keep = keep
        self.unique_events = 0  # events accepted, each payload once
        self.projects = projects if projects is not None else {"default": ["production", "test"]}
        self.refuse = refuse  # an event -> reason to answer 400 for its whole payload
        self.faults: list[Fault] = []
        self.requests: list[ReceivedRequest] = []
        self.accepted: dict[str, list[Any]] = {}  # payload id -> events, each payload once
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.arrived = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def events(self) -> list[Any]:
        """Every event accepted, each payload once, in arrival order."""
        return [e for events in self.accepted.values() for e in events]

    def script(self, *faults: Fault | int) -> None:
        self.faults.extend(f if isinstance(f, Fault) else Fault(status=f) for f in faults)

    async def start(self, port: int = 0) -> None:
        app = web.Application(client_max_size=BODY_LIMIT * 2)
        app.router.add_post(IMPORT_PATH, self._import)
        app.router.add_get("/api/v2/projects/{project}", self._project)
        app.router.add_get("/api/v2/projects/{project}/environments", self._environments)
        app.router.add_get("/api/v2/projects/{project}/environments/{environment}", self._environment)
        app.router.add_get("/api/v2/metrics/{project}", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _import(self, request: web.Request) -> web.StreamResponse:
        fault = self.faults.pop(0) if self.faults else None
        if fault is not None and fault.cut is not None:
            partial = b""
            while len(partial) < fault.cut:
                chunk = await request.content.read(fault.cut - len(partial))
                if not chunk:
                    break
                partial += chunk
            payload_id = request.headers.get("X-LaunchDarkly-Payload-ID")
            self.requests.append(ReceivedRequest(time.time(), request.path, dict(request.headers), payload_id, partial, None, 0))
            request.transport.abort()  # type: ignore[union-attr]  # a request being handled has its transport
            return web.Response(status=500)
        if fault is not None and fault.late:
            response = await self._handle(request, None)
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.drop:
                request.transport.abort()  # type: ignore[union-attr]  # a request being handled has its transport
            return response
        return await self._handle(request, fault)

    async def _handle(self, request: web.Request, fault: Fault | None) -> web.StreamResponse:
        raw = await request.read()
        body = raw
        headers = dict(request.headers)
        payload_id = request.headers.get("X-LaunchDarkly-Payload-ID")

        def answer(status: int, text: str = "", events: Any = None, extra: dict | None = None, duplicate: bool = False) -> web.Response:
            count = len(events) if isinstance(events, list) else 0
            if self.keep:
                self.requests.append(ReceivedRequest(time.time(), request.path, headers, payload_id, body, events, status, duplicate, count))
            else:
                self.requests.append(ReceivedRequest(time.time(), request.path, {}, payload_id, b"", None, status, duplicate, count))
            self.arrived.set()
            return web.Response(status=status, text=text, headers=extra or {})

        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.drop:
                self.requests.append(ReceivedRequest(time.time(), request.path, headers, payload_id, raw, None, 0))
                request.transport.abort()  # type: ignore[union-attr]  # a request being handled has its transport
                return web.Response(status=500)
            if fault.status is not None:
                return answer(fault.status, fault.body, extra=fault.headers)

        if request.headers.get("Authorization") != self.token:
            return answer(401, '{"code":"unauthorized","message":"invalid access token"}')
        project, environment = request.match_info["project"], request.match_info["environment"]
        if environment not in self.projects.get(project, []):
            return answer(404, '{"code":"not_found","message":"unknown project or environment"}')
        if request.headers.get("X-LaunchDarkly-Event-Schema") != "4":
            return answer(406, '{"code":"not_acceptable","message":"unsupported event schema"}')
        body = raw
        # aiohttp inflates a gzip request body itself; inflate here only what is still compressed.
        if request.headers.get("Content-Encoding") == "gzip" and raw[:2] == b"\x1f\x8b":
            try:
                body = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error):
                return answer(400, '{"code":"invalid_request","message":"bad gzip body"}')
        if len(body) > BODY_LIMIT:
            return answer(413, '{"code":"payload_too_large","message":"body over 10 MB"}')
        try:
            events = orjson.loads(body)
        except orjson.JSONDecodeError:
            return answer(400, '{"code":"invalid_request","message":"body is not JSON"}')
        if not isinstance(events, list) or not all(isinstance(e, dict) and e.get("kind") == "custom" for e in events):
            return answer(400, '{"code":"invalid_request","message":"expected an array of custom events"}', events)
        if self.refuse is not None:
            for event in events:
                reason = self.refuse(event)
                if reason:
                    return answer(400, orjson.dumps({"code": "invalid_request", "message": reason}).decode(), events)
        duplicate = payload_id in self.accepted if payload_id else False
        if not duplicate:
            self.unique_events += len(events)
        kept = events if self.keep else []
        if payload_id and not duplicate:
            self.accepted[payload_id] = kept
        elif not payload_id:
            self.accepted[f"no-id-{len(self.requests)}"] = kept
        return answer(202, "", events, duplicate=duplicate)

    # -- the REST API reads --------------------------------------------------------------------------

    def _rest_project(self, request: web.Request) -> web.Response | str:
        """What every REST read checks first: a scripted status, the token (401), the project
        (404). Returns the refusal, or the project's key."""
        self.rest_requests.append(request.path_qs)
        if self.rest_fault is not None:
            return web.json_response({"code": "scripted", "message": f"scripted {self.rest_fault}"}, status=self.rest_fault)
        if request.headers.get("Authorization") != self.api_token:
            return web.json_response({"code": "unauthorized", "message": "Invalid access token"}, status=401)
        project = request.match_info["project"]
        if project not in self.projects:
            return web.json_response({"code": "not_found", "message": "Unknown resource"}, status=404)
        return project

    def _environment_items(self, project: str) -> list[dict[str, str]]:
        return [{"key": e, "name": e} for e in self.projects[project]]

    async def _project(self, request: web.Request) -> web.Response:
        project = self._rest_project(request)
        if not isinstance(project, str):
            return project
        return web.json_response({"key": project, "name": project, "environments": {"items": self._environment_items(project)}})

    async def _environments(self, request: web.Request) -> web.Response:
        project = self._rest_project(request)
        if not isinstance(project, str):
            return project
        items = self._environment_items(project)
        return web.json_response({"items": items, "totalCount": len(items)})

    async def _environment(self, request: web.Request) -> web.Response:
        project = self._rest_project(request)
        if not isinstance(project, str):
            return project
        environment = request.match_info["environment"]
        if environment not in self.projects[project]:
            return web.json_response({"code": "not_found", "message": "Unknown resource"}, status=404)
        return web.json_response({"key": environment, "name": environment})

    async def _metrics(self, request: web.Request) -> web.Response:
        project = self._rest_project(request)
        if not isinstance(project, str):
            return project
        try:
            limit = max(1, min(int(request.query.get("limit", METRICS_PAGE)), METRICS_PAGE))
            offset = max(0, int(request.query.get("offset", 0)))
        except ValueError:
            return web.json_response({"code": "invalid_request", "message": "limit and offset are numbers"}, status=400)
        everything = self.metrics.get(project, [])
        links: dict[str, Any] = {"self": {"href": f"/api/v2/metrics/{project}?limit={limit}&offset={offset}"}}
        if offset + limit < len(everything):
            links["next"] = {"href": f"/api/v2/metrics/{project}?limit={limit}&offset={offset + limit}"}
        return web.json_response({"items": everything[offset : offset + limit], "totalCount": len(everything), "_links": links})


async def serve_forever(port: int, token: str) -> None:  # pragma: no cover - used by hand
    server = LaunchDarklyServer(token)
    await server.start(port)
    print(f"LaunchDarkly-compatible server on {server.url} (token {token!r})")
    await asyncio.Event().wait()
