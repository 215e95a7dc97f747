"""Which free account a pool gives next, and locking it under concurrency.

Never-used accounts come first, by number; then accounts whose quiet period
is over, the longest free first. An account under an incident hold is never
offered, nor one whose quiet period an override waived against the person
asking (they get a different account). With check_nss, an account the host
cannot resolve with its uid is passed over.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Exists,
    Float,
    Integer,
    Row,
    Select,
    and_,
    bindparam,
    exists,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
)
from sqlalchemy.types import String

from poolmgr import nss
from poolmgr.db import UTCDateTime
from poolmgr.models import Account, Lease, Pool
from poolmgr.routing import Route
from poolmgr.settings import Settings
from poolmgr.timeutil import Duration

logger = logging.getLogger(__name__)

_BATCH = 16
# Constants of the candidate queries are written into their SQL, not bound:
# a prepared statement's generic plan then knows them, so PostgreSQL plans a
# query once per connection instead of on every execution.
ONE = literal_column("1", Integer)
_FREE = literal_column("'free'", String)
_ACCOUNT_COLUMNS = (
    Account.id,
    Account.name,
    Account.uid,
    Account.number,
    Account.last_used_at,
    Account.quiet_waived_at,
    Account.free_since,
)


class Busy(Exception):
    """Every usable free account is locked by a concurrent caller."""


class Candidates:
    """The candidate queries of one site's quiet period, and the choice."""

    def __init__(self, settings: Settings) -> None:
        self.quiet: Duration = settings.quiet
        self.check_nss = settings.check_nss
        self._queries: dict[str, _Queries] = {}

    def pick(
        self,
        conn: Connection,
        route: Route,
        now: datetime,
        requester: int,
        first: Sequence[Row[Any]] | None = None,
    ) -> Row[Any] | None:
        """Lock and return the best free account of the route's pool, or None.

        On PostgreSQL and MariaDB the candidates are locked with SKIP LOCKED,
        so concurrent callers take different accounts instead of queueing;
        on SQLite the unit of work already holds the write lock (BEGIN
        IMMEDIATE). Raises Busy when every usable account is locked by
        others, so the caller retries rather than reporting the pool
        exhausted. first: what the first candidate query returned, when it
        already ran.
        """
        locking = conn.dialect.name != "sqlite"
        params = {
            "v_pool_id": route.pool_id,
            "cutoff": self.quiet.safe_cutoff(now),
            "requester": requester,
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
            raise Busy("free accounts are locked by concurrent callers")
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
        queries = self._prepared(conn.dialect.name)
        rejected: set[int] = set()
        for head_query, query in zip(queries.heads, queries.batches, strict=True):
            if lock and not rejected and head_query is not None:
                if first is not None:
                    head, first = first, None
                else:
                    head = conn.execute(head_query, params).all()
                if not head:
                    continue
                if self.usable(head[0], now):
                    return head[0]
                rejected.add(head[0].id)
            while True:
                stmt = query
                if rejected:
                    stmt = query.where(Account.id.not_in(rejected))
                batch = conn.execute(stmt, params).all()
                for account in batch:
                    if not self.usable(account, now):
                        rejected.add(account.id)
                        continue
                    if not lock:
                        return account
                    # Read without a lock: gone or taken since, it is skipped.
                    locked = conn.execute(
                        queries.by_id, params | {"account_id": account.id}
                    ).first()
                    if locked is not None and self.usable(locked, now):
                        return locked
                    rejected.add(account.id)
                if len(batch) < _BATCH:
                    break
        return None

    def _prepared(self, dialect: str) -> "_Queries":
        queries = self._queries.get(dialect)
        if queries is None:
            # PostgreSQL checks the quiet period exactly in SQL, so no
            # account still resting is read only to be rejected here; the
            # other backends read the loose window and reject in Python.
            candidates = (
                self.exact(bindparam("requester"))
                if dialect == "postgresql"
                else self.queries(dialect)
            )
            queries = self._queries[dialect] = _Queries.build(
                dialect, candidates, free_accounts(bindparam("requester"))
            )
        return queries

    def queries(self, dialect: str, requester: Any = None) -> list[Select]:
        """Return the free-account queries in preference order.

        Never-used accounts first, by number; then accounts whose quiet
        period may be over, the longest free first. Accounts under an
        incident hold are never offered. Parameters: v_pool_id, cutoff (a
        loose bound, checked exactly by usable()) and requester, unless
        given as an expression.
        """
        if requester is None:
            requester = bindparam("requester")
        free = free_accounts(requester)
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
        # The cutoff is loose (see usable()); a waived quiet period counts
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

    def exact(self, requester: Any) -> list[Select]:
        """The candidate queries with the quiet period checked exactly (PostgreSQL).

        An account is rested only if its quiet period is over as
        quiet_over() has it: the one-statement lease has no Python check
        after it, and the general path reads no account still resting only
        to reject it. Parameters: those of queries(), and v_now.
        """
        never_used, rested = self.queries("postgresql", requester)
        over = or_(
            quiet_end(self.quiet, Account.last_used_at)
            <= v_param("now", UTCDateTime()),
            and_(
                Account.quiet_waived_at >= Account.last_used_at,
                ~_waived_against(requester),
            ),
        )
        return [never_used, rested.where(over)]

    def usable(self, account: Row[Any], now: datetime) -> bool:
        """Whether the account's quiet period is over and (check_nss) it resolves."""
        if not quiet_over(account, self.quiet, now):
            return False
        if self.check_nss:
            problem = nss.account_problem(account.name, account.uid)
            if problem is not None:
                logger.warning("account skipped: %s", problem.message)
                return False
        return True

    def unresolvable_note(
        self, conn: Connection, routes: Sequence[Route], now: datetime, requester: int
    ) -> str:
        """Say which free accounts NSS kept back, for the exhaustion message.

        Only on the failure path: when every account a pool could give is
        skipped because the host cannot resolve it, "no free account" alone
        would send the operator looking for leases that are not there.
        """
        if not self.check_nss:
            return ""
        names = []
        for route in routes:
            params = {
                "v_pool_id": route.pool_id,
                "cutoff": self.quiet.safe_cutoff(now),
                "requester": requester,
            }
            for query in self.queries(conn.dialect.name):
                for account in conn.execute(query, params):
                    if quiet_over(account, self.quiet, now) and nss.account_problem(
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


def v_param(name: str, type_: Any) -> Any:
    """A statement parameter, named v_name.

    A parameter named like a column would also be taken as a value for that
    column of an INSERT or UPDATE.
    """
    return bindparam(f"v_{name}", type_=type_)


def free_accounts(requester: Any) -> Select:
    """Free accounts of pool v_pool_id that no hold keeps back, as candidates.

    An account numbered above the pool's size is never one: a sync that
    shrank the pool retires it as soon as it can, but one it found locked
    stays free until the next sync.
    """
    pool_id = v_param("pool_id", Integer)
    size = select(Pool.size).where(Pool.id == pool_id).scalar_subquery()
    return select(
        *_ACCOUNT_COLUMNS,
        _waived_against(requester).label("waived_for_requester"),
    ).where(
        Account.pool_id == pool_id,
        Account.state == _FREE,
        # On the row itself: a hold committed between this statement's
        # snapshot and its lock is still seen (see holds.IS_HELD).
        Account.held.is_(false()),
        Account.number <= size,
    )


def lock_first(query: Select) -> Select:
    """The query's first row only, locked unless another caller holds it."""
    return query.with_for_update(skip_locked=True).limit(ONE)


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


def quiet_over(account: Account | Row[Any], quiet: Duration, now: datetime) -> bool:
    """Whether the account may go to a new holder as far as its quiet period goes."""
    last = account.last_used_at
    if last is None:
        return True
    waived = account.quiet_waived_at
    against = getattr(account, "waived_for_requester", False)
    if waived is not None and waived >= last and not against:
        return True
    return quiet.after(last) <= now


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
                lock_first(query) if safe else None
                for query, safe in zip(queries, lockable, strict=True)
            ],
            batches=[
                query.limit(literal_column(str(_BATCH), Integer)) for query in queries
            ],
            by_id=free.where(Account.id == bindparam("account_id")).with_for_update(
                skip_locked=True
            ),
        )
