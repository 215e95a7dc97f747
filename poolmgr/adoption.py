"""Adopting a site: pools and accounts from its YAIM users.conf.

``import_users_conf`` creates one pool per account-name prefix, keeping each
account's real uid, its groups and its flag, so the site renumbers nothing.
A pool's accounts must be numbered 1..N: sync fills numbers 1..size, so a
gap would make it add accounts the site never had. Everything is checked
first, every problem is listed at once, and nothing is written when any is
found. Routing comes next, from groups.conf (poolmgr/groupsconf.py).
"""

import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from poolmgr import events, nss
from poolmgr.errors import BadInputError, ConflictError
from poolmgr.models import Account, Pool
from poolmgr.pools import used_uids
from poolmgr.provisioning import parse_groups
from poolmgr.settings import Settings
from poolmgr.yaim import UserLine, parse_users_conf, read_text

MAX_REPORTED = 200

_NUMBERED = re.compile(r"(?P<prefix>.*?)(?P<number>[0-9]+)")
_POOL_NAME = re.compile(r"[a-z][a-z0-9_-]{0,23}")


@dataclass(frozen=True)
class PlannedPool:
    """A pool as a users.conf defines it: accounts in number order 1..N."""

    name: str
    vo: str
    flag: str
    digits: int
    first_uid: int
    accounts: tuple[UserLine, ...]

    @property
    def group(self) -> tuple[str, int]:
        return self.accounts[0].groups[0]

    @property
    def secondary(self) -> tuple[tuple[str, int], ...]:
        return self.accounts[0].groups[1:]

    @property
    def where(self) -> str:
        return self.accounts[0].where


@dataclass
class ImportReport:
    """What an import created (or would create), and what to look at."""

    pools: list[PlannedPool] = field(default_factory=list)
    cards: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- users.conf


def import_users_conf(
    session: Session, settings: Settings, path: Path, now: datetime
) -> ImportReport:
    """Create the pools and accounts of a users.conf with their real ids.

    Raises BadInputError (unreadable lines) or ConflictError listing every
    problem, before anything is written: a uid, login or gid used twice in
    the file or against poolmgr's pools, a gid whose name differs here or on
    the host (NSS, when check_nss is on), an unnumbered account, a gap in a
    pool's numbering, or a uid block that sync would refuse.
    """
    lines, syntax = parse_users_conf(read_text(path), str(path))
    plans, problems = plan_pools(lines)
    problems += _file_conflicts(lines)
    problems += _database_conflicts(session, settings, plans)
    report = ImportReport(pools=plans)
    if settings.check_nss:
        nss_problems, report.warnings = _nss_conflicts(lines)
        problems += nss_problems
    refuse(f"Import of {path}", syntax, problems)

    for plan in plans:
        if len({line.uid - n for n, line in enumerate(plan.accounts, 1)}) > 1:
            report.warnings.append(
                f"pool {plan.name}: uids do not follow one base; accounts added "
                f"later get uids from {plan.first_uid + len(plan.accounts) + 1}"
            )
        _create_pool(session, plan, now)
    return report


def plan_pools(lines: list[UserLine]) -> tuple[list[PlannedPool], list[str]]:
    """Group account lines into pools by name prefix; return plans, problems."""
    members: dict[str, list[tuple[int, str, UserLine]]] = defaultdict(list)
    problems = []
    for line in lines:
        match = _NUMBERED.fullmatch(line.login)
        if match is None or not match["prefix"]:
            problems.append(
                f"{line.where}: account {line.login} has no number; poolmgr "
                "manages numbered pool accounts only (leave static accounts "
                "out of the file)."
            )
            continue
        members[match["prefix"]].append((int(match["number"]), match["number"], line))

    plans = []
    for prefix in sorted(members):
        ordered = sorted(members[prefix], key=lambda member: member[:2])
        plan, pool_problems = _plan_pool(prefix, ordered)
        problems += pool_problems
        if plan is not None:
            plans.append(plan)
    return plans, problems


def _plan_pool(
    prefix: str, members: list[tuple[int, str, UserLine]]
) -> tuple[PlannedPool | None, list[str]]:
    first = members[0][2]
    problems = []
    if not _POOL_NAME.fullmatch(prefix):
        problems.append(
            f"{first.where}: prefix {prefix!r} of {first.login} is not a valid "
            "pool name (a lower-case letter, then at most 23 of a-z 0-9 _ -)."
        )
    for _, _, line in members[1:]:
        problems += [
            f"{line.where}: account {line.login} has {what} "
            f"{_show(getattr(line, what))}, but {first.login} of the same pool "
            f"has {_show(getattr(first, what))}."
            for what in ("vo", "flag", "groups")
            if getattr(line, what) != getattr(first, what)
        ]
    widths = {len(text) for _, text, _ in members}
    if len(widths) > 1 or max(widths) > 9:
        problems.append(
            f"{first.where}: pool {prefix} mixes or exceeds number widths "
            f"({_span([line.login for _, _, line in members])}); poolmgr names "
            "accounts prefix + zero-padded number of 1..9 digits."
        )
    numbers = [number for number, _, _ in members]
    if numbers != list(range(1, len(numbers) + 1)):
        problems.append(
            f"{first.where}: pool {prefix} is not numbered 1..{len(numbers)} "
            f"({_numbering(numbers)}); sync would create the missing numbers, "
            "so add their accounts to the file first."
        )
    if problems:
        return None, problems

    accounts = tuple(line for _, _, line in members)
    # Accounts added later get first_uid + n: above every uid the pool has.
    first_uid = max(line.uid - n for n, _, line in members)
    return PlannedPool(
        prefix, first.vo, first.flag, widths.pop(), first_uid, accounts
    ), []


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{name}:{gid}" for name, gid in value)
    return repr(value)


def _numbering(numbers: list[int]) -> str:
    size = len(numbers)
    present = set(numbers)
    missing = [str(n) for n in range(1, size + 1) if n not in present]
    beyond = [str(n) for n in sorted(present) if not 1 <= n <= size]
    parts = ["repeats a number"] if len(present) < size else []
    if missing:
        parts.append("misses " + _span(missing))
    if beyond:
        parts.append("has " + _span(beyond))
    return ", ".join(parts)


def _span(items: list[str]) -> str:
    if len(items) <= 4:
        return ", ".join(items)
    return f"{items[0]}, {items[1]} .. {items[-1]} ({len(items)})"


def _file_conflicts(lines: list[UserLine]) -> list[str]:
    problems = _repeats(lines, "uid") + _repeats(lines, "login")
    gid_names: dict[int, tuple[str, str]] = {}
    name_gids: dict[str, tuple[int, str]] = {}
    for line in lines:
        for name, gid in line.groups:
            known, where = gid_names.setdefault(gid, (name, line.where))
            if known != name:
                problems.append(
                    f"{line.where}: gid {gid} is named {name}, but {known} at {where}."
                )
            known_gid, where = name_gids.setdefault(name, (gid, line.where))
            if known_gid != gid:
                problems.append(
                    f"{line.where}: group {name} has gid {gid}, but {known_gid} "
                    f"at {where}."
                )
    return problems


def _repeats(lines: list[UserLine], what: str) -> list[str]:
    seen: dict[object, UserLine] = {}
    problems = []
    for line in lines:
        key = getattr(line, what)
        other = seen.setdefault(key, line)
        if other is not line:
            problems.append(
                f"{line.where}: {what} {key} of {line.login} is already used by "
                f"{other.login} ({other.where})."
            )
    return problems


def _database_conflicts(
    session: Session, settings: Settings, plans: list[PlannedPool]
) -> list[str]:
    existing = list(session.scalars(select(Pool).order_by(Pool.name)))
    names = {pool.name for pool in existing}
    problems = [
        f"{plan.where}: pool {plan.name} already exists; an import adopts only "
        "pools poolmgr does not manage yet."
        for plan in plans
        if plan.name in names
    ]
    # A pool imported before collides account by account with itself: its
    # one line above says all, and the checks below look at the new pools.
    plans = [plan for plan in plans if plan.name not in names]
    for plan in plans:
        problems += [f"{plan.where}: {text}" for text in _site_settings(settings, plan)]
    problems += _account_collisions(session, plans)
    problems += _group_collisions(existing, plans)
    problems += _block_overlaps(existing, plans)
    return problems


def _site_settings(settings: Settings, plan: PlannedPool) -> list[str]:
    site = settings.pools.get(plan.name)
    if site is None:
        return []
    wanted = {
        "prefix": plan.name,
        "digits": plan.digits,
        "first_uid": plan.first_uid,
        "group": plan.group[0],
        "gid": plan.group[1],
    }
    return [
        f"site configuration pools.{plan.name}.{key} is {getattr(site, key)}, "
        f"but the file gives {value}."
        for key, value in wanted.items()
        if getattr(site, key) is not None and getattr(site, key) != value
    ]


def _account_collisions(session: Session, plans: list[PlannedPool]) -> list[str]:
    lines = [line for plan in plans for line in plan.accounts]
    by_uid = {line.uid: line for line in lines}
    by_login = {line.login: line for line in lines}
    problems = []
    for chunk in _chunks(list(by_uid)):
        for uid, name in session.execute(
            select(Account.uid, Account.name).where(Account.uid.in_(chunk))
        ):
            line = by_uid[uid]
            problems.append(
                f"{line.where}: uid {uid} of {line.login} already belongs to "
                f"account {name}."
            )
    for chunk in _chunks(list(by_login)):
        for name in session.scalars(
            select(Account.name).where(Account.name.in_(chunk))
        ):
            problems.append(f"{by_login[name].where}: account {name} already exists.")
    return problems


def _chunks(items: list, size: int = 500) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _group_collisions(pools: list[Pool], plans: list[PlannedPool]) -> list[str]:
    known: dict[int, tuple[str, str]] = {}
    for pool in pools:
        for name, gid in ((pool.group_name, pool.gid), *parse_groups(pool)):
            known.setdefault(gid, (name, pool.name))
    problems = []
    for plan in plans:
        for name, gid in plan.accounts[0].groups:
            other = known.get(gid)
            if other is not None and other[0] != name:
                problems.append(
                    f"{plan.where}: gid {gid} ({name}) is group {other[0]} of "
                    f"pool {other[1]}."
                )
    return problems


def _block_overlaps(pools: list[Pool], plans: list[PlannedPool]) -> list[str]:
    # Sync refuses pools whose used uids overlap (pools.used_uids); an import
    # it would refuse must be refused here, before any account is written.
    ranges = [(p.name, used_uids(p.first_uid, p.size, p.size)) for p in pools]
    ranges += [(p.name, _plan_uids(p)) for p in plans]
    problems = []
    reported: set[frozenset[str]] = set()
    for plan in plans:
        mine = _plan_uids(plan)
        for name, used in ranges:
            pair = frozenset((plan.name, name))
            if len(pair) == 1 or pair in reported:
                continue
            if mine.start < used.stop and used.start < mine.stop:
                reported.add(pair)
                problems.append(
                    f"{plan.where}: uids {mine.start}-{mine.stop - 1} of pool "
                    f"{plan.name} overlap uids {used.start}-{used.stop - 1} of "
                    f"pool {name}."
                )
    return problems


def _plan_uids(plan: PlannedPool) -> range:
    uids = [line.uid for line in plan.accounts]
    span = used_uids(plan.first_uid, len(plan.accounts), len(plan.accounts))
    return range(min(span.start, *uids), max(span.stop, max(uids) + 1))


def _nss_conflicts(lines: list[UserLine]) -> tuple[list[str], list[str]]:
    problems, warnings = [], []
    groups: dict[int, tuple[str, str]] = {}
    for line in lines:
        owner = nss.uid_owner(line.uid)
        if owner is not None and owner != line.login:
            problems.append(
                f"{line.where}: uid {line.uid} of {line.login} belongs to "
                f"{owner} on this host."
            )
        problem = nss.account_problem(line.login, line.uid)
        if problem is not None and "does not resolve" in problem.message:
            warnings.append(f"{line.where}: {problem.message}")
        elif problem is not None:
            problems.append(f"{line.where}: {problem.message}.")
        for name, gid in line.groups:
            groups.setdefault(gid, (name, line.where))
    for gid, (name, where) in sorted(groups.items()):
        problem = nss.group_problem(name, gid)
        if problem is not None and "does not resolve" not in problem.message:
            problems.append(f"{where}: {problem.message}.")
    return problems, warnings


def refuse(what: str, syntax: list[str], problems: list[str]) -> None:
    """Raise listing every problem (BadInputError if any line is unreadable)."""
    found = sorted(syntax + problems, key=_line_number)
    if not found:
        return
    shown = found[:MAX_REPORTED]
    if len(found) > MAX_REPORTED:
        shown.append(f"... and {len(found) - MAX_REPORTED} more.")
    message = (
        f"{what} refused, nothing changed ({len(found)} problem(s)):\n  "
        + "\n  ".join(shown)
    )
    raise (BadInputError if syntax else ConflictError)(message)


def _line_number(problem: str) -> float:
    match = re.search(r":([0-9]+): ", problem)
    return int(match[1]) if match else math.inf


def _create_pool(session: Session, plan: PlannedPool, now: datetime) -> None:
    name, gid = plan.group
    pool = Pool(
        name=plan.name,
        vo=plan.vo,
        prefix=plan.name,
        digits=plan.digits,
        first_uid=plan.first_uid,
        group_name=name,
        gid=gid,
        declared_size=len(plan.accounts),
        size=len(plan.accounts),
        flag=plan.flag,
        secondary_groups=",".join(f"{n}:{g}" for n, g in plan.secondary) or None,
        created_at=now,
    )
    session.add(pool)
    session.flush()
    session.add_all(
        Account(
            pool_id=pool.id,
            name=line.login,
            number=number,
            uid=line.uid,
            state="free",
            created_at=now,
        )
        for number, line in enumerate(plan.accounts, start=1)
    )
    events.record(
        session,
        "pool_imported",
        pool=plan.name,
        actor="import",
        detail=f"vo={plan.vo} flag={plan.flag!r} group={name} gid={gid} "
        f"accounts={len(plan.accounts)} uids={plan.accounts[0].uid}.."
        f"{plan.accounts[-1].uid}",
    )
