"""FQAN parsing, rule matching and the primary FQAN."""

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poolmgr.dn import quote_input
from poolmgr.errors import BadInputError
from poolmgr.fqan import Fqan, parse_fqan, parse_rule, select_primary

# The pool rules of F07, in rule order.
F07_RULES = [
    ("biomed", "/biomed"),
    ("atlasprd", "/atlas/Role=production"),
    ("atlasuk", "/atlas/uk/*"),
    ("gridsgm", "/gridit/Role=SoftwareManager"),
]


def route(text: str) -> str | None:
    """Return the first F07 pool whose rule matches the FQAN, or None."""
    fqan, _ = parse_fqan(text)
    return next(
        (pool for pool, rule in F07_RULES if parse_rule(rule).matches(fqan)), None
    )


def assert_rejected(parse, text: str, fragment: str) -> None:
    with pytest.raises(BadInputError) as caught:
        parse(text)
    message = str(caught.value)
    assert quote_input(text) in message, f"message {message!r} should quote {text!r}"
    assert fragment in message, f"message {message!r} should say {fragment!r}"


# F07: one FQAN per mapping, against the F07 rules.


@pytest.mark.parametrize(
    ("text", "canonical", "pool"),
    [
        ("/biomed", "/biomed", "biomed"),
        ("/biomed/Role=NULL", "/biomed", "biomed"),
        ("/biomed/Role=NULL/Capability=NULL", "/biomed", "biomed"),
        ("/biomed2/Role=NULL/Capability=NULL", "/biomed2", None),
        ("/atlas/Role=production", "/atlas/Role=production", "atlasprd"),
        (
            "/atlas/Role=production/Capability=NULL",
            "/atlas/Role=production",
            "atlasprd",
        ),
        ("/atlas/uk/Role=NULL/Capability=NULL", "/atlas/uk", "atlasuk"),
        ("/atlasuk/Role=NULL/Capability=NULL", "/atlasuk", None),
        ("/gridit/ROLE=SoftwareManager", "/gridit/Role=SoftwareManager", "gridsgm"),
        (
            "/atlas/Role=production/Capability=foo",
            "/atlas/Role=production",
            "atlasprd",
        ),
    ],
    ids=["a", "b", "c", "d", "e", "f", "g", "h", "i", "l"],
)
def test_f07_fqans_parse_and_route(text, canonical, pool):
    fqan, _ = parse_fqan(text)
    assert str(fqan) == canonical
    assert route(text) == pool, f"{text!r} should go to pool {pool!r}"


@pytest.mark.parametrize(
    "spellings",
    [
        ["/biomed", "/biomed/Role=NULL", "/biomed/Role=NULL/Capability=NULL"],
        ["/atlas/Role=production", "/atlas/Role=production/Capability=NULL"],
        ["/biomed/role=null", "/biomed/ROLE=Null/CAPABILITY=nULL"],
    ],
    ids=["a-b-c", "e-f", "keyword-and-null-case"],
)
def test_equivalent_spellings_are_equal_fqans(spellings):
    fqans = {parse_fqan(text)[0] for text in spellings}
    assert len(fqans) == 1, f"{spellings} should be one FQAN, got {fqans}"


def test_root_group_is_not_a_prefix_of_a_longer_vo():
    assert parse_fqan("/biomed")[0] != parse_fqan("/biomed2")[0]
    assert parse_fqan("/biomed2")[0].vo == "biomed2"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("atlas/Role=production", "must start with '/'"),
        ("/atlas/Role=", "empty or invalid Role value"),
    ],
    ids=["j-no-leading-slash", "k-empty-role"],
)
def test_f07_malformed_fqans_are_rejected(text, fragment):
    assert_rejected(parse_fqan, text, fragment)


def test_keyword_case_is_read_with_a_warning():
    fqan, warnings = parse_fqan("/gridit/ROLE=SoftwareManager")
    assert (fqan.group, fqan.role) == ("/gridit", "SoftwareManager")
    assert warnings == [
        "FQAN '/gridit/ROLE=SoftwareManager' writes the keyword 'ROLE'; read as 'Role'."
    ]


def test_capability_is_kept_for_display_ignored_for_matching_and_warned():
    fqan, warnings = parse_fqan("/atlas/Role=production/Capability=foo")
    assert fqan.capability == "foo"
    assert fqan == Fqan("/atlas", "production")
    assert hash(fqan) == hash(Fqan("/atlas", "production"))
    assert warnings == [
        "FQAN '/atlas/Role=production/Capability=foo' carries Capability=foo, "
        "which is ignored for matching."
    ]


def test_canonical_fqan_has_no_warnings():
    assert parse_fqan("/atlas/uk/Role=pilot/Capability=NULL")[1] == []


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("/Atlas", "/atlas"),
        ("/atlas/UK", "/atlas/uk"),
        ("/atlas/Role=Production", "/atlas/Role=production"),
    ],
    ids=["vo", "group", "role"],
)
def test_names_and_roles_compare_case_sensitively(left, right):
    assert parse_fqan(left)[0] != parse_fqan(right)[0]


def test_fqan_parts_and_canonical_form():
    fqan, _ = parse_fqan("/cms/uscms/Role=pilot/Capability=NULL")
    assert (fqan.vo, fqan.group, fqan.role, fqan.capability) == (
        "cms",
        "/cms/uscms",
        "pilot",
        None,
    )
    assert str(fqan) == "/cms/uscms/Role=pilot"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "must start with '/'"),
        ("/", "empty group component"),
        ("/atlas/", "empty group component"),
        ("/atlas//uk", "empty group component"),
        ("/atlas /uk", "whitespace"),
        ("/atlas/u k", "whitespace"),
        ("/atlas\n/Role=x", "control character"),
        ("/atlas\x00", "control character"),
        ("/atlas/Role=x/uk", "after a keyword"),
        ("/atlas/Capability=NULL/uk", "after a keyword"),
        ("/atlas/Role=a/Role=b", "Role repeated or out of order"),
        ("/atlas/Capability=NULL/Role=a", "Role repeated or out of order"),
        ("/atlas/Capability=a/Capability=b", "Capability repeated"),
        ("/Role=pilot", "Role before any group"),
        ("/atlas/Group=uk", "unknown keyword 'Group'"),
        ("/atlas/=x", "unknown keyword ''"),
        ("/atlas/Role=a=b", "invalid Role value"),
        ("/atlas/Role=pi*lot", "invalid Role value"),
        ("/atlas/Capability=", "invalid Capability value"),
        ("/atl@s", "invalid group name"),
        ("/atlas/*", "invalid group name"),
        ("/atlas/..", "invalid group name"),
        ("/atlas/ü", "invalid group name"),
        ("/" + "a" * 1024, "longer than 1024"),
    ],
    ids=[
        "empty",
        "root-only",
        "trailing-slash",
        "empty-component",
        "space-after-vo",
        "space-in-group",
        "newline",
        "nul",
        "group-after-role",
        "group-after-capability",
        "duplicate-role",
        "role-after-capability",
        "duplicate-capability",
        "role-without-vo",
        "unknown-keyword",
        "empty-keyword",
        "equals-in-role",
        "star-in-role",
        "empty-capability",
        "bad-group-char",
        "wildcard-in-fqan",
        "dot-dot",
        "non-ascii-group",
        "too-long",
    ],
)
def test_malformed_fqan_is_rejected_quoting_it(text, fragment):
    assert_rejected(parse_fqan, text, fragment)


def test_longest_allowed_fqan_is_accepted():
    text = "/" + "a" * 1023
    assert str(parse_fqan(text)[0]) == text


# Rules.


@pytest.mark.parametrize(
    ("rule", "fqan", "expected"),
    [
        ("/atlas", "/atlas", True),
        ("/atlas", "/atlas/Role=NULL", True),
        ("/atlas", "/atlas/Role=production", False),
        ("/atlas", "/atlas/uk", False),
        ("/atlas/Role=production", "/atlas/Role=production", True),
        ("/atlas/Role=production", "/atlas", False),
        ("/atlas/Role=production", "/atlas/uk/Role=production", False),
        ("/atlas/Role=NULL", "/atlas", True),
        ("/atlas/ROLE=production", "/atlas/Role=production", True),
        ("/atlas/uk/*", "/atlas/uk", True),
        ("/atlas/uk/*", "/atlas/uk/ox", True),
        ("/atlas/uk/*", "/atlas/uk/ox/physics", True),
        ("/atlas/uk/*", "/atlas", False),
        ("/atlas/uk/*", "/atlasuk", False),
        ("/atlas/uk/*", "/atlas/ukraine", False),
        ("/atlas/uk/*", "/atlas/uk/Role=pilot", False),
        ("/atlas/*", "/atlas", True),
        ("/atlas/*", "/atlas2", False),
        ("/atlas/*/Role=pilot", "/atlas/Role=pilot", True),
        ("/atlas/*/Role=pilot", "/atlas/uk/Role=pilot", True),
        ("/atlas/*/Role=pilot", "/atlas/uk", False),
        ("/atlas/*/Role=pilot", "/atlas/Role=production", False),
        ("/atlas/*/Role=pilot", "/atlas/Role=Pilot", False),
        ("/atlas/Role=production", "/atlas/Role=production/Capability=foo", True),
    ],
    ids=[
        "exact-vo",
        "exact-vo-role-null",
        "exact-vo-not-role",
        "exact-vo-not-subgroup",
        "exact-role",
        "role-rule-not-plain",
        "role-rule-not-subgroup-role",
        "rule-role-null",
        "rule-keyword-case",
        "subtree-itself",
        "subtree-child",
        "subtree-grandchild",
        "subtree-not-parent",
        "subtree-not-string-prefix",
        "subtree-not-longer-component",
        "subtree-no-role",
        "vo-subtree-itself",
        "vo-subtree-not-longer-vo",
        "role-subtree-root",
        "role-subtree-child",
        "role-subtree-needs-role",
        "role-subtree-other-role",
        "role-case-sensitive",
        "capability-ignored",
    ],
)
def test_rule_matches_component_wise(rule, fqan, expected):
    got = parse_rule(rule).matches(parse_fqan(fqan)[0])
    assert got is expected, f"rule {rule!r} on {fqan!r} should give {expected}"


def test_rule_keeps_its_text_as_written():
    assert parse_rule("/atlas/ROLE=production").text == "/atlas/ROLE=production"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("atlas", "must start with '/'"),
        ("/*", "must name its VO"),
        ("/*/Role=pilot", "must name its VO"),
        ("/atlas/*/uk", "'*' other than as its last group"),
        ("/atlas/*/*", "'*' other than as its last group"),
        ("/atlas/u*", "invalid group name"),
        ("/atlas/uk*", "invalid group name"),
        ("/atlas/Role=*", "invalid Role value"),
        ("/atlas//uk/*", "empty group component"),
        ("/atlas/Role=production/Capability=foo", "names a capability"),
        ("/atlas/Role=x/uk", "after a keyword"),
        ("/atlas /*", "whitespace"),
    ],
    ids=[
        "no-slash",
        "everything",
        "every-vo-role",
        "star-in-middle",
        "double-star",
        "partial-star",
        "suffix-star",
        "role-star",
        "empty-component",
        "capability",
        "group-after-role",
        "whitespace",
    ],
)
def test_malformed_rule_is_rejected_quoting_it(text, fragment):
    assert_rejected(parse_rule, text, fragment)


def test_rule_with_null_capability_is_accepted():
    rule = parse_rule("/atlas/Role=production/Capability=NULL")
    assert rule.matches(Fqan("/atlas", "production"))


# F06: the first FQAN is the primary one.


@pytest.mark.parametrize(
    ("fqans", "primary"),
    [
        (
            ["/cms/Role=NULL/Capability=NULL", "/cms/dcms/Role=NULL/Capability=NULL"],
            "/cms",
        ),
        (
            ["/cms/dcms/Role=NULL/Capability=NULL", "/cms/Role=NULL/Capability=NULL"],
            "/cms/dcms",
        ),
        (
            [
                "/atlas/Role=NULL/Capability=NULL",
                "/atlas/Role=production/Capability=NULL",
            ],
            "/atlas",
        ),
        (("/atlas/Role=production",), "/atlas/Role=production"),
    ],
    ids=["1-cms-first", "2-dcms-first", "3-role-not-first", "tuple-single"],
)
def test_primary_fqan_is_the_first(fqans, primary):
    assert str(select_primary(fqans)) == primary


def test_no_fqans_have_no_primary():
    assert select_primary([]) is None


@pytest.mark.parametrize(
    "fqans",
    [
        ["/atlas", "atlas/Role=production"],
        ["/atlas/Role=", "/atlas"],
    ],
    ids=["second-bad", "first-bad"],
)
def test_one_malformed_fqan_rejects_the_whole_list(fqans):
    with pytest.raises(BadInputError):
        select_primary(fqans)


def test_primary_selection_logs_parse_warnings(caplog):
    caplog.set_level(logging.INFO, logger="poolmgr.fqan")
    select_primary(["/atlas", "/gridit/ROLE=SoftwareManager"])
    assert [record.getMessage() for record in caplog.records] == [
        "fqan warning: FQAN '/gridit/ROLE=SoftwareManager' writes the keyword "
        "'ROLE'; read as 'Role'."
    ]


# Round trip over generated FQANs.

NAMES = st.text("abcXYZ019_.-", min_size=1, max_size=8).filter(
    lambda name: name not in (".", "..")
)
FQANS = st.builds(
    lambda groups, role: Fqan("/" + "/".join(groups), role),
    st.lists(NAMES, min_size=1, max_size=4),
    st.none() | NAMES.filter(lambda role: role.upper() != "NULL"),
)


@given(FQANS)
def test_canonical_form_parses_back_to_the_same_fqan(fqan):
    parsed, warnings = parse_fqan(str(fqan))
    assert (parsed, warnings) == (fqan, [])
    assert parse_rule(str(fqan)).matches(fqan)


def test_an_fqan_argument_that_is_not_utf8_says_so():
    with pytest.raises(BadInputError) as raised:
        parse_fqan("/atlas\udcff")
    assert str(raised.value) == "FQAN '/atlas\\xff' is not valid UTF-8."
