"""The container image (the Dockerfile), without building it: there is no container daemon here.

hadolint lints the Dockerfile. Its instructions, read line by line, are checked against the
Kubernetes example (parsed with PyYAML), the packaged default config and the README: ports, the
store's volume, the user, the entrypoint and command. Then the image's ENTRYPOINT and CMD run as a
container runs them: PID 1 of a new PID namespace (`unshare --pid --fork --mount-proc`), with the
image's environment, Debian's tini from the host (the image installs the same package) and this
checkout's fluent-ld, against the LaunchDarkly-compatible server. Only what must move does: the
store (the image's WORKDIR and volume) goes to a temporary folder and the forward port to a free
one, through the variables the default config reads for that. They run as root: this checkout's
Python may live where the image's user could not reach it.
"""

from __future__ import annotations

import configparser
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from fluent import sender
from harness import RawClient, forward_request
from ld_harness import TOKEN, ServerThread, free_port, order
from process_harness import NodeProcess, until
from test_deploy_examples import container_port, kubernetes_docs, only, parse_fluent, sections, text

from fluent_ld.config.parser import EvalContext, parse
from fluent_ld.dev.ldserver import Fault, LaunchDarklyServer

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DEFAULT_CONF = REPO / "fluent_ld" / "default.conf"
README = REPO / "README.md"
SCRIPTS = sysconfig.get_path("scripts")  # this checkout's fluent-ld and hadolint
# The python image's PATH, with this checkout's fluent-ld first in place of the image's.
IMAGE_PATH = f"{SCRIPTS}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# A request that LaunchDarkly answers this late is still in flight when the node is told to stop,
# and the stop waits for it (up to 5s): the window in which a second SIGTERM must stop it at once.
LATE_ANSWER = 6.0


# -- the Dockerfile, one instruction per (continued) line ---------------------------------------------


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str  # upper case
    arguments: str


def parse_dockerfile(source: str) -> list[Instruction]:
    """Instructions with their continuation lines joined; comments and blank lines dropped, inside
    a continued instruction too, as Docker drops them."""
    found: list[Instruction] = []
    pending: str | None = None
    start = 0
    for number, raw in enumerate(source.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if pending is None:
            pending, start = "", number
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        found.append(Instruction(start, keyword.upper(), arguments.strip()))
        pending = None
    assert pending is None, "the Dockerfile ends inside a continued instruction"
    return found


@dataclass
class Dockerfile:
    arguments: dict[str, str]  # the ARGs before the first FROM, with their defaults
    stages: list[list[Instruction]]  # each from its FROM

    @classmethod
    def read(cls, path: Path = DOCKERFILE) -> Dockerfile:
        instructions = parse_dockerfile(path.read_text())
        arguments: dict[str, str] = {}
        stages: list[list[Instruction]] = []
        for instruction in instructions:
            if instruction.keyword == "FROM":
                stages.append([instruction])
            elif stages:
                stages[-1].append(instruction)
            else:
                assert instruction.keyword == "ARG", f"line {instruction.line}: only ARG may come before FROM"
                name, _, default = instruction.arguments.partition("=")
                arguments[name] = default
        return cls(arguments, stages)

    @property
    def final(self) -> list[Instruction]:
        return self.stages[-1]

    def base(self, stage: list[Instruction]) -> str:
        """The image a stage starts from, with the ARGs substituted."""
        image = stage[0].arguments.split()[0]
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: self.arguments[m.group(1) or m.group(2)], image)

    def all(self, keyword: str, stage: list[Instruction] | None = None) -> list[Instruction]:
        return [i for i in (self.final if stage is None else stage) if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        (instruction,) = self.all(keyword)
        return instruction

    def exec_form(self, keyword: str) -> list[str]:
        """ENTRYPOINT or CMD, which must be in exec form: a shell form runs under `/bin/sh -c`,
        and the signals would reach the shell, not tini."""
        return exec_form(self.one(keyword))

    @property
    def env(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for pair in shlex.split(instruction.arguments):
                name, equals, value = pair.partition("=")
                assert equals, f"line {instruction.line}: ENV NAME=VALUE, not the legacy form"
                found[name] = value
        return found

    @property
    def user(self) -> tuple[int, int]:
        uid, _, gid = self.one("USER").arguments.partition(":")
        assert uid.isdigit() and gid.isdigit(), "a numeric uid:gid (runAsNonRoot can only verify a number)"
        return int(uid), int(gid)

    @property
    def volumes(self) -> list[str]:
        return [path for v in self.all("VOLUME") for path in (json.loads(v.arguments) if v.arguments.startswith("[") else v.arguments.split())]

    @property
    def ports(self) -> set[int]:
        return {int(port.removesuffix("/tcp")) for e in self.all("EXPOSE") for port in e.arguments.split()}

    @property
    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        """The options (``--timeout``: ``10s``, ...) and the exec-form command."""
        options, _, command = self.one("HEALTHCHECK").arguments.partition("CMD ")
        parsed = dict(option.removeprefix("--").split("=", 1) for option in options.split())
        return parsed, exec_form(Instruction(0, "CMD", command))

    @property
    def run_lines(self) -> str:
        return "\n".join(i.arguments for i in self.all("RUN"))


def exec_form(instruction: Instruction) -> list[str]:
    assert instruction.arguments.startswith("["), f"line {instruction.line}: {instruction.keyword} in exec form (a JSON list)"
    argv = json.loads(instruction.arguments)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return argv


def seconds(duration: str) -> float:
    """A Docker (Go) duration: 30s, 1m30s, 500ms."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile.read()


def test_the_parser_joins_continuations_and_drops_comments():
    source = '# syntax=docker/dockerfile:1\nFROM a AS b\n\nRUN one \\\n    # a comment\n    && two\nCMD ["x"]\n'
    assert parse_dockerfile(source) == [Instruction(2, "FROM", "a AS b"), Instruction(4, "RUN", "one && two"), Instruction(7, "CMD", '["x"]')]


def test_hadolint_finds_nothing():
    hadolint = os.path.join(SCRIPTS, "hadolint")
    if not os.path.exists(hadolint):
        pytest.fail(f"hadolint not installed at {hadolint}: scripts/setup test")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


# -- agreement: the Dockerfile, the default config, the Kubernetes example, the README -----------------


@pytest.fixture(scope="module")
def k8s() -> dict:
    docs = kubernetes_docs()
    workload = only(docs, "StatefulSet")
    pod = workload["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "fluent-ld"]
    config = parse_fluent(only(docs, "ConfigMap")["data"]["fluent-ld.conf"], "ConfigMap fluent-ld.conf")
    return {"workload": workload, "pod": pod, "container": container, "config": config}


def default_config(env: dict[str, str]):
    """The packaged default config as it reads with ``env``."""
    return parse(DEFAULT_CONF.read_text(), "default.conf", EvalContext(env=env))


def test_two_stages_a_wheel_built_then_installed_on_slim_python_311(dockerfile):
    assert len(dockerfile.stages) == 2
    build, final = dockerfile.stages
    build_runs = "\n".join(i.arguments for i in dockerfile.all("RUN", build))
    assert re.search(r"\bpip wheel\b|\bpython -m build\b", build_runs)
    assert dockerfile.base(build) == dockerfile.base(final)
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", dockerfile.base(final)), dockerfile.base(final)
    assert not dockerfile.all("COPY", final), "the final stage takes only the wheels, through a bind mount"
    assert "--mount=type=bind,from=build" in dockerfile.run_lines and ".whl" in dockerfile.run_lines


def test_the_wheel_carries_every_file_of_the_package():
    """The image has only what the wheel has: every file of the package that is not Python code
    must be package data in setup.cfg (the editable install the other tests use would not tell)."""
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    patterns = [(package, pattern) for package, value in setup["options.package_data"].items() for pattern in value.split()]
    package_root = REPO / "fluent_ld"
    missing = []
    for path in sorted(package_root.rglob("*")):
        if path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
            continue
        where = path.relative_to(REPO)
        if not any(
            where.is_relative_to(package.replace(".", "/")) and fnmatch.fnmatch(str(where.relative_to(package.replace(".", "/"))), pattern)
            for package, pattern in patterns
        ):
            missing.append(str(where))
    assert not missing, f"not in setup.cfg's [options.package_data], so not in the image: {missing}"


def test_tini_is_pid_1_and_signals_fluent_ld_alone(dockerfile):
    assert re.search(r"apt-get install\b.* tini\b", dockerfile.run_lines), "Debian's tini"
    # No -g: tini would send SIGHUP (a reload) to the pool processes too, which it kills.
    assert dockerfile.exec_form("ENTRYPOINT") == ["tini", "--", "fluent-ld"]
    assert dockerfile.exec_form("CMD") == ["run"], "the packaged default config"


def test_the_default_config_listens_beyond_loopback_and_stores_in_the_volume(dockerfile):
    env = dockerfile.env
    config = default_config({**env, "LD_ACCESS_TOKEN": "api-x", "LD_PROJECT_KEY": "p", "LD_ENVIRONMENT_KEY": "e"})
    (forward,) = sections(config, "source", "forward")
    assert text(forward, "bind") == "0.0.0.0"
    assert int(text(forward, "port") or 0) in dockerfile.ports
    (buffer,) = [b for m in sections(config, "match") for b in sections(m, "buffer")]
    assert dockerfile.volumes == [text(buffer, "path")]
    assert dockerfile.one("WORKDIR").arguments == dockerfile.volumes[0], "relative paths of a config land in the volume too"


def test_user_is_non_root_and_the_one_kubernetes_runs_as(dockerfile, k8s):
    uid, gid = dockerfile.user
    assert uid != 0 and gid != 0
    assert f"--uid {uid} " in dockerfile.run_lines and f"--gid {gid} " in dockerfile.run_lines, "a user in /etc/passwd"
    # The volume's mount point belongs to that user: a fresh named volume is created with its owner.
    assert re.search(rf"install -d -o {uid} -g {gid} .*{re.escape(dockerfile.volumes[0])}\b", dockerfile.run_lines)
    context = k8s["pod"]["securityContext"]
    assert context["runAsNonRoot"] is True
    assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (uid, gid, gid)


def test_ports_and_volume_are_kubernetes_ones(dockerfile, k8s):
    container, config = k8s["container"], k8s["config"]
    assert {p["containerPort"] for p in container["ports"]} == dockerfile.ports
    (forward,) = sections(config, "source", "forward")
    (monitor,) = sections(config, "source", "monitor_agent")
    assert container_port(container, "forward") == int(text(forward, "port") or 0) == 24224
    assert container_port(container, "monitor") == int(text(monitor, "port") or 0) == 24220
    (volume,) = dockerfile.volumes
    claims = {t["metadata"]["name"] for t in k8s["workload"]["spec"]["volumeClaimTemplates"]}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] in claims]
    assert mount["mountPath"] == volume
    assert [text(b, "path") for m in sections(config, "match") for b in sections(m, "buffer")] == [volume]


def test_kubernetes_keeps_the_entrypoint(dockerfile, k8s):
    container = k8s["container"]
    # A command would replace tini: fluent-ld as PID 1 would ignore the second SIGTERM.
    assert "command" not in container
    assert container["image"] == "fluent-ld:latest"
    argv = [*dockerfile.exec_form("ENTRYPOINT"), *container["args"]]
    assert argv[:4] == ["tini", "--", "fluent-ld", "run"] and "-c" in argv


def readme_commands() -> dict[str, list[str]]:
    """The README's `docker ...` commands by subcommand, continuation lines joined."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    commands = [shlex.split(c) for block in blocks for c in block.replace("\\\n", " ").splitlines() if c.startswith("docker ")]
    return {argv[1]: argv for argv in commands}


def options(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_the_readme_builds_and_runs_the_image_as_the_dockerfile_and_kubernetes_do(dockerfile, k8s):
    commands = readme_commands()
    build, run = commands["build"], commands["run"]
    assert build[-1] == "." and options(build, "-t") == [run[-1]]
    assert {int(p.split(":")[-1]) for p in options(run, "-p")} <= dockerfile.ports
    assert [v.split(":")[1] for v in options(run, "-v")] == dockerfile.volumes
    # The variables the default config requires, the token taken from the environment as it is.
    given = {e.partition("=")[0]: e for e in options(run, "-e")}
    assert {"LD_ACCESS_TOKEN", "LD_PROJECT_KEY", "LD_ENVIRONMENT_KEY"} <= given.keys()
    assert given["LD_ACCESS_TOKEN"] == "LD_ACCESS_TOKEN", "no token written down"
    # Time to stop as in Kubernetes: the in-flight requests and the forward source's shutdown.
    assert [int(t) for t in options(run, "--stop-timeout")] == [k8s["pod"]["terminationGracePeriodSeconds"]]
    readme = README.read_text()
    uid, gid = dockerfile.user
    assert uid == gid and f"uid and gid {uid}" in readme
    assert "FLUENT_LD_HEALTHCHECK_URL=http://127.0.0.1:24220/healthz" in readme


# -- the health check ---------------------------------------------------------------------------------


def test_the_healthcheck_follows_healthz_when_asked_to(dockerfile, console_script, tmp_path):
    opts, argv = dockerfile.healthcheck
    assert argv[0] == "python"
    argv = [sys.executable, *argv[1:]]
    # The check's own request gives up (5s) before Docker does.
    assert seconds(opts["timeout"]) > 5

    def check(env: dict[str, str]) -> int:
        return subprocess.run(argv, env={"PATH": IMAGE_PATH, **env}, capture_output=True, timeout=30).returncode

    assert check({}) == 0, "the default config has no monitor: nothing to ask"
    assert check({"FLUENT_LD_HEALTHCHECK_URL": ""}) == 0
    forward, monitor = free_port(), free_port()
    conf = tmp_path / "node.conf"
    conf.write_text(
        f"<source>\n  @type forward\n  bind 127.0.0.1\n  port {forward}\n</source>\n"
        f"<source>\n  @type monitor_agent\n  bind 127.0.0.1\n  port {monitor}\n</source>\n"
        "<match **>\n  @type null\n</match>\n"
    )
    url = f"http://127.0.0.1:{monitor}/healthz"
    with NodeProcess(console_script, str(conf)) as node:
        node.wait_for_log("fluent-ld started")
        assert check({"FLUENT_LD_HEALTHCHECK_URL": url}) == 0
        assert node.stop() == 0
    assert check({"FLUENT_LD_HEALTHCHECK_URL": url}) != 0, "nothing answers"


# -- the entrypoint and command as PID 1 ----------------------------------------------------------------


def parent(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None  # gone meanwhile


def children(pid: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and parent(p) == pid]


def read_proc(pid: int, name: str) -> str:
    with open(f"/proc/{pid}/{name}") as f:
        return f.read()


class Container:
    """The image's entrypoint and command as PID 1 of a new PID namespace, its log lines collected
    as they come. Signals go to PID 1 (tini) by its pid outside the namespace,
    as a container runtime sends them."""

    def __init__(self, argv: list[str], env: dict[str, str], workdir: Path) -> None:
        unshare = shutil.which("unshare")
        assert unshare, "util-linux's unshare"
        # --kill-child: should unshare itself be killed, the namespace goes with its PID 1.
        command = [unshare, "--pid", "--fork", "--mount-proc", "--kill-child", *argv]
        self.proc = subprocess.Popen(command, env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.pid1 = self._find_pid1()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def _find_pid1(self) -> int:
        """unshare's child, once it has become what the entrypoint names."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for pid in children(self.proc.pid):
                try:
                    if read_proc(pid, "comm").strip() == "tini":
                        return pid
                except OSError:
                    pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"no tini under unshare (exit {self.proc.poll()}):\n{self.log}")

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.lines)):
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader catch up
                raise AssertionError(f"the container exited ({self.proc.returncode}) before logging {text!r}:\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line with {text!r} within {timeout}s:\n{self.log}")
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        os.kill(self.pid1, signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {timeout}s later:\n{self.log}") from None

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.pid1, signal.SIGKILL)  # PID 1 gone: the kernel kills the whole namespace
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)


@pytest.fixture
def volume(tmp_path) -> Path:
    """A folder for the image's WORKDIR and volume."""
    if os.geteuid() != 0:
        pytest.skip("a new PID namespace (unshare --pid --mount-proc) needs root")
    if shutil.which("tini", path=IMAGE_PATH) is None:
        pytest.fail("tini is not installed: scripts/system-deps")
    path = tmp_path / "volume"
    path.mkdir()
    return path


@pytest.fixture
def start(dockerfile, volume):
    """start(ld) -> (Container, forward port): the image's entrypoint and command, with the image's
    environment plus the LaunchDarkly settings, the store in ``volume`` and a free forward port."""
    started: list[Container] = []

    def start(ld: LaunchDarklyServer) -> tuple[Container, int]:
        port = free_port()
        env = {
            "PATH": IMAGE_PATH,
            "LANG": "C.UTF-8",  # as the python image sets it
            "HOME": str(volume),
            **dockerfile.env,
            "FLUENT_LD_BUFFER_PATH": str(volume),
            "FLUENT_LD_PORT": str(port),
            "LD_ACCESS_TOKEN": TOKEN,
            "LD_PROJECT_KEY": "default",
            "LD_ENVIRONMENT_KEY": "production",
            "LD_EVENTS_HOST": ld.url,
        }
        argv = [*dockerfile.exec_form("ENTRYPOINT"), *dockerfile.exec_form("CMD")]
        container = Container(argv, env, volume)
        started.append(container)
        container.wait_for_log("fluent-ld started")
        return container, port

    yield start
    for container in started:
        container.__exit__(None, None, None)


def send(port: int, first: int, count: int) -> None:
    """With fluent-logger, then one request that must be acknowledged (on disk)."""
    logger = sender.FluentSender("signal", host="127.0.0.1", port=port)
    try:
        for n in range(first, first + count - 1):
            assert logger.emit("web", order(n)), logger.last_error
    finally:
        logger.close()
    with RawClient(port) as client:
        chunk = f"c{first}"
        client.send(forward_request("signal.web", [order(first + count - 1)], chunk=chunk))
        assert client.reply() == {"ack": chunk}


def order_ids(ld: LaunchDarklyServer) -> list[int]:
    return sorted(int(e["data"]["order_id"][2:]) for e in list(ld.events))


def test_tini_runs_fluent_ld_and_sigterm_stops_it_after_delivering(start):
    with ServerThread() as ld:
        container, port = start(ld)
        # PID 1 in its namespace is tini, whose child is fluent-ld with the default command.
        assert read_proc(container.pid1, "status").split("NSpid:")[1].split("\n")[0].split()[-1] == "1"
        (node,) = children(container.pid1)
        assert read_proc(node, "cmdline").split("\0")[1:3] == [os.path.join(SCRIPTS, "fluent-ld"), "run"]

        send(port, 0, 10)
        until(lambda: order_ids(ld) == list(range(10)), timeout=30, what="delivery of the 10 events")
        container.signal(signal.SIGTERM)
        assert container.wait(30) == 0, container.log
    assert "Received SIGTERM: stopping" in container.log and "fluent-ld stopped." in container.log


def test_sighup_reloads_and_the_node_keeps_running(start):
    with ServerThread() as ld:
        container, port = start(ld)
        container.signal(signal.SIGHUP)
        container.wait_for_log("Reloaded:")
        send(port, 0, 5)
        until(lambda: order_ids(ld) == list(range(5)), timeout=30, what="delivery after the reload")
        assert container.proc.poll() is None
        container.signal(signal.SIGTERM)
        assert container.wait(30) == 0, container.log
    # SIGHUP reached fluent-ld alone: sent to its process group, it would have killed the pool.
    assert "Pool process" not in container.log


def test_a_second_sigterm_stops_it_at_once(start):
    server = LaunchDarklyServer(TOKEN)
    server.script(Fault(late=True, delay=LATE_ANSWER))  # accepted, answered late: in flight at the stop
    with ServerThread(server) as ld:
        container, port = start(ld)
        send(port, 0, 1)
        until(lambda: len(ld.requests) == 1, timeout=30, what="the request that is answered late")
        container.signal(signal.SIGTERM)
        container.wait_for_log("fluent-ld stopping.")  # logged after its SIGTERM handler was removed
        assert container.proc.poll() is None, "the stop waits for the request in flight"
        signalled = time.monotonic()
        container.signal(signal.SIGTERM)
        code = container.wait(10)
        assert time.monotonic() - signalled < 2
        # fluent-ld was killed by the signal, which tini reports as 128+N.
        assert code == 128 + signal.SIGTERM, container.log
    assert "fluent-ld stopped." not in container.log
