"""A node with a LaunchDarkly output pointed at the LaunchDarkly-compatible server, in process."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
import time

from fluent_ld.config.loader import load_text
from fluent_ld.ldserver import LaunchDarklyServer
from fluent_ld.node import Node

TOKEN = "api-test-token"


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
            flush_interval 50ms
            retry_wait 50ms
            retry_max_interval 200ms
            retry_randomize false
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
