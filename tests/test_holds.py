"""Incident holds: out of circulation, out of recycling, on record."""

import pytest
from sqlalchemy import select

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
from tests.factories import at, map_dn, pool, sync

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
