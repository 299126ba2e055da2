"""What the node is doing, as Prometheus metrics, and the recent requests to LaunchDarkly.

Plugins update the metrics below per request or per batch, never per record. Counters end in
``_total`` and are labelled by plugin id. With ``<system> workers N`` every worker process writes its
values to files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multi-process mode, set by the
supervisor before a worker starts) and the monitor sums them: counters over every worker that ever
ran (a restarted worker does not make a total go back), gauges over the live ones.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = [
    "MULTIPROC_ENV",
    "REQUEST_LOG",
    "multiprocess_dir",
    "registry",
    "samples",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SUPERVISOR_FILE = "supervisor.json"


def multiprocess_dir() -> str | None:
    """The folder workers share their metrics through, or None in a single-process node."""
    return os.environ.get(MULTIPROC_ENV) or None


_PLUGIN = ["plugin_id"]

# -- records ------------------------------------------------------------------------------------------
RECORDS_RECEIVED = Counter("fluentld_records_received_total", "Records a source received, or an output was given.", _PLUGIN)
RECORDS_REJECTED = Counter(
    "fluentld_records_rejected_total",
    "Records refused before storing: invalid, unmapped (not in the preset), too_large, invalid_event (forward).",
    ["plugin_id", "reason"],
)
RECORDS_DEAD_LETTERED = Counter(
    "fluentld_records_dead_lettered_total",
    "Records moved to the dead-letter store, by reason (invalid, too_large, rejected, expired, schema).",
    ["plugin_id", "reason"],
)
RECORDS_DELIVERED = Counter("fluentld_records_delivered_total", "Records the destination acknowledged (LaunchDarkly 202, a forward ack).", _PLUGIN)

# -- requests -----------------------------------------------------------------------------------------
REQUESTS = Counter("fluentld_requests_total", "Requests sent, by HTTP status (error: no answer: timeout, refused, reset).", ["plugin_id", "status"])
RETRIES = Counter("fluentld_retries_total", "Batches scheduled for another attempt.", _PLUGIN)
REQUEST_SECONDS = Histogram(
    "fluentld_request_duration_seconds",
    "How long one request to the destination took.",
    _PLUGIN,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCH_BYTES = Histogram(
    "fluentld_batch_bytes",
    "Body size of each batch, at its first attempt.",
    _PLUGIN,
    buckets=(1024, 10_240, 102_400, 524_288, 1_048_576, 2_097_152, 5_242_880, 10_485_760),
)
BATCH_EVENTS = Histogram(
    "fluentld_batch_events",
    "Events in each batch, at its first attempt.",
    _PLUGIN,
    buckets=(1, 10, 100, 1000, 5000, 10_000, 25_000, 50_000),
)
BACKPRESSURE_SECONDS = Counter(
    "fluentld_backpressure_seconds_total", "Seconds an output refused new records because its store was over high_watermark.", _PLUGIN
)
RETRY_AFTER_SECONDS = Counter(
    "fluentld_retry_after_seconds_total", "Seconds an output held every request because the destination asked (Retry-After).", _PLUGIN
)

# -- the store ----------------------------------------------------------------------------------------
FSYNC_SECONDS = Histogram(
    "fluentld_fsync_duration_seconds",
    "How long each group commit (its fsync) took.",
    _PLUGIN,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
PENDING_EVENTS = Gauge("fluentld_pending_events", "Events stored and not yet delivered.", _PLUGIN, multiprocess_mode="livesum")
PENDING_BYTES = Gauge("fluentld_pending_bytes", "Bytes stored and not yet delivered.", _PLUGIN, multiprocess_mode="livesum")
DEAD_LETTERS = Gauge("fluentld_dead_letters", "Records in the dead-letter store.", _PLUGIN, multiprocess_mode="livesum")
OLDEST_PENDING_AGE = Gauge(
    "fluentld_oldest_pending_event_age_seconds",
    "How long the oldest undelivered event has been stored (0: none). LaunchDarkly only counts events that arrive while an experiment runs.",
    _PLUGIN,
    multiprocess_mode="livemax",
)
STORE_WRITABLE = Gauge("fluentld_store_writable", "1 while the store's last commit succeeded and its folder is writable.", _PLUGIN, multiprocess_mode="livemin")
AUTH_ERROR = Gauge(
    "fluentld_output_auth_error",
    "0, or the status (401, 403, 404) while the output is paused waiting for a fixed token or key.",
    _PLUGIN,
    multiprocess_mode="livemax",
)

# -- verification (launchdarkly output, verify_on_start) ----------------------------------------------
VERIFY_STATUS = Gauge(
    "fluentld_verify_status",
    "The last check against LaunchDarkly's REST API: 0 every mapped event will count, 1 some will not (a key with no metric, a numeric metric without a value), 2 could not tell (network, 401/403).",
    _PLUGIN,
    multiprocess_mode="livemax",
)
VERIFY_METRIC_FOUND = Gauge(
    "fluentld_verify_metric_found",
    "1 when the project has a custom metric on this mapped event key, 0 when none: such events are accepted and count nowhere.",
    ["plugin_id", "key"],
    multiprocess_mode="livemin",
)
EVENTS_WITHOUT_METRIC = Counter(
    "fluentld_events_without_metric_total",
    "Events delivered for a key no LaunchDarkly metric uses (as of the last check): accepted with 202, counted in no experiment.",
    ["plugin_id", "key"],
)
STALE_EVENTS = Counter(
    "fluentld_stale_events_total",
    "Events sent with a creationDate older than stale_after: LaunchDarkly discards those outside the running iteration.",
    ["plugin_id", "key"],
)

# -- sources ------------------------------------------------------------------------------------------
FORWARD_CONNECTIONS = Counter("fluentld_forward_connections_total", "Forward connections accepted, by worker.", ["plugin_id", "worker"])
FORWARD_OPEN = Gauge("fluentld_forward_open_connections", "Forward connections open now.", _PLUGIN, multiprocess_mode="livesum")
FORWARD_ERRORS = Counter(
    "fluentld_forward_errors_total",
    "Forward connections closed for a reason: protocol (malformed frame), handshake, refused (max_connections), idle.",
    ["plugin_id", "reason"],
)
WEBHOOK_REQUESTS = Counter(
    "fluentld_webhook_requests_total",
    "Webhook requests by outcome: forwarded, bad_signature, invalid, duplicate, denied, too_large, backpressure, admit_failure.",
    ["plugin_id", "outcome"],
)

# -- the pool -----------------------------------------------------------------------------------------
POOL_REQUESTS = Counter(
    "fluentld_pool_requests_total",
    "Forward requests of 4 KiB or more decoded, validated, mapped and encoded, by where: pool (a pool process) or inline (the event loop; smaller requests always are).",
    ["where"],
)
POOL_DEATHS = Counter("fluentld_pool_process_deaths_total", "Pool processes that died; the requests they held were not acked.")
POOL_PROCESSES = Gauge("fluentld_pool_processes", "Pool processes ready to take requests.", multiprocess_mode="livesum")


# Gauges of one plugin, with the value that means "nothing to report".
_PLUGIN_GAUGES = (
    (PENDING_EVENTS, 0),
    (PENDING_BYTES, 0),
    (DEAD_LETTERS, 0),
    (OLDEST_PENDING_AGE, 0),
    (STORE_WRITABLE, 1),
    (AUTH_ERROR, 0),
    (FORWARD_OPEN, 0),
)


def forget(plugin_id: str) -> None:
    """A plugin stopped: its gauges go (or, across workers, where prometheus-client cannot remove a
    series, go neutral), so an alert on a removed or renamed output clears. Counters stay."""
    shared = multiprocess_dir() is not None
    for gauge, neutral in _PLUGIN_GAUGES:
        if not shared:
            gauge.remove(plugin_id)  # no-op for a series the plugin never had
        elif (plugin_id,) in gauge._metrics:  # only the series this plugin has
            gauge.labels(plugin_id).set(neutral)


class SupervisorCollector:
    """Worker restarts and the worker count, from the file the supervisor keeps current."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, SUPERVISOR_FILE)

    def collect(self) -> Iterable[Any]:
        try:
            with open(self.path, "rb") as f:
                state = json.load(f)
        except (OSError, ValueError):
            return
        workers = GaugeMetricFamily("fluentld_workers", "Worker processes the supervisor runs.")
        workers.add_metric([], state.get("workers", 0))
        yield workers
        restarts = CounterMetricFamily("fluentld_worker_restarts", "Workers restarted after dying, by worker.", labels=["worker"])
        for worker, n in sorted(state.get("restarts", {}).items()):
            restarts.add_metric([str(worker)], n)
        yield restarts


def registry() -> CollectorRegistry:
    """What /metrics exposes: this process's metrics, or every worker's in a multi-worker node."""
    folder = multiprocess_dir()
    if folder is None:
        return REGISTRY
    reg = CollectorRegistry()
    MultiProcessCollector(reg, path=folder)
    reg.register(SupervisorCollector(folder))
    return reg


def samples(reg: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample by name (``fluentld_requests_total``...), with its labels."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in reg.collect():
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


# -- recent requests ----------------------------------------------------------------------------------

REQUEST_LOG_SIZE = 200
# What the Event Debugger (monitor_agent's ``debugger true``) shows of a request's body: its first
# events, parsed from at most its first bytes (an event cut off there is left out), kept by the
# newest requests only. Event contents carry user ids: they are kept only while a debugger is on.
DEBUG_EVENTS = 5
DEBUG_BODY_BYTES = 4096
DEBUG_EVENTS_KEPT = 50  # ~200 KB at most, in memory and in a worker's shared file
# In the multi-process folder while worker 0's monitor has a debugger on: the other workers keep
# their requests' first events too.
DEBUGGER_FILE = "debugger-on"


def first_events(body: bytes, limit: int = DEBUG_EVENTS, max_bytes: int = DEBUG_BODY_BYTES) -> list[Any]:
    """The first ``limit`` events of a JSON array body (or of its events joined by commas), parsed
    from at most its first ``max_bytes``; an event that does not end within them is left out."""
    text = bytes(body[:max_bytes]).decode("utf-8", "ignore")  # a cut character at the end only
    decoder = json.JSONDecoder()
    events: list[Any] = []
    pos = 0
    while len(events) < limit:
        while pos < len(text) and text[pos] in " \t\r\n,[":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            break
        try:
            event, pos = decoder.raw_decode(text, pos)
        except ValueError:
            break  # cut off at max_bytes
        events.append(event)
    return events


class RequestLog:
    """The last requests to LaunchDarkly, for ``/api/debug/requests``: the first place to look when
    an experiment shows no data. In a multi-worker node each worker also keeps its log in a file
    beside the metrics (written at most once a second) so the monitor can merge them.

    While a monitor has ``debugger true`` (:meth:`debugger`), the newest requests also keep their
    first events (``first_events``), for the Event Debugger only."""

    def __init__(self, size: int = REQUEST_LOG_SIZE) -> None:
        self.entries: deque[dict[str, Any]] = deque(maxlen=size)
        self._dirty = False
        self._debuggers = 0  # monitors of this process with a debugger on
        self.keep_events = False  # a debugger is on, here or (across workers) in worker 0

    def debugger(self, on: bool) -> None:
        """A monitor with a debugger started (``on``) or stopped. Across workers a file in the
        shared folder tells the other workers, which look for it once a second (:meth:`flush`)."""
        self._debuggers += 1 if on else -1
        self.keep_events = self._debuggers > 0
        folder = multiprocess_dir()
        if folder is not None:
            path = os.path.join(folder, DEBUGGER_FILE)
            if self.keep_events:
                open(path, "w").close()
            elif os.path.exists(path):
                os.remove(path)

    def add(
        self,
        plugin_id: str,
        url: str,
        payload_id: str,
        events: int,
        nbytes: int,
        status: int | None,
        seconds: float,
        error: str,
        body: bytes = b"",
    ) -> None:
        """``body``: the request's body, or its events joined by commas; read only while a
        debugger is on."""
        self.entries.append(
            {
                "time": time.time(),
                "plugin_id": plugin_id,
                "url": url,
                "payload_id": payload_id,
                "events": events,
                "bytes": nbytes,
                "status": status,
                "latency_ms": round(seconds * 1000, 3),
                "error": error,
            }
        )
        if self.keep_events and body:
            self.entries[-1]["first_events"] = first_events(body)
            if len(self.entries) > DEBUG_EVENTS_KEPT:
                self.entries[-DEBUG_EVENTS_KEPT - 1].pop("first_events", None)
        self._dirty = True

    def flush(self) -> None:
        """Write this process's log for the monitor of a multi-worker node, and see whether its
        debugger is on (no-op in a single-process node)."""
        folder = multiprocess_dir()
        if folder is None:
            return
        self.keep_events = self._debuggers > 0 or os.path.exists(os.path.join(folder, DEBUGGER_FILE))
        if not self._dirty:
            return
        self._dirty = False
        path = os.path.join(folder, f"requests-{os.getpid()}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(list(self.entries), f)
        os.replace(path + ".tmp", path)

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` requests, newest first, from every worker."""
        entries = list(self.entries)
        folder = multiprocess_dir()
        if folder is not None:
            mine = f"requests-{os.getpid()}.json"
            for name in os.listdir(folder):
                if name.startswith("requests-") and name.endswith(".json") and name != mine:
                    try:
                        with open(os.path.join(folder, name)) as f:
                            entries += json.load(f)
                    except (OSError, ValueError):
                        continue  # a worker replacing its file: it is back next time
        entries.sort(key=lambda e: e["time"], reverse=True)
        return entries[:limit]


REQUEST_LOG = RequestLog()
