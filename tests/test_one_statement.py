"""PostgreSQL's short mapping path: the read, then at most one statement.

A new lease of a never-used account and a recorded last use are each one
statement on PostgreSQL, committed on their own. What they write must be
what the general path writes, and when they cannot decide they must leave
nothing behind for the general path to trip over.
"""

import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, event, literal, select, text

from poolmgr import nss
from poolmgr.candidates import quiet_end
from poolmgr.db import UTCDateTime, unit_of_work
from poolmgr.errors import PoolExhaustedError
from poolmgr.leases import Mapper, MapRequest
from poolmgr.models import Account, Event, Identity, Lease
from poolmgr.timeutil import Duration, utcnow
from tests.conftest import make_settings
from tests.factories import (
    all_leases,
    at,
    count_rows,
    end_open_lease,
    general_path_only,
    invariant_violations,
    map_dn,
    pool,
    sync,
)

KIM = "/DC=org/DC=example/CN=Kim Sample"
JANE = "/DC=org/DC=example/CN=Jane Roe"
LEE = "/DC=org/DC=example/CN=Lee Test"


def _statements(engine, work) -> list[str]:
    """Run work; return the first word of every statement it sent."""
    sent: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        sent.append(statement.split(None, 1)[0].upper())

    event.listen(engine, "before_cursor_execute", record)
    try:
        work()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return sent


@pytest.mark.parametrize(
    ("who", "nss_on", "want"),
    [
        ("new", False, ["SELECT", "WITH"]),
        ("known", False, ["SELECT", "WITH"]),
        ("new, rested account", False, ["SELECT", "WITH"]),
        ("known, rested account", False, ["SELECT", "WITH"]),
        ("returning", False, ["SELECT", "UPDATE"]),
        ("new", True, ["SELECT", "BEGIN", "WITH", "COMMIT"]),
        ("returning", True, ["SELECT", "UPDATE"]),
    ],
)
def test_a_mapping_that_writes_is_the_read_and_one_statement(
    pg, monkeypatch, who, nss_on, want
):
    site = make_settings(check_nss=nss_on)
    size = 1 if "rested" in who else 4
    sync(pg, site, [pool("tst", "tst", size, "/tst"), pool("oth", "oth", 2, "/oth")])
    if nss_on:
        monkeypatch.setattr(nss, "account_problem", lambda name, uid: None)
    if "rested" in who:
        map_dn(pg, site, JANE, "/tst", now=utcnow() - timedelta(days=400))
        end_open_lease(pg, "tst001", utcnow() - timedelta(days=399))
    if who.startswith("known"):
        map_dn(pg, site, KIM, "/oth")
    if who == "returning":
        map_dn(pg, site, KIM, "/tst", now=utcnow() - timedelta(hours=1))
    mapper = Mapper(pg, site, router_ttl=600)
    # Routing table and ban list are read once and cached, as in the service.
    mapper.map(MapRequest(dn=LEE, fqans=("/oth",)))
    sent = _statements(pg, lambda: mapper.map(MapRequest(dn=KIM, fqans=("/tst",))))
    assert sent == want, f"expected the statements {want}, the mapping sent {sent}"
    assert invariant_violations(pg) == []


def test_the_one_statement_lease_writes_what_the_general_path_writes(
    pg, site, monkeypatch, caplog
):
    sync(pg, site, [pool("tst", "tst", 4, "/tst")])
    now = at("2025-05-05T05:05:05Z")
    caplog.set_level(logging.INFO, logger="poolmgr.audit")
    short = Mapper(pg, site).map(MapRequest(dn=KIM, fqans=("/tst",)), now)
    general = general_path_only(monkeypatch, Mapper(pg, site))
    long = general.map(MapRequest(dn=JANE, fqans=("/tst",)), now)
    assert (short.account, long.account) == ("tst001", "tst002")

    def seen(mapping):
        with unit_of_work(pg, write=False) as session:
            lease = session.get(Lease, mapping.lease_id)
            identity = session.get(Identity, lease.identity_id)
            (row,) = session.scalars(
                select(Event).where(Event.lease_id == mapping.lease_id)
            ).all()
            account = session.get(Account, lease.account_id)
            return {
                "lease": (
                    lease.pool_id,
                    lease.fqan,
                    lease.started_at,
                    lease.last_used_at,
                    lease.open_marker,
                    lease.open_account_id == lease.account_id,
                ),
                "identity": (
                    identity.kind,
                    identity.display_lossy,
                    identity.created_at,
                ),
                "event": (
                    row.at,
                    row.kind,
                    row.pool,
                    row.account == account.name,
                    row.dn == identity.display,
                    row.identity_id == identity.id,
                    row.details,
                    row.actor,
                    row.reason,
                ),
                "account": (account.state, account.last_used_at),
            }

    assert seen(short) == seen(long)
    lines = [r.getMessage() for r in caplog.records]
    started = [line for line in lines if line.startswith("event=lease_started")]
    assert len(started) == 2, f"expected one lease_started line per lease: {lines}"

    def general_form(line: str, mapping) -> str:
        return (
            line.replace(mapping.dn, "DN")
            .replace(mapping.account, "ACCOUNT")
            .replace(f"lease_id={mapping.lease_id}", "lease_id=N")
        )

    assert general_form(started[0], short) == general_form(started[1], long), (
        f"the two paths logged differently: {started}"
    )
    assert invariant_violations(pg) == []


def test_a_pool_with_no_never_used_account_gets_no_identity_from_the_statement(
    engine, site, caplog
):
    """Only a rested account is left: the general path leases it, and the
    new person's identity is written once, with that lease. On PostgreSQL
    the one statement sees there is no never-used account and writes
    nothing, rather than failing (which the server would log as an error)."""
    sync(engine, site, [pool("tst", "tst", 1, "/tst")])
    map_dn(engine, site, JANE, "/tst", now=at("2024-01-01T00:00:00Z"))
    end_open_lease(engine, "tst001", at("2024-01-02T00:00:00Z"))
    now = at("2024-12-01T00:00:00Z")
    caplog.set_level(logging.DEBUG, logger="poolmgr.leases")
    assert map_dn(engine, site, KIM, "/tst", now=now).account == "tst001"
    assert count_rows(engine, Identity) == 2
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refused == [], f"the statement failed instead of writing nothing: {refused}"
    assert invariant_violations(engine) == []


def test_an_exhausted_pool_leaves_no_identity_for_a_new_person(engine, site):
    sync(engine, site, [pool("tst", "tst", 1, "/tst")])
    map_dn(engine, site, JANE, "/tst")
    with pytest.raises(PoolExhaustedError):
        map_dn(engine, site, KIM, "/tst")
    assert count_rows(engine, Identity) == 1, "the refused new person left an identity"
    assert len(all_leases(engine)) == 1


def test_an_account_nss_rejects_is_rolled_back_and_the_next_one_leased(pg, monkeypatch):
    site = make_settings(check_nss=True)
    sync(pg, site, [pool("tst", "tst", 3, "/tst")])
    monkeypatch.setattr(
        nss,
        "account_problem",
        lambda name, uid: nss.Problem(name, "gone") if name == "tst001" else None,
    )
    assert map_dn(pg, site, KIM, "/tst").account == "tst002"
    assert count_rows(pg, Identity) == 1
    assert count_rows(pg, Event, Event.kind == "lease_started") == 1
    assert (
        count_rows(pg, Account, Account.name == "tst001", Account.state == "free") == 1
    )
    assert invariant_violations(pg) == []


# The quiet period, checked in SQL by the one statement, to the microsecond.


@pytest.mark.parametrize(
    ("last_use", "quiet_over_at"),
    [
        ("2024-03-10T08:00:00Z", "2024-09-10T08:00:00Z"),
        # the month is shorter: the last day of February, same time of day
        ("2024-08-31T12:00:00Z", "2025-02-28T12:00:00Z"),
        ("2023-08-29T23:59:59.999999Z", "2024-02-29T23:59:59.999999Z"),
    ],
)
def test_a_rested_account_is_taken_exactly_when_its_quiet_period_ends(
    engine, site, monkeypatch, last_use, quiet_over_at
):
    """On every backend; on PostgreSQL by the one statement alone."""
    sync(engine, site, [pool("tst", "tst", 1, "/tst")])
    map_dn(engine, site, JANE, "/tst", now=at(last_use))
    end_open_lease(engine, "tst001", at(last_use) + timedelta(seconds=1))
    with pytest.raises(PoolExhaustedError):
        map_dn(
            engine, site, KIM, "/tst", now=at(quiet_over_at) - timedelta(microseconds=1)
        )
    assert count_rows(engine, Identity) == 1
    if engine.dialect.name == "postgresql":

        def general_path(*args):
            raise AssertionError("the one statement left the lease to the general path")

        monkeypatch.setattr(Mapper, "_map_writing", general_path)
    mapping = map_dn(engine, site, KIM, "/tst", now=at(quiet_over_at))
    assert mapping.account == "tst001" and mapping.new
    assert invariant_violations(engine) == []


_PARTS = st.fixed_dictionaries(
    {
        unit: st.integers(0, top)
        for unit, top in [
            ("year", 3),
            ("month", 30),
            ("week", 6),
            ("day", 70),
            ("hour", 60),
            ("minute", 200),
            ("second", 5000),
        ]
    }
)
_STARTS = st.datetimes(
    min_value=datetime(1990, 1, 1),
    max_value=datetime(2090, 12, 31),
    timezones=st.just(UTC),
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@example(parts={"month": 1}, start=datetime(2025, 1, 31, 23, tzinfo=UTC))
@example(parts={"year": 1}, start=datetime(2024, 2, 29, 6, tzinfo=UTC))
@example(parts={"month": 1, "day": 1}, start=datetime(2025, 1, 30, tzinfo=UTC))
@given(parts=_PARTS, start=_STARTS)
def test_sql_quiet_end_is_the_calendar_arithmetic_of_the_python_check(pg, parts, start):
    text = " ".join(f"{n} {unit}" for unit, n in parts.items() if n) or "1 second"
    quiet = Duration.parse(text)
    with pg.connect() as conn:
        got = conn.execute(
            select(quiet_end(quiet, literal(start, UTCDateTime())))
        ).scalar()
    assert got.replace(tzinfo=UTC) == quiet.after(start), (
        f"{start.isoformat()} + {text!r}: PostgreSQL {got}, Python {quiet.after(start)}"
    )


def test_a_lock_timeout_recording_last_use_is_retried_not_raised(pg, site):
    """With a server lock_timeout, recording Jane's use waits for a lease
    row another transaction has locked and times out; the mapping retries
    and succeeds once the lock is gone, as every other clash is retried."""
    sync(pg, site, [pool("tst", "tst", 2, "/tst")])
    map_dn(pg, site, JANE, "/tst", now=utcnow() - timedelta(hours=1))
    impatient = create_engine(pg.url, connect_args={"options": "-c lock_timeout=50"})
    holder = create_engine(pg.url)
    try:
        with holder.connect() as conn, conn.begin():
            conn.execute(text("SELECT id FROM leases FOR UPDATE"))
            timer = threading.Timer(0.3, conn.rollback)
            timer.start()
            mapping = Mapper(impatient, site).map(MapRequest(dn=JANE, fqans=("/tst",)))
            timer.join()
    finally:
        impatient.dispose()
        holder.dispose()
    assert mapping.account == "tst001"
    assert invariant_violations(pg) == []
