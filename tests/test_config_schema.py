"""Whole configs written as text, checked against the plugins' declarations."""

import textwrap

import pytest

from fluent_ld.config.errors import ConfigErrors
from fluent_ld.config.loader import load, load_text
from fluent_ld.config.params import REQUIRED, Param, Secret, Section, String
from fluent_ld.config.parser import EvalContext, parse
from fluent_ld.config.schema import PluginSpec, validate_root


def errors_of(text, **kw):
    with pytest.raises(ConfigErrors) as exc:
        load_text(textwrap.dedent(text), "node.conf", **kw)
    return [str(e) for e in exc.value.errors]


def test_a_valid_config_builds_sources_and_matches_in_order():
    config = load_text(
        textwrap.dedent(
            """\
            <system>
              log_level debug
            </system>
            <source>
              @type sample
              tag signal.a
            </source>
            <match signal.debug>
              @type null
            </match>
            <match signal.** app.*>
              @type stdout
              @id printer
            </match>
            <match **>
              @type null
            </match>
            """
        ),
        "node.conf",
    )
    assert config.system.log_level == "debug"
    assert [(p.type_name, p.id) for p in config.sources] == [("sample", "sample.0")]
    assert [(p.type_name, p.id, p.pattern.text) for p in config.matches] == [
        ("null", "null.0", "signal.debug"),
        ("stdout", "printer", "signal.** app.*"),
        ("null", "null.1", "**"),
    ]
    assert config.sources[0].conf.tag == "signal.a"
    assert config.summary() == "1 source (sample), 3 matches (null, stdout, null)"


def test_a_typo_in_a_parameter_name_is_refused_with_its_line():
    assert errors_of(
        """\
        <source>
          @type sample
          tag signal.a
          rat 10
        </source>
        """
    ) == ["node.conf:4: <source> @type sample: unknown parameter 'rat' (did you mean 'rate'?)"]


def test_every_problem_is_reported_at_once():
    assert errors_of(
        """\
        top_level 1
        <source>
          @type sampel
        </source>
        <source>
          tag x
        </source>
        <match a.{b>
          @type stdout
        </match>
        <match b>
          @type stdout
          time_format rfc
          <buffer>
          </buffer>
        </match>
        <filter **>
        </filter>
        <system>
          log_level loud
        </system>
        <system>
        </system>
        """
    ) == [
        "node.conf:1: parameter 'top_level' is outside any section; parameters go inside <system>, <source> or <match>",
        "node.conf:3: <source>: unknown source type 'sampel' (did you mean 'sample'?); known: forward, launchdarkly_webhook, monitor_agent, sample",
        "node.conf:5: <source>: missing required parameter '@type'",
        "node.conf:8: <match a.{b>: pattern 'a.{b' has an unclosed '{'",
        "node.conf:13: <match b> @type stdout: parameter 'time_format': expected one of iso8601, unix; got 'rfc'",
        "node.conf:14: <match b> @type stdout: section <buffer> is not allowed here (no sections are)",
        "node.conf:17: section <filter> is not supported at the top level; use <system>, <source> or <match>",
        "node.conf:20: <system>: parameter 'log_level': expected one of trace, debug, info, warn, error, fatal; got 'loud'",
        "node.conf:22: <system> may appear only once (first at line 19)",
    ]


def test_missing_required_parameter_names_the_section_line():
    assert errors_of("\n<source>\n  @type sample\n</source>\n") == ["node.conf:2: <source> @type sample: missing required parameter 'tag'"]


def test_cross_parameter_check_of_a_plugin():
    assert errors_of('<source>\n  @type sample\n  tag t\n  sample "just text"\n</source>\n') == [
        "node.conf:4: <source> @type sample: parameter 'sample': invalid JSON: Expecting value"
    ]
    assert errors_of("<source>\n  @type sample\n  tag t\n  sample [1, 2]\n</source>\n") == [
        "node.conf:4: <source> @type sample: parameter 'sample': expected an object or a non-empty array of objects"
    ]


def test_duplicate_ids_are_refused():
    assert errors_of("<match a>\n  @type null\n  @id out\n</match>\n<match b>\n  @type null\n  @id out\n</match>\n") == [
        "node.conf:7: @id 'out' is used twice (first at line 1)"
    ]


def test_generated_ids_skip_explicit_ones():
    config = load_text("<match a>\n  @type null\n  @id null.0\n</match>\n<match b>\n  @type null\n</match>\n")
    assert [p.id for p in config.matches] == ["null.0", "null.1"]


def test_environment_substitution_reaches_typed_values():
    config = load_text(
        "<source>\n  @type sample\n  tag \"#{ENV['TAG']}\"\n  rate \"#{ENV.fetch('RATE', '5')}\"\n</source>\n",
        env={"TAG": "signal.env"},
    )
    assert (config.sources[0].conf.tag, config.sources[0].conf.rate) == ("signal.env", 5)
    assert errors_of("<source>\n  @type sample\n  tag \"#{ENV['NOPE']}\"\n</source>\n", env={}) == [
        "node.conf:3: environment variable 'NOPE' is not set (write \"#{ENV.fetch('NOPE', 'default')}\" to give a default)"
    ]


SECRET_CATALOGUE = {
    "source": {},
    "output": {
        "vault": PluginSpec(
            "output",
            "vault",
            "An output with a secret.",
            Section(
                "match",
                "",
                params=(
                    Param("access_token", String(), REQUIRED, "Token.", secret=True),
                    Param("project_key", String(), REQUIRED, "Project."),
                ),
            ),
        )
    },
}


def test_secrets_from_the_environment_are_masked_in_values_and_dumps():
    text = "<match signal.**>\n  @type vault\n  access_token \"#{ENV['LD_TOKEN']}\"\n  project_key default\n</match>\n"
    root = parse(text, "node.conf", EvalContext({"LD_TOKEN": "api-123-very-secret"}))
    config = validate_root(root, SECRET_CATALOGUE)
    conf = config.matches[0].conf
    assert isinstance(conf.access_token, Secret)
    assert conf.access_token.reveal() == "api-123-very-secret"
    dump = config.dump()
    assert "api-123" not in dump and "access_token xxxxxx" in dump
    assert "project_key default" in dump and "<match signal.**>" in dump
    assert "api-123" not in repr(conf) and "api-123" not in f"{conf.access_token}"


def test_load_reads_includes_from_disk(tmp_path):
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "main.conf").write_text("@include conf.d/*.conf\n<match **>\n  @type null\n</match>\n")
    (tmp_path / "conf.d" / "10-source.conf").write_text("<source>\n  @type sample\n  tag a\n</source>\n")
    (tmp_path / "conf.d" / "20-source.conf").write_text("<source>\n  @type sample\n  tag b\n  rte 3\n</source>\n")
    with pytest.raises(ConfigErrors) as exc:
        load(str(tmp_path / "main.conf"))
    assert [str(e) for e in exc.value.errors] == [f"{tmp_path}/conf.d/20-source.conf:4: <source> @type sample: unknown parameter 'rte' (did you mean 'rate'?)"]


def test_load_of_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigErrors) as exc:
        load(str(tmp_path / "nope.conf"))
    assert str(exc.value) == f"{tmp_path}/nope.conf: cannot read the config: No such file or directory"


def test_workers_need_a_port_they_can_share():
    errors = errors_of(
        """\
        <system>
          workers 2
        </system>
        <source>
          @type forward
          port 0
        </source>
        <source>
          @type forward
          path /tmp/fluent-ld.sock
        </source>
        <source>
          @type monitor_agent
          port 0
        </source>
        <match **>
          @type null
        </match>
        """
    )
    assert errors == [
        "node.conf:6: <source> @type forward: port 0 (any free port) cannot be shared by 2 workers; set a port",
        "node.conf:10: <source> @type forward: a Unix socket cannot be shared by 2 workers; listen on a TCP port, or run one worker",
    ]  # the monitor is served once (by worker 0): its port 0 is fine


def test_workers_are_bounded():
    assert errors_of("<system>\n  workers 0\n</system>\n") == ["node.conf:2: <system>: parameter 'workers': the value must be at least 1"]
