"""Tag patterns (Fluentd's table, test/test_match.rb) and first-match routing."""

import pytest

from fluent_ld.pipeline.router import OTHER_TAGS, ROUTE_CACHE_SIZE, MatchPattern, PatternError, Router

MATCH = [
    ("a", "a"),
    ("a.b", "a.b"),
    ("a*", "a"),
    ("a*", "ab"),
    ("a*", "abc"),
    ("*a", "a"),
    ("*a", "ba"),
    ("*a", "cba"),
    ("*a*", "a"),
    ("*a*", "ba"),
    ("*a*", "ac"),
    ("*a*", "bac"),
    ("a.*", "a.b"),
    ("a.*", "a.c"),
    ("a.*.c", "a.b.c"),
    ("a.*.c", "a.c.c"),
    ("a.**", "a"),
    ("a.**", "a.b"),
    ("a.**", "a.b.c"),
    ("a**", "a"),
    ("a**", "ab"),
    ("a**", "abc"),
    ("a**", "a.b"),
    ("a**", "ab.c"),
    ("a**", "ab.d.e"),
    ("**.a", "a"),
    ("**.a", "b.a"),
    ("**.a", "cb.a"),
    ("**.a", "d.e.a"),
    ("**a", "a"),
    ("**a", "ba"),
    ("**a", "c.ba"),
    ("**a", "b.a"),
    ("**a", "d.e.a"),
    ("**", "a"),
    ("**", "a.b.c"),
    ("a.{b,c}", "a.b"),
    ("a.{b,c}", "a.c"),
    ("a.{b,c}.**", "a.b"),
    ("a.{b,c}.**", "a.c"),
    ("a.{b,c}.**", "a.c.d"),
    ("a.{b.**,c}", "a.b"),
    ("a.{b.**,c}", "a.b.c"),
    ("a.{b.**,c}", "a.c"),
    ("{a,b}.c", "a.c"),
    ("{a,b}.c", "b.c"),
    ("signal.**", "signal"),
    ("signal.**", "signal.web.checkout"),
    ("/sig.*nal/", "signal"),
    ("/sig.*nal/", "sig.x.nal"),
    ("a\\*", "a*"),
    ("a b", "b"),
    ("a.* b.**", "b.c.d"),
]

NO_MATCH = [
    ("a", "b"),
    ("a.b", "aab"),
    ("a*", "a.b"),
    ("a*", "ab.c"),
    ("a*", "ba"),
    ("*a", "ab"),
    ("a.*", "ab"),
    ("a.*", "a"),
    ("a.*", "a.b.c"),
    ("a.*.c", "a.c"),
    ("a.**", "ab"),
    ("a.**", "abc"),
    ("a.**", "ab.c"),
    ("a.**", "ab.d.e"),
    ("**.a", "ba"),
    ("**.a", "c.ba"),
    ("a.{b,c}", "a.d"),
    ("a.{b,c}.**", "a.d"),
    ("a.{b,c}.**", "a.cd"),
    ("a.{b.**,c}", "a.c.d"),
    ("{a,b}.c", "c.c"),
    ("{a,b}.c", "ab.c"),
    ("/sig.*nal/", "signals"),
    ("/sig.*nal/", "xsignal"),
    ("a\\*", "ab"),
    ("a b", "c"),
    ("a.* b.**", "a.b.c"),
]


@pytest.mark.parametrize("pattern, tag", MATCH)
def test_pattern_matches(pattern, tag):
    assert MatchPattern(pattern).match(tag)


@pytest.mark.parametrize("pattern, tag", NO_MATCH)
def test_pattern_does_not_match(pattern, tag):
    assert not MatchPattern(pattern).match(tag)


@pytest.mark.parametrize(
    "pattern, message",
    [("a.{b,c", "unclosed '{'"), ("/abc", "must end with '/'"), ("/a(/", "invalid regular expression"), ("", "at least one")],
)
def test_bad_patterns(pattern, message):
    with pytest.raises(PatternError, match=message.replace("(", r"\(").replace("{", r"\{")):
        MatchPattern(pattern)


def test_first_matching_route_wins():
    router = Router(
        [
            (MatchPattern("signal.debug"), "null"),
            (MatchPattern("signal.**"), "launchdarkly"),
            (MatchPattern("**"), "stdout"),
        ]
    )
    assert router.resolve("signal.debug") == "null"
    assert router.resolve("signal.web") == "launchdarkly"
    assert router.resolve("signal") == "launchdarkly"
    assert router.resolve("app.log") == "stdout"
    assert router.resolve("signal.web") == "launchdarkly"  # cached answer is the same


def test_unmatched_tags_are_counted_and_reported_once():
    router = Router([(MatchPattern("signal.**"), "out")])
    assert router.resolve("other") is None
    assert router.count_unmatched("other", 3) is True
    assert router.count_unmatched("other", 2) is False
    assert router.count_unmatched("else", 1) is True
    assert router.unmatched == {"other": 5, "else": 1}


def test_unmatched_and_cache_stay_bounded_under_a_flood_of_tags():
    router = Router([(MatchPattern("signal.**"), "out")])
    for i in range(ROUTE_CACHE_SIZE + 50):
        tag = f"flood.{i}"
        assert router.resolve(tag) is None
        router.count_unmatched(tag, 1)
    assert len(router._cache) <= ROUTE_CACHE_SIZE
    assert len(router.unmatched) == ROUTE_CACHE_SIZE + 1
    assert router.unmatched[OTHER_TAGS] == 50
    assert sum(router.unmatched.values()) == ROUTE_CACHE_SIZE + 50
