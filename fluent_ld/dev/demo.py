"""``fluent-ld demo``: the whole path on one machine, nothing else running.

A LaunchDarkly-compatible server on a free port, a node from the packaged default config pointed at
it (store in a temporary folder), sample Signal events sent with fluent-logger (a real
forward client, with acks), then what LaunchDarkly received, as it received it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import time
from importlib import resources
from typing import TextIO

from fluent_ld.config.loader import load, load_text
from fluent_ld.dev.ldserver import LaunchDarklyServer, metric
from fluent_ld.launchdarkly.output import LaunchDarklyOutput
from fluent_ld.launchdarkly.verification import render
from fluent_ld.outputs.durable import DurableOutput
from fluent_ld.pipeline.node import Node

__all__ = ["DEFAULT_CONFIG", "SAMPLE_EVENTS", "run_demo"]

DEFAULT_CONFIG = str(resources.files("fluent_ld").joinpath("default.conf"))
DEMO_TOKEN = "api-demo-0000-token"

# The import guide's own example first (datafly.track("Order Completed", {...}) for an anonymous visitor),
# then one of each event the Default preset maps, and two it does not take.
SAMPLE_EVENTS = [
    {
        "type": "track",
        "event": "Order Completed",
        "anonymous_id": "a1b2c3d4-anonymous-id",
        "timestamp": "2025-06-06T08:53:20.000Z",
        "properties": {"order_id": "ORD-1001", "revenue": 89.99, "currency": "GBP"},
    },
    {"type": "page", "anonymous_id": "a1b2c3d4-anonymous-id", "name": "Pricing", "properties": {"path": "/pricing", "title": "Pricing"}},
    {"type": "track", "event": "Signed Up", "userId": "user-1002", "properties": {"plan": "team"}},
    {"type": "track", "event": "Product Viewed", "user_id": "user-1002", "properties": {"sku": "SKU-7", "value": 24.0}},
    {"type": "track", "event": "Product Added", "user_id": "user-1002", "properties": {"sku": "SKU-7", "value": 24.0, "quantity": 2}},
    {"type": "track", "event": "Checkout Started", "user_id": "user-1002", "properties": {"value": 48.0}},
    {"type": "track", "event": "Order Completed", "user_id": "user-1002", "properties": {"order_id": "ORD-1002", "revenue": 48.0, "currency": "EUR"}},
    # Rejected with a reason: no identity at all.
    {"type": "track", "event": "Order Completed", "properties": {"order_id": "ORD-1003", "revenue": 10}},
    # Not in the preset: counted and skipped.
    {"type": "track", "event": "Coupon Applied", "user_id": "user-1002", "properties": {"coupon": "WELCOME"}},
]


def _send_with_fluent_logger(port: int) -> int:
    from fluent import sender

    client = sender.FluentSender("signal", host="127.0.0.1", port=port, nanosecond_precision=True)
    sent = 0
    for event in SAMPLE_EVENTS:
        if not client.emit("web", event):
            raise RuntimeError(f"fluent-logger could not send: {client.last_error}")
        sent += 1
    client.close()
    return sent


def _mask(headers: dict[str, str]) -> dict[str, str]:
    return {k: (v[:4] + "..." + v[-4:] if k.lower() == "authorization" else v) for k, v in headers.items()}


# --serve: the Event Debugger on a free local port.
DEBUGGER_SOURCE = """
<source>
  @type monitor_agent
  @id debugger
  bind 127.0.0.1
  port 0
  debugger true
</source>
"""


async def _serve(node: Node, out: TextIO) -> None:
    """Keep the demo running, with its Event Debugger, until SIGINT (Ctrl-C) or SIGTERM."""
    monitor = next(p for pc, p in node.sources if pc.type_name == "monitor_agent")
    forward = node.sources[0][1]
    print(f"\nThe Event Debugger: http://127.0.0.1:{monitor.port}/", file=out)  # type: ignore[attr-defined]
    print(f"Send more events with: fluent-ld send --port {forward.port} FILE.jsonl", file=out)  # type: ignore[attr-defined]
    print("Ctrl-C stops the demo.", file=out, flush=True)
    for _, output in node.outputs:
        if isinstance(output, LaunchDarklyOutput) and output.verification is None:
            output.verification = (await output.check_metrics()).to_json()  # for the page, as verify_on_start keeps it
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


# The demo project's metrics: one per key the Default preset maps but begin_checkout, so that the
# verification shows what a key with no metric looks like.
DEMO_METRICS = [
    metric("orders", "order_completed", numeric=True, name="Orders (revenue)"),
    metric("signups", "sign_up", name="Sign-ups"),
    metric("page-views", "page_view", name="Page views"),
    metric("product-views", "product_viewed", numeric=True, name="Product views"),
    metric("add-to-cart", "add_to_cart", numeric=True, name="Added to cart"),
]


async def run_demo(out: TextIO, timeout: float = 30.0, serve: bool = False) -> int:
    """The demo; ``serve``: then keep it running with the Event Debugger until SIGINT or SIGTERM."""
    server = LaunchDarklyServer(DEMO_TOKEN, metrics={"default": DEMO_METRICS})
    await server.start()
    with tempfile.TemporaryDirectory(prefix="fluent-ld-demo-") as store_dir:
        env = {
            **os.environ,
            "LD_ACCESS_TOKEN": DEMO_TOKEN,
            "LD_PROJECT_KEY": "default",
            "LD_ENVIRONMENT_KEY": "production",
            "LD_EVENTS_HOST": server.url,
            "FLUENT_LD_PORT": "0",
            "FLUENT_LD_BUFFER_PATH": store_dir,
        }
        if serve:
            with open(DEFAULT_CONFIG, encoding="utf-8") as f:
                config = load_text(f.read() + DEBUGGER_SOURCE, DEFAULT_CONFIG, env)
        else:
            config = load(DEFAULT_CONFIG, env)
        node = Node(config)
        await node.start()
        try:
            port = node.sources[0][1].port  # type: ignore[attr-defined]  # the forward source
            print(f"fluent-ld is listening for forward clients on 127.0.0.1:{port}; LaunchDarkly-compatible server on {server.url}.", file=out)
            sent = await asyncio.get_running_loop().run_in_executor(None, _send_with_fluent_logger, port)
            print(f"Sent {sent} Signal events with fluent-logger.\n", file=out)
            output = node.outputs[0][1]
            deadline = time.monotonic() + timeout
            expected = 7  # the mapped ones
            while len(server.events) < expected and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            for request in server.requests:
                print(f"POST {request.path} -> {request.status}", file=out)
                for name, value in _mask(request.headers).items():
                    if name.lower() in (
                        "authorization",
                        "content-type",
                        "x-launchdarkly-event-schema",
                        "user-agent",
                        "x-launchdarkly-payload-id",
                        "content-encoding",
                    ):
                        print(f"  {name}: {value}", file=out)
                print(json.dumps(request.events, indent=2), file=out)
            assert isinstance(output, DurableOutput)
            letters = await output.store.dead_letters()
            print(
                f"\nSummary: {sent} sent, {len(server.events)} delivered to LaunchDarkly in "
                f"{len(server.requests)} request(s), {output.stats.get('records_unmapped', 0)} not in the preset "
                f"(skipped), {len(letters)} dead-lettered.",
                file=out,
            )
            for letter in letters:
                print(f"  dead letter: {letter['kind']}: {letter['reason']}", file=out)
            assert isinstance(output, LaunchDarklyOutput)
            print("\nWill they count? `fluent-ld verify` against the server's REST API (its project has a metric", file=out)
            print("for every mapped key but begin_checkout):\n", file=out)
            print(render(output.id, await output.check_metrics()), file=out)
            code = 0 if len(server.events) == expected else 1
            if serve:
                await _serve(node, out)
            return code
        finally:
            await node.stop()
            await server.stop()
