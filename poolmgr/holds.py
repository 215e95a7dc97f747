"""Incident holds, and everything that keeps an account from being recycled.

A hold keeps one account out of circulation and out of recycling while an
incident is investigated, whoever holds it:

- a held free account is never handed out (leases.py skips it);
- a held account's lease is never ended by recycling, periodic or forced,
  and a held account waiting for its cleanup is not cleaned, since the
  cleanup would wipe what the investigation needs;
- the current holder keeps being mapped to it: a hold is about the
  account, and banning the person is what stops them.

Frozen leases (bans.py) block recycling the same way. A forced recycle of a
held or frozen account is refused; release the hold or lift the ban first.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from poolmgr import events
from poolmgr.bans import frozen_accounts, frozen_leases
from poolmgr.errors import NotFoundError
from poolmgr.freetext import check_reason
from poolmgr.models import Account, Hold, Identity, Lease, Pool
from poolmgr.timeutil import format_time

IS_HELD = exists().where(Hold.open_account_id == Account.id)
"""SQL condition: the account in the enclosing query is under a hold.

Mappings test Account.held instead, the same fact on the account's own row:
a row lock taken with FOR UPDATE tests it again on the row as locked, which
a subquery on holds, read in the statement's snapshot, would not be."""


@dataclass(frozen=True)
class HoldRow:
    """One hold for display, with the account's current holder."""

    hold_id: int
    account: str
    pool: str
    holder: str | None
    started_at: datetime
    started_by: str
    reason: str
    released_at: datetime | None
    released_by: str | None
    release_reason: str | None


def hold_account(
    session: Session, name: str, *, reason: str, actor: str, now: datetime
) -> tuple[Hold, bool]:
    """Put account name under a hold; return (the hold, whether it is new).

    Raises NotFoundError for an unknown account and BadInputError without a
    reason. An account already held keeps its first hold unchanged.
    """
    reason = check_reason(reason)
    account = _account(session, name, lock=True)
    # Set again under a standing hold too, which mends a flag gone astray
    # ('poolmgr check' reports one).
    account.held = True
    existing = _open_hold(session, account.id)
    if existing is not None:
        return existing, False
    hold = Hold(
        account_id=account.id,
        started_at=now,
        started_by=actor,
        reason=reason,
        open_account_id=account.id,
    )
    session.add(hold)
    session.flush()
    _record(session, "hold_started", hold, account, actor=actor, reason=reason)
    return hold, True


def release_account(
    session: Session, name: str, *, reason: str, actor: str, now: datetime
) -> Hold | None:
    """End the hold on account name and return it; NotFoundError if none.

    An account flagged held without a standing hold (only a hand edit of the
    database leaves one so) has its flag cleared, recorded as a
    hold_flag_cleared event, and None is returned.
    """
    reason = check_reason(reason)
    account = _account(session, name, lock=True)
    hold = _open_hold(session, account.id)
    if hold is None and account.held:
        _back_in_circulation(account, now)
        pool = session.get(Pool, account.pool_id)
        events.record(
            session,
            "hold_flag_cleared",
            at=now,
            actor=actor,
            pool=pool.name if pool else None,
            account=account.name,
            reason=reason,
        )
        return None
    if hold is None:
        raise NotFoundError(f"Account {name!r} is not under a hold.")
    hold.released_at, hold.released_by = now, actor
    hold.release_reason, hold.open_account_id = reason, None
    _back_in_circulation(account, now)
    session.flush()
    _record(session, "hold_released", hold, account, actor=actor, reason=reason)
    return hold


def _back_in_circulation(account: Account, now: datetime) -> None:
    """Clear the held flag; a free account counts as free from now on.

    A lease starts no earlier than its account's free_since, so a mapping
    whose request time came before the release still starts after it and
    never inside the hold.
    """
    account.held = False
    if account.state == "free":
        account.free_since = max(account.free_since or now, now)


def list_holds(session: Session, *, include_released: bool = False) -> list[HoldRow]:
    """Return holds (standing ones unless include_released), oldest first."""
    stmt = (
        select(Hold, Account.name, Pool.name, Identity.display)
        .join(Account, Account.id == Hold.account_id)
        .join(Pool, Pool.id == Account.pool_id)
        .outerjoin(Lease, Lease.open_account_id == Account.id)
        .outerjoin(Identity, Identity.id == Lease.identity_id)
        .order_by(Hold.started_at, Hold.id)
    )
    if not include_released:
        stmt = stmt.where(Hold.released_at.is_(None))
    return [
        HoldRow(
            hold_id=hold.id,
            account=account,
            pool=pool,
            holder=holder,
            started_at=hold.started_at,
            started_by=hold.started_by,
            reason=hold.reason,
            released_at=hold.released_at,
            released_by=hold.released_by,
            release_reason=hold.release_reason,
        )
        for hold, account, pool, holder in session.execute(stmt)
    ]


def held_accounts(session: Session) -> dict[int, Hold]:
    """Return account id -> its standing hold."""
    holds = session.scalars(select(Hold).where(Hold.released_at.is_(None)))
    return {hold.account_id: hold for hold in holds}


def recycle_blocks(
    session: Session, account_ids: Iterable[int] | None = None
) -> dict[int, str]:
    """Return account id -> why it must not be recycled now (frozen or held).

    With account_ids, only those accounts are reported.
    """
    blocks = {
        account_id: f"frozen: its holder is refused by the {hit.describe()}"
        for account_id, hit in frozen_accounts(session).items()
    }
    for account_id, hold in held_accounts(session).items():
        held = (
            f"held since {format_time(hold.started_at)} by {hold.started_by}: "
            f"{hold.reason}"
        )
        earlier = blocks.get(account_id)
        blocks[account_id] = f"{earlier}; {held}" if earlier else held
    if account_ids is not None:
        wanted = set(account_ids)
        blocks = {k: v for k, v in blocks.items() if k in wanted}
    return blocks


def unblocking_steps(session: Session, account_id: int) -> list[str]:
    """Return what would let the account be recycled: lift the ban, release the hold."""
    steps = []
    if account_id in frozen_accounts(session):
        steps.append("lift the ban")
    if account_id in held_accounts(session):
        steps.append("release the hold")
    return steps


def _account(session: Session, name: str, *, lock: bool) -> Account:
    stmt = select(Account).where(Account.name == name)
    if lock and session.get_bind().dialect.name != "sqlite":
        stmt = stmt.with_for_update()
    account = session.scalars(stmt).first()
    if account is None:
        raise NotFoundError(f"No pool account named {name[:64]!r}.")
    return account


def _open_hold(session: Session, account_id: int) -> Hold | None:
    return session.scalars(
        select(Hold).where(Hold.open_account_id == account_id)
    ).first()


def _record(
    session: Session, kind: str, hold: Hold, account: Account, **fields: str
) -> None:
    holder = session.execute(
        select(Lease.id, Identity.id, Identity.display)
        .join(Identity, Identity.id == Lease.identity_id)
        .where(Lease.open_account_id == account.id)
    ).first()
    pool = session.get(Pool, account.pool_id)
    events.record(
        session,
        kind,
        at=hold.released_at or hold.started_at,
        pool=pool.name if pool else None,
        account=account.name,
        lease_id=holder[0] if holder else None,
        identity_id=holder[1] if holder else None,
        dn=holder[2] if holder else None,
        hold_id=hold.id,
        **fields,
    )


def open_lease_status(session: Session) -> dict[int, str]:
    """Return open lease id -> 'frozen', 'held' or 'frozen, held' where it applies."""
    status = dict.fromkeys(frozen_leases(session), "frozen")
    held = list(held_accounts(session))
    if held:
        leases = session.scalars(
            select(Lease.id).where(Lease.open_account_id.in_(held))
        )
        for lease_id in leases:
            status[lease_id] = "frozen, held" if lease_id in status else "held"
    return status


def account_flags(session: Session, name: str) -> dict[str, str]:
    """Return {'frozen': why, 'held': why} for account name, as far as it is."""
    account_id = session.scalar(select(Account.id).where(Account.name == name))
    flags = {}
    hit = frozen_accounts(session).get(account_id) if account_id else None
    if hit is not None:
        flags["frozen"] = f"holder refused by the {hit.describe()}"
    hold = _open_hold(session, account_id) if account_id else None
    if hold is not None:
        flags["held"] = (
            f"since {format_time(hold.started_at)} by {hold.started_by}: {hold.reason}"
        )
    return flags
