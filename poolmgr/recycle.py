"""Recycling: end leases past their quiet period, clean the account, free it.

For each account the steps run in this order, each write in its own short
transaction, so that an account is never free before its cleanup succeeded
and a crash at any point leaves it out of service rather than handed out:

1. the site's in-use check, if configured; an account in use is postponed;
2. the lease ends (reason ``quiet_period``, or ``override`` for a forced
   recycle) and the account goes to state ``cleaning``: out of service;
3. the site's cleanup command runs, outside any transaction, with a timeout;
4. on success the account becomes free; on failure a ``cleanup_failed``
   event is recorded and the account stays out of service.

An account under an incident hold, or whose lease is frozen because its
holder is banned, is neither ended nor cleaned (holds.recycle_blocks): the
investigation needs it as it is.

Every run first retries the accounts still out of service. The periodic run
reads only open leases whose last use is before the quiet period's loose
cutoff, in keyset batches over the index on (open_marker, last_used_at), and
checks each one exactly, so its cost and memory do not grow with history.
"""

import os
import pwd
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    CursorResult,
    Engine,
    Row,
    Select,
    Update,
    and_,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from poolmgr import events
from poolmgr.bans import VERSION
from poolmgr.db import is_sqlite, unit_of_work
from poolmgr.errors import NotFoundError, PolicyError
from poolmgr.freetext import check_actor, check_reason
from poolmgr.holds import recycle_blocks, unblocking_steps
from poolmgr.leases import end_lease
from poolmgr.models import Account, Identity, Lease, Pool
from poolmgr.runlock import exclusive
from poolmgr.settings import Settings
from poolmgr.site_commands import CommandResult, Runner, run_command
from poolmgr.timeutil import Duration, format_time, utcnow

QUIET_PERIOD = "quiet_period"
OVERRIDE = "override"
OUT_OF_SERVICE = "cleaning"
FAILURES = frozenset({"cleanup_failed", "check_failed"})
_BATCH = 200


def default_actor() -> str:
    """Return who is acting: the sudo caller, else the login, else the uid's name."""
    sudo = os.environ.get("SUDO_USER")
    if sudo:
        return sudo
    try:
        return os.getlogin()
    except OSError:
        pass
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid:{os.getuid()}"


def due_at(quiet: Duration, last_use: datetime) -> datetime:
    """Return the first instant at which a lease last used then may be recycled."""
    return quiet.after(last_use)


def is_quiet_over(quiet: Duration, last_use: datetime, now: datetime) -> bool:
    """Return whether the quiet period after last_use has fully passed at now.

    A last use in the future (a node with a fast clock) is never old.
    """
    return due_at(quiet, last_use) <= now


@dataclass(frozen=True)
class Target:
    """An account to recycle and the lease that ends, or ended, on it."""

    account_id: int
    account: str
    uid: int
    pool: str
    reason: str
    lease_id: int | None = None
    identity_id: int | None = None
    dn: str | None = None
    last_use: datetime | None = None
    retry: bool = False


@dataclass(frozen=True)
class Outcome:
    """One action of a run, printed as one line."""

    action: str
    target: Target
    detail: str = ""

    @property
    def failed(self) -> bool:
        """Return whether this action makes the run exit non-zero."""
        return self.action in FAILURES

    def line(self) -> str:
        """Render the action as 'action account=... key=value ...' (syslog quoting)."""
        t = self.target
        fields = {
            "account": t.account,
            "pool": t.pool,
            "lease": t.lease_id,
            "last_use": format_time(t.last_use),
            "dn": t.dn,
            "note": self.detail or None,
        }
        return events.format_fields(self.action, fields).removeprefix("event=")


def command_variables(target: Target, purpose: str) -> dict[str, str]:
    """Return the POOLMGR_* variables that describe target to a site command."""
    return {
        "POOLMGR_ACTION": purpose,
        "POOLMGR_ACCOUNT": target.account,
        "POOLMGR_UID": str(target.uid),
        "POOLMGR_POOL": target.pool,
        "POOLMGR_DN": target.dn or "",
        "POOLMGR_LEASE_ID": "" if target.lease_id is None else str(target.lease_id),
        "POOLMGR_LAST_USE": format_time(target.last_use) if target.last_use else "",
        "POOLMGR_REASON": target.reason,
    }


class Recycler:
    """Recycles accounts on one database with the site's commands."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        actor: str | None = None,
        runner: Runner = run_command,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.quiet = settings.quiet
        self.actor = check_actor(actor if actor is not None else default_actor())
        self.runner = runner

    def run(
        self, now: datetime | None = None, *, dry_run: bool = False
    ) -> Iterator[Outcome]:
        """Retry accounts out of service, then recycle leases past the quiet period.

        Yields one Outcome per action as it happens. A dry run yields the plan
        (``would_retry``, ``would_recycle``), runs no command and changes nothing.
        Accounts under an incident hold or with a frozen lease (a banned
        holder) are neither ended nor cleaned; they are reported as blocked.
        Raises RunLockedError when another run (or an override) is under way
        on this database, from any host.
        """
        now = now or utcnow()
        with self._one_run(dry_run):
            yield from self._steps(now, dry_run=dry_run)

    def _steps(self, now: datetime, *, dry_run: bool) -> Iterator[Outcome]:
        with unit_of_work(self.engine, write=False) as session:
            blocks = recycle_blocks(session)
        for target in self._out_of_service():
            if target.account_id in blocks:
                yield Outcome("blocked", target, blocks[target.account_id])
            elif dry_run:
                yield Outcome("would_retry", target)
            else:
                yield self._clean(target, now)
        for target in self._past_quiet(now):
            if target.account_id in blocks:
                yield Outcome("blocked", target, blocks[target.account_id])
            elif not dry_run:
                yield from self._recycle(target, now)
            else:
                assert target.last_use is not None
                due = due_at(self.quiet, target.last_use)
                yield Outcome("would_recycle", target, f"due {format_time(due)}")

    def force(
        self,
        account: str,
        reason: str | None,
        *,
        ignore_in_use: bool = False,
        now: datetime | None = None,
        dry_run: bool = False,
    ) -> list[Outcome]:
        """Recycle one account inside its quiet period, as a recorded override.

        Raises BadInputError without a reason, NotFoundError for an unknown
        account, PolicyError when it has no open lease, is held or frozen, or
        the in-use check says it is in use (unless ignore_in_use, which is
        recorded too).
        """
        steps = self.force_steps(
            account, reason, ignore_in_use=ignore_in_use, now=now, dry_run=dry_run
        )
        return list(steps)

    def force_steps(
        self,
        account: str,
        reason: str | None,
        *,
        ignore_in_use: bool = False,
        now: datetime | None = None,
        dry_run: bool = False,
    ) -> Iterator[Outcome]:
        """Do what force does, yielding the override as soon as it is committed.

        The override comes before the cleanup runs, so a caller that is
        interrupted during the cleanup has already reported it. Like a run,
        an override waits for no other run: RunLockedError.
        """
        reason = check_reason(reason)
        now = now or utcnow()
        with self._one_run(dry_run):
            yield from self._override(account, reason, ignore_in_use, now, dry_run)

    def _one_run(self, dry_run: bool) -> AbstractContextManager[None]:
        """The database-wide recycle lock; a dry run changes nothing and needs none."""
        return nullcontext() if dry_run else exclusive(self.engine, "recycle")

    def _override(
        self,
        account: str,
        reason: str,
        ignore_in_use: bool,
        now: datetime,
        dry_run: bool,
    ) -> Iterator[Outcome]:
        target = replace(self._open_target(account), reason=OVERRIDE)
        with unit_of_work(self.engine, write=False) as session:
            blocked = recycle_blocks(session, [target.account_id])
            steps = unblocking_steps(session, target.account_id)
        if blocked:
            why = blocked[target.account_id]
            raise PolicyError(
                f"Account {account!r} cannot be recycled: {why}; "
                f"{' and '.join(steps)} first."
            )
        if dry_run:
            yield Outcome("would_override", target, reason)
            return
        busy = None if ignore_in_use else self._in_use(target)
        if busy is not None:
            action, why = busy
            found = "the in-use check says so" if action == "postponed" else why
            raise PolicyError(
                f"Account {account!r} counts as in use ({found}); add "
                "--ignore-in-use to recycle it anyway."
            )
        ended = self._end(target, now, override=reason, ignore_in_use=ignore_in_use)
        if ended is None:
            raise PolicyError(f"Account {account!r} has no open lease any more.")
        yield Outcome(OVERRIDE, ended, reason)
        yield self._clean(ended, now)

    def _recycle(self, target: Target, now: datetime) -> Iterator[Outcome]:
        busy = self._in_use(target)
        if busy is not None:
            action, why = busy
            with unit_of_work(self.engine) as session:
                self._record(session, target, "in_use_postponed", now, reason=why)
            yield Outcome(action, target, why)
            return
        ended = self._end(target, now)
        if ended is None:
            yield Outcome("skipped", target, "used, ended or held meanwhile")
            return
        yield self._clean(ended, now)

    def _in_use(self, target: Target) -> tuple[str, str] | None:
        """Return (action, why) when the account counts as in use, else None.

        The check exits 0 for in use and 1 for not in use; anything else is
        a failed check, and the account counts as in use.
        """
        command = self.settings.recycle.in_use_command
        if command is None:
            return None
        result = self._run(command, target, "in-use-check")
        if result.status == 1:
            return None
        if result.status == 0:
            return "postponed", "in use"
        return "check_failed", f"in-use check failed: {result.describe()}"

    def _end(
        self,
        target: Target,
        now: datetime,
        *,
        override: str | None = None,
        ignore_in_use: bool = False,
    ) -> Target | None:
        """End the target's lease and take the account out of service; commit.

        The lease is read again under lock: a mapping since the plan was made
        may have refreshed its last use, and then a periodic run leaves it.
        An override (its reason given) ends it regardless and waives the
        quiet period. The account is locked before the lease, in the order
        a hold takes them, so a hold placed meanwhile waits instead of
        deadlocking.
        """
        with unit_of_work(self.engine) as session:
            lease = self._lock_open_lease(session, target)
            if lease is None or recycle_blocks(session, [lease.account_id]):
                return None
            if override is None and not is_quiet_over(
                self.quiet, lease.last_used_at, now
            ):
                return None
            ended = replace(target, last_use=lease.last_used_at)
            if override is not None:
                self._record_override(session, ended, now, override, ignore_in_use)
            end_lease(
                session,
                lease,
                reason=target.reason,
                actor=self.actor,
                now=now,
                note=override,
                waive_quiet=override is not None,
            )
            account = session.get(Account, lease.account_id)
            assert account is not None
            account.state = OUT_OF_SERVICE
        return ended

    def _clean(self, target: Target, now: datetime) -> Outcome:
        """Run the cleanup command; free the account only when it succeeded.

        A hold placed since the run began keeps the account as it is: its
        files may be evidence.
        """
        with unit_of_work(self.engine, write=False) as session:
            blocked = recycle_blocks(session, [target.account_id])
        if blocked:
            return Outcome("blocked", target, blocked[target.account_id])
        command = self.settings.recycle.cleanup_command
        result = CommandResult(0, "")
        if command is not None:
            result = self._run(command, target, "cleanup")
        notes = ["retried after a failed cleanup"] if target.retry else []
        with unit_of_work(self.engine) as session:
            if result.status != 0:
                detail = f"cleanup failed: {result.describe()}"
                self._record(session, target, "cleanup_failed", now, reason=detail)
                return Outcome("cleanup_failed", target, detail)
            surplus = self._surplus(session, target)
            values: dict[str, Any] = {"state": "free"}
            if surplus is not None:
                values = {"state": "retired", "retired_at": now}
                notes.append(surplus)
            freed = _changed(
                session,
                update(Account)
                .where(Account.id == target.account_id, Account.state == OUT_OF_SERVICE)
                .values(values),
            )
            if not freed:
                return Outcome("skipped", target, "no longer out of service")
            self._record(
                session,
                target,
                "recycled",
                now,
                end_reason=target.reason,
                retired=surplus,
            )
        return Outcome("recycled", target, "; ".join(notes))

    def _surplus(self, session: Session, target: Target) -> str | None:
        """Return why a cleaned account retires instead of going free, or None.

        An account that a sync shrinking its pool kept because it was in use
        retires once cleaned, so that it is never handed out again. The pool
        row is locked shared, so a sync resizing the pool meanwhile commits
        first (and this reads its size) or waits for this account's fate.
        """
        number, pool_id = session.execute(
            select(Account.number, Account.pool_id).where(
                Account.id == target.account_id
            )
        ).one()
        pool = select(Pool.size, Pool.retired_at).where(Pool.id == pool_id)
        if not is_sqlite(self.engine):
            pool = pool.with_for_update(read=True)
        size, retired_at = session.execute(pool).one()
        if retired_at is not None:
            return f"retired with its pool {target.pool}"
        if number > size:
            return f"retired: pool {target.pool} has shrunk to {size} account(s)"
        return None

    def _record(
        self, session: Session, target: Target, kind: str, now: datetime, **fields: Any
    ) -> None:
        events.record(
            session,
            kind,
            at=now,
            actor=self.actor,
            pool=target.pool,
            account=target.account,
            identity_id=target.identity_id,
            dn=target.dn,
            lease_id=target.lease_id,
            last_use=format_time(target.last_use) if target.last_use else None,
            **fields,
        )

    def _record_override(
        self,
        session: Session,
        target: Target,
        now: datetime,
        reason: str,
        ignore_in_use: bool,
    ) -> None:
        assert target.last_use is not None
        self._record(
            session,
            target,
            OVERRIDE,
            now,
            reason=reason,
            quiet_until=format_time(due_at(self.quiet, target.last_use)),
            in_use_check="ignored" if ignore_in_use else None,
        )

    def _lock_open_lease(self, session: Session, target: Target) -> Lease | None:
        """Lock the account, its open lease and the bans, in that order.

        The bans are locked shared: a ban added meanwhile (which locks them
        exclusively) either commits first, and the block check that follows
        sees it, or waits until this lease has ended.
        """
        lease = select(Lease).where(Lease.id == target.lease_id, Lease.open_marker == 1)
        if is_sqlite(self.engine):
            return session.scalars(lease).first()
        account = select(Account.id).where(Account.id == target.account_id)
        session.execute(account.with_for_update())
        locked = session.scalars(lease.with_for_update()).first()
        session.execute(VERSION.with_for_update(read=True))
        return locked

    def _open_target(self, name: str) -> Target:
        with unit_of_work(self.engine, write=False) as session:
            account = session.scalars(
                select(Account).where(Account.name == name)
            ).first()
            if account is None:
                raise NotFoundError(f"No pool account named {name[:64]!r}.")
            row = session.execute(
                _target_select().where(Lease.open_account_id == account.id)
            ).first()
        if row is not None:
            return _target(row, QUIET_PERIOD)
        if account.state == OUT_OF_SERVICE:
            raise PolicyError(
                f"Account {name!r} is already out of service awaiting cleanup; "
                "'poolmgr recycle' retries it."
            )
        raise PolicyError(f"Account {name!r} has no open lease; nothing to recycle.")

    def _past_quiet(self, now: datetime) -> Iterator[Target]:
        cutoff = self.quiet.safe_cutoff(now)
        after: tuple[datetime, int] | None = None
        while True:
            with unit_of_work(self.engine, write=False) as session:
                rows = session.execute(_due_batch(cutoff, after)).all()
            for row in rows:
                target = _target(row, QUIET_PERIOD)
                assert target.last_use is not None
                if is_quiet_over(self.quiet, target.last_use, now):
                    yield target
            if len(rows) < _BATCH:
                return
            after = (rows[-1].last_used_at, rows[-1].lease_id)

    def _out_of_service(self) -> Iterator[Target]:
        after = 0
        while True:
            with unit_of_work(self.engine, write=False) as session:
                batch = _out_of_service_batch(session, after)
            yield from batch
            if len(batch) < _BATCH:
                return
            after = batch[-1].account_id

    def _run(self, command: list[str], target: Target, purpose: str) -> CommandResult:
        argv = [*command, target.account]
        variables = command_variables(target, purpose)
        return self.runner(argv, variables, self.settings.recycle.command_timeout)


def _target_select() -> Select[*tuple[Any, ...]]:
    return (
        select(
            Lease.id.label("lease_id"),
            Lease.last_used_at,
            Lease.end_reason,
            Lease.identity_id,
            Account.id.label("account_id"),
            Account.name.label("account"),
            Account.uid,
            Pool.name.label("pool"),
            Identity.display.label("dn"),
        )
        .join(Account, Account.id == Lease.account_id)
        .join(Pool, Pool.id == Lease.pool_id)
        .join(Identity, Identity.id == Lease.identity_id)
    )


def _due_batch(
    cutoff: datetime, after: tuple[datetime, int] | None
) -> Select[*tuple[Any, ...]]:
    stmt = _target_select().where(Lease.open_marker == 1, Lease.last_used_at <= cutoff)
    if after is not None:
        stmt = stmt.where(
            or_(
                Lease.last_used_at > after[0],
                and_(Lease.last_used_at == after[0], Lease.id > after[1]),
            )
        )
    return stmt.order_by(Lease.last_used_at, Lease.id).limit(_BATCH)


def _out_of_service_batch(session: Session, after: int) -> list[Target]:
    accounts = session.execute(
        select(Account.id, Account.name, Account.uid, Pool.name.label("pool"))
        .join(Pool, Pool.id == Account.pool_id)
        .where(Account.state == OUT_OF_SERVICE, Account.id > after)
        .order_by(Account.id)
        .limit(_BATCH)
    ).all()
    targets = []
    for account in accounts:
        row = session.execute(
            _target_select()
            .where(Lease.account_id == account.id)
            .order_by(Lease.started_at.desc(), Lease.id.desc())
            .limit(1)
        ).first()
        if row is None:
            targets.append(Target(*account, reason="", retry=True))
        else:
            targets.append(_target(row, row.end_reason or "", retry=True))
    return targets


def _target(row: Row[*tuple[Any, ...]], reason: str, *, retry: bool = False) -> Target:
    return Target(
        account_id=row.account_id,
        account=row.account,
        uid=row.uid,
        pool=row.pool,
        lease_id=row.lease_id,
        identity_id=row.identity_id,
        dn=row.dn,
        last_use=row.last_used_at,
        reason=reason,
        retry=retry,
    )


def _changed(session: Session, statement: Update) -> int:
    result = cast(CursorResult[Any], session.execute(statement))
    return result.rowcount
