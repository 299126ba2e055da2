"""A node with a LaunchDarkly output pointed at the LaunchDarkly-compatible server, in process."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import textwrap
import threading
import time

from fluent_ld.config.loader import load_text
from fluent_ld.dev.ldserver import LaunchDarklyServer
from fluent_ld.pipeline.node import Node

TOKEN = "api-test-token"


# The tests' <buffer> settings, each unless the test gives its own.
BUFFER_DEFAULTS = {"flush_interval": "50ms", "retry_wait": "50ms", "retry_max_interval": "200ms", "retry_randomize": "false"}


def defaults(buffer: str) -> str:
    given = {line.split()[0] for line in buffer.splitlines() if line.split()}
    return "\n            ".join(f"{k} {v}" for k, v in BUFFER_DEFAULTS.items() if k not in given)


def ld_config(url: str, path: str, buffer: str = "", extra: str = "", source: str = "") -> str:
    return textwrap.dedent(
        f"""\
        {source}
        <match signal.**>
          @type launchdarkly
          access_token {TOKEN}
          project_key default
          environment_key production
          events_host {url}
          {extra}
          <buffer>
            path {path}
            {defaults(buffer)}
            {buffer}
          </buffer>
        </match>
        """
    )


@contextlib.asynccontextmanager
async def ld_node(tmp_path, buffer: str = "", extra: str = "", server: LaunchDarklyServer | None = None, source: str = ""):
    server = server or LaunchDarklyServer(TOKEN)
    if server.port is None:
        await server.start()
    node = Node(load_text(ld_config(server.url, str(tmp_path), buffer, extra, source), "ld.conf"))
    await node.start()
    try:
        yield node, node.outputs[0][1], server
    finally:
        await node.stop()
        await server.stop()


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def order(n: int, **extra) -> dict:
    return {
        "type": "track",
        "event": "Order Completed",
        "anonymous_id": f"anon-{n}",
        "timestamp": "2026-11-24T12:00:00Z",
        "properties": {"order_id": f"O-{n}", "revenue": n, **extra},
    }


class ServerThread:
    """The LaunchDarkly-compatible server on its own loop thread (for nodes run as processes)."""

    def __init__(self, server: LaunchDarklyServer | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = server or LaunchDarklyServer(TOKEN)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self.server

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(console_script: str, conf: str, port: int, log) -> subprocess.Popen:
    """``fluent-ld run -c conf`` as a process, once it listens on ``port``. Its log goes to the
    open file ``log`` (a pipe nobody reads would stall a node that logs a lot)."""
    proc = subprocess.Popen([console_script, "run", "-c", conf], stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(f"the node exited with {proc.returncode}; see {log.name}") from None
            time.sleep(0.02)
    proc.kill()
    raise AssertionError("the node did not start listening")
