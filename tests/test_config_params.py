"""Typed parameters and section checking (pure: declarations + parsed text -> Conf and errors)."""

import pytest

from fluent_ld.config.errors import ConfigError, Where
from fluent_ld.config.params import (
    REQUIRED,
    Arg,
    Array,
    Bool,
    Enum,
    Float,
    Hash,
    Integer,
    JSONValue,
    Param,
    Secret,
    Section,
    Size,
    String,
    Time,
    validate_section,
)
from fluent_ld.config.parser import EvalContext, Value, parse

W = Where("t.conf", 3)


def conv(ptype, text, **kw):
    return ptype.convert(Value(text, W, **kw))


@pytest.mark.parametrize(
    "ptype, text, expected",
    [
        (String(), "hello world", "hello world"),
        (Integer(), "42", 42),
        (Integer(), "-7", -7),
        (Integer(), "1_000", 1000),
        (Float(), "0.25", 0.25),
        (Float(), "3", 3.0),
        (Bool(), "true", True),
        (Bool(), "yes", True),
        (Bool(), "", True),
        (Bool(), "false", False),
        (Bool(), "no", False),
        (Size(), "512", 512),
        (Size(), "512k", 512 * 1024),
        (Size(), "8m", 8 * 1024**2),
        (Size(), "8M", 8 * 1024**2),
        (Size(), "1g", 1024**3),
        (Size(), "2t", 2 * 1024**4),
        (Size(), "1.5k", 1536),
        (Size(), "9mb", 9 * 1024**2),
        (Time(), "500ms", 0.5),
        (Time(), "10s", 10.0),
        (Time(), "10", 10.0),
        (Time(), "5m", 300.0),
        (Time(), "1h", 3600.0),
        (Time(), "1d", 86400.0),
        (Time(), "1.5s", 1.5),
        (Enum("file", "memory"), "memory", "memory"),
        (Array(), "a, b ,c", ["a", "b", "c"]),
        (Array(), '["a", "b"]', ["a", "b"]),
        (Array(Integer()), "1,2,3", [1, 2, 3]),
        (Hash(), "a:1, b:two", {"a": "1", "b": "two"}),
        (Hash(), '{"a": 1}', {"a": 1}),
    ],
)
def test_conversion(ptype, text, expected):
    assert conv(ptype, text) == expected


def test_json_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="expected an array, got a JSON object"):
        conv(Array(), '{"a":1}', json={"a": 1}, is_json=True)
    with pytest.raises(ValueError, match="expected an object, got a JSON array"):
        conv(Hash(), "[1]", json=[1], is_json=True)


def test_json_values_convert_from_their_decoded_form():
    assert conv(Array(), '["x","y"]', json=["x", "y"], is_json=True) == ["x", "y"]
    assert conv(Hash(), '{"k":[1]}', json={"k": [1]}, is_json=True) == {"k": [1]}
    assert conv(JSONValue(), "[1]", json=[1], is_json=True) == [1]
    assert conv(String(), '["a"]', json=["a"], is_json=True) == '["a"]'


@pytest.mark.parametrize(
    "ptype, text, message",
    [
        (Integer(), "12x", "expected an integer, got '12x'"),
        (Integer(min=1), "0", "must be at least 1"),
        (Integer(max=10), "11", "must be at most 10"),
        (Float(), "fast", "expected a number"),
        (Float(), "nan", "expected a finite number"),
        (Bool(), "maybe", "expected true or false, got 'maybe'"),
        (Size(), "8 megs", "expected a size such as 512k, 8m or 1g"),
        (Size(max=10_000_000), "10m", "must be at most 10000000"),
        (Time(), "soon", "expected a duration"),
        (Time(), "10 minutes", "expected a duration"),
        (Time(min=0.001), "0", "must be at least 1ms"),
        (Enum("file", "memory"), "disk", "expected one of file, memory; got 'disk'"),
        (Array(Integer()), "1,x", "item 2: expected an integer"),
        (Hash(), "a=1", "expected key:value pairs"),
        (Hash(), "[1]", "expected key:value pairs"),
    ],
)
def test_bad_values(ptype, text, message):
    with pytest.raises(ValueError, match=None) as exc:
        conv(ptype, text)
    assert message in str(exc.value)


SPEC = Section(
    "match",
    "test plugin",
    params=(
        Param("token", String(), REQUIRED, "A token.", secret=True),
        Param("port", Integer(min=1, max=65535), 24224, "A port."),
        Param("flag", Bool(), False, "A flag."),
    ),
    sections=(
        Section(
            "buffer",
            "Buffering.",
            params=(Param("flush_interval", Time(), 1.0, "Linger."),),
        ),
        Section(
            "event",
            "An event override.",
            params=(Param("key", String(), REQUIRED, "The key."),),
            arg=Arg("name", "The Signal event name."),
            multi=True,
        ),
        Section("transport", "Transport.", arg=Arg("protocol", "Protocol.", Enum("tcp", "tls"))),
    ),
)


def check(text, spec=SPEC, env=None):
    root = parse(text, "t.conf", EvalContext(env or {}))
    root.elements[0].arg = ""  # the label below says "<match x>"; the spec takes no argument
    errors: list[ConfigError] = []
    conf = validate_section(root.elements[0], spec, "<match x>", errors)
    return conf, [str(e) for e in errors]


def test_valid_section_gives_typed_values_defaults_and_sections():
    conf, errors = check(
        """
<match x>
  token abc
  flag
  <event "Order Completed">
    key purchase
  </event>
  <event page>
    key page_view
  </event>
</match>
"""
    )
    assert errors == []
    assert isinstance(conf.token, Secret) and conf.token.reveal() == "abc"
    assert conf.port == 24224 and conf.flag is True
    assert conf.buffer.flush_interval == 1.0  # absent optional section: its defaults
    assert [(e.arg, e.key) for e in conf.event] == [("Order Completed", "purchase"), ("page", "page_view")]
    assert conf.where_of("token").line == 3
    assert conf.where_of("port").line == 2  # a default: where the section starts
    assert conf.is_given("flag") and not conf.is_given("port")


def test_every_error_is_reported_with_its_line():
    conf, errors = check(
        """<match x>
  prot 24224
  port 0
  flag maybe
  <buffer>
    flush_interval soon
    flsh_interval 1s
  </buffer>
  <buffr>
  </buffr>
  <event>
    key x
  </event>
  <transport udp>
  </transport>
  <buffer>
  </buffer>
  port 1
</match>
"""
    )
    assert sorted(errors) == sorted(
        [
            "t.conf:2: <match x>: unknown parameter 'prot' (did you mean 'port'?)",
            "t.conf:3: <match x>: parameter 'port': the value must be at least 1",
            "t.conf:4: <match x>: parameter 'flag': expected true or false, got 'maybe'",
            "t.conf:18: <match x>: parameter 'port' is given twice (first at line 3)",
            "t.conf:1: <match x>: missing required parameter 'token'",
            "t.conf:6: <match x> <buffer>: parameter 'flush_interval': expected a duration such as 500ms, 10s, 5m or 1h, got 'soon'",
            "t.conf:7: <match x> <buffer>: unknown parameter 'flsh_interval' (did you mean 'flush_interval'?)",
            "t.conf:16: <match x>: section <buffer> may appear only once (first at line 5)",
            "t.conf:11: <match x> <event>: <event> needs its name as argument",
            "t.conf:14: <match x> <transport udp>: protocol: expected one of tcp, tls; got 'udp'",
            "t.conf:9: <match x>: section <buffr> is not allowed here (did you mean 'buffer'?); allowed: <buffer>, <event>, <transport>",
        ]
    )


def test_section_without_argument_refuses_one():
    _, errors = check("<match x>\n token a\n <buffer tag>\n </buffer>\n</match>\n")
    assert errors == ["t.conf:3: <match x> <buffer tag>: <buffer> takes no argument, got 'tag'"]


def test_a_bad_secret_is_never_echoed():
    spec = Section("match", "t", params=(Param("key", Integer(), REQUIRED, "k", secret=True),))
    _, errors = check("<match x>\n  key \"#{ENV['K']}\"\n</match>\n", spec, env={"K": "s3cr3t-value"})
    assert errors == ["t.conf:2: <match x>: parameter 'key': invalid value (not shown: secret)"]
    assert "s3cr3t" not in "".join(errors)


def test_secret_is_masked_in_str_repr_and_dump():
    conf, errors = check("<match x>\n  token hunter2\n  port 80\n</match>\n")
    assert errors == []
    assert str(conf.token) == "xxxxxx" and "hunter2" not in repr(conf.token)
    assert "hunter2" not in repr(conf)
    dumped = "\n".join(conf.dump())
    assert "hunter2" not in dumped
    assert "token xxxxxx" in dumped and "port 80" in dumped


def test_docs_rendering_of_types():
    assert Size(max=10_000_000).describe() == "size (<= 10000000)"
    assert Time(min=0.5).describe() == "time (>= 500ms)"
    assert Integer(1, 10).describe() == "integer (1..10)"
    assert Enum("a", "b").describe() == "enum (a, b)"
    assert Size().render(9 * 1024**2) == "9m"
    assert Time().render(300.0) == "5m"
    assert Time().render(0.25) == "250ms"
