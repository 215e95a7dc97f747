"""The service's line protocol: field encoding, request parsing, replies."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poolmgr.errors import NoLeaseError
from poolmgr.protocol import (
    LINE_MAX,
    BadRequestError,
    Request,
    decode_field,
    encode_field,
    encode_request,
    error_reply,
    format_error,
    format_ok,
    parse_reply,
    parse_request,
)

FIELD_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)


@given(FIELD_TEXT)
def test_field_encoding_round_trips(text):
    encoded = encode_field(text)
    assert not {"\t", "\n", "\r"} & set(encoded), encoded
    assert decode_field(encoded) == text


# Raw C0 controls other than the three encoded ones are refused on the wire.
LINE_TEXT = st.text(
    st.characters(
        blacklist_categories=("Cs",),
        blacklist_characters="".join(chr(c) for c in range(32) if c not in (9, 10, 13)),
    ),
    min_size=1,
    max_size=80,
)


@given(st.sampled_from(["MAP", "VERIFY"]), LINE_TEXT, st.lists(LINE_TEXT, max_size=4))
def test_request_round_trips(verb, dn, fqans):
    line = encode_request(verb, dn, tuple(fqans))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_request(line) == Request(verb, dn, tuple(fqans))


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("a%25b", "a%b"),
        ("a%09b%0Ac%0Dd", "a\tb\nc\rd"),
        ("a%0ab%0dc", "a\nb\rc"),
        ("100%41", "100%41"),
        ("50%", "50%"),
        ("%%25", "%%"),
        ("%2541", "%41"),
    ],
    ids=[
        "percent",
        "upper-hex",
        "lower-hex",
        "other-escape-kept",
        "trailing",
        "double",
        "encoded-escape",
    ],
)
def test_decoding_undoes_only_the_four_reserved_escapes(encoded, decoded):
    assert decode_field(encoded) == decoded


def test_map_request_with_reserved_characters_in_dn_and_fqans():
    line = b"MAP\t/DC=org/CN=100%25 sure%09x\t/atlas\t/atlas/Role=pilot\n"
    assert parse_request(line) == Request(
        "MAP", "/DC=org/CN=100% sure\tx", ("/atlas", "/atlas/Role=pilot")
    )


def test_verify_and_ping_are_recognised():
    assert parse_request(b"VERIFY\t/DC=org/CN=A\n") == Request("VERIFY", "/DC=org/CN=A")
    assert parse_request(b"PING\n") == Request("PING")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"\n", "is empty"),
        (b"MAP\n", "needs a DN"),
        (b"MAP\t\t/atlas\n", "needs a DN"),
        (b"MAP\t/DC=org/CN=A\t\n", "empty FQAN"),
        (b"map\t/DC=org/CN=A\n", "Unknown request"),
        (b"HELLO\n", "Unknown request"),
        (b"PING\tx\n", "takes no fields"),
        (b"MAP\t/DC=org/CN=\xc3\n", "not UTF-8"),
        (b"MAP\t/DC=org/CN=A\x00B\n", "raw control byte"),
        (b"MAP\t/DC=org/CN=A\r\n", "raw control byte"),
        (b"MAP\t/DC=org/CN=A\n\n", "raw control byte"),
    ],
    ids=[
        "empty-line",
        "missing-dn",
        "empty-dn",
        "empty-fqan",
        "lowercase-verb",
        "unknown-verb",
        "ping-with-field",
        "invalid-utf8",
        "nul",
        "raw-cr",
        "embedded-lf",
    ],
)
def test_malformed_requests_are_bad_requests(line, problem):
    with pytest.raises(BadRequestError, match=problem) as caught:
        parse_request(line)
    assert caught.value.code == "BAD_REQUEST"


def test_line_at_the_limit_is_refused_and_one_below_is_read():
    prefix = b"MAP\t/DC=org/CN="
    fitting = prefix + b"a" * (LINE_MAX - len(prefix) - 1) + b"\n"
    assert len(fitting) == LINE_MAX
    assert parse_request(fitting).verb == "MAP"
    with pytest.raises(BadRequestError, match="longer than"):
        parse_request(fitting[:-1] + b"a\n")


def test_encode_request_refuses_an_oversize_line():
    with pytest.raises(BadRequestError, match="above the limit"):
        encode_request("MAP", "/CN=" + "x" * LINE_MAX)


def test_ok_reply_lists_secondary_gids_without_the_primary():
    line = format_ok("atlas001", 20001, 2000, (2000, 2100, 2200), "atlas:7")
    assert line == b"OK\tatlas001\t20001\t2000\t2100,2200\tatlas:7\n"
    assert format_ok("a1", 1, 2, (), "p:1") == b"OK\ta1\t1\t2\t\tp:1\n"


def test_error_reply_is_one_line_with_code_and_encoded_message():
    line = error_reply(NoLeaseError("No lease for\n'x'\t100%."))
    assert line == b"ERR\tNO_LEASE\tNo lease for%0A'x'%09100%25.\n"
    assert parse_reply(line).fields == ("NO_LEASE", "No lease for\n'x'\t100%.")


def test_long_error_message_is_cut():
    line = format_error("BAD_INPUT", "x" * 5000)
    assert len(line) < 1100 and line.endswith(b"...\n")


@pytest.mark.parametrize(
    "line",
    [b"", b"OK\ta\t1", b"ERR\tX", b"MAYBE\tx\n", b"OK\t\xff\n"],
    ids=["empty", "ok-3-fields", "err-1-field", "unknown", "not-utf8"],
)
def test_parse_reply_rejects_what_is_not_a_reply(line):
    with pytest.raises(BadRequestError):
        parse_reply(line)
