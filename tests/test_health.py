"""The checks behind poolmgr check: each status, and no crash ever escapes."""

import grp
import pwd

import pytest
from freezegun import freeze_time
from sqlalchemy import select, update

from poolmgr import migrate, nss
from poolmgr.db import unit_of_work
from poolmgr.errors import ConfigError
from poolmgr.health import (
    CheckContext,
    CheckOptions,
    CheckResult,
    HealthReport,
    Status,
    available_accounts,
    check_database,
    probe,
    run_checks,
)
from poolmgr.leases import end_lease
from poolmgr.models import Account, Lease
from poolmgr.timeutil import utcnow
from tests.conftest import make_settings
from tests.factories import at, map_dn, pool, set_last_use, sync

NOW = at("2026-09-01T00:00:00Z")


def url_of(engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def settings_for(engine, **values):
    return make_settings(database=url_of(engine), **values)


DEFAULTS = CheckOptions()


def check(engine, name, options=DEFAULTS, now=NOW, **values):
    report = run_checks(settings_for(engine, **values), options, now)
    return next(r for r in report.results if r.name == name)


def fill(engine, settings, size, leased):
    sync(engine, settings, [pool("atlas", "atlas", size, "/atlas")])
    for n in range(leased):
        map_dn(engine, settings, f"/DC=org/DC=example/CN=P{n}", "/atlas", now=NOW)


def test_a_current_database_is_ok(engine):
    result = check_database(url_of(engine))
    assert result.status is Status.OK
    assert result.message.startswith("database schema current (")


def test_a_database_behind_the_code_is_critical(sqlite_engine):
    migrate.downgrade(sqlite_engine, "-1")
    result = check_database(url_of(sqlite_engine))
    assert result.status is Status.CRITICAL
    assert result.message.endswith("run 'poolmgr db upgrade'")


def test_a_missing_sqlite_file_is_critical_and_not_created(tmp_path):
    result = check_database(f"sqlite:///{tmp_path / 'none.db'}")
    assert (result.status, result.message) == (
        Status.CRITICAL,
        f"database file {tmp_path / 'none.db'} does not exist",
    )
    assert not (tmp_path / "none.db").exists()


def test_an_unreachable_server_is_critical_in_one_line():
    report = probe(
        lambda: make_settings(database="postgresql://nobody:secret@127.0.0.1:1/x"),
        CheckOptions(),
        NOW,
    )
    assert report.status is Status.CRITICAL
    line = report.summary()
    assert line.startswith(
        "POOLMGR CRITICAL - database postgresql://nobody:***@127.0.0.1:1/x "
        "is unavailable: "
    )
    assert "\n" not in line and "secret" not in line


@pytest.mark.parametrize(
    ("size", "leased", "status", "message"),
    [
        (10, 0, Status.OK, "1 pool above 10% available accounts"),
        (10, 8, Status.OK, "1 pool above 10% available accounts"),
        (
            10,
            9,
            Status.WARNING,
            "pools near exhaustion (available/accounts): atlas 1/10",
        ),
        (
            10,
            10,
            Status.CRITICAL,
            "pools exhausted (available/accounts): atlas 0/10",
        ),
    ],
    ids=["empty", "two-left", "one-left", "none-left"],
)
def test_pool_thresholds(sqlite_engine, site, size, leased, status, message):
    fill(sqlite_engine, site, size, leased)
    result = check(sqlite_engine, "pools")
    assert (result.status, result.message) == (status, message)


def test_thresholds_are_options(sqlite_engine, site):
    fill(sqlite_engine, site, 10, 7)
    result = check(sqlite_engine, "pools", CheckOptions(warning=50, critical=30))
    assert (result.status, result.message) == (
        Status.CRITICAL,
        "pools near exhaustion (available/accounts): atlas 3/10",
    )


def test_exhausted_and_near_pools_are_named_apart(sqlite_engine, site):
    sync(
        sqlite_engine,
        site,
        [pool("atlas", "atlas", 10, "/atlas"), pool("cms", "cms", 2, "/cms")],
    )
    for n in range(9):
        map_dn(sqlite_engine, site, f"/DC=org/DC=example/CN=A{n}", "/atlas", now=NOW)
    for n in range(2):
        map_dn(sqlite_engine, site, f"/DC=org/DC=example/CN=C{n}", "/cms", now=NOW)
    result = check(sqlite_engine, "pools")
    assert (result.status, result.message) == (
        Status.CRITICAL,
        "pools exhausted (available/accounts): cms 0/2; "
        "pools near exhaustion: atlas 1/10",
    )


@pytest.mark.parametrize(
    ("now", "available"),
    [("2026-09-01T00:00:00Z", 10), ("2026-08-31T23:59:59Z", 9)],
    ids=["quiet-period-over", "one-second-short"],
)
def test_a_free_account_in_its_quiet_period_is_not_available(
    engine, site, now, available
):
    fill(engine, site, 10, 1)
    set_last_use(engine, "atlas001", at("2026-03-01T00:00:00Z"))
    with unit_of_work(engine) as session:
        session.execute(
            update(Account)
            .where(Account.name == "atlas001")
            .values(state="free", last_used_at=at("2026-03-01T00:00:00Z"))
        )
    with freeze_time(now), unit_of_work(engine, write=False) as session:
        counts = available_accounts(session, site, utcnow())
    assert sum(counts.values()) == available


@pytest.fixture
def fake_nss(monkeypatch):
    """F15 case 2: atlas004-007 are absent; atlas008 has another uid here."""
    users = {f"atlas00{n}": 60000 + n for n in (1, 2, 3)} | {"atlas008": 7}

    def fetch(kind, key):
        if kind == "passwd" and key in users:
            return pwd.struct_passwd((key, "x", users[key], 1, "", "/", "/bin/sh"))
        if kind == "gid" and int(key) == 60000:
            return grp.struct_group(("atlas", "x", 60000, []))
        return None

    monkeypatch.setattr(nss, "_fetch", fetch)
    nss.clear_cache()
    yield
    nss.clear_cache()


def test_nss_is_checked_only_when_enabled(sqlite_engine, fake_nss):
    settings = make_settings(pools={"atlas": {"first_uid": 60000, "gid": 60000}})
    sync(sqlite_engine, settings, [pool("atlas", "atlas", 1, "/atlas")])
    result = check(sqlite_engine, "nss", pools=settings.pools)
    assert (result.status, result.message) == (Status.OK, "NSS check off")


@pytest.mark.parametrize(
    ("size", "status", "names"),
    [
        (3, Status.OK, []),
        (7, Status.WARNING, ["atlas004", "atlas005", "atlas006", "atlas007"]),
        (8, Status.CRITICAL, ["atlas008 has uid 7, expected 60008"]),
    ],
    ids=["resolves", "defined-but-unresolvable", "uid-differs"],
)
def test_nss_problems_name_the_accounts(sqlite_engine, fake_nss, size, status, names):
    pools = {"atlas": {"first_uid": 60000, "gid": 60000}}
    sync(
        sqlite_engine,
        make_settings(pools=pools),
        [pool("atlas", "atlas", size, "/atlas")],
    )
    result = check(sqlite_engine, "nss", CheckOptions(nss=True), pools=pools)
    assert result.status is status
    for name in names:
        assert name in result.message


def test_accounts_out_of_service_warn_with_pool_and_state(sqlite_engine, site):
    fill(sqlite_engine, site, 3, 0)
    with unit_of_work(sqlite_engine) as session:
        session.execute(
            update(Account).where(Account.number < 3).values(state="cleaning")
        )
    result = check(sqlite_engine, "accounts")
    assert (result.status, result.message) == (
        Status.WARNING,
        "2 account(s) out of service: atlas cleaning 2",
    )


def test_a_failing_check_is_unknown_and_the_others_still_run(sqlite_engine, site):
    def broken(context: CheckContext) -> CheckResult:
        raise RuntimeError("boom")

    def fine(context: CheckContext) -> CheckResult:
        return CheckResult("fine", Status.OK, "fine")

    report = run_checks(
        settings_for(sqlite_engine),
        CheckOptions(),
        NOW,
        [("broken", broken), ("fine", fine)],
    )
    assert [(r.name, r.status) for r in report.results] == [
        ("database", Status.OK),
        ("broken", Status.UNKNOWN),
        ("fine", Status.OK),
    ]
    assert (
        report.summary() == "POOLMGR UNKNOWN - broken check failed: RuntimeError: boom"
    )


def test_a_bad_configuration_is_unknown():
    def load():
        raise ConfigError("poolmgr.yaml: quiet_period: not understood")

    report = probe(load, CheckOptions(), NOW)
    assert report.summary() == (
        "POOLMGR UNKNOWN - configuration: poolmgr.yaml: quiet_period: not understood"
    )
    assert report.status is Status.UNKNOWN


@pytest.mark.parametrize(
    ("statuses", "worst"),
    [
        ((Status.OK, Status.OK), Status.OK),
        ((Status.OK, Status.UNKNOWN), Status.UNKNOWN),
        ((Status.UNKNOWN, Status.WARNING), Status.WARNING),
        ((Status.WARNING, Status.CRITICAL, Status.UNKNOWN), Status.CRITICAL),
    ],
    ids=["ok", "unknown", "warning-beats-unknown", "critical-beats-all"],
)
def test_the_worst_status_wins_and_is_named_first(statuses, worst):
    report = HealthReport(
        tuple(CheckResult(f"c{i}", s, f"m{i}\nx") for i, s in enumerate(statuses))
    )
    assert report.status is worst
    line = report.summary()
    assert line.startswith(f"POOLMGR {worst.name} - ")
    assert "\n" not in line
    assert len(report.details()) == len(statuses)


# --- performance data --------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "perfdata"),
    [
        (CheckOptions(), "'atlas'=7;2:;1:;0;10"),
        (CheckOptions(warning=50, critical=30), "'atlas'=7;6:;4:;0;10"),
        (CheckOptions(warning=75, critical=70), "'atlas'=7;8:;8:;0;10"),
    ],
    ids=["defaults", "custom", "at-the-critical-edge"],
)
def test_pools_carry_perfdata_with_the_probes_own_thresholds(
    sqlite_engine, site, options, perfdata
):
    fill(sqlite_engine, site, 10, 3)
    result = check(sqlite_engine, "pools", options)
    assert result.perfdata == (perfdata,)
    # 'N:' alerts below N: the threshold agrees with the status.
    threshold = int(perfdata.split(";")[2].rstrip(":"))
    assert (threshold > 7) == (result.status is Status.CRITICAL)


def test_a_pool_of_no_accounts_has_perfdata_without_thresholds(sqlite_engine, site):
    # It never alerts, so no threshold may put its value in alert range.
    fill(sqlite_engine, site, 0, 0)
    result = check(sqlite_engine, "pools")
    assert result.status is Status.OK
    assert result.perfdata == ("'atlas'=0;;;0;0",)


def test_the_summary_ends_with_every_perfdata_item_whole():
    results = (
        CheckResult("a", Status.WARNING, "x|y " * 400, ("'p1'=1;2:;1:;0;5",)),
        CheckResult("b", Status.OK, "fine", ("'p2'=5;2:;1:;0;5",)),
    )
    line = HealthReport(results).summary()
    text, perfdata = line.split(" | ")
    assert text.startswith("POOLMGR WARNING - x/y x/y") and text.endswith("...")
    assert perfdata == "'p1'=1;2:;1:;0;5 'p2'=5;2:;1:;0;5"


# --- invariants --------------------------------------------------------------


def test_sound_leases_pass_the_invariant_check(engine, site):
    fill(engine, site, 3, 2)
    result = check(engine, "invariants")
    assert (result.status, result.message, result.perfdata) == (
        Status.OK,
        "lease invariants hold, no early handover in the last 7 days",
        ("'invariant_violations'=0;;0;0",),
    )


@pytest.mark.parametrize(
    ("state", "number", "message"),
    [
        ("free", 1, "account atlas001 is free but has an open lease"),
        ("leased", 3, "account atlas003 is leased but has no open lease"),
    ],
    ids=["leased-account-marked-free", "free-account-marked-leased"],
)
def test_an_account_state_that_contradicts_its_leases_is_critical(
    engine, site, state, number, message
):
    fill(engine, site, 3, 1)
    with unit_of_work(engine) as session:
        session.execute(
            update(Account).where(Account.number == number).values(state=state)
        )
    result = check(engine, "invariants")
    assert (result.status, result.message) == (
        Status.CRITICAL,
        f"1 invariant violation(s): {message}",
    )
    assert result.perfdata == ("'invariant_violations'=1;;0;0",)


@pytest.mark.parametrize(
    ("handover", "status"),
    [("2026-08-25T00:00:00Z", Status.CRITICAL), ("2026-08-24T23:59:59Z", Status.OK)],
    ids=["inside-the-window", "before-the-window"],
)
def test_an_early_handover_of_the_last_seven_days_is_critical(
    sqlite_engine, site, handover, status
):
    sync(sqlite_engine, site, [pool("atlas", "atlas", 1, "/atlas")])
    kim, lee = "/DC=org/DC=example/CN=Kim", "/DC=org/DC=example/CN=Lee"
    map_dn(sqlite_engine, site, kim, "/atlas", now=at("2026-08-01T00:00:00Z"))
    with unit_of_work(sqlite_engine) as session:
        lease = session.scalars(select(Lease)).one()
        end_lease(session, lease, reason="released", actor="test", now=at(handover))
        # A hand edit that forgets the last use: nothing poolmgr would do.
        session.execute(update(Account).values(last_used_at=None))
    map_dn(sqlite_engine, site, lee, "/atlas", now=at(handover))

    result = check(sqlite_engine, "invariants")
    assert result.status is status
    if status is Status.CRITICAL:
        assert result.message == (
            f"1 invariant violation(s): atlas001 went to {lee} at {handover}, "
            "inside the quiet period of lease 1"
        )
