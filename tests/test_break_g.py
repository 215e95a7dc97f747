"""Pool changes against the mappings that run beside them."""

from sqlalchemy import select

import poolmgr.pools as pools
from poolmgr.db import unit_of_work
from poolmgr.models import Account
from poolmgr.pools import sync_pools
from tests.factories import at, invariant_violations, map_dn, pool, sync

JANE = "/DC=org/DC=example/CN=Jane Roe"
KIM = "/DC=org/DC=example/CN=Kim Sample"


def test_shrinking_a_pool_keeps_an_account_leased_while_it_was_read(
    pg, site, monkeypatch
):
    """A sync that shrinks tst to one account has read tst002 as free when
    Kim's mapping leases tst002 and commits. The sync must keep tst002
    (leased) instead of retiring it under Kim's open lease. PostgreSQL
    only: elsewhere the lease insert waits for the sync's pool row."""
    engine = pg
    sync(engine, site, [pool("tst", "tst", 2, "/tst")])
    map_dn(engine, site, JANE, "/tst")
    original = pools._resize

    def read_then_map(session, pool_row, now, result):
        # As _resize reads them; held here so the session keeps these rows.
        read = session.scalars(
            select(Account).where(Account.pool_id == pool_row.id)
        ).all()
        assert map_dn(engine, site, KIM, "/tst").account == "tst002"
        original(session, pool_row, now, result)
        assert read

    monkeypatch.setattr(pools, "_resize", read_then_map)
    with unit_of_work(engine) as session:
        result = sync_pools(
            session, site, [pool("tst", "tst", 1, "/tst")], at("2025-01-01T00:00:00Z")
        )
    with unit_of_work(engine, write=False) as session:
        state = session.scalar(select(Account.state).where(Account.name == "tst002"))
    assert state == "leased", f"expected tst002 kept for Kim's lease, got {state}"
    assert any("tst002" in warning for warning in result.warnings)
    assert invariant_violations(engine) == []
