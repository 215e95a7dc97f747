"""Pool provisioning: bring pools, accounts and routing rules to the VO cards.

``sync_pools`` creates pools, grows them to the declared size (or the site's
override), retires free surplus accounts when a pool shrinks (a leased
account is never touched: recycling retires it once its lease has ended),
and replaces the routing table. Running it twice
changes nothing. Account numbers run from 1; account n of a pool has uid
first_uid + n, so a pool owns the uid block first_uid .. first_uid + 10**digits - 1.
"""

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from poolmgr import events, nss
from poolmgr.errors import ConflictError
from poolmgr.models import Account, Pool, PoolRule
from poolmgr.settings import PoolSettings, Settings

logger = logging.getLogger(__name__)

DEFAULT_DIGITS = 3
MAX_PREFIX = 24
MAX_ACCOUNT_NAME = 32
NAMES_PER_QUERY = 1000


@dataclass(frozen=True)
class PoolSpec:
    """A pool as the VO cards declare it."""

    name: str
    vo: str
    serves: tuple[str, ...]
    accounts: int


@dataclass(frozen=True)
class Change:
    """One change sync made (or would make, in a dry run)."""

    kind: str
    pool: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind:<18} {self.pool:<12} {self.detail}"


@dataclass
class SyncResult:
    """What sync changed, and what it noticed but left alone."""

    changes: list[Change] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def sync_pools(
    session: Session,
    settings: Settings,
    specs: list[PoolSpec],
    now: datetime,
    *,
    actor: str = "sync",
) -> SyncResult:
    """Make the database match specs; return the changes, logged under actor.

    Raises ConflictError, before changing anything, when a pool's accounts
    would collide with another pool's uids or names, or with the host's NSS.
    A dry run is this call in a transaction that is then rolled back.
    """
    result = SyncResult()
    for name in sorted(set(settings.pools) - {spec.name for spec in specs}):
        result.warnings.append(f"pool {name} is configured but in no VO card")

    pools = [_upsert_pool(session, settings, spec, now, result) for spec in specs]
    session.flush()
    _check_conflicts(session, settings, pools)
    for pool in pools:
        _resize(session, pool, now, result)
    _retire_missing(session, {spec.name for spec in specs}, now, result)
    _replace_rules(session, specs, pools, result)

    for change in result.changes:
        events.record(
            session,
            "sync_" + change.kind,
            pool=change.pool,
            detail=change.detail,
            actor=actor,
        )
    return result


def _upsert_pool(
    session: Session,
    settings: Settings,
    spec: PoolSpec,
    now: datetime,
    result: SyncResult,
) -> Pool:
    site = settings.pools.get(spec.name, PoolSettings())
    size = site.size if site.size is not None else spec.accounts
    pool = session.scalars(select(Pool).where(Pool.name == spec.name)).first()
    if pool is None:
        pool = _new_pool(session, settings, spec, site, size)
        result.changes.append(
            Change(
                "pool_created",
                pool.name,
                f"vo={pool.vo} prefix={pool.prefix} digits={pool.digits} "
                f"first_uid={pool.first_uid} group={pool.group_name} "
                f"gid={pool.gid} size={size}",
            )
        )
        return pool

    _apply_site_params(session, pool, site, result)
    if pool.retired_at is not None:
        pool.retired_at = None
        result.changes.append(Change("pool_restored", pool.name, "back in a VO card"))
    if (pool.declared_size, pool.size, pool.vo) != (spec.accounts, size, spec.vo):
        result.changes.append(
            Change(
                "pool_resized",
                pool.name,
                f"declared {pool.declared_size}->{spec.accounts} "
                f"size {pool.size}->{size}",
            )
        )
        pool.declared_size, pool.size, pool.vo = spec.accounts, size, spec.vo
    return pool


def _new_pool(
    session: Session,
    settings: Settings,
    spec: PoolSpec,
    site: PoolSettings,
    size: int,
) -> Pool:
    digits = site.digits or max(DEFAULT_DIGITS, len(str(size)))
    prefix = site.prefix or spec.name
    _check_account_names(spec.name, prefix, digits)
    pool = Pool(
        name=spec.name,
        vo=spec.vo,
        prefix=prefix,
        digits=digits,
        first_uid=site.first_uid or _next_uid_block(session, settings),
        group_name=site.group or spec.name,
        gid=site.gid or _next_gid(session, settings, site.group or spec.name),
        declared_size=spec.accounts,
        size=size,
    )
    session.add(pool)
    session.flush()
    return pool


def _apply_site_params(
    session: Session, pool: Pool, site: PoolSettings, result: SyncResult
) -> None:
    wanted = {
        "prefix": site.prefix,
        "digits": site.digits,
        "first_uid": site.first_uid,
        "group_name": site.group,
        "gid": site.gid,
    }
    differs = {
        key: value
        for key, value in wanted.items()
        if value is not None and getattr(pool, key) != value
    }
    if not differs:
        return
    has_accounts = session.scalar(
        select(func.count()).select_from(Account).where(Account.pool_id == pool.id)
    )
    if has_accounts:
        listed = ", ".join(
            f"{key} {getattr(pool, key)}->{value}" for key, value in differs.items()
        )
        raise ConflictError(
            f"Pool {pool.name} already has accounts; poolmgr does not renumber "
            f"or rename them ({listed}). Restore the old values in the site "
            "configuration or define a new pool."
        )
    _check_account_names(
        pool.name, site.prefix or pool.prefix, site.digits or pool.digits
    )
    for key, value in differs.items():
        setattr(pool, key, value)
    result.changes.append(
        Change(
            "pool_changed",
            pool.name,
            " ".join(f"{key}={value}" for key, value in differs.items()),
        )
    )


def _check_account_names(pool: str, prefix: str, digits: int) -> None:
    """Refuse a prefix and digits that make account names no system accepts.

    A user name has at most 32 characters; the prefix column holds 24.
    """
    if len(prefix) > MAX_PREFIX:
        problem = (
            f"its account prefix {prefix!r} is longer than {MAX_PREFIX} characters"
        )
        fix = f"pools.{pool}.prefix"
    elif len(prefix) + digits > MAX_ACCOUNT_NAME:
        problem = (
            f"its account names ({prefix!r} and {digits} digits) would be longer "
            f"than the {MAX_ACCOUNT_NAME} characters a user name may have"
        )
        fix = f"pools.{pool}.prefix or pools.{pool}.digits"
    else:
        return
    raise ConflictError(
        f"Sync refused, nothing changed: pool {pool}: {problem} "
        f"(set {fix} in the site configuration)."
    )


def _next_uid_block(session: Session, settings: Settings) -> int:
    highest = session.scalar(
        select(func.max(Pool.first_uid + func.power(10, Pool.digits)))
    )
    return max(settings.first_uid, int(highest or 0))


def _next_gid(session: Session, settings: Settings, group: str) -> int:
    same = session.scalar(select(Pool.gid).where(Pool.group_name == group).limit(1))
    if same is not None:
        return int(same)
    highest = session.scalar(select(func.max(Pool.gid)))
    return max(settings.first_gid, int(highest or 0) + 1)


def _uid_blocks(session: Session) -> list[tuple[Pool, int]]:
    """Return every pool with the end (exclusive) of its uid block."""
    pools = session.scalars(select(Pool)).all()
    return [(pool, pool.first_uid + 10**pool.digits) for pool in pools]


def used_uids(first_uid: int, size: int, highest: int) -> range:
    """Return the uids a pool uses: accounts 1 .. max(size, highest number).

    Pools of an adopted site sit back to back (atlas 20001-20500, atlasprd
    20501-20520), so pools conflict only where the uids they use or will
    use at their size overlap, not where their 10**digits blocks would.
    """
    return range(first_uid + 1, first_uid + max(size, highest) + 1)


def _used_ranges(session: Session) -> list[tuple[Pool, range]]:
    highest = dict(
        session.execute(
            select(Account.pool_id, func.max(Account.number)).group_by(Account.pool_id)
        ).all()
    )
    return [
        (pool, used_uids(pool.first_uid, pool.size, highest.get(pool.id) or 0))
        for pool in session.scalars(select(Pool))
    ]


def _check_conflicts(session: Session, settings: Settings, pools: list[Pool]) -> None:
    problems: list[str] = []
    for pool in pools:
        problems.extend(_pool_conflicts(session, pool))
        if settings.check_nss:
            problems.extend(_nss_conflicts(pool))
    if problems:
        raise ConflictError("Sync refused, nothing changed: " + "; ".join(problems))


def _pool_conflicts(session: Session, pool: Pool) -> list[str]:
    problems = []
    if pool.size > 10**pool.digits - 1:
        problems.append(
            f"pool {pool.name} cannot hold {pool.size} accounts with "
            f"{pool.digits} digits (set pools.{pool.name}.digits)"
        )
    ranges = _used_ranges(session)
    mine = next(used for other, used in ranges if other.id == pool.id)
    for other, used in ranges:
        if other.id != pool.id and mine.start < used.stop and used.start < mine.stop:
            problems.append(
                f"uids {mine.start}-{mine.stop - 1} of pool {pool.name} overlap "
                f"uids {used.start}-{used.stop - 1} of pool {other.name}"
            )
    taken = session.scalars(
        select(Account.name)
        .where(
            Account.pool_id != pool.id,
            Account.uid >= mine.start,
            Account.uid < mine.stop,
        )
        .limit(3)
    ).all()
    if taken:
        problems.append(
            f"uids {mine.start}-{mine.stop - 1} of pool {pool.name} are already "
            f"used by {', '.join(taken)}"
        )
    sharing = session.scalars(
        select(Pool).where(Pool.id != pool.id, Pool.gid == pool.gid)
    ).first()
    if sharing is not None and sharing.group_name != pool.group_name:
        problems.append(
            f"gid {pool.gid} is group {sharing.group_name} of pool {sharing.name}, "
            f"not {pool.group_name}"
        )
    names = [_account_name(pool, n) for n in range(1, pool.size + 1)]
    named: list[str] = []
    # In slices: a statement takes at most 65,535 parameters on PostgreSQL.
    for start in range(0, len(names), NAMES_PER_QUERY):
        named += session.scalars(
            select(Account.name)
            .join(Pool)
            .where(
                Pool.id != pool.id,
                Account.name.in_(names[start : start + NAMES_PER_QUERY]),
            )
            .order_by(Account.name)
            .limit(3 - len(named))
        ).all()
        if len(named) >= 3:
            break
    if named:
        problems.append(
            f"account names {', '.join(named)} of pool {pool.name} exist in "
            "another pool"
        )
    return problems


def _nss_conflicts(pool: Pool) -> list[str]:
    problems = []
    group = nss.group_problem(pool.group_name, pool.gid)
    if group is not None and "does not resolve" not in group.message:
        problems.append(f"pool {pool.name}: {group.message}")
    for number in range(1, pool.size + 1):
        name, uid = _account_name(pool, number), pool.first_uid + number
        owner = nss.uid_owner(uid)
        if owner is not None and owner != name:
            problems.append(
                f"pool {pool.name}: uid {uid} of {name} belongs to {owner} on this host"
            )
    return problems


def _resize(session: Session, pool: Pool, now: datetime, result: SyncResult) -> None:
    accounts = {
        account.number: account
        for account in session.scalars(
            select(Account).where(Account.pool_id == pool.id)
        )
    }
    target = pool.size if pool.retired_at is None else 0
    added, restored, retired, kept, busy = [], [], [], [], []
    for number in range(1, target + 1):
        account = accounts.get(number)
        if account is None:
            account = _new_account(pool, number)
            session.add(account)
            added.append(account.name)
        elif account.state == "retired":
            account.state, account.retired_at = "free", None
            restored.append(account.name)
    for number in sorted(accounts, reverse=True):
        account = accounts[number]
        if number <= target or account.state == "retired":
            continue
        if account.state == "free" and _retire(session, account, now):
            retired.append(account.name)
        elif account.state == "free":
            # Locked by another writer at this moment; never handed out
            # (candidates stop at the pool's size), retired by a later sync.
            busy.append(account.name)
        else:
            # Leased, or out of service until its cleanup succeeds.
            kept.append(account.name)

    for kind, names in (
        ("accounts_added", added),
        ("accounts_restored", restored),
        ("accounts_retired", retired),
    ):
        if names:
            result.changes.append(Change(kind, pool.name, _span(names)))
    if kept:
        result.warnings.append(
            f"pool {pool.name}: {len(kept)} surplus account(s) in use or being "
            f"cleaned are kept, and retire once recycled: {_span(kept)}"
        )
    if busy:
        result.warnings.append(
            f"pool {pool.name}: {len(busy)} free surplus account(s) were busy and "
            f"are no longer handed out; run sync again to retire them: {_span(busy)}"
        )


def _retire(session: Session, account: Account, now: datetime) -> bool:
    """Retire account if it is still free; False when a mapping leased it
    after it was read (its row is tested as it is now, not as read), or is
    leasing it now."""
    # A mapping that has locked the account waits, on MariaDB, for the pool
    # row this sync has changed before it writes its lease: waiting for the
    # account here would close the circle, so a locked account is kept.
    free = select(Account.id).where(Account.id == account.id, Account.state == "free")
    if session.execute(free.with_for_update(skip_locked=True)).first() is None:
        session.expire(account, ["state"])
        return False
    # Locked and free: no mapping can take it before this commits.
    account.state, account.retired_at = "retired", now
    return True


def _new_account(pool: Pool, number: int) -> Account:
    return Account(
        pool_id=pool.id,
        name=_account_name(pool, number),
        number=number,
        uid=pool.first_uid + number,
        state="free",
    )


def _account_name(pool: Pool, number: int) -> str:
    return f"{pool.prefix}{number:0{pool.digits}d}"


def _retire_missing(
    session: Session, names: set[str], now: datetime, result: SyncResult
) -> None:
    stale = session.scalars(
        select(Pool).where(Pool.retired_at.is_(None), Pool.name.not_in(names))
    ).all()
    for pool in stale:
        pool.retired_at = now
        result.changes.append(Change("pool_retired", pool.name, "in no VO card"))
        _resize(session, pool, now, result)


def _replace_rules(
    session: Session, specs: list[PoolSpec], pools: list[Pool], result: SyncResult
) -> None:
    wanted = [
        (pool.id, rule)
        for spec, pool in zip(specs, pools, strict=True)
        for rule in spec.serves
    ]
    current = session.execute(
        select(PoolRule.pool_id, PoolRule.rule).order_by(PoolRule.position)
    ).all()
    if [tuple(row) for row in current] == wanted:
        return
    session.execute(delete(PoolRule))
    session.flush()
    for position, (pool_id, rule) in enumerate(wanted, start=1):
        session.add(PoolRule(position=position, pool_id=pool_id, rule=rule))
    result.changes.append(
        Change("rules_replaced", "*", f"{len(wanted)} rule(s), was {len(current)}")
    )


def _span(names: list[str]) -> str:
    ordered = sorted(names)
    if len(ordered) <= 3:
        return ", ".join(ordered)
    return f"{ordered[0]} .. {ordered[-1]} ({len(ordered)})"
