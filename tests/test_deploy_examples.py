"""The deployment examples: conf/production.conf, conf/fluent-bit/, conf/fluentd/, conf/kubernetes/.

Fluent Bit, Fluentd and Kubernetes are not run here. Their files are parsed (Fluent Bit's classic
format by the small parser below, which follows Fluent Bit's own rules; YAML by PyYAML; Fluentd's
syntax by fluent-ld's parser) and checked for what makes delivery at least once, and for agreement
with the fluent-ld side: tags, ports, paths and secrets.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from test_cli import EXAMPLE_ENV

from fluent_ld.config.errors import Where
from fluent_ld.config.params import Size
from fluent_ld.config.parser import Element, EvalContext, Value, parse
from fluent_ld.pipeline.router import MatchPattern

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
FLUENT_BIT = CONF / "fluent-bit"
FLUENTD_CONF = CONF / "fluentd" / "fluentd.conf"
KUBERNETES = CONF / "kubernetes" / "fluent-ld.yaml"
PRODUCTION = CONF / "production.conf"

# Where the Fluent Bit files are installed, and so how they name each other.
FLUENT_BIT_HOME = "/etc/fluent-bit/"
# The Fluent Bit pipelines: (classic file, the way its forward output reaches fluent-ld).
FLUENT_BIT_PIPELINES = [("fluent-bit.conf", "host"), ("fluent-bit-upstream.conf", "upstream")]
KNOWN_CLASSIC_SECTIONS = {
    "SERVICE", "INPUT", "FILTER", "OUTPUT", "PARSER", "MULTILINE_PARSER", "UPSTREAM", "NODE",
    "PLUGINS", "CUSTOM",
}  # fmt: skip
# How the Fluent Bit examples read the shared key: from the environment, never written down.
SHARED_KEY_REF = "${FORWARD_SHARED_KEY}"


# -- Fluent Bit's classic format --------------------------------------------------------------------


class ClassicFormatError(ValueError):
    pass


@dataclass
class ClassicSection:
    name: str  # upper case
    line: int
    params: list[tuple[str, str]] = field(default_factory=list)  # keys in lower case

    def get(self, key: str) -> str | None:
        """The last value of ``key`` (keys are case-insensitive, as in Fluent Bit)."""
        found = None
        for k, v in self.params:
            if k == key.lower():
                found = v
        return found

    def as_dict(self) -> dict[str, str]:
        return dict(self.params)


@dataclass
class ClassicConfig:
    sections: list[ClassicSection]
    includes: list[str]
    variables: dict[str, str]

    def all(self, name: str) -> list[ClassicSection]:
        return [s for s in self.sections if s.name == name]


def parse_classic(text: str) -> ClassicConfig:
    """Fluent Bit's classic format, as ``flb_cf_fluentbit.c`` reads it.

    ``[SECTION]`` headers at the start of a line; ``@INCLUDE file`` and ``@SET key=value``; inside a
    section ``key value`` lines with the same indentation everywhere in the file (the first indented
    line sets it; Fluent Bit refuses more or less); comments are whole lines (a ``#`` after a value
    is part of the value, so it is refused here); a key needs a value, separated by spaces.
    """
    sections: list[ClassicSection] = []
    includes: list[str] = []
    variables: dict[str, str] = {}
    indent: str | None = None
    for n, line in enumerate(text.split("\n"), 1):
        if line != line.rstrip():
            raise ClassicFormatError(f"line {n}: trailing whitespace (it would be part of the value)")
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("@INCLUDE "):
            includes.append(line[len("@INCLUDE ") :].strip())
            continue
        if line.upper().startswith("@SET "):
            key, sep, value = line[len("@SET ") :].partition("=")
            if not sep or not key.strip():
                raise ClassicFormatError(f"line {n}: @SET needs key=value")
            variables[key.strip()] = value.strip()
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise ClassicFormatError(f"line {n}: bad section header {line!r}")
            sections.append(ClassicSection(line[1:-1].strip().upper(), n))
            continue
        lead = line[: len(line) - len(line.lstrip(" \t"))]
        if not lead:
            raise ClassicFormatError(f"line {n}: {line!r} is neither a section header nor indented")
        if indent is None:
            indent = lead
        if lead != indent:
            raise ClassicFormatError(f"line {n}: indentation {lead!r} differs from the file's {indent!r}")
        body = line[len(indent) :]
        if body.startswith("#"):
            continue
        if not sections:
            raise ClassicFormatError(f"line {n}: a key outside any section")
        m = re.fullmatch(r"([^ \t]+) +(\S.*)", body)
        if not m:
            raise ClassicFormatError(f"line {n}: {body!r} is not `key value`")
        key, value = m.groups()
        if re.search(r"\s#", value):
            raise ClassicFormatError(f"line {n}: a comment after a value becomes part of it: {value!r}")
        sections[-1].params.append((key.lower(), value))
    return ClassicConfig(sections, includes, variables)


def read_classic(path: Path) -> ClassicConfig:
    return parse_classic(path.read_text())


def installed(path: str) -> Path:
    """The file in conf/fluent-bit/ that a path in a Fluent Bit config names once installed."""
    assert path.startswith(FLUENT_BIT_HOME), f"{path} is not under {FLUENT_BIT_HOME}, where this folder is installed"
    return FLUENT_BIT / path[len(FLUENT_BIT_HOME) :]


def fb_bool(value: object) -> bool | None:
    """A Fluent Bit boolean (``flb_utils_bool``), or None when the value is not one."""
    text = str(value).lower()
    if text in ("true", "on", "yes"):
        return True
    if text in ("false", "off", "no"):
        return False
    return None


def fb_normal(value: object) -> str:
    """A value as Fluent Bit sees it, so that classic and YAML spellings compare equal."""
    b = fb_bool(value)
    return str(b).lower() if b is not None else str(value)


def fb_tag_matches(pattern: str, tag: str) -> bool:
    """Fluent Bit's Match: ``*`` matches any characters, dots included."""
    return fnmatch.fnmatchcase(tag, pattern)


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("[OUTPUT]\n    Name forward\n    Port 24224  # the port\n", "comment after a value"),
        ("[OUTPUT]\n    Name forward\n      Port 24224\n", "indentation"),
        ("[INPUT]\n    Name tail\n[OUTPUT]\n  Name forward\n", "indentation"),
        ("[OUTPUT]\n    Name\n", "not `key value`"),
        ("[OUTPUT]\nName forward\n", "neither a section header nor indented"),
        ("    Name forward\n", "outside any section"),
        ("[OUTPUT\n    Name forward\n", "bad section header"),
        ("[OUTPUT]\n    Name forward \n", "trailing whitespace"),
    ],
)
def test_the_classic_parser_refuses_what_fluent_bit_refuses(text, complaint):
    with pytest.raises(ClassicFormatError, match=re.escape(complaint)):
        parse_classic(text)


def test_the_classic_parser_reads_sections_keys_and_commands():
    config = parse_classic(
        "@SET tag=signal.app\n@INCLUDE inputs.conf\n# a comment\n[SERVICE]\n    # indented comment\n"
        "    Flush     1\n    storage.path /var/lib/x/\n[OUTPUT]\n    Name  forward\n    Match *\n"
    )
    assert config.variables == {"tag": "signal.app"}
    assert config.includes == ["inputs.conf"]
    assert [(s.name, s.params) for s in config.sections] == [
        ("SERVICE", [("flush", "1"), ("storage.path", "/var/lib/x/")]),
        ("OUTPUT", [("name", "forward"), ("match", "*")]),
    ]


@pytest.mark.parametrize("name", sorted(p.name for p in FLUENT_BIT.glob("*.conf")))
def test_fluent_bit_classic_files_parse_with_known_sections(name):
    config = read_classic(FLUENT_BIT / name)
    assert config.sections, f"{name} has no sections"
    unknown = {s.name for s in config.sections} - KNOWN_CLASSIC_SECTIONS
    assert not unknown, f"{name}: unknown sections {unknown}"
    for include in config.includes:
        assert installed(include).is_file(), f"{name}: @INCLUDE {include} does not exist here"


def defined_parsers(service: dict, parsers_in_file: list[dict] | None = None) -> set[str]:
    """The parser names a pipeline can use: those of its parsers file (and of a YAML `parsers:`)."""
    names = {p["name"] for p in parsers_in_file or []}
    if service.get("parsers_file"):
        parsers = installed(service["parsers_file"])
        assert parsers.is_file(), f"parsers file {service['parsers_file']} is not in conf/fluent-bit/"
        names |= {s.get("name") for s in read_classic(parsers).all("PARSER")}
    return names


def check_fluent_bit_pipeline(service: dict, inputs: list[dict], outputs: list[dict], parsers: set[str]):
    """What every Fluent Bit pipeline here must get right, classic or YAML (keys in lower case)."""
    # Chunks on disk until acked: a storage path, and every input buffering on the file system.
    assert service.get("storage.path"), "no storage.path: chunks would live in memory only"
    tails = [i for i in inputs if i["name"] == "tail"]
    assert tails, "no tail input"
    for tail in inputs:
        assert tail.get("storage.type") == "filesystem", f"input {tail['name']} buffers in memory"
    for tail in tails:
        assert tail.get("path") and tail.get("db"), "tail needs a Path and a DB (its offsets across restarts)"
        assert tail.get("parser") in parsers, f"parser {tail.get('parser')!r} is not defined ({sorted(parsers)})"
        assert tail.get("tag"), "tail needs a Tag (fluent-ld routes by it)"
    forwards = [o for o in outputs if o["name"] == "forward"]
    assert len(forwards) == 1, "one forward output to fluent-ld"
    forward = forwards[0]
    for tail in tails:
        assert fb_tag_matches(forward["match"], tail["tag"]), f"Match {forward['match']} misses Tag {tail['tag']}"
        assert production_match(tail["tag"]), f"fluent-ld has no <match> for the tag {tail['tag']}"
    # The default (one retry) drops a chunk while fluent-ld is down.
    assert str(forward.get("retry_limit")).lower() in ("no_limits", "false"), "Retry_Limit must be unlimited"
    return forward


def check_forward_connection(settings: dict, where: str) -> None:
    """The settings of one connection to fluent-ld: ack, handshake, verified TLS."""
    assert fb_bool(settings.get("require_ack_response")) is True, f"{where}: Require_ack_response must be true"
    assert settings.get("shared_key") == SHARED_KEY_REF, f"{where}: Shared_Key must come from the environment"
    assert settings.get("self_hostname"), f"{where}: Self_Hostname is needed for the handshake"
    assert fb_bool(settings.get("tls")) is True, f"{where}: tls must be on"
    assert fb_bool(settings.get("tls.verify", "on")) is True, f"{where}: tls.verify must stay on"
    assert settings.get("tls.ca_file"), f"{where}: tls.ca_file: the CA of fluent-ld's certificate"
    port = int(settings.get("port", 24224))
    assert port == production_forward_port(), f"{where}: port {port} is not fluent-ld's forward port"


@pytest.mark.parametrize("name, reach", FLUENT_BIT_PIPELINES)
def test_fluent_bit_classic_pipeline(name, reach):
    config = read_classic(FLUENT_BIT / name)
    assert len(config.all("SERVICE")) == 1
    service = config.all("SERVICE")[0].as_dict()
    inputs = [s.as_dict() for s in config.all("INPUT")]
    outputs = [s.as_dict() for s in config.all("OUTPUT")]
    forward = check_fluent_bit_pipeline(service, inputs, outputs, defined_parsers(service))
    if reach == "host":
        assert "upstream" not in forward
        assert forward.get("host")
        check_forward_connection(forward, f"{name} [OUTPUT] forward")
    else:
        # With an Upstream the output reads host, port, key, ack and TLS from each [NODE] only.
        ignored = {"host", "port", "shared_key", "self_hostname", "require_ack_response", "tls"} & set(forward)
        assert not ignored, f"{name}: {sorted(ignored)} would be ignored next to Upstream (set them per [NODE])"
        upstream = installed(forward["upstream"])
        assert upstream.is_file(), f"{forward['upstream']} is not in conf/fluent-bit/"


def test_fluent_bit_upstream_file():
    upstream = read_classic(FLUENT_BIT / "upstream.conf")
    assert {s.name for s in upstream.sections} == {"UPSTREAM", "NODE"}
    assert len(upstream.all("UPSTREAM")) == 1, "one Upstream per file"
    assert upstream.all("UPSTREAM")[0].get("name")
    nodes = upstream.all("NODE")
    assert len(nodes) >= 2, "an Upstream is for several fluent-ld nodes"
    for node in nodes:
        settings = node.as_dict()
        assert settings.get("name") and settings.get("host"), f"[NODE] at line {node.line}: name and host"
        assert 1 <= int(settings["port"]) <= 65535
        check_forward_connection(settings, f"upstream.conf [NODE] {settings['name']}")
    assert len({n.get("name") for n in nodes}) == len(nodes), "node names must be unique"
    assert len({(n.get("host"), n.get("port")) for n in nodes}) == len(nodes), "nodes must differ"


def test_fluent_bit_yaml_pipeline_is_the_classic_one():
    doc = yaml.safe_load((FLUENT_BIT / "fluent-bit.yaml").read_text())
    known = {"service", "pipeline", "parsers", "multiline_parsers", "env", "includes", "plugins", "upstream_servers", "customs"}
    assert set(doc) <= known, f"unknown top-level sections: {set(doc) - known}"
    assert set(doc["pipeline"]) <= {"inputs", "filters", "outputs"}

    def lower(d: dict) -> dict:
        return {str(k).lower(): v for k, v in d.items()}

    service = lower(doc["service"])
    inputs = [lower(i) for i in doc["pipeline"]["inputs"]]
    outputs = [lower(o) for o in doc["pipeline"]["outputs"]]
    forward = check_fluent_bit_pipeline(service, inputs, outputs, defined_parsers(service, doc.get("parsers")))
    check_forward_connection(forward, "fluent-bit.yaml outputs: forward")

    # The same settings as fluent-bit.conf, so that the two examples cannot drift apart.
    classic = read_classic(FLUENT_BIT / "fluent-bit.conf")

    def normal(d: dict) -> dict:
        return {k: fb_normal(v) for k, v in d.items()}

    assert normal(service) == normal(classic.all("SERVICE")[0].as_dict())
    assert [normal(i) for i in inputs] == [normal(s.as_dict()) for s in classic.all("INPUT")]
    assert [normal(o) for o in outputs] == [normal(s.as_dict()) for s in classic.all("OUTPUT")]


# -- fluent-ld's side ---------------------------------------------------------------------------------


def parse_fluent(text: str, name: str) -> Element:
    """Fluentd syntax (fluent-ld's parser, syntax only), with the examples' environment."""
    return parse(text, name, EvalContext(env=EXAMPLE_ENV, hostname="this-host"))


def sections(element: Element, name: str, type_name: str | None = None) -> list[Element]:
    found = [e for e in element.elements if e.name == name]
    if type_name is not None:
        found = [e for e in found if text(e, "@type") == type_name]
    return found


def text(element: Element, key: str, default: str | None = None) -> str | None:
    value = element.param(key)
    return default if value is None else value.text


def fluent_bool(element: Element, key: str) -> bool:
    value = text(element, key)
    return value is not None and value.lower() in ("", "true", "yes")


def size(written: str) -> int:
    return Size().convert(Value(written, Where("test", 0)))


def production() -> Element:
    return parse_fluent(PRODUCTION.read_text(), str(PRODUCTION))


def production_match(tag: str) -> bool:
    return any(MatchPattern(m.arg).match(tag) for m in sections(production(), "match"))


def production_forward_port() -> int:
    (forward,) = sections(production(), "source", "forward")
    return int(text(forward, "port", "24224"))


def test_production_conf_shape():
    root = production()
    (system,) = sections(root, "system")
    assert int(text(system, "workers")) >= 2
    (forward,) = sections(root, "source", "forward")
    (security,) = sections(forward, "security")
    assert text(security, "shared_key") == EXAMPLE_ENV["FORWARD_SHARED_KEY"], "the key comes from the environment"
    (transport,) = sections(forward, "transport")
    assert transport.arg == "tls" and text(transport, "cert_path") and text(transport, "private_key_path")
    (monitor,) = sections(root, "source", "monitor_agent")
    assert text(monitor, "port") == "24220"
    (output,) = sections(root, "match", "launchdarkly")
    assert MatchPattern(output.arg).match("signal.app")
    assert text(output, "access_token") == EXAMPLE_ENV["LD_ACCESS_TOKEN"], "the token comes from the environment"
    (buffer,) = sections(output, "buffer")
    assert text(buffer, "@type", "file") == "file"
    assert text(buffer, "path") == "/var/lib/fluent-ld"


# -- Fluentd ------------------------------------------------------------------------------------------


def test_fluentd_forwards_to_several_fluent_ld_nodes_at_least_once():
    root = parse_fluent(FLUENTD_CONF.read_text(), str(FLUENTD_CONF))
    tags = [text(s, "tag") for s in sections(root, "source") if text(s, "tag")]
    assert tags, "a source with the tag fluent-ld routes by"
    forwards = sections(root, "match", "forward")
    assert len(forwards) == 1
    (out,) = forwards
    for tag in tags:
        assert MatchPattern(out.arg).match(tag), f"<match {out.arg}> misses the source tag {tag}"
        assert production_match(tag), f"fluent-ld has no <match> for the tag {tag}"

    assert fluent_bool(out, "require_ack_response"), "require_ack_response true: at least once"
    assert text(out, "ack_response_timeout")
    assert text(out, "heartbeat_type") in ("transport", "tcp"), "fluent-ld answers heartbeats over TCP/TLS"
    assert text(out, "heartbeat_interval")
    assert fluent_bool(out, "phi_failure_detector")
    assert text(out, "transport") == "tls" and text(out, "tls_cert_path"), "TLS, verified against a CA"
    assert text(out, "tls_insecure_mode", "false") == "false"

    (security,) = sections(out, "security")
    assert text(security, "self_hostname")
    assert text(security, "shared_key") == EXAMPLE_ENV["FORWARD_SHARED_KEY"], "the key comes from the environment"

    servers = sections(out, "server")
    active = [s for s in servers if not fluent_bool(s, "standby")]
    assert len(servers) >= 2 and active, "several <server>s, at least one of them active"
    for server in servers:
        assert text(server, "host"), f"<server> at line {server.where.line} has no host"
        assert int(text(server, "port", "24224")) == production_forward_port()
    assert len({(text(s, "host"), text(s, "port")) for s in servers}) == len(servers)

    (buffer,) = sections(out, "buffer")
    assert text(buffer, "@type") == "file" and text(buffer, "path"), "chunks wait on disk"
    assert text(buffer, "flush_interval")
    assert fluent_bool(buffer, "retry_forever"), "retry_forever: never drop a chunk while fluent-ld is away"
    assert text(buffer, "retry_max_interval")
    (forward_source,) = sections(production(), "source", "forward")
    limit = size(text(forward_source, "chunk_size_limit", "32m"))
    assert size(text(buffer, "chunk_limit_size", "8m")) < limit, "Fluentd's chunks must fit fluent-ld's chunk_size_limit"


# -- Kubernetes ---------------------------------------------------------------------------------------


def kubernetes_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(KUBERNETES.read_text()) if d]


def only(docs: list[dict], *kinds: str) -> dict:
    found = [d for d in docs if d["kind"] in kinds]
    assert len(found) == 1, f"expected one of {kinds}, found {len(found)}"
    return found[0]


@pytest.fixture
def k8s():
    """The manifests, the workload's container and pod spec, and the fluent-ld config in the ConfigMap."""
    docs = kubernetes_docs()
    for d in docs:
        assert d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"), d
    config_map = only(docs, "ConfigMap")
    workload = only(docs, "StatefulSet", "Deployment")
    pod = workload["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "fluent-ld"]
    (key,) = [k for k in config_map["data"] if k.endswith(".conf")]
    conf_text = config_map["data"][key]
    return {
        "docs": docs,
        "config_map": config_map,
        "key": key,
        "conf_text": conf_text,
        "config": parse_fluent(conf_text, f"ConfigMap {key}"),
        "workload": workload,
        "pod": pod,
        "container": container,
    }


def container_port(container: dict, port: int | str) -> int:
    """A port as a probe or Service names it (a number or a container port's name)."""
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    return found


def test_kubernetes_kinds(k8s):
    kinds = {d["kind"] for d in k8s["docs"]}
    assert {"ConfigMap", "Service"} <= kinds and kinds & {"StatefulSet", "Deployment"}
    assert k8s["config_map"]["data"].keys() == {"fluent-ld.conf"}
    for secret in (d for d in k8s["docs"] if d["kind"] == "Secret"):
        assert not secret.get("data") and not secret.get("stringData"), "no secret values in the manifests"


def test_kubernetes_keeps_a_store_per_node_across_restarts(k8s):
    workload, pod, container = k8s["workload"], k8s["pod"], k8s["container"]
    buffer_paths = [
        text(buffer, "path") for match in sections(k8s["config"], "match") for buffer in sections(match, "buffer") if text(buffer, "@type", "file") == "file"
    ]
    assert buffer_paths, "a file buffer"
    claim_templates = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
    claimed_volumes = {v["name"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
    if workload["kind"] == "Deployment":
        # One claim shared by every replica: only a single replica can own it.
        assert workload["spec"].get("replicas", 1) == 1
    persistent = claim_templates | claimed_volumes
    for path in buffer_paths:
        mounts = [m for m in container["volumeMounts"] if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
        assert mounts, f"the buffer path {path} is not on a mounted volume"
        assert mounts[-1]["name"] in persistent, f"the buffer path {path} is not on a persistent volume"
        assert not mounts[-1].get("readOnly")


def test_kubernetes_command_reads_the_config_map(k8s):
    container, pod, config_map = k8s["container"], k8s["pod"], k8s["config_map"]
    command = [*container.get("command", ["fluent-ld"]), *container.get("args", [])]  # the image's entrypoint runs fluent-ld
    assert command[:2] == ["fluent-ld", "run"]
    path = command[command.index("-c") + 1]
    (volume,) = [v for v in pod["volumes"] if v.get("configMap", {}).get("name") == config_map["metadata"]["name"]]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    assert path == f"{mount['mountPath'].rstrip('/')}/{k8s['key']}"
    assert container["image"] == "fluent-ld:latest"


def test_kubernetes_ports_and_probes_match_the_config(k8s):
    container, config = k8s["container"], k8s["config"]
    (forward,) = sections(config, "source", "forward")
    (monitor,) = sections(config, "source", "monitor_agent")
    forward_port = int(text(forward, "port", "24224"))
    monitor_port = int(text(monitor, "port", "24220"))
    ports = {p["containerPort"] for p in container["ports"]}
    assert {forward_port, monitor_port} <= ports
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert container_port(container, get["port"]) == monitor_port, f"{probe} is not on the monitor port"
    # Shutdown acks what was received (shutdown_timeout) and lets requests in flight finish.
    assert k8s["pod"]["terminationGracePeriodSeconds"] >= 30


def test_kubernetes_services(k8s):
    docs, container, workload = k8s["docs"], k8s["container"], k8s["workload"]
    (forward,) = sections(k8s["config"], "source", "forward")
    (monitor,) = sections(k8s["config"], "source", "monitor_agent")
    forward_port = int(text(forward, "port", "24224"))
    monitor_port = int(text(monitor, "port", "24220"))
    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    assert workload["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    services = [d for d in docs if d["kind"] == "Service"]
    reaching = []
    for service in services:
        assert service["spec"]["selector"].items() <= pod_labels.items(), f"{service['metadata']['name']} selects no pod"
        targets = {container_port(container, p.get("targetPort", p["port"])) for p in service["spec"]["ports"]}
        assert monitor_port not in targets, "the monitor port has no auth: no Service exposes it"
        if forward_port in targets:
            reaching.append(service)
    assert reaching, "a Service in front of the forward port"
    if workload["kind"] == "StatefulSet":
        (governing,) = [s for s in services if s["metadata"]["name"] == workload["spec"]["serviceName"]]
        assert governing["spec"].get("clusterIP") == "None", "a StatefulSet's serviceName is a headless Service"


def test_kubernetes_secrets_come_from_a_secret(k8s):
    container, conf_text = k8s["container"], k8s["conf_text"]
    required = set(re.findall(r"ENV\[['\"](\w+)['\"]\]", conf_text))
    assert {"LD_ACCESS_TOKEN", "FORWARD_SHARED_KEY"} <= required
    env = {e["name"]: e for e in container.get("env", [])}
    for name in required:
        assert name in env, f"{name} is read by the config but not set in the container"
        assert "secretKeyRef" in env[name].get("valueFrom", {}), f"{name} must come from a Secret"
        assert "value" not in env[name]


def test_kubernetes_config_map_passes_check_config(k8s, console_script, tmp_path):
    conf = tmp_path / k8s["key"]
    conf.write_text(k8s["conf_text"])
    result = subprocess.run(
        [console_script, "check-config", "-c", str(conf)],
        capture_output=True, text=True, timeout=60, env={**os.environ, **EXAMPLE_ENV},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


# -- the index ----------------------------------------------------------------------------------------


def test_conf_readme_lists_every_example():
    readme = (CONF / "README.md").read_text()
    files = sorted(str(p.relative_to(CONF)) for p in CONF.rglob("*") if p.is_file() and p.name != "README.md")
    listed = re.findall(r"^- `([^`]+)`: \S", readme, re.MULTILINE)
    assert sorted(listed) == files, "conf/README.md lists each example once, by its path under conf/"
