"""Bans: refuse a person (in any DN spelling) or a role, site-wide.

Kinds of entry (F11):

- ``dn``: a literal DN, compared by identity key, so every DN form, letter
  case and proxy suffix of the person matches. It is stored with the same
  key hash as the person's identity, so a ban joins their leases directly.
- ``dn-pattern``: a DN with ``*`` wildcards, from a ban-mapfile. It is
  compared with the canonical slash key (attribute names canonical, the
  pairs of a multi-valued RDN without ``*`` sorted), ignoring case; ``*`` matches any
  run of characters (``/`` included) and every other character, ``?``,
  ``[`` and ``.`` among them, is literal. Never a regular expression.
- ``fqan`` and ``fqan-pattern``: a role refused to everybody who carries it,
  in any position; compared in canonical form (Role=NULL and Capability
  dropped). A request without FQANs is never caught by an FQAN ban, as
  with lcmaps_ban_fqan since 1.6.2 (F12).

Hand bans have origin ``hand``; central lists (banlists.py) have origin
``source:<name>``, and the two are never mixed up. Every transaction that
changes bans gives ``ban_state`` a new random version, which banguard.py
compares on every mapping. While a ban on a person stands their open
leases are frozen: never recycled, whatever their idle time.
"""

import unicodedata
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from poolmgr import events
from poolmgr.dn import DistinguishedName, parse_dn, quote_input
from poolmgr.errors import (
    BadInputError,
    NotFoundError,
    PolicyError,
    PoolmgrError,
)
from poolmgr.fqan import parse_fqan
from poolmgr.freetext import check_reason
from poolmgr.identities import X509, key_hash
from poolmgr.models import Ban, BanState, Identity, Lease

HAND = "hand"
DN, DN_PATTERN, FQAN, FQAN_PATTERN = "dn", "dn-pattern", "fqan", "fqan-pattern"
_NAMED_PROXIES = ("proxy", "limited proxy")


@dataclass(frozen=True)
class BanEntry:
    """A ban as read from a list or the command line, before it is stored."""

    kind: str
    entry: str
    key: str

    @property
    def key_hash(self) -> str:
        """Return the indexed hash; for a DN the same as its identity's."""
        return key_hash(X509 if self.kind == DN else self.kind, self.key)


@dataclass(frozen=True)
class BanHit:
    """The ban that matched: what the refusal log and the error name."""

    ban_id: int
    kind: str
    entry: str
    origin: str

    def describe(self) -> str:
        """Return e.g. "dn ban '/DC=org/CN=x' entered by hand"."""
        return f"{self.kind} ban {quote_input(self.entry)} {origin_text(self.origin)}"


def origin_text(origin: str) -> str:
    """Return 'entered by hand' or 'from source NAME'."""
    if origin == HAND:
        return "entered by hand"
    return f"from source {origin.removeprefix('source:')}"


def source_origin(name: str) -> str:
    """Return the origin stored for bans read from source name."""
    return f"source:{name}"


# Entries.


def dn_entry(text: str) -> BanEntry:
    """Return the literal DN ban for text (any DN form); BadInputError.

    The entry is kept in the canonical slash form every report shows.
    """
    dn = read_ban_dn(text)
    return BanEntry(DN, dn.slash(), dn.key)


def read_ban_dn(text: str) -> DistinguishedName:
    """Parse a ban list DN as written, dropping a trailing CN=proxy.

    A numeric last CN is kept: it is part of many real names, and a ban
    entry has no issuer to tell it from a proxy's.
    """
    dn = parse_dn(text, strip_proxy=False)
    rdns = dn.rdns
    while len(rdns) > 1 and _is_named_proxy(rdns[-1]):
        rdns = rdns[:-1]
    return dn if rdns == dn.rdns else DistinguishedName(rdns)


def _is_named_proxy(rdn: tuple[tuple[str, str], ...]) -> bool:
    if len(rdn) != 1:
        return False
    attribute, value = rdn[0]
    return attribute == "CN" and value.casefold() in _NAMED_PROXIES


def fqan_entry(text: str) -> BanEntry:
    """Return the FQAN ban for text, in canonical form; BadInputError."""
    fqan, _ = parse_fqan(text)
    return BanEntry(FQAN, text, str(fqan))


def dn_pattern_entry(text: str) -> BanEntry:
    """Return a wildcard DN ban; BadInputError unless a whole RDN leads it.

    The literal part before the first ``*`` must hold at least one complete
    RDN, so that no entry (``*``, ``/DC=*``) can ban every person at once.
    """
    prefix = text[: text.index("*")]
    cut = prefix.rfind("/")
    if not text.startswith("/") or cut <= 0:
        raise BadInputError(
            f"Wildcard DN {quote_input(text)} must start with at least one "
            "complete RDN, such as '/DC=org/DC=example/*'."
        )
    parse_dn(prefix[:cut], strip_proxy=False)
    return BanEntry(DN_PATTERN, text, _pattern_key(text))


def fqan_pattern_entry(text: str) -> BanEntry:
    """Return a wildcard FQAN ban; BadInputError unless the VO starts literally."""
    if not text.startswith("/") or text[1:2] in ("", "*", "/"):
        raise BadInputError(
            f"Wildcard FQAN {quote_input(text)} must start with '/' and a VO "
            "name, such as '/dteam*'."
        )
    if len(text) > 1024 or not text.isprintable() or " " in text:
        raise BadInputError(f"Wildcard FQAN {quote_input(text)} is not usable.")
    return BanEntry(FQAN_PATTERN, text, text)


def _pattern_key(text: str) -> str:
    # Attribute names are canonical and a multi-valued RDN's pairs sorted,
    # as in identity keys; an RDN holding a '*' keeps its written order,
    # since the star may stand for more than one pair.
    parts = []
    for segment in text.split("/"):
        pairs = [_canonical_pair(pair) for pair in segment.split("+")]
        if len(pairs) > 1 and "*" not in segment:
            pairs.sort()
        parts.append("+".join(name + value for name, value in pairs))
    return fold("/".join(parts))


def _canonical_pair(pair: str) -> tuple[str, str]:
    name, equals, value = pair.partition("=")
    if equals and "*" not in name:
        name = _canonical_attribute(name)
    return name, equals + value


@lru_cache(maxsize=256)
def _canonical_attribute(name: str) -> str:
    try:
        return parse_dn(f"/{name}=x", strip_proxy=False).rdns[0][0][0]
    except PoolmgrError:
        return name


def fold(text: str) -> str:
    """Return text case-folded and NFC-normalised, as wildcard DN bans compare."""
    return unicodedata.normalize("NFC", text.casefold())


def glob_match(pattern: str, text: str) -> bool:
    """Return whether text matches pattern, where only ``*`` is special.

    No backtracking: the literal pieces between stars are found left to
    right with str.find, which is exact for star-only patterns, so a hostile
    DN cannot make a match slow.
    """
    pieces = pattern.split("*")
    if len(pieces) == 1:
        return pattern == text
    first, last = pieces[0], pieces[-1]
    if len(text) < len(first) + len(last):
        return False
    if not (text.startswith(first) and text.endswith(last)):
        return False
    position, end = len(first), len(text) - len(last)
    for piece in pieces[1:-1]:
        found = text.find(piece, position, end)
        if found < 0:
            return False
        position = found + len(piece)
    return True


# Changes.

VERSION = select(BanState.version).where(BanState.id == 1)


def lock_bans(session: Session) -> None:
    """Serialise ban changes: lock the ban_state row (SQLite: BEGIN IMMEDIATE)."""
    if session.get_bind().dialect.name != "sqlite":
        session.execute(VERSION.with_for_update())


def bump_version(session: Session, now: datetime) -> None:
    """Give ban_state a new version, so that every mapper reloads its list."""
    version = uuid.uuid4().hex
    result = session.execute(
        update(BanState).where(BanState.id == 1).values(version=version, changed_at=now)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        session.add(BanState(id=1, version=version, changed_at=now))
        session.flush()


def add_ban(
    session: Session, entry: BanEntry, *, reason: str, actor: str, now: datetime
) -> tuple[Ban, bool]:
    """Ban by hand; return (the ban in force, whether it is new).

    Raises BadInputError without a reason. A person already banned by hand
    keeps their ban unchanged; a source ban on them does not count, as hand
    bans and source bans are kept apart.
    """
    reason = check_reason(reason)
    lock_bans(session)
    existing = _active(session, HAND, entry.key_hash)
    if existing is not None:
        return existing, False
    ban = Ban(
        kind=entry.kind,
        entry=entry.entry,
        key=entry.key,
        key_hash=entry.key_hash,
        origin=HAND,
        reason=reason,
        created_at=now,
        created_by=actor,
        active=1,
    )
    session.add(ban)
    session.flush()
    bump_version(session, now)
    frozen = len(frozen_leases(session, {ban.id}))
    record_ban_event(session, "ban_added", ban, actor=actor, frozen=frozen)
    return ban, True


def lift_ban(
    session: Session, entry: BanEntry, *, reason: str, actor: str, now: datetime
) -> Ban:
    """Lift the hand ban on entry; return it.

    Raises NotFoundError when no hand ban matches, and PolicyError when only
    a central list bans it (a sync of that source has to drop it).
    """
    reason = check_reason(reason)
    lock_bans(session)
    ban = _active(session, HAND, entry.key_hash)
    if ban is None:
        sources = source_origins_of(session, entry.key_hash)
        if sources:
            raise PolicyError(
                f"{quote_input(entry.entry)} is banned {origin_text(sources[0])}, "
                "not by hand; it stays banned until that list drops it."
            )
        raise NotFoundError(f"No hand ban on {quote_input(entry.entry)}.")
    end_ban(session, ban, actor=actor, reason=reason, now=now)
    return ban


def end_ban(
    session: Session, ban: Ban, *, actor: str, reason: str, now: datetime
) -> None:
    """Lift one ban in force, record it, and give ban_state a new version."""
    thawed = len(frozen_leases(session, {ban.id}))
    mark_lifted(ban, actor=actor, reason=reason, now=now)
    session.flush()
    bump_version(session, now)
    record_ban_event(session, "ban_lifted", ban, actor=actor, frozen=thawed)


def mark_lifted(
    ban: Ban, *, actor: str, reason: str, now: datetime, sync_id: int | None = None
) -> None:
    """Set a ban's lifted fields; the caller flushes, bumps and records."""
    ban.lifted_at, ban.lifted_by, ban.lift_reason = now, actor, reason
    ban.removed_sync_id, ban.active = sync_id, None


def record_ban_event(
    session: Session, kind: str, ban: Ban, *, actor: str, frozen: int
) -> None:
    """Write the event (and syslog line) of a ban added or lifted.

    frozen counts the open leases the ban freezes (or froze until lifted).
    """
    lifted = ban.lifted_at is not None
    events.record(
        session,
        kind,
        at=ban.lifted_at if lifted else ban.created_at,
        actor=actor,
        reason=ban.lift_reason if lifted else ban.reason,
        dn=ban.entry if ban.kind.startswith(DN) else None,
        entry=ban.entry,
        ban_kind=ban.kind,
        origin=ban.origin,
        ban_id=ban.id,
        frozen_leases=frozen or None,
    )


def _active(session: Session, origin: str, digest: str) -> Ban | None:
    return session.scalars(
        select(Ban).where(Ban.origin == origin, Ban.key_hash == digest, Ban.active == 1)
    ).first()


def source_origins_of(session: Session, digest: str) -> list[str]:
    """Return the sources whose bans in force have this key hash."""
    return list(
        session.scalars(
            select(Ban.origin)
            .where(Ban.key_hash == digest, Ban.active == 1, Ban.origin != HAND)
            .order_by(Ban.origin)
        )
    )


def parse_entry(text: str, *, fqan: bool) -> BanEntry:
    """Return the hand-entered ban for a DN or (fqan=True) an FQAN; literal."""
    return fqan_entry(text) if fqan else dn_entry(text)


# Frozen leases.


def frozen_pairs(
    session: Session, ban_ids: set[int] | None = None
) -> Iterator[tuple[int, BanHit]]:
    """Yield (open lease id, ban in force freezing it), of ban_ids or of all.

    A lease is frozen while a DN ban or DN pattern ban matches its holder;
    a lease matched by several bans is yielded once for each. FQAN bans
    refuse a role but freeze nobody's leases.
    """
    exact = (
        select(Lease.id, Ban.id, Ban.kind, Ban.entry, Ban.origin)
        .join(Identity, Identity.id == Lease.identity_id)
        .join(Ban, Ban.key_hash == Identity.key_hash)
        .where(Lease.open_marker == 1, Ban.active == 1, Ban.kind == DN)
        .order_by(Ban.id)
    )
    if ban_ids is not None:
        exact = exact.where(Ban.id.in_(ban_ids))
    for lease_id, ban_id, kind, entry, origin in session.execute(exact):
        yield lease_id, BanHit(ban_id, kind, entry, origin)
    patterns = _dn_patterns(session, ban_ids)
    if patterns:
        for lease_id, key in session.execute(_OPEN_HOLDER_KEYS):
            subject = fold(key)
            for pattern, hit in patterns:
                if glob_match(pattern, subject):
                    yield lease_id, hit


def frozen_leases(
    session: Session, ban_ids: set[int] | None = None
) -> dict[int, BanHit]:
    """Return open lease id -> the first ban (of ban_ids, or any) freezing it."""
    frozen: dict[int, BanHit] = {}
    for lease_id, hit in frozen_pairs(session, ban_ids):
        frozen.setdefault(lease_id, hit)
    return frozen


def frozen_counts(session: Session) -> dict[int, int]:
    """Return ban id -> how many open leases that ban freezes now."""
    return dict(Counter(hit.ban_id for _, hit in frozen_pairs(session)))


def frozen_accounts(session: Session) -> dict[int, BanHit]:
    """Return account id -> ban, for every account whose open lease is frozen."""
    leases = frozen_leases(session)
    if not leases:
        return {}
    rows = session.execute(
        select(Lease.id, Lease.account_id).where(Lease.id.in_(list(leases)))
    )
    return {account_id: leases[lease_id] for lease_id, account_id in rows}


def _dn_patterns(
    session: Session, ban_ids: set[int] | None
) -> list[tuple[str, BanHit]]:
    stmt = select(Ban.key, Ban.id, Ban.kind, Ban.entry, Ban.origin).where(
        Ban.active == 1, Ban.kind == DN_PATTERN
    )
    if ban_ids is not None:
        stmt = stmt.where(Ban.id.in_(ban_ids))
    return [
        (key, BanHit(ban_id, kind, entry, origin))
        for key, ban_id, kind, entry, origin in session.execute(stmt)
    ]


_OPEN_HOLDER_KEYS = (
    select(Lease.id, Identity.key)
    .join(Identity, Identity.id == Lease.identity_id)
    .where(Lease.open_marker == 1)
)


def count_active(session: Session, origin: str) -> int:
    """Return how many bans of origin are in force."""
    stmt = select(func.count()).where(Ban.origin == origin, Ban.active == 1)
    return session.scalar(stmt) or 0
