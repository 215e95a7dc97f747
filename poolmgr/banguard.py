"""The ban check on the mapping hot path.

Every mapping, from the CLI or the service and in every mode, is checked
before anything reads or writes a lease. The ban list is cached in memory
together with the ``ban_state`` version it was read at; each request reads
that version (one primary-key read) and reloads the list when it changed,
so no decision made on an old list survives a change, and a ban reaches a
running service at its very next mapping (F12). A configured ban source
that has never been read makes every mapping fail closed with
BAN_LIST_UNAVAILABLE: explicit, not a silent "everyone banned".

A refusal writes no lease and touches no last use. It is logged (WARNING)
and recorded as a ``mapping_refused`` event in a small transaction of its
own, which no lease write shares. To keep a flood of refused requests from
filling the event table, each process records at most one refusal per
person (or per unread source) every REFUSAL_INTERVAL seconds; the next
record carries how many refusals went unrecorded in between, and those are
logged at DEBUG.
"""

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from poolmgr import events
from poolmgr.bans import (
    DN,
    DN_PATTERN,
    FQAN,
    FQAN_PATTERN,
    VERSION,
    BanHit,
    fold,
    glob_match,
)
from poolmgr.db import reading, unit_of_work
from poolmgr.dn import DistinguishedName, quote_input
from poolmgr.errors import BanListUnavailableError, BannedError, PoolmgrError
from poolmgr.fqan import Fqan
from poolmgr.identities import X509, key_hash
from poolmgr.models import Ban, BanSync
from poolmgr.settings import Settings
from poolmgr.timeutil import utcnow

logger = logging.getLogger(__name__)

REFUSAL_INTERVAL = 600.0


@dataclass(frozen=True)
class BanList:
    """Every ban in force and the configured sources never read, at a version."""

    version: str | None
    dns: dict[str, BanHit]
    dn_patterns: tuple[tuple[str, BanHit], ...]
    fqans: dict[str, BanHit]
    fqan_patterns: tuple[tuple[str, BanHit], ...]
    unread: tuple[str, ...]

    def match(
        self,
        dn: DistinguishedName,
        fqans: Sequence[Fqan],
        written: DistinguishedName | None = None,
    ) -> BanHit | None:
        """Return the first ban matching the person or any of their FQANs.

        written is the DN as the request wrote it, before proxy RDNs were
        stripped, when that differs from dn. Exact entries cost one dict
        lookup; wildcard entries are tried one by one, so sites should keep
        them few.
        """
        hit = self._match_dn(dn)
        # A trailing numeric CN may be a proxy's that the caller left on (the
        # service takes DNs as end-entity subjects), or the person's own that
        # stripping against an issuer cut off as a proxy's: neither may hide
        # a ban, so the DN as written and each cut of it are tried too.
        full = dn if written is None else written
        for base in (full, *full.proxy_bases()) if hit is None else ():
            hit = None if base == dn else self._match_dn(base)
            if hit is not None:
                break
        for fqan in fqans if hit is None else ():
            hit = self._match_fqan(str(fqan))
            if hit is not None:
                break
        return hit

    def _match_dn(self, dn: DistinguishedName) -> BanHit | None:
        hit = self.dns.get(key_hash(X509, dn.key))
        if hit is None and self.dn_patterns:
            subject = fold(dn.key)
            hit = next((h for p, h in self.dn_patterns if glob_match(p, subject)), None)
        return hit

    def _match_fqan(self, text: str) -> BanHit | None:
        hit = self.fqans.get(text)
        if hit is None:
            hit = next((h for p, h in self.fqan_patterns if glob_match(p, text)), None)
        return hit


def load_ban_list(conn: Connection | Session, settings: Settings) -> BanList:
    """Read every ban in force and which configured sources were never read."""
    version = conn.execute(VERSION).scalar()
    exact: dict[str, dict[str, BanHit]] = {DN: {}, FQAN: {}}
    patterns: dict[str, list[tuple[str, BanHit]]] = {DN_PATTERN: [], FQAN_PATTERN: []}
    for row in conn.execute(_ACTIVE):
        hit = BanHit(row.id, row.kind, row.entry, row.origin)
        if row.kind in exact:
            exact[row.kind].setdefault(row.key_hash if row.kind == DN else row.key, hit)
        else:
            patterns[row.kind].append((row.key, hit))
    read = set(conn.execute(_READ_SOURCES).scalars())
    return BanList(
        version=version,
        dns=exact[DN],
        dn_patterns=tuple(patterns[DN_PATTERN]),
        fqans=exact[FQAN],
        fqan_patterns=tuple(patterns[FQAN_PATTERN]),
        unread=tuple(s.name for s in settings.ban_sources if s.name not in read),
    )


_ACTIVE = (
    select(Ban.id, Ban.kind, Ban.entry, Ban.key, Ban.key_hash, Ban.origin)
    .where(Ban.active == 1)
    .order_by(Ban.id)
)
_READ_SOURCES = select(BanSync.source).where(BanSync.status == "accepted").distinct()


class BanGuard:
    """Refuses banned requests for one database; safe to share between threads."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._list: BanList | None = None
        self._limit = RefusalLimiter(REFUSAL_INTERVAL)

    def check(
        self,
        dn: DistinguishedName,
        fqans: Sequence[Fqan],
        conn: Connection | None = None,
        *,
        version: str | None = None,
        written: DistinguishedName | None = None,
    ) -> None:
        """Raise BannedError or BanListUnavailableError; otherwise return.

        conn, when given, is the caller's read connection (one checkout less
        on the hot path), and version the ban_state version the caller just
        read on it, if it did; written is the DN before proxy stripping. A
        person matched by a ban is refused as banned even while a source is
        unread; anybody else is refused while any configured source has
        never been read.
        """
        if conn is None:
            with reading(self.engine) as own:
                bans = self.current(own)
        else:
            bans = self.current(conn, version)
        hit = bans.match(dn, fqans, written)
        if hit is not None:
            self._refuse_banned(dn, fqans, hit)
        if bans.unread:
            self._refuse_unread(dn, bans.unread)

    def current(self, conn: Connection, version: str | None = None) -> BanList:
        """Return the cached ban list, reloaded when its version changed.

        version is the ban_state version if the caller has read it already.
        """
        if version is None:
            version = conn.execute(VERSION).scalar()
        cached = self._list
        if cached is not None and version is not None and cached.version == version:
            return cached
        fresh = load_ban_list(conn, self.settings)
        self._list = fresh
        return fresh

    def _refuse_banned(
        self, dn: DistinguishedName, fqans: Sequence[Fqan], hit: BanHit
    ) -> None:
        fields: dict[str, object] = {
            "dn": dn.slash(),
            "reason": "banned",
            "entry": hit.entry,
            "ban_kind": hit.kind,
            "origin": hit.origin,
            "ban_id": hit.ban_id,
            "fqans": ",".join(map(str, fqans)) or None,
        }
        self._record(key_hash(X509, dn.key), fields)
        raise BannedError(f"{quote_input(dn.slash())} is refused: {hit.describe()}.")

    def _refuse_unread(self, dn: DistinguishedName, unread: tuple[str, ...]) -> None:
        names = ", ".join(unread)
        fields: dict[str, object] = {
            "dn": dn.slash(),
            "reason": "ban list unavailable",
            "sources": names,
        }
        self._record(f"unread:{names}", fields)
        lists, have, it = (
            ("Ban list", "has", "it")
            if len(unread) == 1
            else ("Ban lists", "have", "each")
        )
        raise BanListUnavailableError(
            f"{lists} {names} {have} never been read, so every mapping is refused "
            f"until 'poolmgr bans sync' succeeds for {it} ({quote_input(dn.slash())})."
        )

    def _record(self, key: str, fields: dict[str, object]) -> None:
        allowed, suppressed = self._limit.allow(key)
        line = events.format_fields("mapping_refused", fields)
        if not allowed:
            logger.debug("%s (recorded recently, not again)", line)
            return
        logger.warning("%s", line)
        try:
            with unit_of_work(self.engine) as session:
                events.record(
                    session,
                    "mapping_refused",
                    at=utcnow(),
                    suppressed=suppressed or None,
                    **fields,
                )
        except (DBAPIError, PoolmgrError) as exc:
            # The refusal stands whether or not its record could be written.
            logger.error("refusal not recorded: %s", str(exc)[:200])


class RefusalLimiter:
    """Lets one refusal record per key through every interval seconds."""

    def __init__(self, interval: float, max_keys: int = 10_000) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._seen: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, now: float | None = None) -> tuple[bool, int]:
        """Return (whether to record, refusals not recorded since the last)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            last = self._seen.get(key)
            if last is not None and now - last[0] < self.interval:
                self._seen[key] = (last[0], last[1] + 1)
                return False, 0
            if len(self._seen) >= self.max_keys:
                self._forget(now)
            self._seen[key] = (now, 0)
            return True, last[1] if last else 0

    def _forget(self, now: float) -> None:
        # A flood of distinct DNs must not grow memory without bound; past
        # the limit, keys whose interval is over are dropped, or all of them.
        fresh = {k: v for k, v in self._seen.items() if now - v[0] < self.interval}
        self._seen = fresh if len(fresh) < self.max_keys else {}
