"""The checks behind ``poolmgr check``, a Nagios-style probe.

Each check takes a CheckContext and returns one CheckResult: a Nagios
status and one line. CHECKS lists them in order, so another check (the ban
lists, say) is one more entry there. The database check runs first and
alone: when the database cannot be reached or its schema is behind, nothing
else can be checked and the probe is CRITICAL. ``probe`` turns every
failure into a result, so the probe's exit code is always 0, 1, 2 or 3.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from poolmgr import db, migrate, nss
from poolmgr.banviews import ban_health
from poolmgr.errors import DatabaseUnavailableError
from poolmgr.models import Account, Pool
from poolmgr.provisioning import parse_groups
from poolmgr.settings import Settings
from poolmgr.views import pool_summaries
from poolmgr.wording import counted

MAX_LINE = 1000
MAX_NAMED = 5
SERVICE_STATES = ("free", "leased", "retired")


class Status(IntEnum):
    """Nagios plugin states; the value is the exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


# Worst first when several checks disagree: a real problem outranks a check
# that could not run.
_SEVERITY = {Status.OK: 0, Status.UNKNOWN: 1, Status.WARNING: 2, Status.CRITICAL: 3}


@dataclass(frozen=True)
class CheckResult:
    """What one check found."""

    name: str
    status: Status
    message: str


@dataclass(frozen=True)
class CheckOptions:
    """Thresholds in percent of a pool's accounts, and whether to ask NSS."""

    warning: float = 10.0
    critical: float = 0.0
    nss: bool = False


@dataclass(frozen=True)
class CheckContext:
    """What every check may read: one read-only session and the settings."""

    session: Session
    settings: Settings
    options: CheckOptions
    now: datetime


Check = Callable[[CheckContext], CheckResult]


@dataclass(frozen=True)
class HealthReport:
    """Every check's result; the worst decides the status."""

    results: tuple[CheckResult, ...]

    @property
    def status(self) -> Status:
        return max((r.status for r in self.results), key=_SEVERITY.__getitem__)

    def summary(self) -> str:
        """Return the probe's one line: status, then what is wrong first."""
        shown = [r for r in self.results if r.status is not Status.OK]
        shown.sort(key=lambda r: -_SEVERITY[r.status])
        text = "; ".join(r.message for r in shown or self.results)
        return _one_line(f"POOLMGR {self.status.name} - {text}")

    def details(self) -> list[str]:
        """Return one line per check, for --verbose."""
        return [
            _one_line(f"{r.status.name} {r.name}: {r.message}") for r in self.results
        ]


def _one_line(text: str) -> str:
    flat = re.sub(r"[\x00-\x1f\x7f]+", " ", text)
    return flat if len(flat) <= MAX_LINE else flat[: MAX_LINE - 3] + "..."


def probe(
    load_settings: Callable[[], Settings], options: CheckOptions, now: datetime
) -> HealthReport:
    """Run every check; any failure becomes a result, never an exception."""
    try:
        settings = load_settings()
    except Exception as exc:  # noqa: BLE001  (a probe must answer)
        return HealthReport(
            (CheckResult("config", Status.UNKNOWN, f"configuration: {exc}"),)
        )
    try:
        return run_checks(settings, options, now)
    except (SQLAlchemyError, DatabaseUnavailableError) as exc:
        return HealthReport((_unavailable(settings.database_url(), exc),))
    except Exception as exc:  # noqa: BLE001  (a probe must answer)
        message = f"check failed: {type(exc).__name__}: {exc}"
        return HealthReport((CheckResult("probe", Status.UNKNOWN, message),))


def run_checks(
    settings: Settings,
    options: CheckOptions,
    now: datetime,
    checks: list[tuple[str, Check]] | None = None,
) -> HealthReport:
    """Check the database, then run checks (default CHECKS) in one session."""
    database = check_database(settings.database_url())
    if database.status is not Status.OK:
        return HealthReport((database,))
    results = [database]
    engine = db.get_engine(settings.database_url())
    with db.unit_of_work(engine, write=False) as session:
        context = CheckContext(session, settings, options, now)
        for name, check in checks if checks is not None else CHECKS:
            results.append(_run_one(name, check, context))
    return HealthReport(tuple(results))


def _run_one(name: str, check: Check, context: CheckContext) -> CheckResult:
    try:
        return check(context)
    except Exception as exc:  # noqa: BLE001  (one broken check is UNKNOWN)
        message = f"{name} check failed: {type(exc).__name__}: {exc}"
        return CheckResult(name, Status.UNKNOWN, message)


def check_database(url: str) -> CheckResult:
    """Return CRITICAL unless the database answers with the current schema."""
    missing = _missing_sqlite_file(url)
    if missing is not None:
        return CheckResult(
            "database", Status.CRITICAL, f"database file {missing} does not exist"
        )
    try:
        status = migrate.status(db.get_engine(url))
    except SQLAlchemyError as exc:
        return _unavailable(url, exc)
    if not status.is_current:
        return CheckResult(
            "database",
            Status.CRITICAL,
            f"database schema is at {status.current or 'none'}, poolmgr needs "
            f"{status.head}; run 'poolmgr db upgrade'",
        )
    return CheckResult(
        "database", Status.OK, f"database schema current ({status.head})"
    )


def _missing_sqlite_file(url: str) -> Path | None:
    # Connecting would create an empty file; a probe must not.
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (
        None,
        "",
        ":memory:",
    ):
        return None
    path = Path(parsed.database or "").expanduser()
    return None if path.exists() else path


def _unavailable(url: str, exc: Exception) -> CheckResult:
    if isinstance(exc, DatabaseUnavailableError):
        detail = str(exc)
    else:
        where = make_url(url).render_as_string(hide_password=True)
        text = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""]
        detail = f"database {where} is unavailable: {text[0][:200]}"
    return CheckResult("database", Status.CRITICAL, detail)


def check_pools(context: CheckContext) -> CheckResult:
    """Return how close the live pools are to having no account to give."""
    session, options = context.session, context.options
    available = available_accounts(session, context.settings, context.now)
    provisioned = dict(
        session.execute(
            select(Account.pool_id, func.count())
            .where(Account.state != "retired")
            .group_by(Account.pool_id)
        ).all()
    )
    pools = session.scalars(
        select(Pool).where(Pool.retired_at.is_(None)).order_by(Pool.name)
    ).all()
    critical, warning, exhausted = [], [], []
    for pool in pools:
        total, left = provisioned.get(pool.id, 0), available.get(pool.id, 0)
        text = f"{pool.name} {left}/{total}"
        if total and left == 0:
            exhausted.append(text)
        if total and left * 100 <= options.critical * total:
            critical.append(text)
        elif total and left * 100 <= options.warning * total:
            warning.append(text)
    if critical or warning:
        status = Status.CRITICAL if critical else Status.WARNING
        near = [text for text in critical + warning if text not in exhausted]
        return CheckResult("pools", status, _pools_line(exhausted, near))
    return CheckResult(
        "pools",
        Status.OK,
        f"{counted(len(pools), 'pool')} above {options.warning:g}% available accounts",
    )


def _pools_line(exhausted: list[str], near: list[str]) -> str:
    parts = []
    if exhausted:
        parts.append("pools exhausted (available/accounts): " + _names(exhausted))
    if near:
        where = "" if exhausted else " (available/accounts)"
        parts.append(f"pools near exhaustion{where}: " + _names(near))
    return "; ".join(parts)


def available_accounts(
    session: Session, settings: Settings, now: datetime
) -> dict[int, int]:
    """Return per pool the free accounts a newcomer could get now.

    Accounts under an incident hold or still inside their quiet period are
    not available; the counts are those of ``poolmgr pools``.
    """
    return {s.pool_id: s.free for s in pool_summaries(session, settings.quiet, now)}


def check_nss(context: CheckContext) -> CheckResult:
    """Return accounts and groups that do not resolve, or resolve otherwise."""
    if not (context.options.nss or context.settings.check_nss):
        return CheckResult("nss", Status.OK, "NSS check off")
    missing: list[str] = []
    wrong: list[str] = []
    rows = context.session.execute(
        select(Account.name, Account.uid)
        .where(Account.state != "retired")
        .order_by(Account.name)
    )
    for name, uid in rows:
        problem = nss.account_problem(name, uid)
        if problem is not None:
            target = missing if "does not resolve" in problem.message else wrong
            target.append(problem.message)
    for name, gid in _groups(context.session):
        problem = nss.group_problem(name, gid)
        if problem is not None:
            target = missing if "does not resolve" in problem.message else wrong
            target.append(problem.message)
    if wrong or missing:
        return CheckResult(
            "nss",
            Status.CRITICAL if wrong else Status.WARNING,
            f"{len(wrong) + len(missing)} NSS problem(s): " + _names(wrong + missing),
        )
    return CheckResult("nss", Status.OK, "accounts and groups resolve in NSS")


def _groups(session: Session) -> list[tuple[str, int]]:
    groups: dict[tuple[str, int], None] = {}
    for pool in session.scalars(
        select(Pool).where(Pool.retired_at.is_(None)).order_by(Pool.name)
    ):
        for pair in ((pool.group_name, pool.gid), *parse_groups(pool)):
            groups[pair] = None
    return list(groups)


def check_out_of_service(context: CheckContext) -> CheckResult:
    """Return accounts in a state other than free, leased or retired.

    Such states (an account waiting for a cleanup that failed, one held for
    an incident) take accounts out of service until somebody acts.
    """
    rows = context.session.execute(
        select(Pool.name, Account.state, func.count())
        .join(Pool, Pool.id == Account.pool_id)
        .where(Account.state.not_in(SERVICE_STATES))
        .group_by(Pool.name, Account.state)
        .order_by(Pool.name, Account.state)
    ).all()
    if not rows:
        return CheckResult("accounts", Status.OK, "no account out of service")
    total = sum(count for _, _, count in rows)
    return CheckResult(
        "accounts",
        Status.WARNING,
        f"{total} account(s) out of service: "
        + _names([f"{pool} {state} {count}" for pool, state, count in rows]),
    )


def _names(items: list[str]) -> str:
    if len(items) <= MAX_NAMED:
        return ", ".join(items)
    return ", ".join(items[:MAX_NAMED]) + f" and {len(items) - MAX_NAMED} more"


def check_bans(context: CheckContext) -> CheckResult:
    """Return CRITICAL for a ban list never read, WARNING for a failing one."""
    level, line = ban_health(context.session, context.settings, context.now)
    return CheckResult("bans", Status(level), line)


CHECKS: list[tuple[str, Check]] = [
    ("pools", check_pools),
    ("nss", check_nss),
    ("accounts", check_out_of_service),
    ("bans", check_bans),
]
