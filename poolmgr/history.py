"""Traceability: who held an account when, a person's leases, uses, and the proof.

Lease rows are never deleted and never change once ended, so the history
answers "who was atlas042 on 3 May at 14:00?" for as long as the database
lives. ``verify_history`` reads the whole lease history once, in order, and
lists every handover of an account to another person inside its quiet
period that no override allowed.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import CursorResult, Row, select
from sqlalchemy.orm import Session

from poolmgr import events
from poolmgr.dn import parse_subject
from poolmgr.errors import BadInputError, NoLeaseError, NotFoundError
from poolmgr.identities import find_identity
from poolmgr.lease_sql import TOUCH_OPEN_LEASE
from poolmgr.models import Account, Identity, Lease, Pool
from poolmgr.recycle import OVERRIDE
from poolmgr.timeutil import Duration, as_utc, format_time
from poolmgr.views import LeaseRow, list_leases

_CHUNK = 2000


@dataclass(frozen=True)
class Holder:
    """The answer to "who held account at a time": a lease, or nobody."""

    account: str
    at: datetime
    lease: LeaseRow | None


@dataclass(frozen=True)
class PersonHistory:
    """Every lease one person ever held, across pools, oldest first."""

    dn: str
    leases: list[LeaseRow]


@dataclass(frozen=True)
class TouchResult:
    """The use recorded on an account's open lease."""

    account: str
    lease_id: int
    dn: str
    last_used_at: datetime
    changed: bool


@dataclass(frozen=True)
class Violation:
    """An account handed to another person while the previous one could return."""

    account: str
    pool: str
    problem: str
    previous_lease_id: int
    previous_dn: str
    previous_last_use: datetime
    previous_ended_at: datetime | None
    lease_id: int
    dn: str
    started_at: datetime
    quiet_until: datetime


@dataclass(frozen=True)
class HistoryCheck:
    """The result of checking the whole lease history."""

    leases_checked: int
    violations: list[Violation]


def who_held(session: Session, account: str, at: datetime) -> Holder:
    """Return the lease on account that was open at the given time, if any.

    A lease covers [started_at, ended_at): at the instant it ended, nobody
    holds the account through it. Raises NotFoundError for an unknown account.
    """
    if session.scalar(select(Account.id).where(Account.name == account)) is None:
        raise NotFoundError(f"No pool account named {account[:64]!r}.")
    at = as_utc(at)
    for row in list_leases(session, account=account, include_ended=True):
        if row.started_at <= at and (row.ended_at is None or row.ended_at > at):
            return Holder(account, at, row)
    return Holder(account, at, None)


def person_history(session: Session, dn: str) -> PersonHistory:
    """Return every lease of the person named by dn (any DN form), oldest first.

    Raises BadInputError for a malformed DN and NotFoundError for a person
    who never held a lease here.
    """
    identity = find_identity(session, parse_subject(dn))
    if identity is None:
        raise NotFoundError(f"No lease was ever held by {dn[:200]!r}.")
    rows = list_leases(session, dn=dn, include_ended=True)
    return PersonHistory(identity.display, list(reversed(rows)))


def touch_account(session: Session, name: str, now: datetime) -> TouchResult:
    """Record a use of the account's open lease: last use becomes max(old, now).

    For uses that are not mappings, such as a batch job's end. Raises
    NotFoundError for an unknown account and NoLeaseError when it has no open
    lease. Writes no event row: a use is not a state change.
    """
    account_id = session.scalar(select(Account.id).where(Account.name == name))
    if account_id is None:
        raise NotFoundError(f"No pool account named {name[:64]!r}.")
    lease = session.scalars(
        select(Lease).where(Lease.open_account_id == account_id)
    ).first()
    if lease is None:
        raise NoLeaseError(f"Account {name!r} has no open lease to record a use on.")

    changed = lease.last_used_at < now
    # Guarded: recycling or an override may have ended the lease since it
    # was read, and an ended lease is never changed.
    touched = session.execute(
        TOUCH_OPEN_LEASE.execution_options(synchronize_session=False),
        {"lease_id": lease.id, "now": now},
    )
    if not cast(CursorResult[Any], touched).rowcount:
        raise NoLeaseError(f"Account {name!r} has no open lease to record a use on.")
    identity = session.get(Identity, lease.identity_id)
    dn = identity.display if identity else ""
    events.queue_log(
        session, logging.DEBUG, "use", account=name, dn=dn, lease_id=lease.id
    )
    last = now if changed else lease.last_used_at
    return TouchResult(name, lease.id, dn, last, changed)


def verify_history(
    session: Session, quiet: Duration, *, started_since: datetime | None = None
) -> HistoryCheck:
    """Check every handover of every account against the quiet period.

    With started_since, only the accounts that got a lease since then are
    checked (each over its whole history), as the monitoring probe does.

    Streams all leases ordered by account and start (server-side cursor,
    constant memory) and reports a lease of another person that began while
    the previous lease was still open, or before the quiet period after the
    account's last use was over, unless that previous lease ended by
    override. The current quiet period setting is the measure.
    """
    stmt = (
        select(
            Lease.id,
            Lease.account_id,
            Lease.identity_id,
            Lease.started_at,
            Lease.last_used_at,
            Lease.ended_at,
            Lease.end_reason,
        )
        .order_by(Lease.account_id, Lease.started_at, Lease.id)
        .execution_options(yield_per=_CHUNK)
    )
    if started_since is not None:
        recent = select(Lease.account_id).where(Lease.started_at >= started_since)
        stmt = stmt.where(Lease.account_id.in_(recent))
    found: list[tuple[int, int, str, datetime]] = []
    count = 0
    earlier: Row[*tuple[Any, ...]] | None = None
    last_use = datetime.min.replace(tzinfo=UTC)
    longest = _longest_span(quiet)
    # Plain Core rows: the ORM result layer costs a third more per row, which
    # shows over a million leases.
    for row in session.connection().execute(stmt):
        count += 1
        if earlier is None or earlier.account_id != row.account_id:
            last_use = row.last_used_at
        else:
            if earlier.identity_id != row.identity_id:
                problem = _handover_problem(earlier, row, last_use, quiet, longest)
                if problem is not None:
                    found.append((earlier.id, row.id, problem, quiet.after(last_use)))
            last_use = max(last_use, row.last_used_at)
        earlier = row
    return HistoryCheck(count, _describe(session, found))


def parse_zone(name: str | None) -> tzinfo:
    """Return the time zone to show times in: UTC unless an IANA name is given."""
    if name is None or name.upper() in ("UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a name too long for a file name, or one naming a directory.
        raise BadInputError(
            f"Time zone {name[:64]!r} is not known; give an IANA name such as "
            "Europe/Zurich."
        ) from None


def show_time(value: datetime | None, zone: tzinfo = UTC) -> str:
    """Render a time in zone: ISO 8601 with Z for UTC, with the offset otherwise."""
    if value is None or zone is UTC:
        return format_time(value)
    return as_utc(value).astimezone(zone).isoformat(timespec="seconds")


def _handover_problem(
    earlier: Row[*tuple[Any, ...]],
    row: Row[*tuple[Any, ...]],
    last_use: datetime,
    quiet: Duration,
    longest: timedelta,
) -> str | None:
    if earlier.ended_at is None or earlier.ended_at > row.started_at:
        return "overlapping leases"
    if earlier.end_reason == OVERRIDE or row.started_at - last_use >= longest:
        return None
    if quiet.after(last_use) > row.started_at:
        return "inside the quiet period"
    return None


def _longest_span(quiet: Duration) -> timedelta:
    """Return a span that the quiet period never exceeds, wherever it starts.

    Calendar arithmetic is slow, and most handovers happen long after the
    quiet period; only those closer than this bound are checked exactly.
    """
    d = quiet.delta
    return timedelta(
        days=366 * d.years + 31 * d.months + d.days,
        hours=d.hours,
        minutes=d.minutes,
        seconds=d.seconds,
        microseconds=d.microseconds,
    )


def _describe(
    session: Session, found: list[tuple[int, int, str, datetime]]
) -> list[Violation]:
    ids = sorted({lease_id for pair in found for lease_id in pair[:2]})
    leases: dict[int, Row[*tuple[Any, ...]]] = {}
    for start in range(0, len(ids), 500):
        rows = session.execute(
            select(
                Lease.id,
                Lease.started_at,
                Lease.last_used_at,
                Lease.ended_at,
                Account.name.label("account"),
                Pool.name.label("pool"),
                Identity.display.label("dn"),
            )
            .join(Account, Account.id == Lease.account_id)
            .join(Pool, Pool.id == Lease.pool_id)
            .join(Identity, Identity.id == Lease.identity_id)
            .where(Lease.id.in_(ids[start : start + 500]))
        )
        leases.update((row.id, row) for row in rows)
    return [
        Violation(
            account=leases[lease_id].account,
            pool=leases[lease_id].pool,
            problem=problem,
            previous_lease_id=earlier_id,
            previous_dn=leases[earlier_id].dn,
            previous_last_use=leases[earlier_id].last_used_at,
            previous_ended_at=leases[earlier_id].ended_at,
            lease_id=lease_id,
            dn=leases[lease_id].dn,
            started_at=leases[lease_id].started_at,
            quiet_until=quiet_until,
        )
        for earlier_id, lease_id, problem, quiet_until in found
    ]
