"""Recycling: quiet-period boundaries, cleanup, in-use checks, overrides (F14)."""

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time
from pydantic import ValidationError
from sqlalchemy import select, text

from poolmgr import db, migrate
from poolmgr.audit import build_report
from poolmgr.db import Base, unit_of_work
from poolmgr.errors import (
    BadInputError,
    NotFoundError,
    PolicyError,
    PoolExhaustedError,
    RunLockedError,
)
from poolmgr.gridmapdir.exporter import export_gridmapdir
from poolmgr.history import person_history, touch_account, who_held
from poolmgr.holds import hold_account, release_account
from poolmgr.logs import setup_logging
from poolmgr.models import Account, Event, Lease
from poolmgr.provisioning import ExportOptions, export_text
from poolmgr.recycle import Recycler, _due_batch, default_actor
from poolmgr.site_commands import DEFAULT_PATH, CommandResult
from poolmgr.timeutil import utcnow
from poolmgr.views import account_detail
from tests.conftest import make_settings
from tests.factories import (
    all_leases,
    at,
    drain_datagrams,
    invariant_violations,
    map_dn,
    open_leases,
    pool,
    set_last_use,
    sync,
    syslog_receiver,
)

DREW = "/DC=org/DC=example/CN=Drew Past"
ELI = "/DC=org/DC=example/CN=Eli Next"
JANE = "/DC=org/DC=example/CN=Jane Roe"
REASON = "home dir 2 TB, user left VO"
FEB = "2025-02-20T00:00:00Z"
COMMANDS = {
    "cleanup_command": ["/usr/local/sbin/pool-clean"],
    "in_use_command": ["/usr/local/sbin/pool-busy"],
}


class FakeCommands:
    """Stands in for the site's commands: answers by purpose, records each call."""

    def __init__(self, cleanup: int = 0, in_use: int = 1) -> None:
        self.status = {"cleanup": cleanup, "in-use-check": in_use}
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def __call__(self, argv, variables, timeout) -> CommandResult:
        self.calls.append((list(argv), dict(variables)))
        return CommandResult(self.status[variables["POOLMGR_ACTION"]], "said so")

    def purposes(self) -> list[str]:
        return [variables["POOLMGR_ACTION"] for _, variables in self.calls]


def recycler(engine, settings, commands=None, actor="admin1") -> Recycler:
    return Recycler(engine, settings, actor=actor, runner=commands or FakeCommands())


def one_account_pool(engine, settings, size: int = 1) -> None:
    sync(engine, settings, [pool("atlas", "atlas", size, "/atlas")])


def state_of(engine, account: str) -> str:
    with unit_of_work(engine, write=False) as session:
        return session.scalar(select(Account.state).where(Account.name == account))


def event_kinds(engine) -> list[str]:
    with unit_of_work(engine, write=False) as session:
        return list(session.scalars(select(Event.kind).order_by(Event.id)))


def events_of(engine, kind: str) -> list[Event]:
    with unit_of_work(engine, write=False) as session:
        return list(session.scalars(select(Event).where(Event.kind == kind)))


def table_contents(engine) -> dict[str, list[tuple]]:
    with unit_of_work(engine, write=False) as session:
        return {
            table.name: [
                tuple(row)
                for row in session.execute(
                    table.select().order_by(*table.primary_key.columns)
                )
            ]
            for table in Base.metadata.sorted_tables
        }


# --- configuration -------------------------------------------------------


@pytest.mark.parametrize(
    "period",
    ["0 days", "0 months 0 seconds", "-1 day", "-6 months", "0"],
    ids=["zero-days", "zero-sum", "minus-day", "minus-months", "bare-zero"],
)
def test_zero_or_negative_quiet_period_is_rejected_at_configuration(period):
    with pytest.raises(ValidationError, match="quiet_period"):
        make_settings(quiet_period=period)


@pytest.mark.parametrize(
    "command",
    [[], ["pool-clean"], ["bin/pool-clean"], ["/usr/sbin/x", "a\0b"]],
    ids=["empty", "bare-name", "relative", "nul"],
)
def test_site_commands_must_be_argv_with_an_absolute_path(command):
    with pytest.raises(ValidationError, match="cleanup_command"):
        make_settings(recycle={"cleanup_command": command})


# --- quiet-period arithmetic ---------------------------------------------

BOUNDARIES = [
    pytest.param("6 months", "2025-01-15T12:00:00Z", "2025-07-15T12:00:00Z", id="6mo"),
    pytest.param(
        "6 months", "2024-08-31T10:00:00Z", "2025-02-28T10:00:00Z", id="month-end"
    ),
    pytest.param(
        "6 months", "2023-08-31T10:00:00Z", "2024-02-29T10:00:00Z", id="leap-feb"
    ),
    pytest.param(
        "183 days", "2024-01-01T00:00:00Z", "2024-07-02T00:00:00Z", id="days-leap"
    ),
    pytest.param(
        "183 days", "2025-01-01T00:00:00Z", "2025-07-03T00:00:00Z", id="days-common"
    ),
    pytest.param(
        "1 year", "2024-02-29T08:00:00Z", "2025-02-28T08:00:00Z", id="leap-day-year"
    ),
    pytest.param(
        "6 months", "2024-12-31T23:59:59Z", "2025-06-30T23:59:59Z", id="year-end"
    ),
]


@pytest.mark.parametrize(("quiet", "last_use", "due"), BOUNDARIES)
def test_quiet_period_ends_exactly_at_the_boundary(sqlite_engine, quiet, last_use, due):
    settings = make_settings(quiet_period=quiet)
    one_account_pool(sqlite_engine, settings)
    map_dn(sqlite_engine, settings, JANE, "/atlas", now=at(last_use))
    worker = recycler(sqlite_engine, settings)

    early = list(worker.run(now=at(due) - timedelta(seconds=1)))
    assert early == [], "one second before the boundary nothing is eligible"
    assert len(open_leases(sqlite_engine)) == 1

    outcomes = list(worker.run(now=at(due)))
    assert [(o.action, o.target.account) for o in outcomes] == [
        ("recycled", "atlas001")
    ]
    assert open_leases(sqlite_engine) == []
    assert state_of(sqlite_engine, "atlas001") == "free"


def test_last_use_in_the_future_is_never_old(sqlite_engine):
    settings = make_settings(quiet_period="1 hour")
    one_account_pool(sqlite_engine, settings)
    now = at("2025-03-01T00:00:00Z")
    map_dn(sqlite_engine, settings, JANE, "/atlas", now=now + timedelta(days=2))
    worker = recycler(sqlite_engine, settings)

    assert list(worker.run(now=now)) == []
    assert list(worker.run(now=now, dry_run=True)) == []
    assert len(open_leases(sqlite_engine)) == 1


def test_recycle_reads_open_leases_through_the_last_use_index(sqlite_engine):
    statement = _due_batch(at("2025-01-01T00:00:00Z"), None)
    compiled = statement.compile(sqlite_engine, compile_kwargs={"literal_binds": True})
    with sqlite_engine.connect() as conn:
        plan = conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}")).all()
    details = " ".join(str(row[-1]) for row in plan)
    assert "ix_leases_open_last_used" in details, details


# --- cleanup ---------------------------------------------------------------


def test_failed_cleanup_keeps_account_out_of_service_until_a_retry(sqlite_engine):
    settings = make_settings(quiet_period="30 days", recycle=COMMANDS)
    one_account_pool(sqlite_engine, settings)
    map_dn(sqlite_engine, settings, JANE, "/atlas", now=at("2025-01-01T00:00:00Z"))
    commands = FakeCommands(cleanup=3)
    worker = recycler(sqlite_engine, settings, commands)
    now = at("2025-03-01T00:00:00Z")

    [failed] = worker.run(now=now)
    assert (failed.action, failed.failed) == ("cleanup_failed", True)
    assert "exit status 3: said so" in failed.detail
    assert state_of(sqlite_engine, "atlas001") == "cleaning"
    with pytest.raises(PoolExhaustedError):
        map_dn(sqlite_engine, settings, "/DC=org/DC=example/CN=Kim", "/atlas", now=now)
    [event] = events_of(sqlite_engine, "cleanup_failed")
    assert (event.account, event.actor, event.dn) == ("atlas001", "admin1", JANE)

    commands.status["cleanup"] = 0
    [retried] = worker.run(now=now + timedelta(days=1))
    assert (retried.action, retried.target.retry) == ("recycled", True)
    assert retried.target.reason == "quiet_period"
    assert state_of(sqlite_engine, "atlas001") == "free"
    assert commands.purposes() == ["in-use-check", "cleanup", "cleanup"]
    assert invariant_violations(sqlite_engine) == []


def test_a_crash_during_cleanup_leaves_the_account_out_of_service(sqlite_engine):
    settings = make_settings(quiet_period="30 days", recycle=COMMANDS)
    one_account_pool(sqlite_engine, settings)
    map_dn(sqlite_engine, settings, JANE, "/atlas", now=at("2025-01-01T00:00:00Z"))

    def crash(argv, variables, timeout):
        if variables["POOLMGR_ACTION"] == "cleanup":
            raise KeyboardInterrupt
        return CommandResult(1, "")

    with pytest.raises(KeyboardInterrupt):
        list(recycler(sqlite_engine, settings, crash).run(now=at("2025-03-01T00:00Z")))
    assert state_of(sqlite_engine, "atlas001") == "cleaning"
    assert open_leases(sqlite_engine) == []

    [outcome] = recycler(sqlite_engine, settings).run(now=at("2025-03-02T00:00Z"))
    assert outcome.action == "recycled"
    assert state_of(sqlite_engine, "atlas001") == "free"


def test_without_a_cleanup_command_the_account_is_freed_at_once(sqlite_engine, site):
    one_account_pool(sqlite_engine, site)
    map_dn(sqlite_engine, site, JANE, "/atlas", now=at("2024-01-01T00:00:00Z"))
    commands = FakeCommands()
    [outcome] = recycler(sqlite_engine, site, commands).run(now=at("2025-01-01T00:00Z"))
    assert outcome.action == "recycled"
    assert commands.calls == []
    assert state_of(sqlite_engine, "atlas001") == "free"


def test_cleanup_gets_the_account_and_lease_details_only(
    sqlite_engine, tmp_path, monkeypatch
):
    monkeypatch.setenv("POOLMGR_DATABASE_URL", "postgresql://u:secret@db/poolmgr")
    monkeypatch.setenv("PATH", f"/home/someone/bin:{os.environ['PATH']}")
    record = tmp_path / "seen.json"
    script = tmp_path / "clean.py"
    script.write_text(
        "import json, os, sys\n"
        "json.dump({'argv': sys.argv[1:], 'env': dict(os.environ)},"
        " open(sys.argv[1], 'w'))\n"
    )
    settings = make_settings(
        quiet_period="30 days",
        recycle={"cleanup_command": [sys.executable, str(script), str(record)]},
    )
    one_account_pool(sqlite_engine, settings)
    mapping = map_dn(
        sqlite_engine, settings, JANE, "/atlas", now=at("2025-01-01T00:00Z")
    )

    [outcome] = Recycler(sqlite_engine, settings, actor="cron").run(
        now=at("2025-03-01T00:00:00Z")
    )
    assert outcome.action == "recycled"
    seen = json.loads(record.read_text())
    assert seen["argv"] == [str(record), "atlas001"]
    poolmgr_vars = {k: v for k, v in seen["env"].items() if k.startswith("POOLMGR_")}
    assert poolmgr_vars == {
        "POOLMGR_ACTION": "cleanup",
        "POOLMGR_ACCOUNT": "atlas001",
        "POOLMGR_UID": str(mapping.uid),
        "POOLMGR_POOL": "atlas",
        "POOLMGR_DN": JANE,
        "POOLMGR_LEASE_ID": str(mapping.lease_id),
        "POOLMGR_LAST_USE": "2025-01-01T00:00:00Z",
        "POOLMGR_REASON": "quiet_period",
    }
    assert set(seen["env"]) - set(poolmgr_vars) <= {"PATH", "LC_ALL", "LC_CTYPE"}
    assert (seen["env"]["PATH"], seen["env"]["LC_ALL"]) == (DEFAULT_PATH, "C"), (
        "the PATH of a command run as root must not come from its caller"
    )


def test_a_hanging_cleanup_is_killed_with_its_children(sqlite_engine, tmp_path):
    pid_file = tmp_path / "child.pid"
    script = tmp_path / "hang.py"
    script.write_text(
        "import subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "open(sys.argv[1], 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    settings = make_settings(
        quiet_period="30 days",
        recycle={
            "cleanup_command": [sys.executable, str(script), str(pid_file)],
            "command_timeout": 1,
        },
    )
    one_account_pool(sqlite_engine, settings)
    map_dn(sqlite_engine, settings, JANE, "/atlas", now=at("2025-01-01T00:00Z"))

    started = time.monotonic()
    [outcome] = Recycler(sqlite_engine, settings, actor="cron").run(
        now=at("2025-03-01T00:00:00Z")
    )
    assert time.monotonic() - started < 10
    assert outcome.action == "cleanup_failed"
    assert "timed out after 1 s" in outcome.detail
    assert not _is_running(int(pid_file.read_text()))
    assert state_of(sqlite_engine, "atlas001") == "cleaning"


def _is_running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_a_cleanup_command_that_cannot_run_is_a_failure(sqlite_engine):
    settings = make_settings(
        quiet_period="30 days", recycle={"cleanup_command": ["/nonexistent/clean"]}
    )
    one_account_pool(sqlite_engine, settings)
    map_dn(sqlite_engine, settings, JANE, "/atlas", now=at("2025-01-01T00:00Z"))
    [outcome] = Recycler(sqlite_engine, settings, actor="cron").run(
        now=at("2025-03-01T00:00:00Z")
    )
    assert outcome.action == "cleanup_failed"
    assert "cannot run /nonexistent/clean" in outcome.detail


# --- in-use check -------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "action", "failed"),
    [(0, "postponed", False), (2, "check_failed", True)],
    ids=["in-use", "check-error"],
)
def test_in_use_check_postpones_and_is_recorded(sqlite_engine, status, action, failed):
    settings = make_settings(quiet_period="30 days", recycle=COMMANDS)
    one_account_pool(sqlite_engine, settings)
    map_dn(sqlite_engine, settings, JANE, "/atlas", now=at("2025-01-01T00:00Z"))
    commands = FakeCommands(in_use=status)

    [outcome] = recycler(sqlite_engine, settings, commands).run(
        now=at("2025-03-01T00:00Z")
    )
    assert (outcome.action, outcome.failed) == (action, failed)
    assert commands.purposes() == ["in-use-check"]
    assert len(open_leases(sqlite_engine)) == 1
    [event] = events_of(sqlite_engine, "in_use_postponed")
    assert (event.account, event.reason) == ("atlas001", outcome.detail)


def test_a_use_during_the_in_use_check_keeps_the_lease(sqlite_engine):
    settings = make_settings(quiet_period="30 days", recycle=COMMANDS)
    one_account_pool(sqlite_engine, settings)
    map_dn(sqlite_engine, settings, JANE, "/atlas", now=at("2025-01-01T00:00Z"))
    now = at("2025-03-01T00:00:00Z")

    def used_meanwhile(argv, variables, timeout):
        map_dn(sqlite_engine, settings, JANE, "/atlas", now=now)
        return CommandResult(1, "")

    [outcome] = recycler(sqlite_engine, settings, used_meanwhile).run(now=now)
    assert outcome.action == "skipped"
    [lease] = open_leases(sqlite_engine)
    assert lease.last_used_at == now


# --- dry run --------------------------------------------------------------------


def test_dry_run_prints_the_plan_and_changes_nothing(sqlite_engine):
    settings = make_settings(quiet_period="30 days", recycle=COMMANDS)
    sync(sqlite_engine, settings, [pool("atlas", "atlas", 3, "/atlas")])
    map_dn(sqlite_engine, settings, JANE, "/atlas", now=at("2025-01-01T00:00Z"))
    map_dn(sqlite_engine, settings, DREW, "/atlas", now=at("2025-02-20T00:00Z"))
    map_dn(sqlite_engine, settings, ELI, "/atlas", now=at("2025-01-02T00:00Z"))
    failing = FakeCommands(cleanup=1)
    list(recycler(sqlite_engine, settings, failing).run(now=at("2025-02-01T12:00Z")))
    before = table_contents(sqlite_engine)
    commands = FakeCommands()
    worker = recycler(sqlite_engine, settings, commands)

    plan = list(worker.run(now=at("2025-03-01T00:00:00Z"), dry_run=True))
    forced = worker.force("atlas002", REASON, dry_run=True)

    assert [(o.action, o.target.account) for o in plan + forced] == [
        ("would_retry", "atlas001"),
        ("would_retry", "atlas003"),
        ("would_override", "atlas002"),
    ]
    assert commands.calls == []
    assert table_contents(sqlite_engine) == before


def test_dry_run_lists_leases_past_the_quiet_period(sqlite_engine, site):
    sync(sqlite_engine, site, [pool("atlas", "atlas", 2, "/atlas")])
    map_dn(sqlite_engine, site, JANE, "/atlas", now=at("2024-01-01T00:00:00Z"))
    map_dn(sqlite_engine, site, DREW, "/atlas", now=at("2024-12-01T00:00:00Z"))
    [planned] = recycler(sqlite_engine, site).run(
        now=at("2024-07-01T00:00:00Z"), dry_run=True
    )
    assert planned.line() == (
        "would_recycle account=atlas001 pool=atlas lease=1 "
        'last_use=2024-01-01T00:00:00Z dn="/DC=org/DC=example/CN=Jane Roe" '
        'note="due 2024-07-01T00:00:00Z"'
    )


# --- overrides (F14) ----------------------------------------------------------


def test_f14_early_recycle_override_and_traceability(engine):
    settings = make_settings(quiet_period="183 days", recycle=COMMANDS)
    commands = FakeCommands()
    worker = recycler(engine, settings, commands)
    one_account_pool(engine, settings)
    with freeze_time("2024-09-01T00:00:00Z"):
        assert map_dn(engine, settings, DREW, "/atlas").account == "atlas001"
    set_last_use(engine, "atlas001", at("2025-01-15T00:00:00Z"))

    with freeze_time("2025-03-01T00:00:00Z"):
        # 1: the only account was last used 45 days ago.
        with pytest.raises(PoolExhaustedError):
            map_dn(engine, settings, ELI, "/atlas")
        # 2: an override needs a reason.
        for missing in (None, "", "   "):
            with pytest.raises(BadInputError, match="reason is required"):
                worker.force("atlas001", missing)
        # 3: the in-use check reports a running process.
        commands.status["in-use-check"] = 0
        with pytest.raises(PolicyError, match="in use.*--ignore-in-use"):
            worker.force("atlas001", REASON)
        assert len(open_leases(engine)) == 1
        # 4: the check reports clean.
        commands.status["in-use-check"] = 1
        override, recycled = worker.force("atlas001", REASON)
        assert (override.action, recycled.action) == ("override", "recycled")
        assert map_dn(engine, settings, ELI, "/atlas").account == "atlas001"

    drew_lease, eli_lease = all_leases(engine)
    assert (drew_lease.end_reason, drew_lease.ended_by, drew_lease.end_note) == (
        "override",
        "admin1",
        REASON,
    )
    assert drew_lease.ended_at == at("2025-03-01T00:00:00Z")
    assert drew_lease.last_used_at == at("2025-01-15T00:00:00Z")
    assert eli_lease.started_at == at("2025-03-01T00:00:00Z")
    assert commands.purposes() == ["in-use-check", "in-use-check", "cleanup"]

    # 5: who held the account, before and after the override.
    with unit_of_work(engine, write=False) as session:
        before = who_held(session, "atlas001", at("2025-02-10T14:00:00Z"))
        after = who_held(session, "atlas001", at("2025-03-02T00:00:00Z"))
    assert (before.lease.dn, after.lease.dn) == (DREW, ELI)

    # 6: Drew returns and gets another account; the audit lists the override.
    sync(engine, settings, [pool("atlas", "atlas", 2, "/atlas")])
    with freeze_time("2025-03-05T00:00:00Z"):
        assert map_dn(engine, settings, DREW, "/atlas").account == "atlas002"
    with unit_of_work(engine, write=False) as session:
        drew = person_history(session, DREW)
        report = build_report(
            session, settings, at("2025-03-05T00:00:00Z"), at("2025-02-01T00:00:00Z")
        )
    assert [row.account for row in drew.leases] == ["atlas001", "atlas002"]
    [listed] = report.overrides
    assert (listed.account, listed.actor, listed.reason, listed.dn) == (
        "atlas001",
        "admin1",
        REASON,
        DREW,
    )
    assert report.history.violations == []
    assert invariant_violations(engine) == []


def test_previous_holder_does_not_get_the_overridden_account_back(sqlite_engine):
    settings = make_settings(quiet_period="183 days")
    sync(sqlite_engine, settings, [pool("atlas", "atlas", 1, "/atlas")])
    map_dn(sqlite_engine, settings, DREW, "/atlas", now=at("2025-01-15T00:00:00Z"))
    recycler(sqlite_engine, settings).force(
        "atlas001", REASON, now=at("2025-03-01T00:00:00Z")
    )
    with pytest.raises(PoolExhaustedError):
        map_dn(sqlite_engine, settings, DREW, "/atlas", now=at("2025-03-02T00:00Z"))
    assert map_dn(sqlite_engine, settings, ELI, "/atlas").account == "atlas001"


def test_ignoring_the_in_use_check_is_recorded_on_the_override(sqlite_engine):
    settings = make_settings(quiet_period="183 days", recycle=COMMANDS)
    one_account_pool(sqlite_engine, settings)
    map_dn(sqlite_engine, settings, DREW, "/atlas", now=at("2025-01-15T00:00:00Z"))
    commands = FakeCommands(in_use=0)

    override, recycled = recycler(sqlite_engine, settings, commands).force(
        "atlas001", REASON, ignore_in_use=True, now=at("2025-03-01T00:00:00Z")
    )
    assert recycled.action == "recycled"
    assert commands.purposes() == ["cleanup"]
    [event] = events_of(sqlite_engine, "override")
    assert (event.actor, event.reason, event.dn) == ("admin1", REASON, DREW)
    assert json.loads(event.details) == {
        "last_use": "2025-01-15T00:00:00Z",
        "quiet_until": "2025-07-17T00:00:00Z",
        "in_use_check": "ignored",
    }


@pytest.mark.parametrize(
    ("prepare", "error", "message"),
    [
        ("unknown", NotFoundError, "No pool account named 'atlas009'"),
        ("free", PolicyError, "has no open lease"),
        ("cleaning", PolicyError, "already out of service"),
    ],
    ids=["unknown", "free", "cleaning"],
)
def test_force_refuses_accounts_without_an_open_lease(
    sqlite_engine, prepare, error, message
):
    settings = make_settings(quiet_period="30 days", recycle=COMMANDS)
    one_account_pool(sqlite_engine, settings)
    if prepare == "cleaning":
        map_dn(sqlite_engine, settings, DREW, "/atlas", now=at("2025-01-01T00:00Z"))
        list(
            recycler(sqlite_engine, settings, FakeCommands(cleanup=1)).run(
                now=at("2025-03-01T00:00Z")
            )
        )
    name = "atlas009" if prepare == "unknown" else "atlas001"
    with pytest.raises(error, match=message):
        recycler(sqlite_engine, settings).force(name, REASON)


def test_actor_is_the_login_behind_sudo(monkeypatch):
    monkeypatch.setenv("SUDO_USER", "admin1")
    assert default_actor() == "admin1"
    monkeypatch.delenv("SUDO_USER")
    monkeypatch.setattr(os, "getlogin", _no_terminal)
    assert default_actor() == __import__("pwd").getpwuid(os.getuid()).pw_name


def _no_terminal() -> str:
    raise OSError("no controlling terminal")


# --- last use (F10) -------------------------------------------------------------


def test_f10_daily_uses_keep_the_lease_and_admin_actions_never_touch_it(
    engine, tmp_path
):
    settings = make_settings(quiet_period="183 days", recycle=COMMANDS)
    sync(engine, settings, [pool("atlas", "atlas", 4, "/atlas")])
    for name in ("/CN=a", "/CN=b", "/CN=c"):
        map_dn(engine, settings, "/DC=org/DC=example" + name, "/atlas")
    first = at("2025-01-10T08:00:00Z")
    assert map_dn(engine, settings, JANE, "/atlas", now=first).account == "atlas004"
    assert _last_use(engine) == first
    day = at("2025-01-11T09:00:00Z")
    while day <= at("2025-05-30T09:00:00Z"):
        map_dn(engine, settings, JANE, "/atlas", now=day)
        day += timedelta(days=7) if day < at("2025-05-20T00:00Z") else timedelta(days=1)

    # 1: not eligible on 1 June; last use is the latest mapping.
    worker = recycler(engine, settings)
    assert [o.target.account for o in worker.run(now=at("2025-06-01T00:00Z"))] == []
    assert _last_use(engine) == at("2025-05-30T09:00:00Z")
    map_dn(engine, settings, JANE, "/atlas", now=at("2025-06-01T10:00:00Z"))

    # 3: admin actions on 2 June leave last use alone: taking the account
    # out of recycling and back (a hold), exports, reports.
    with freeze_time("2025-06-02T12:00:00Z"):
        list(worker.run(dry_run=True))
        worker.force("atlas004", REASON, dry_run=True)
        with unit_of_work(engine) as session:
            hold_account(
                session, "atlas004", reason="look", actor="admin1", now=utcnow()
            )
        with unit_of_work(engine) as session:
            release_account(
                session, "atlas004", reason="done", actor="admin1", now=utcnow()
            )
        with unit_of_work(engine, write=False) as session:
            who_held(session, "atlas004", at("2025-06-01T00:00:00Z"))
            person_history(session, JANE)
            account_detail(session, "atlas004")
            build_report(session, settings, at("2025-06-02T12:00Z"), first)
            export_gridmapdir(
                session,
                tmp_path / "gridmapdir",
                quiet=settings.quiet,
                now=at("2025-06-02T12:00Z"),
            )
            export_text(session, "passwd", ExportOptions())
        assert _last_use(engine) == at("2025-06-01T10:00:00Z")
        holds = [(e.kind, e.actor) for e in events_of(engine, "hold_started")]
        holds += [(e.kind, e.actor) for e in events_of(engine, "hold_released")]
        assert holds == [("hold_started", "admin1"), ("hold_released", "admin1")], (
            "admin actions go to the event log with their actor"
        )
        worker.force("atlas004", REASON)
    [ended] = [lease for lease in all_leases(engine) if lease.account_id == 4]
    assert ended.last_used_at == at("2025-06-01T10:00:00Z")
    with unit_of_work(engine, write=False) as session:
        account = session.scalar(select(Account).where(Account.name == "atlas004"))
        assert account.last_used_at == at("2025-06-01T10:00:00Z")
    [override] = events_of(engine, "override")
    assert (override.actor, override.at) == ("admin1", at("2025-06-02T12:00:00Z"))


def _last_use(engine):
    with unit_of_work(engine, write=False) as session:
        return session.scalar(
            select(Lease.last_used_at)
            .join(Account, Account.id == Lease.account_id)
            .where(Account.name == "atlas004", Lease.open_marker == 1)
        )


# --- syslog ---------------------------------------------------------------------


def test_state_changes_reach_syslog_as_key_value_lines(sqlite_engine, tmp_path):
    address = tmp_path / "log"
    receiver = syslog_receiver(address)
    settings = make_settings(
        quiet_period="183 days",
        syslog={"enabled": True, "address": str(address)},
    )
    one_account_pool(sqlite_engine, settings)
    setup_logging(0, settings.syslog)
    try:
        map_dn(sqlite_engine, settings, DREW, "/atlas", now=at("2025-01-15T00:00Z"))
        with unit_of_work(sqlite_engine) as session:
            touch_account(session, "atlas001", at("2025-01-20T00:00:00Z"))
        recycler(sqlite_engine, settings).force(
            "atlas001", REASON, now=at("2025-03-01T00:00:00Z")
        )
        received = drain_datagrams(receiver)
    finally:
        setup_logging(0, None)
        receiver.close()

    pid = os.getpid()
    dn = '"/DC=org/DC=example/CN=Drew Past"'
    assert (
        f"<87>poolmgr[{pid}]: event=use account=atlas001 dn={dn} lease_id=1\x00"
    ).encode() in received, "a use is routine: debug priority"
    assert (
        f"<84>poolmgr[{pid}]: event=override actor=admin1 pool=atlas "
        f'account=atlas001 dn={dn} lease_id=1 reason="{REASON}" '
        "last_use=2025-01-20T00:00:00Z quiet_until=2025-07-22T00:00:00Z\x00"
    ).encode() in received
    assert (
        f"<86>poolmgr[{pid}]: event=recycled actor=admin1 pool=atlas "
        f"account=atlas001 dn={dn} lease_id=1 last_use=2025-01-20T00:00:00Z "
        "end_reason=override\x00"
    ).encode() in received
    changes = [line for line in received if line[:4] in (b"<86>", b"<84>")]
    kinds = [line.split(b"event=")[1].split(b" ")[0].decode() for line in changes]
    assert kinds == ["lease_started", "override", "lease_ended", "recycled"]
    assert event_kinds(sqlite_engine)[-4:] == kinds, "the same events are rows"
    assert [line[:4] for line in changes] == [b"<86>", b"<84>", b"<86>", b"<86>"], (
        "an override goes at warning priority, the other changes at info"
    )


# --- the 'cleaning' state migration ---------------------------------------------

BEFORE_CLEANING = "b7e1c2d4a9f0"


def test_cleaning_state_migration_keeps_accounts_that_leases_refer_to(tmp_path):
    engine = db.get_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate.upgrade(engine, BEFORE_CLEANING)
    with engine.begin() as conn:
        for statement in (
            "INSERT INTO pools VALUES (1, 'atlas', 'atlas', 'atlas', 3, 1000,"
            " 'atlas', 1000, 1, 1, '2025-01-01', NULL)",
            "INSERT INTO accounts VALUES (1, 1, 'atlas001', 1, 1001, 'leased',"
            " '2025-01-01', NULL, NULL, NULL, NULL)",
            "INSERT INTO identities VALUES (1, 'x509', 'k', 'h', 'd', 0, '2025-01-01')",
            "INSERT INTO leases (id, account_id, identity_id, pool_id, started_at,"
            " last_used_at, open_account_id, open_marker)"
            " VALUES (1, 1, 1, 1, '2025-01-01', '2025-01-01', 1, 1)",
        ):
            conn.execute(text(statement))

    migrate.upgrade(engine)
    with engine.begin() as conn:
        assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
        assert conn.execute(text("SELECT name, state FROM accounts")).all() == [
            ("atlas001", "leased")
        ]
        conn.execute(text("UPDATE accounts SET state = 'cleaning'"))
        indexes = conn.execute(text("PRAGMA index_list(accounts)")).all()
    assert {"ix_accounts_free_order", "ix_accounts_free_since"} <= {
        row[1] for row in indexes
    }
    with pytest.raises(RuntimeError, match="waiting for cleanup"):
        migrate.downgrade(engine, BEFORE_CLEANING)
    db.dispose_engines()


# --- incident holds and banned holders ---------------------------------------


def test_a_held_account_is_neither_recycled_nor_cleaned(sqlite_engine):
    settings = make_settings(quiet_period="30 days", recycle=COMMANDS)
    sync(sqlite_engine, settings, [pool("atlas", "atlas", 2, "/atlas")])
    map_dn(sqlite_engine, settings, JANE, "/atlas", now=at("2025-01-01T00:00Z"))
    map_dn(sqlite_engine, settings, DREW, "/atlas", now=at("2025-02-10T00:00Z"))
    list(
        recycler(sqlite_engine, settings, FakeCommands(cleanup=1)).run(
            now=at("2025-02-15T00:00Z")
        )
    )
    with unit_of_work(sqlite_engine) as session:
        for name in ("atlas001", "atlas002"):
            hold_account(
                session, name, reason="incident 42", actor="csirt", now=at(FEB)
            )
    commands = FakeCommands()
    worker = recycler(sqlite_engine, settings, commands)

    outcomes = list(worker.run(now=at("2025-06-01T00:00:00Z")))
    assert [(o.action, o.target.account) for o in outcomes] == [
        ("blocked", "atlas001"),
        ("blocked", "atlas002"),
    ]
    assert "incident 42" in outcomes[0].detail
    assert commands.calls == [], "no in-use check, no cleanup"
    assert state_of(sqlite_engine, "atlas001") == "cleaning"
    with pytest.raises(PolicyError, match="held since .* by csirt: incident 42"):
        worker.force("atlas002", REASON)
    assert [lease.last_used_at for lease in open_leases(sqlite_engine)] == [
        at("2025-02-10T00:00:00Z")
    ]


def test_a_second_run_or_override_waits_for_no_running_one(engine, site):
    """While a run cleans atlas001 (its cleanup command still going), a
    second run and an override, from any host, are refused and change
    nothing; once the first run ends the lock is free again."""
    settings = make_settings(recycle=COMMANDS)
    one_account_pool(engine, settings, size=2)
    for dn in (JANE, DREW):
        map_dn(engine, settings, dn, "/atlas", now=at("2024-01-01T00:00:00Z"))
    seen: list[object] = []

    def cleaning(argv, variables, timeout):
        if variables["POOLMGR_ACTION"] == "cleanup" and not seen:
            for attempt in (
                lambda: list(recycler(engine, settings).run(at(FEB))),
                lambda: recycler(engine, settings).force("atlas002", REASON),
            ):
                with pytest.raises(RunLockedError) as refused:
                    attempt()
                seen.append(str(refused.value))
        return CommandResult(
            1 if variables["POOLMGR_ACTION"] == "in-use-check" else 0, ""
        )

    outcomes = list(recycler(engine, settings, commands=cleaning).run(at(FEB)))
    assert [o.action for o in outcomes] == ["recycled", "recycled"]
    assert (
        seen
        == [
            "Another 'poolmgr recycle' is running on this database; this one did "
            "nothing. Run it again once the other has finished."
        ]
        * 2
    )
    assert [o.action for o in recycler(engine, settings).run(at(FEB))] == []
    assert invariant_violations(engine) == []
