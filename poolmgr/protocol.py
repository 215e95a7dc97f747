"""The line protocol of the mapping service, as pure functions.

Each request and each reply is one UTF-8 line of at most LINE_MAX bytes,
"\\n" included. Fields are separated by one TAB. Inside a field the four
bytes that would break the framing are percent-encoded: "%" as %25, TAB as
%09, LF as %0A, CR as %0D (either hex case is read). Any other "%" sequence
is left as it is, so decoding undoes exactly what encoding did and a DN
holding a literal "%41" arrives unchanged.

Requests::

    MAP\\t<dn>[\\t<fqan>]...      map, creating a lease if needed
    VERIFY\\t<dn>[\\t<fqan>]...   confirm an open lease; creates nothing
    PING                         liveness check

Replies, one per request and in order::

    OK\\t<account>\\t<uid>\\t<gid>\\t<sgids>\\t<lease_key>
    OK\\tpong
    ERR\\t<CODE>\\t<message>

sgids are comma separated, never hold the primary gid, and may be empty.
The DN is the end-entity subject, as LCMAPS passes it; see service.py.
"""

from dataclasses import dataclass

from poolmgr.errors import BadInputError, PoolmgrError

LINE_MAX = 16384
MESSAGE_MAX = 1000
VERBS = ("MAP", "VERIFY", "PING")

_ENCODE = str.maketrans({"%": "%25", "\t": "%09", "\n": "%0A", "\r": "%0D"})
_DECODE = {"25": "%", "09": "\t", "0a": "\n", "0d": "\r"}
# Raw control bytes never belong in a line: fields carry them percent-encoded.
_RAW_CONTROLS = frozenset(range(0x20)) - {0x09}


class BadRequestError(BadInputError):
    """A request line broke the protocol (framing, encoding, verb, fields)."""

    code = "BAD_REQUEST"


@dataclass(frozen=True)
class Request:
    """One decoded request line."""

    verb: str
    dn: str = ""
    fqans: tuple[str, ...] = ()


def encode_field(text: str) -> str:
    """Percent-encode the four characters the framing reserves."""
    return text.translate(_ENCODE)


def decode_field(text: str) -> str:
    """Undo encode_field; any other "%" sequence is kept literally."""
    if "%" not in text:
        return text
    parts = text.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        plain = _DECODE.get(part[:2].lower())
        out.append(plain + part[2:] if plain is not None else "%" + part)
    return "".join(out)


def encode_request(verb: str, dn: str = "", fqans: tuple[str, ...] = ()) -> bytes:
    """Return the request line for verb (with its "\\n")."""
    fields = [verb] if verb == "PING" else [verb, dn, *fqans]
    line = "\t".join(encode_field(field) for field in fields) + "\n"
    data = line.encode("utf-8")
    if len(data) > LINE_MAX:
        raise BadRequestError(
            f"The request is {len(data)} bytes, above the limit of {LINE_MAX}."
        )
    return data


def parse_request(line: bytes) -> Request:
    """Decode one request line (with or without its "\\n").

    Raises BadRequestError naming what is wrong: an empty line, raw control
    bytes, invalid UTF-8, an unknown verb, or missing or empty fields.
    """
    line = line.removesuffix(b"\n")
    if not line:
        raise BadRequestError("The request line is empty.")
    if len(line) >= LINE_MAX:
        raise BadRequestError(f"The request line is longer than {LINE_MAX} bytes.")
    if not _RAW_CONTROLS.isdisjoint(line):
        raise BadRequestError(
            f"The request {_quote(line)} holds a raw control byte; "
            "fields must percent-encode TAB, LF and CR."
        )
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequestError(f"The request {_quote(line)} is not UTF-8.") from None
    return _fields_to_request(text.split("\t"))


def _fields_to_request(fields: list[str]) -> Request:
    verb = fields[0]
    if verb not in VERBS:
        raise BadRequestError(
            f"Unknown request {_quote(verb)}; expected MAP, VERIFY or PING."
        )
    if verb == "PING":
        if len(fields) > 1:
            raise BadRequestError("PING takes no fields.")
        return Request("PING")
    values = [decode_field(field) for field in fields[1:]]
    if not values or not values[0]:
        raise BadRequestError(f"{verb} needs a DN as its first field.")
    if any(not fqan for fqan in values[1:]):
        raise BadRequestError(f"{verb} has an empty FQAN field.")
    return Request(verb, values[0], tuple(values[1:]))


def format_ok(
    account: str, uid: int, gid: int, sgids: tuple[int, ...], lease_key: str
) -> bytes:
    """Return the OK reply line for a mapping."""
    groups = ",".join(str(g) for g in sgids if g != gid)
    fields = [account, str(uid), str(gid), groups, lease_key]
    return ("OK\t" + "\t".join(encode_field(f) for f in fields) + "\n").encode()


def format_pong() -> bytes:
    """Return the reply to PING."""
    return b"OK\tpong\n"


def format_error(code: str, message: str) -> bytes:
    """Return an ERR reply line; the message is cut to one short line."""
    if len(message) > MESSAGE_MAX:
        message = message[: MESSAGE_MAX - 3] + "..."
    return f"ERR\t{encode_field(code)}\t{encode_field(message)}\n".encode()


def error_reply(exc: PoolmgrError) -> bytes:
    """Return the ERR reply for an expected failure."""
    return format_error(exc.code, str(exc))


@dataclass(frozen=True)
class Reply:
    """One decoded reply line, as a client sees it."""

    ok: bool
    fields: tuple[str, ...]

    @property
    def code(self) -> str:
        """Return the error code of an ERR reply ("" for OK)."""
        return "" if self.ok else self.fields[0]


def parse_reply(line: bytes) -> Reply:
    """Decode a reply line; raise BadRequestError if it is not one."""
    try:
        fields = line.removesuffix(b"\n").decode("utf-8").split("\t")
    except UnicodeDecodeError:
        raise BadRequestError(f"The reply {_quote(line)} is not UTF-8.") from None
    values = tuple(decode_field(field) for field in fields[1:])
    if fields[0] == "OK" and len(values) in (1, 5):
        return Reply(True, values)
    if fields[0] == "ERR" and len(values) == 2:
        return Reply(False, values)
    raise BadRequestError(f"The reply {_quote(line)} is malformed.")


def _quote(value: bytes | str) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."
