"""Traceability: who held an account, a person's leases, uses, the history check."""

from datetime import UTC, timedelta

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import func, select

from poolmgr.db import unit_of_work
from poolmgr.dn import parse_dn
from poolmgr.errors import BadInputError, NoLeaseError, NotFoundError
from poolmgr.history import (
    parse_zone,
    person_history,
    show_time,
    touch_account,
    verify_history,
    who_held,
)
from poolmgr.identities import get_or_create_identity
from poolmgr.models import Account, Event, Lease, Pool
from poolmgr.recycle import Recycler
from poolmgr.timeutil import Duration, parse_time
from poolmgr.views import list_leases
from tests.factories import at, map_dn, open_leases, pool, sync

JANE = "/DC=org/DC=example/O=Example Grid/CN=Jane Roe"
JANE_RFC2253 = "CN=Jane Roe,O=Example Grid,DC=example,DC=org"
KIM = "/DC=org/DC=example/CN=Kim Sample"
QUIET = Duration.parse("183 days")


def held_then_recycled(engine, settings) -> None:
    """Jane holds atlas001 from 1 Jan 2025; an override ends it on 1 Mar 12:00."""
    sync(engine, settings, [pool("atlas", "atlas", 1, "/atlas")])
    map_dn(engine, settings, JANE, "/atlas", now=at("2025-01-01T08:00:00Z"))
    Recycler(engine, settings, actor="admin1").force(
        "atlas001", "disk full", now=at("2025-03-01T12:00:00Z")
    )


@pytest.mark.parametrize(
    ("moment", "holder"),
    [
        ("2025-01-01T07:59:59Z", None),
        ("2025-01-01T08:00:00Z", JANE),
        ("2025-03-01T11:59:59Z", JANE),
        ("2025-03-01T12:00:00Z", None),
        ("2025-03-01T13:00:00+01:00", None),
        ("2025-03-01T12:59:59+01:00", JANE),
    ],
    ids=["before", "at-start", "before-end", "at-end", "end-in-cet", "before-in-cet"],
)
def test_who_held_covers_start_up_to_but_not_including_end(
    sqlite_engine, site, moment, holder
):
    held_then_recycled(sqlite_engine, site)
    with unit_of_work(sqlite_engine, write=False) as session:
        answer = who_held(session, "atlas001", parse_time(moment))
    assert (answer.lease.dn if answer.lease else None) == holder


def test_who_held_names_the_override_that_ended_the_lease(sqlite_engine, site):
    held_then_recycled(sqlite_engine, site)
    with unit_of_work(sqlite_engine, write=False) as session:
        lease = who_held(session, "atlas001", at("2025-02-01T00:00:00Z")).lease
    assert (lease.end_reason, lease.ended_by, lease.end_note) == (
        "override",
        "admin1",
        "disk full",
    )


def test_who_held_an_unknown_account_is_an_error(sqlite_engine, site):
    sync(sqlite_engine, site, [pool("atlas", "atlas", 1, "/atlas")])
    with unit_of_work(sqlite_engine, write=False) as session:
        assert who_held(session, "atlas001", at("2025-01-01T00:00Z")).lease is None
        with pytest.raises(NotFoundError, match="'atlas404'"):
            who_held(session, "atlas404", at("2025-01-01T00:00Z"))


def test_history_lists_every_lease_across_pools_for_any_dn_form(sqlite_engine, site):
    sync(
        sqlite_engine,
        site,
        [
            pool("atlasprd", "atlas", 1, "/atlas/Role=production"),
            pool("atlas", "atlas", 2, "/atlas"),
        ],
    )
    map_dn(sqlite_engine, site, JANE, "/atlas", now=at("2025-01-01T00:00:00Z"))
    map_dn(
        sqlite_engine,
        site,
        JANE_RFC2253,
        "/atlas/Role=production",
        now=at("2025-01-02T00:00:00Z"),
    )
    map_dn(sqlite_engine, site, KIM, "/atlas", now=at("2025-01-03T00:00:00Z"))

    with unit_of_work(sqlite_engine, write=False) as session:
        found = person_history(session, JANE_RFC2253)
    assert found.dn == JANE
    assert [(row.account, row.pool) for row in found.leases] == [
        ("atlas001", "atlas"),
        ("atlasprd001", "atlasprd"),
    ]


def test_history_and_leases_find_a_person_mapped_with_a_numeric_last_cn(
    sqlite_engine, site
):
    # The service maps a DN as its own issuer, so a trailing numeric CN is
    # part of the name; the admin views must look such a DN up the same way.
    sync(sqlite_engine, site, [pool("atlas", "atlas", 2, "/atlas")])
    robot = JANE + "/CN=424242"
    map_dn(sqlite_engine, site, robot, "/atlas", issuer=robot)
    with unit_of_work(sqlite_engine, write=False) as session:
        found = person_history(session, robot)
        listed = list_leases(session, dn=robot)
        others = list_leases(session, dn=JANE)
    assert [row.account for row in found.leases] == ["atlas001"]
    assert [row.account for row in listed] == ["atlas001"]
    assert others == [], "the DN without the numeric CN is another person"


@pytest.mark.parametrize(
    ("dn", "error"),
    [(KIM, NotFoundError), ("not a dn", BadInputError)],
    ids=["unknown-person", "malformed"],
)
def test_history_of_nobody_known_is_an_error(sqlite_engine, dn, error):
    with unit_of_work(sqlite_engine, write=False) as session, pytest.raises(error):
        person_history(session, dn)


def test_touch_moves_last_use_forward_only_and_records_no_event(sqlite_engine, site):
    sync(sqlite_engine, site, [pool("atlas", "atlas", 2, "/atlas")])
    map_dn(sqlite_engine, site, JANE, "/atlas", now=at("2025-01-10T00:00:00Z"))
    with unit_of_work(sqlite_engine) as session:
        events_before = session.scalar(select(func.count()).select_from(Event))

    with unit_of_work(sqlite_engine) as session:
        later = touch_account(session, "atlas001", at("2025-02-01T00:00:00Z"))
    with unit_of_work(sqlite_engine) as session:
        earlier = touch_account(session, "atlas001", at("2025-01-20T00:00:00Z"))

    assert (later.changed, later.dn) == (True, JANE)
    assert (earlier.changed, earlier.last_used_at) == (False, at("2025-02-01T00:00Z"))
    assert open_leases(sqlite_engine)[0].last_used_at == at("2025-02-01T00:00:00Z")
    with unit_of_work(sqlite_engine) as session:
        assert session.scalar(select(func.count()).select_from(Event)) == events_before


@pytest.mark.parametrize(
    ("account", "error"),
    [("atlas002", NoLeaseError), ("atlas404", NotFoundError)],
    ids=["no-open-lease", "unknown-account"],
)
def test_touch_refuses_accounts_without_an_open_lease(
    sqlite_engine, site, account, error
):
    sync(sqlite_engine, site, [pool("atlas", "atlas", 2, "/atlas")])
    map_dn(sqlite_engine, site, JANE, "/atlas")
    with unit_of_work(sqlite_engine) as session, pytest.raises(error, match=account):
        touch_account(session, account, at("2025-02-01T00:00:00Z"))


def test_times_show_in_utc_unless_a_zone_is_asked_for():
    moment = at("2025-03-01T12:00:00Z")
    assert show_time(moment) == "2025-03-01T12:00:00Z"
    assert show_time(moment, parse_zone("Europe/Zurich")) == "2025-03-01T13:00:00+01:00"
    assert parse_zone(None) is UTC
    with pytest.raises(BadInputError, match="'Mars/Olympus'"):
        parse_zone("Mars/Olympus")


@pytest.mark.parametrize(
    "name",
    ["Z" * 5000, "../../../etc/passwd", "Europe", "Europe/", "/etc/localtime", "a\0b"],
    ids=["too-long", "traversal", "directory", "trailing-slash", "absolute", "nul"],
)
def test_zone_names_that_are_no_zone_are_bad_input(name):
    with pytest.raises(BadInputError, match="is not known; give an IANA name"):
        parse_zone(name)


# --- the history check -----------------------------------------------------------


def plant(engine, *leases: tuple) -> None:
    """Insert ended leases on atlas001: (dn, start, last use, end, reason)."""
    with unit_of_work(engine) as session:
        account = session.scalar(select(Account).where(Account.name == "atlas001"))
        pool_id = session.scalar(select(Pool.id).where(Pool.name == "atlas"))
        for dn, start, last, end, reason in leases:
            identity = get_or_create_identity(session, parse_dn(dn))
            session.add(
                Lease(
                    account_id=account.id,
                    identity_id=identity.id,
                    pool_id=pool_id,
                    started_at=at(start),
                    last_used_at=at(last),
                    ended_at=at(end) if end else None,
                    end_reason=reason,
                    open_account_id=None if end else account.id,
                    open_marker=None if end else 1,
                )
            )
            session.flush()


JAN, FEB, MAR = "2025-01-01T00:00Z", "2025-02-01T00:00Z", "2025-03-01T00:00Z"
CASES = [
    pytest.param(
        [
            (JANE, JAN, "2025-01-15T00:00Z", FEB, "released"),
            (KIM, MAR, MAR, None, None),
        ],
        ["inside the quiet period"],
        id="handover-inside-quiet",
    ),
    pytest.param(
        [
            (JANE, JAN, "2025-01-15T00:00Z", FEB, "override"),
            (KIM, MAR, MAR, None, None),
        ],
        [],
        id="override-allows",
    ),
    pytest.param(
        [
            (JANE, JAN, "2025-01-15T00:00Z", FEB, "released"),
            (JANE, MAR, MAR, None, None),
        ],
        [],
        id="same-person-returns",
    ),
    pytest.param(
        [
            (JANE, "2024-01-01T00:00Z", "2024-01-02T00:00Z", "2024-08-01T00:00Z", "x"),
            (KIM, "2024-07-03T00:00Z", "2024-07-03T00:00Z", None, None),
        ],
        ["overlapping leases"],
        id="overlap",
    ),
    pytest.param(
        [
            (JANE, "2024-01-01T00:00Z", "2024-01-02T00:00Z", "2024-08-01T00:00Z", "q"),
            (KIM, "2024-08-01T00:00Z", "2024-08-01T00:00Z", None, None),
        ],
        [],
        id="after-quiet",
    ),
    pytest.param(
        [
            (JANE, "2024-01-01T00:00Z", "2024-01-02T00:00Z", "2024-02-01T00:00Z", "o"),
            (JANE, "2024-02-02T00:00Z", "2024-05-01T00:00Z", "2024-09-01T00:00Z", "q"),
            (KIM, "2024-09-01T00:00Z", "2024-09-01T00:00Z", None, None),
        ],
        ["inside the quiet period"],
        id="quiet-counts-from-latest-use",
    ),
]


@pytest.mark.parametrize(("leases", "problems"), CASES)
def test_history_check_finds_handovers_inside_the_quiet_period(
    sqlite_engine, site, leases, problems
):
    sync(sqlite_engine, site, [pool("atlas", "atlas", 1, "/atlas")])
    plant(sqlite_engine, *leases)
    with unit_of_work(sqlite_engine, write=False) as session:
        check = verify_history(session, QUIET)
    assert check.leases_checked == len(leases)
    assert [v.problem for v in check.violations] == problems


def test_history_check_streams_on_every_backend(engine, site):
    sync(engine, site, [pool("atlas", "atlas", 1, "/atlas")])
    plant(
        engine,
        (KIM, "2023-01-01T00:00Z", "2023-03-01T00:00Z", "2023-04-01T00:00Z", "q"),
    )
    # The planted lease bypassed the engine, so the account looks never used.
    map_dn(engine, site, JANE, "/atlas", now=at("2023-05-01T00:00:00Z"))

    with unit_of_work(engine, write=False) as session:
        check = verify_history(session, QUIET)
    [violation] = check.violations
    assert (violation.account, violation.dn, violation.previous_dn) == (
        "atlas001",
        JANE,
        KIM,
    )
    assert violation.started_at == at("2023-05-01T00:00:00Z")
    assert violation.quiet_until == at("2023-03-01T00:00:00Z") + timedelta(days=183)
    assert check.leases_checked == 2


def test_touch_racing_an_override_that_ends_the_lease_says_there_is_none(
    engine, site, request
):
    """touch has read Jane's open lease of atlas001 when an override ends
    it and commits. The touch must refuse as for an account without an
    open lease, not try to change the ended lease (which the database
    refuses) and fail as an internal error."""
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite writers take the database lock in turn")
    sync(engine, site, [pool("atlas", "atlas", 1, "/atlas")])
    map_dn(engine, site, JANE, "/atlas", now=at("2025-01-01T08:00:00Z"))
    overridden = []

    def override_first(conn, cursor, statement, parameters, context, many):
        if statement.startswith("UPDATE leases") and not overridden:
            overridden.append(True)
            Recycler(engine, site, actor="admin1").force(
                "atlas001", "disk full", now=at("2025-01-02T12:00:00Z")
            )

    sa_event.listen(engine, "before_cursor_execute", override_first)
    request.addfinalizer(
        lambda: sa_event.remove(engine, "before_cursor_execute", override_first)
    )
    with unit_of_work(engine) as session, pytest.raises(NoLeaseError, match="atlas"):
        touch_account(session, "atlas001", at("2025-01-03T00:00:00Z"))
    with unit_of_work(engine, write=False) as session:
        lease = session.scalars(select(Lease)).one()
    assert lease.last_used_at == at("2025-01-01T08:00:00Z")
