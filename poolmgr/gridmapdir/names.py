"""Lease names in a gridmapdir: the LCMAPS encoding, and reading every variant.

Encoding (LCMAPS ``urlencode``, also Argus since its fix for savannah
#83419): each byte of the DN in [A-Za-z0-9] is written lowercased, every
other byte as "%" and two lowercase hex digits; then each suffix follows a
literal ":" unencoded (``lcmaps_voms_poolaccount`` appends group names).

The DN is written as OpenSSL's ``X509_NAME_oneline`` prints it (OpenSSL 3):
"/" before every attribute, "/" and "+" inside a value escaped with "\\",
and each byte of a non-ASCII character as ``\\xHH`` -- which is how a DN
from a real certificate reaches LCMAPS. ``non_ascii="argus"`` writes those
characters as their UTF-8 bytes instead (Argus' form, é -> %c3%a9).

Decoding accepts, losslessly:

- ``%xx`` in either hex case;
- the Globus sign-extended ``%ffffffxx`` for one byte of 0x80 or more;
- literal letters (either case: case is kept when present), digits and the
  printable ASCII marks an old Argus left unencoded (``-._,=@`` ...), since
  none of them can be mistaken for anything else;
- repeated suffixes (``:atlasprd:atlasprd``), read once.

A name is unresolvable, and never becomes a person, when it holds a literal
"+" (form encoding: space or plus?), a raw space, control or non-ASCII byte,
a "%" without two hex digits, bytes that are not UTF-8 (LCMAPS 1.6.6 garbled
raw UTF-8 into ``%ff%ff``), or text that is not a DN. Lease names are
lowercased by every encoder, so a decoded DN without capitals only has a
lossy display form until the person maps again (F03).
"""

import re
from dataclasses import dataclass

from poolmgr.dn import DistinguishedName, parse_dn, quote_input
from poolmgr.errors import BadInputError, PoolmgrError

NAME_MAX = 255
NON_ASCII_MODES = ("lcmaps", "argus")

_QUOTED = tuple(
    chr(b).lower() if chr(b).isascii() and chr(b).isalnum() else f"%{b:02x}"
    for b in range(256)
)
_SIGN_EXTENDED = re.compile(rb"ffffff([89a-fA-F][0-9a-fA-F])")
_HEX2 = re.compile(rb"[0-9a-fA-F]{2}")
# Literal bytes some encoder left as they are: alphanumerics, and the marks
# a URI-path encoder keeps. "+" is not among them: form encoding means space.
_LITERAL = frozenset(range(0x21, 0x7F)) - set(b"%+:")
_MAPCOUNT = re.compile(r"mapcount=([0-9]{1,4})")


class UnresolvableNameError(PoolmgrError):
    """A lease name that cannot be decoded to exactly one DN."""

    code = "UNRESOLVABLE"


@dataclass(frozen=True)
class DecodedName:
    """A lease name read back: the DN, its suffixes and whether case survived."""

    dn: DistinguishedName
    text: str
    groups: tuple[str, ...]
    mapcount: int | None
    cased: bool


def encode_lease_name(dn_text: str, suffixes: tuple[str, ...] = ()) -> str:
    """Return the lease name LCMAPS writes for dn_text and suffixes."""
    quoted = "".join([_QUOTED[b] for b in dn_text.encode("utf-8")])
    return quoted + "".join(":" + suffix for suffix in suffixes)


def oneline(dn: DistinguishedName, non_ascii: str = "lcmaps") -> str:
    """Return dn as OpenSSL's X509_NAME_oneline prints it (see module doc)."""
    if non_ascii not in NON_ASCII_MODES:
        raise BadInputError(f"Unknown non-ASCII mode {non_ascii!r}.")
    # The attributes of one multi-valued RDN are joined with "+", as
    # OpenSSL 3 prints them.
    return "".join(
        "/"
        + "+".join(f"{attr}={_oneline_value(value, non_ascii)}" for attr, value in rdn)
        for rdn in dn.rdns
    )


def _oneline_value(value: str, non_ascii: str) -> str:
    value = value.replace("/", "\\/").replace("+", "\\+")
    if non_ascii == "argus" or value.isascii():
        return value
    return "".join(
        char if char.isascii() else "".join(f"\\x{b:02X}" for b in char.encode("utf-8"))
        for char in value
    )


def lease_name(
    dn: DistinguishedName, suffixes: tuple[str, ...] = (), non_ascii: str = "lcmaps"
) -> str:
    """Return the lease name of dn with suffixes."""
    return encode_lease_name(oneline(dn, non_ascii), suffixes)


def decode_lease_name(name: bytes) -> DecodedName:
    """Read a lease name; raise UnresolvableNameError saying why it cannot be."""
    head, _, tail = name.partition(b":")
    raw, cased = _unquote(head, name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _unresolvable(
            name, "decodes to bytes that are not UTF-8 (a garbled non-ASCII DN)"
        ) from None
    try:
        # Names hold end-entity DNs: a trailing numeric CN is part of the name.
        dn = parse_dn(text, text)
    except BadInputError as exc:
        raise _unresolvable(name, f"is not a DN ({exc})") from None
    groups, mapcount = _suffixes(tail, name)
    return DecodedName(dn, text, groups, mapcount, cased)


def _unquote(head: bytes, name: bytes) -> tuple[bytes, bool]:
    out = bytearray()
    cased = False
    i = 0
    while i < len(head):
        byte = head[i]
        if byte != 0x25:  # "%"
            if byte not in _LITERAL:
                raise _unresolvable(name, f"holds the raw byte {bytes([byte])!r}")
            cased = cased or 0x41 <= byte <= 0x5A
            out.append(byte)
            i += 1
            continue
        wide = _SIGN_EXTENDED.match(head, i + 1)
        if wide:
            out.append(int(wide.group(1), 16))
            i += 9
        elif _HEX2.match(head, i + 1):
            out.append(int(head[i + 1 : i + 3], 16))
            i += 3
        else:
            raise _unresolvable(name, "has a '%' without two hex digits")
    if not out:
        raise _unresolvable(name, "has no DN before its suffix")
    return bytes(out), cased


def _suffixes(tail: bytes, name: bytes) -> tuple[tuple[str, ...], int | None]:
    try:
        parts = tail.decode("ascii").split(":") if tail else []
    except UnicodeDecodeError:
        raise _unresolvable(name, "has a non-ASCII suffix") from None
    groups: list[str] = []
    mapcount = None
    for part in parts:
        counted = _MAPCOUNT.fullmatch(part)
        if counted:
            mapcount = int(counted.group(1))
        elif part and part not in groups:
            groups.append(part)
    return tuple(groups), mapcount


def _unresolvable(name: bytes, problem: str) -> UnresolvableNameError:
    shown = quote_input(name.decode("utf-8", "backslashreplace"))
    return UnresolvableNameError(f"Lease name {shown} {problem}.")
