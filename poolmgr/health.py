"""The checks behind ``poolmgr check``, a Nagios-style probe.

Each check takes a CheckContext and returns one CheckResult: a Nagios
status and one line. CHECKS lists them in order, so another check (the ban
lists, say) is one more entry there. The database check runs first and
alone: when the database cannot be reached or its schema is behind, nothing
else can be checked and the probe is CRITICAL. ``probe`` turns every
failure into a result, so the probe's exit code is always 0, 1, 2 or 3.
"""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from poolmgr import db, migrate, nss
from poolmgr.banviews import ban_health
from poolmgr.errors import DatabaseUnavailableError
from poolmgr.history import verify_history
from poolmgr.invariants import find_broken_invariants
from poolmgr.logs import syslog_problem
from poolmgr.models import Account, Pool
from poolmgr.provisioning import parse_groups
from poolmgr.settings import Settings
from poolmgr.timeutil import format_time
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
    """What one check found, and its Nagios performance data, if any."""

    name: str
    status: Status
    message: str
    perfdata: tuple[str, ...] = ()


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
        """Return the probe's one line: status, what is wrong first, perfdata.

        Only the text is shortened to fit; the performance data after the
        '|' stays whole, so a graphing tool never reads a cut value.
        """
        shown = [r for r in self.results if r.status is not Status.OK]
        shown.sort(key=lambda r: -_SEVERITY[r.status])
        text = "; ".join(r.message for r in shown or self.results)
        line = _one_line(f"POOLMGR {self.status.name} - {text}".replace("|", "/"))
        perfdata = [item for r in self.results for item in r.perfdata]
        return f"{line} | {' '.join(perfdata)}" if perfdata else line

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
        return _probe(load_settings, options, now)
    except Exception as exc:  # noqa: BLE001  (a probe must answer)
        message = f"check failed: {type(exc).__name__}: {exc}"
        return HealthReport((CheckResult("probe", Status.UNKNOWN, message),))


def _probe(
    load_settings: Callable[[], Settings], options: CheckOptions, now: datetime
) -> HealthReport:
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
    if db.is_absent_sqlite_file(url):
        # Connecting would create an empty file; a probe must not.
        path = make_url(url).database
        missing = db.missing_sqlite_directory(path)
        detail = f" (the directory {missing} does not exist)" if missing else ""
        return CheckResult(
            "database", Status.CRITICAL, f"database file {path} does not exist{detail}"
        )
    try:
        status = migrate.status(db.get_engine(url))
    except SQLAlchemyError as exc:
        return _unavailable(url, exc)
    problem = status.problem()
    if problem is not None:
        return CheckResult("database", Status.CRITICAL, f"database {problem}")
    return CheckResult(
        "database", Status.OK, f"database schema current ({status.head})"
    )


def _unavailable(url: str, exc: Exception) -> CheckResult:
    if isinstance(exc, DatabaseUnavailableError):
        detail = str(exc)
    else:
        text = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""]
        detail = f"database {_where(url)} is unavailable: {text[0][:200]}"
    return CheckResult("database", Status.CRITICAL, detail)


def _where(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001  (a URL that does not parse is not shown)
        return "(bad URL)"


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
    if not pools:
        # A database never synced, or the wrong one (a mistyped SQLite path
        # makes a new, empty database): every mapping would fail.
        return CheckResult(
            "pools",
            Status.CRITICAL,
            "no live pool, so every mapping fails: run 'poolmgr sync', or "
            "check that the database is the site's",
        )
    critical, warning, exhausted, perfdata = [], [], [], []
    for pool in pools:
        total, left = provisioned.get(pool.id, 0), available.get(pool.id, 0)
        text = f"{pool.name} {left}/{total}"
        if total and left == 0:
            exhausted.append(text)
        if total and left * 100 <= options.critical * total:
            critical.append(text)
        elif total and left * 100 <= options.warning * total:
            warning.append(text)
        perfdata.append(_pool_perfdata(pool.name, left, total, options))
    if critical or warning:
        status = Status.CRITICAL if critical else Status.WARNING
        near = [text for text in critical + warning if text not in exhausted]
        return CheckResult(
            "pools", status, _pools_line(exhausted, near), tuple(perfdata)
        )
    return CheckResult(
        "pools",
        Status.OK,
        f"{counted(len(pools), 'pool')} above {options.warning:g}% available accounts",
        tuple(perfdata),
    )


def _pools_line(exhausted: list[str], near: list[str]) -> str:
    parts = []
    if exhausted:
        parts.append("pools exhausted (available/accounts): " + _names(exhausted))
    if near:
        where = "" if exhausted else " (available/accounts)"
        parts.append(f"pools near exhaustion{where}: " + _names(near))
    return "; ".join(parts)


def _pool_perfdata(name: str, left: int, total: int, options: CheckOptions) -> str:
    """Return 'name'=available;warn;crit;0;accounts in Nagios range syntax.

    The probe alerts at or below a percentage; 'N:' alerts below N, so each
    threshold is the smallest count that does not alert. A pool of no
    accounts never alerts, so it gets no thresholds.
    """
    if not total:
        return f"'{name}'={left};;;0;0"
    warn = math.floor(options.warning * total / 100) + 1
    crit = math.floor(options.critical * total / 100) + 1
    return f"'{name}'={left};{warn}:;{crit}:;0;{total}"


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


def check_dn_only_pool(context: CheckContext) -> CheckResult:
    """Return CRITICAL when dn_only_pool names no live pool."""
    name = context.settings.dn_only_pool
    if name is None:
        return CheckResult("dn_only_pool", Status.OK, "dn_only_pool not set")
    retired_at = context.session.execute(
        select(Pool.retired_at).where(Pool.name == name)
    ).first()
    if retired_at is None:
        problem = "a pool that does not exist"
    elif retired_at[0] is not None:
        problem = "a retired pool"
    else:
        return CheckResult("dn_only_pool", Status.OK, f"dn_only_pool {name} live")
    return CheckResult(
        "dn_only_pool",
        Status.CRITICAL,
        f"dn_only_pool names {problem} ({name[:60]!r}); DN-only requests fail",
    )


def check_syslog(context: CheckContext) -> CheckResult:
    """Return WARNING when syslog is enabled but cannot be reached."""
    settings = context.settings.syslog
    if not settings.enabled:
        return CheckResult("syslog", Status.OK, "syslog off")
    problem = syslog_problem(settings)
    if problem is not None:
        return CheckResult("syslog", Status.WARNING, problem)
    return CheckResult("syslog", Status.OK, f"syslog {settings.address} reachable")


INVARIANT_WINDOW = timedelta(days=7)
"""How far back the probe checks new leases against the quiet period."""


def check_invariants(context: CheckContext) -> CheckResult:
    """Return CRITICAL for a broken lease invariant or a recent early handover.

    Every open-lease invariant is read back; the quiet-period check covers
    the accounts that got a lease within INVARIANT_WINDOW (each over its
    whole history), since the whole history is the audit's to read.
    """
    problems = find_broken_invariants(context.session)
    since = context.now - INVARIANT_WINDOW
    history = verify_history(
        context.session, context.settings.quiet, started_since=since
    )
    problems += [
        f"{v.account} went to {v.dn} at {format_time(v.started_at)}, "
        f"{v.problem} of lease {v.previous_lease_id}"
        for v in history.violations
    ]
    # Critical threshold 0: any count above zero alerts.
    perfdata = (f"'invariant_violations'={len(problems)};;0;0",)
    if problems:
        return CheckResult(
            "invariants",
            Status.CRITICAL,
            f"{len(problems)} invariant violation(s): " + _names(problems),
            perfdata,
        )
    return CheckResult(
        "invariants",
        Status.OK,
        "lease invariants hold, no early handover in the last "
        f"{INVARIANT_WINDOW.days} days",
        perfdata,
    )


CHECKS: list[tuple[str, Check]] = [
    ("pools", check_pools),
    ("nss", check_nss),
    ("accounts", check_out_of_service),
    ("invariants", check_invariants),
    ("bans", check_bans),
    ("dn_only_pool", check_dn_only_pool),
    ("syslog", check_syslog),
]
