"""Read-only views for the admin commands: pools, leases and one account."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from poolmgr.dn import parse_subject
from poolmgr.errors import NotFoundError
from poolmgr.holds import IS_HELD
from poolmgr.identities import find_identity
from poolmgr.models import Account, Identity, Lease, Pool, PoolRule
from poolmgr.timeutil import Duration, utcnow


@dataclass(frozen=True)
class PoolSummary:
    """Capacity and occupancy of one pool."""

    pool_id: int
    name: str
    vo: str
    size: int
    declared: int
    leased: int
    free: int
    quiet: int
    held: int
    retired: int
    out_of_service: int
    first_uid: int
    group: str
    gid: int
    live: bool


@dataclass(frozen=True)
class LeaseRow:
    """One lease, with the account and person it binds."""

    lease_id: int
    account: str
    pool: str
    dn: str
    fqan: str | None
    started_at: datetime
    last_used_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    ended_by: str | None
    end_note: str | None


@dataclass(frozen=True)
class AccountDetail:
    """One account: what it is, who holds it, and every lease it had."""

    name: str
    pool: str
    uid: int
    gid: int
    state: str
    last_used_at: datetime | None
    holder: LeaseRow | None
    history: list[LeaseRow]


def pool_summaries(
    session: Session, quiet: Duration, now: datetime | None = None
) -> list[PoolSummary]:
    """Return every pool with its account counts, by name.

    ``free`` counts the accounts a newcomer could get now. ``held`` counts
    free accounts under an incident hold, and ``quiet`` those whose quiet
    period is still running; neither can be handed out, and ``free``
    excludes both.
    ``out_of_service`` counts accounts waiting for (or failing) cleanup.
    """
    resting = _resting_counts(session, quiet, now or utcnow())
    held = dict(
        session.execute(
            select(Account.pool_id, func.count())
            .where(Account.state == "free", IS_HELD)
            .group_by(Account.pool_id)
        ).all()
    )
    counts = (
        select(
            Account.pool_id,
            func.count().label("total"),
            func.sum(case((Account.state == "leased", 1), else_=0)).label("leased"),
            func.sum(case((Account.state == "free", 1), else_=0)).label("free"),
            func.sum(case((Account.state == "retired", 1), else_=0)).label("retired"),
        )
        .group_by(Account.pool_id)
        .subquery()
    )
    rows = session.execute(
        select(Pool, counts.c.total, counts.c.leased, counts.c.free, counts.c.retired)
        .outerjoin(counts, counts.c.pool_id == Pool.id)
        .order_by(Pool.name)
    ).all()
    return [
        PoolSummary(
            pool_id=pool.id,
            name=pool.name,
            vo=pool.vo,
            size=pool.size,
            declared=pool.declared_size,
            leased=int(leased or 0),
            free=int(free or 0) - resting.get(pool.id, 0) - held.get(pool.id, 0),
            quiet=resting.get(pool.id, 0),
            held=held.get(pool.id, 0),
            retired=int(retired or 0),
            out_of_service=int(total or 0)
            - int(leased or 0)
            - int(free or 0)
            - int(retired or 0),
            first_uid=pool.first_uid,
            group=pool.group_name,
            gid=pool.gid,
            live=pool.retired_at is None,
        )
        for pool, total, leased, free, retired in rows
    ]


def _resting_counts(session: Session, quiet: Duration, now: datetime) -> dict[int, int]:
    rows = session.execute(
        select(Account.pool_id, Account.last_used_at, Account.quiet_waived_at).where(
            Account.state == "free",
            ~IS_HELD,
            Account.last_used_at > quiet.before(now) - timedelta(days=4),
        )
    )
    counts: dict[int, int] = {}
    for pool_id, last_used, waived in rows:
        if is_resting(quiet, last_used, waived, now):
            counts[pool_id] = counts.get(pool_id, 0) + 1
    return counts


def is_resting(
    quiet: Duration, last_used: datetime | None, waived: datetime | None, now: datetime
) -> bool:
    """Return whether a free account is still inside its quiet period at now.

    Never-used accounts and accounts whose quiet period an override waived
    after their last use are not resting.
    """
    if last_used is None or (waived is not None and waived >= last_used):
        return False
    return quiet.after(last_used) > now


def list_leases(
    session: Session,
    *,
    pool: str | None = None,
    dn: str | None = None,
    account: str | None = None,
    include_ended: bool = False,
    limit: int | None = None,
) -> list[LeaseRow]:
    """Return leases matching the filters, newest first.

    Raises NotFoundError when the pool or account named does not exist.
    """
    stmt = _lease_select()
    if not include_ended:
        stmt = stmt.where(Lease.open_marker == 1)
    if pool is not None:
        _require(
            session, Pool, pool, f"Unknown pool {pool[:64]!r}; see 'poolmgr pools'."
        )
        stmt = stmt.where(Pool.name == pool)
    if account is not None:
        _require(session, Account, account, f"No pool account named {account[:64]!r}.")
        stmt = stmt.where(Account.name == account)
    if dn is not None:
        identity = find_identity(session, parse_subject(dn))
        if identity is None:
            return []
        stmt = stmt.where(Lease.identity_id == identity.id)
    stmt = stmt.order_by(Lease.started_at.desc(), Lease.id.desc())
    if limit is not None:
        stmt = stmt.limit(limit)
    return [_row(*row) for row in session.execute(stmt)]


def _require(
    session: Session, model: type[Pool] | type[Account], name: str, message: str
) -> None:
    if session.scalar(select(model.id).where(model.name == name)) is None:
        raise NotFoundError(message)


def account_detail(session: Session, name: str) -> AccountDetail:
    """Return one account with its holder and lease history; NotFoundError."""
    found = session.execute(
        select(Account, Pool).join(Pool).where(Account.name == name)
    ).first()
    if found is None:
        raise NotFoundError(f"No pool account named {name[:64]!r}.")
    account, pool = found
    history = [
        _row(*row)
        for row in session.execute(
            _lease_select()
            .where(Lease.account_id == account.id)
            .order_by(Lease.started_at, Lease.id)
        )
    ]
    holder = next((row for row in history if row.ended_at is None), None)
    last_used = holder.last_used_at if holder else account.last_used_at
    return AccountDetail(
        name=account.name,
        pool=pool.name,
        uid=account.uid,
        gid=pool.gid,
        state=account.state,
        last_used_at=last_used,
        holder=holder,
        history=history,
    )


def _lease_select():  # type: ignore[no-untyped-def]
    return (
        select(Lease, Account.name, Pool.name, Identity.display)
        .join(Account, Account.id == Lease.account_id)
        .join(Pool, Pool.id == Lease.pool_id)
        .join(Identity, Identity.id == Lease.identity_id)
    )


def _row(lease: Lease, account: str, pool: str, dn: str) -> LeaseRow:
    return LeaseRow(
        lease_id=lease.id,
        account=account,
        pool=pool,
        dn=dn,
        fqan=lease.fqan,
        started_at=lease.started_at,
        last_used_at=lease.last_used_at,
        ended_at=lease.ended_at,
        end_reason=lease.end_reason,
        ended_by=lease.ended_by,
        end_note=lease.end_note,
    )


@dataclass(frozen=True)
class RuleRow:
    """One routing rule, in evaluation order."""

    position: int
    rule: str
    pool: str
    vo: str


def list_rules(session: Session) -> list[RuleRow]:
    """Return the routing table in the order rules are tried."""
    rows = session.execute(
        select(PoolRule.position, PoolRule.rule, Pool.name, Pool.vo)
        .join(Pool, Pool.id == PoolRule.pool_id)
        .order_by(PoolRule.position)
    )
    return [RuleRow(*row) for row in rows]
