"""The database itself enforces the lease invariants, on every backend."""

import pytest
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import DBAPIError

from poolmgr.db import unit_of_work
from poolmgr.identities import key_hash
from poolmgr.models import Account, Event, Identity, Lease, Pool
from poolmgr.timeutil import utcnow
from tests.factories import map_dn, pool, sync

JANE = "/DC=org/DC=example/CN=Jane Roe"
KIM = "/DC=org/DC=example/CN=Kim Sample"


def _ids(engine):
    with unit_of_work(engine, write=False) as session:
        accounts = {a.name: a.id for a in session.scalars(select(Account))}
        pool_id = session.scalar(select(Pool.id))
    return accounts, pool_id


def _identity(engine, key: str) -> int:
    with unit_of_work(engine) as session:
        identity = Identity(
            kind="x509", key=key, key_hash=key_hash("x509", key), display=key
        )
        session.add(identity)
        session.flush()
        return identity.id


def _open_lease(account_id: int, identity_id: int, pool_id: int) -> Lease:
    now = utcnow()
    return Lease(
        account_id=account_id,
        identity_id=identity_id,
        pool_id=pool_id,
        started_at=now,
        last_used_at=now,
        open_account_id=account_id,
        open_marker=1,
    )


def test_two_open_leases_on_one_account_are_impossible(engine, site):
    sync(engine, site, [pool("atlas", "atlas", 2, "/atlas")])
    accounts, pool_id = _ids(engine)
    jane, kim = _identity(engine, "jane"), _identity(engine, "kim")
    with unit_of_work(engine) as session:
        session.add(_open_lease(accounts["atlas001"], jane, pool_id))
    with pytest.raises(DBAPIError), unit_of_work(engine) as session:
        session.add(_open_lease(accounts["atlas001"], kim, pool_id))


def test_two_open_leases_of_one_person_in_one_pool_are_impossible(engine, site):
    sync(engine, site, [pool("atlas", "atlas", 2, "/atlas")])
    accounts, pool_id = _ids(engine)
    jane = _identity(engine, "jane")
    with unit_of_work(engine) as session:
        session.add(_open_lease(accounts["atlas001"], jane, pool_id))
    with pytest.raises(DBAPIError), unit_of_work(engine) as session:
        session.add(_open_lease(accounts["atlas002"], jane, pool_id))


def test_identities_differing_only_after_a_long_shared_prefix_coexist(engine):
    prefix = "/DC=org/DC=example/OU=" + "x" * 3000 + "/CN="
    _identity(engine, prefix + "one")
    _identity(engine, prefix + "two")
    with unit_of_work(engine, write=False) as session:
        assert len(session.scalars(select(Identity)).all()) == 2


def test_a_lease_row_cannot_be_deleted(engine, site):
    sync(engine, site, [pool("atlas", "atlas", 1, "/atlas")])
    map_dn(engine, site, JANE, "/atlas")
    with pytest.raises(DBAPIError, match="never deleted"), unit_of_work(engine) as s:
        s.execute(delete(Lease))


def test_an_ended_lease_cannot_be_reopened_or_rewritten(engine, site):
    from poolmgr.leases import end_lease

    sync(engine, site, [pool("atlas", "atlas", 1, "/atlas")])
    map_dn(engine, site, JANE, "/atlas")
    with unit_of_work(engine) as session:
        lease = session.scalars(select(Lease)).one()
        end_lease(session, lease, reason="test", actor="tester", now=utcnow())
    with pytest.raises(DBAPIError, match="frozen"), unit_of_work(engine) as s:
        s.execute(update(Lease).values(end_note="rewritten"))


def test_an_open_lease_cannot_move_to_another_account(engine, site):
    sync(engine, site, [pool("atlas", "atlas", 2, "/atlas")])
    map_dn(engine, site, JANE, "/atlas")
    accounts, _ = _ids(engine)
    with pytest.raises(DBAPIError), unit_of_work(engine) as s:
        s.execute(
            update(Lease).values(
                account_id=accounts["atlas002"], open_account_id=accounts["atlas002"]
            )
        )


def test_events_are_append_only(engine, site):
    sync(engine, site, [pool("atlas", "atlas", 1, "/atlas")])
    with pytest.raises(DBAPIError, match="append-only"), unit_of_work(engine) as s:
        s.execute(update(Event).values(reason="edited"))
    with pytest.raises(DBAPIError, match="append-only"), unit_of_work(engine) as s:
        s.execute(delete(Event))


def test_an_open_lease_row_must_be_consistent(engine, site):
    sync(engine, site, [pool("atlas", "atlas", 1, "/atlas")])
    accounts, pool_id = _ids(engine)
    jane = _identity(engine, "jane")
    broken = _open_lease(accounts["atlas001"], jane, pool_id)
    broken.open_marker = None
    with pytest.raises(DBAPIError), unit_of_work(engine) as session:
        session.add(broken)


def test_stored_times_come_back_as_aware_utc(engine, site):
    sync(engine, site, [pool("atlas", "atlas", 1, "/atlas")])
    map_dn(engine, site, JANE, "/atlas")
    with unit_of_work(engine, write=False) as session:
        lease = session.scalars(select(Lease)).one()
        raw = session.execute(text("SELECT last_used_at FROM leases")).scalar()
    assert lease.last_used_at.utcoffset().total_seconds() == 0
    assert raw is not None
