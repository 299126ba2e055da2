"""Webhook policy filters: LaunchDarkly's custom-role policy rules, from its documentation's examples.

Rules under test: segments ``type/name`` joined by ``:``, types literal, names globbed (``*``,
``?``), same segment count; deny beats allow whatever the order; nothing matching is denied; an
entry passes when one of its accesses does; tags, property selectors and views are parsed, warned
about and treated as satisfied; no policy = everything.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluent_ld.sources.webhook_policy import Policy, PolicyError, compile_policy, parse_specifier

PROD_FLAG = "proj/default:env/production:flag/new-checkout"
TEST_FLAG = "proj/default:env/test:flag/new-checkout"
PROD_ENV = "proj/default:env/production"
PROJECT = "proj/default"
SEGMENT = "proj/default:env/production:segment/beta-users"
MEMBER = "member/5f0c2e1a"


def allow(resources=None, actions=("*",), **clauses):
    return _statement("allow", resources, actions, clauses)


def deny(resources=None, actions=("*",), **clauses):
    return _statement("deny", resources, actions, clauses)


def _statement(effect, resources, actions, clauses):
    statement = {"effect": effect}
    if "notActions" not in clauses:
        statement["actions"] = list(actions)
    if resources is not None:
        statement["resources"] = list(resources)
    statement.update({k: list(v) for k, v in clauses.items()})
    return statement


def access(action, resource):
    return {"action": action, "resource": resource}


# (id, policy, accesses, allowed?)
CASES = [
    # The webhooks documentation's example: production flags only.
    ("prod flags: prod flag", [allow(["proj/*:env/production:flag/*"])], [access("updateOn", PROD_FLAG)], True),
    ("prod flags: any action", [allow(["proj/*:env/production:flag/*"])], [access("deleteFlag", PROD_FLAG)], True),
    ("prod flags: test flag", [allow(["proj/*:env/production:flag/*"])], [access("updateOn", TEST_FLAG)], False),
    ("prod flags: prod segment", [allow(["proj/*:env/production:flag/*"])], [access("updateIncluded", SEGMENT)], False),
    ("prod flags: member", [allow(["proj/*:env/production:flag/*"])], [access("updateRole", MEMBER)], False),
    # Toggles only.
    ("toggles: updateOn", [allow(["proj/*:env/*:flag/*"], ["updateOn"])], [access("updateOn", TEST_FLAG)], True),
    ("toggles: updateRules", [allow(["proj/*:env/*:flag/*"], ["updateOn"])], [access("updateRules", TEST_FLAG)], False),
    ("toggles: case-sensitive", [allow(["proj/*:env/*:flag/*"], ["updateOn"])], [access("updateon", TEST_FLAG)], False),
    # Action globs.
    ("update*: updateRules", [allow(["proj/*:env/*:flag/*"], ["update*"])], [access("updateRules", PROD_FLAG)], True),
    ("update*: createFlag", [allow(["proj/*:env/*:flag/*"], ["update*"])], [access("createFlag", PROD_FLAG)], False),
    ("update??: updateOn", [allow(["proj/*:env/*:flag/*"], ["update??"])], [access("updateOn", PROD_FLAG)], True),
    ("update??: updateRules", [allow(["proj/*:env/*:flag/*"], ["update??"])], [access("updateRules", PROD_FLAG)], False),
    # Name globs.
    ("checkout-*: checkout-v2", [allow(["proj/*:env/*:flag/checkout-*"])], [access("updateOn", "proj/web:env/production:flag/checkout-v2")], True),
    ("checkout-*: checkout- (empty run)", [allow(["proj/*:env/*:flag/checkout-*"])], [access("updateOn", "proj/web:env/production:flag/checkout-")], True),
    ("checkout-*: new-checkout", [allow(["proj/*:env/*:flag/checkout-*"])], [access("updateOn", PROD_FLAG)], False),
    ("*-checkout: new-checkout", [allow(["proj/*:env/*:flag/*-checkout"])], [access("updateOn", PROD_FLAG)], True),
    ("prod-?: prod-1", [allow(["proj/*:env/prod-?:flag/*"])], [access("updateOn", "proj/a:env/prod-1:flag/f")], True),
    ("prod-?: prod-12", [allow(["proj/*:env/prod-?:flag/*"])], [access("updateOn", "proj/a:env/prod-12:flag/f")], False),
    ("prod-?: prod-", [allow(["proj/*:env/prod-?:flag/*"])], [access("updateOn", "proj/a:env/prod-:flag/f")], False),
    ("names are case-sensitive", [allow(["proj/*:env/Production:flag/*"])], [access("updateOn", PROD_FLAG)], False),
    ("[ is literal", [allow(["proj/*:env/*:flag/[ab]"])], [access("updateOn", "proj/a:env/b:flag/a")], False),
    ("exact names", [allow(["proj/default:env/*:segment/beta-users"])], [access("updateIncluded", SEGMENT)], True),
    ("exact names: other project", [allow(["proj/other:env/*:segment/beta-users"])], [access("updateIncluded", SEGMENT)], False),
    # Types match literally, segment by segment, and segment counts must agree.
    ("proj/* vs project", [allow(["proj/*"])], [access("updateProjectName", PROJECT)], True),
    ("proj/* vs environment", [allow(["proj/*"])], [access("updateName", PROD_ENV)], False),
    ("proj/* vs flag", [allow(["proj/*"])], [access("updateOn", PROD_FLAG)], False),
    ("proj/*:env/* vs flag", [allow(["proj/*:env/*"])], [access("updateOn", PROD_FLAG)], False),
    ("flag spec vs environment", [allow(["proj/*:env/*:flag/*"])], [access("updateName", PROD_ENV)], False),
    ("flag/* alone vs scoped flag", [allow(["flag/*"])], [access("updateOn", PROD_FLAG)], False),
    ("type mismatch at segment 3", [allow(["proj/*:env/*:segment/*"])], [access("updateOn", PROD_FLAG)], False),
    ("member/*", [allow(["member/*"])], [access("updateRole", MEMBER)], True),
    ("acct", [allow(["acct"])], [access("updateAccountOwner", "acct")], True),
    ("acct vs member", [allow(["acct"])], [access("updateRole", MEMBER)], False),
    # Deny beats allow, and order does not matter.
    ("deny after allow", [allow(["proj/*:env/*:flag/*"]), deny(["proj/*:env/production:flag/*"])], [access("updateOn", PROD_FLAG)], False),
    ("deny before allow", [deny(["proj/*:env/production:flag/*"]), allow(["proj/*:env/*:flag/*"])], [access("updateOn", PROD_FLAG)], False),
    ("deny elsewhere leaves allow", [allow(["proj/*:env/*:flag/*"]), deny(["proj/*:env/production:flag/*"])], [access("updateOn", TEST_FLAG)], True),
    ("deny on one action only", [allow(["proj/*:env/*:flag/*"]), deny(["proj/*:env/*:flag/*"], ["deleteFlag"])], [access("updateOn", PROD_FLAG)], True),
    ("deny alone allows nothing", [deny(["proj/*:env/test:flag/*"])], [access("updateOn", PROD_FLAG)], False),
    # notActions / notResources.
    ("notActions: other action", [allow(["proj/*:env/*:flag/*"], notActions=["deleteFlag"])], [access("updateOn", PROD_FLAG)], True),
    ("notActions: the excluded action", [allow(["proj/*:env/*:flag/*"], notActions=["deleteFlag"])], [access("deleteFlag", PROD_FLAG)], False),
    ("notActions glob", [allow(["proj/*:env/*:flag/*"], notActions=["update*"])], [access("updateOn", PROD_FLAG)], False),
    ("notResources: outside", [allow(notResources=["proj/*:env/production:flag/*"])], [access("updateOn", TEST_FLAG)], True),
    ("notResources: inside", [allow(notResources=["proj/*:env/production:flag/*"])], [access("updateOn", PROD_FLAG)], False),
    ("notResources: other shapes are outside", [allow(notResources=["proj/*:env/production:flag/*"])], [access("updateRole", MEMBER)], True),
    (
        "deny notResources: everything but prod is denied",
        [allow(["proj/*:env/*:flag/*"]), deny(notResources=["proj/*:env/production:flag/*"])],
        [access("updateOn", TEST_FLAG)],
        False,
    ),
    (
        "deny notResources: prod passes",
        [allow(["proj/*:env/*:flag/*"]), deny(notResources=["proj/*:env/production:flag/*"])],
        [access("updateOn", PROD_FLAG)],
        True,
    ),
    ("notActions and notResources", [allow(notActions=["deleteFlag"], notResources=["member/*"])], [access("updateOn", PROD_FLAG)], True),
    # Several accesses: one allowed is enough.
    ("one of two allowed", [allow(["proj/*:env/production:flag/*"])], [access("updateOn", TEST_FLAG), access("updateOn", PROD_FLAG)], True),
    ("none of two allowed", [allow(["proj/*:env/production:flag/*"])], [access("updateOn", TEST_FLAG), access("updateRole", MEMBER)], False),
    (
        "one denied, the other allowed",
        [allow(["proj/*:env/*:flag/*"]), deny(["proj/*:env/production:flag/*"])],
        [access("updateOn", PROD_FLAG), access("updateOn", TEST_FLAG)],
        True,
    ),
    # Entries without accesses, and malformed accesses.
    ("no accesses", [allow(["proj/*"])], [], False),
    ("accesses not a list", [allow(["proj/*"])], {"action": "x", "resource": PROJECT}, False),
    ("accesses missing (None)", [allow(["proj/*"])], None, False),
    ("access not an object", [allow(notResources=["member/*"])], ["updateOn"], False),
    ("action not a string", [allow(["proj/*"])], [access(None, PROJECT)], False),
    ("resource malformed", [allow(notResources=["member/*"])], [access("updateOn", "proj")], False),
    ("malformed access next to a good one", [allow(["proj/*"])], [access(1, 2), access("x", PROJECT)], True),
    ("tags on an access resource are dropped", [allow(["proj/*:env/production"])], [access("updateName", "proj/default;mobile:env/production;critical")], True),
    # No policy = everything.
    ("empty policy, an access", [], [access("updateOn", PROD_FLAG)], True),
    ("empty policy, no accesses", [], [], True),
]


@pytest.mark.parametrize("policy, accesses, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_policy_decides_like_launchdarkly(policy, accesses, expected):
    assert compile_policy(policy).allows(accesses) is expected


def test_none_is_no_policy():
    policy = compile_policy(None)
    assert len(policy) == 0 and policy.allows([]) and policy.warnings == []
    assert policy.explain([]) == "no policy: every entry is allowed"


# --- Tags, property selectors and views: parsed, warned about, treated as satisfied. -----------

# LaunchDarkly's "all flags except those tagged tag1 or tag2" example.
EXCEPT_TAGGED = [
    allow(notResources=["proj/*:env/*:flag/*;tag1"]),
    allow(notResources=["proj/*:env/*:flag/*;tag2"]),
]


def test_tag_terms_are_parsed():
    spec = parse_specifier("proj/*;mobile:env/*;qa_*,{critical:true}:flag/*;tag1,tag2,view:team-a")
    assert [(s.type, s.name) for s in spec.segments] == [("proj", "*"), ("env", "*"), ("flag", "*")]
    assert [s.tags for s in spec.segments] == [("mobile",), ("qa_*",), ("tag1", "tag2")]
    assert spec.segments[1].properties == ("{critical:true}",)
    assert spec.segments[2].views == ("team-a",)
    assert parse_specifier("proj/*:env/*:flag/*{key:value}").segments[2].properties == ("{key:value}",)


def test_a_tag_named_view_before_a_segment_is_a_tag():
    spec = parse_specifier("proj/*;view:env/*")
    assert [(s.type, s.tags, s.views) for s in spec.segments] == [("proj", ("view",), ()), ("env", (), ())]


def test_tag_terms_are_warned_about_once_per_specifier_and_kind():
    policy = compile_policy(
        [
            allow(["proj/*:env/production:flag/*"]),
            deny(["proj/*:env/*:flag/*;beta,internal", "proj/*:env/*;{critical:true}:flag/*"]),
        ]
    )
    assert policy.warnings == [
        "statement 2: resource 'proj/*:env/*:flag/*;beta,internal' uses tags (beta, internal), which a webhook "
        "payload does not carry: the term is ignored (treated as matching any tags), so this statement denies "
        "those resources whatever their tags: less may be forwarded than LaunchDarkly would send",
        "statement 2: resource 'proj/*:env/*;{critical:true}:flag/*' uses property selectors ({critical:true}), "
        "which a webhook payload does not carry: the term is ignored (treated as matching any property values), "
        "so this statement denies those resources whatever their property values: less may be forwarded than "
        "LaunchDarkly would send",
    ]


def test_no_warnings_without_tag_terms():
    assert compile_policy([allow(["proj/*:env/production:flag/*"])]).warnings == []


@pytest.mark.parametrize(
    "statement, consequence",
    [
        (allow(["flag/*;t"]), "allows those resources whatever their tags: more may be forwarded"),
        (deny(["flag/*;t"]), "denies those resources whatever their tags: less may be forwarded"),
        (allow(notResources=["flag/*;t"]), "never allows those resources, whatever their tags: less may be forwarded"),
        (deny(notResources=["flag/*;t"]), "never denies those resources, whatever their tags: more may be forwarded"),
    ],
)
def test_each_warning_says_which_way_the_filter_errs(statement, consequence):
    (warning,) = compile_policy([statement]).warnings
    assert consequence in warning


@pytest.mark.parametrize(
    "policy, accesses, expected",
    [
        # allow with a tag: allows every flag, tagged or not.
        ([allow(["proj/*:env/*:flag/*;tag1,tag2"])], [access("updateOn", PROD_FLAG)], True),
        # deny with a tag: denies every flag the rest of the specifier covers.
        ([allow(["proj/*:env/*:flag/*"]), deny(["proj/*:env/*:flag/*;tag1"])], [access("updateOn", PROD_FLAG)], False),
        ([allow(["proj/*:env/*:flag/*"]), deny(["proj/*:env/test:flag/*;tag1"])], [access("updateOn", PROD_FLAG)], True),
        # "all flags except tagged": every flag is covered by the notResources, so no flag passes...
        (EXCEPT_TAGGED, [access("updateOn", PROD_FLAG)], False),
        # ...while what the specifier does not cover still does.
        (EXCEPT_TAGGED, [access("updateRole", MEMBER)], True),
        # A property selector on the environment: treated as satisfied by every environment.
        ([allow(["proj/*:env/*;{critical:true}:flag/*"])], [access("updateOn", TEST_FLAG)], True),
    ],
    ids=["allow tagged", "deny tagged", "deny tagged elsewhere", "except tagged: flag", "except tagged: member", "property selector"],
)
def test_ignored_terms_are_treated_as_satisfied(policy, accesses, expected):
    assert compile_policy(policy).allows(accesses) is expected


def test_the_except_tagged_example_warns_for_each_statement():
    warnings = compile_policy(EXCEPT_TAGGED).warnings
    assert [w.split(":")[0] for w in warnings] == ["statement 1", "statement 2"]
    assert all("notResources item" in w and "never allows those resources" in w for w in warnings)


# --- explain() ------------------------------------------------------------------------------

EXPLAINED = [allow(["proj/*:env/*:flag/*"]), deny(["proj/*:env/production:flag/*"])]


@pytest.mark.parametrize(
    "accesses, text",
    [
        ([access("updateOn", PROD_FLAG)], f"denied: access 1 (updateOn on {PROD_FLAG}): denied by statement 2"),
        ([access("updateRole", MEMBER)], f"denied: access 1 (updateRole on {MEMBER}): no allow statement matches"),
        (
            [access("updateOn", PROD_FLAG), access("updateRole", MEMBER)],
            f"denied: access 1 (updateOn on {PROD_FLAG}): denied by statement 2; access 2 (updateRole on {MEMBER}): no allow statement matches",
        ),
        ([access("updateOn", TEST_FLAG)], f"allowed: access 1 (updateOn on {TEST_FLAG}) allowed by statement 1"),
        ([], "the entry has no accesses, so no statement can allow it"),
        (["x"], "denied: access 1: malformed access (not an object)"),
        ([access("updateOn", "flag")], "denied: access 1 (updateOn on flag): malformed resource 'flag'"),
    ],
    ids=["denied by deny", "no allow", "two accesses", "allowed", "no accesses", "not an object", "bad resource"],
)
def test_explain(accesses, text):
    assert compile_policy(EXPLAINED).explain(accesses) == text


# --- Validation -------------------------------------------------------------------------------

GOOD = {"effect": "allow", "actions": ["*"], "resources": ["proj/*"]}


def changed(**changes):
    statement = {**GOOD, **changes}
    return {k: v for k, v in statement.items() if v is not DROP}


DROP = object()

INVALID = [
    ("not a list", {"effect": "allow"}, "the policy must be a JSON array of statements, not dict"),
    ("statement not an object", ["allow"], "statement 1: must be an object"),
    ("missing effect", [changed(effect=DROP)], "statement 1: field 'effect' is missing"),
    ("bad effect", [changed(effect="maybe")], "statement 1: field 'effect' must be \"allow\" or \"deny\", not 'maybe'"),
    ("capitalised effect", [changed(effect="Allow")], "statement 1: field 'effect' must be"),
    ("both actions", [changed(notActions=["x"])], "statement 1: has both 'actions' and 'notActions'"),
    ("no actions", [changed(actions=DROP)], "statement 1: needs 'actions' or 'notActions'"),
    ("both resources", [changed(notResources=["member/*"])], "statement 1: has both 'resources' and 'notResources'"),
    ("no resources", [changed(resources=DROP)], "statement 1: needs 'resources' or 'notResources'"),
    ("empty actions", [changed(actions=[])], "statement 1: field 'actions' must be a non-empty list of strings"),
    ("empty notResources", [changed(resources=DROP, notResources=[])], "statement 1: field 'notResources' must be a non-empty list"),
    ("actions a string", [changed(actions="*")], "statement 1: field 'actions' must be a non-empty list of strings"),
    ("non-string action", [changed(actions=["*", 3])], "statement 1: field 'actions' item 2 must be a string, not int"),
    ("empty action", [changed(actions=[""])], "statement 1: field 'actions' item 1 '' is empty"),
    ("non-string resource", [changed(resources=[None])], "statement 1: field 'resources' item 1 must be a string, not NoneType"),
    ("unknown key", [changed(Effect="allow")], "statement 1: unknown field 'Effect'"),
    (
        "the right statement is named",
        [GOOD, GOOD, changed(resources=["proj"])],
        "statement 3: field 'resources' item 1 'proj': segment 1 'proj' has no '/name' (use 'proj/*' for every one)",
    ),
    ("empty name", [changed(resources=["proj/"])], "statement 1: field 'resources' item 1 'proj/': segment 1 'proj/' has no name"),
    ("no type", [changed(resources=["proj/*:/flag/*"])], "item 1 'proj/*:/flag/*': segment 2 has no resource type"),
    (
        "globbed type",
        [changed(resources=["proj/*:*/*:flag/*"])],
        "item 1 'proj/*:*/*:flag/*': segment 2 has a malformed resource type '*' (types are literal: no globs)",
    ),
    ("trailing colon", [changed(resources=["proj/*:"])], "ends with ':'"),
    ("empty resource", [changed(resources=[""])], "statement 1: field 'resources' item 1 '' is empty"),
    ("whitespace", [changed(resources=["proj/* "])], "item 1 'proj/* ' is empty or contains whitespace"),
    ("empty tag", [changed(resources=["proj/*;"])], "segment 1 has an empty or malformed tag after ';'"),
    ("bad property", [changed(resources=["flag/*{critical}"])], "property selector '{critical}' is not of the form {key:value}"),
    ("unclosed property", [changed(resources=["flag/*;{critical:true"])], "unclosed '{'"),
    ("comma in a name", [changed(resources=["flag/a,b"])], "unexpected ',' at position 7"),
    ("role attribute", [changed(resources=["proj/${roleAttribute/projects}"])], "uses a role attribute"),
    (
        "bad resource in notResources",
        [changed(resources=DROP, notResources=["member/*", "env"])],
        "statement 1: field 'notResources' item 2 'env': segment 1 'env' has no '/name'",
    ),
]


@pytest.mark.parametrize("policy, message", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_bad_policies_are_refused(policy, message):
    with pytest.raises(PolicyError) as info:
        compile_policy(policy)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


# --- Properties ------------------------------------------------------------------------------

RESOURCES = [PROD_FLAG, TEST_FLAG, PROD_ENV, PROJECT, SEGMENT, MEMBER, "proj/web:env/production:flag/checkout-v2"]
ACTIONS = ["updateOn", "updateRules", "deleteFlag", "createFlag", "updateRole", "updateIncluded"]
SPECIFIERS = [
    "proj/*",
    "proj/*:env/*",
    "proj/*:env/production",
    "proj/*:env/*:flag/*",
    "proj/*:env/production:flag/*",
    "proj/default:env/test:flag/*",
    "proj/*:env/*:flag/checkout-*",
    "proj/*:env/*:segment/*",
    "member/*",
    "proj/*:env/*:flag/*;tag1",
    "proj/*:env/prod?ction:flag/*",
]
PATTERNS = ["*", "update*", "updateOn", "deleteFlag", "create*", "updateR?le"]

statements = st.builds(
    lambda effect, negate_actions, actions, negate_resources, resources: {
        "effect": effect,
        "notActions" if negate_actions else "actions": actions,
        "notResources" if negate_resources else "resources": resources,
    },
    st.sampled_from(["allow", "deny"]),
    st.booleans(),
    st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3),
    st.booleans(),
    st.lists(st.sampled_from(SPECIFIERS), min_size=1, max_size=3),
)
accesses = st.lists(st.builds(access, st.sampled_from(ACTIONS), st.sampled_from(RESOURCES)), min_size=0, max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.lists(statements, min_size=1, max_size=6).flatmap(lambda s: st.tuples(st.just(s), st.permutations(s))), accesses)
def test_statement_order_never_changes_the_result(policies, entry):
    original, shuffled = policies
    assert compile_policy(original).allows(entry) == compile_policy(shuffled).allows(entry)


@settings(max_examples=200, deadline=None)
@given(st.lists(statements, min_size=1, max_size=5), statements, accesses)
def test_adding_a_deny_never_lets_more_through(policy, extra, entry):
    extra = {**extra, "effect": "deny"}
    if compile_policy(policy + [extra]).allows(entry):
        assert compile_policy(policy).allows(entry)


@settings(max_examples=200, deadline=None)
@given(st.lists(statements, min_size=1, max_size=5), accesses)
def test_an_entry_passes_exactly_when_one_access_does(policy, entry):
    compiled: Policy = compile_policy(policy)
    assert compiled.allows(entry) == any(compiled.allows_access(a["action"], a["resource"]) for a in entry)
