"""``<system> workers 2`` as a real process tree: both workers take connections on the shared
port, a killed worker is restarted and delivers what it had stored, metrics are summed across
workers (and across the restart), the monitor and webhook are served once, and SIGTERM stops it all."""

import os
import re
import signal
import textwrap

import pytest
from fluent import sender
from ld_harness import TOKEN, ServerThread, free_port
from process_harness import NodeProcess, alive, get_json, scrape, until, value

pytestmark = pytest.mark.slow


def config(tmp_path, url, forward, monitor, webhook):
    conf = tmp_path / "node.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            <system>
              workers 2
            </system>
            <source>
              @type forward
              @id in_forward
              bind 127.0.0.1
              port {forward}
            </source>
            <source>
              @type monitor_agent
              bind 127.0.0.1
              port {monitor}
            </source>
            <source>
              @type launchdarkly_webhook
              bind 127.0.0.1
              port {webhook}
              allow_unsigned true
              tag audit.ld
            </source>
            <match audit.**>
              @type null
            </match>
            <match signal.**>
              @type launchdarkly
              @id to_ld
              access_token {TOKEN}
              project_key default
              environment_key production
              events_host {url}
              <buffer>
                path {tmp_path / "store"}
                flush_interval 50ms
                retry_wait 50ms
                retry_max_interval 200ms
              </buffer>
            </match>
            """
        )
    )
    return str(conf)


def send_over_new_connections(port, connections, per_connection, first):
    """Each connection is a new fluent-logger sender: a new socket, so the kernel picks a worker."""
    n = first
    for _ in range(connections):
        logger = sender.FluentSender("signal", host="127.0.0.1", port=port)
        for _ in range(per_connection):
            record = {"type": "track", "event": "Order Completed", "user_id": f"u{n}", "properties": {"order_id": f"O-{n}", "revenue": 1}}
            assert logger.emit("web", record), logger.last_error
            n += 1
        logger.close()
    return n


def test_two_workers_share_the_port_and_a_killed_worker_is_restarted(console_script, tmp_path):
    forward, monitor, webhook = free_port(), free_port(), free_port()
    with ServerThread() as ld:
        conf = config(tmp_path, ld.url, forward, monitor, webhook)
        with NodeProcess(console_script, conf) as node:
            started = node.wait_for_log("fluent-ld started 2 workers")
            pids = [int(p) for p in re.search(r"pids (\d+), (\d+)", started).groups()]

            n = send_over_new_connections(forward, 30, 5, 0)
            until(lambda: len(ld.events) == 150, what="150 events delivered")
            m = scrape(monitor)
            by_worker = [value(m, "fluentld_forward_connections_total", plugin_id="in_forward", worker=w) for w in ("0", "1")]
            assert sum(by_worker) == 30 and min(by_worker) > 0, by_worker  # both workers took connections
            assert value(m, "fluentld_records_received_total", plugin_id="to_ld") == 150  # summed over workers
            assert value(m, "fluentld_workers") == 2
            assert sorted(p.name for p in (tmp_path / "store").iterdir() if p.suffix == ".sqlite3") == ["to_ld-worker0.sqlite3", "to_ld-worker1.sqlite3"]
            # Served once: one webhook port, answered by worker 0 only (the others would fail to bind).
            assert "Listening for LaunchDarkly webhooks" in node.log and node.log.count("Listening for LaunchDarkly webhooks") == 1

            os.kill(pids[1], signal.SIGKILL)
            node.wait_for_log(f"Worker 1 (pid {pids[1]}) died (signal SIGKILL)")
            restarted = node.wait_for_log("Worker 1 restarted")
            new_pid = int(re.search(r"pid (\d+)", restarted).group(1))
            assert new_pid != pids[1] and alive(new_pid) and not alive(pids[1])

            send_over_new_connections(forward, 30, 5, n)
            until(lambda: len(ld.events) == 300, what="300 events delivered")
            m = scrape(monitor)
            assert value(m, "fluentld_worker_restarts_total", worker="1") == 1
            assert value(m, "fluentld_worker_restarts_total", worker="0") == 0
            # The killed worker's counters still count: totals never go back.
            assert value(m, "fluentld_records_delivered_total", plugin_id="to_ld") == 300
            until(lambda: value(scrape(monitor), "fluentld_pending_events", plugin_id="to_ld") == 0, what="stores empty")
            status, body = get_json(f"http://127.0.0.1:{monitor}/readyz")
            assert status == 200 and body["ready"] is True

            assert node.stop() == 0
            assert not alive(pids[0]) and not alive(new_pid)
            assert "fluent-ld stopped." in node.log
    assert len({e["data"]["order_id"] for e in ld.events}) == 300


def test_a_worker_that_cannot_start_stops_the_node(console_script, tmp_path):
    forward = free_port()
    conf = tmp_path / "node.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            <system>
              workers 2
            </system>
            <source>
              @type forward
              bind 127.0.0.1
              port {forward}
            </source>
            <match **>
              @type launchdarkly
              access_token x
              project_key p
              environment_key e
              <buffer>
                path /proc/not-writable
              </buffer>
            </match>
            """
        )
    )
    with NodeProcess(console_script, str(conf)) as node:
        assert node.proc.wait(60) == 1
        node._reader.join(5)
        assert "did not start" in node.log and "cannot open the store" in node.log
