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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    Row,
    Select,
    and_,
    bindparam,
    select,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from poolmgr import events, nss
from poolmgr.banguard import BanGuard
from poolmgr.bans import VERSION
from poolmgr.candidates import Busy, Candidates
from poolmgr.db import is_conflict, is_not_null_violation, reading, unit_of_work
from poolmgr.dn import DistinguishedName, parse_dn
from poolmgr.errors import (
    ContentionError,
    NoLeaseError,
    NoPoolMatchError,
    PoolExhaustedError,
)
from poolmgr.fqan import Fqan, parse_fqan, parse_rule
from poolmgr.identities import X509, key_hash
from poolmgr.lease_sql import (
    INSERT_IDENTITY,
    INSERT_LEASE,
    LEASE_ACCOUNT,
    ONE_ROW,
    RESTORE_DISPLAY,
    START_LEASE,
    TOUCH_OPEN_LEASE,
    LeaseStatements,
)
from poolmgr.models import Account, Identity, Lease, Pool
from poolmgr.routing import Choice, Route, Router
from poolmgr.settings import Settings
from poolmgr.timeutil import format_time, utcnow

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_ATTEMPTS = 25


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
        self.resolution = timedelta(seconds=settings.last_use_resolution)
        self._router_ttl = router_ttl
        self._router: tuple[float, Router] | None = None
        self.bans = BanGuard(engine, settings)
        self.candidates = Candidates(settings)
        self.statements = LeaseStatements(self.candidates)

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
            with _retried_on_clash():
                touched = conn.execute(
                    TOUCH_OPEN_LEASE, {"lease_id": held.lease_id, "now": now}
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
        row, logged = _started_event(route, fqan, display, now)
        params = {
            "v_pool_id": route.pool_id,
            "cutoff": self.candidates.quiet.safe_cutoff(now),
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
        statement = self.statements.lease(new_person=person is None)
        with _retried_on_clash():
            if self.settings.check_nss:
                started = _lease_if_resolvable(conn, statement, params)
            else:
                started = conn.execute(statement, params).first()
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
            started.started_at,
            started.name,
            started.uid,
            route.pool,
            route.gid,
            started.identity_id,
            False,
        )
        return self._result(held, choice, parsed, new=True)

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
                    RESTORE_DISPLAY,
                    {"identity_id": held.identity_id, "display": parsed.dn.slash()},
                )
            touched = conn.execute(
                TOUCH_OPEN_LEASE, {"lease_id": held.lease_id, "now": now}
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
            account = self.candidates.pick(
                conn, route, now, person.id, first if index == 0 else None
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
            + self.candidates.unresolvable_note(conn, choice.routes, now, person.id)
            + ".",
            pools=names,
        )

    def _create_person_and_lock(
        self, conn: Connection, dn: DistinguishedName, now: datetime, route: Route
    ) -> tuple[_Person, Sequence[Row[Any]]]:
        """Create a new person's identity and lock the route's first candidate.

        One PostgreSQL statement (LeaseStatements.create_person). Returns the
        person and what the never-used query found.
        """
        display = dn.slash()
        row = conn.execute(
            self.statements.create_person(),
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


@contextmanager
def _retried_on_clash() -> Iterator[None]:
    """Turn a clash in a statement of the one-statement path into _Retry.

    Each such statement commits alone, so a refused one wrote nothing: a
    concurrent caller got there first, a lock wait ran into the server's
    lock_timeout, or (a new person's lease) no account was left to lock
    after all and the lease's account is NULL.
    """
    try:
        yield
    except DBAPIError as exc:
        if not (is_conflict(exc) or is_not_null_violation(exc)):
            raise
        logger.debug("one-statement write refused: %s", exc.orig)
        raise _Retry("a concurrent change") from exc


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
        except (_Retry, Busy):
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
_BAN_VERSION_PERSON_AND_OPEN_LEASES = (
    select(
        VERSION.scalar_subquery(),
        Identity.id,
        Identity.display,
        Identity.display_lossy,
        *_LEASE_COLUMNS,
    )
    .select_from(ONE_ROW)
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
        return _Person(_new_id(conn.execute(INSERT_IDENTITY, values)), display, False)
    if person.display_lossy:
        conn.execute(RESTORE_DISPLAY, {"identity_id": person.id, "display": display})
        return _Person(person.id, display, False)
    return person


def _started_event(
    route: Route,
    fqan: str | None,
    dn: str,
    at: datetime,
    *,
    account: str = "",
    identity_id: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the lease_started event row and log fields; the lease id comes later.

    The one-statement path knows neither the account nor a new person's id
    until the statement has run; it writes them into the row in SQL.
    """
    return events.prepare(
        "lease_started",
        pool=route.pool,
        account=account,
        identity_id=identity_id,
        dn=dn,
        lease_id=None,
        fqan=fqan,
        rule=route.rule.text,
        at=at,
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
    separate statements in the same transaction. The lease starts at now,
    or when the account became free if that is later: a mapping that began
    before recycling or an override freed the account, or that runs on a
    host whose clock is behind, still starts after the previous lease ended.
    """
    start = max(now, account.free_since or now)
    row, logged = _started_event(
        route, fqan, person.display, start, account=account.name, identity_id=person.id
    )
    values = {
        "v_account_id": account.id,
        "v_identity_id": person.id,
        "v_pool_id": route.pool_id,
        "v_fqan": fqan,
        "v_now": start,
    }
    if conn.dialect.name == "postgresql":
        values |= {
            "v_pool": route.pool,
            "v_account": account.name,
            "v_dn": person.display,
            "v_details": row["details"],
        }
        lease_id = conn.execute(START_LEASE, values).scalar_one()
    else:
        lease_id = _new_id(conn.execute(INSERT_LEASE, values))
        conn.execute(LEASE_ACCOUNT, values)
        conn.execute(events.INSERT, row | {"lease_id": lease_id})
    logged["lease_id"] = lease_id
    events.queue_log(session, logging.INFO, "lease_started", **logged)
    return _Held(
        lease_id,
        route.pool_id,
        start,
        account.name,
        account.uid,
        route.pool,
        route.gid,
        person.id,
        False,
    )


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
    ended early on purpose. Last use itself is never changed here. A lease
    never ends before it started or was last used, whatever the clock of
    the host that ends it says.
    """
    now = max(now, lease.started_at, lease.last_used_at)
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
