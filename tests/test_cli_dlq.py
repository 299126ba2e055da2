"""The ``buffer`` and ``dlq`` commands against real nodes: replay and purge refuse a store a running
node holds (naming its pid) and leave the node's counters as they were, while status, list and
show read beside it; and a forward output's store is seen and its dead letters replayed as they
were stored, under their tags, to reach the receiver."""

import json
import subprocess
import time

from harness import RawClient, RunningNode, forward_request
from ld_harness import ServerThread, free_port, ld_config
from process_harness import NodeProcess, scrape, until, value


def cli(console_script: str, conf, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([console_script, *args, "-c", str(conf)], capture_output=True, text=True, timeout=60)


def record(n: int) -> dict:
    return {"type": "track", "event": "Order Completed", "user_id": f"u{n}", "properties": {"order_id": f"O-{n}", "revenue": 1}}


NO_IDENTITY = {"type": "track", "event": "Order Completed", "properties": {"revenue": 1}}


def test_replay_and_purge_refuse_the_store_of_a_running_node_and_its_counters_stay_right(console_script, tmp_path):
    port, monitor = free_port(), free_port()
    sources = f"<source>\n  @type forward\n  port {port}\n</source>\n<source>\n  @type monitor_agent\n  bind 127.0.0.1\n  port {monitor}\n</source>"
    conf = tmp_path / "node.conf"
    with ServerThread() as ld:
        ld.script(*([503] * 100_000))  # nothing is delivered: the events stay in the store
        conf.write_text(ld_config(ld.url, str(tmp_path / "store"), source=sources))
        with NodeProcess(console_script, str(conf)) as node:
            node.wait_for_log("fluent-ld started")
            with RawClient(port) as c:
                c.send(forward_request("signal.x", [record(1), NO_IDENTITY, record(2)], chunk="k"))
                assert c.reply() == {"ack": "k"}

            def counters() -> tuple[float, float, float]:
                samples = scrape(monitor)
                return tuple(value(samples, f"fluentld_{name}", plugin_id="launchdarkly.0") for name in ("pending_events", "pending_bytes", "dead_letters"))

            until(lambda: counters()[0] == 2 and counters()[2] == 1, what="the node's counters")
            before = counters()

            for action in (("purge", "--all"), ("replay",)):
                refused = cli(console_script, conf, "dlq", *action)
                assert refused.returncode == 1, refused.stdout
                assert f"is in use by a running fluent-ld (pid {node.proc.pid}): stop it first" in refused.stderr
                assert "dead letter(s)" not in refused.stdout

            # Reading works beside the node.
            (letter,) = cli(console_script, conf, "dlq", "list").stdout.splitlines()
            assert "\tinvalid\t-\tno identity" in letter
            shown = json.loads(cli(console_script, conf, "dlq", "show", letter.split("\t")[0]).stdout)
            assert json.loads(shown["record"]) == NO_IDENTITY
            status = json.loads(cli(console_script, conf, "buffer", "status").stdout)
            assert (status["type"], status["events"], status["dead_letters"]) == ("launchdarkly", 2, {"invalid": 1})
            assert status["bytes"] == before[1]

            time.sleep(1.5)  # past a refresh of the node's gauges
            assert counters() == before
            with RawClient(port) as c:  # the node goes on counting from the right numbers
                c.send(forward_request("signal.x", [record(3), NO_IDENTITY], chunk="k2"))
                assert c.reply() == {"ack": "k2"}
            until(lambda: counters()[0] == 3 and counters()[2] == 2, what="the counters after another request")
            assert node.stop() == 0

    # Stopped: the node's store is free to change.
    assert "purged 2 dead letter(s)" in cli(console_script, conf, "dlq", "purge", "--all").stdout
    status = json.loads(cli(console_script, conf, "buffer", "status").stdout)
    assert (status["events"], status["dead_letters"]) == (3, {})


def forward_config(store: str, receiver: int) -> str:
    return f"""
<source>
  @type forward
  port 0
</source>
<match app.**>
  @type forward
  connect_timeout 1s
  <server>
    host 127.0.0.1
    port {receiver}
  </server>
  <buffer>
    path {store}
    flush_interval 50ms
    retry_wait 100ms
    retry_max_interval 200ms
    retry_timeout 1s
    retry_randomize false
  </buffer>
</match>
"""


def test_a_forward_outputs_dead_letters_are_seen_and_replayed_as_they_were(console_script, tmp_path):
    port = free_port()  # the receiver: down until the replay
    text = forward_config(str(tmp_path / "store"), port)
    conf = tmp_path / "node.conf"
    conf.write_text(text)
    with RunningNode(text) as sender, RawClient(sender.port) as c:
        c.send(forward_request("app.one", [{"n": 1}, {"n": 2}], chunk="a"))
        assert c.reply() == {"ack": "a"}
        c.send(forward_request("app.two", [{"n": 3}], chunk="b"))
        assert c.reply() == {"ack": "b"}
        until(lambda: sender.output().store.dead_letter_count == 3, what="the records expired unforwarded")

    status = json.loads(cli(console_script, conf, "buffer", "status").stdout)
    assert (status["type"], status["events"], status["dead_letters"]) == ("forward", 0, {"expired": 3})
    listing = cli(console_script, conf, "dlq", "list").stdout.splitlines()
    assert len(listing) == 3 and all("\texpired\t-\t" in line and "retry_timeout" in line for line in listing)
    replayed = cli(console_script, conf, "dlq", "replay")
    assert "replayed 3 dead letter(s); 0 still rejected and kept" in replayed.stdout, replayed.stdout + replayed.stderr
    status = json.loads(cli(console_script, conf, "buffer", "status").stdout)
    assert (status["events"], status["pending_rows"], status["dead_letters"]) == (3, 2, {})  # a row per tag

    receiver = f"<source>\n  @type forward\n  port {port}\n</source>\n<match **>\n  @type capture\n</match>\n"
    with RunningNode(receiver) as b, RunningNode(text) as sender:
        records = b.wait_records(3)
        until(lambda: sender.output().store.pending_events == 0, what="the replayed records delivered")
    assert sorted((tag, t, r["n"]) for tag, t, r in records) == [
        ("app.one", 1_700_000_000 * 10**9, 1),
        ("app.one", 1_700_000_000 * 10**9, 2),
        ("app.two", 1_700_000_000 * 10**9, 3),
    ]
