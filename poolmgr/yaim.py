"""YAIM's account files: users.conf and groups.conf, read strictly.

users.conf has one account per line, ``UID:LOGIN:GID1[,GID2...]:GROUP1
[,GROUP2...]:VO:FLAG:``; the first gid is the primary group and the flag
(sgm, prd, pilot or empty) marks special accounts. groups.conf routes FQANs,
``"FQAN":GROUP:GID:FLAG:[VO]``; the first matching line wins and its flag
selects the accounts of the VO with the same flag. Blank lines and lines
starting with ``#`` are skipped; every other line either parses or becomes
a problem that names its file and line.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from poolmgr.dn import quote_input
from poolmgr.errors import BadInputError
from poolmgr.fqan import FqanRule, parse_rule

MAX_FILE_BYTES = 16 << 20
MAX_ID = 4_294_967_294

_LOGIN = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
_GROUP = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
_FLAG = re.compile(r"[A-Za-z0-9_-]{0,16}")
_VO = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_DIGITS = re.compile(r"[0-9]{1,10}")


@dataclass(frozen=True)
class UserLine:
    """One account line of a users.conf file."""

    where: str
    uid: int
    login: str
    groups: tuple[tuple[str, int], ...]
    vo: str
    flag: str


@dataclass(frozen=True)
class GroupLine:
    """One FQAN line of a groups.conf file; rule is in canonical form."""

    where: str
    rule: str
    vo: str
    flag: str
    group: str
    gid: int | None


def read_text(path: Path) -> str:
    """Return a file's text; BadInputError if unreadable, huge or not UTF-8."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read the file: {exc.strerror}.") from None
    if len(raw) > MAX_FILE_BYTES:
        raise BadInputError(f"{path}: the file is larger than 16 MiB.")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise BadInputError(f"{path}:{line}: the file is not UTF-8 text.") from None


def parse_users_conf(text: str, source: str) -> tuple[list[UserLine], list[str]]:
    """Return the account lines of a users.conf and the problems of the rest."""
    lines: list[UserLine] = []
    problems: list[str] = []
    for where, line in _content_lines(text, source):
        try:
            lines.append(_user_line(where, line))
        except BadInputError as exc:
            problems.append(f"{where}: {exc}")
    return lines, problems


def parse_groups_conf(text: str, source: str) -> tuple[list[GroupLine], list[str]]:
    """Return the FQAN lines of a groups.conf and the problems of the rest."""
    lines: list[GroupLine] = []
    problems: list[str] = []
    for where, line in _content_lines(text, source):
        try:
            lines.append(_group_line(where, line))
        except BadInputError as exc:
            problems.append(f"{where}: {exc}")
    return lines, problems


def canonical_rule(rule: FqanRule) -> str:
    """Return rule written the way poolmgr writes rules (``Role=``)."""
    text = "/" + "/".join(rule.components) + ("/*" if rule.subtree else "")
    return text + (f"/Role={rule.role}" if rule.role else "")


def _content_lines(text: str, source: str) -> Iterable[tuple[str, str]]:
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            yield f"{source}:{number}", stripped


def _user_line(where: str, line: str) -> UserLine:
    fields = _fields(line, line.split(":"), 6, "UID:LOGIN:GIDS:GROUPS:VO:FLAG:")
    uid_text, login, gid_text, group_text, vo, flag = fields
    gids = [_number(text, "gid") for text in gid_text.split(",")]
    names = group_text.split(",")
    if len(names) != len(gids):
        raise BadInputError(
            f"{len(gids)} gid(s) {quote_input(gid_text)} but {len(names)} "
            f"group name(s) {quote_input(group_text)}."
        )
    for name in names:
        _require(_GROUP, name, "group name")
    return UserLine(
        where=where,
        uid=_number(uid_text, "uid"),
        login=_require(_LOGIN, login, "login name"),
        groups=tuple(zip(names, gids, strict=True)),
        vo=_require(_VO, vo, "VO name"),
        flag=_require(_FLAG, flag, "flag"),
    )


def _group_line(where: str, line: str) -> GroupLine:
    end = line.find('"', 1)
    if not line.startswith('"') or end < 0 or line[end + 1 : end + 2] != ":":
        raise BadInputError(f'{quote_input(line)} is not "FQAN":GROUP:GID:FLAG:.')
    rule = parse_rule(line[1:end])
    fields = line[end + 2 :].split(":")
    if len(fields) == 3:
        fields.append("")
    group, gid_text, flag, vo = _fields(line, fields, 4, '"FQAN":GROUP:GID:FLAG:VO')
    rule_vo = rule.components[0]
    if vo and vo != rule_vo:
        raise BadInputError(
            f"VO field {quote_input(vo)} differs from the VO of "
            f"{quote_input(rule.text)}; a VO card routes only its own FQANs."
        )
    if group:
        _require(_GROUP, group, "group name")
    return GroupLine(
        where=where,
        rule=canonical_rule(rule),
        vo=rule_vo,
        flag=_require(_FLAG, flag, "flag"),
        group=group,
        gid=_number(gid_text, "gid") if gid_text else None,
    )


def _fields(line: str, fields: list[str], count: int, shape: str) -> list[str]:
    # YAIM writes a trailing ':' after the last field; it is optional here.
    if len(fields) == count + 1 and fields[-1] == "":
        fields = fields[:-1]
    if len(fields) != count:
        raise BadInputError(f"{quote_input(line)} is not {shape}.")
    return fields


def _number(text: str, what: str) -> int:
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= MAX_ID:
        raise BadInputError(f"{what} {quote_input(text)} is not a number 1..{MAX_ID}.")
    return int(text)


def _require(pattern: re.Pattern[str], text: str, what: str) -> str:
    if not pattern.fullmatch(text):
        raise BadInputError(f"{what} {quote_input(text)} is not valid.")
    return text
