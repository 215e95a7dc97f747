"""The lease engine: map a person to a pool account, and keep the lease.

A returning person gets the account of their open lease in the first
matching pool that holds one; a new person gets the free account that has
been free longest (never-used accounts first), and never one whose quiet
period is still running. Each mapping records last use; to keep returning
persons from being write-bound, a use within ``last_use_resolution``
seconds of the recorded one is not written again, so a crash loses at most
that window (60 s by default), far below any quiet period.
"""

import logging
import random
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    Exists,
    Float,
    Integer,
    Row,
    Select,
    and_,
    bindparam,
    case,
    exists,
    false,
    func,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql import FromClause
from sqlalchemy.types import String, Text

from poolmgr import events, nss
from poolmgr.banguard import BanGuard
from poolmgr.bans import VERSION
from poolmgr.db import UTCDateTime, is_conflict, reading, unit_of_work
from poolmgr.dn import DistinguishedName, parse_dn
from poolmgr.errors import (
    ContentionError,
    NoLeaseError,
    NoPoolMatchError,
    PoolExhaustedError,
)
from poolmgr.fqan import Fqan, parse_fqan, parse_rule
from poolmgr.identities import X509, key_hash
from poolmgr.models import Account, Event, Identity, Lease, Pool
from poolmgr.routing import Choice, Route, Router
from poolmgr.settings import Settings
from poolmgr.timeutil import Duration, format_time, utcnow

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_ATTEMPTS = 25
_BATCH = 16


@dataclass(frozen=True)
class MapRequest:
    """What a caller asks: the subject DN, its FQANs in order, and the mode."""

    dn: str
    fqans: tuple[str, ...] = ()
    issuer: str | None = None
    verify: bool = False


@dataclass(frozen=True)
class Mapping:
    """The answer: the account, its uid and gids, and the lease behind it."""

    account: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    pool: str
    dn: str
    display: str
    fqan: str | None
    lease_id: int
    new: bool

    @property
    def secondary_gids(self) -> tuple[int, ...]:
        return tuple(g for g in self.groups if g != self.gid)

    @property
    def lease_key(self) -> str:
        return f"{self.pool}:{self.lease_id}"


@dataclass(frozen=True)
class _Parsed:
    dn: DistinguishedName
    fqans: tuple[Fqan, ...]
    request: MapRequest
    written: DistinguishedName


class _Held(NamedTuple):
    """An open lease as the hot path reads it: one row, no ORM objects."""

    lease_id: int
    pool_id: int
    last_used_at: datetime
    account: str
    uid: int
    pool: str
    gid: int
    identity_id: int
    display_lossy: bool


class _Person(NamedTuple):
    """A known person's identity row, as the hot path reads it."""

    id: int
    display: str
    display_lossy: bool


class _Seen(NamedTuple):
    """What the read before a write found: the person (None: unknown) and lease."""

    person: _Person | None
    held: _Held | None


class Mapper:
    """Maps requests on one database; safe to share between threads."""

    def __init__(
        self, engine: Engine, settings: Settings, *, router_ttl: float = 0.0
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.quiet: Duration = settings.quiet
        self.resolution = timedelta(seconds=settings.last_use_resolution)
        self._router_ttl = router_ttl
        self._router: tuple[float, Router] | None = None
        self.bans = BanGuard(engine, settings)
        self._queries: dict[str, _Queries] = {}
        self._create_person: Select | None = None
        self._lease_statements: dict[bool, Select] = {}

    def map(self, request: MapRequest, now: datetime | None = None) -> Mapping:
        """Return the mapping for request, creating or refreshing its lease.

        Raises BadInputError, NoPoolMatchError, PoolExhaustedError,
        NoLeaseError (verify mode) or ContentionError.
        """
        parsed = parse_request(request)
        now = now or utcnow()
        with reading(self.engine) as conn:
            # One round trip reads the ban list's version and the person's
            # open leases; the ban check comes before any lease is used or
            # written, in every mode.
            rows = _read_person(conn, parsed.dn)
            self.bans.check(
                parsed.dn,
                parsed.fqans,
                conn,
                version=rows[0][0],
                written=parsed.written,
            )
            choice = self._choose(conn, parsed)
            seen = _seen_in(rows, choice)
            held = seen.held
            if held is not None and (
                request.verify
                or (
                    now - held.last_used_at < self.resolution and not held.display_lossy
                )
            ):
                return self._result(held, choice, parsed, new=False)
            if request.verify:
                raise NoLeaseError(
                    f"No open lease for {parsed.dn.slash()!r} in "
                    f"{_pool_list(choice.routes)}."
                )
            trusted: list[_Seen] = [seen]
            if conn.dialect.name == "postgresql":
                try:
                    mapping = self._map_at_once(conn, parsed, choice, seen, now)
                except _Retry:
                    trusted = []
                else:
                    if mapping is not None:
                        return mapping
        # The first attempt on a server database writes on what was just
        # read, saving the round trips of reading it again: the constraints
        # and the guarded lease update catch a concurrent change, and every
        # later attempt reads afresh. SQLite writers hold the write lock, so
        # there the read inside the unit of work is exact and costs nothing.
        if self.engine.dialect.name == "sqlite":
            trusted = []
        return retry_conflicts(
            self.engine,
            lambda session: self._map_writing(
                session, parsed, choice, now, trusted.pop() if trusted else None
            ),
        )

    def _map_at_once(
        self,
        conn: Connection,
        parsed: _Parsed,
        choice: Choice,
        seen: _Seen,
        now: datetime,
    ) -> Mapping | None:
        """On PostgreSQL, write the mapping in one statement if it takes one.

        conn runs each statement as its own transaction. Recording last use
        is one guarded update; a new lease in the first matching pool is one
        statement that also creates a new person's identity and records the
        event (with check_nss, in a transaction that commits only once the
        account resolves). Returns None, having changed nothing, where the
        general path must decide (a lowercased display to restore, no
        account in the first pool, NSS rejecting the account); raises
        _Retry, having changed nothing, when a concurrent change made what
        was read stale.
        """
        held = seen.held
        if held is not None:
            if held.display_lossy:
                return None
            touched = conn.execute(
                _TOUCH_OPEN_LEASE, {"lease_id": held.lease_id, "now": now}
            ).rowcount
            if not touched:
                raise _Retry("the lease ended while it was being used")
            return self._result(
                held._replace(last_used_at=max(held.last_used_at, now)),
                choice,
                parsed,
                new=False,
            )
        person = seen.person
        if person is not None and person.display_lossy:
            return None
        return self._lease_at_once(conn, parsed, choice, person, now)

    def _lease_at_once(
        self,
        conn: Connection,
        parsed: _Parsed,
        choice: Choice,
        person: _Person | None,
        now: datetime,
    ) -> Mapping | None:
        """Lease the first pool's best free account in one statement."""
        route = choice.routes[0]
        fqan = str(choice.fqan) if choice.fqan else None
        display = person.display if person else parsed.dn.slash()
        row, logged = events.prepare(
            "lease_started",
            pool=route.pool,
            account="",
            identity_id=None,
            dn=display,
            lease_id=None,
            fqan=fqan,
            rule=route.rule.text,
            at=now,
        )
        params = {
            "v_pool_id": route.pool_id,
            "cutoff": self.quiet.safe_cutoff(now),
            "v_pool": route.pool,
            "v_fqan": fqan,
            "v_now": now,
            "v_dn": display,
            "v_details": row["details"],
        }
        if person is None:
            params |= {
                "v_kind": X509,
                "v_key": parsed.dn.key,
                "v_key_hash": key_hash(X509, parsed.dn.key),
                "v_display": display,
            }
        else:
            params |= {"v_identity_id": person.id}
        statement = self._lease_statement(new_person=person is None)
        try:
            if self.settings.check_nss:
                started = _lease_if_resolvable(conn, statement, params)
            else:
                started = conn.execute(statement, params).first()
        except DBAPIError as exc:
            if not is_conflict(exc):
                raise
            # A concurrent caller got there first, or (for a new person) no
            # account was left to lock after all: nothing was written.
            logger.debug("one-statement lease refused: %s", exc.orig)
            raise _Retry("a concurrent change") from exc
        if started is None:
            return None
        logged |= {
            "account": started.name,
            "identity_id": started.identity_id,
            "lease_id": started.lease_id,
        }
        events.emit(logging.INFO, "lease_started", logged)
        held = _Held(
            started.lease_id,
            route.pool_id,
            now,
            started.name,
            started.uid,
            route.pool,
            route.gid,
            started.identity_id,
            False,
        )
        return self._result(held, choice, parsed, new=True)

    def _lease_statement(self, *, new_person: bool) -> Select:
        """The PostgreSQL statement that leases the pool's best free account.

        The account is the one the general path would offer first: the
        first never-used one, else the rested one free longest, its quiet
        period checked exactly in SQL. For a new person the identity is
        inserted first and the account read depends on its id, so that
        concurrent first mappings of one person meet at the unique key
        before any of them locks an account; the identity is inserted only
        while the pool has such an account, and if none is left to lock by
        then, the lease's missing account fails the whole statement. For a
        known person the statement writes nothing when there is no account.
        Either way the lease, the account's state and the lease_started
        event are written together.
        """
        cached = self._lease_statements.get(new_person)
        if cached is not None:
            return cached
        holder: Any
        driver: FromClause
        if new_person:
            # Each as the first row of its ordered query: read from the
            # index, never a scan of the pool's leased accounts.
            guard = or_(
                *(
                    query.with_only_columns(Account.id)
                    .limit(_ONE)
                    .scalar_subquery()
                    .is_not(None)
                    for query in self._exact_candidates(null())
                )
            )
            identity = (
                insert(Identity)
                .from_select(
                    list(_IDENTITY_VALUES),
                    select(*_IDENTITY_VALUES.values()).where(guard),
                )
                .returning(Identity.id)
                .cte("new_identity")
            )
            holder, driver = identity.c.id, identity
        else:
            holder, driver = _v("identity_id", Integer), _ONE_ROW
        never_used, rested = self._exact_candidates(holder)
        first = _lock_first(never_used).lateral("never_used")
        # Read only when there is no never-used account to take.
        second = _lock_first(rested.where(first.c.id.is_(None))).lateral("rested")
        picked = select(
            holder.label("identity_id"),
            *(
                func.coalesce(first.c[name], second.c[name]).label(name)
                for name in ("id", "name", "uid")
            ),
        ).select_from(driver.outerjoin(first, true()).outerjoin(second, true()))
        if not new_person:
            picked = picked.where(
                or_(first.c.id.is_not(None), second.c.id.is_not(None))
            )
        chosen = picked.cte("chosen")
        lease = {
            **_LEASE_VALUES,
            "identity_id": chosen.c.identity_id,
            "account_id": chosen.c.id,
            "open_account_id": chosen.c.id,
        }
        new_lease = (
            insert(Lease)
            .from_select(list(lease), select(*lease.values()))
            .returning(Lease.id)
            .cte("new_lease")
        )
        leased = (
            update(Account)
            .where(Account.id == chosen.c.id)
            .values(state=literal_column("'leased'", String))
            .cte("leased")
        )
        event = {
            **_EVENT_VALUES,
            "account": chosen.c.name,
            "identity_id": chosen.c.identity_id,
            "lease_id": new_lease.c.id,
        }
        logged = (
            insert(Event)
            .from_select(
                list(event),
                select(*event.values()).select_from(new_lease.join(chosen, true())),
            )
            .cte("logged")
        )
        statement = (
            select(
                new_lease.c.id.label("lease_id"),
                chosen.c.identity_id,
                chosen.c.name,
                chosen.c.uid,
            )
            .select_from(new_lease.join(chosen, true()))
            .add_cte(leased, logged)
        )
        self._lease_statements[new_person] = statement
        return statement

    def router(self, conn: Connection | Session) -> Router:
        """Return the routing table, reloaded after router_ttl seconds."""
        cached = self._router
        if cached is not None and time.monotonic() - cached[0] < self._router_ttl:
            return cached[1]
        router = Router.load(conn)
        self._router = (time.monotonic(), router)
        return router

    def _choose(self, conn: Connection, parsed: _Parsed) -> Choice:
        router = self.router(conn)
        if not parsed.fqans and self.settings.dn_only_pool:
            routes = tuple(_dn_only_routes(conn, self.settings.dn_only_pool))
            choice = Choice(None, routes)
        else:
            choice = router.choose(parsed.fqans, self.settings.any_fqan)
        if not choice.routes:
            raise NoPoolMatchError(_no_match_message(parsed))
        return choice

    def _map_writing(
        self,
        session: Session,
        parsed: _Parsed,
        choice: Choice,
        now: datetime,
        seen: _Seen | None,
    ) -> Mapping:
        """Refresh or start the person's lease; seen: trust this read, if given."""
        conn = session.connection()
        if seen is None:
            seen = _seen_in(_read_person(conn, parsed.dn), choice)
        held = seen.held
        if held is not None:
            if held.display_lossy:
                # The lease came from a lowercased gridmapdir name; the DN as
                # now presented restores its letter case for display (F03).
                conn.execute(
                    _RESTORE_DISPLAY,
                    {"identity_id": held.identity_id, "display": parsed.dn.slash()},
                )
            touched = conn.execute(
                _TOUCH_OPEN_LEASE, {"lease_id": held.lease_id, "now": now}
            ).rowcount
            if not touched:
                # Ended since it was read (by recycling, a ban or an override).
                raise _Retry("the lease ended while it was being used")
            if held.last_used_at < now:
                held = held._replace(last_used_at=now)
            return self._result(held, choice, parsed, new=False)

        first: Sequence[Row[Any]] | None = None
        if seen.person is None and conn.dialect.name == "postgresql":
            person, first = self._create_person_and_lock(
                conn, parsed.dn, now, choice.routes[0]
            )
        else:
            person = _person_for_lease(conn, parsed.dn, now, seen)
        for index, route in enumerate(choice.routes):
            account = self._pick_account(
                conn, route, now, person, first if index == 0 else None
            )
            if account is None:
                continue
            if index:
                logger.warning(
                    "pool exhausted, next rule used pool=%s used=%s dn=%s",
                    choice.routes[0].pool,
                    route.pool,
                    parsed.dn.slash(),
                )
            fqan = str(choice.fqan) if choice.fqan else None
            held = _start_lease(session, conn, person, account, route, fqan, now)
            return self._result(held, choice, parsed, new=True)

        names = tuple(route.pool for route in choice.routes)
        logger.warning(
            "pool exhausted pool=%s tried=%s dn=%s",
            names[0],
            ",".join(names),
            parsed.dn.slash(),
        )
        raise PoolExhaustedError(
            f"Pool {names[0]} has no free account"
            + (f" (also tried {', '.join(names[1:])})" if len(names) > 1 else "")
            + f" for {parsed.dn.slash()!r}"
            + self._unresolvable_note(conn, choice.routes, now, person.id)
            + ".",
            pools=names,
        )

    def _pick_account(
        self,
        conn: Connection,
        route: Route,
        now: datetime,
        person: _Person,
        first: Sequence[Row[Any]] | None = None,
    ) -> Row[Any] | None:
        """Lock and return the best free account of the route's pool, or None.

        On PostgreSQL and MariaDB the candidates are locked with SKIP LOCKED,
        so concurrent callers take different accounts instead of queueing;
        on SQLite the unit of work already holds the write lock (BEGIN
        IMMEDIATE). When every free account is locked by others, the caller
        retries rather than reporting the pool exhausted. first: what the
        first candidate query returned, when it already ran.
        """
        locking = conn.dialect.name != "sqlite"
        params = {
            "v_pool_id": route.pool_id,
            "cutoff": self.quiet.safe_cutoff(now),
            "requester": person.id,
            "v_now": now,
        }
        account = self._first_usable(conn, params, now, lock=locking, first=first)
        # Nothing this caller could lock: if an unlocked read still finds a
        # usable account, another transaction holds it for the moment.
        if (
            account is None
            and locking
            and self._first_usable(conn, params, now, lock=False) is not None
        ):
            raise _Retry("free accounts are locked by concurrent callers")
        return account

    def _first_usable(
        self,
        conn: Connection,
        params: dict[str, Any],
        now: datetime,
        *,
        lock: bool,
        first: Sequence[Row[Any]] | None = None,
    ) -> Row[Any] | None:
        """Return the first usable free account, locked if lock; or None.

        Every row a locking read returns stays locked until commit, so no
        locking read returns more than the one account it offers: a batch
        would hide the pool's last free accounts from every concurrent
        caller while only one of them is leased. The first candidate of each
        query is read and locked at once; only when it is rejected (quiet
        period not quite over, NSS, an override against this person) are
        the next ones read in batches without locks, and each usable one
        then locked by itself.
        """
        dialect = conn.dialect.name
        queries = self._queries.get(dialect)
        if queries is None:
            # PostgreSQL checks the quiet period exactly in SQL, so no
            # account still resting is read only to be rejected here; the
            # other backends read the loose window and reject in Python.
            candidates = (
                self._exact_candidates(bindparam("requester"))
                if dialect == "postgresql"
                else self._candidate_queries(dialect)
            )
            queries = self._queries[dialect] = _Queries.build(
                dialect, candidates, self._free_accounts(bindparam("requester"))
            )
        rejected: set[int] = set()
        for head_query, query in zip(queries.heads, queries.batches, strict=True):
            if lock and not rejected and head_query is not None:
                if first is not None:
                    head, first = first, None
                else:
                    head = conn.execute(head_query, params).all()
                if not head:
                    continue
                if self._is_usable(head[0], now):
                    return head[0]
                rejected.add(head[0].id)
            while True:
                stmt = query
                if rejected:
                    stmt = query.where(Account.id.not_in(rejected))
                batch = conn.execute(stmt, params).all()
                for account in batch:
                    if not self._is_usable(account, now):
                        rejected.add(account.id)
                        continue
                    if not lock:
                        return account
                    # Read without a lock: gone or taken since, it is skipped.
                    locked = conn.execute(
                        queries.by_id, params | {"account_id": account.id}
                    ).first()
                    if locked is not None and self._is_usable(locked, now):
                        return locked
                    rejected.add(account.id)
                if len(batch) < _BATCH:
                    break
        return None

    def _create_person_and_lock(
        self, conn: Connection, dn: DistinguishedName, now: datetime, route: Route
    ) -> tuple[_Person, Sequence[Row[Any]]]:
        """Create a new person's identity and lock the route's first candidate.

        One PostgreSQL statement: the identity insert runs first (the
        candidate read depends on its id), so two first mappings of one
        person still meet at the unique key hash before either locks an
        account. Returns the person and what the never-used query found.
        """
        if self._create_person is None:
            identity = _INSERT_IDENTITY.returning(Identity.id).cte("new_identity")
            never_used = self._candidate_queries("postgresql", identity.c.id)[0]
            candidate = _lock_first(never_used).lateral("free")
            self._create_person = (
                select(identity.c.id.label("new_identity_id"), candidate)
                .select_from(identity)
                .outerjoin(candidate, true())
            )
        display = dn.slash()
        row = conn.execute(
            self._create_person,
            {
                "v_kind": X509,
                "v_key": dn.key,
                "v_key_hash": key_hash(X509, dn.key),
                "v_display": display,
                "v_now": now,
                "v_pool_id": route.pool_id,
            },
        ).one()
        person = _Person(row.new_identity_id, display, False)
        return person, [row] if row.id is not None else []

    @staticmethod
    def _free_accounts(requester: Any) -> Select:
        """Free accounts of pool v_pool_id that no hold keeps back, as candidates."""
        return select(
            *_ACCOUNT_COLUMNS,
            _waived_against(requester).label("waived_for_requester"),
        ).where(
            Account.pool_id == _v("pool_id", Integer),
            Account.state == _FREE,
            # On the row itself: a hold committed between this statement's
            # snapshot and its lock is still seen (see holds.IS_HELD).
            Account.held.is_(false()),
        )

    def _candidate_queries(self, dialect: str, requester: Any = None) -> list[Select]:
        """Return the free-account queries in preference order.

        Never-used accounts first, by number; then accounts whose quiet
        period may be over, the longest free first. Accounts under an
        incident hold are never offered. Parameters: v_pool_id, cutoff (a
        loose bound, checked exactly by _is_usable) and requester, unless
        given as an expression.
        """
        if requester is None:
            requester = bindparam("requester")
        free = self._free_accounts(requester)
        # Both read an index in order and stop at the limit, however many
        # accounts of the pool are leased. PostgreSQL takes its order from
        # ix_accounts_free_order only when last_used_at (NULL in every row)
        # is named in the ORDER BY; MariaDB does so only when it is not, and
        # needs the index named to prefer it over the (pool_id, number) key.
        if dialect in ("mysql", "mariadb"):
            never_used = (
                free.where(Account.last_used_at.is_(None))
                .with_hint(Account, "FORCE INDEX (ix_accounts_free_order)", dialect)
                .order_by(Account.number)
            )
        else:
            never_used = free.where(Account.last_used_at.is_(None)).order_by(
                Account.last_used_at, Account.number
            )
        # The cutoff is loose (see _is_usable); a waived quiet period counts
        # only if the account was not used since, and not for the person
        # whose lease the override ended.
        rested = free.where(
            Account.last_used_at.is_not(None),
            or_(
                Account.last_used_at <= bindparam("cutoff"),
                and_(
                    Account.quiet_waived_at >= Account.last_used_at,
                    ~_waived_against(requester),
                ),
            ),
        ).order_by(Account.free_since, Account.number)
        if dialect in ("mysql", "mariadb"):
            rested = rested.with_hint(
                Account, "FORCE INDEX (ix_accounts_free_since)", dialect
            )
        return [never_used, rested]

    def _exact_candidates(self, requester: Any) -> list[Select]:
        """The candidate queries with the quiet period checked exactly (PostgreSQL).

        An account is rested only if its quiet period is over as
        _quiet_over() has it: the one-statement lease has no Python check
        after it, and the general path reads no account still resting only
        to reject it. Parameters: those of _candidate_queries, and v_now.
        """
        never_used, rested = self._candidate_queries("postgresql", requester)
        over = or_(
            quiet_end(self.quiet, Account.last_used_at) <= _v("now", UTCDateTime()),
            and_(
                Account.quiet_waived_at >= Account.last_used_at,
                ~_waived_against(requester),
            ),
        )
        return [never_used, rested.where(over)]

    def _is_usable(self, account: Row[Any], now: datetime) -> bool:
        if account.last_used_at is not None and not _quiet_over(
            account, self.quiet, now
        ):
            return False
        if self.settings.check_nss:
            problem = nss.account_problem(account.name, account.uid)
            if problem is not None:
                logger.warning("account skipped: %s", problem.message)
                return False
        return True

    def _unresolvable_note(
        self, conn: Connection, routes: Sequence[Route], now: datetime, requester: int
    ) -> str:
        """Say which free accounts NSS kept back, for the exhaustion message.

        Only on the failure path: when every account a pool could give is
        skipped because the host cannot resolve it, "no free account" alone
        would send the operator looking for leases that are not there.
        """
        if not self.settings.check_nss:
            return ""
        names = []
        for route in routes:
            params = {
                "v_pool_id": route.pool_id,
                "cutoff": self.quiet.safe_cutoff(now),
                "requester": requester,
            }
            for query in self._candidate_queries(conn.dialect.name):
                for account in conn.execute(query, params):
                    if _quiet_over(account, self.quiet, now) and nss.account_problem(
                        account.name, account.uid
                    ):
                        names.append(account.name)
        if not names:
            return ""
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        return (
            f"; {len(names)} free account(s) do not resolve on this host "
            f"({shown}): create them, or set check_nss: false"
        )

    def _result(
        self, held: _Held, choice: Choice, parsed: _Parsed, *, new: bool
    ) -> Mapping:
        router = self._router[1] if self._router else Router(())
        secondary = router.secondary_gids(parsed.fqans, choice.fqan)
        groups = (held.gid, *(g for g in secondary if g != held.gid))
        return Mapping(
            account=held.account,
            uid=held.uid,
            gid=held.gid,
            groups=groups,
            pool=held.pool,
            dn=parsed.dn.slash(),
            display=parsed.request.dn,
            fqan=str(choice.fqan) if choice.fqan else None,
            lease_id=held.lease_id,
            new=new,
        )


# Constants of the candidate queries are written into their SQL, not bound:
# a prepared statement's generic plan then knows them, so PostgreSQL plans a
# query once per connection instead of on every execution.
_ONE = literal_column("1", Integer)
_FREE = literal_column("'free'", String)
_ACCOUNT_COLUMNS = (
    Account.id,
    Account.name,
    Account.uid,
    Account.number,
    Account.last_used_at,
    Account.quiet_waived_at,
)


def _waived_against(requester: Any) -> Exists:
    """Whether an override waived the account's quiet period against requester.

    An override waives the quiet period for everybody except the person
    whose lease it ended: they get a different account.
    """
    return (
        exists()
        .where(
            Lease.account_id == Account.id,
            Lease.identity_id == requester,
            Lease.ended_at == Account.quiet_waived_at,
        )
        .correlate_except(Lease)
    )


def _lease_if_resolvable(
    conn: Connection, statement: Select, params: dict[str, Any]
) -> Row[Any] | None:
    """Run the lease statement on conn (autocommit) in a transaction of its
    own, committed only if the account resolves on this host; else None."""
    conn.exec_driver_sql("BEGIN")
    try:
        started = conn.execute(statement, params).first()
        # An account NSS rejects is left to the general path, which skips
        # it and says so in the log.
        keep = started is not None and not nss.account_problem(
            started.name, started.uid
        )
    except BaseException:
        with suppress(DBAPIError):
            conn.exec_driver_sql("ROLLBACK")
        raise
    conn.exec_driver_sql("COMMIT" if keep else "ROLLBACK")
    return started if keep else None


def _lock_first(query: Select) -> Select:
    """The query's first row only, locked unless another caller holds it."""
    return query.with_for_update(skip_locked=True).limit(_ONE)


@dataclass(frozen=True)
class _Queries:
    """The candidate queries of one dialect, in the forms _first_usable runs."""

    heads: list[Select | None]  # each query's first candidate, read and locked
    batches: list[Select]  # each query in batches, no lock
    by_id: Select  # one account by account_id, if still free; locked

    @classmethod
    def build(cls, dialect: str, queries: list[Select], free: Select) -> "_Queries":
        # InnoDB keeps a locking read's lock on every row it scanned, also
        # on rows its WHERE then rejected. Never-used accounts are rejected
        # only when held, and then nobody may have them; a rested account
        # can be rejected for this requester alone (an override against
        # them), so on MariaDB rested accounts are only locked one by one.
        lockable = [True, dialect not in ("mysql", "mariadb")]
        return cls(
            heads=[
                _lock_first(query) if safe else None
                for query, safe in zip(queries, lockable, strict=True)
            ],
            batches=[
                query.limit(literal_column(str(_BATCH), Integer)) for query in queries
            ],
            by_id=free.where(Account.id == bindparam("account_id")).with_for_update(
                skip_locked=True
            ),
        )


class _Retry(Exception):
    """Internal: the unit of work must run again."""


def parse_request(request: MapRequest) -> _Parsed:
    """Parse and validate the DN and every FQAN; raise BadInputError."""
    dn = parse_dn(request.dn, request.issuer)
    fqans = []
    for text in request.fqans:
        fqan, warnings = parse_fqan(text)
        for warning in warnings:
            logger.info("fqan warning: %s", warning)
        fqans.append(fqan)
    # The ban check also tries the DN as written: stripping against an
    # issuer may cut a numeric CN that is the person's own.
    written = parse_dn(request.dn, strip_proxy=False)
    return _Parsed(dn, tuple(fqans), request, written)


def retry_conflicts(engine: Engine, work: Callable[[Session], T]) -> T:
    """Run work in a writing unit of work, again after a conflict; bounded.

    Raises ContentionError when every attempt clashed with other writers.
    """
    for attempt in range(MAX_ATTEMPTS):
        try:
            with unit_of_work(engine) as session:
                return work(session)
        except _Retry:
            pass
        except DBAPIError as exc:
            if not is_conflict(exc):
                raise
            logger.debug("conflict, retrying attempt=%d: %s", attempt, exc.orig)
        time.sleep(random.uniform(0.001, 0.004 * (attempt + 1)))
    raise ContentionError(
        f"The mapping clashed with concurrent writers {MAX_ATTEMPTS} times; try again."
    )


def _read_person(conn: Connection, dn: DistinguishedName) -> Sequence[Sequence[Any]]:
    """Read the ban list's version, the person and their open leases at once.

    One indexed query; at least one row, whose identity columns are NULL
    for a person never seen.
    """
    return conn.execute(
        _BAN_VERSION_PERSON_AND_OPEN_LEASES, {"key_hash": key_hash(X509, dn.key)}
    ).all()


def _seen_in(rows: Sequence[Sequence[Any]], choice: Choice) -> _Seen:
    """Return the person in rows and their open lease in the first pool of choice."""
    first = rows[0]
    person = _Person(*first[1:4]) if first[1] is not None else None
    order = {route.pool_id: i for i, route in enumerate(choice.routes)}
    matching = [row for row in rows if row[4] is not None and row[5] in order]
    if not matching:
        return _Seen(person, None)
    row = min(matching, key=lambda row: order[row[5]])
    return _Seen(person, _Held._make((*row[4:], row[1], row[3])))


# The lease columns of _Held; its identity columns come from the person.
_LEASE_COLUMNS = (
    Lease.id,
    Lease.pool_id,
    Lease.last_used_at,
    Account.name,
    Account.uid,
    Pool.name,
    Pool.gid,
)
# One row per open lease of the person (one row of NULLs if none), each with
# the ban list's version and the person's identity (NULLs if unknown). The
# version is a subquery: a database without its ban_state row still answers.
_ONE_ROW = select(literal(1).label("one")).subquery("one_row")
_BAN_VERSION_PERSON_AND_OPEN_LEASES = (
    select(
        VERSION.scalar_subquery(),
        Identity.id,
        Identity.display,
        Identity.display_lossy,
        *_LEASE_COLUMNS,
    )
    .select_from(_ONE_ROW)
    .outerjoin(Identity, Identity.key_hash == bindparam("key_hash"))
    .outerjoin(Lease, and_(Lease.identity_id == Identity.id, Lease.open_marker == 1))
    .outerjoin(Account, Account.id == Lease.account_id)
    .outerjoin(Pool, Pool.id == Lease.pool_id)
)


def _person_for_lease(
    conn: Connection, dn: DistinguishedName, now: datetime, seen: _Seen
) -> _Person:
    """Return the person's identity as seen, creating it for a person never seen.

    A lowercased display (from a gridmapdir import) is replaced by the DN as
    now presented (F03). Two first mappings of one person at once: the
    second insert waits for the first transaction and then fails on the
    unique key hash, and the retried unit of work finds the lease the first
    one made.
    """
    person = seen.person
    display = dn.slash()
    if person is None:
        values = {
            "v_kind": X509,
            "v_key": dn.key,
            "v_key_hash": key_hash(X509, dn.key),
            "v_display": display,
            "v_now": now,
        }
        return _Person(_new_id(conn.execute(_INSERT_IDENTITY, values)), display, False)
    if person.display_lossy:
        conn.execute(_RESTORE_DISPLAY, {"identity_id": person.id, "display": display})
        return _Person(person.id, display, False)
    return person


_RESTORE_DISPLAY = (
    update(Identity)
    .where(Identity.id == bindparam("identity_id"))
    .values(display=bindparam("display"), display_lossy=False)
)
# Last use never moves back; a lease that ended matches no row.
_TOUCH_OPEN_LEASE = (
    update(Lease)
    .where(Lease.id == bindparam("lease_id"), Lease.open_marker == 1)
    .values(
        last_used_at=case(
            (Lease.last_used_at < bindparam("now"), bindparam("now")),
            else_=Lease.last_used_at,
        )
    )
)


def _start_lease(
    session: Session,
    conn: Connection,
    person: _Person,
    account: Row[Any],
    route: Route,
    fqan: str | None,
    now: datetime,
) -> _Held:
    """Open a lease of account for the person and record lease_started.

    On PostgreSQL the lease, the account's new state and the event are one
    statement, saving the round trips of separate ones; elsewhere they are
    separate statements in the same transaction.
    """
    row, logged = events.prepare(
        "lease_started",
        pool=route.pool,
        account=account.name,
        identity_id=person.id,
        dn=person.display,
        lease_id=None,
        fqan=fqan,
        rule=route.rule.text,
        at=now,
    )
    values = {
        "v_account_id": account.id,
        "v_identity_id": person.id,
        "v_pool_id": route.pool_id,
        "v_fqan": fqan,
        "v_now": now,
    }
    if conn.dialect.name == "postgresql":
        values |= {
            "v_pool": route.pool,
            "v_account": account.name,
            "v_dn": person.display,
            "v_details": row["details"],
        }
        lease_id = conn.execute(_START_LEASE, values).scalar_one()
    else:
        lease_id = _new_id(conn.execute(_INSERT_LEASE, values))
        conn.execute(_LEASE_ACCOUNT, values)
        conn.execute(events.INSERT, row | {"lease_id": lease_id})
    logged["lease_id"] = lease_id
    events.queue_log(session, logging.INFO, "lease_started", **logged)
    return _Held(
        lease_id,
        route.pool_id,
        now,
        account.name,
        account.uid,
        route.pool,
        route.gid,
        person.id,
        False,
    )


def _v(name: str, type_: Any) -> Any:
    # Statement parameters are named v_*: a parameter named like a column
    # would also be taken as a value for that column of an INSERT or UPDATE.
    return bindparam(f"v_{name}", type_=type_)


_IDENTITY_VALUES = {
    "kind": _v("kind", String),
    "key": _v("key", Text),
    "key_hash": _v("key_hash", String),
    "display": _v("display", Text),
    "display_lossy": false(),
    "created_at": _v("now", UTCDateTime()),
}
_INSERT_IDENTITY = insert(Identity).values(**_IDENTITY_VALUES)
_LEASE_VALUES = {
    "account_id": _v("account_id", Integer),
    "pool_id": _v("pool_id", Integer),
    "fqan": _v("fqan", String),
    "started_at": _v("now", UTCDateTime()),
    "last_used_at": _v("now", UTCDateTime()),
    "open_account_id": _v("account_id", Integer),
    "open_marker": literal_column("1", Integer),
}
_INSERT_LEASE = insert(Lease).values(
    identity_id=_v("identity_id", Integer), **_LEASE_VALUES
)
_LEASE_ACCOUNT = (
    update(Account)
    .where(Account.id == _v("account_id", Integer))
    .values(state=literal_column("'leased'", String))
)
_EVENT_VALUES = {
    "at": _v("now", UTCDateTime()),
    "kind": literal_column("'lease_started'", String),
    "pool": _v("pool", String),
    "account": _v("account", String),
    "dn": _v("dn", Text),
    "details": _v("details", Text),
}


def _start_lease_statement() -> Select:
    """The one PostgreSQL statement that opens a lease and records it.

    Each data-modifying CTE runs exactly once, and on any error none of
    them takes effect.
    """
    values = {"identity_id": _v("identity_id", Integer), **_LEASE_VALUES}
    new_lease = (
        insert(Lease)
        .from_select(list(values), select(*values.values()))
        .returning(Lease.id)
        .cte("new_lease")
    )
    leased = _LEASE_ACCOUNT.cte("leased")
    logged = (
        insert(Event)
        .from_select(
            [*_EVENT_VALUES, "identity_id", "lease_id"],
            select(*_EVENT_VALUES.values(), _v("identity_id", Integer), new_lease.c.id),
        )
        .cte("logged")
    )
    return select(new_lease.c.id).add_cte(leased, logged)


_START_LEASE = _start_lease_statement()


def quiet_end(quiet: Duration, start: Any) -> Any:
    """SQL (PostgreSQL): the instant quiet after start, as Duration.after().

    PostgreSQL adds an interval's months first, keeping the day of the
    month unless the month is shorter (then its last day), then its days,
    then its time: what relativedelta does with the same parts.
    """
    delta = quiet.delta
    seconds = (
        delta.hours * 3600 + delta.minutes * 60 + delta.seconds
    ) + delta.microseconds / 1_000_000
    interval = func.make_interval(
        0,
        literal(delta.years * 12 + delta.months, Integer),
        0,
        literal(delta.days, Integer),
        0,
        0,
        literal(seconds, Float),
    )
    return start + interval


def _quiet_over(account: Account | Row[Any], quiet: Duration, now: datetime) -> bool:
    last = account.last_used_at
    if last is None:
        return True
    waived = account.quiet_waived_at
    against = getattr(account, "waived_for_requester", False)
    if waived is not None and waived >= last and not against:
        return True
    return quiet.after(last) <= now


def _new_id(result: CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _dn_only_routes(conn: Connection, pool_name: str) -> list[Route]:
    row = conn.execute(
        select(Pool.id, Pool.name, Pool.gid, Pool.vo).where(
            Pool.name == pool_name, Pool.retired_at.is_(None)
        )
    ).first()
    if row is None:
        return []
    return [Route(-1, row.id, row.name, row.gid, parse_rule(f"/{row.vo}"))]


def _no_match_message(parsed: _Parsed) -> str:
    if not parsed.fqans:
        return (
            f"No FQAN given for {parsed.dn.slash()!r} and no pool serves "
            "DN-only requests: dn_only_pool is not set, or names a pool that "
            "does not exist or is retired ('poolmgr check' says which)."
        )
    return f"No pool serves FQAN {str(parsed.fqans[0])!r}."


def _pool_list(routes: tuple[Route, ...]) -> str:
    return "pool " + ", ".join(route.pool for route in routes)


def end_lease(
    session: Session,
    lease: Lease,
    *,
    reason: str,
    actor: str,
    now: datetime,
    note: str | None = None,
    waive_quiet: bool = False,
) -> None:
    """End an open lease: the row stays, the account becomes free.

    The account keeps the lease's last use, so its quiet period keeps
    running; waive_quiet (an override) records that the quiet period was
    ended early on purpose. Last use itself is never changed here.
    """
    account = session.get(Account, lease.account_id)
    assert account is not None and lease.ended_at is None
    lease.ended_at, lease.end_reason = now, reason
    lease.ended_by, lease.end_note = actor, note
    lease.open_account_id, lease.open_marker = None, None
    account.state = "free"
    account.last_used_at = lease.last_used_at
    account.free_since = now
    if waive_quiet:
        account.quiet_waived_at = now
    identity = session.get(Identity, lease.identity_id)
    pool = session.get(Pool, lease.pool_id)
    session.flush()
    events.record(
        session,
        "lease_ended",
        pool=pool.name if pool else None,
        account=account.name,
        identity_id=lease.identity_id,
        dn=identity.display if identity else None,
        lease_id=lease.id,
        actor=actor,
        reason=note,
        end_reason=reason,
        last_use=format_time(lease.last_used_at),
        quiet_waived=waive_quiet or None,
    )
