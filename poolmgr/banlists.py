"""Central ban lists: the formats sites use, reading them, and syncing them.

``ban-mapfile`` is the file LCMAPS' ban_dn and ban_fqan plugins read, in
grid-mapfile syntax:

- one entry a line; blank lines and lines starting with ``#`` are skipped;
- the entry is a DN or an FQAN in slash form, in double quotes when it
  holds blanks; inside quotes ``\\"`` is a quote and ``\\\\`` a backslash,
  and any other backslash is kept for the DN parser (``\\/``);
- an entry whose first component holds ``=`` is a DN, any other (such as
  ``/atlas/Role=pilot``) an FQAN, so one file may hold both;
- ``*`` is a wildcard, as in LCMAPS unless -disablewildcard; ``?`` and
  ``[`` are literal, and a wildcard DN must start with a whole RDN;
- a grid-mapfile mapping (account names, ``.pool``) and a ``#`` comment
  may follow the entry; both are ignored.

``dn-list`` holds one DN a line, in any form poolmgr reads, always literal.

A list with a bad line is rejected as a whole, the error names the line,
and the previous list stays in force. A list holding nothing but blanks
replacing a non-empty one is rejected too, unless allowed: a truncated
download or a half-written file looks like that. Every attempt is stored
as a ban_syncs row; an accepted list replaces exactly the bans of its
source, never hand bans nor other sources' bans.
"""

import hashlib
import logging
import os
import re
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from poolmgr import events
from poolmgr.bans import (
    BanEntry,
    bump_version,
    count_active,
    dn_entry,
    dn_pattern_entry,
    fqan_entry,
    fqan_pattern_entry,
    frozen_counts,
    lock_bans,
    mark_lifted,
    record_ban_event,
    source_origin,
)
from poolmgr.db import unit_of_work
from poolmgr.errors import (
    BadInputError,
    BanListUnavailableError,
    NotFoundError,
    PolicyError,
)
from poolmgr.freetext import check_reason
from poolmgr.models import Ban, BanSync
from poolmgr.settings import BanSourceSettings, Settings
from poolmgr.timeutil import utcnow

logger = logging.getLogger(__name__)

MAX_BYTES = 16 << 20
MAX_LINE = 8192
TIMEOUT = 30.0
_MAPPING = re.compile(r"[A-Za-z0-9_.,-]+(?:[ \t]+#.*)?")

Fetch = Callable[[str], bytes]


class BanListError(BadInputError):
    """A ban list has a bad line or is unusable; it is rejected as a whole."""

    code = "BAN_LIST_REJECTED"


# Formats.


def parse_ban_list(data: bytes, fmt: str) -> list[BanEntry]:
    """Return the distinct entries of a list; BanListError naming the line."""
    text = _decode(data)
    read = _mapfile_entry if fmt == "ban-mapfile" else _dn_list_entry
    entries: dict[str, BanEntry] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        try:
            entry = _read_line(line, read)
        except BadInputError as exc:
            raise BanListError(f"line {number}: {exc}") from None
        if entry is not None:
            entries.setdefault(entry.key_hash, entry)
    return list(entries.values())


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise BanListError(f"line {line}: the text is not UTF-8.") from None


def _read_line(line: str, read: Callable[[str], BanEntry]) -> BanEntry | None:
    if len(line) > MAX_LINE:
        raise BadInputError(f"the line is longer than {MAX_LINE} characters.")
    text = line.strip(" \t")
    if not text or text.startswith("#"):
        return None
    return read(text)


def _mapfile_entry(text: str) -> BanEntry:
    if text.startswith('"'):
        value, rest = _unquote(text)
    else:
        value, _, rest = text.replace("\t", " ").partition(" ")
    if not value.startswith("/"):
        raise BadInputError(
            f"{value[:80]!r} is neither a DN nor an FQAN in slash form."
        )
    rest = rest.strip(" \t")
    if rest and not rest.startswith("#") and not _MAPPING.fullmatch(rest):
        raise BadInputError(f"unexpected text {rest[:80]!r} after the entry.")
    is_dn = "=" in value[1:].split("/", 1)[0]
    if "*" in value:
        return dn_pattern_entry(value) if is_dn else fqan_pattern_entry(value)
    return dn_entry(value) if is_dn else fqan_entry(value)


def _unquote(text: str) -> tuple[str, str]:
    """Return the quoted value at the start of text and what follows it."""
    value: list[str] = []
    i = 1
    while i < len(text):
        char = text[i]
        if char == "\\" and text[i + 1 : i + 2] in ('"', "\\"):
            value.append(text[i + 1])
            i += 2
            continue
        if char == '"':
            rest = text[i + 1 :]
            if rest and rest[0] not in " \t#":
                raise BadInputError("a blank must follow the closing quote.")
            return "".join(value), rest
        value.append(char)
        i += 1
    raise BadInputError("the quote is not closed.")


def _dn_list_entry(text: str) -> BanEntry:
    if len(text) > 1 and text[0] == text[-1] == '"':
        text = text[1:-1]
    return dn_entry(text)


# Reading a source.


def read_location(location: str, ca_path: str | None = None) -> bytes:
    """Return the bytes at a path or HTTP(S) URL, at most MAX_BYTES.

    An https:// server is verified against ca_path (a CA file or a directory
    of hashed CA certificates) when given, else the system trust store.
    Raises BanListUnavailableError when it cannot be read, BanListError
    when it is larger than MAX_BYTES.
    """
    if location.startswith(("http://", "https://")):
        data = _read_url(location, ca_path)
    else:
        data = _read_file(location)
    if len(data) > MAX_BYTES:
        raise BanListError(f"the list is larger than {MAX_BYTES >> 20} MiB.")
    return data


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read(MAX_BYTES + 1)
    except OSError as exc:
        raise BanListUnavailableError(
            f"cannot read {path!r}: {exc.strerror or exc}."
        ) from None


def _read_url(url: str, ca_path: str | None) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "poolmgr"})
    try:
        context = _tls_context(ca_path)
        with urllib.request.urlopen(  # noqa: S310
            request, timeout=TIMEOUT, context=context
        ) as response:
            return bytes(response.read(MAX_BYTES + 1))
    except urllib.error.HTTPError as exc:
        raise BanListUnavailableError(
            f"cannot fetch {url!r}: HTTP {exc.code} {exc.reason}."
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BanListUnavailableError(f"cannot fetch {url!r}: {reason}.") from None


def _tls_context(ca_path: str | None) -> ssl.SSLContext:
    """Return a verifying context: ca_path's certificates, or the system's."""
    if ca_path is None:
        return ssl.create_default_context()
    try:
        if os.path.isdir(ca_path):
            return ssl.create_default_context(capath=ca_path)
        return ssl.create_default_context(cafile=ca_path)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise BanListUnavailableError(
            f"cannot use the CA certificates {ca_path!r}: {reason}."
        ) from None


# Syncing.


@dataclass(frozen=True)
class SyncResult:
    """What one accepted sync did."""

    source: str
    sync_id: int
    entries: int
    added: list[str]
    removed: list[str]


def find_source(settings: Settings, name: str) -> BanSourceSettings:
    """Return the configured ban source name; NotFoundError if there is none."""
    for source in settings.ban_sources:
        if source.name == name:
            return source
    raise NotFoundError(f"No ban source named {name[:40]!r} is configured.")


def sync_source(
    engine: Engine,
    source: BanSourceSettings,
    *,
    actor: str,
    now: datetime | None = None,
    allow_empty: bool = False,
    fetch: Fetch | None = None,
) -> SyncResult:
    """Read source and make its bans exactly the list read; return the changes.

    Raises BanListUnavailableError when the source cannot be read and
    BanListError when the list is rejected; either way the failed attempt
    is recorded (and logged) and the source's previous bans stay in force.
    """
    now = now or utcnow()
    try:
        if fetch is None:
            data = read_location(source.location, source.ca_path)
        else:
            data = fetch(source.location)
        entries = parse_ban_list(data, source.format)
        _check_not_emptied(engine, source, data, allow_empty)
    except (BanListUnavailableError, BanListError) as exc:
        _record_failure(engine, source, exc, actor=actor, now=now)
        raise type(exc)(
            f"Ban list {source.name} ({source.location}): {exc} The list is not "
            "used; the bans read from it before stay in force."
        ) from None
    with unit_of_work(engine) as session:
        sync = _new_sync(source, "accepted", actor=actor, now=now)
        sync.entries, sync.content_sha256 = len(entries), content_hash(data)
        return _apply(session, sync, entries)


def _check_not_emptied(
    engine: Engine, source: BanSourceSettings, data: bytes, allow_empty: bool
) -> None:
    if allow_empty or data.strip():
        return
    with unit_of_work(engine, write=False) as session:
        standing = count_active(session, source_origin(source.name))
    if standing:
        raise BanListError(
            f"the list is empty while {standing} bans from it are in force; "
            "pass --allow-empty if that is meant."
        )


def _apply(session: Session, sync: BanSync, entries: list[BanEntry]) -> SyncResult:
    lock_bans(session)
    origin, actor, now = source_origin(sync.source), sync.actor, sync.at
    first = not _was_read(session, sync.source)
    session.add(sync)
    session.flush()

    current = {
        ban.key_hash: ban
        for ban in session.scalars(
            select(Ban).where(Ban.origin == origin, Ban.active == 1)
        )
    }
    wanted = {entry.key_hash: entry for entry in entries}
    gone = [ban for digest, ban in current.items() if digest not in wanted]
    new = [entry for digest, entry in wanted.items() if digest not in current]
    _lift_all(session, gone, sync, actor=actor, now=now)
    _add_all(session, new, sync, actor=actor, now=now)

    sync.added, sync.removed = len(new), len(gone)
    if new or gone or first:
        bump_version(session, now)
    events.record(
        session,
        "ban_list_synced",
        at=now,
        actor=actor,
        source=sync.source,
        sync_id=sync.id,
        entries=len(entries),
        added=len(new),
        removed=len(gone),
    )
    return SyncResult(
        sync.source,
        sync.id,
        len(entries),
        [e.entry for e in new],
        [b.entry for b in gone],
    )


def _lift_all(
    session: Session, bans: list[Ban], sync: BanSync, *, actor: str, now: datetime
) -> None:
    if not bans:
        return
    counts = frozen_counts(session)
    reason = f"no longer on ban list {sync.source}"
    for ban in bans:
        mark_lifted(ban, actor=actor, reason=reason, now=now, sync_id=sync.id)
    session.flush()
    for ban in bans:
        frozen = counts.get(ban.id, 0)
        record_ban_event(session, "ban_lifted", ban, actor=actor, frozen=frozen)


def _add_all(
    session: Session,
    entries: list[BanEntry],
    sync: BanSync,
    *,
    actor: str,
    now: datetime,
) -> None:
    if not entries:
        return
    bans = [
        Ban(
            kind=entry.kind,
            entry=entry.entry,
            key=entry.key,
            key_hash=entry.key_hash,
            origin=source_origin(sync.source),
            reason=f"on ban list {sync.source}",
            created_at=now,
            created_by=actor,
            added_sync_id=sync.id,
            active=1,
        )
        for entry in entries
    ]
    session.add_all(bans)
    session.flush()
    counts = frozen_counts(session)
    for ban in bans:
        frozen = counts.get(ban.id, 0)
        record_ban_event(session, "ban_added", ban, actor=actor, frozen=frozen)


def forget_source(
    session: Session,
    settings: Settings,
    name: str,
    *,
    reason: str,
    actor: str,
    now: datetime,
) -> int:
    """Lift every ban read from a source no longer configured; return how many.

    Raises PolicyError while the source is configured (a sync decides its
    bans then) and NotFoundError when no ban of it is in force.
    """
    reason = check_reason(reason)
    if any(source.name == name for source in settings.ban_sources):
        raise PolicyError(
            f"Ban source {name!r} is still configured; its bans follow its list."
        )
    lock_bans(session)
    bans = list(
        session.scalars(
            select(Ban).where(Ban.origin == source_origin(name), Ban.active == 1)
        )
    )
    if not bans:
        raise NotFoundError(f"No ban from source {name[:40]!r} is in force.")
    counts = frozen_counts(session)
    for ban in bans:
        mark_lifted(ban, actor=actor, reason=reason, now=now)
    session.flush()
    for ban in bans:
        frozen = counts.get(ban.id, 0)
        record_ban_event(session, "ban_lifted", ban, actor=actor, frozen=frozen)
    bump_version(session, now)
    return len(bans)


def _record_failure(
    engine: Engine,
    source: BanSourceSettings,
    exc: Exception,
    *,
    actor: str,
    now: datetime,
) -> None:
    status = "unreadable" if isinstance(exc, BanListUnavailableError) else "rejected"
    logger.warning("ban list %s %s: %s", source.name, status, exc)
    with unit_of_work(engine) as session:
        sync = _new_sync(source, status, actor=actor, now=now, error=str(exc))
        session.add(sync)
        session.flush()
        events.record(
            session,
            f"ban_list_{status}",
            at=now,
            actor=actor,
            reason=str(exc)[:2000],
            source=source.name,
            sync_id=sync.id,
        )


def _new_sync(
    source: BanSourceSettings,
    status: str,
    *,
    actor: str,
    now: datetime,
    error: str | None = None,
) -> BanSync:
    return BanSync(
        source=source.name,
        location=source.location,
        format=source.format,
        at=now,
        actor=actor,
        status=status,
        added=0,
        removed=0,
        error=error,
    )


def _was_read(session: Session, name: str) -> bool:
    accepted = select(BanSync.id).where(
        BanSync.source == name, BanSync.status == "accepted"
    )
    return session.execute(accepted.limit(1)).first() is not None


def content_hash(data: bytes) -> str:
    """Return the SHA-256 of a list's bytes, stored with each accepted sync."""
    return hashlib.sha256(data).hexdigest()
