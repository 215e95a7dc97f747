"""Checks of pool accounts against the host's name service (passwd, group).

A lease on an account the host cannot resolve would fail later, inside the
job; so when the site enables ``check_nss`` an account must resolve, with
the uid poolmgr expects, before it is handed out. Lookups are cached for a
short time because NSS back-ends scan files linearly.
"""

import grp
import pwd
import time
from dataclasses import dataclass

_TTL = 60.0
_MAX_ENTRIES = 200_000
_cache: dict[tuple[str, str], tuple[float, object]] = {}


@dataclass(frozen=True)
class Problem:
    """Why an account or group does not match the host's NSS."""

    name: str
    message: str


def account_problem(name: str, uid: int) -> Problem | None:
    """Return why account name with uid does not resolve as defined, or None."""
    entry = _lookup("passwd", name)
    if entry is None:
        return Problem(name, f"account {name} does not resolve (defined, unresolvable)")
    assert isinstance(entry, pwd.struct_passwd)
    if entry.pw_uid != uid:
        return Problem(name, f"account {name} has uid {entry.pw_uid}, expected {uid}")
    return None


def group_problem(name: str, gid: int) -> Problem | None:
    """Return why group gid named name does not match NSS, or None."""
    by_gid = _lookup("gid", str(gid))
    if by_gid is None:
        return Problem(name, f"gid {gid} ({name}) does not resolve")
    assert isinstance(by_gid, grp.struct_group)
    if by_gid.gr_name != name:
        return Problem(
            name, f"gid {gid} is {by_gid.gr_name!r} on this host, not {name!r}"
        )
    return None


def uid_owner(uid: int) -> str | None:
    """Return the name of the account holding uid on this host, or None."""
    entry = _lookup("uid", str(uid))
    return entry.pw_name if isinstance(entry, pwd.struct_passwd) else None


def clear_cache() -> None:
    """Forget cached lookups (after the host's accounts changed)."""
    _cache.clear()


def _lookup(kind: str, key: str) -> object:
    now = time.monotonic()
    hit = _cache.get((kind, key))
    if hit is not None and now - hit[0] < _TTL:
        return hit[1]
    value = _fetch(kind, key)
    if len(_cache) >= _MAX_ENTRIES:
        _cache.clear()
    _cache[(kind, key)] = (now, value)
    return value


def _fetch(kind: str, key: str) -> object:
    try:
        if kind == "passwd":
            return pwd.getpwnam(key)
        if kind == "uid":
            return pwd.getpwuid(int(key))
        return grp.getgrgid(int(key))
    except (KeyError, OverflowError):
        return None
