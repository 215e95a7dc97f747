"""Pool sizing: how many accounts each pool needs and when it runs out.

An account used within the quiet period cannot go to anybody else, so the
distinct persons seen in the last quiet period are the floor a pool needs.
New persons (a person's first lease in the pool) per 30 days over a window
give the growth; the forecast is the day the floor, growing linearly,
reaches the accounts in service. The recommended size covers the floor plus
one quiet period of growth, with headroom. A pool is at risk when it runs
out within the quiet period or has under 10 % of its accounts free.

Frozen accounts serve nobody new, whatever their idle time: those out of
service (waiting for cleanup), those under an incident hold and those whose
holder is banned. They are counted apart from the leased and free ones; a
held or ban-frozen account that nobody of the floor used within the quiet
period adds to the demand, since it stays taken however long it is idle.

VO cards add what the database does not keep: each pool's type and whether
the VO's pilots switch identity with gLExec, in which case every payload
owner needs an account of their own in the VO's user pools; that demand is
reported apart from the pilot accounts themselves.
"""

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from poolmgr.holds import recycle_blocks
from poolmgr.models import Account, Lease, Pool
from poolmgr.settings import Settings
from poolmgr.timeutil import Duration
from poolmgr.vocards import VoCard

IN_SERVICE = ("free", "leased")
MAX_FORECAST_DAYS = 36_500
ROUND_TO = 5
PAYLOAD_KINDS = ("users", None)
_NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class SizingOptions:
    """How growth is measured and how much headroom a recommendation adds."""

    window: Duration = field(default_factory=lambda: Duration.parse("90 days"))
    headroom: int = 20
    history_points: int = 7


@dataclass(frozen=True)
class PoolSizing:
    """The demand on one pool and what it needs."""

    name: str
    vo: str
    kind: str | None
    glexec: bool
    declared: int
    provisioned: int
    leased: int
    free: int
    frozen: int
    locked: int
    locked_idle: int
    floor: int
    new_persons: int
    growth: float
    forecast: datetime | None
    recommended: int
    risks: tuple[str, ...]
    history: tuple[tuple[datetime, int], ...]

    @property
    def at_risk(self) -> bool:
        return bool(self.risks)

    @property
    def capacity(self) -> int:
        """Return the accounts in service: leased, free, held or ban-frozen."""
        return self.leased + self.free + self.locked

    @property
    def demand(self) -> int:
        """Return the accounts nobody new can get: the floor and idle locks."""
        return self.floor + self.locked_idle


@dataclass(frozen=True)
class GlexecDemand:
    """A gLExec VO: its pilot accounts, and the payload owners they carry."""

    vo: str
    pilot_pools: tuple[str, ...]
    pilot_accounts: int
    pilot_persons: int
    payload_pools: tuple[str, ...]
    payload_accounts: int
    payload_persons: int
    payload_growth: float


@dataclass(frozen=True)
class SizingReport:
    """Every live pool, pools at risk first, and the gLExec demand per VO."""

    generated_at: datetime
    quiet_period: str
    window: str
    headroom: int
    pools: tuple[PoolSizing, ...]
    glexec: tuple[GlexecDemand, ...]


@dataclass(frozen=True)
class _Measures:
    now: datetime
    quiet_end: datetime
    quiet_days: float
    window_days: float
    headroom: int


@dataclass
class _Locks:
    """A pool's held or ban-frozen accounts in service, and the idle ones."""

    leased: int = 0
    free: int = 0
    idle: int = 0

    @property
    def total(self) -> int:
        return self.leased + self.free


def sizing_report(
    session: Session,
    settings: Settings,
    cards: Sequence[VoCard],
    now: datetime,
    options: SizingOptions | None = None,
) -> SizingReport:
    """Return the sizing of every live pool at now; reads, never writes."""
    options = options or SizingOptions()
    quiet = settings.quiet
    measures = _Measures(
        now=now,
        quiet_end=quiet.after(now),
        quiet_days=_days(now, quiet.after(now)),
        window_days=_days(options.window.before(now), now),
        headroom=options.headroom,
    )
    pools = list(
        session.scalars(
            select(Pool).where(Pool.retired_at.is_(None)).order_by(Pool.name)
        )
    )
    rows = _pool_rows(session, pools, cards, quiet, options, measures)
    rows.sort(key=_risk_order)
    return SizingReport(
        generated_at=now,
        quiet_period=str(quiet),
        window=str(options.window),
        headroom=options.headroom,
        pools=tuple(rows),
        glexec=tuple(_glexec_demand(session, rows, pools, cards, quiet.before(now))),
    )


def _pool_rows(
    session: Session,
    pools: list[Pool],
    cards: Sequence[VoCard],
    quiet: Duration,
    options: SizingOptions,
    measures: _Measures,
) -> list[PoolSizing]:
    now = measures.now
    states = _state_counts(session)
    locks = _locked_counts(session, quiet.before(now))
    floors = _persons_seen(session, quiet.before(now))
    newcomers = _new_persons(session, options.window.before(now))
    history = _history(session, quiet, now, options.history_points)
    decls = {d.name: (d, card.glexec) for card in cards for d in card.pools}
    rows = []
    for pool in pools:
        decl, glexec = decls.get(pool.name, (None, False))
        rows.append(
            _pool_sizing(
                pool,
                kind=decl.type if decl else None,
                glexec=glexec,
                declared=decl.accounts if decl else pool.declared_size,
                states=states.get(pool.id, {}),
                locks=locks.get(pool.id, _Locks()),
                floor=floors.get(pool.id, 0),
                new_persons=newcomers.get(pool.id, 0),
                history=tuple((t, counts.get(pool.id, 0)) for t, counts in history),
                measures=measures,
            )
        )
    return rows


def _days(start: datetime, end: datetime) -> float:
    return max((end - start).total_seconds() / 86_400, 1 / 86_400)


def _risk_order(row: PoolSizing) -> tuple[bool, datetime, str]:
    return (not row.at_risk, row.forecast or _NEVER, row.name)


def _pool_sizing(
    pool: Pool,
    *,
    kind: str | None,
    glexec: bool,
    declared: int,
    states: dict[str, int],
    locks: _Locks,
    floor: int,
    new_persons: int,
    history: tuple[tuple[datetime, int], ...],
    measures: _Measures,
) -> PoolSizing:
    leased = states.get("leased", 0) - locks.leased
    free = states.get("free", 0) - locks.free
    out_of_service = sum(
        n for s, n in states.items() if s not in (*IN_SERVICE, "retired")
    )
    capacity = leased + free + locks.total

    growth = new_persons * 30 / measures.window_days
    demand = floor + locks.idle
    forecast = forecast_exhaustion(demand, capacity, growth, measures.now)
    need = demand + growth * measures.quiet_days / 30
    risks = []
    if forecast is not None and forecast <= measures.quiet_end:
        risks.append("runs out within the quiet period")
    if free * 10 < capacity:
        risks.append("under 10% free")
    return PoolSizing(
        name=pool.name,
        vo=pool.vo,
        kind=kind,
        glexec=glexec,
        declared=declared,
        provisioned=capacity + out_of_service,
        leased=leased,
        free=free,
        frozen=out_of_service + locks.total,
        locked=locks.total,
        locked_idle=locks.idle,
        floor=floor,
        new_persons=new_persons,
        growth=round(growth, 2),
        forecast=forecast,
        recommended=recommend(need, measures.headroom),
        risks=tuple(risks),
        history=history,
    )


def forecast_exhaustion(
    floor: int, capacity: int, growth: float, now: datetime
) -> datetime | None:
    """Return when floor, growing by growth per 30 days, reaches capacity.

    None means not within a hundred years at this rate; now means the pool
    has already run out.
    """
    if floor >= capacity and (floor or capacity):
        return now
    if growth <= 0:
        return None
    days = (capacity - floor) / growth * 30
    return now + timedelta(days=days) if days <= MAX_FORECAST_DAYS else None


def recommend(need: float, headroom: int) -> int:
    """Return need plus headroom percent, rounded up to a multiple of 5 (min 5)."""
    wanted = math.ceil(round(need * (100 + headroom) / 100, 6))
    return max(ROUND_TO, -(-wanted // ROUND_TO) * ROUND_TO)


def _state_counts(session: Session) -> dict[int, dict[str, int]]:
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    for pool_id, state, number in session.execute(
        select(Account.pool_id, Account.state, func.count()).group_by(
            Account.pool_id, Account.state
        )
    ):
        counts[pool_id][state] = number
    return counts


def _locked_counts(session: Session, quiet_start: datetime) -> dict[int, _Locks]:
    """Return pool id -> its held or ban-frozen accounts, by state.

    idle counts those not used since quiet_start: no person of the floor
    stands for them, yet they cannot go to anybody.
    """
    blocked = list(recycle_blocks(session))
    counts: dict[int, _Locks] = defaultdict(_Locks)
    if not blocked:
        return counts
    # A leased account's last use is its open lease's; a free one keeps the
    # last use of its last lease.
    last_use = func.coalesce(Lease.last_used_at, Account.last_used_at)
    rows = session.execute(
        select(Account.pool_id, Account.state, last_use)
        .outerjoin(Lease, Lease.open_account_id == Account.id)
        .where(Account.id.in_(blocked), Account.state.in_(IN_SERVICE))
    )
    for pool_id, state, last_used in rows:
        locks = counts[pool_id]
        if state == "leased":
            locks.leased += 1
        else:
            locks.free += 1
        if last_used is None or last_used < quiet_start:
            locks.idle += 1
    return counts


def _persons_seen(session: Session, since: datetime) -> dict[int, int]:
    """Return distinct identities per pool with a use at or after since."""
    query = (
        select(Lease.pool_id, func.count(func.distinct(Lease.identity_id)))
        .where(Lease.last_used_at >= since)
        .group_by(Lease.pool_id)
    )
    return dict(session.execute(query).all())


def _new_persons(session: Session, since: datetime) -> dict[int, int]:
    first = (
        select(Lease.pool_id, func.min(Lease.started_at).label("first"))
        .group_by(Lease.pool_id, Lease.identity_id)
        .subquery()
    )
    query = (
        select(first.c.pool_id, func.count())
        .where(first.c.first >= since)
        .group_by(first.c.pool_id)
    )
    return dict(session.execute(query).all())


def _history(
    session: Session, quiet: Duration, now: datetime, points: int
) -> list[tuple[datetime, dict[int, int]]]:
    """Return persons seen per pool at points evenly over the last period.

    A lease counts at time t when it had started by t and was last used
    within the quiet period before t: use is taken as continuous between.
    """
    start = quiet.before(now)
    step = (now - start) / max(points - 1, 1)
    samples = []
    for index in range(points):
        at = start + step * index if index < points - 1 else now
        query = (
            select(Lease.pool_id, func.count(func.distinct(Lease.identity_id)))
            .where(Lease.started_at <= at, Lease.last_used_at >= quiet.before(at))
            .group_by(Lease.pool_id)
        )
        samples.append((at, dict(session.execute(query).all())))
    return samples


def _glexec_demand(
    session: Session,
    rows: list[PoolSizing],
    pools: list[Pool],
    cards: Sequence[VoCard],
    since: datetime,
) -> list[GlexecDemand]:
    ids = {pool.name: pool.id for pool in pools}
    demand = []
    for card in sorted((c for c in cards if c.glexec), key=lambda c: c.vo):
        mine = [row for row in rows if row.vo == card.vo and row.name in ids]
        pilots = sorted((r for r in mine if r.kind == "pilot"), key=lambda r: r.name)
        payload = sorted(
            (r for r in mine if r.kind in PAYLOAD_KINDS), key=lambda r: r.name
        )
        demand.append(
            GlexecDemand(
                vo=card.vo,
                pilot_pools=tuple(r.name for r in pilots),
                pilot_accounts=sum(r.provisioned for r in pilots),
                pilot_persons=_distinct(session, [ids[r.name] for r in pilots], since),
                payload_pools=tuple(r.name for r in payload),
                payload_accounts=sum(r.provisioned for r in payload),
                payload_persons=_distinct(
                    session, [ids[r.name] for r in payload], since
                ),
                payload_growth=round(sum(r.growth for r in payload), 2),
            )
        )
    return demand


def _distinct(session: Session, pool_ids: list[int], since: datetime) -> int:
    """Return distinct identities seen since in any of the pools."""
    if not pool_ids:
        return 0
    return int(
        session.scalar(
            select(func.count(func.distinct(Lease.identity_id))).where(
                Lease.pool_id.in_(pool_ids), Lease.last_used_at >= since
            )
        )
        or 0
    )
