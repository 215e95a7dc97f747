"""Distinguished names: read every spelling grid tools print, compare persons.

Forms read (F01, F02):

- A string starting with "/" is the OpenSSL slash form, most significant RDN
  first. A segment that holds no "=" continues the previous value, because
  old OpenSSL printed "/" and "+" inside values unescaped; a segment with "="
  must start with a valid attribute type. `\\/`, `\\+`, `\\=`, `\\\\`, RFC 4514
  escapes and OpenSSL's `\\xHH` bytes are read.
- Anything else is comma form. When every "=" between a type and its value
  has spaces around it, it is the OpenSSL >= 1.1 print form, in slash order;
  when none has, it is RFC 2253/4514, least significant RDN first; a mix is
  rejected. Either way, a DN in an order no tool prints is rejected as
  order-implausible (F02 d): a least significant RDN holding DC or C while
  the most significant holds neither, or a most significant RDN without an
  organisational type (a CN, UID, emailAddress, serialNumber...) while the
  least significant is organisational only. Values
  may be quoted, hex-escaped or `#`-BER-encoded. A leading `subject=` (pasted
  `openssl x509 -subject` output) is dropped.

Comparison (F03): attribute types by canonical name, values by their NFC
casefolded text, surrounding spaces (escaped or not) never count, and the
order of types inside a multi-valued RDN never counts. X.501 wants distinct
types inside one RDN and no empty values, so both are rejected. The key is the
canonical slash form of the folded values; identities store it, so changing
how it is built needs a data migration.

Proxy RDNs (F04): a last RDN `CN=proxy` or `CN=limited proxy` is always
stripped. A last RDN of digits is stripped only when an issuer is given and
the subject equals the issuer plus that one RDN; without an issuer it is an
error ("issuer needed"), with a non-matching issuer it is kept as part of the
name. Stripping repeats. Once the subject has been cut back to the issuer, the
issuer's own issuer is not in the request; it is taken to be the issuer
without its last RDN, i.e. the chain is read as proxies of proxies, so that
`EEC/CN=123/CN=456` issued by `EEC/CN=123` becomes EEC. The price: an
end-entity DN that itself ends in a numeric CN loses that CN when seen
through a proxy; such DNs are ambiguous without the full chain. The issuer is
read as written, never stripped, and strip_proxy=False reads any DN so.
"""

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from poolmgr.errors import BadInputError

MAX_LENGTH = 4096
MAX_RDNS = 64

Pair = tuple[str, str]
Rdn = tuple[Pair, ...]

_SYNONYMS = (
    ("CN", "commonName", "2.5.4.3"),
    ("SN", "surname", "2.5.4.4"),
    ("serialNumber", "2.5.4.5"),
    ("C", "countryName", "2.5.4.6"),
    ("L", "localityName", "2.5.4.7"),
    ("ST", "S", "stateOrProvinceName", "2.5.4.8"),
    ("street", "streetAddress", "2.5.4.9"),
    ("O", "organizationName", "2.5.4.10"),
    ("OU", "organizationalUnitName", "2.5.4.11"),
    ("title", "2.5.4.12"),
    ("postalCode", "2.5.4.17"),
    ("name", "2.5.4.41"),
    ("GN", "givenName", "2.5.4.42"),
    ("initials", "2.5.4.43"),
    ("dnQualifier", "2.5.4.46"),
    ("pseudonym", "2.5.4.65"),
    ("UID", "userid", "0.9.2342.19200300.100.1.1"),
    ("DC", "domainComponent", "0.9.2342.19200300.100.1.25"),
    ("emailAddress", "E", "Email", "1.2.840.113549.1.9.1"),
)
_ATTRIBUTES = {alias.lower(): names[0] for names in _SYNONYMS for alias in names}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*")
_OID = re.compile(r"(?:oid\.)?([0-9]+(?:\.[0-9]+)+)", re.IGNORECASE)
# Line breaks and bidi overrides would let a DN forge log lines or displays;
# invisible characters (zero-width, soft hyphen, BOM) and spaces other than
# U+0020 would let two DNs that print alike be two different persons.
# Command-line arguments and environment values that are not valid UTF-8
# reach Python with each bad byte as a lone surrogate U+DC80..U+DCFF.
_NOT_UTF8 = re.compile("[\udc80-\udcff]")
_ESCAPED_BYTE = re.compile(r"\\udc([89a-f][0-9a-f])")
_FORBIDDEN = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
    "\u00a0\u00ad\u061c\u180e\u2000-\u200f\u202f\u205f-\u2064\u3000\ufeff]"
)
_SUBJECT_PREFIX = re.compile(r"\s*subject\s*=\s*", re.IGNORECASE)
_SPECIALS = frozenset(' ,=+<>#;"/\\')
_HEX = frozenset("0123456789abcdefABCDEF")
_SLASH_SPLIT = re.compile(r"([/+])")
_COMMA_SPLIT = re.compile(r"([,+])")
_DIGITS = re.compile(r"[0-9]+")
_ESCAPED = re.compile(r"\\.", re.DOTALL)
_RFC2253_SPECIAL = re.compile(r'([\\,+"<>;])')
_NAMED_PROXIES = frozenset({"proxy", "limited proxy"})
_BER_CODECS = {
    0x0C: "utf-8",
    0x13: "ascii",
    0x14: "latin-1",
    0x16: "ascii",
    0x1A: "ascii",
    0x1C: "utf-32-be",
    0x1E: "utf-16-be",
}


@dataclass(frozen=True)
class DistinguishedName:
    """A parsed DN, most significant RDN first, each RDN's pairs sorted."""

    rdns: tuple[Rdn, ...]

    def slash(self) -> str:
        """Return the canonical OpenSSL slash form, escaped to read back."""
        return _render_slash(self.rdns)

    def rfc2253(self) -> str:
        """Return the RFC 2253/4514 form: reversed, comma-separated, escaped."""
        return ",".join(
            "+".join(f"{attr}={_escape_rfc2253(value)}" for attr, value in rdn)
            for rdn in reversed(self.rdns)
        )

    @property
    def key(self) -> str:
        """Return the comparison key; equal keys mean the same person."""
        key: str | None = self.__dict__.get("_key")
        if key is None:
            key = _render_slash(_rdn_keys(self.rdns))
            # Computed once: the mapping hot path asks for it several times.
            object.__setattr__(self, "_key", key)
        return key

    def proxy_bases(self) -> tuple["DistinguishedName", ...]:
        """Return this DN cut back by each trailing proxy-like RDN in turn.

        A DN taken as an end-entity subject may still end in a proxy's
        numeric CN; a check that must fail closed (a ban) tests these too.
        """
        end = len(self.rdns)
        while end > 1 and _proxy_kind(self.rdns[end - 1]) is not None:
            end -= 1
        return tuple(
            DistinguishedName(self.rdns[:i])
            for i in range(len(self.rdns) - 1, end - 1, -1)
        )

    def __str__(self) -> str:
        return self.slash()


def parse_dn(
    text: str, issuer: str | None = None, *, strip_proxy: bool = True
) -> DistinguishedName:
    """Parse a DN in slash, RFC 2253 or OpenSSL 1.1 form, without proxy RDNs.

    issuer, in any form, lets a trailing numeric proxy CN be told apart from a
    name. strip_proxy=False reads an end-entity DN (a ban entry, a VOMS member)
    as written. Raises BadInputError quoting the input for anything unreadable.
    """
    return _parse_cached(text, issuer, strip_proxy)


def parse_subject(text: str) -> DistinguishedName:
    """Parse a DN as an end-entity subject, as the mapping service does.

    A trailing numeric CN is kept as part of the name (the DN is its own
    issuer); ``CN=proxy`` and ``CN=limited proxy`` are still stripped. For
    looking up a person who may have been mapped so.
    """
    return _parse_cached(text, text, True)


def quote_input(text: str) -> str:
    """Return text quoted for an error message, cut short if hostile.

    Bytes that were not valid UTF-8 (which Python keeps as lone surrogates)
    are shown as the bytes they were, e.g. \\xff.
    """
    shown = repr(text[:200]) + ("..." if len(text) > 200 else "")
    return _ESCAPED_BYTE.sub(r"\\x\1", shown)


def is_valid_utf8(text: str) -> bool:
    """Return False when text holds bytes that were not valid UTF-8."""
    return _NOT_UTF8.search(text) is None


@lru_cache(maxsize=4096)
def _parse_cached(
    text: str, issuer: str | None, strip_proxy: bool
) -> DistinguishedName:
    rdns = _parse_rdns(text)
    if not strip_proxy:
        return DistinguishedName(rdns)
    anchor = None if issuer is None else _issuer_keys(issuer)
    return DistinguishedName(_strip_proxy_rdns(rdns, anchor, text))


@lru_cache(maxsize=1024)
def _issuer_keys(issuer: str) -> tuple[Rdn, ...]:
    # Fresh proxies defeat the cache above; their issuers repeat.
    return _rdn_keys(_parse_rdns(issuer))


@lru_cache(maxsize=4096)
def _parse_rdns(text: str) -> tuple[Rdn, ...]:
    # Cached apart from _parse_cached: a request's DN is read both as
    # presented and without its proxy RDNs, and both need these RDNs.
    _check_text(text)
    body = _strip_spaces(text)
    prefix = _SUBJECT_PREFIX.match(body) if body[:1] in "sS" else None
    if prefix:
        body = body[prefix.end() :]
    if body.startswith("/"):
        rdns = _read_slash(body[1:], text)
    else:
        rdns = _read_comma(body, text)
    if sum(map(len, rdns)) > MAX_RDNS:
        raise _bad(text, f"has more than {MAX_RDNS} attribute values")
    return tuple([_finish_rdn(rdn, text) for rdn in rdns])


def _check_text(text: str) -> None:
    if len(text) > MAX_LENGTH:
        raise _bad(text, f"is longer than {MAX_LENGTH} characters")
    if not text.strip(" "):
        raise _bad(text, "is empty")
    if not is_valid_utf8(text):
        raise _bad(text, "is not valid UTF-8")
    if _FORBIDDEN.search(text):
        raise _bad(text, "contains a control or invisible character")
    if "=" not in text:
        raise _bad(text, "has no '='")


def _bad(text: str, problem: str) -> BadInputError:
    return BadInputError(f"DN {quote_input(text)} {problem}.")


def _split(body: str, separators: str, text: str) -> list[tuple[str, str]]:
    """Split at unescaped separators (outside quotes), as (separator, raw)."""
    if "\\" not in body and '"' not in body:
        if separators[1] not in body:
            parts = body.split(separators[0])
            return [("", parts[0])] + [(separators[0], part) for part in parts[1:]]
        pattern = _SLASH_SPLIT if separators == "/+" else _COMMA_SPLIT
        parts = pattern.split(body)
        return list(zip(["", *parts[1::2]], parts[::2], strict=True))

    chunks = []
    sep, start, quoted, i = "", 0, False, 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            i += 1
        elif char == '"' and separators == ",+":
            quoted = not quoted
        elif char in separators and not quoted:
            chunks.append((sep, body[start:i]))
            sep, start = char, i + 1
        i += 1
    if quoted:
        raise _bad(text, "has an unterminated quoted value")
    chunks.append((sep, body[start:]))
    return chunks


def _read_slash(body: str, text: str) -> list[list[list[str]]]:
    chunks = _split(body, "/+", text)
    if len(chunks) > 1 and not chunks[-1][1]:
        raise _bad(text, f"ends with a lone {chunks[-1][0]!r}")

    rdns: list[list[list[str]]] = []
    for sep, raw in chunks:
        if "=" not in raw:
            if not rdns:
                raise _bad(text, "does not start with an attribute type and '='")
            # Old OpenSSL printed "/" and "+" inside values unescaped (F01).
            rdns[-1][-1][1] += sep + raw
            continue
        name, _, value = raw.partition("=")
        pair = [_attribute(name, text), value]
        if sep == "+":
            rdns[-1].append(pair)
        else:
            rdns.append([pair])
    for rdn in rdns:
        for pair in rdn:
            pair[1] = _value(pair[1], text, comma=False)
    return rdns


def _read_comma(body: str, text: str) -> list[list[list[str]]]:
    chunks = _split(body, ",+", text)
    rdns: list[list[list[str]]] = []
    spacing: set[bool] = set()
    for index, (sep, raw) in enumerate(chunks):
        name, equals, value = raw.partition("=")
        if not equals:
            raise _bad(text, _describe_gap(chunks, index))
        spacing.add(name.endswith(" ") or value.startswith(" "))
        pair = [_attribute(name, text), _value(value, text, comma=True)]
        if sep == "+":
            rdns[-1].append(pair)
        else:
            rdns.append([pair])

    if len(spacing) > 1:
        raise _bad(text, "mixes 'A = b' and 'A=b' spacing, so its order is unclear")
    if spacing == {False}:
        rdns.reverse()
    _check_order(rdns, text)
    return rdns


def _describe_gap(chunks: list[tuple[str, str]], index: int) -> str:
    sep, raw = chunks[index]
    if raw.strip(" "):
        return f"has no '=' in {raw.strip(' ')!r}"
    following = chunks[index + 1][0] if index + 1 < len(chunks) else ""
    if "+" in (sep, following):
        return "has a lone '+'"
    return "has an empty RDN"


def _check_order(rdns: list[list[list[str]]], text: str) -> None:
    """Reject comma DNs written in an order no tool prints (F02 d).

    Implausible, in slash order: a DC or C as the least significant RDN
    while the most significant holds neither, or a most significant RDN
    with no organisational type (a person's CN, UID or emailAddress, or a
    serialNumber, title, pseudonym...) while the least significant holds
    only organisational ones (DC, C, O, OU, L, ST). Either is a DN typed in the other
    convention's order, and read as written it would be another person.
    """
    if len(rdns) < 2:
        return
    first = {attr for attr, _ in rdns[0]}
    last = {attr for attr, _ in rdns[-1]}
    if last & _ROOTS and not first & _ROOTS:
        found = "its least significant RDN would be a DC or C"
    elif not first & _ORGANISATIONAL and last <= _ORGANISATIONAL:
        found = (
            f"its most significant RDN would be {sorted(first)[0]} "
            f"and its least significant {sorted(last)[0]}"
        )
    else:
        return
    raise _bad(
        text,
        f"is order-implausible: as written {found} (RFC 2253 'A=b' lists the CN "
        "first, OpenSSL 'A = b' the DC or C first); use one of those orders or "
        "the slash form",
    )


_ROOTS = frozenset({"DC", "C"})
_ORGANISATIONAL = frozenset({"DC", "C", "O", "OU", "L", "ST"})


def _attribute(name: str, text: str) -> str:
    name = name.strip(" ")
    if not name:
        raise _bad(text, "has an empty attribute type")
    canonical = _canonical_attribute(name)
    if canonical is None:
        raise _bad(text, f"has an invalid attribute type {name!r}")
    return canonical


@lru_cache(maxsize=512)
def _canonical_attribute(name: str) -> str | None:
    known = _ATTRIBUTES.get(name.lower())
    if known is not None:
        return known
    oid = _OID.fullmatch(name)
    if oid:
        return _ATTRIBUTES.get(oid.group(1), oid.group(1))
    if _NAME.fullmatch(name):
        return name.upper()
    return None


def _value(raw: str, text: str, comma: bool) -> str:
    value = _strip_spaces(raw)
    if "\\" in value or (comma and ('"' in value or value.startswith("#"))):
        value = _decode_value(value, text, comma)
    if not value.isascii():
        value = unicodedata.normalize("NFC", value)
    if not value:
        raise _bad(text, "has an empty attribute value")
    return value


def _decode_value(raw: str, text: str, comma: bool) -> str:
    """Read quotes, escapes and `#` BER; what they yield is checked again."""
    if comma and raw.startswith("#"):
        value = _decode_ber(raw[1:], text)
    elif comma and raw.startswith('"'):
        value = _unescape(_unquote(raw, text), text)
    elif comma and '"' in _ESCAPED.sub("", raw):
        raise _bad(text, "has an unescaped '\"' inside a value")
    else:
        value = _unescape(raw, text)
    if _FORBIDDEN.search(value):
        raise _bad(text, "contains an escaped control or invisible character")
    return value.strip(" ")


def _strip_spaces(raw: str) -> str:
    """Strip surrounding spaces, but not one escaped by a backslash."""
    stripped = raw.strip(" ")
    if stripped.endswith("\\") and len(stripped) < len(raw.lstrip(" ")):
        backslashes = len(stripped) - len(stripped.rstrip("\\"))
        if backslashes % 2:
            stripped += " "
    return stripped


def _unquote(raw: str, text: str) -> str:
    inner = raw[1:-1]
    if len(raw) < 2 or not raw.endswith('"') or '"' in _ESCAPED.sub("", inner):
        raise _bad(text, "has a malformed quoted value")
    return inner


def _unescape(raw: str, text: str) -> str:
    if "\\" not in raw:
        return raw
    out: list[str] = []
    pending = bytearray()
    i = 0
    while i < len(raw):
        char = raw[i]
        if char != "\\":
            _flush(pending, out, text)
            out.append(char)
            i += 1
            continue

        hexpair, step = _hex_escape(raw, i)
        if hexpair is not None:
            pending.append(int(hexpair, 16))
            i += step
            continue

        if i + 1 >= len(raw):
            raise _bad(text, "has an unterminated escape")
        if raw[i + 1] not in _SPECIALS:
            raise _bad(text, f"has an invalid escape {raw[i : i + 2]!r}")
        _flush(pending, out, text)
        out.append(raw[i + 1])
        i += 2
    _flush(pending, out, text)
    return "".join(out)


def _hex_escape(raw: str, i: int) -> tuple[str | None, int]:
    """Return the hex digits of an escaped byte at i (`\\HH` or `\\xHH`)."""
    pair = raw[i + 1 : i + 3]
    if len(pair) == 2 and pair[0] in _HEX and pair[1] in _HEX:
        return pair, 3
    pair = raw[i + 2 : i + 4]
    if raw[i + 1 : i + 2] in ("x", "X") and len(pair) == 2 and set(pair) <= _HEX:
        return pair, 4
    return None, 0


def _flush(pending: bytearray, out: list[str], text: str) -> None:
    if not pending:
        return
    try:
        out.append(pending.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _bad(text, "has hex-escaped bytes that are not UTF-8") from exc
    pending.clear()


def _decode_ber(digits: str, text: str) -> str:
    """Decode an RFC 4514 `#` value: a BER-encoded ASN.1 string type."""
    try:
        data = bytes.fromhex(digits)
        tag, length, offset = data[0], data[1], 2
        if length & 0x80:
            offset = 2 + (length & 0x7F)
            length = int.from_bytes(data[2:offset], "big")
        if length != len(data) - offset or tag not in _BER_CODECS:
            raise ValueError("unsupported encoding")
        return data[offset:].decode(_BER_CODECS[tag])
    except (ValueError, IndexError) as exc:
        raise _bad(text, "has a '#' value that is not a BER-encoded string") from exc


def _finish_rdn(pairs: list[list[str]], text: str) -> Rdn:
    if len(pairs) == 1:
        return ((pairs[0][0], pairs[0][1]),)
    rdn = tuple(sorted((attr, value) for attr, value in pairs))
    if len({attr for attr, _ in rdn}) != len(rdn):
        raise _bad(text, "repeats an attribute type inside one RDN")
    return rdn


def _strip_proxy_rdns(
    rdns: tuple[Rdn, ...], anchor: tuple[Rdn, ...] | None, text: str
) -> tuple[Rdn, ...]:
    """Strip proxy RDNs; anchor is the issuer's RDNs with values folded."""
    folded = _rdn_keys(rdns) if anchor is not None else ()
    end = len(rdns)
    while end:
        kind = _proxy_kind(rdns[end - 1])
        if kind is None:
            break
        if kind == "digits":
            if anchor is None:
                raise _bad(
                    text, "ends in a numeric CN that may be a proxy's; issuer needed"
                )
            if folded[: end - 1] != anchor:
                break
        end -= 1
        if anchor is not None and folded[:end] == anchor:
            # Cut back to the issuer: its issuer is read as one RDN shorter.
            anchor = anchor[:-1]
    if not end:
        raise _bad(text, "has nothing left once its proxy RDNs are stripped")
    return rdns[:end]


def _proxy_kind(rdn: Rdn) -> str | None:
    if len(rdn) != 1 or rdn[0][0] != "CN":
        return None
    value = rdn[0][1]
    if _DIGITS.fullmatch(value):
        return "digits"
    if value.casefold() in _NAMED_PROXIES:
        return "named"
    return None


def _rdn_keys(rdns: tuple[Rdn, ...]) -> tuple[Rdn, ...]:
    return tuple([tuple([(attr, _fold(value)) for attr, value in rdn]) for rdn in rdns])


def _fold(value: str) -> str:
    if value.isascii():
        return value.lower()
    return unicodedata.normalize("NFC", value.casefold())


def _render_slash(rdns: tuple[Rdn, ...]) -> str:
    parts: list[str] = []
    for rdn in rdns:
        separator = "/"
        for attr, value in rdn:
            parts += (separator, attr, "=", _escape_slash(value))
            separator = "+"
    return "".join(parts)


def _escape_slash(value: str) -> str:
    if "\\" in value or "/" in value or "+" in value:
        value = value.replace("\\", "\\\\").replace("/", "\\/").replace("+", "\\+")
    return value


def _escape_rfc2253(value: str) -> str:
    escaped = _RFC2253_SPECIAL.sub(r"\\\1", value)
    if escaped.startswith("#"):
        escaped = "\\" + escaped
    return escaped
