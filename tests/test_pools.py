"""Sync: pools and accounts follow the VO cards, leased accounts are safe."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from poolmgr import leases, nss
from poolmgr import pools as pools_module
from poolmgr.db import unit_of_work
from poolmgr.errors import ConflictError, PoolExhaustedError
from poolmgr.leases import Mapper, MapRequest
from poolmgr.models import Account, Pool, PoolRule
from poolmgr.pools import sync_pools
from poolmgr.recycle import Recycler
from poolmgr.routing import Router
from poolmgr.views import pool_summaries
from tests.conftest import make_settings
from tests.factories import (
    all_leases,
    at,
    general_path_only,
    invariant_violations,
    map_dn,
    pool,
    sync,
)

JANE = "/DC=org/DC=example/CN=Jane Roe"
KIM = "/DC=org/DC=example/CN=Kim Sample"


def accounts(engine, pool_name: str) -> dict[str, str]:
    with unit_of_work(engine, write=False) as session:
        rows = session.execute(
            select(Account.name, Account.state).join(Pool).where(Pool.name == pool_name)
        ).all()
    return dict(rows)


def test_sync_creates_pools_accounts_and_rules(engine, site):
    result = sync(engine, site, [pool("atlas", "atlas", 3, "/atlas", "/atlas/*")])
    kinds = [change.kind for change in result.changes]
    assert kinds == ["pool_created", "accounts_added", "rules_replaced"]
    assert accounts(engine, "atlas") == {
        "atlas001": "free",
        "atlas002": "free",
        "atlas003": "free",
    }
    with unit_of_work(engine, write=False) as session:
        router = Router.load(session)
    assert [(r.pool, r.rule.text) for r in router.routes] == [
        ("atlas", "/atlas"),
        ("atlas", "/atlas/*"),
    ]


def test_sync_twice_changes_nothing(engine, site):
    specs = [pool("atlas", "atlas", 3, "/atlas"), pool("cms", "cms", 2, "/cms")]
    sync(engine, site, specs)
    assert sync(engine, site, specs).changes == []


def test_uids_follow_the_pool_block_and_pools_do_not_overlap(engine, site):
    sync(
        engine,
        site,
        [pool("atlas", "atlas", 3, "/atlas"), pool("cms", "cms", 2, "/cms")],
    )
    with unit_of_work(engine, write=False) as session:
        rows = dict(session.execute(select(Account.name, Account.uid)).all())
        pools = {p.name: p for p in session.scalars(select(Pool))}
    assert rows["atlas001"] == 100_001
    assert rows["cms001"] == 101_001
    assert pools["atlas"].gid != pools["cms"].gid


def test_site_config_sets_pool_parameters_and_overrides_size(engine):
    settings = make_settings(
        pools={
            "atlasprd": {
                "prefix": "atlprd",
                "digits": 2,
                "first_uid": 50500,
                "group": "atlasprd",
                "gid": 2689,
                "size": 4,
            }
        }
    )
    sync(engine, settings, [pool("atlasprd", "atlas", 20, "/atlas/Role=production")])
    with unit_of_work(engine, write=False) as session:
        (summary,) = pool_summaries(session, settings.quiet)
        uid = session.scalar(select(Account.uid).where(Account.name == "atlprd04"))
    assert (summary.declared, summary.size, summary.free) == (20, 4, 4)
    assert (summary.gid, summary.group, uid) == (2689, "atlasprd", 50504)


def test_growing_adds_accounts_and_shrinking_retires_only_free_ones(engine, site):
    sync(engine, site, [pool("atlas", "atlas", 3, "/atlas")])
    map_dn(engine, site, JANE, "/atlas")
    map_dn(engine, site, "/DC=org/DC=example/CN=Kim", "/atlas")
    map_dn(engine, site, "/DC=org/DC=example/CN=Lee", "/atlas")
    result = sync(engine, site, [pool("atlas", "atlas", 1, "/atlas")])
    assert accounts(engine, "atlas") == {
        "atlas001": "leased",
        "atlas002": "leased",
        "atlas003": "leased",
    }
    assert "2 surplus account(s) in use or being cleaned are kept" in result.warnings[0]
    sync(engine, site, [pool("atlas", "atlas", 5, "/atlas")])
    sync(engine, site, [pool("atlas", "atlas", 3, "/atlas")])
    assert accounts(engine, "atlas") == {
        "atlas001": "leased",
        "atlas002": "leased",
        "atlas003": "leased",
        "atlas004": "retired",
        "atlas005": "retired",
    }


def test_retired_accounts_come_back_when_the_pool_grows(engine, site):
    sync(engine, site, [pool("atlas", "atlas", 3, "/atlas")])
    sync(engine, site, [pool("atlas", "atlas", 1, "/atlas")])
    result = sync(engine, site, [pool("atlas", "atlas", 3, "/atlas")])
    assert [c.kind for c in result.changes] == ["pool_resized", "accounts_restored"]
    assert set(accounts(engine, "atlas").values()) == {"free"}


def test_a_surplus_account_kept_in_use_retires_once_it_is_recycled(engine, site):
    """The pool shrank from 3 to 1 while all three accounts were leased; the
    sync kept atlas002 and atlas003. Recycled, they retire instead of going
    free, so no new person gets an account beyond the pool's size; growing
    the pool again brings them back."""
    sync(engine, site, [pool("atlas", "atlas", 3, "/atlas")])
    old = at("2024-01-01T00:00:00Z")
    for dn in (JANE, KIM, "/DC=org/DC=example/CN=Lee"):
        map_dn(engine, site, dn, "/atlas", now=old)
    sync(engine, site, [pool("atlas", "atlas", 1, "/atlas")])

    recycler = Recycler(engine, site, actor="cron")
    forced = recycler.force("atlas003", "disk full", now=at("2024-01-02T00:00:00Z"))
    assert forced[-1].detail == "retired: pool atlas has shrunk to 1 account(s)"
    outcomes = list(recycler.run(at("2025-01-01T00:00:00Z")))
    assert [(o.action, o.target.account) for o in outcomes] == [
        ("recycled", "atlas001"),
        ("recycled", "atlas002"),
    ]
    assert accounts(engine, "atlas") == {
        "atlas001": "free",
        "atlas002": "retired",
        "atlas003": "retired",
    }
    with pytest.raises(PoolExhaustedError):
        for n in range(2):
            map_dn(engine, site, f"/DC=org/DC=example/CN=New {n}", "/atlas")
    assert invariant_violations(engine) == []

    sync(engine, site, [pool("atlas", "atlas", 3, "/atlas")])
    assert set(accounts(engine, "atlas").values()) == {"leased", "free"}


def test_an_account_of_a_retired_pool_retires_once_it_is_recycled(engine, site):
    sync(
        engine,
        site,
        [pool("atlas", "atlas", 1, "/atlas"), pool("cms", "cms", 1, "/cms")],
    )
    map_dn(engine, site, JANE, "/cms", now=at("2024-01-01T00:00:00Z"))
    sync(engine, site, [pool("atlas", "atlas", 1, "/atlas")])
    outcomes = list(
        Recycler(engine, site, actor="cron").run(at("2025-01-01T00:00:00Z"))
    )
    assert [(o.action, o.detail) for o in outcomes] == [
        ("recycled", "retired with its pool cms")
    ]
    assert accounts(engine, "cms") == {"cms001": "retired"}


def test_a_pool_missing_from_the_cards_is_retired_and_stops_routing(engine, site):
    sync(
        engine,
        site,
        [pool("atlas", "atlas", 2, "/atlas"), pool("cms", "cms", 2, "/cms")],
    )
    map_dn(engine, site, JANE, "/cms")
    result = sync(engine, site, [pool("atlas", "atlas", 2, "/atlas")])
    assert ("pool_retired", "cms") in [(c.kind, c.pool) for c in result.changes]
    assert accounts(engine, "cms") == {"cms001": "leased", "cms002": "retired"}
    with unit_of_work(engine, write=False) as session:
        assert {r.rule for r in session.scalars(select(PoolRule))} == {"/atlas"}


def test_renumbering_a_pool_with_accounts_is_refused(engine):
    sync(engine, make_settings(), [pool("atlas", "atlas", 2, "/atlas")])
    moved = make_settings(pools={"atlas": {"first_uid": 60000}})
    with pytest.raises(ConflictError, match="does not renumber"):
        sync(engine, moved, [pool("atlas", "atlas", 2, "/atlas")])


def test_overlapping_uid_blocks_are_refused_and_nothing_changes(engine):
    settings = make_settings(
        pools={"atlas": {"first_uid": 50000, "size": 600}, "cms": {"first_uid": 50500}}
    )
    with pytest.raises(ConflictError, match="of pool atlas overlap uids 50501-50502"):
        sync(
            engine,
            settings,
            [pool("atlas", "atlas", 2, "/atlas"), pool("cms", "cms", 2, "/cms")],
        )
    with unit_of_work(engine, write=False) as session:
        assert session.scalars(select(Pool)).all() == []


@pytest.mark.parametrize(
    ("name", "site_pools", "problem", "fix"),
    [
        (
            "abcdefghij" * 3,
            {},
            "its account prefix 'abcdefghijabcdefghijabcdefghij' is longer than 24 "
            "characters",
            "pools.abcdefghijabcdefghijabcdefghij.prefix",
        ),
        (
            "atlas",
            {"atlas": {"prefix": "a" * 24, "digits": 9}},
            f"its account names ('{'a' * 24}' and 9 digits) would be longer than "
            "the 32 characters a user name may have",
            "pools.atlas.prefix or pools.atlas.digits",
        ),
    ],
    ids=["long-pool-name", "long-prefix-and-digits"],
)
def test_account_names_longer_than_a_user_name_may_be_are_refused(
    engine, name, site_pools, problem, fix
):
    settings = make_settings(pools=site_pools)
    with pytest.raises(ConflictError) as refused:
        sync(
            engine, settings, [pool("cms", "cms", 1, "/cms"), pool(name, "x", 2, "/x")]
        )
    assert str(refused.value) == (
        f"Sync refused, nothing changed: pool {name}: {problem} (set {fix} in the "
        "site configuration)."
    )
    with unit_of_work(engine, write=False) as session:
        assert session.scalars(select(Pool)).all() == [], "a refused sync wrote pools"


def test_a_prefix_of_24_and_8_digits_makes_names_of_32(engine):
    settings = make_settings(pools={"atlas": {"prefix": "a" * 24, "digits": 8}})
    sync(engine, settings, [pool("atlas", "atlas", 1, "/atlas")])
    assert accounts(engine, "atlas") == {"a" * 24 + "00000001": "free"}


def test_changing_a_pool_to_names_too_long_is_refused_before_it_has_accounts(engine):
    sync(engine, make_settings(), [pool("atlas", "atlas", 0, "/atlas")])
    settings = make_settings(pools={"atlas": {"prefix": "a" * 24, "digits": 9}})
    with pytest.raises(ConflictError, match="would be longer than the 32"):
        sync(engine, settings, [pool("atlas", "atlas", 1, "/atlas")])
    with unit_of_work(engine, write=False) as session:
        assert session.scalars(select(Pool.prefix)).all() == ["atlas"]


@pytest.mark.parametrize("per_query", [1, 2, 1000], ids=["1", "2", "1000"])
def test_account_names_of_another_pool_are_refused_across_query_slices(
    engine, monkeypatch, per_query
):
    from poolmgr import pools

    # The name check runs in slices (PostgreSQL's parameter limit); a clash
    # in any slice is found and nothing is written.
    monkeypatch.setattr(pools, "NAMES_PER_QUERY", per_query)
    settings = make_settings(
        pools={
            "atlas": {"prefix": "grid", "first_uid": 50000},
            "cms": {"prefix": "grid", "first_uid": 60000},
        }
    )
    sync(engine, settings, [pool("atlas", "atlas", 2, "/atlas")])
    with pytest.raises(
        ConflictError, match="account names grid001, grid002 of pool cms exist"
    ):
        sync(engine, settings, [pool("cms", "cms", 5, "/cms")])
    assert sorted(accounts(engine, "cms")) == []


def test_a_pool_larger_than_its_digits_allow_is_refused(engine):
    settings = make_settings(pools={"ops": {"digits": 1}})
    with pytest.raises(ConflictError, match="cannot hold 12 accounts with 1 digits"):
        sync(engine, settings, [pool("ops", "ops", 12, "/ops")])


class TestNss:
    """F15: definitions that clash with the host's NSS are refused or skipped."""

    @pytest.fixture(autouse=True)
    def _fake_nss(self, monkeypatch):
        import grp
        import pwd

        users = {"oldacct": 50502, "atlas006": 60006, "atlas008": 60008}
        groups = {2689: "dteamprd"}

        def fetch(kind, key):
            if kind == "passwd" and key in users:
                return pwd.struct_passwd(
                    (key, "x", users[key], 2000, "", "/", "/bin/sh")
                )
            if kind == "uid":
                name = next((n for n, u in users.items() if u == int(key)), None)
                return (
                    pwd.struct_passwd((name, "x", int(key), 2000, "", "/", "/bin/sh"))
                    if name
                    else None
                )
            if kind == "gid" and int(key) in groups:
                return grp.struct_group((groups[int(key)], "x", int(key), []))
            return None

        monkeypatch.setattr(nss, "_fetch", fetch)
        nss.clear_cache()
        yield
        nss.clear_cache()

    def test_gid_name_mismatch_and_uid_collision_are_both_named(self, engine):
        settings = make_settings(
            check_nss=True,
            pools={
                "atlasprd": {
                    "first_uid": 50500,
                    "group": "atlasprd",
                    "gid": 2689,
                    "digits": 2,
                }
            },
        )
        with pytest.raises(ConflictError) as info:
            sync(
                engine,
                settings,
                [pool("atlasprd", "atlas", 3, "/atlas/Role=production")],
            )
        message = str(info.value)
        assert "gid 2689 is 'dteamprd' on this host, not 'atlasprd'" in message
        assert "uid 50502 of atlasprd02 belongs to oldacct" in message

    def test_unresolvable_account_is_skipped_and_never_leased(self, engine, caplog):
        settings = make_settings(
            check_nss=True, pools={"atlas": {"first_uid": 60000, "digits": 3}}
        )
        sync(engine, settings, [pool("atlas", "atlas", 8, "/atlas")])
        with unit_of_work(engine) as session:
            for account in session.scalars(select(Account)):
                if account.number < 6:
                    account.state = "retired"
        map_dn(engine, settings, "/DC=org/DC=example/CN=Other", "/atlas")
        jane = map_dn(engine, settings, JANE, "/atlas")
        assert jane.account == "atlas008"
        assert "account atlas007 does not resolve" in caplog.text
        with pytest.raises(PoolExhaustedError) as info:
            map_dn(engine, settings, "/DC=org/DC=example/CN=Kim Sample", "/atlas")
        assert str(info.value) == (
            "Pool atlas has no free account for '/DC=org/DC=example/CN=Kim Sample'; "
            "1 free account(s) do not resolve on this host (atlas007): create them, "
            "or set check_nss: false."
        ), "the one line says why the free account was not given"

    def test_a_pool_of_accounts_not_created_yet_says_so(self, engine):
        settings = make_settings(check_nss=True)
        sync(engine, settings, [pool("dteam", "dteam", 5, "/dteam")])
        with pytest.raises(PoolExhaustedError) as info:
            map_dn(engine, settings, JANE, "/dteam")
        assert str(info.value).endswith(
            "; 5 free account(s) do not resolve on this host (dteam001, dteam002, "
            "dteam003, ...): create them, or set check_nss: false."
        )
        assert all_leases(engine) == [], "no lease row is left behind"


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
    original = pools_module._resize

    def read_then_map(session, pool_row, now, result):
        # As _resize reads them; held here so the session keeps these rows.
        read = session.scalars(
            select(Account).where(Account.pool_id == pool_row.id)
        ).all()
        assert map_dn(engine, site, KIM, "/tst").account == "tst002"
        original(session, pool_row, now, result)
        assert read

    monkeypatch.setattr(pools_module, "_resize", read_then_map)
    with unit_of_work(engine) as session:
        result = sync_pools(
            session, site, [pool("tst", "tst", 1, "/tst")], at("2025-01-01T00:00:00Z")
        )
    with unit_of_work(engine, write=False) as session:
        state = session.scalar(select(Account.state).where(Account.name == "tst002"))
    assert state == "leased", f"expected tst002 kept for Kim's lease, got {state}"
    assert any("tst002" in warning for warning in result.warnings)
    assert invariant_violations(engine) == []


def test_shrinking_a_pool_while_a_mapping_leases_a_surplus_account_does_not_deadlock(
    engine, site, monkeypatch
):
    """Kim's mapping has locked tst002, the last free account, and is about
    to write its lease when a sync that shrinks tst to one account updates
    the pool's row and comes to retire tst002. Both must commit, one after
    the other (Kim keeps tst002, the sync keeps it as a surplus account in
    use), instead of one failing as a deadlock: on MariaDB the lease insert
    waits for the pool row the sync has changed."""
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite writers take the database lock in turn")
    sync(engine, site, [pool("tst", "tst", 2, "/tst")])
    map_dn(engine, site, JANE, "/tst")
    locked, go_on, resizing = threading.Event(), threading.Event(), threading.Event()
    start_lease, resize = leases._start_lease, pools_module._resize

    def pause_with_the_account_locked(*args, **kwargs):
        locked.set()
        go_on.wait(10)
        return start_lease(*args, **kwargs)

    def resize_then_let_the_mapping_go_on(*args, **kwargs):
        resizing.set()
        return resize(*args, **kwargs)

    monkeypatch.setattr(leases, "_start_lease", pause_with_the_account_locked)
    monkeypatch.setattr(leases, "MAX_ATTEMPTS", 1)
    monkeypatch.setattr(pools_module, "_resize", resize_then_let_the_mapping_go_on)
    mapper = general_path_only(monkeypatch, Mapper(engine, site))
    kim = MapRequest(dn=KIM, fqans=("/tst",))
    with ThreadPoolExecutor(2) as executor:
        mapping = executor.submit(mapper.map, kim)
        assert locked.wait(10), "the mapping never locked an account"
        syncing = executor.submit(sync, engine, site, [pool("tst", "tst", 1, "/tst")])
        try:
            assert resizing.wait(10), "the sync never came to resize the pool"
            time.sleep(0.3)  # the sync's pool row is updated, its retire waits
        finally:
            go_on.set()
        assert mapping.result(20).account == "tst002"
        result = syncing.result(20)

    assert any("tst002" in warning for warning in result.warnings), result.warnings
    assert accounts(engine, "tst") == {"tst001": "leased", "tst002": "leased"}
    assert invariant_violations(engine) == []


def test_a_free_surplus_account_busy_during_a_shrink_is_never_handed_out(engine, site):
    """An officer's hold has tst003 locked while a sync shrinks tst from 3 to
    2: the sync cannot retire it and says so. tst003 stays free, yet no
    newcomer gets it, and the next sync retires it."""
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite writers take the database lock in turn")
    sync(engine, site, [pool("tst", "tst", 3, "/tst")])
    map_dn(engine, site, JANE, "/tst")
    with unit_of_work(engine) as holding:
        holding.execute(
            select(Account.id).where(Account.name == "tst003").with_for_update()
        )
        with ThreadPoolExecutor(1) as executor:
            result = executor.submit(
                sync, engine, site, [pool("tst", "tst", 2, "/tst")]
            ).result(20)
    assert result.warnings == [
        "pool tst: 1 free surplus account(s) were busy and are no longer handed "
        "out; run sync again to retire them: tst003"
    ]
    assert accounts(engine, "tst")["tst003"] == "free"

    assert map_dn(engine, site, KIM, "/tst").account == "tst002"
    with pytest.raises(PoolExhaustedError):
        map_dn(engine, site, "/DC=org/DC=example/CN=Lee", "/tst")
    sync(engine, site, [pool("tst", "tst", 2, "/tst")])
    assert accounts(engine, "tst")["tst003"] == "retired"
    assert invariant_violations(engine) == []
