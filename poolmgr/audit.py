"""The periodic audit report for the site's security officer.

``build_report`` gathers, per pool, capacity and occupancy; the leases that
may be recycled now and those due within 30 days (frozen and held accounts
left out: recycling never touches them); the overrides and failed
cleanups of the period; the accounts out of service; how long open leases
have been idle; the check of the whole lease history
(``history.verify_history``); and the bans in force, the frozen and held
accounts, and the period's bans, holds and refused mappings
(``banviews.ban_audit``). ``audit_formats`` renders it as text tables,
JSON or CSV, ``audit_html`` as one self-contained HTML page.
"""

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from dateutil.relativedelta import relativedelta
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from poolmgr.banviews import BanAudit, ban_audit
from poolmgr.history import HistoryCheck, verify_history
from poolmgr.holds import recycle_blocks
from poolmgr.models import Account, Event, Identity, Lease, Pool
from poolmgr.recycle import OUT_OF_SERVICE, OVERRIDE, due_at
from poolmgr.settings import Settings

DUE_WINDOW = timedelta(days=30)
IDLE_BUCKETS: tuple[tuple[str, relativedelta], ...] = (
    ("<1 d", relativedelta(days=1)),
    ("<1 wk", relativedelta(weeks=1)),
    ("<1 mo", relativedelta(months=1)),
    ("<3 mo", relativedelta(months=3)),
    ("<6 mo", relativedelta(months=6)),
)
OLDEST_BUCKET = ">=6 mo"
_CHUNK = 2000


@dataclass(frozen=True)
class PoolOccupancy:
    """Capacity and occupancy of one pool, counted by account state."""

    name: str
    vo: str
    size: int
    leased: int
    free: int
    out_of_service: int
    retired: int
    live: bool

    @property
    def in_service(self) -> int:
        """Return the accounts not retired: leased, free or out of service."""
        return self.leased + self.free + self.out_of_service

    @property
    def occupancy(self) -> float:
        """Return the leased share of the accounts not retired (0 for none)."""
        return self.leased / self.in_service if self.in_service else 0.0


@dataclass(frozen=True)
class DueLease:
    """An open lease and when its quiet period ends."""

    pool: str
    account: str
    dn: str
    lease_id: int
    last_use: datetime
    due: datetime


@dataclass(frozen=True)
class EventEntry:
    """One row of the event log, as the report shows it."""

    at: datetime
    actor: str | None
    pool: str | None
    account: str | None
    dn: str | None
    lease_id: int | None
    reason: str | None
    details: dict[str, Any]


@dataclass(frozen=True)
class OutOfService:
    """An account waiting for a successful cleanup."""

    pool: str
    account: str
    since: datetime | None
    last_holder: str | None


@dataclass(frozen=True)
class AuditReport:
    """Everything the audit shows, computed at generated_at."""

    generated_at: datetime
    since: datetime
    quiet_period: str
    pools: list[PoolOccupancy]
    recyclable: list[DueLease]
    due_soon: list[DueLease]
    idle: list[tuple[str, int]]
    future_last_use: int
    overrides: list[EventEntry]
    cleanup_failures: list[EventEntry]
    out_of_service: list[OutOfService]
    history: HistoryCheck
    bans: BanAudit


def build_report(
    session: Session, settings: Settings, now: datetime, since: datetime
) -> AuditReport:
    """Return the audit of the database at now, with events from since on.

    Reads only; open leases and the history are streamed, so memory grows
    with the number of accounts, not with the length of the history.
    """
    recyclable, due_soon, idle, future = _open_leases(session, settings, now)
    return AuditReport(
        generated_at=now,
        since=since,
        quiet_period=str(settings.quiet),
        pools=pool_occupancy(session),
        recyclable=recyclable,
        due_soon=due_soon,
        idle=idle,
        future_last_use=future,
        overrides=_events(session, OVERRIDE, since),
        cleanup_failures=_events(session, "cleanup_failed", since),
        out_of_service=_out_of_service(session),
        history=verify_history(session, settings.quiet),
        bans=ban_audit(session, since),
    )


def pool_occupancy(session: Session) -> list[PoolOccupancy]:
    """Return every pool with its accounts counted by state, by name."""
    counts: dict[int, dict[str, int]] = {}
    for pool_id, state, count in session.execute(
        select(Account.pool_id, Account.state, func.count()).group_by(
            Account.pool_id, Account.state
        )
    ):
        counts.setdefault(pool_id, {})[state] = count
    return [
        PoolOccupancy(
            name=pool.name,
            vo=pool.vo,
            size=pool.size,
            leased=counts.get(pool.id, {}).get("leased", 0),
            free=counts.get(pool.id, {}).get("free", 0),
            out_of_service=counts.get(pool.id, {}).get(OUT_OF_SERVICE, 0),
            retired=counts.get(pool.id, {}).get("retired", 0),
            live=pool.retired_at is None,
        )
        for pool in session.scalars(select(Pool).order_by(Pool.name))
    ]


def idle_bucket(last_use: datetime, now: datetime) -> str:
    """Return the histogram bucket of the time from last_use to now."""
    for label, span in IDLE_BUCKETS:
        if last_use > now - span:
            return label
    return OLDEST_BUCKET


def _open_leases(
    session: Session, settings: Settings, now: datetime
) -> tuple[list[DueLease], list[DueLease], list[tuple[str, int]], int]:
    quiet = settings.quiet
    recyclable: list[DueLease] = []
    due_soon: list[DueLease] = []
    idle = {label: 0 for label, _ in IDLE_BUCKETS} | {OLDEST_BUCKET: 0}
    future = 0
    # Frozen and held accounts are never recycled; they have their own
    # section, and listing them as recyclable would say the opposite.
    blocked = recycle_blocks(session)
    rows = session.execute(
        select(
            Lease.id,
            Lease.last_used_at,
            Account.id,
            Account.name,
            Pool.name,
            Identity.display,
        )
        .join(Account, Account.id == Lease.account_id)
        .join(Pool, Pool.id == Lease.pool_id)
        .join(Identity, Identity.id == Lease.identity_id)
        .where(Lease.open_marker == 1)
        .execution_options(yield_per=_CHUNK)
    )
    for lease_id, last_use, account_id, account, pool, dn in rows:
        idle[idle_bucket(last_use, now)] += 1
        future += last_use > now
        due = due_at(quiet, last_use)
        if due <= now + DUE_WINDOW and account_id not in blocked:
            entry = DueLease(pool, account, dn, lease_id, last_use, due)
            (recyclable if due <= now else due_soon).append(entry)
    recyclable.sort(key=lambda d: (d.due, d.account))
    due_soon.sort(key=lambda d: (d.due, d.account))
    return recyclable, due_soon, list(idle.items()), future


def _events(session: Session, kind: str, since: datetime) -> list[EventEntry]:
    rows = session.scalars(
        select(Event)
        .where(Event.kind == kind, Event.at >= since)
        .order_by(Event.at, Event.id)
    )
    return [
        EventEntry(
            at=e.at,
            actor=e.actor,
            pool=e.pool,
            account=e.account,
            dn=e.dn,
            lease_id=e.lease_id,
            reason=e.reason,
            details=json.loads(e.details) if e.details else {},
        )
        for e in rows
    ]


def _out_of_service(session: Session) -> list[OutOfService]:
    accounts = session.execute(
        select(Account, Pool.name)
        .join(Pool, Pool.id == Account.pool_id)
        .where(Account.state == OUT_OF_SERVICE)
        .order_by(Pool.name, Account.number)
    ).all()
    result = []
    for account, pool in accounts:
        holder = session.scalar(
            select(Identity.display)
            .join(Lease, Lease.identity_id == Identity.id)
            .where(Lease.account_id == account.id)
            .order_by(Lease.started_at.desc(), Lease.id.desc())
            .limit(1)
        )
        result.append(OutOfService(pool, account.name, account.free_since, holder))
    return result
