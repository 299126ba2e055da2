"""conf/monitoring/: the Grafana dashboard and the Prometheus alerting rules against a real node.

Every metric they name is on the ``/metrics`` of a running node (the supervisor's two on a node with
``<system> workers 2``, the only kind that has them), used as its type allows (a counter through
rate() or increase(), a histogram's buckets through histogram_quantile). The rules pass
``promtool check rules`` and the unit tests beside them; every dashboard query parses as PromQL, and
the dashboard is one Grafana imports: a data source variable, and core panels that each query it."""

import asyncio
import json
import re
import shutil
import subprocess
import textwrap
import uuid
from pathlib import Path

import aiohttp
import pytest
import yaml
from ld_harness import free_port, ld_node
from process_harness import NodeProcess, get, until
from prometheus_client.parser import text_string_to_metric_families

from fluent_ld import metrics

MONITORING = Path(__file__).resolve().parent.parent / "conf" / "monitoring"
RULES = MONITORING / "fluent-ld.rules.yml"
RULE_TESTS = MONITORING / "fluent-ld.rules.test.yml"
DASHBOARD = MONITORING / "fluent-ld.dashboard.json"

NAME = re.compile(r"\bfluentld_[a-z0-9_]+")

# Served by metrics.SupervisorCollector, so only by a node with <system> workers N: checked on one in
# test_the_supervisors_metrics_are_on_a_workers_node. {name: (type, labels)}
SUPERVISOR_ONLY = {"fluentld_workers": ("gauge", set()), "fluentld_worker_restarts_total": ("counter", {"worker"})}

# Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = {"instance", "job"}

# Grafana's core panels: the dashboard needs no plugin installed.
CORE_PANELS = {"row", "timeseries", "stat", "gauge", "bargauge", "table", "state-timeline", "status-history", "text", "heatmap"}
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


# -- what the files say --------------------------------------------------------------------------------


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict]:
    """Every panel, those inside collapsed rows too."""
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def panel_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel query."""
    return [(f"panel {panel['title']!r} {target['refId']}", target["expr"]) for panel in dashboard_panels() for target in panel.get("targets", [])]


def variable_selectors() -> list[tuple[str, str]]:
    """(where, series selector) for every variable that lists label values."""
    out = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            selector = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert selector, f"variable {variable['name']}: {query!r} is not label_values(selector, label)"
            out.append((f"variable {variable['name']}", selector.group(1)))
    return out


def rule_exprs() -> list[tuple[str, str]]:
    return [(f"alert {rule['alert']}", rule["expr"]) for rule in rules()]


def queries() -> list[tuple[str, str]]:
    """What Prometheus evaluates: the alerts' expressions and the panels' queries."""
    return rule_exprs() + panel_exprs()


def as_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables given values, as Prometheus would get it."""
    return re.sub(r"\$\w+", ".*", expr.replace("$__rate_interval", "5m"))


def strings(value) -> list[str]:
    """Every string in a parsed JSON or YAML document: queries, descriptions, annotations."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def names_used() -> dict[str, set[str]]:
    """{metric name: the files naming it}, in queries and in the text around them."""
    out: dict[str, set[str]] = {}
    for path, document in ((RULES, yaml.safe_load(RULES.read_text())), (DASHBOARD, dashboard())):
        for text in strings(document):
            for name in NAME.findall(text):
                out.setdefault(name, set()).add(path.name)
    return out


# -- what the node serves ------------------------------------------------------------------------------


def sample_names(exposition: str) -> dict[str, str]:
    """{name a query can select: the family's type} from a /metrics body. HELP and TYPE lines name a
    counter without ``_total`` and a histogram without its suffixes; its samples carry them."""
    out = {}
    for family in text_string_to_metric_families(exposition):
        if family.type == "counter":
            out[family.name + "_total"] = "counter"
        elif family.type == "histogram":
            out.update({family.name + suffix: "histogram" for suffix in ("_bucket", "_sum", "_count")})
        else:
            out[family.name] = family.type
    return out


def types(exposition: str) -> dict[str, str]:
    """{name: type} of a single-process node's /metrics and the supervisor's."""
    return {**sample_names(exposition), **{name: kind for name, (kind, _) in SUPERVISOR_ONLY.items()}}


SOURCES = """
<source>
  @type forward
  @id in_forward_{u}
  bind 127.0.0.1
  port 0
</source>
<source>
  @type monitor_agent
  @id monitor_{u}
  bind 127.0.0.1
  port 0
</source>
"""


@pytest.fixture(scope="module")
def exposition(tmp_path_factory) -> str:
    """The /metrics body of a node run in process: a forward source, a monitor and a LaunchDarkly
    output sending to the LaunchDarkly-compatible server. Every metric fluent_ld.metrics declares is
    there, with samples or, until a plugin sets one, as its HELP and TYPE lines."""
    u = uuid.uuid4().hex[:8]

    async def scrape() -> str:
        async with ld_node(tmp_path_factory.mktemp("store"), extra=f"@id to_ld_{u}", source=SOURCES.format(u=u)) as (node, _out, _ld):
            monitor = next(p for pc, p in node.sources if pc.id == f"monitor_{u}")
            url = f"http://127.0.0.1:{monitor.port}/metrics"
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                assert response.status == 200
                return await response.text()

    return asyncio.run(scrape())


# -- the metrics they use ------------------------------------------------------------------------------


def test_every_metric_named_is_on_a_running_nodes_metrics(exposition):
    served = sample_names(exposition)
    used = names_used()
    assert len(used) > 25 and {"fluentld_verify_metric_found", "fluentld_request_duration_seconds_bucket"} <= used.keys()
    missing = {name: sorted(files) for name, files in used.items() if name not in served and name not in SUPERVISOR_ONLY}
    assert not missing, f"not on /metrics (a counter is name_total, a histogram name_bucket/_sum/_count): {missing}"
    # What a single-process node lacks is exactly what the supervisor adds.
    assert not SUPERVISOR_ONLY.keys() & served.keys()


@pytest.mark.slow
def test_the_supervisors_metrics_are_on_a_workers_node(console_script, tmp_path):
    port = free_port()
    conf = tmp_path / "node.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            <system>
              workers 2
            </system>
            <source>
              @type monitor_agent
              bind 127.0.0.1
              port {port}
            </source>
            <match **>
              @type null
            </match>
            """
        )
    )
    with NodeProcess(console_script, str(conf)) as node:
        node.wait_for_log("fluent-ld started 2 workers")
        body: list[str] = []

        def has_supervisor_metrics() -> bool:
            status, text = get(f"http://127.0.0.1:{port}/metrics")
            body[:] = [text.decode()] if status == 200 else []
            return bool(body) and SUPERVISOR_ONLY.keys() <= sample_names(body[0]).keys()

        until(has_supervisor_metrics, what="the supervisor's metrics on /metrics")
        served = sample_names(body[0])
        labels: dict[str, set[str]] = {}
        for family in text_string_to_metric_families(body[0]):
            for sample in family.samples:
                labels.setdefault(sample.name, set()).update(sample.labels)
        for name, (kind, names) in SUPERVISOR_ONLY.items():
            assert served[name] == kind and labels[name] == names, (name, served[name], labels[name])
        assert node.stop() == 0


def test_counters_are_read_through_rate_or_increase(exposition):
    """A counter's raw value depends on when the node started; only its rate means anything."""
    kinds = types(exposition)
    for where, expr in queries():
        for name in set(NAME.findall(expr)):
            if kinds.get(name) in ("counter", "histogram"):
                used = len(re.findall(rf"\b{name}\b", expr))
                rated = len(re.findall(rf"\b(?:rate|irate|increase)\(\s*{name}(?:\{{[^}}]*\}})?\[", expr))
                assert used == rated, f"{where}: {name} outside rate()/increase(): {expr}"
            elif kinds.get(name) == "gauge":
                assert not re.search(rf"\b(?:rate|irate|increase)\(\s*{name}\b", expr), f"{where}: rate() of the gauge {name}: {expr}"


def test_histogram_buckets_go_through_histogram_quantile_by_le(exposition):
    kinds = types(exposition)
    bucketed = [(where, expr) for where, expr in queries() if any(n.endswith("_bucket") and kinds.get(n) == "histogram" for n in NAME.findall(expr))]
    assert bucketed, "the dashboard shows latency quantiles"
    for where, expr in bucketed:
        assert "histogram_quantile(" in expr and re.search(r"\bby \([^)]*\ble\b", expr), f"{where}: {expr}"


def test_selectors_use_labels_the_metrics_have():
    """A misspelt label in a selector matches nothing, silently: every label is the metric's own or
    one Prometheus adds when it scrapes."""
    # The declarations in fluent_ld.metrics (prometheus-client keeps a metric's labels in _labelnames:
    # a metric no plugin has set yet has no sample on /metrics to read them from).
    declared = {m._name + ("_total" if m._type == "counter" else ""): set(m._labelnames) for m in vars(metrics).values() if hasattr(m, "_labelnames")}
    declared.update({name: labels for name, (_, labels) in SUPERVISOR_ONLY.items()})
    for where, expr in queries() + variable_selectors():
        for name, selector in re.findall(r"\b(fluentld_[a-z0-9_]+)\{([^}]*)\}", expr):
            base = name if name in declared else re.sub(r"_(bucket|sum|count)$", "", name)
            labels = declared[base] | ({"le"} if name != base else set())
            used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
            assert used <= labels | TARGET_LABELS, f"{where}: {name} has no label {used - labels - TARGET_LABELS}"


# -- the alerting rules --------------------------------------------------------------------------------


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: scripts/system-deps installs it (Debian's prometheus package)")
    return path


def test_the_rules_pass_promtool_check():
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_the_rules_unit_tests_pass():
    result = subprocess.run([promtool(), "test", "rules", RULE_TESTS.name], cwd=MONITORING, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_waits_a_while_has_a_severity_and_says_what_to_do():
    alerts = rules()
    assert len({rule["alert"] for rule in alerts}) == len(alerts)
    for rule in alerts:
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{rule['alert']}: no for:"
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"].strip() and len(rule["annotations"]["description"]) > 80, rule["alert"]


def test_the_operators_alerts_are_there():
    by_expr = {rule["expr"].strip(): rule["alert"] for rule in rules()}
    for expr in ("fluentld_output_auth_error > 0", "fluentld_store_writable == 0", "fluentld_verify_metric_found == 0", "fluentld_verify_status == 2"):
        assert expr in by_expr, expr
    names = " ".join(rule["expr"] for rule in rules())
    for name in (
        "fluentld_oldest_pending_event_age_seconds",
        "fluentld_records_dead_lettered_total",
        "fluentld_backpressure_seconds_total",
        "fluentld_worker_restarts_total",
        "fluentld_pool_process_deaths_total",
        "fluentld_records_delivered_total",
    ):
        assert name in names, name


# -- the dashboard -------------------------------------------------------------------------------------


def test_the_dashboard_is_importable():
    board = dashboard()
    assert board["schemaVersion"] >= 39 and board["uid"] and board["title"]
    assert board.get("id") is None  # Grafana assigns it on import
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]

    panels = dashboard_panels()
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are unique"
    for panel in panels:
        assert panel["type"] in CORE_PANELS, f"{panel['title']}: {panel['type']} is not a core panel"
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE and target["expr"].strip() and target["refId"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]


def test_the_dashboard_panels_fit_the_grid_without_overlapping():
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard_panels():
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, panel["title"]
        for y in range(g["y"], g["y"] + g["h"]):
            for x in range(g["x"], g["x"] + g["w"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_dashboard_query_parses_as_promql(tmp_path):
    """promtool parses each query as a recording rule's expression, Grafana's variables filled in."""
    exprs = panel_exprs() + variable_selectors()
    as_rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{i}", "expr": as_promql(expr)} for i, (_, expr) in enumerate(exprs)]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(as_rules))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
