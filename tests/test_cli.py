"""The real console script, run as a user runs it."""

import json
import os
import signal
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(cmd, *args, **kw):
    return subprocess.run([cmd, *args], capture_output=True, text=True, timeout=60, **kw)


def test_version(console_script, python):
    from fluent_ld import __version__

    assert run(console_script, "--version").stdout.strip() == f"fluent-ld {__version__}"
    assert run(python, "-m", "fluent_ld", "--version").stdout.strip() == f"fluent-ld {__version__}"


def test_usage_error_exits_2(console_script):
    result = run(console_script, "check-config")
    assert result.returncode == 2
    assert "-c/--config" in result.stderr


def test_check_config_accepts_a_valid_config(console_script):
    result = run(console_script, "check-config", "-c", str(REPO / "conf" / "demo.conf"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": 1 source (sample), 1 match (stdout)")
    assert result.stdout.startswith("config OK: ")


def test_check_config_refuses_a_typo_with_file_and_line(console_script, tmp_path):
    conf = tmp_path / "typo.conf"
    conf.write_text(
        textwrap.dedent(
            """\
            <source>
              @type sample
              tag signal.a
            </source>

            <match signal.**>
              @type stdout
              time_fromat unix
            </match>
            <match other>
              @type nul
            </match>
            """
        )
    )
    result = run(console_script, "check-config", "-c", str(conf))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{conf}:8: <match signal.**> @type stdout: unknown parameter 'time_fromat' (did you mean 'time_format'?)",
        f"{conf}:11: <match other>: unknown output type 'nul' (did you mean 'null'?); known: forward, launchdarkly, null, stdout",
        "config refused: 2 errors",
    ]


def test_check_config_refuses_a_syntax_error(console_script, tmp_path):
    conf = tmp_path / "broken.conf"
    conf.write_text("<source>\n  @type sample\n  tag a\n")
    result = run(console_script, "check-config", "-c", str(conf))
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (f"{conf}:4: <source> opened at line 1 is never closed: expected </source> before the end of the file")


def test_check_config_of_a_missing_file(console_script, tmp_path):
    result = run(console_script, "check-config", "-c", str(tmp_path / "absent.conf"))
    assert result.returncode == 1
    assert "absent.conf: cannot read the config: No such file or directory" in result.stderr


def test_check_config_dump(console_script, tmp_path):
    conf = tmp_path / "d.conf"
    conf.write_text("<source>\n  @type sample\n  tag \"#{ENV['T']}\"\n</source>\n")
    result = run(console_script, "check-config", "--dump", "-c", str(conf), env={**os.environ, "T": "from.env"})
    assert result.returncode == 0, result.stderr
    assert "<source>\n  @type sample\n  tag from.env\n</source>\n" in result.stdout


@pytest.mark.parametrize("example", sorted((REPO / "conf").glob("*.conf")), ids=lambda p: p.name)
def test_every_example_passes_check_config(console_script, example):
    env = {**os.environ, **EXAMPLE_ENV}
    result = run(console_script, "check-config", "-c", str(example), env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr


# Values the examples read from the environment (none are real secrets).
EXAMPLE_ENV = {"FORWARD_SHARED_KEY": "example-key", "LD_ACCESS_TOKEN": "api-example", "LD_WEBHOOK_SECRET": "whsec-example"}


def test_config_docs_is_the_committed_reference(console_script):
    result = run(console_script, "config-docs")
    assert result.returncode == 0
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert result.stdout == committed, "docs/configuration.md is stale: run `fluent-ld config-docs --out docs/configuration.md`"


def test_run_prints_records_and_stops_cleanly_on_sigterm(console_script, tmp_path):
    conf = tmp_path / "node.conf"
    conf.write_text(
        textwrap.dedent(
            """\
            <source>
              @type sample
              tag signal.test
              rate 50
              auto_increment_key seq
              sample {"type": "track", "event": "Signed Up", "user_id": "u1"}
            </source>
            <source>
              @type sample
              tag unrouted.test
              rate 50
            </source>
            <match signal.**>
              @type stdout
            </match>
            """
        )
    )
    proc = subprocess.Popen([console_script, "run", "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first, proc.stderr.read()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in [first, *out.splitlines()]]
    assert len(lines) >= 2
    assert {line["tag"] for line in lines} == {"signal.test"}
    assert [line["record"]["seq"] for line in lines] == list(range(len(lines)))
    assert lines[0]["record"] == {"type": "track", "event": "Signed Up", "user_id": "u1", "seq": 0}
    assert lines[0]["time"].endswith("Z")
    assert "fluent-ld started: 2 sources (sample, sample), 1 match (stdout)." in err
    assert err.count("No <match> takes tag 'unrouted.test'") == 1
    assert "fluent-ld stopped." in err


def test_run_refuses_a_bad_config_before_starting(console_script, tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("<match **>\n  @type stdout\n  colour red\n</match>\n")
    result = run(console_script, "run", "-c", str(conf))
    assert result.returncode == 1
    assert f"{conf}:3: <match **> @type stdout: unknown parameter 'colour'" in result.stderr
    assert "started" not in result.stderr


def test_send_against_a_running_node(console_script, tmp_path):
    from harness import capture_node

    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps({"type": "track", "event": "Signed Up", "user_id": f"u{i}"}) for i in range(25)) + "\n[1, 2]\n\n")
    with capture_node() as n:
        result = run(console_script, "send", str(events), "--port", str(n.port), "--tag", "signal.backfill", "--rate", "500")
        assert result.returncode == 0, result.stderr
        records = n.wait_records(25)
    assert [r[2]["user_id"] for r in records] == [f"u{i}" for i in range(25)]
    assert {r[0] for r in records} == {"signal.backfill"}
    assert "only counts events that arrive while an experiment iteration is running" in result.stderr
    assert "line 26: not a JSON object, skipped" in result.stderr
    assert "sent 25 events to 127.0.0.1:" in result.stderr and "1 line(s) skipped" in result.stderr


def test_send_to_nothing_fails_clearly(console_script, tmp_path):
    events = tmp_path / "e.jsonl"
    events.write_text('{"type": "page", "user_id": "u"}\n')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    result = run(console_script, "send", str(events), "--port", str(port), "--quiet")
    assert result.returncode == 1
    assert f"could not send to 127.0.0.1:{port}" in result.stderr


def test_json_log_lines(console_script, tmp_path):
    conf = tmp_path / "json.conf"
    conf.write_text("<system>\n  log_format json\n</system>\n<source>\n  @type sample\n  tag signal.x\n</source>\n<match **>\n  @type null\n</match>\n")
    proc = subprocess.Popen([console_script, "run", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(proc.stderr.readline())
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert first["level"] == "info" and first["logger"] == "fluent_ld.pipeline.node"
    assert first["message"].startswith("fluent-ld started:")
    assert all(json.loads(line)["message"] for line in rest.splitlines())
