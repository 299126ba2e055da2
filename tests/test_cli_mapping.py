"""`fluent-ld map` (the dry run) and `fluent-ld schema`, through the console script."""

import json
import subprocess
import textwrap

import jsonschema


def run(cmd, *args, stdin=""):
    return subprocess.run([cmd, *args], input=stdin, capture_output=True, text=True, timeout=60)


LINES = (
    "\n".join(
        json.dumps(r)
        for r in [
            {
                "type": "track",
                "event": "Order Completed",
                "anonymous_id": "a1",
                "timestamp": "2025-06-06T08:53:20Z",
                "properties": {"order_id": "O-1", "revenue": 12.5},
            },
            {"type": "track", "event": "Order Completed", "anonymous_id": "a1", "properties": {"revenue": "12"}},
            {"type": "track", "event": "Coupon Applied", "user_id": "u1"},
        ]
    )
    + "\nnot json\n"
)


def test_map_prints_events_and_reasons_then_a_summary(console_script):
    result = run(console_script, "map", stdin=LINES)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        '{"kind":"custom","key":"order_completed","creationDate":1749200000000,"metricValue":12.5,"contextKeys":{"user":"a1"},"data":{"order_id":"O-1"}}',
        "line 2: rejected (invalid): properties.revenue: '12' is not of type 'number'",
        "line 3: rejected (unmapped): event 'Coupon Applied' is not in the 'default' preset",
    ]
    assert lines[3].startswith("line 4: rejected (invalid): not JSON: ")
    assert lines[4:] == ["4 events: 1 mapped, 2 invalid, 1 unmapped"]


def test_map_with_the_overrides_of_a_config(console_script, tmp_path):
    conf = tmp_path / "ld.conf"
    conf.write_text(
        textwrap.dedent(
            """\
            <match signal.**>
              @type launchdarkly
              access_token "#{ENV.fetch('LD_ACCESS_TOKEN', 'unused')}"
              unmapped_events derive
              <event "Order Completed">
                key purchase
              </event>
              <context>
                kind user
                key user_id anonymous_id
              </context>
              <context>
                kind device
                key context.device.id
              </context>
            </match>
            """
        )
    )
    events = tmp_path / "events.jsonl"
    events.write_text(
        json.dumps({"type": "track", "event": "Order Completed", "user_id": "u1", "context": {"device": {"id": "d1"}}, "properties": {"revenue": 5}})
        + "\n"
        + json.dumps({"type": "track", "event": "Coupon Applied", "anonymous_id": "a2"})
        + "\n"
    )
    result = run(console_script, "map", str(events), "-c", str(conf))
    assert result.returncode == 0, result.stdout + result.stderr
    first, second, summary = result.stdout.splitlines()
    assert json.loads(first)["key"] == "purchase" and json.loads(first)["metricValue"] == 5
    assert json.loads(first)["contextKeys"] == {"user": "u1", "device": "d1"}
    assert json.loads(second)["key"] == "coupon_applied"
    assert summary == "2 events: 2 mapped, 0 invalid, 0 unmapped"


def test_a_bad_mapping_config_names_file_and_line(console_script, tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text(
        '<match **>\n  @type launchdarkly\n  <event "Trial Started">\n    metric_value x\n  </event>\n  <context>\n    kind multi\n  </context>\n</match>\n'
    )
    result = run(console_script, "map", "-c", str(conf), stdin="")
    assert result.returncode == 1
    assert f'{conf}:3: <match **> @type launchdarkly: <event "Trial Started"> is not in the preset, so it needs a key' in result.stderr


def test_schema_prints_and_writes_valid_schemas(console_script, tmp_path):
    one = run(console_script, "schema", "--event", "Order Completed")
    assert one.returncode == 0
    schema = json.loads(one.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["title"] == "Signal event 'Order Completed' -> LaunchDarkly event 'order_completed'"

    out = run(console_script, "schema", "--out", str(tmp_path / "schemas"))
    assert out.returncode == 0
    names = sorted(p.name for p in (tmp_path / "schemas").iterdir())
    assert names == sorted(
        f"{n}.schema.json" for n in ["envelope", "page_view", "sign_up", "product_viewed", "add_to_cart", "begin_checkout", "order_completed"]
    )
    missing = run(console_script, "schema", "--event", "Nope")
    assert missing.returncode == 1 and "no event 'Nope' in the preset" in missing.stderr
