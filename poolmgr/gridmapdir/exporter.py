"""``gridmapdir export``: write poolmgr's open leases as an LCMAPS gridmapdir.

One empty file (mode 0644) per account of the selected pools, one hard link
per open lease named as LCMAPS names it (names.py), and the inode's mtime
and atime set to the lease's last use; a free account's file carries the
last use of its last lease, as LCMAPS leaves it.

Suffixes: LCMAPS' DN-only ``lcmaps_poolaccount`` writes none, its
``lcmaps_voms_poolaccount`` appends ":" and group names. With the default
``auto`` a lease made for an FQAN gets ":<pool group>" and a DN-only lease
none; ``none`` and ``group`` force one style. Only the primary group is
written, which is what ``lcmaps_voms_poolaccount -do_not_use_secondary_gids``
reads (poolmgr does not store per-lease secondary groups). Two leases that
would get the same name (one person in two pools with ``none``) cannot both
be written: the more recently used one is, the other is reported.

A target that does not exist is written in a temporary sibling and renamed
into place, so readers see all of it or nothing. An empty directory is
filled in place. A directory with files needs ``update``: missing account
files are created, lease links of the exported accounts that poolmgr does
not hold (ended leases) and solitary lease links are removed, wrong links
are replaced atomically, and times are set. Nothing else is touched.

Accounts LCMAPS must not hand out: a free account under an incident hold,
out of service (its cleanup has not succeeded) or inside its quiet period is
left out, and in an update the links of its ended leases and then its
file removed, because LCMAPS would still map a former holder through such a
link and hands out any account whose file has one link, at once and to
anybody. A ban
cannot be carried by a gridmapdir: the lease of a banned holder is written,
so that LCMAPS gives the account to nobody else, and reported, because
LCMAPS maps that person unless its ban_dn plugin lists them.
"""

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from poolmgr.bans import frozen_leases
from poolmgr.dn import parse_dn
from poolmgr.errors import BadInputError, NotFoundError, PolicyError, PoolmgrError
from poolmgr.gridmapdir.importer import Finding
from poolmgr.gridmapdir.names import NAME_MAX, NON_ASCII_MODES, lease_name
from poolmgr.gridmapdir.scan import Inode, datetime_to_ns, scan_gridmapdir
from poolmgr.holds import IS_HELD
from poolmgr.models import Account, Identity, Lease, Pool
from poolmgr.timeutil import Duration, format_time
from poolmgr.views import is_resting

logger = logging.getLogger(__name__)

SUFFIX_MODES = ("auto", "none", "group")


@dataclass(frozen=True)
class ExportLink:
    """One lease as a gridmapdir link."""

    name: str
    account: str
    last_use: datetime
    lease_id: int
    dn: str


@dataclass
class ExportPlan:
    """The gridmapdir poolmgr's leases call for."""

    accounts: dict[str, datetime | None] = field(default_factory=dict)
    links: dict[str, ExportLink] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    withheld: list[str] = field(default_factory=list)


@dataclass
class ExportResult:
    """What writing the gridmapdir did."""

    directory: Path
    accounts_created: int = 0
    accounts_removed: int = 0
    links_created: int = 0
    links_replaced: int = 0
    links_removed: int = 0
    times_set: int = 0
    findings: list[Finding] = field(default_factory=list)


def plan_export(
    session: Session,
    quiet: Duration,
    now: datetime,
    pools: list[str] | None = None,
    suffix: str = "auto",
    non_ascii: str = "lcmaps",
) -> ExportPlan:
    """Return the accounts and lease links of pools (default: every live pool).

    Free accounts that must not be handed out at now (held, out of service,
    inside their quiet period) are withheld.

    Raises NotFoundError for an unknown pool name, BadInputError for an
    unknown suffix mode.
    """
    if suffix not in SUFFIX_MODES:
        raise BadInputError(f"Unknown suffix mode {suffix!r}; use auto, none, group.")
    if non_ascii not in NON_ASCII_MODES:
        raise BadInputError(f"Unknown non-ASCII mode {non_ascii!r}; use lcmaps, argus.")
    pool_ids = _pool_ids(session, pools)
    plan = ExportPlan()
    for name, state, last_use, waived, held in session.execute(
        select(
            Account.name,
            Account.state,
            Account.last_used_at,
            Account.quiet_waived_at,
            and_(Account.state == "free", IS_HELD),
        )
        .where(Account.pool_id.in_(pool_ids), Account.state != "retired")
        .order_by(Account.name)
    ):
        withheld = _withheld(state, bool(held), last_use, waived, quiet, now)
        if withheld is not None:
            plan.withheld.append(name)
            plan.findings.append(Finding(withheld[0], name, withheld[1]))
        else:
            plan.accounts[name] = last_use

    frozen = frozen_leases(session)
    rows = session.execute(
        select(Lease, Identity.display, Account.name, Pool.group_name)
        .join(Identity, Identity.id == Lease.identity_id)
        .join(Account, Account.id == Lease.account_id)
        .join(Pool, Pool.id == Lease.pool_id)
        .where(Lease.open_marker == 1, Lease.pool_id.in_(pool_ids))
        .order_by(Lease.last_used_at.desc(), Lease.id)
    )
    for lease, display, account, group in rows:
        groups = _suffixes(suffix, lease.fqan, group)
        _add_link(plan, lease, display, account, groups, non_ascii)
        if lease.id in frozen:
            detail = f"{_FROZEN} ({frozen[lease.id].describe()}): {display!r}"
            plan.findings.append(Finding("frozen", account, detail))
    return plan


def _withheld(
    state: str,
    held: bool,
    last_use: datetime | None,
    waived: datetime | None,
    quiet: Duration,
    now: datetime,
) -> tuple[str, str] | None:
    """Return (kind, detail) when an account's file must be left out, or None.

    LCMAPS hands out any account whose file has one link, at once and to
    anybody: a free account it must not give is left out of the gridmapdir.
    """
    if state == "leased":
        return None
    if held:
        return "held", f"free but under an incident hold: {_LEFT_OUT}"
    if state != "free":
        return "out_of_service", f"out of service ({state}): {_LEFT_OUT}"
    if is_resting(quiet, last_use, waived, now):
        until = format_time(quiet.after(last_use)) if last_use else "-"
        return "resting", (
            f"free but inside its quiet period until {until}, which LCMAPS does "
            f"not know: {_LEFT_OUT}"
        )
    return None


_LEFT_OUT = "its file is left out, so that LCMAPS cannot hand it out"
_FROZEN = (
    "lease written so that the account goes to nobody else, but its holder is "
    "banned: LCMAPS maps them unless its ban_dn plugin lists them"
)


def _pool_ids(session: Session, names: list[str] | None) -> list[int]:
    if not names:
        return list(session.scalars(select(Pool.id).where(Pool.retired_at.is_(None))))
    found = dict(
        session.execute(select(Pool.name, Pool.id).where(Pool.name.in_(names))).all()
    )
    missing = [name for name in names if name not in found]
    if missing:
        raise NotFoundError(f"Unknown pool {missing[0]!r}; see 'poolmgr pools'.")
    return [found[name] for name in names]


def _suffixes(mode: str, fqan: str | None, group: str) -> tuple[str, ...]:
    if mode == "group" or (mode == "auto" and fqan is not None):
        return (group,)
    return ()


def _add_link(
    plan: ExportPlan,
    lease: Lease,
    display: str,
    account: str,
    groups: tuple[str, ...],
    non_ascii: str,
) -> None:
    try:
        name = lease_name(parse_dn(display, display), groups, non_ascii)
    except PoolmgrError as exc:
        plan.findings.append(Finding("unexportable", display, str(exc)))
        return
    if len(name.encode()) > NAME_MAX:
        plan.findings.append(
            Finding("unexportable", display, f"its lease name is over {NAME_MAX} bytes")
        )
        return
    # Rows come most recently used first, so the first holder of a name wins.
    kept = plan.links.get(name)
    if kept is not None:
        plan.findings.append(
            Finding(
                "conflict",
                name,
                f"also the name of {kept.account} (used later); {account} of "
                f"{display!r} not written",
            )
        )
        return
    plan.links[name] = ExportLink(name, account, lease.last_used_at, lease.id, display)


def export_gridmapdir(
    session: Session,
    directory: Path,
    *,
    quiet: Duration,
    now: datetime,
    pools: list[str] | None = None,
    suffix: str = "auto",
    non_ascii: str = "lcmaps",
    update: bool = False,
) -> ExportResult:
    """Write the open leases of pools to directory; see the module doc."""
    plan = plan_export(session, quiet, now, pools, suffix, non_ascii)
    result = write_gridmapdir(directory, plan, update=update)
    logger.info(
        "gridmapdir export target=%s accounts=%d links=%d removed=%d problems=%d",
        directory,
        len(plan.accounts),
        len(plan.links),
        result.links_removed,
        len(result.findings),
    )
    return result


def write_gridmapdir(
    directory: Path, plan: ExportPlan, *, update: bool = False
) -> ExportResult:
    """Write plan to directory (new, empty, or with update an existing one).

    Raises PolicyError for a directory with files when update is off, and
    BadInputError when the target is not a directory.
    """
    result = ExportResult(directory, findings=list(plan.findings))
    if not directory.exists():
        _write_atomically(directory, plan, result)
    elif not directory.is_dir():
        raise BadInputError(f"{str(directory)!r} is not a directory.")
    elif update:
        _update(directory, plan, result)
    elif any(os.scandir(directory)):
        raise PolicyError(
            f"{str(directory)!r} is not empty; export into a new or empty "
            "directory, or use --update to bring this one in line."
        )
    else:
        _write_fresh(directory, plan, result)
    return result


def _write_atomically(directory: Path, plan: ExportPlan, result: ExportResult) -> None:
    parent = directory.parent
    if not parent.is_dir():
        raise BadInputError(f"Directory {str(parent)!r} does not exist.")
    temp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=parent))
    try:
        _write_fresh(temp, plan, result)
        temp.chmod(0o755)
        temp.rename(directory)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _write_fresh(directory: Path, plan: ExportPlan, result: ExportResult) -> None:
    for account in plan.accounts:
        _create_account_file(directory / account)
        result.accounts_created += 1
    for link in plan.links.values():
        os.link(directory / link.account, directory / link.name)
        result.links_created += 1
    _set_times(directory, plan, result, {})


def _create_account_file(path: Path) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.fchmod(descriptor, 0o644)
    finally:
        os.close(descriptor)


def _set_times(
    directory: Path,
    plan: ExportPlan,
    result: ExportResult,
    current: dict[str, int],
) -> None:
    """Set each exported inode's times; current holds known mtimes in ns."""
    wanted: dict[str, datetime] = {
        name: last for name, last in plan.accounts.items() if last is not None
    }
    for link in plan.links.values():
        wanted.pop(link.account, None)
        wanted[link.name] = link.last_use
    for name, when in wanted.items():
        stamp = datetime_to_ns(when)
        if current.get(name) != stamp:
            os.utime(directory / name, ns=(stamp, stamp), follow_symlinks=False)
            result.times_set += 1


def _update(directory: Path, plan: ExportPlan, result: ExportResult) -> None:
    accounts = _ensure_accounts(directory, plan, result)
    scan = scan_gridmapdir(directory)
    present = {
        name.decode("utf-8", "surrogateescape"): inode
        for inode in scan.inodes
        for name in inode.names
    }
    for name, inode in present.items():
        if not name.startswith("%") or name in plan.links:
            continue
        if inode.key in accounts.values() or inode.nlink == 1:
            (directory / name).unlink()
            result.links_removed += 1
    # Links that move come before new ones: a new link may go to the account
    # a moving one still sits on, and LCMAPS fails an account with 3 names.
    moving_first = sorted(
        plan.links.values(), key=lambda link: link.name not in present
    )
    for link in moving_first:
        _ensure_link(directory, link, accounts, present, result)
    # Last, so that a link which moved off a withheld account leaves it bare.
    _remove_withheld(directory, plan, result)
    after = scan_gridmapdir(directory)
    mtimes = {
        name.decode("utf-8", "surrogateescape"): inode.mtime_ns
        for inode in after.inodes
        for name in inode.names
    }
    _set_times(directory, plan, result, mtimes)


def _remove_withheld(directory: Path, plan: ExportPlan, result: ExportResult) -> None:
    """Remove the files of withheld accounts and their ended lease links.

    A link left from an ended lease would let LCMAPS map the former holder
    to an account being cleaned or resting; once it is gone the account's
    file would be solitary, which LCMAPS hands to anybody. A file still
    linked otherwise is reported, not touched.
    """
    if not plan.withheld:
        return
    names_of = {
        inode.key: [name.decode("utf-8", "surrogateescape") for name in inode.names]
        for inode in scan_gridmapdir(directory).inodes
    }
    kinds = {f.name: f.kind for f in plan.findings}
    for account in plan.withheld:
        path = directory / account
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if not path.is_file() or path.is_symlink():
            _report_linked(result, kinds, account, "is not a plain file")
            continue
        others = [
            name
            for name in names_of.get((info.st_dev, info.st_ino), [])
            if name != account
        ]
        stale = [n for n in others if n.startswith("%") and n not in plan.links]
        for name in stale:
            (directory / name).unlink()
            result.links_removed += 1
        if len(others) > len(stale) or path.lstat().st_nlink > 1:
            _report_linked(result, kinds, account, "still has other names")
            continue
        path.unlink()
        result.accounts_removed += 1


def _report_linked(
    result: ExportResult, kinds: dict[str, str], account: str, why: str
) -> None:
    result.findings.append(
        Finding(kinds.get(account, "withheld"), account, f"{why}; not removed")
    )


def _ensure_accounts(
    directory: Path, plan: ExportPlan, result: ExportResult
) -> dict[str, tuple[int, int]]:
    """Create missing account files; return each usable one's inode."""
    inodes: dict[str, tuple[int, int]] = {}
    for account in plan.accounts:
        path = directory / account
        if not path.exists():
            _create_account_file(path)
            result.accounts_created += 1
        info = path.lstat()
        if not path.is_file() or path.is_symlink():
            result.findings.append(
                Finding("odd", account, "exists but is not a regular file")
            )
            continue
        inodes[account] = (info.st_dev, info.st_ino)
    return inodes


def _ensure_link(
    directory: Path,
    link: ExportLink,
    accounts: dict[str, tuple[int, int]],
    present: dict[str, Inode],
    result: ExportResult,
) -> None:
    target = accounts.get(link.account)
    if target is None:
        return
    inode = present.get(link.name)
    if inode is None:
        os.link(directory / link.account, directory / link.name)
        result.links_created += 1
    elif inode.key != target:
        # Link under a temporary name, then rename over: never a moment
        # in which the person has no lease or a wrong one.
        temp = directory / f".poolmgr-{os.getpid()}-{link.lease_id}"
        temp.unlink(missing_ok=True)
        os.link(directory / link.account, temp)
        temp.rename(directory / link.name)
        result.links_replaced += 1
