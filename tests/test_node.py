"""The node built from config text, in process: routing, unmatched records, start and stop order."""

import asyncio
import json
import textwrap

import pytest

from fluent_ld.config.loader import load_text
from fluent_ld.pipeline.node import Node
from fluent_ld.plugin import StartError


def build(text):
    return Node(load_text(textwrap.dedent(text), "node.conf"))


def test_records_reach_the_first_matching_output_and_unmatched_are_counted(capsys, caplog):
    node = build(
        """\
        <match signal.debug>
          @type null
        </match>
        <match signal.**>
          @type stdout
        </match>
        """
    )

    async def scenario():
        await node.start()
        await node.emit("signal.web", [(1_700_000_000_123_456_789, {"event": "Signed Up"})])
        await node.emit("signal.debug", [(0, {"x": 1}), (0, {"x": 2})])
        await node.emit("app.log", [(0, {"m": 1})])
        await node.emit("app.log", [(0, {"m": 2}), (0, {"m": 3})])
        await node.stop()

    asyncio.run(scenario())
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert out == [{"tag": "signal.web", "time": "2023-11-14T22:13:20.123456789Z", "record": {"event": "Signed Up"}}]
    null = node.outputs[0][1]
    assert null.records == 2
    assert node.router.unmatched == {"app.log": 3}
    assert [r.message for r in caplog.records].count("No <match> takes tag 'app.log': its records are dropped and counted (logged once per tag).") == 1


def test_sample_source_feeds_its_output_until_stopped(capsys):
    node = build(
        """\
        <source>
          @type sample
          tag signal.s
          rate 200
          size 2
          auto_increment_key n
          sample [{"a": 1}, {"b": 2}]
        </source>
        <match **>
          @type stdout
          time_format unix
        </match>
        """
    )

    async def scenario():
        stop = asyncio.Event()
        runner = asyncio.create_task(node.run(stop))
        while node.outputs[0][1].records < 10:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(runner, 10)

    asyncio.run(scenario())
    records = [json.loads(line)["record"] for line in capsys.readouterr().out.splitlines()]
    assert records[:4] == [{"a": 1, "n": 0}, {"b": 2, "n": 1}, {"a": 1, "n": 2}, {"b": 2, "n": 3}]
    assert [r["n"] for r in records] == list(range(len(records)))  # nothing lost or repeated


def test_a_plugin_that_fails_to_start_stops_the_others_and_names_its_line(monkeypatch):
    node = build(
        """\
        <match a>
          @type null
        </match>

        <match b>
          @type stdout
        </match>
        """
    )
    stopped = []

    async def refuse():
        raise StartError("cannot open the store")

    async def record_stop():
        stopped.append("null")

    monkeypatch.setattr(node.outputs[1][1], "start", refuse)
    monkeypatch.setattr(node.outputs[0][1], "stop", record_stop)
    with pytest.raises(StartError, match=r"^node.conf:5: <match b> @type stdout: cannot open the store$"):
        asyncio.run(node.start())
    assert stopped == ["null"]
