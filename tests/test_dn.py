"""DN parsing: every spelling of one person, proxy RDNs, hostile input."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poolmgr.dn import DistinguishedName, parse_dn
from poolmgr.errors import BadInputError

JANE = "/DC=org/DC=example/O=Example Grid/OU=People/CN=Jane Roe"
ALEX = "/DC=org/DC=example/O=University of Example, South Campus/CN=Alex Example"
ROBIN = "/DC=org/DC=example/OU=People/CN=Robin Test+UID=rtest"
EEC = "/DC=org/DC=example/OU=Robots/CN=rbuild/CN=424242/CN=Robot: Example Build Service"


def key_of(text: str, issuer: str | None = None) -> str:
    return parse_dn(text, issuer).key


def assert_same_person(text: str, reference: str, issuer: str | None = None) -> None:
    got, want = key_of(text, issuer), key_of(reference)
    assert got == want, f"{text!r} should be the same person as {reference!r}"


def assert_rejected(text: str, fragment: str, issuer: str | None = None) -> None:
    with pytest.raises(BadInputError) as caught:
        parse_dn(text, issuer)
    message = str(caught.value)
    assert fragment in message, f"message {message!r} should say {fragment!r}"


# F01 1: a comma inside a value.


@pytest.mark.parametrize(
    "text",
    [
        ALEX,
        r"CN=Alex Example,O=University of Example\, South Campus,DC=example,DC=org",
        r"CN=Alex Example,O=University of Example\2C South Campus,DC=example,DC=org",
        'CN=Alex Example,O="University of Example, South Campus",DC=example,DC=org',
        "DC = org, DC = example, "
        'O = "University of Example, South Campus", CN = Alex Example',
    ],
    ids=["slash", "rfc2253-escaped", "rfc2253-hex", "rfc2253-quoted", "openssl-quoted"],
)
def test_comma_inside_value_is_one_value(text):
    assert_same_person(text, ALEX)
    o_values = [v for rdn in parse_dn(text).rdns for a, v in rdn if a == "O"]
    assert o_values == ["University of Example, South Campus"]


def test_munged_comma_to_slash_is_a_different_person():
    munged = "/DC=org/DC=example/O=University of Example/South Campus/CN=Alex Example"
    dn = parse_dn(munged)
    assert dn.key != key_of(ALEX)
    assert dn.rdns[2] == (("O", "University of Example/South Campus"),)


# F01 2: a slash inside a value.


@pytest.mark.parametrize(
    "text",
    [
        "/DC=org/DC=example/OU=computers/CN=pilotbot/host01.example.org",
        r"/DC=org/DC=example/OU=computers/CN=pilotbot\/host01.example.org",
        "CN=pilotbot/host01.example.org,OU=computers,DC=example,DC=org",
        r"/DC=org/DC=example/OU=computers/CN=pilotbot\2Fhost01.example.org",
    ],
    ids=["slash-plain", "slash-escaped", "rfc2253", "slash-hex"],
)
def test_slash_inside_value_is_one_robot(text):
    dn = parse_dn(text)
    assert len(dn.rdns) == 4, f"{text!r} should have 4 RDNs, got {dn.rdns}"
    assert dn.rdns[-1] == (("CN", "pilotbot/host01.example.org"),)


# F01 3: multi-valued RDNs.


@pytest.mark.parametrize(
    "text",
    [
        "CN=Robin Test+UID=rtest,OU=People,DC=example,DC=org",
        "UID=rtest+CN=Robin Test,OU=People,DC=example,DC=org",
        ROBIN,
        "/DC=org/DC=example/OU=People/UID=rtest+CN=Robin Test",
        "DC = org, DC = example, OU = People, CN = Robin Test + UID = rtest",
        "CN=Robin Test + UID=rtest, OU=People, DC=example, DC=org",
    ],
    ids=["rfc2253", "rfc2253-swapped", "slash", "slash-swapped", "openssl", "spaced"],
)
def test_multi_valued_rdn_order_and_spacing_do_not_matter(text):
    assert_same_person(text, ROBIN)
    assert parse_dn(text).rdns[-1] == (("CN", "Robin Test"), ("UID", "rtest"))


@pytest.mark.parametrize(
    "text",
    [
        r"CN=Robin\+Test,OU=People,DC=example,DC=org",
        r"/DC=org/DC=example/OU=People/CN=Robin\+Test",
        "/DC=org/DC=example/OU=People/CN=Robin+Test",
    ],
    ids=["rfc2253-escaped", "slash-escaped", "slash-plain-plus-continues"],
)
def test_literal_plus_is_a_single_value_and_a_different_person(text):
    dn = parse_dn(text)
    assert dn.rdns[-1] == (("CN", "Robin+Test"),)
    assert dn.key != key_of(ROBIN)


@pytest.mark.parametrize(
    "text",
    [ALEX, "/DC=org/DC=example/OU=computers/CN=pilotbot/host01.example.org", ROBIN],
    ids=["comma", "slash", "plus"],
)
def test_canonical_forms_read_back_losslessly(text):
    dn = parse_dn(text)
    assert parse_dn(dn.slash()) == dn
    assert parse_dn(dn.rfc2253()) == dn
    assert parse_dn(dn.slash()).slash() == dn.slash()


# F02: the three print forms, and forward RFC 2253 syntax.


@pytest.mark.parametrize(
    "text",
    [
        JANE,
        "DC = org, DC = example, O = Example Grid, OU = People, CN = Jane Roe",
        "CN=Jane Roe,OU=People,O=Example Grid,DC=example,DC=org",
        "CN=Jane Roe, OU=People, O=Example Grid, DC=example, DC=org",
        "subject=DC = org, DC = example, O = Example Grid, OU = People, CN = Jane Roe",
        "subject= /DC=org/DC=example/O=Example Grid/OU=People/CN=Jane Roe",
        "Subject=CN=Jane Roe,OU=People,O=Example Grid,DC=example,DC=org",
        "  /DC=org/DC=example/O=Example Grid/OU=People/CN=Jane Roe  ",
    ],
    ids=[
        "slash",
        "a-openssl11",
        "b-rfc2253",
        "rfc2253-spaces-after-commas",
        "c-subject-prefix-openssl11",
        "subject-prefix-openssl10",
        "subject-prefix-rfc2253",
        "surrounding-spaces",
    ],
)
def test_print_forms_are_one_person_with_one_display_form(text):
    assert_same_person(text, JANE)
    assert parse_dn(text).slash() == JANE


def test_subject_prefix_is_never_an_attribute_type():
    dn = parse_dn("subject=DC = org, CN = Jane Roe")
    assert [attr for rdn in dn.rdns for attr, _ in rdn] == ["DC", "CN"]


@pytest.mark.parametrize(
    "text",
    [
        "DC=org,DC=example,O=Example Grid,OU=People,CN=Jane Roe",
        "C=UK,O=Example,CN=Jane Roe",
        "CN = Jane Roe, OU = People, DC = example, DC = org",
    ],
    ids=["d-forward-rfc2253", "country-first", "openssl-reversed"],
)
def test_forward_order_in_rfc2253_syntax_is_rejected(text):
    assert_rejected(text, "order-implausible")


@pytest.mark.parametrize(
    "text",
    [
        "CN = Bob Brown, O = Example",
        "UID = bbrown, OU = People, O = Example",
        "O=Example,emailAddress=bob@example.org",
        "O=GermanGrid,CN=Bob Brown,serialNumber=5",
        "O=Example,OU=People,CN=Bob Brown,title=Dr",
        "pseudonym = bob, O = Example",
    ],
    ids=[
        "openssl-cn-first",
        "openssl-uid-first",
        "rfc2253-email-last",
        "rfc2253-serial-last",
        "rfc2253-title-last",
        "openssl-pseudonym-first",
    ],
)
def test_a_person_rdn_before_only_organisational_ones_is_rejected(text):
    # Read as written these would be persons no certificate names, beside
    # the real one (O=Example, CN=Bob Brown): one person, two leases.
    assert_rejected(text, "order-implausible")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("O = Example, CN = Bob Brown", "/O=Example/CN=Bob Brown"),
        ("CN=Bob Brown,O=Example", "/O=Example/CN=Bob Brown"),
        ("CN = pilot, CN = host01, OU = Robots, UID = x", None),
    ],
    ids=["openssl", "rfc2253", "person-rdns-last"],
)
def test_plausible_orders_of_the_same_kind_are_read(text, expected):
    dn = parse_dn(text)
    if expected is not None:
        assert dn.slash() == expected
    else:
        assert dn.rdns[-1] == (("UID", "x"),)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("DC=example,DC=org", "/DC=org/DC=example"),
        ("CN=Jane Roe", "/CN=Jane Roe"),
        ("C=UK", "/C=UK"),
        ("CN=host/a.example.org,C=UK", "/C=UK/CN=host\\/a.example.org"),
    ],
    ids=["all-dc", "single-cn", "single-c", "c-most-significant"],
)
def test_plausible_comma_orders_are_accepted(text, expected):
    assert parse_dn(text).slash() == expected


def test_slash_form_keeps_a_reversed_encoding_as_written():
    dn = parse_dn("/CN=Jane Roe/O=Example/C=UK")
    assert dn.slash() == "/CN=Jane Roe/O=Example/C=UK"


def test_mixed_spacing_is_rejected_as_ambiguous():
    assert_rejected("DC = org, DC=example, CN = Jane Roe", "mixes")


# F03: letter case.


@pytest.mark.parametrize(
    "text",
    [
        "/DC=org/DC=example/CN=KIM SAMPLE",
        "/dc=org/dc=example/cn=kim sample",
        "cn=kim sample,dc=example,dc=org",
        "/DC=ORG/DC=EXAMPLE/commonName=Kim Sample",
    ],
    ids=["upper-value", "gridmapdir-lowercased", "lowercased-rfc2253", "alias-upper"],
)
def test_letter_case_does_not_make_another_person(text):
    assert_same_person(text, "/DC=org/DC=example/CN=Kim Sample")


def test_display_form_keeps_the_letter_case_received():
    dn = parse_dn("/dc=org/DC=Example/CN=Jane Roe")
    assert dn.slash() == "/DC=org/DC=Example/CN=Jane Roe"
    assert dn.key == "/DC=org/DC=example/CN=jane roe"


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("/CN=Jürgen Straße", "/CN=JÜRGEN STRASSE"),
        ("/CN=Jose\u0301", "/CN=Jos\u00e9"),
        ("/CN=José", r"/CN=Jos\xC3\xA9"),
        ("/CN=José", r"CN=Jos\C3\A9"),
        ("/CN=Jane  Roe ", "/CN= Jane  Roe"),
        (r"CN=\ Jane Roe\ ", "/CN=Jane Roe"),
    ],
    ids=[
        "casefold",
        "nfc",
        "openssl-oneline-bytes",
        "rfc4514-hex-bytes",
        "surrounding-spaces",
        "escaped-surrounding-spaces",
    ],
)
def test_values_compare_by_folded_text(left, right):
    assert_same_person(left, right)


def test_inner_spaces_are_significant():
    assert key_of("/CN=Jane  Roe") != key_of("/CN=Jane Roe")


# F04: proxy RDNs.


@pytest.mark.parametrize(
    ("subject", "issuer"),
    [
        (EEC + "/CN=proxy", None),
        (EEC + "/CN=proxy/CN=proxy", None),
        (EEC + "/CN=limited proxy", None),
        (EEC + "/CN=Limited Proxy", None),
        (EEC + "/CN=1362862742", EEC),
        (EEC, None),
        (EEC, "/DC=org/DC=example/CN=Example CA"),
        (EEC + "/CN=123/CN=456", EEC + "/CN=123"),
        (EEC + "/CN=123/CN=proxy", EEC),
        (EEC + "/CN=123/CN=proxy", EEC + "/CN=123"),
        (EEC + "/CN=proxy/CN=987", EEC + "/CN=proxy"),
        (
            EEC + "/CN=1362862742",
            "CN=robot: example build service,CN=424242,"
            "CN=rbuild,OU=Robots,DC=example,DC=org",
        ),
    ],
    ids=[
        "a-proxy",
        "b-proxy-proxy",
        "c-limited",
        "limited-any-case",
        "d-numeric-with-issuer",
        "e-eec",
        "eec-with-ca-issuer",
        "numeric-chain",
        "legacy-over-rfc3820-issuer-eec",
        "legacy-over-rfc3820-issuer-proxy",
        "rfc3820-over-legacy",
        "issuer-in-rfc2253-form",
    ],
)
def test_proxy_rdns_are_stripped_to_the_eec(subject, issuer):
    dn = parse_dn(subject, issuer)
    assert dn.slash() == EEC, f"{subject!r} issued by {issuer!r} should be the EEC"


def test_numeric_and_colon_cns_inside_the_eec_are_kept():
    values = [value for rdn in parse_dn(EEC).rdns for _, value in rdn]
    assert "424242" in values
    assert "Robot: Example Build Service" in values


def test_trailing_numeric_cn_without_issuer_needs_one():
    assert_rejected(EEC + "/CN=1362862742", "issuer needed")
    assert_rejected(EEC + "/CN=1362862742/CN=proxy", "issuer needed")


def test_trailing_numeric_cn_not_issued_by_the_dn_before_it_is_kept():
    dn = parse_dn(EEC + "/CN=555", "/DC=org/DC=example/CN=Example CA")
    assert dn.slash() == EEC + "/CN=555"


@pytest.mark.parametrize(
    "subject",
    [
        EEC + "/CN=proxy+UID=x",
        EEC + "/CN=proxy user",
        EEC + "/UID=proxy",
        EEC + "/CN=12a",
    ],
    ids=["multi-valued", "longer-name", "not-cn", "not-digits"],
)
def test_only_exact_proxy_rdns_are_stripped(subject):
    assert len(parse_dn(subject, EEC).rdns) == len(parse_dn(EEC).rdns) + 1


@pytest.mark.parametrize(
    ("subject", "issuer"),
    [
        ("/CN=proxy", None),
        ("/CN=proxy/CN=limited proxy", None),
        ("/CN=1/CN=2", "/CN=1"),
    ],
    ids=["proxy-only", "proxies-only", "numeric-down-to-nothing"],
)
def test_dn_that_is_only_proxy_rdns_is_rejected(subject, issuer):
    assert_rejected(subject, "nothing left", issuer)


@pytest.mark.parametrize(
    "text",
    [EEC + "/CN=777", EEC + "/CN=proxy", "/CN=proxy"],
    ids=["numeric", "proxy", "only-proxy"],
)
def test_end_entity_reading_keeps_every_rdn(text):
    assert parse_dn(text, strip_proxy=False).slash() == text


def test_issuer_is_not_itself_proxy_stripped():
    dn = parse_dn(EEC + "/CN=1/CN=2", EEC + "/CN=1")
    assert dn.slash() == EEC


# Attribute names.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/E=jane@example.org", "/emailAddress=jane@example.org"),
        ("/Email=jane@example.org", "/emailAddress=jane@example.org"),
        ("/emailaddress=jane@example.org", "/emailAddress=jane@example.org"),
        ("/1.2.840.113549.1.9.1=jane@example.org", "/emailAddress=jane@example.org"),
        ("/userid=jroe", "/UID=jroe"),
        ("/0.9.2342.19200300.100.1.1=jroe", "/UID=jroe"),
        ("/domainComponent=org", "/DC=org"),
        ("/0.9.2342.19200300.100.1.25=org", "/DC=org"),
        ("/commonName=Jane", "/CN=Jane"),
        ("/OID.2.5.4.3=Jane", "/CN=Jane"),
        ("/organizationName=Example", "/O=Example"),
        ("/organizationalUnitName=People", "/OU=People"),
        ("/countryName=UK", "/C=UK"),
        ("/localityName=Town", "/L=Town"),
        ("/stateOrProvinceName=Shire", "/ST=Shire"),
        ("/serialnumber=42", "/serialNumber=42"),
        ("/x-custom=1", "/X-CUSTOM=1"),
        ("/1.3.6.1.4.1.99999.1=v", "/1.3.6.1.4.1.99999.1=v"),
    ],
    ids=lambda value: value.split("=")[0].lstrip("/"),
)
def test_attribute_aliases_have_one_canonical_name(text, expected):
    assert parse_dn(text).slash() == expected


def test_rfc2253_hex_ber_value_is_decoded():
    assert_same_person("1.2.3.4=#0C03616263,CN=x", "/CN=x/1.2.3.4=abc")


# Escapes and separators.


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (r"/CN=a\=b", "a=b"),
        ("/CN=a=b", "a=b"),
        (r"/CN=back\\slash", "back\\slash"),
        ("/CN=C++ Team", "C++ Team"),
        ("/CN=http://example.org", "http://example.org"),
        (r"CN=say \"hi\"", 'say "hi"'),
        (r"CN=\#hash", "#hash"),
        ("CN=semi;colon <tag>", "semi;colon <tag>"),
        ('CN="a\\"b\\\\c"', 'a"b\\c'),
        ("/CN=#not-ber", "#not-ber"),
        ('/CN="quoted"', '"quoted"'),
    ],
    ids=[
        "slash-escaped-equals",
        "slash-plain-equals",
        "slash-backslash",
        "slash-plus-continues",
        "slash-double-slash-continues",
        "rfc2253-escaped-quotes",
        "rfc2253-escaped-hash",
        "rfc4514-unescaped-specials",
        "rfc2253-quoted-escapes",
        "slash-hash-is-literal",
        "slash-quotes-are-literal",
    ],
)
def test_escapes_yield_the_literal_value(text, value):
    assert parse_dn(text).rdns[-1] == (("CN", value),)


@pytest.mark.parametrize(
    ("value", "slash", "rfc2253"),
    [
        ("a/b", r"/CN=a\/b", "CN=a/b"),
        ("a+b", r"/CN=a\+b", r"CN=a\+b"),
        ("a,b", "/CN=a,b", r"CN=a\,b"),
        ("a\\b", r"/CN=a\\b", r"CN=a\\b"),
        ('"q"', '/CN="q"', r"CN=\"q\""),
        ("#h", "/CN=#h", r"CN=\#h"),
        ("a=b", "/CN=a=b", "CN=a=b"),
        ("x<y>;z", "/CN=x<y>;z", r"CN=x\<y\>\;z"),
    ],
    ids=["slash", "plus", "comma", "backslash", "quotes", "hash", "equals", "angles"],
)
def test_output_forms_escape_exactly_what_they_must(value, slash, rfc2253):
    dn = DistinguishedName(((("CN", value),),))
    assert (dn.slash(), dn.rfc2253()) == (slash, rfc2253)


def test_rfc2253_form_reverses_the_rdn_order():
    assert parse_dn(JANE).rfc2253() == (
        "CN=Jane Roe,OU=People,O=Example Grid,DC=example,DC=org"
    )


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (r"/CN=Robin\+Test", "/CN=Robin+UID=Test"),
        (r"/O=a\/b", "/O=a/OU=b"),
        (r"/CN=a\\/CN=b", r"/CN=a\/CN=b"),
        ("/CN=a/OU=b", "/OU=b/CN=a"),
        ("/CN=ab", "/CN=a+OU=b"),
    ],
    ids=["plus", "slash", "backslash-then-slash", "rdn-order", "split-value"],
)
def test_different_structures_have_different_keys(left, right):
    assert key_of(left) != key_of(right)


def test_key_is_deterministic_and_readable():
    dn = parse_dn("UID=RTest+CN=Robin Test,OU=People,DC=Example,DC=org")
    assert dn.key == "/DC=org/DC=example/OU=people/CN=robin test+UID=rtest"


# Hostile and malformed input.


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("/", "has no '='"),
        ("Jane Roe", "has no '='"),
        ("/DC=org/=Jane", "empty attribute type"),
        ("=Jane,DC=org", "empty attribute type"),
        ("/DC=org/CN=Jane\\", "unterminated escape"),
        ("CN=Jane\\,DC=org\\", "unterminated escape"),
        ("/CN=Jane\x00Roe", "control or invisible character"),
        ("/CN=Jane\nRoe", "control or invisible character"),
        ("/CN=Jane\rRoe", "control or invisible character"),
        ("/CN=Jane\u202eRoe", "control or invisible character"),
        ("/CN=Jane\ud800", "control or invisible character"),
        ("/CN=Jane\u200bRoe", "control or invisible character"),
        ("/CN=Jane\u00a0Roe", "control or invisible character"),
        ("\ufeff/CN=Jane Roe", "control or invisible character"),
        (r"/CN=Jane\0ARoe", "escaped control or invisible character"),
        ("CN=a,+,DC=org", "lone '+'"),
        ("CN=a+,DC=org", "lone '+'"),
        ("+CN=a", "lone '+'"),
        ("/DC=org/CN=a+", "lone '+'"),
        ("/DC=org/CN=a/", "lone '/'"),
        ("CN=a,,DC=org", "empty RDN"),
        ("CN=a,DC=org,", "empty RDN"),
        ("/CN=", "empty attribute value"),
        ("CN=  ,DC=org", "empty attribute value"),
        ("/Jane/CN=x", "does not start with an attribute type"),
        ("/C N=x", "invalid attribute type"),
        ("CN=a,1x=b", "invalid attribute type"),
        (r"/CN=a\qb", "invalid escape"),
        (r"/CN=\C3", "not UTF-8"),
        ('CN="Jane Roe,DC=org', "unterminated quoted value"),
        ('CN="Jane" Roe,DC=org', "malformed quoted value"),
        ('CN=Jane "R" Roe,DC=org', "unescaped '\"'"),
        ("CN=#zz,DC=org", "not a BER-encoded string"),
        ("CN=#0402abcd,DC=org", "not a BER-encoded string"),
        ("/CN=a+CN=b", "repeats an attribute type"),
        ("/CN=" + "x" * 5000, "longer than 4096"),
        ("/CN=x" * 65, "more than 64"),
        ("/CN=a" + "+OU=b" * 64, "more than 64"),
    ],
    ids=[
        "empty",
        "blank",
        "slash-only",
        "no-equals",
        "slash-empty-type",
        "comma-empty-type",
        "slash-trailing-backslash",
        "comma-trailing-backslash",
        "nul",
        "lf",
        "cr",
        "bidi-override",
        "lone-surrogate",
        "zero-width-space",
        "no-break-space",
        "byte-order-mark",
        "escaped-lf",
        "lone-plus-between-commas",
        "trailing-plus-in-rdn",
        "leading-plus",
        "slash-trailing-plus",
        "slash-trailing-slash",
        "double-comma",
        "trailing-comma",
        "empty-value",
        "blank-value",
        "slash-no-first-type",
        "space-in-type",
        "digit-type",
        "bad-escape",
        "bad-utf8-escape",
        "unterminated-quote",
        "text-after-quote",
        "stray-quote",
        "ber-not-hex",
        "ber-not-string",
        "repeated-type-in-rdn",
        "too-long",
        "too-many-rdns",
        "too-many-values",
    ],
)
def test_malformed_dn_is_rejected_with_a_reason(text, fragment):
    assert_rejected(text, fragment)


def test_error_message_quotes_the_input():
    with pytest.raises(BadInputError) as caught:
        parse_dn("/DC=org/CN=Jane\nRoe")
    assert repr("/DC=org/CN=Jane\nRoe") in str(caught.value)


def test_error_message_for_hostile_input_is_short():
    with pytest.raises(BadInputError) as caught:
        parse_dn("/CN=" + "x" * 100_000)
    assert len(str(caught.value)) < 300


def test_limits_themselves_are_accepted():
    assert len(parse_dn("/CN=x" * 64).rdns) == 64
    assert len(parse_dn("/CN=" + "x" * 4092).slash()) == 4096


# Round trips over generated names.

ATTRIBUTES = ["CN", "O", "OU", "DC", "C", "UID", "emailAddress", "X-LAB", "1.2.3.4"]
CHARACTERS = list("aZ09 ,/+=\\\"#;<>:()'.-") + ["é", "e\u0301", "ß", "中", "😀"]
VALUES = (
    st.lists(st.sampled_from(CHARACTERS), min_size=1, max_size=10)
    .map(lambda chars: "".join(chars).strip(" "))
    .filter(bool)
)
RDNS = st.lists(
    st.tuples(st.sampled_from(ATTRIBUTES), VALUES),
    min_size=1,
    max_size=3,
    unique_by=lambda pair: pair[0],
).map(lambda pairs: tuple(sorted(pairs)))


def is_proxy_rdn(rdn: tuple) -> bool:
    if len(rdn) != 1 or rdn[0][0] != "CN":
        return False
    value = rdn[0][1]
    return value.isdigit() or value.casefold() in ("proxy", "limited proxy")


def is_plausible_order(dn: DistinguishedName) -> bool:
    """The orders comma forms accept: no DC or C last unless one is first, and
    no first RDN without an organisational type while the last has only
    organisational ones."""
    first = {attr for attr, _ in dn.rdns[0]}
    last = {attr for attr, _ in dn.rdns[-1]}
    if len(dn.rdns) < 2:
        return True
    if last & {"DC", "C"} and not first & {"DC", "C"}:
        return False
    organisational = {"DC", "C", "O", "OU", "L", "ST"}
    return not (not first & organisational and last <= organisational)


NAMES = (
    st.lists(RDNS, min_size=1, max_size=6)
    .map(lambda rdns: DistinguishedName(tuple(rdns)))
    .filter(lambda dn: not is_proxy_rdn(dn.rdns[-1]))
)


def openssl_form(dn: DistinguishedName) -> str:
    def value(text: str) -> str:
        if not any(char in text for char in ',+"\\<>;#='):
            return text
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return ", ".join(
        " + ".join(f"{attr} = {value(text)}" for attr, text in rdn) for rdn in dn.rdns
    )


@given(NAMES)
def test_slash_form_and_key_read_back_with_the_same_key(dn):
    assert parse_dn(dn.slash()).key == dn.key, f"slash form {dn.slash()!r}"
    assert parse_dn(dn.key).key == dn.key, f"key {dn.key!r}"


@given(NAMES.filter(is_plausible_order))
def test_comma_forms_read_back_with_the_same_key(dn):
    assert parse_dn(dn.rfc2253()).key == dn.key, f"RFC 2253 {dn.rfc2253()!r}"
    assert parse_dn(openssl_form(dn)).key == dn.key, f"OpenSSL {openssl_form(dn)!r}"


def test_rfc2253_of_an_implausible_order_is_refused_not_misread():
    dn = parse_dn("/CN=Jane Roe/DC=example/DC=org")
    assert_rejected(dn.rfc2253(), "order-implausible")


FRAGMENTS = list('/,+=\\"# aCN0x3Ae;<>') + ["é", "\x00", "subject=", "CN=proxy"]
TEXTS = st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join)


@given(TEXTS, st.none() | TEXTS)
def test_any_text_parses_or_raises_bad_input(text, issuer):
    try:
        dn = parse_dn(text, issuer)
    except BadInputError:
        return
    assert dn.rdns, f"{text!r} parsed to an empty DN"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("/CN=a\udcff\udcfe", "DN '/CN=a\\xff\\xfe' is not valid UTF-8."),
        ("CN=J\udcc3,DC=org", "DN 'CN=J\\xc3,DC=org' is not valid UTF-8."),
    ],
    ids=["two-bad-bytes", "truncated-sequence"],
)
def test_a_dn_argument_that_is_not_utf8_says_so(text, message):
    with pytest.raises(BadInputError) as raised:
        parse_dn(text)
    assert str(raised.value) == message
