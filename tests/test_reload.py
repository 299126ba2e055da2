"""SIGHUP on a running node: a valid config is applied without losing what the store holds, an
invalid one is refused with its file and line while the running config goes on, and a config that
cannot start falls back to the running one. Also through a supervisor with two workers."""

import signal
import socket
import textwrap

from fluent import sender
from ld_harness import TOKEN, ServerThread, free_port
from process_harness import NodeProcess, get_json, until

from fluent_ld.dev.ldserver import Fault, LaunchDarklyServer


def write_config(path, url, forward, store, *, workers=1, compress="text", extra=""):
    path.write_text(
        textwrap.dedent(
            f"""\
            <system>
              workers {workers}
            </system>
            <source>
              @type forward
              bind 127.0.0.1
              port {forward}
            </source>
            {extra}
            <match signal.**>
              @type launchdarkly
              @id to_ld
              access_token {TOKEN}
              project_key default
              environment_key production
              events_host {url}
              compress {compress}
              <buffer>
                path {store}
                flush_interval 50ms
                retry_wait 50ms
                retry_max_interval 200ms
              </buffer>
            </match>
            """
        )
    )


def send(port, first, count):
    logger = sender.FluentSender("signal", host="127.0.0.1", port=port)
    try:
        for n in range(first, first + count):
            record = {"type": "track", "event": "Order Completed", "user_id": f"u{n}", "properties": {"order_id": f"O-{n}", "revenue": 1}}
            assert logger.emit("web", record), logger.last_error
    finally:
        logger.close()


def order_ids(ld):
    return sorted(int(e["data"]["order_id"][2:]) for e in ld.events)


def test_sighup_applies_a_valid_config_keeps_stored_events_and_refuses_an_invalid_one(console_script, tmp_path):
    forward, monitor = free_port(), free_port()
    server = LaunchDarklyServer(TOKEN)
    server.script(*[Fault(status=503)] * 10_000)  # LaunchDarkly down: everything waits in the store
    conf = tmp_path / "node.conf"
    with ServerThread(server) as ld:
        write_config(conf, ld.url, forward, tmp_path / "store")
        with NodeProcess(console_script, str(conf)) as node:
            node.wait_for_log("fluent-ld started")
            send(forward, 0, 20)  # acked: on disk
            until(lambda: len(ld.requests) >= 2, what="the first (refused) attempts")
            assert ld.events == []

            # 1. A valid new config: gzip, and a monitor. The 20 stored events must survive it.
            extra = f"<source>\n  @type monitor_agent\n  bind 127.0.0.1\n  port {monitor}\n</source>"
            write_config(conf, ld.url, forward, tmp_path / "store", compress="gzip", extra=extra)
            node.signal(signal.SIGHUP)
            node.wait_for_log("Reloaded:")
            assert get_json(f"http://127.0.0.1:{monitor}/healthz")[0] == 200
            ld.faults.clear()  # LaunchDarkly is back
            until(lambda: len(ld.events) == 20, what="the stored events delivered after the reload")
            assert ld.requests[-1].headers.get("Content-Encoding") == "gzip"  # the new config is in effect

            # 2. An invalid config: refused with file and line, the running one goes on.
            conf.write_text(conf.read_text().replace("compress gzip", "compress brotli"))
            node.signal(signal.SIGHUP)
            refused = node.wait_for_log("Reload refused:")
            assert f"{conf}:" in refused and "compress" in refused and "brotli" in refused
            node.wait_for_log("the running config is kept")
            send(forward, 20, 10)
            until(lambda: len(ld.events) == 30, what="events after the refused reload")
            assert get_json(f"http://127.0.0.1:{monitor}/healthz")[0] == 200  # still the reloaded node

            # 3. A valid config that cannot start (its monitor port is taken): back to the running one.
            with socket.socket() as squatter:
                squatter.bind(("127.0.0.1", 0))
                squatter.listen()
                taken = squatter.getsockname()[1]
                extra = f"<source>\n  @type monitor_agent\n  bind 127.0.0.1\n  port {taken}\n</source>"
                write_config(conf, ld.url, forward, tmp_path / "store", extra=extra)
                node.signal(signal.SIGHUP)
                node.wait_for_log("starting the previous config again")
                node.wait_for_log("fluent-ld started", count=3)  # first start, the reload, the fallback
                send(forward, 30, 10)
                until(lambda: len(ld.events) == 40, what="events after the fallback")
                assert get_json(f"http://127.0.0.1:{monitor}/healthz")[0] == 200

            assert node.stop() == 0
    assert order_ids(ld) == list(range(40))


def test_sighup_reloads_every_worker_in_turn(console_script, tmp_path):
    forward, monitor = free_port(), free_port()
    conf = tmp_path / "node.conf"
    with ServerThread() as ld:
        write_config(conf, ld.url, forward, tmp_path / "store", workers=2)
        with NodeProcess(console_script, str(conf)) as node:
            node.wait_for_log("fluent-ld started 2 workers")
            extra = f"<source>\n  @type monitor_agent\n  bind 127.0.0.1\n  port {monitor}\n</source>"
            write_config(conf, ld.url, forward, tmp_path / "store", workers=2, compress="gzip", extra=extra)
            node.signal(signal.SIGHUP)
            node.wait_for_log("Reloaded 2 workers")
            assert "[worker 0] fluent_ld.service.runner: Reloaded" in node.log and "[worker 1] fluent_ld.service.runner: Reloaded" in node.log
            for first in range(0, 100, 10):
                send(forward, first, 10)  # new connections: both workers, both on the new config
            until(lambda: len(ld.events) == 100)
            assert all(r.headers.get("Content-Encoding") == "gzip" for r in ld.requests)
            assert get_json(f"http://127.0.0.1:{monitor}/healthz")[0] == 200

            write_config(conf, ld.url, forward, tmp_path / "store", workers=3)
            node.signal(signal.SIGHUP)
            node.wait_for_log("workers changed from 2 to 3, which needs a restart")
            assert node.stop() == 0
