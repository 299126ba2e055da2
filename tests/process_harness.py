"""A node run as a real process (``fluent-ld run -c FILE``), with its log lines collected as they
come, and a scraper for its monitor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


class NodeProcess:
    def __init__(self, console_script: str, conf: str, *extra: str) -> None:
        self.proc = subprocess.Popen([console_script, "run", "-c", conf, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 30) -> str:
        """The first line containing ``text`` once it has appeared ``count`` times."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in list(self.lines) if text in line]
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader catch up
                raise AssertionError(f"the node exited ({self.proc.returncode}) before logging {text!r}:\n{self.log}")
            time.sleep(0.05)
        raise AssertionError(f"no log line with {text!r} within {timeout}s:\n{self.log}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._reader.join(5)

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get_json(url: str):
    status, body = get(url)
    return status, json.loads(body)


def scrape(port: int) -> dict:
    """{(name, frozenset(labels)): value} from a monitor's /metrics."""
    status, body = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def until(predicate, timeout: float = 30, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(interval)
