"""The Fluentd v1 config parser (pure: text -> tree of Elements, or a ConfigSyntaxError with file:line).

Golden tests compare whole trees through :func:`tree`, which turns an Element into plain tuples:
``(name, arg, [(key, text), ...], [child, ...])``. Includes go through a fake file system (a dict),
except for one test that goes through the loader with real files.
"""

import fnmatch
import itertools
import posixpath
import random
import textwrap

import pytest

from fluent_ld.config.errors import ConfigError, ConfigErrors, ConfigSyntaxError, Where
from fluent_ld.config.loader import read_tree
from fluent_ld.config.parser import (
    MAX_INCLUDE_DEPTH,
    MAX_SECTION_DEPTH,
    Element,
    EvalContext,
    IncludedSource,
    parse,
)

ENV = {"NAME": "alice", "T": "s3cr3t", "EMPTY": ""}
CTX = EvalContext(env=ENV, hostname="h")


# -- helpers ---------------------------------------------------------------------------------------


def tree(element: Element) -> tuple:
    """An Element as nested plain data: (name, arg, [(key, text)], [children])."""
    return (
        element.name,
        element.arg,
        [(key, value.text) for key, value in element.params],
        [tree(child) for child in element.elements],
    )


def lines(element: Element) -> tuple:
    """Where everything is: (element line, [(key, file, line)], [children])."""
    return (
        element.where.line,
        [(key, value.where.file, value.where.line) for key, value in element.params],
        [lines(child) for child in element.elements],
    )


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


class FakeFiles:
    """An include callback over a dict of files: names resolve relative to the including file's
    folder (posix paths), globs match with fnmatch and come sorted by name, a missing plain path
    is an error. Every call is recorded as (pattern, where)."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files
        self.calls: list[tuple[str, Where]] = []

    def __call__(self, pattern: str, where: Where):
        self.calls.append((pattern, where))
        path = posixpath.normpath(posixpath.join(posixpath.dirname(where.file), pattern))
        if set("*?[") & set(pattern):
            names = sorted(n for n in self.files if fnmatch.fnmatchcase(n, path))
        elif path in self.files:
            names = [path]
        else:
            raise ConfigSyntaxError(where, f"@include {path}: no such file")
        return [IncludedSource(n, self.files[n]) for n in names]


def p(text: str, files: dict[str, str] | None = None) -> Element:
    """Parse dedented ``text`` as t.conf, with ``files`` behind @include."""
    return parse(dedent(text), "t.conf", CTX, include=FakeFiles(files or {}))


def param(text: str) -> tuple[str, str]:
    """The one (key, text) a single parameter line parses to."""
    root = parse(text, "t.conf", CTX)
    assert root.elements == []
    assert len(root.params) == 1, root.params
    key, value = root.params[0]
    return key, value.text


def value_of(text: str):
    """The Value of the one parameter in ``text``."""
    root = parse(text, "t.conf", CTX)
    assert len(root.params) == 1, root.params
    return root.params[0][1]


def error(text: str, files: dict[str, str] | None = None) -> str:
    """``str()`` of the ConfigSyntaxError ``text`` raises; checks it agrees with ``.where``."""
    with pytest.raises(ConfigSyntaxError) as exc:
        p(text, files)
    err = exc.value
    assert str(err).startswith(f"{err.where.file}:{err.where.line}: ")
    assert str(err) == f"{err.where}: {err.message}"
    return str(err)


# -- directives and sections -----------------------------------------------------------------------


def test_empty_and_comment_only_texts_give_an_empty_root():
    for text in ["", "\n\n", "# only a comment\n", "   \n\t# indented comment\n\n"]:
        root = parse(text, "t.conf", CTX)
        assert tree(root) == ("ROOT", "", [], [])
        assert root.where == Where("t.conf", 1)


def test_top_level_directives():
    root = p(
        """
        <system>
          log_level info
        </system>
        <source>
          @type forward
        </source>
        <filter app.**>
          @type grep
        </filter>
        <match a.** b.*>
          @type stdout
        </match>
        <label @FAILED>
          <match **>
            @type null
          </match>
        </label>
        """
    )
    assert tree(root) == (
        "ROOT",
        "",
        [],
        [
            ("system", "", [("log_level", "info")], []),
            ("source", "", [("@type", "forward")], []),
            ("filter", "app.**", [("@type", "grep")], []),
            ("match", "a.** b.*", [("@type", "stdout")], []),
            ("label", "@FAILED", [], [("match", "**", [("@type", "null")], [])]),
        ],
    )


NESTED = """
    # A realistic config: sections three levels deep, with and without arguments.
    <source>
      @type forward
      @id in_forward
      port 24224
      <transport tls>
        cert_path /etc/fluent/cert.pem
      </transport>
      <security>
        self_hostname node1
        shared_key secret
        <user>
          username alice
          password pw
        </user>
        <client>
          host 10.0.0.1
        </client>
      </security>
    </source>

    <match signal.**>
      @type launchdarkly
      <event "Order Completed">
        metric_key orders
        <context>
          kind user
          key_field userId
        </context>
      </event>
      <buffer tag, time>
        timekey 1h
      </buffer>
    </match>
    """


def test_nested_sections_golden_tree():
    assert tree(p(NESTED)) == (
        "ROOT",
        "",
        [],
        [
            (
                "source",
                "",
                [("@type", "forward"), ("@id", "in_forward"), ("port", "24224")],
                [
                    ("transport", "tls", [("cert_path", "/etc/fluent/cert.pem")], []),
                    (
                        "security",
                        "",
                        [("self_hostname", "node1"), ("shared_key", "secret")],
                        [
                            ("user", "", [("username", "alice"), ("password", "pw")], []),
                            ("client", "", [("host", "10.0.0.1")], []),
                        ],
                    ),
                ],
            ),
            (
                "match",
                "signal.**",
                [("@type", "launchdarkly")],
                [
                    (
                        "event",
                        "Order Completed",
                        [("metric_key", "orders")],
                        [("context", "", [("kind", "user"), ("key_field", "userId")], [])],
                    ),
                    ("buffer", "tag, time", [("timekey", "1h")], []),
                ],
            ),
        ],
    )


def test_nested_sections_lines():
    assert lines(p(NESTED)) == (
        1,
        [],
        [
            (
                2,
                [("@type", "t.conf", 3), ("@id", "t.conf", 4), ("port", "t.conf", 5)],
                [
                    (6, [("cert_path", "t.conf", 7)], []),
                    (
                        9,
                        [("self_hostname", "t.conf", 10), ("shared_key", "t.conf", 11)],
                        [
                            (12, [("username", "t.conf", 13), ("password", "t.conf", 14)], []),
                            (16, [("host", "t.conf", 17)], []),
                        ],
                    ),
                ],
            ),
            (
                22,
                [("@type", "t.conf", 23)],
                [
                    (
                        24,
                        [("metric_key", "t.conf", 25)],
                        [(26, [("kind", "t.conf", 27), ("key_field", "t.conf", 28)], [])],
                    ),
                    (31, [("timekey", "t.conf", 32)], []),
                ],
            ),
        ],
    )


@pytest.mark.parametrize(
    "opening, name, arg",
    [
        ("<source>", "source", ""),
        ("<match a>", "match", "a"),
        ("<match a.** b.*>", "match", "a.** b.*"),
        ("<match   a.**   b.*   >", "match", "a.**   b.*"),  # outer blanks dropped, inner kept
        ("<match\ta.**\t>", "match", "a.**"),
        ('<event "Order Completed">', "event", "Order Completed"),
        ("<event 'Signed Up'>", "event", "Signed Up"),
        ('<event "Order Completed"  >', "event", "Order Completed"),
        ('<event "a \\"quoted\\" name">', "event", 'a "quoted" name'),
        ("<match {a,b}.**>", "match", "{a,b}.**"),
        ("<my_section2 x>", "my_section2", "x"),
        ("<match a>  # a comment after the tag", "match", "a"),
        ("  \t<match a>", "match", "a"),
    ],
)
def test_section_names_and_arguments(opening, name, arg):
    root = parse(f"{opening}\n</{name}>\n", "t.conf", CTX)
    assert tree(root) == ("ROOT", "", [], [(name, arg, [], [])])


@pytest.mark.parametrize("closing", ["</match>", "</match >", "  </match>", "</match>  # done"])
def test_closing_tag_forms(closing):
    assert tree(parse(f"<match a>\nk v\n{closing}\n", "t.conf", CTX)) == (
        "ROOT",
        "",
        [],
        [("match", "a", [("k", "v")], [])],
    )


def test_sibling_sections_and_params_keep_their_order_and_duplicates():
    root = p(
        """
        <match a>
          k 1
          <buffer>
          </buffer>
          k 2
          <buffer>
          </buffer>
        </match>
        """
    )
    match = root.elements[0]
    assert tree(match) == ("match", "a", [("k", "1"), ("k", "2")], [("buffer", "", [], [])] * 2)
    assert match.param("k").text == "2"
    assert match.param("missing") is None


def test_the_last_line_needs_no_newline():
    assert tree(parse("<match a>\n  k v\n</match>", "t.conf", CTX)) == (
        "ROOT",
        "",
        [],
        [("match", "a", [("k", "v")], [])],
    )
    assert tree(parse("k v", "t.conf", CTX)) == ("ROOT", "", [("k", "v")], [])


# -- parameters and comments ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, expected",
    [
        ("@type forward", ("@type", "forward")),
        ("@id in_forward_1", ("@id", "in_forward_1")),
        ("@label @FAILED", ("@label", "@FAILED")),
        ("port 24224", ("port", "24224")),
        ("key_alone", ("key_alone", "")),
        ("key_alone   ", ("key_alone", "")),
        ("key_alone\t", ("key_alone", "")),
        ("key_alone # a comment, not a value", ("key_alone", "")),
        ("port 24224   ", ("port", "24224")),  # trailing blanks dropped
        ("port 24224\t \t", ("port", "24224")),
        ("port\t24224", ("port", "24224")),
        ("port     24224", ("port", "24224")),
        ("port 24224 # the forward port", ("port", "24224")),
        ("port 24224\t# a tab before the comment", ("port", "24224")),
        ("color color#1", ("color", "color#1")),  # '#' inside a word is kept
        ("color color#1 # a comment", ("color", "color#1")),
        ("path a#b#c", ("path", "a#b#c")),
        ("message hello   big world", ("message", "hello   big world")),
        ("message it's", ("message", "it's")),
        ('message say "hi"', ("message", 'say "hi"')),
        ("regexp ^(?<a>\\d+)\\s\\n$", ("regexp", "^(?<a>\\d+)\\s\\n$")),  # no escapes unquoted
        ("url http://x/y?a=b&c=d", ("url", "http://x/y?a=b&c=d")),
        ("tag prefix-#{ENV['NAME']}", ("tag", "prefix-#{ENV['NAME']}")),  # no "#{}" unquoted
        ("k <v>", ("k", "<v>")),
        ("k ]", ("k", "]")),
        ("k }", ("k", "}")),
        ('"quoted key" v', ("quoted key", "v")),
        ("'single key' v", ("single key", "v")),
        ("key#with#hash v", ("key#with#hash", "v")),
        ("    indented value", ("indented", "value")),
        ("k v\r\n", ("k", "v")),
        ("k\r\n", ("k", "")),
    ],
)
def test_parameter_lines(line, expected):
    assert param(line) == expected
    assert param(line + "\n") == expected


def test_comments_on_their_own_lines_anywhere():
    root = p(
        """
        # top comment
        a 1
          # indented comment
        <source>
        # comment at column 0 inside a section
          b 2 # after a value
          #c 3
          #<match commented.out>
        </source> # after a closing tag
        """
    )
    assert tree(root) == ("ROOT", "", [("a", "1")], [("source", "", [("b", "2")], [])])


# -- quoted strings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "written, expected",
    [
        ('""', ""),
        ('"plain"', "plain"),
        ('"a\\"b"', 'a"b'),
        ('"a\\\'b"', "a'b"),
        ('"a\\\\b"', "a\\b"),
        ('"a\\nb"', "a\nb"),
        ('"a\\rb"', "a\rb"),
        ('"a\\tb"', "a\tb"),
        ('"a\\fb"', "a\fb"),
        ('"a\\bb"', "a\bb"),
        ('"\\"\\\'\\\\\\n\\r\\t\\f\\b"', "\"'\\\n\r\t\f\b"),
        ('"a\\.b"', "a.b"),  # a symbol escape stands for itself
        ('"\\/\\-\\[\\]\\ "', "/-[] "),
        ("\"\\#{ENV['NAME']}\"", "#{ENV['NAME']}"),  # an escaped '#' is no embedded code
        ('"a # b"', "a # b"),  # not cut at ' #'
        ('"a#b"', "a#b"),
        ('"  padded  "', "  padded  "),
        ('"it\'s"', "it's"),
        ('"x" # a comment after the string', "x"),
        ('"x"# a comment right after the string', "x"),
        ('"x"   ', "x"),
        ('"<match>"', "<match>"),
        ('"[1, 2]"', "[1, 2]"),  # a quoted string is never JSON
        ('"caf\u00e9 \u2603"', "caf\u00e9 \u2603"),
    ],
)
def test_double_quoted_strings(written, expected):
    value = value_of(f"k {written}\n")
    assert (value.text, value.is_json, value.json) == (expected, False, None)


@pytest.mark.parametrize(
    "written, expected",
    [
        ("''", ""),
        ("'plain'", "plain"),
        ("'a\\nb'", "a\\nb"),  # only \' and \\ are escapes in single quotes
        ("'a\\tb\\q\\.'", "a\\tb\\q\\."),
        ("'it\\'s'", "it's"),
        ("'a\\\\b'", "a\\b"),
        ("'a\\\\\\\\b'", "a\\\\b"),
        ("'a # b'", "a # b"),
        ("'say \"hi\"'", 'say "hi"'),
        ("'#{ENV[\"NAME\"]}'", '#{ENV["NAME"]}'),  # no embedded code in single quotes
        ("'x' # a comment", "x"),
    ],
)
def test_single_quoted_strings(written, expected):
    assert param(f"k {written}\n") == ("k", expected)


@pytest.mark.parametrize("letter", ["q", "a", "z", "x", "u", "N", "1", "9"])
def test_an_unknown_alphanumeric_escape_is_an_error(letter):
    assert error(f'a 1\nk "ab\\{letter}c"\n') == (f"t.conf:2: unknown escape '\\{letter}' in a double-quoted string")


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_double_quoted_value_may_span_lines(newline):
    text = dedent(
        """
        <source>
          format "first
        second
          third"
          after 1
          joined "one \\
        two"
          last 2
        </source>
        """
    )
    root = parse(text.replace("\n", newline), "t.conf", CTX)
    assert tree(root) == (
        "ROOT",
        "",
        [],
        [
            (
                "source",
                "",
                [
                    ("format", f"first{newline}second{newline}  third"),  # line breaks kept
                    ("after", "1"),
                    ("joined", "one two"),  # a backslash before the line break joins the lines
                    ("last", "2"),
                ],
                [],
            )
        ],
    )
    assert [(k, v.where.line) for k, v in root.elements[0].params] == [
        ("format", 2),
        ("after", 5),
        ("joined", 6),
        ("last", 8),
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ('a 1\nk "abc', "t.conf:2: unterminated double-quoted string"),
        ('a 1\nk "abc\n', "t.conf:2: unterminated double-quoted string"),
        ('a 1\nk "abc\nb 2\nc 3\n', "t.conf:2: unterminated double-quoted string"),
        ('a 1\nk "abc\\"\n', "t.conf:2: unterminated double-quoted string"),
        ("a 1\nk 'abc\nb 2\n", "t.conf:2: unterminated single-quoted string"),  # single: one line
        ("a 1\nk 'abc\\'\n", "t.conf:2: unterminated single-quoted string"),
        ('a 1\n"key v\n', "t.conf:2: unterminated double-quoted string"),
        ('a 1\n<event "Order\n</event>\n', "t.conf:2: unterminated double-quoted string"),
        ("a 1\n<event 'Order\n</event>\n", "t.conf:2: unterminated single-quoted string"),
    ],
)
def test_unterminated_quoted_strings(text, message):
    assert error(text) == message


@pytest.mark.parametrize(
    "text, message",
    [
        ('k "a" b\n', "t.conf:1: expected end of line after the value of 'k', found 'b'"),
        ("k 'a''b'\n", "t.conf:1: expected end of line after the value of 'k', found \"'b'\""),
        ('x 1\nk "a"b\n', "t.conf:2: expected end of line after the value of 'k', found 'b'"),
    ],
)
def test_text_after_a_quoted_value_is_an_error(text, message):
    assert error(text) == message


# -- JSON values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "written, decoded, text",
    [
        ("[]", [], "[]"),
        ("{}", {}, "{}"),
        ('[1, "two", 3.5, true, null]', [1, "two", 3.5, True, None], '[1,"two",3.5,true,null]'),
        ('["a", "b"]', ["a", "b"], '["a","b"]'),
        ('{"a": 1, "b": [1, {"c": "d"}]}', {"a": 1, "b": [1, {"c": "d"}]}, '{"a":1,"b":[1,{"c":"d"}]}'),
        ("  [1,2]  # a comment after", [1, 2], "[1,2]"),
        ('["a # b", "c#d"]', ["a # b", "c#d"], '["a # b","c#d"]'),
        ('["]", "}", "[{"]', ["]", "}", "[{"], '["]","}","[{"]'),
        ('["esc\\"aped", "back\\\\slash"]', ['esc"aped', "back\\slash"], '["esc\\"aped","back\\\\slash"]'),
        ('["caf\u00e9"]', ["caf\u00e9"], '["caf\u00e9"]'),
        ("[\"#{ENV['NAME']}\"]", ["#{ENV['NAME']}"], "[\"#{ENV['NAME']}\"]"),  # no "#{}" in JSON
    ],
)
def test_json_values(written, decoded, text):
    value = value_of(f"k {written}\n")
    assert value.is_json is True
    assert value.json == decoded
    assert value.text == text


def test_multiline_json_with_comments():
    root = p(
        """
        <match x>
          fields [
            "a",   # the first field
            # a whole-line comment between elements
            "b#c", # a '#' inside a JSON string is kept
            "d # e"
          ]
          record {
            "k": {"nested": [1,
                             2]},  # trailing comment
            "url": "http://x/#anchor"
          }
          after 1
        </match>
        """
    )
    fields, record, after = root.elements[0].params
    assert fields[1].json == ["a", "b#c", "d # e"]
    assert fields[1].text == '["a","b#c","d # e"]'
    assert record[1].json == {"k": {"nested": [1, 2]}, "url": "http://x/#anchor"}
    assert record[1].text == '{"k":{"nested":[1,2]},"url":"http://x/#anchor"}'
    assert [(k, v.where.line) for k, v in root.elements[0].params] == [
        ("fields", 2),
        ("record", 8),
        ("after", 13),
    ]
    assert after[1].text == "1" and after[1].is_json is False


@pytest.mark.parametrize(
    "text, message",
    [
        ("a 1\nb 2\nk [1, 2,]\n", "t.conf:3: invalid JSON array: Expecting value"),
        ('a 1\nk {"a" 1}\n', "t.conf:2: invalid JSON object: Expecting ':' delimiter"),
        (
            "a 1\nk {a: 1}\n",
            "t.conf:2: invalid JSON object: Expecting property name enclosed in double quotes",
        ),
        ("k ['single']\n", "t.conf:1: invalid JSON array: Expecting value"),
        ("a 1\nk [1, 2] extra\n", "t.conf:2: expected end of line after the value of 'k', found 'extra'"),
        ("a 1\nk [1]]\n", "t.conf:2: expected end of line after the value of 'k', found ']'"),
        # Unclosed: named by the line where the JSON starts, however far the scan went.
        ("a 1\nk [1,\n  2\nb 2\nc 3\n", "t.conf:2: JSON array is not closed before the end of the file"),
        ('a 1\nb 2\nk {"a": 1,\n', "t.conf:3: JSON object is not closed before the end of the file"),
        ('a 1\nk ["unterminated string]\n', "t.conf:2: JSON array is not closed before the end of the file"),
        ("<match x>\n  k [1,\n</match>\n", "t.conf:2: JSON array is not closed before the end of the file"),
    ],
)
def test_json_errors(text, message):
    assert error(text) == message


def test_invalid_multiline_json_names_the_offending_line():
    # A multi-line JSON value that closes but does not decode: the line inside it that is wrong.
    text = "a 1\nk [\n  1,\n  2 3,\n  4\n]\n"
    assert error(text) == "t.conf:4: invalid JSON array: Expecting ',' delimiter"


@pytest.mark.parametrize(
    "written",
    ["[NaN]", "[Infinity]", "[-Infinity]", '{"a": NaN}'],
)
def test_json_constants_that_are_not_json_are_refused(written):
    assert error(f"a 1\nk {written}\n").startswith("t.conf:2: invalid JSON ")


# -- embedded code in double quotes -----------------------------------------------------------------


@pytest.mark.parametrize(
    "written, expected",
    [
        ("\"#{ENV['NAME']}\"", "alice"),
        ('"#{ENV["NAME"]}"', "alice"),
        ('"#{ENV[\\"NAME\\"]}"', "alice"),
        ("\"Bearer #{ENV['T']}!\"", "Bearer s3cr3t!"),
        ('"Bearer #{ENV[\\"T\\"]}!"', "Bearer s3cr3t!"),
        ("\"#{ENV['NAME']}:#{ENV['T']}\"", "alice:s3cr3t"),
        ("\"#{ ENV[ 'NAME' ] }\"", "alice"),
        ("\"#{ENV['EMPTY']}\"", ""),
        ("\"#{ENV.fetch('UNSET', 'fallback')}\"", "fallback"),
        ('"#{ENV.fetch("UNSET", "fall back")}"', "fall back"),
        ("\"#{ENV.fetch('UNSET', '')}\"", ""),
        ("\"#{ENV.fetch('NAME', 'fallback')}\"", "alice"),
        ("\"#{ENV.fetch('NAME')}\"", "alice"),
        ("\"x-#{ENV.fetch( 'UNSET' , 'd' )}-y\"", "x-d-y"),
        ('"#{Socket.gethostname}"', "h"),
        ('"#{hostname}"', "h"),
        ('"node-#{Socket.gethostname}.local"', "node-h.local"),
        ('"a#b #c"', "a#b #c"),  # a '#' not followed by '{' is just a character
        ("\"\\#{ENV['NAME']}\"", "#{ENV['NAME']}"),
    ],
)
def test_embedded_code(written, expected):
    assert param(f"k {written}\n") == ("k", expected)


@pytest.mark.parametrize(
    "line, expected",
    [
        ("k '#{ENV[\"NAME\"]}'", '#{ENV["NAME"]}'),
        ("k 'Bearer #{ENV[\\'T\\']}'", "Bearer #{ENV['T']}"),
        ("k Bearer-#{ENV['T']}", "Bearer-#{ENV['T']}"),
        ("k Bearer #{ENV['T']}", "Bearer"),  # unquoted, ' #' starts a comment
        ("k x#{Socket.gethostname}", "x#{Socket.gethostname}"),
        ("k [\"#{ENV['T']}\"]", "[\"#{ENV['T']}\"]"),
    ],
)
def test_no_substitution_outside_double_quotes(line, expected):
    assert param(line + "\n") == ("k", expected)


def test_an_unset_variable_is_an_error_naming_it_and_its_line():
    message = error("a 1\n<source>\n  token \"Bearer #{ENV['MISSING_TOKEN']}\"\n</source>\n")
    assert message.startswith("t.conf:3: environment variable 'MISSING_TOKEN' is not set")
    assert "ENV.fetch('MISSING_TOKEN', 'default')" in message


def test_fetch_without_a_default_of_an_unset_variable_is_an_error():
    assert error("a 1\nb 2\nk \"#{ENV.fetch('MISSING')}\"\n") == ("t.conf:3: environment variable 'MISSING' is not set and has no default")


@pytest.mark.parametrize(
    "code",
    [
        "1+1",
        "`id`",
        "File.read('/etc/passwd')",
        "ENV['NAME'].upcase",
        "ENV['NAME'] + ENV['T']",
        "ENV[NAME]",
        "system('true')",
        "worker_id",
        "",
    ],
)
def test_other_embedded_code_is_refused(code):
    message = error(f'a 1\nk "x #{{{code}}} y"\n')
    assert message.startswith(f"t.conf:2: unsupported embedded code #{{{code}}}: only ENV['NAME']")


def test_unterminated_embedded_code_is_an_error():
    assert error("a 1\nk \"#{ENV['NAME']\"\n") == ("t.conf:2: unterminated '#{' in a double-quoted string")


# -- line numbers and structural errors --------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "<source>\n  @type x\n",
            "t.conf:3: <source> opened at line 1 is never closed: expected </source> before the end of the file",
        ),
        (
            "a 1\n<match a>\n  <buffer>\n  </buffer>\n",
            "t.conf:5: <match> opened at line 2 is never closed: expected </match> before the end of the file",
        ),
        ("<source>\n  @type x\n</match>\n", "t.conf:3: </match> does not match <source> opened at line 1"),
        (
            "<match a>\n  <buffer>\n    k v\n</match>\n",
            "t.conf:4: </match> does not match <buffer> opened at line 2",
        ),
        ("a 1\n</source>\n", "t.conf:2: </source> closes a section that was never opened"),
        ("<s>\n</s>\n</s>\n", "t.conf:3: </s> closes a section that was never opened"),
        ("a 1\n<match a.**\n  @type x\n</match>\n", "t.conf:2: expected '>' to close <match"),
        ('a 1\n<event "x" y>\n</event>\n', "t.conf:2: expected '>' to close <event"),
        ("<match a>\n</match\n", "t.conf:2: expected '>' to close the end tag </match"),
        ("<match a>\n</match x>\n", "t.conf:2: expected '>' to close the end tag </match"),
        ("a 1\n<>\n", "t.conf:2: expected a section name after '<', found '>'"),
        ("a 1\n< source>\n", "t.conf:2: expected a section name after '<', found 'source>'"),
        ("<source>\n</source> x\n", "t.conf:2: expected end of line after </source>, found 'x'"),
        (
            "<source>\n</source></source>\n",
            "t.conf:2: expected end of line after </source>, found '</source>'",
        ),
        ("a 1\n<source> x\n</source>\n", "t.conf:2: expected end of line after <source>, found 'x'"),
        ("<match a>b>\n</match>\n", "t.conf:1: expected end of line after <match>, found 'b>'"),
    ],
)
def test_structural_errors(text, message):
    assert error(text) == message


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_parameter_lines_after_multiline_values(newline):
    text = newline.join(
        [
            "# header",  # 1
            "<source>",  # 2
            "  @type sample",  # 3
            "  json [",  # 4
            "    1,  # one",  # 5
            "    2",  # 6
            "  ]",  # 7
            "  after x",  # 8
            "  obj {",  # 9
            '    "a": "#x", # comment',  # 10
            "",  # 11
            '    "b": 2}',  # 12
            "  alone",  # 13
            "",  # 14
            "  last y",  # 15
            "</source>",  # 16
            "<match **>",  # 17
            "</match>",  # 18
            "",
        ]
    )
    root = parse(text, "t.conf", CTX)
    source = root.elements[0]
    assert [(k, v.where.line) for k, v in source.params] == [
        ("@type", 3),
        ("json", 4),
        ("after", 8),
        ("obj", 9),
        ("alone", 13),
        ("last", 15),
    ]
    assert [e.where.line for e in root.elements] == [2, 17]
    assert source.param("json").json == [1, 2]
    assert source.param("obj").json == {"a": "#x", "b": 2}
    assert source.param("after").text == "x"
    assert source.param("alone").text == ""


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_error_lines_after_multiline_values(newline):
    text = newline.join(["k [", "  1", "]", "x 1", "</oops>", ""])
    with pytest.raises(ConfigSyntaxError) as exc:
        parse(text, "t.conf", CTX)
    assert str(exc.value) == "t.conf:5: </oops> closes a section that was never opened"
    text = newline.join(["k [", "  1,", "  2 3", "]", ""])
    with pytest.raises(ConfigSyntaxError) as exc:
        parse(text, "t.conf", CTX)
    assert str(exc.value) == "t.conf:3: invalid JSON array: Expecting ',' delimiter"


# -- @include ---------------------------------------------------------------------------------------


def test_include_at_the_root_merges_in_place():
    files = {
        "other.conf": "x 9\n<match y>\n</match>\n",
    }
    root = p(
        """
        a 1
        @include other.conf
        b 2
        <source>
        </source>
        """,
        files,
    )
    assert tree(root) == (
        "ROOT",
        "",
        [("a", "1"), ("x", "9"), ("b", "2")],
        [("match", "y", [], []), ("source", "", [], [])],
    )
    assert [(k, v.where) for k, v in root.params] == [
        ("a", Where("t.conf", 1)),
        ("x", Where("other.conf", 1)),
        ("b", Where("t.conf", 3)),
    ]
    assert [e.where for e in root.elements] == [Where("other.conf", 2), Where("t.conf", 4)]


def test_include_inside_a_section_merges_into_that_section():
    files = {
        "common.conf": "# shared settings\ntag app.log\n<parse>\n  @type json\n</parse>\n",
    }
    resolver = FakeFiles(files)
    root = parse(
        dedent(
            """
            <source>
              @type tail
              @include common.conf
              path /var/log/app.log
            </source>
            <match **>
              @include "common.conf"  # quoted, with a comment
            </match>
            """
        ),
        "t.conf",
        CTX,
        include=resolver,
    )
    assert tree(root) == (
        "ROOT",
        "",
        [],
        [
            (
                "source",
                "",
                [("@type", "tail"), ("tag", "app.log"), ("path", "/var/log/app.log")],
                [("parse", "", [("@type", "json")], [])],
            ),
            ("match", "**", [("tag", "app.log")], [("parse", "", [("@type", "json")], [])]),
        ],
    )
    assert root.elements[0].param("tag").where == Where("common.conf", 2)
    assert resolver.calls == [
        ("common.conf", Where("t.conf", 3)),
        ("common.conf", Where("t.conf", 7)),
    ]


def test_nested_includes_resolve_through_the_callback():
    files = {
        "etc/parts/inputs.conf": "<source>\n  @include defaults/source.conf\n</source>\n",
        "etc/parts/defaults/source.conf": "@type forward\n@include ../port.conf\n",
        "etc/parts/port.conf": "port 24224\n",
    }
    resolver = FakeFiles(files)
    root = parse("@include parts/inputs.conf\n", "etc/main.conf", CTX, include=resolver)
    assert tree(root) == (
        "ROOT",
        "",
        [],
        [("source", "", [("@type", "forward"), ("port", "24224")], [])],
    )
    assert [pattern for pattern, _ in resolver.calls] == [
        "parts/inputs.conf",
        "defaults/source.conf",
        "../port.conf",
    ]
    assert [where for _, where in resolver.calls] == [
        Where("etc/main.conf", 1),
        Where("etc/parts/inputs.conf", 2),
        Where("etc/parts/defaults/source.conf", 2),
    ]
    assert lines(root) == (
        1,
        [],
        [(1, [("@type", "etc/parts/defaults/source.conf", 1), ("port", "etc/parts/port.conf", 1)], [])],
    )


def test_a_glob_include_takes_every_match_in_the_callbacks_order():
    files = {
        "conf.d/20-b.conf": "<match b>\n</match>\n",
        "conf.d/10-a.conf": "<match a>\n</match>\n",
        "conf.d/notes.txt": "not a config <<<\n",
    }
    root = p("@include conf.d/*.conf\n@include nothing/*.conf\n", files)
    assert [(e.name, e.arg, e.where.file) for e in root.elements] == [
        ("match", "a", "conf.d/10-a.conf"),
        ("match", "b", "conf.d/20-b.conf"),
    ]


@pytest.mark.parametrize(
    "included, files, message",
    [
        # The main file including itself.
        ("t.conf", {"t.conf": "a 1\n@include t.conf\n"}, "t.conf:2: @include cycle: t.conf -> t.conf"),
        # main -> b -> main.
        (
            "b.conf",
            {"t.conf": "a 1\n@include b.conf\n", "b.conf": "x 1\n@include t.conf\n"},
            "b.conf:2: @include cycle: t.conf -> b.conf -> t.conf",
        ),
        # main -> b -> c -> b: the chain starts where the cycle does, inside a section.
        (
            "b.conf",
            {"b.conf": "<s>\n  @include c.conf\n</s>\n", "c.conf": "\n\n@include b.conf\n"},
            "c.conf:3: @include cycle: b.conf -> c.conf -> b.conf",
        ),
    ],
)
def test_include_cycles_are_refused_with_the_chain(included, files, message):
    assert error(f"a 1\n@include {included}\n", files) == message


def test_include_nesting_is_bounded():
    counter = itertools.count(1)

    def endless(pattern, where):  # a new name every time: a cycle no name comparison can see
        return [IncludedSource(f"f{next(counter)}.conf", "@include next\n")]

    with pytest.raises(ConfigSyntaxError) as exc:
        parse("@include next\n", "t.conf", CTX, include=endless)
    assert exc.value.message == f"@include nested deeper than {MAX_INCLUDE_DEPTH} files (a cycle?)"
    assert exc.value.where == Where(f"f{MAX_INCLUDE_DEPTH - 1}.conf", 1)


@pytest.mark.parametrize(
    "included, message",
    [
        ("ok 1\n<match x>\n  k v\n", "bad.conf:4: <match> opened at line 2 is never closed"),
        ('ok 1\nk "unterminated\n', "bad.conf:2: unterminated double-quoted string"),
        # The includer's <source> cannot be closed from inside the included file.
        ("ok 1\n\n</source>\n", "bad.conf:3: </source> closes a section that was never opened"),
        ("ok 1\nk \"#{ENV['MISSING']}\"\n", "bad.conf:2: environment variable 'MISSING' is not set"),
        ("ok 1\nk [1,\n", "bad.conf:2: JSON array is not closed before the end of the file"),
    ],
)
def test_errors_in_an_included_file_name_that_file(included, message):
    text = "a 1\n<source>\n  @include bad.conf\n</source>\n"
    assert error(text, {"bad.conf": included}).startswith(message)


def test_a_missing_include_is_reported_by_the_callback_at_the_include_line():
    assert error("a 1\n\n@include missing.conf\n") == "t.conf:3: @include missing.conf: no such file"


@pytest.mark.parametrize(
    "text, message",
    [
        ("a 1\n@include\n", "t.conf:2: @include needs a path or a glob pattern"),
        ("a 1\n@include   # a comment\nb 2\n", "t.conf:2: @include needs a path or a glob pattern"),
        ('a 1\n@include ""\nb 2\n', "t.conf:2: @include needs a path or a glob pattern"),
        ("a 1\n@include x.conf y\n", "t.conf:2: @include x.conf y: no such file"),
        ("a 1\n@include 'x.conf' y\n", "t.conf:2: expected end of line after @include, found 'y'"),
    ],
)
def test_include_syntax_errors(text, message):
    assert error(text) == message


def test_include_without_a_callback_is_refused_at_its_line():
    with pytest.raises(ConfigSyntaxError) as exc:
        parse("a 1\n@include x.conf\nb 2\n", "t.conf", CTX)
    assert str(exc.value) == "t.conf:2: @include is not available here"


# -- the loader, with real files ---------------------------------------------------------------------


def test_read_tree_includes_real_files(tmp_path):
    def write(rel: str, text: str) -> str:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text))
        return str(path)

    main = write(
        "fluent.conf",
        """
        <system>
          log_level info
        </system>
        @include sub/inputs.conf
        @include conf.d/*.conf
        """,
    )
    # Relative to the including file: sub/inputs.conf's "port.conf" is sub/port.conf, not the decoy.
    inputs = write("sub/inputs.conf", "<source>\n  @type forward\n  @include port.conf\n</source>\n")
    write("sub/port.conf", "port 24224\n")
    write("port.conf", "port 1\n")
    # A glob: every match, sorted by name; other files in the folder are not read.
    write("conf.d/20-b.conf", "<match b.**>\n  @type null\n</match>\n")
    write("conf.d/10-a.conf", "<match a.**>\n  @type stdout\n</match>\n")
    write("conf.d/99-notes.txt", "<<< not a config\n")

    root = read_tree(main, env={})
    assert tree(root) == (
        "ROOT",
        "",
        [],
        [
            ("system", "", [("log_level", "info")], []),
            ("source", "", [("@type", "forward"), ("port", "24224")], []),
            ("match", "a.**", [("@type", "stdout")], []),
            ("match", "b.**", [("@type", "null")], []),
        ],
    )
    assert root.elements[1].param("port").where == Where(str(tmp_path / "sub" / "port.conf"), 1)
    assert root.elements[2].where == Where(str(tmp_path / "conf.d" / "10-a.conf"), 1)

    # A plain path that does not exist is an error at the file:line of its @include.
    write("sub/inputs.conf", "<source>\n  @type forward\n  @include nope.conf\n</source>\n")
    with pytest.raises(ConfigErrors) as exc:
        read_tree(main, env={})
    [err] = exc.value.errors
    assert isinstance(err, ConfigError)
    assert err.where == Where(inputs, 3)
    assert str(err).startswith(f"{inputs}:3: @include {tmp_path / 'sub' / 'nope.conf'}: cannot read")

    # A cycle a.conf -> b.conf -> a.conf is refused with the chain.
    a = write("a.conf", "x 1\n@include b.conf\n")
    b = write("b.conf", "y 2\n\n@include a.conf\n")
    with pytest.raises(ConfigErrors) as exc:
        read_tree(a, env={})
    [err] = exc.value.errors
    assert err.where == Where(b, 3)
    assert err.message == f"@include cycle: {a} -> {b} -> {a}"


# -- robustness: any text gives a tree or a ConfigSyntaxError, nothing else --------------------------

ALPHABET = "<>/\"'#{}[]\n @abc=\\"


def parses_or_refuses(text: str) -> None:
    try:
        root = parse(text, "fuzz.conf", CTX, include=FakeFiles({"abc": "a b\n"}))
    except ConfigSyntaxError as exc:
        assert exc.where.file in ("fuzz.conf", "abc")
        assert exc.where.line >= 1
    else:
        assert isinstance(root, Element)


def test_random_text_parses_or_raises_a_syntax_error_hypothesis():
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(st.text(alphabet=ALPHABET, max_size=200))
    def check(text):
        parses_or_refuses(text)

    check()


def test_random_text_parses_or_raises_a_syntax_error_seeded():
    # Runs without hypothesis: random texts over the same alphabet, and random mutations of a
    # valid config (deleting, duplicating and inserting characters).
    rng = random.Random(20240601)
    for _ in range(2000):
        parses_or_refuses("".join(rng.choice(ALPHABET) for _ in range(rng.randrange(80))))
    base = dedent(NESTED) + 'k [1, {"a": "#"}]\nm "#{ENV[\'NAME\']} \\n"\n@include abc\n'
    for _ in range(2000):
        chars = list(base)
        for _ in range(rng.randrange(1, 6)):
            i = rng.randrange(len(chars))
            op = rng.randrange(3)
            if op == 0:
                del chars[i]
            elif op == 1:
                chars.insert(i, chars[i])
            else:
                chars.insert(i, rng.choice(ALPHABET + "\r"))
        parses_or_refuses("".join(chars))


@pytest.mark.parametrize(
    "text, message",
    [
        ("k " + "[" * 5000 + "]" * 5000 + "\n", "t.conf:1: invalid JSON array"),
        ("<a>\n" * 5000, f"t.conf:{MAX_SECTION_DEPTH + 1}: sections nested deeper than {MAX_SECTION_DEPTH}"),
        ('k "' + "\\" * 5001 + '"\n', "t.conf:1: unterminated double-quoted string"),
    ],
)
def test_pathological_texts_are_syntax_errors(text, message):
    with pytest.raises(ConfigSyntaxError) as exc:
        parse(text, "t.conf", CTX)
    assert str(exc.value).startswith(message)


def test_a_very_long_json_number_parses_or_is_a_syntax_error():
    parses_or_refuses("k [" + "1" * 5000 + "]\n")
