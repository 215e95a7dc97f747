"""Incident holds: out of circulation, out of recycling, on record."""

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from poolmgr import recycle
from poolmgr.bans import add_ban, dn_entry
from poolmgr.db import unit_of_work
from poolmgr.errors import (
    BadInputError,
    NotFoundError,
    PolicyError,
    PoolExhaustedError,
)
from poolmgr.holds import hold_account, list_holds, recycle_blocks, release_account
from poolmgr.models import Account, Event
from poolmgr.recycle import Recycler
from poolmgr.site_commands import CommandResult
from tests.conftest import make_settings
from tests.factories import at, invariant_violations, map_dn, open_leases, pool, sync

JANE = "/DC=org/DC=example/CN=Jane Roe"
KIM = "/DC=org/DC=example/CN=Kim Sample"
LEE = "/DC=org/DC=example/CN=Lee Test"
NOW = at("2025-06-01T12:00:00Z")


def hold(engine, account: str, reason: str = "incident 7"):
    with unit_of_work(engine) as session:
        held, new = hold_account(session, account, reason=reason, actor="sec", now=NOW)
        return held.id, new


def release(engine, account: str):
    with unit_of_work(engine) as session:
        return release_account(
            session, account, reason="closed", actor="sec", now=NOW
        ).id


def account_ids(engine) -> dict[str, int]:
    with unit_of_work(engine, write=False) as session:
        return dict(session.execute(select(Account.name, Account.id)).all())


def test_a_held_free_account_is_never_handed_out(engine, site):
    sync(engine, site, [pool("atlas", "atlas", 2, "/atlas")])
    hold(engine, "atlas001")
    assert map_dn(engine, site, JANE, "/atlas").account == "atlas002"
    with pytest.raises(PoolExhaustedError):
        map_dn(engine, site, KIM, "/atlas")

    release(engine, "atlas001")
    assert map_dn(engine, site, KIM, "/atlas").account == "atlas001"


def test_the_holder_of_a_held_account_keeps_being_mapped_to_it(sqlite_engine, site):
    sync(sqlite_engine, site, [pool("atlas", "atlas", 2, "/atlas")])
    map_dn(sqlite_engine, site, JANE, "/atlas")
    hold(sqlite_engine, "atlas001")
    assert map_dn(sqlite_engine, site, JANE, "/atlas").account == "atlas001"


def test_holding_twice_keeps_the_first_hold(sqlite_engine, site):
    sync(sqlite_engine, site, [pool("atlas", "atlas", 2, "/atlas")])
    first, new = hold(sqlite_engine, "atlas001", "first")
    assert hold(sqlite_engine, "atlas001", "second") == (first, False)
    with unit_of_work(sqlite_engine, write=False) as session:
        assert [row.reason for row in list_holds(session)] == ["first"]


def test_holding_again_mends_a_held_flag_gone_astray(engine, site):
    """The held flag of a held account was cleared behind poolmgr's back:
    check reports it, and holding the account again sets it, so no mapping
    hands the account out."""
    sync(engine, site, [pool("atlas", "atlas", 2, "/atlas")])
    first, _ = hold(engine, "atlas001")
    with unit_of_work(engine) as session:
        session.execute(update(Account).values(held=False))
    assert invariant_violations(engine) == [
        "account atlas001 is under a hold but not marked held "
        "(poolmgr hold sets the flag again)"
    ]

    assert hold(engine, "atlas001") == (first, False)
    assert invariant_violations(engine) == []
    assert map_dn(engine, site, JANE, "/atlas").account == "atlas002"


def test_releasing_clears_a_held_flag_without_a_hold_and_records_it(engine, site):
    """atlas001 was flagged held by a hand edit, with no hold behind it: no
    mapping gets it, check reports it, and release with a reason clears the
    flag, leaves an event, and puts the account back into circulation."""
    sync(engine, site, [pool("atlas", "atlas", 1, "/atlas")])
    with unit_of_work(engine) as session:
        session.execute(update(Account).values(held=True))
    assert invariant_violations(engine) == [
        "account atlas001 is marked held but has no standing hold "
        "(poolmgr release clears the flag)"
    ]
    with pytest.raises(PoolExhaustedError):
        map_dn(engine, site, JANE, "/atlas")

    with unit_of_work(engine) as session:
        assert (
            release_account(
                session, "atlas001", reason="db repair", actor="sec", now=NOW
            )
            is None
        )
    assert invariant_violations(engine) == []
    with unit_of_work(engine, write=False) as session:
        cleared = session.scalars(
            select(Event).where(Event.kind == "hold_flag_cleared")
        ).all()
        assert [(e.account, e.actor, e.reason) for e in cleared] == [
            ("atlas001", "sec", "db repair")
        ]
    assert map_dn(engine, site, JANE, "/atlas").account == "atlas001"
    with pytest.raises(NotFoundError, match="not under a hold"):
        release(engine, "atlas001")


@pytest.mark.parametrize(
    ("action", "error", "message"),
    [
        (lambda e: hold(e, "nobody01"), NotFoundError, "No pool account"),
        (lambda e: release(e, "atlas001"), NotFoundError, "not under a hold"),
        (lambda e: hold(e, "atlas001", reason=""), BadInputError, "reason"),
    ],
    ids=["unknown account", "release unheld", "no reason"],
)
def test_hold_and_release_refuse_what_makes_no_sense(
    sqlite_engine, site, action, error, message
):
    sync(sqlite_engine, site, [pool("atlas", "atlas", 2, "/atlas")])
    with pytest.raises(error, match=message):
        action(sqlite_engine)


def test_holds_and_releases_are_events_with_the_holder(sqlite_engine, site):
    sync(sqlite_engine, site, [pool("atlas", "atlas", 2, "/atlas")])
    map_dn(sqlite_engine, site, JANE, "/atlas")
    hold(sqlite_engine, "atlas001")
    release(sqlite_engine, "atlas001")
    with unit_of_work(sqlite_engine, write=False) as session:
        rows = session.execute(
            select(Event.kind, Event.account, Event.dn, Event.actor, Event.reason)
            .where(Event.kind.like("hold_%"))
            .order_by(Event.id)
        ).all()
        listed = list_holds(session, include_released=True)
    assert rows == [
        ("hold_started", "atlas001", JANE, "sec", "incident 7"),
        ("hold_released", "atlas001", JANE, "sec", "closed"),
    ]
    assert [(h.account, h.holder, h.release_reason) for h in listed] == [
        ("atlas001", JANE, "closed")
    ]


def test_recycle_blocks_name_frozen_and_held_accounts(sqlite_engine, site):
    sync(sqlite_engine, site, [pool("atlas", "atlas", 3, "/atlas")])
    for person in (JANE, KIM, LEE):
        map_dn(sqlite_engine, site, person, "/atlas")
    with unit_of_work(sqlite_engine) as session:
        add_ban(session, dn_entry(JANE), reason="incident", actor="sec", now=NOW)
    hold(sqlite_engine, "atlas001")
    hold(sqlite_engine, "atlas002")
    ids = account_ids(sqlite_engine)

    with unit_of_work(sqlite_engine, write=False) as session:
        blocks = recycle_blocks(session)
        only = recycle_blocks(session, [ids["atlas002"], ids["atlas003"]])

    assert set(blocks) == {ids["atlas001"], ids["atlas002"]}
    assert blocks[ids["atlas001"]].startswith("frozen: its holder is refused by")
    assert (
        "; held since 2025-06-01T12:00:00Z by sec: incident 7"
        in (blocks[ids["atlas001"]])
    )
    assert list(only) == [ids["atlas002"]]


@pytest.mark.parametrize(
    ("banned", "held", "step"),
    [
        (True, False, "; lift the ban first."),
        (False, True, "; release the hold first."),
        (True, True, "; lift the ban and release the hold first."),
    ],
    ids=["ban-only", "hold-only", "both"],
)
def test_a_refused_override_names_what_blocks_it(
    sqlite_engine, site, banned, held, step
):
    sync(sqlite_engine, site, [pool("atlas", "atlas", 3, "/atlas")])
    map_dn(sqlite_engine, site, JANE, "/atlas")
    if banned:
        with unit_of_work(sqlite_engine) as session:
            add_ban(session, dn_entry(JANE), reason="incident", actor="sec", now=NOW)
    if held:
        hold(sqlite_engine, "atlas001")

    with pytest.raises(PolicyError) as refused:
        Recycler(sqlite_engine, site, actor="sec").force("atlas001", "disk full")
    assert str(refused.value).endswith(step), str(refused.value)


def recycle_while_the_lease_is_locked(engine, site, monkeypatch, action):
    """Run a recycle of Jane's lease of atlas001 on a server; once the run has
    locked the lease and checked it is not held or frozen, run action in
    another thread. Assert that action waits for the run; return the run's
    outcomes and what action returned."""
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite writers take the database lock in turn")
    sync(engine, site, [pool("atlas", "atlas", 1, "/atlas")])
    map_dn(engine, site, JANE, "/atlas", now=NOW - timedelta(days=400))
    checked, go_on = threading.Event(), threading.Event()
    original = recycle.recycle_blocks

    def pause_after_the_check(session, account_ids=None):
        blocks = original(session, account_ids)
        if account_ids is not None and not checked.is_set():
            checked.set()
            go_on.wait(10)
        return blocks

    monkeypatch.setattr(recycle, "recycle_blocks", pause_after_the_check)
    recycler = Recycler(engine, site, actor="cron")
    with ThreadPoolExecutor(2) as executor:
        recycling = executor.submit(lambda: list(recycler.run(NOW)))
        assert checked.wait(10), "recycling never reached the lease"
        acting = executor.submit(action)
        try:
            with pytest.raises(TimeoutError):
                acting.result(0.5)
        finally:
            go_on.set()
        return recycling.result(20), acting.result(20)


def test_a_hold_placed_while_recycling_ends_the_lease_waits_for_it(
    engine, site, monkeypatch
):
    """Recycling has locked Jane's lease of atlas001 and is about to end it
    when an officer holds atlas001. Both commit, one after the other: the
    lease ends, the hold stands, and neither fails as a deadlock."""
    outcomes, (_, placed) = recycle_while_the_lease_is_locked(
        engine, site, monkeypatch, lambda: hold(engine, "atlas001")
    )
    assert placed, "the hold was not placed"

    # The hold commits right after the lease ends; whether the cleanup step
    # reads it first decides the outcome, and the account's state must match.
    actions = [outcome.action for outcome in outcomes]
    assert actions in (["recycled"], ["blocked"]), f"unexpected outcomes {actions}"
    assert open_leases(engine) == []
    with unit_of_work(engine, write=False) as session:
        assert [row.account for row in list_holds(session)] == ["atlas001"]
        state = session.scalars(
            select(Account.state).where(Account.name == "atlas001")
        ).one()
    expected = "free" if actions == ["recycled"] else recycle.OUT_OF_SERVICE
    assert state == expected, f"{actions} left atlas001 {state}, not {expected}"
    assert invariant_violations(engine) == []


def test_an_account_held_while_recycling_runs_is_not_cleaned(sqlite_engine):
    """atlas001 and atlas002 wait for their cleanup. While the run cleans
    atlas001, an officer holds atlas002: its cleanup must not run, since its
    files may be evidence, and it stays out of service."""
    site = make_settings(recycle={"cleanup_command": ["/usr/local/sbin/clean"]})
    sync(sqlite_engine, site, [pool("atlas", "atlas", 2, "/atlas")])
    for dn in (JANE, KIM):
        map_dn(sqlite_engine, site, dn, "/atlas", now=NOW - timedelta(days=400))
    failing = Recycler(
        sqlite_engine, site, actor="cron", runner=lambda *_: CommandResult(1, "")
    )
    assert {o.action for o in failing.run(NOW)} == {"cleanup_failed"}
    cleaned = []

    def clean(argv, variables, timeout):
        cleaned.append(argv[-1])
        if argv[-1] == "atlas001":
            hold(sqlite_engine, "atlas002")
        return CommandResult(0, "")

    outcomes = list(Recycler(sqlite_engine, site, actor="cron", runner=clean).run(NOW))
    assert cleaned == ["atlas001"], f"expected only atlas001 cleaned, ran {cleaned}"
    assert [(o.action, o.target.account) for o in outcomes] == [
        ("recycled", "atlas001"),
        ("blocked", "atlas002"),
    ]
    with unit_of_work(sqlite_engine, write=False) as session:
        states = dict(session.execute(select(Account.name, Account.state)).all())
    assert states == {"atlas001": "free", "atlas002": "cleaning"}


def test_a_ban_placed_while_recycling_ends_the_lease_waits_for_it(
    engine, site, monkeypatch
):
    """Recycling has locked Jane's lease of atlas001 and checked that she is
    not banned when an officer bans her. The ban waits for the lease to end,
    so it freezes nothing and the history stays in order; it never commits
    unseen while the run ends and cleans a lease it froze."""

    def ban_jane():
        with unit_of_work(engine) as session:
            add_ban(session, dn_entry(JANE), reason="incident", actor="sec", now=NOW)

    outcomes, _ = recycle_while_the_lease_is_locked(engine, site, monkeypatch, ban_jane)

    assert [outcome.action for outcome in outcomes] == ["recycled"]
    with unit_of_work(engine, write=False) as session:
        added = session.scalars(select(Event).where(Event.kind == "ban_added")).one()
    assert "frozen_leases" not in (added.details or ""), (
        f"the ban committed before the lease ended, yet the run ended it: "
        f"{added.details}"
    )
    assert invariant_violations(engine) == []


def test_a_lease_requested_before_a_release_starts_after_it(engine, site):
    """Jane's request arrived at 12:00:30, while atlas001 was held; the hold
    was released at 12:01 and her mapping then got the account. Her lease
    starts at the release, not inside the hold, so the history never shows
    a held account leased."""
    sync(engine, site, [pool("atlas", "atlas", 1, "/atlas")])
    hold(engine, "atlas001")
    released_at = NOW + timedelta(minutes=1)
    with unit_of_work(engine) as session:
        release_account(
            session, "atlas001", reason="closed", actor="sec", now=released_at
        )
    mapping = map_dn(engine, site, JANE, "/atlas", now=NOW + timedelta(seconds=30))
    assert mapping.account == "atlas001"
    [lease] = open_leases(engine)
    assert at(lease.started_at.isoformat()) == released_at, (
        f"the lease starts at {lease.started_at}, inside the hold that ended "
        f"at {released_at}"
    )
