"""Read-only views of bans, ban lists and holds for the commands, audit and check."""

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from poolmgr.bans import HAND, frozen_accounts, frozen_counts, frozen_leases
from poolmgr.errors import NotFoundError
from poolmgr.holds import held_accounts
from poolmgr.models import Account, Ban, BanSync, Event, Identity, Lease, Pool
from poolmgr.settings import Settings
from poolmgr.timeutil import format_time


@dataclass(frozen=True)
class BanRow:
    """One ban for display, with the open leases it freezes now."""

    ban_id: int
    kind: str
    entry: str
    origin: str
    reason: str | None
    created_at: datetime
    created_by: str
    lifted_at: datetime | None
    lifted_by: str | None
    lift_reason: str | None
    frozen_leases: int


@dataclass(frozen=True)
class SyncRow:
    """One attempt to read a ban list."""

    sync_id: int
    source: str
    at: datetime
    actor: str
    status: str
    entries: int | None
    added: int
    removed: int
    error: str | None


@dataclass(frozen=True)
class SourceState:
    """How a ban source stands: configured, last good read, last attempt."""

    name: str
    configured: bool
    location: str | None
    bans: int
    last_read: datetime | None
    last_attempt: datetime | None
    last_status: str | None
    last_error: str | None
    stale: bool

    @property
    def never_read(self) -> bool:
        """Return whether no read of this source was ever accepted."""
        return self.last_read is None


def list_bans(
    session: Session, *, origin: str | None = None, include_lifted: bool = False
) -> list[BanRow]:
    """Return bans (in force unless include_lifted) of origin (or all), oldest first."""
    stmt = select(Ban).order_by(Ban.id)
    if not include_lifted:
        stmt = stmt.where(Ban.active == 1)
    if origin is not None:
        stmt = stmt.where(Ban.origin == origin)
    counts = frozen_counts(session)
    return [ban_row(ban, counts.get(ban.id, 0)) for ban in session.scalars(stmt)]


def ban_row(ban: Ban, frozen: int = 0) -> BanRow:
    """Return the display row of a ban."""
    return BanRow(
        ban_id=ban.id,
        kind=ban.kind,
        entry=ban.entry,
        origin=ban.origin,
        reason=ban.reason,
        created_at=ban.created_at,
        created_by=ban.created_by,
        lifted_at=ban.lifted_at,
        lifted_by=ban.lifted_by,
        lift_reason=ban.lift_reason,
        frozen_leases=frozen if ban.active else 0,
    )


def list_syncs(
    session: Session, *, source: str | None = None, limit: int = 20
) -> list[SyncRow]:
    """Return the newest sync attempts (of source, or all), newest first."""
    stmt = select(BanSync).order_by(BanSync.at.desc(), BanSync.id.desc()).limit(limit)
    if source is not None:
        stmt = stmt.where(BanSync.source == source)
    return [_sync_row(sync) for sync in session.scalars(stmt)]


def sync_changes(
    session: Session, sync_id: int
) -> tuple[SyncRow, list[Ban], list[Ban]]:
    """Return a sync with the bans it added and the bans it lifted.

    Raises NotFoundError for an unknown sync id.
    """
    sync = session.get(BanSync, sync_id)
    if sync is None:
        raise NotFoundError(f"No ban list sync with id {sync_id}.")
    changed = session.scalars(
        select(Ban)
        .where(or_(Ban.added_sync_id == sync_id, Ban.removed_sync_id == sync_id))
        .order_by(Ban.id)
    ).all()
    added = [ban for ban in changed if ban.added_sync_id == sync_id]
    removed = [ban for ban in changed if ban.removed_sync_id == sync_id]
    return _sync_row(sync), added, removed


def _sync_row(sync: BanSync) -> SyncRow:
    return SyncRow(
        sync_id=sync.id,
        source=sync.source,
        at=sync.at,
        actor=sync.actor,
        status=sync.status,
        entries=sync.entries,
        added=sync.added,
        removed=sync.removed,
        error=sync.error,
    )


def source_states(
    session: Session, settings: Settings, now: datetime
) -> list[SourceState]:
    """Return every configured source, then unconfigured ones with bans in force.

    A configured source is stale when its last accepted read is older than
    its stale_after; an unconfigured one keeps its bans until forgotten.
    """
    standing = dict(
        session.execute(
            select(Ban.origin, func.count())
            .where(Ban.active == 1, Ban.origin != HAND)
            .group_by(Ban.origin)
        ).all()
    )
    states = []
    for source in settings.ban_sources:
        last_read, last = _last_syncs(session, source.name)
        stale = last_read is not None and source.stale.after(last_read) < now
        states.append(
            _state(source.name, source.location, standing, last_read, last, stale)
        )
    configured = {source.name for source in settings.ban_sources}
    for origin in sorted(standing):
        name = origin.removeprefix("source:")
        if name not in configured:
            last_read, last = _last_syncs(session, name)
            states.append(_state(name, None, standing, last_read, last, False))
    return states


def _last_syncs(session: Session, name: str) -> tuple[datetime | None, BanSync | None]:
    last_read = session.scalar(
        select(func.max(BanSync.at)).where(
            BanSync.source == name, BanSync.status == "accepted"
        )
    )
    last = session.scalars(
        select(BanSync)
        .where(BanSync.source == name)
        .order_by(BanSync.at.desc(), BanSync.id.desc())
        .limit(1)
    ).first()
    return last_read, last


def _state(
    name: str,
    location: str | None,
    standing: dict[str, int],
    last_read: datetime | None,
    last: BanSync | None,
    stale: bool,
) -> SourceState:
    return SourceState(
        name=name,
        configured=location is not None,
        location=location,
        bans=standing.get(f"source:{name}", 0),
        last_read=last_read,
        last_attempt=last.at if last else None,
        last_status=last.status if last else None,
        last_error=last.error if last else None,
        stale=stale,
    )


# The audit's section on bans, holds and refusals.

AUDITED_EVENTS = (
    "ban_added",
    "ban_lifted",
    "ban_list_synced",
    "ban_list_rejected",
    "ban_list_unreadable",
    "hold_started",
    "hold_released",
    "hold_flag_cleared",
    "mapping_refused",
)


@dataclass(frozen=True)
class RestrictedAccount:
    """An account kept from recycling now: frozen (banned holder) or held."""

    account: str
    pool: str
    status: str
    why: str
    holder: str | None


@dataclass(frozen=True)
class BanEvent:
    """One ban, hold, list or refusal event of the audited period."""

    at: datetime
    kind: str
    actor: str | None
    subject: str | None
    detail: str | None


@dataclass(frozen=True)
class BanAudit:
    """Bans in force, frozen and held accounts, and the period's events."""

    hand_bans: int
    source_bans: int
    restricted: list[RestrictedAccount]
    events: list[BanEvent]


def ban_audit(session: Session, since: datetime) -> BanAudit:
    """Return what the audit shows about bans, holds and refused mappings.

    Bans read from central lists are summed up by their sync events rather
    than listed one by one; hand bans are listed.
    """
    counts = dict(
        session.execute(
            select(Ban.origin, func.count()).where(Ban.active == 1).group_by(Ban.origin)
        ).all()
    )
    hand = counts.pop(HAND, 0)
    return BanAudit(
        hand_bans=hand,
        source_bans=sum(counts.values()),
        restricted=_restricted(session),
        events=_ban_events(session, since),
    )


def _restricted(session: Session) -> list[RestrictedAccount]:
    frozen = frozen_accounts(session)
    held = held_accounts(session)
    ids = sorted(set(frozen) | set(held))
    if not ids:
        return []
    rows = session.execute(
        select(Account.id, Account.name, Pool.name, Identity.display)
        .join(Pool, Pool.id == Account.pool_id)
        .outerjoin(Lease, Lease.open_account_id == Account.id)
        .outerjoin(Identity, Identity.id == Lease.identity_id)
        .where(Account.id.in_(ids))
        .order_by(Pool.name, Account.name)
    )
    result = []
    for account_id, name, pool, holder in rows:
        whys, status = [], []
        if account_id in frozen:
            status.append("frozen")
            whys.append(f"holder refused by the {frozen[account_id].describe()}")
        if account_id in held:
            hold = held[account_id]
            status.append("held")
            whys.append(f"held by {hold.started_by}: {hold.reason}")
        result.append(
            RestrictedAccount(name, pool, ", ".join(status), "; ".join(whys), holder)
        )
    return result


def _ban_events(session: Session, since: datetime) -> list[BanEvent]:
    rows = session.scalars(
        select(Event)
        .where(Event.kind.in_(AUDITED_EVENTS), Event.at >= since)
        .order_by(Event.at, Event.id)
    )
    events = []
    for event in rows:
        details = json.loads(event.details) if event.details else {}
        shown = _describe_event(event, details)
        if shown is not None:
            events.append(BanEvent(event.at, event.kind, event.actor, *shown))
    return events


def _describe_event(
    event: Event, details: dict[str, Any]
) -> tuple[str | None, str | None] | None:
    """Return (subject, detail) of an event, or None to leave it out."""
    kind = event.kind
    if kind.startswith("ban_list_"):
        if kind == "ban_list_synced":
            if not (details.get("added") or details.get("removed")):
                return None
            counts = f"{details.get('added', 0)} added, {details.get('removed', 0)}"
            return details.get("source"), f"{counts} removed"
        return details.get("source"), event.reason
    if kind.startswith("ban_"):
        if details.get("origin") != HAND:
            return None
        return details.get("entry"), event.reason
    if kind.startswith("hold_"):
        return event.account, event.reason
    entry = details.get("entry") or details.get("sources")
    repeats = details.get("suppressed")
    more = f" (+{repeats} refusals not recorded)" if repeats else ""
    return event.dn, f"{event.reason}: {entry}{more}"


# The ban list check of 'poolmgr check'.

OK, WARNING, CRITICAL = 0, 1, 2


def ban_health(session: Session, settings: Settings, now: datetime) -> tuple[int, str]:
    """Return (0 OK, 1 WARNING or 2 CRITICAL, one line) about bans and sources.

    CRITICAL: a configured source never read, so every mapping is refused.
    WARNING: a source's last read failed, its last good read is stale, or
    bans of a source no longer configured are in force. The line also
    counts bans, frozen leases and held accounts.
    """
    critical, warning = [], []
    for state in source_states(session, settings, now):
        if not state.configured:
            warning.append(f"{state.name} not configured, {state.bans} bans in force")
        elif state.never_read:
            critical.append(f"{state.name} never read, every mapping is refused")
        elif state.last_status != "accepted":
            error = (state.last_error or "")[:120].rstrip(".")
            warning.append(f"{state.name} last read {state.last_status}: {error}")
        elif state.stale:
            warning.append(f"{state.name} stale since {format_time(state.last_read)}")
    level = CRITICAL if critical else (WARNING if warning else OK)
    problems = "; ".join(critical + warning)
    summary = _ban_summary(session)
    return level, f"ban lists: {problems}; {summary}" if problems else summary


def _ban_summary(session: Session) -> str:
    standing = session.scalar(select(func.count()).where(Ban.active == 1)) or 0
    frozen = len(frozen_leases(session))
    held = len(held_accounts(session))
    return (
        f"{standing} ban(s) in force, {frozen} frozen lease(s), {held} held account(s)"
    )
