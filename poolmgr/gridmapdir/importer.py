"""``gridmapdir import``: take over the leases of an existing gridmapdir.

An account file is recognised by its name among poolmgr's accounts, so the
pool comes from the pool definitions, never from a name prefix (F08); files
named like no known account are listed as unknown accounts. A lease is a
name starting with "%" on the same inode as a known account file; its last
use is the inode's mtime. The import start is unknown, so an imported lease
starts at its last use, and a ``gridmapdir_imported`` event records the
source. Nothing the import cannot interpret becomes a person: solitary
links (stale), inodes with more than two names, undecodable names, leases
on unknown accounts, a second ``mapcount`` lease of one person, and
anything that disagrees with poolmgr's own open leases are reported.

Running the import again changes nothing: a lease poolmgr already has for
the same person and account is kept; only a later mtime moves its last use
forward (LCMAPS recorded a use that poolmgr did not see).
"""

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from poolmgr import events
from poolmgr.gridmapdir.names import (
    DecodedName,
    UnresolvableNameError,
    decode_lease_name,
)
from poolmgr.gridmapdir.scan import PROGRESS_EVERY, Inode, Progress, scan_gridmapdir
from poolmgr.identities import X509, get_or_create_identity, key_hash
from poolmgr.models import Account, Identity, Lease, Pool
from poolmgr.timeutil import Duration, format_time

logger = logging.getLogger(__name__)
SIX_MONTHS = Duration.parse("6 months")

ACTOR = "gridmapdir-import"


@dataclass(frozen=True)
class Finding:
    """A name the import did not take over, and why."""

    kind: str
    name: str
    detail: str


@dataclass(frozen=True)
class PlannedLease:
    """One lease of the gridmapdir and what the import does with it."""

    name: str
    account: str
    pool: str
    dn: str
    last_use: datetime
    groups: tuple[str, ...]
    action: str
    account_id: int = field(repr=False)
    pool_id: int = field(repr=False)
    lease_id: int | None = field(default=None, repr=False)
    decoded: DecodedName | None = field(default=None, repr=False, compare=False)


@dataclass
class ImportPlan:
    """Everything the import found: leases to take over and what it refused."""

    directory: Path
    entries: int = 0
    free_accounts: int = 0
    leases: list[PlannedLease] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    unknown_accounts: list[str] = field(default_factory=list)

    def count(self, action: str) -> int:
        """Return how many leases get action (create, refresh, unchanged)."""
        return sum(1 for lease in self.leases if lease.action == action)


@dataclass(frozen=True)
class _Account:
    id: int
    name: str
    pool_id: int
    pool: str
    state: str


@dataclass(frozen=True)
class _OpenLease:
    id: int
    account_id: int
    identity_hash: str
    display: str
    last_used_at: datetime


def plan_import(
    session: Session,
    directory: Path,
    progress: Progress | None = None,
    quiet: Duration = SIX_MONTHS,
) -> ImportPlan:
    """Read directory and decide what importing it would do; change nothing.

    Raises BadInputError when the directory cannot be read.
    """
    scan = scan_gridmapdir(directory, progress)
    plan = ImportPlan(directory, scan.entries)
    plan.findings += [Finding("odd", _text(name), why) for name, why in scan.odd]

    accounts = _load_accounts(session)
    candidates = []
    for inode in scan.inodes:
        candidates += _classify(inode, accounts, plan)
    decoded = _decode(candidates, plan)
    _resolve(session, _latest_per_person(decoded, plan), plan, quiet, progress)
    plan.unknown_accounts.sort()
    plan.leases.sort(key=lambda lease: lease.name)
    return plan


def _load_accounts(session: Session) -> dict[bytes, _Account]:
    rows = session.execute(
        select(Account.id, Account.name, Pool.id, Pool.name, Account.state).join(
            Pool, Pool.id == Account.pool_id
        )
    )
    return {row[1].encode(): _Account(*row) for row in rows}


def _classify(
    inode: Inode, accounts: dict[bytes, _Account], plan: ImportPlan
) -> list[tuple[bytes, _Account, Inode]]:
    """Sort one inode's names; return its (lease name, account) if sound."""
    known = [accounts[n] for n in inode.names if n in accounts]
    leases = [n for n in inode.names if n.startswith(b"%") and n not in accounts]
    unknown = [n for n in inode.names if n not in accounts and n not in leases]
    plan.unknown_accounts += [_text(n) for n in unknown]
    if not leases:
        plan.free_accounts += 1 if known and inode.nlink == 1 else 0
        return []

    reason = _inode_problem(inode, known, unknown)
    if reason is not None:
        kind, detail = reason
        plan.findings += [Finding(kind, _text(n), detail) for n in leases]
        return []
    return [(leases[0], known[0], inode)]


def _inode_problem(
    inode: Inode, known: list[_Account], unknown: list[bytes]
) -> tuple[str, str] | None:
    links = max(inode.nlink, len(inode.names))
    if links > 2:
        names = ", ".join(_text(n) for n in sorted(inode.names)[:4])
        return "shared", f"the file has {links} links ({names}); LCMAPS allows two"
    if links == 1:
        return "stale", "solitary lease: no account file shares its inode"
    if unknown:
        return "unknown_account", f"linked to unknown account {_text(unknown[0])}"
    if not known:
        return "orphan", "its account file is not in the directory"
    return None


def _decode(
    candidates: list[tuple[bytes, _Account, Inode]], plan: ImportPlan
) -> list[tuple[DecodedName, bytes, _Account, Inode]]:
    decoded = []
    for name, account, inode in candidates:
        try:
            result = decode_lease_name(name)
        except UnresolvableNameError as exc:
            plan.findings.append(Finding("unresolvable", _text(name), str(exc)))
            continue
        if result.mapcount is not None and result.mapcount > 1:
            plan.findings.append(
                Finding(
                    "conflict",
                    _text(name),
                    f"mapcount {result.mapcount}: poolmgr keeps one lease per "
                    "person and pool",
                )
            )
            continue
        decoded.append((result, name, account, inode))
    return decoded


def _latest_per_person(
    decoded: list[tuple[DecodedName, bytes, _Account, Inode]], plan: ImportPlan
) -> list[tuple[DecodedName, bytes, _Account, Inode]]:
    """Keep one lease per person and pool: the most recently used one."""
    ordered = sorted(decoded, key=lambda item: (-item[3].mtime_ns, item[1]))
    kept: dict[tuple[str, int], tuple[DecodedName, bytes, _Account, Inode]] = {}
    for item in ordered:
        slot = (item[0].dn.key, item[2].pool_id)
        winner = kept.setdefault(slot, item)
        if winner is not item:
            plan.findings.append(
                Finding(
                    "conflict",
                    _text(item[1]),
                    f"the same person already holds {winner[2].name} in pool "
                    f"{item[2].pool} (used later)",
                )
            )
    return list(kept.values())


def _resolve(
    session: Session,
    decoded: list[tuple[DecodedName, bytes, _Account, Inode]],
    plan: ImportPlan,
    quiet: Duration,
    progress: Progress | None = None,
) -> None:
    by_account, by_person = _open_leases(session)
    for done, (result, name, account, inode) in enumerate(decoded, start=1):
        # Checking a new lease against the account's history is one query.
        if progress is not None and done % PROGRESS_EVERY == 0:
            progress("checked", done)
        digest = key_hash(X509, result.dn.key)
        held = by_account.get(account.id)
        other = by_person.get((digest, account.pool_id))
        problem = _conflict(account, digest, held, other)
        if problem is None and held is None:
            problem = _history_conflict(session, account, digest, inode, quiet)
        if problem is not None:
            plan.findings.append(Finding("conflict", _text(name), problem))
            continue
        action = "create"
        if held is not None:
            action = "refresh" if inode.last_use > held.last_used_at else "unchanged"
        plan.leases.append(
            PlannedLease(
                name=_text(name),
                account=account.name,
                pool=account.pool,
                dn=result.dn.slash(),
                last_use=inode.last_use,
                groups=result.groups,
                action=action,
                account_id=account.id,
                pool_id=account.pool_id,
                lease_id=held.id if held else None,
                decoded=result,
            )
        )


def _conflict(
    account: _Account,
    digest: str,
    held: _OpenLease | None,
    other: _OpenLease | None,
) -> str | None:
    if held is not None and held.identity_hash != digest:
        return f"poolmgr already leases {account.name} to {held.display!r}"
    if held is None and account.state == "retired":
        return f"account {account.name} is retired in poolmgr"
    if other is not None and other.account_id != account.id:
        return (
            f"poolmgr already gives this person another account in pool "
            f"{account.pool} (lease {other.id})"
        )
    return None


def _history_conflict(
    session: Session, account: _Account, digest: str, inode: Inode, quiet: Duration
) -> str | None:
    """Refuse a lease that poolmgr's history of the account contradicts.

    An imported lease starts at its link's last use. For a person other
    than the previous holder it must not begin before that lease ended, nor
    inside its quiet period unless an override waived it.
    """
    if account.state not in ("free", "leased"):
        return f"account {account.name} is {account.state} in poolmgr"
    previous = session.execute(
        select(
            Lease.ended_at,
            Lease.last_used_at,
            Identity.key_hash,
            Identity.display,
            Account.quiet_waived_at,
        )
        .join(Identity, Identity.id == Lease.identity_id)
        .join(Account, Account.id == Lease.account_id)
        .where(Lease.account_id == account.id, Lease.ended_at.is_not(None))
        .order_by(Lease.ended_at.desc())
        .limit(1)
    ).first()
    if previous is None:
        return None
    ended, last_use, holder, display, waived = previous
    start = inode.last_use
    if holder == digest or ended is None:
        return None
    if start < ended:
        return (
            f"poolmgr's history has {account.name} with {display!r} until "
            f"{format_time(ended)}, after this link's last use"
        )
    if waived is not None and waived >= last_use:
        return None
    if start < quiet.after(last_use):
        return (
            f"{account.name} was last used by {display!r} at "
            f"{format_time(last_use)}; its quiet period runs until "
            f"{format_time(quiet.after(last_use))}"
        )
    return None


def _open_leases(
    session: Session,
) -> tuple[dict[int, _OpenLease], dict[tuple[str, int], _OpenLease]]:
    rows = session.execute(
        select(
            Lease.id,
            Lease.account_id,
            Identity.key_hash,
            Identity.display,
            Lease.last_used_at,
            Lease.pool_id,
        )
        .join(Identity, Identity.id == Lease.identity_id)
        .where(Lease.open_marker == 1)
    )
    by_account: dict[int, _OpenLease] = {}
    by_person: dict[tuple[str, int], _OpenLease] = {}
    for lease_id, account_id, digest, display, last_used_at, pool_id in rows:
        lease = _OpenLease(lease_id, account_id, digest, display, last_used_at)
        by_account[account_id] = lease
        by_person[(lease.identity_hash, pool_id)] = lease
    return by_account, by_person


def apply_import(
    session: Session,
    plan: ImportPlan,
    progress: Progress | None = None,
    actor: str = ACTOR,
) -> None:
    """Write the plan's new leases and later last uses in session.

    Each new lease gets a gridmapdir_imported event naming the source.
    """
    for done, lease in enumerate(_changing(plan.leases), start=1):
        if lease.action == "create":
            _create(session, lease, plan.directory, actor)
        else:
            session.execute(
                update(Lease)
                .where(Lease.id == lease.lease_id, Lease.last_used_at < lease.last_use)
                .values(last_used_at=lease.last_use)
            )
        if progress is not None and done % PROGRESS_EVERY == 0:
            progress("written", done)


def _changing(leases: Iterable[PlannedLease]) -> Iterable[PlannedLease]:
    return (lease for lease in leases if lease.action in ("create", "refresh"))


def _create(session: Session, planned: PlannedLease, source: Path, actor: str) -> None:
    assert planned.decoded is not None
    identity = get_or_create_identity(
        session, planned.decoded.dn, lossy=not planned.decoded.cased
    )
    account = session.get(Account, planned.account_id)
    assert account is not None
    lease = Lease(
        account_id=account.id,
        identity_id=identity.id,
        pool_id=planned.pool_id,
        fqan=None,
        started_at=planned.last_use,
        last_used_at=planned.last_use,
        open_account_id=account.id,
        open_marker=1,
    )
    account.state = "leased"
    session.add(lease)
    session.flush()
    events.record(
        session,
        "gridmapdir_imported",
        actor=actor,
        pool=planned.pool,
        account=account.name,
        identity_id=identity.id,
        dn=identity.display,
        lease_id=lease.id,
        source=str(source),
        name=planned.name,
        last_use=planned.last_use,
        groups=",".join(planned.groups) or None,
    )


def import_gridmapdir(
    session: Session,
    directory: Path,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    quiet: Duration = SIX_MONTHS,
) -> ImportPlan:
    """Plan the import of directory and, unless dry_run, apply it in session.

    quiet is the site's quiet period, against which a lease for a new
    person on an account poolmgr has history for is checked.
    """
    plan = plan_import(session, directory, progress, quiet)
    if not dry_run:
        apply_import(session, plan, progress)
    logger.info(
        "gridmapdir import source=%s created=%d refreshed=%d unchanged=%d "
        "refused=%d unknown_accounts=%d dry_run=%s",
        directory,
        plan.count("create"),
        plan.count("refresh"),
        plan.count("unchanged"),
        len(plan.findings),
        len(plan.unknown_accounts),
        dry_run,
    )
    return plan


def _text(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")
