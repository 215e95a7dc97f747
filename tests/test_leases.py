"""The lease engine: stable leases, pool choice, exhaustion, last use."""

from datetime import timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import select

from poolmgr import nss
from poolmgr.db import unit_of_work
from poolmgr.errors import (
    BadInputError,
    NoLeaseError,
    NoPoolMatchError,
    PoolExhaustedError,
)
from poolmgr.history import verify_history
from poolmgr.leases import Mapper, MapRequest
from poolmgr.models import Event, Identity
from poolmgr.recycle import Recycler
from tests.conftest import make_settings
from tests.factories import (
    all_leases,
    at,
    end_open_lease,
    general_path_only,
    invariant_violations,
    map_dn,
    open_leases,
    pool,
    set_last_use,
    sync,
)

JANE = "/DC=org/DC=example/O=Example Grid/OU=People/CN=Jane Roe"
KIM = "/DC=org/DC=example/CN=Kim Sample"


def atlas_pools(size: int = 3) -> list:
    return [
        pool("atlasprd", "atlas", 2, "/atlas/Role=production"),
        pool("atlas", "atlas", size, "/atlas", "/atlas/*"),
    ]


def test_same_person_gets_same_account_and_one_lease(engine, site):
    sync(engine, site, atlas_pools())
    first = map_dn(engine, site, JANE, "/atlas")
    again = map_dn(engine, site, JANE, "/atlas")
    assert (first.account, first.new) == ("atlas001", True)
    assert (again.account, again.lease_id, again.new) == (
        "atlas001",
        first.lease_id,
        False,
    )
    assert len(all_leases(engine)) == 1


def test_mapping_result_carries_uid_gid_and_canonical_dn(engine, site):
    sync(engine, site, atlas_pools())
    mapping = map_dn(engine, site, JANE, "/atlas/Role=NULL/Capability=NULL")
    assert mapping.pool == "atlas"
    assert mapping.fqan == "/atlas"
    assert mapping.dn == JANE
    assert mapping.groups[0] == mapping.gid
    assert mapping.lease_key == f"atlas:{mapping.lease_id}"


@pytest.mark.parametrize(
    "spelling",
    [
        "CN=Jane Roe,OU=People,O=Example Grid,DC=example,DC=org",
        "DC = org, DC = example, O = Example Grid, OU = People, CN = Jane Roe",
        JANE + "/CN=proxy",
        JANE + "/CN=limited proxy",
        "/dc=org/dc=example/o=example grid/ou=people/cn=JANE ROE",
    ],
    ids=["rfc2253", "openssl11", "proxy", "limited-proxy", "letter-case"],
)
def test_every_spelling_of_a_dn_reuses_the_lease(engine, site, spelling):
    sync(engine, site, atlas_pools())
    first = map_dn(engine, site, JANE, "/atlas")
    assert map_dn(engine, site, spelling, "/atlas").lease_id == first.lease_id
    assert len(all_leases(engine)) == 1


def test_munged_comma_dn_is_a_different_person(engine, site):
    """F01: naive ', ' to '/' munging must not reuse the lease."""
    sync(engine, site, [pool("example", "example", 3, "/example")])
    real = "/DC=org/DC=example/O=University of Example, South Campus/CN=Alex Example"
    rfc = "CN=Alex Example,O=University of Example\\, South Campus,DC=example,DC=org"
    munged = "/DC=org/DC=example/O=University of Example/South Campus/CN=Alex Example"
    first = map_dn(engine, site, real, "/example")
    assert first.account == "example001"
    assert map_dn(engine, site, rfc, "/example").account == "example001"
    assert map_dn(engine, site, munged, "/example").account != "example001"


def test_numeric_proxy_cn_is_stripped_only_with_the_issuer(engine, site):
    """F04 d): EEC/CN=<digits> with issuer EEC is the EEC."""
    eec = (
        "/DC=org/DC=example/OU=Robots/CN=rbuild/CN=424242"
        "/CN=Robot: Example Build Service"
    )
    sync(engine, site, atlas_pools())
    first = map_dn(engine, site, eec, "/atlas")
    proxied = map_dn(engine, site, eec + "/CN=1362862742", "/atlas", issuer=eec)
    assert proxied.lease_id == first.lease_id
    with pytest.raises(BadInputError, match="issuer needed"):
        map_dn(engine, site, eec + "/CN=1362862742", "/atlas")


class TestPrimaryFqan:
    """F06: the first FQAN alone picks the pool."""

    @pytest.fixture(autouse=True)
    def _pools(self, engine, site):
        sync(
            engine,
            site,
            [
                pool("cms", "cms", 3, "/cms"),
                pool("cmsdcms", "cms", 3, "/cms/dcms"),
                pool("atlasprd", "atlas", 3, "/atlas/Role=production"),
                pool("atlas", "atlas", 3, "/atlas"),
            ],
        )

    def test_order_of_fqans_picks_the_pool(self, engine, site):
        one = map_dn(
            engine,
            site,
            JANE,
            "/cms/Role=NULL/Capability=NULL",
            "/cms/dcms/Role=NULL/Capability=NULL",
        )
        two = map_dn(
            engine,
            site,
            JANE,
            "/cms/dcms/Role=NULL/Capability=NULL",
            "/cms/Role=NULL/Capability=NULL",
        )
        assert (one.pool, one.fqan) == ("cms", "/cms")
        assert (two.pool, two.fqan) == ("cmsdcms", "/cms/dcms")
        assert one.lease_id != two.lease_id

    def test_role_in_a_later_fqan_does_not_pick_the_pool(self, engine, site):
        mapping = map_dn(
            engine,
            site,
            JANE,
            "/atlas/Role=NULL/Capability=NULL",
            "/atlas/Role=production/Capability=NULL",
        )
        assert mapping.pool == "atlas"

    def test_other_fqans_become_secondary_gids_only(self, engine, site):
        mapping = map_dn(engine, site, JANE, "/cms", "/cms/dcms", "/cms")
        cmsdcms = map_dn(engine, site, KIM, "/cms/dcms")
        assert mapping.gid != cmsdcms.gid
        assert mapping.groups == (mapping.gid, cmsdcms.gid)
        assert mapping.secondary_gids == (cmsdcms.gid,)

    def test_any_fqan_mode_takes_first_matching_rule_in_rule_order(self, engine):
        settings = make_settings(any_fqan=True)
        mapping = map_dn(engine, settings, JANE, "/atlas", "/atlas/Role=production")
        assert mapping.pool == "atlasprd"
        assert mapping.fqan == "/atlas/Role=production"


def test_unmatched_fqan_is_refused_and_writes_nothing(engine, site):
    sync(engine, site, atlas_pools())
    with pytest.raises(NoPoolMatchError, match="/biomed"):
        map_dn(engine, site, JANE, "/biomed")
    assert all_leases(engine) == []
    with unit_of_work(engine, write=False) as session:
        assert session.scalars(select(Identity)).all() == []


def test_no_fqan_is_refused_unless_a_dn_only_pool_is_set(engine, site):
    sync(engine, site, atlas_pools())
    with pytest.raises(NoPoolMatchError, match="No FQAN given"):
        map_dn(engine, site, JANE)
    settings = make_settings(dn_only_pool="atlas")
    assert map_dn(engine, settings, JANE).pool == "atlas"


@pytest.mark.parametrize(
    ("dn", "fqans"),
    [
        ("", ("/atlas",)),
        ("no equals sign", ("/atlas",)),
        (JANE, ("atlas/Role=production",)),
        (JANE, ("/atlas", "/atlas/Role=")),
        ("/DC=org/CN=x\x00y", ("/atlas",)),
    ],
    ids=["empty-dn", "no-equals", "fqan-no-slash", "bad-second-fqan", "nul"],
)
def test_malformed_input_is_rejected_and_nothing_is_written(engine, site, dn, fqans):
    sync(engine, site, atlas_pools())
    with pytest.raises(BadInputError):
        map_dn(engine, site, dn, *fqans)
    assert all_leases(engine) == []


class TestExhaustion:
    """F08 and F09: full pools fall through by rule, never by name prefix."""

    def test_full_pool_never_spills_into_prefix_alike_pools(self, engine, site):
        sync(
            engine,
            site,
            [
                pool("dteam", "dteam", 3, "/dteam"),
                pool("dteamprd", "dteam", 2, "/dteam/Role=production"),
                pool("dteamsgm", "dteam", 1, "/dteam/Role=lcgadmin"),
            ],
        )
        for n in range(3):
            map_dn(engine, site, f"/DC=org/DC=example/CN=User {n}", "/dteam")
        with pytest.raises(PoolExhaustedError, match="Pool dteam has no free account"):
            map_dn(engine, site, "/DC=org/DC=example/CN=New Person", "/dteam")
        assert len(open_leases(engine)) == 3

    def test_account_names_with_dash_and_underscore_are_pool_members(self, engine):
        settings = make_settings(
            pools={
                "atlprd": {"prefix": "atl-prd", "digits": 2},
                "cmsplt": {"prefix": "cms_plt", "digits": 2},
            }
        )
        sync(
            engine,
            settings,
            [
                pool("atlprd", "atlas", 2, "/atlas/Role=production"),
                pool("cmsplt", "cms", 1, "/cms/Role=pilot"),
            ],
        )
        assert map_dn(engine, settings, JANE, "/atlas/Role=production").account == (
            "atl-prd01"
        )
        assert map_dn(engine, settings, JANE, "/cms/Role=pilot").account == "cms_plt01"

    def test_next_matching_rule_serves_when_first_pool_is_full(self, engine, caplog):
        site = make_settings(pools={"atlasx": {"digits": 2}})
        specs = [
            pool("atlas", "atlas", 3, "/atlas"),
            pool("atlasx", "atlas", 2, "/atlas"),
        ]
        sync(engine, site, specs)
        for n in range(3):
            map_dn(engine, site, f"/DC=org/DC=example/CN=User {n}", "/atlas")
        fourth = map_dn(engine, site, "/DC=org/DC=example/CN=Four Th", "/atlas")
        assert fourth.account == "atlasx01"
        assert "pool exhausted, next rule used pool=atlas used=atlasx" in caplog.text

    def test_exhaustion_names_the_pool_and_creates_no_lease(self, engine, site):
        sync(engine, site, [pool("atlas", "atlas", 3, "/atlas")])
        for n in range(3):
            map_dn(engine, site, f"/DC=org/DC=example/CN=User {n}", "/atlas")
        with pytest.raises(PoolExhaustedError) as info:
            map_dn(engine, site, "/DC=org/DC=example/CN=Fifth", "/atlas")
        assert info.value.pools == ("atlas",)
        assert info.value.exit_code == 4
        assert len(all_leases(engine)) == 3

    def test_returning_person_keeps_the_fallback_pool_lease(self, engine, site):
        sync(
            engine,
            site,
            [pool("atlas", "atlas", 1, "/atlas"), pool("atlasx", "atlas", 2, "/atlas")],
        )
        map_dn(engine, site, KIM, "/atlas")
        first = map_dn(engine, site, JANE, "/atlas")
        assert first.pool == "atlasx"
        assert map_dn(engine, site, JANE, "/atlas").lease_id == first.lease_id


class TestLastUse:
    """F10: every mapping records last use; nothing else does."""

    def test_first_mapping_sets_last_use_to_its_time(self, engine, site):
        sync(engine, site, atlas_pools())
        with freeze_time("2025-01-10T08:00:00Z"):
            map_dn(engine, site, JANE, "/atlas")
        (lease,) = open_leases(engine)
        assert lease.last_used_at == at("2025-01-10T08:00:00Z")
        assert lease.started_at == at("2025-01-10T08:00:00Z")

    def test_every_mapping_moves_last_use_forward(self, engine, site):
        sync(engine, site, atlas_pools())
        map_dn(engine, site, JANE, "/atlas", now=at("2025-01-10T08:00:00Z"))
        map_dn(engine, site, JANE, "/atlas", now=at("2025-05-30T09:00:00Z"))
        (lease,) = open_leases(engine)
        assert lease.last_used_at == at("2025-05-30T09:00:00Z")

    def test_a_mapping_with_an_older_clock_never_moves_last_use_back(
        self, engine, site
    ):
        sync(engine, site, atlas_pools())
        map_dn(engine, site, JANE, "/atlas", now=at("2025-05-30T09:00:00Z"))
        map_dn(engine, site, JANE, "/atlas", now=at("2025-05-01T00:00:00Z"))
        (lease,) = open_leases(engine)
        assert lease.last_used_at == at("2025-05-30T09:00:00Z")

    def test_uses_within_the_resolution_are_not_written_again(self, engine):
        settings = make_settings(last_use_resolution=60)
        sync(engine, settings, atlas_pools())
        map_dn(engine, settings, JANE, "/atlas", now=at("2025-06-01T10:00:00Z"))
        map_dn(engine, settings, JANE, "/atlas", now=at("2025-06-01T10:00:59Z"))
        assert open_leases(engine)[0].last_used_at == at("2025-06-01T10:00:00Z")
        map_dn(engine, settings, JANE, "/atlas", now=at("2025-06-01T10:01:00Z"))
        assert open_leases(engine)[0].last_used_at == at("2025-06-01T10:01:00Z")

    def test_verify_mode_neither_creates_nor_touches(self, engine, site):
        sync(engine, site, atlas_pools())
        with pytest.raises(NoLeaseError):
            map_dn(engine, site, JANE, "/atlas", verify=True)
        assert all_leases(engine) == []
        map_dn(engine, site, JANE, "/atlas", now=at("2025-01-01T00:00:00Z"))
        verified = map_dn(
            engine, site, JANE, "/atlas", verify=True, now=at("2025-03-01T00:00:00Z")
        )
        assert verified.account == "atlas001"
        assert open_leases(engine)[0].last_used_at == at("2025-01-01T00:00:00Z")


class TestAllocationOrder:
    """New leases take never-used accounts first, then the longest free."""

    def _end(self, engine, account: str, when: str, waive: bool = False) -> None:
        end_open_lease(engine, account, at(when), waive)

    def test_never_used_accounts_come_first_in_number_order(self, engine, site):
        sync(engine, site, [pool("atlas", "atlas", 3, "/atlas")])
        map_dn(engine, site, KIM, "/atlas", now=at("2024-01-01T00:00:00Z"))
        self._end(engine, "atlas001", "2024-08-01T00:00:00Z")
        got = map_dn(engine, site, JANE, "/atlas", now=at("2025-01-01T00:00:00Z"))
        assert got.account == "atlas002"

    def test_the_account_free_longest_is_taken_next(self, engine, site):
        sync(engine, site, [pool("atlas", "atlas", 2, "/atlas")])
        map_dn(engine, site, KIM, "/atlas", now=at("2024-01-01T00:00:00Z"))
        map_dn(engine, site, JANE, "/atlas", now=at("2024-01-01T00:00:00Z"))
        self._end(engine, "atlas002", "2024-08-01T00:00:00Z")
        self._end(engine, "atlas001", "2024-08-02T00:00:00Z")
        got = map_dn(
            engine,
            site,
            "/DC=org/DC=example/CN=Lee New",
            "/atlas",
            now=at("2025-01-01T00:00:00Z"),
        )
        assert got.account == "atlas002"

    @pytest.mark.parametrize(
        ("now", "expected"),
        [("2024-07-01T09:59:59Z", None), ("2024-07-01T10:00:00Z", "atlas001")],
        ids=["one-second-before", "at-the-boundary"],
    )
    def test_free_account_inside_its_quiet_period_is_never_handed_out(
        self, engine, site, now, expected
    ):
        sync(engine, site, [pool("atlas", "atlas", 1, "/atlas")])
        map_dn(engine, site, KIM, "/atlas", now=at("2024-01-01T10:00:00Z"))
        self._end(engine, "atlas001", "2024-01-02T00:00:00Z")
        if expected is None:
            with pytest.raises(PoolExhaustedError):
                map_dn(engine, site, JANE, "/atlas", now=at(now))
        else:
            assert map_dn(engine, site, JANE, "/atlas", now=at(now)).account == expected

    def test_an_override_waives_the_quiet_period_on_purpose(self, engine, site):
        sync(engine, site, [pool("atlas", "atlas", 1, "/atlas")])
        map_dn(engine, site, KIM, "/atlas", now=at("2025-01-15T00:00:00Z"))
        self._end(engine, "atlas001", "2025-03-01T00:00:00Z", waive=True)
        got = map_dn(engine, site, JANE, "/atlas", now=at("2025-03-01T00:00:01Z"))
        assert got.account == "atlas001"
        assert invariant_violations(engine) == []


def test_lease_started_is_an_event_row_and_an_audit_log_line(engine, site, caplog):
    sync(engine, site, atlas_pools())
    caplog.set_level("INFO", logger="poolmgr.audit")
    mapping = map_dn(engine, site, JANE, "/atlas")
    with unit_of_work(engine, write=False) as session:
        started = session.scalars(
            select(Event).where(Event.kind == "lease_started")
        ).all()
    assert [(e.account, e.pool, e.lease_id) for e in started] == [
        ("atlas001", "atlas", mapping.lease_id)
    ]
    assert any(
        rec.name == "poolmgr.audit"
        and rec.getMessage().startswith("event=lease_started")
        and "account=atlas001" in rec.getMessage()
        for rec in caplog.records
    )


def test_backdated_last_use_is_what_views_report(engine, site):
    sync(engine, site, atlas_pools())
    map_dn(engine, site, JANE, "/atlas")
    set_last_use(engine, "atlas001", at("2025-01-15T00:00:00Z"))
    assert open_leases(engine)[0].last_used_at == at("2025-01-15T00:00:00Z")


def test_capacity_view_after_exhaustion_shows_nothing_reclaimed(engine, site, caplog):
    """F09 4: total 3, leased 3, quiet 0, free 0; the alert line is logged."""
    from poolmgr.views import pool_summaries

    sync(engine, site, [pool("atlas", "atlas", 3, "/atlas")])
    for n in range(3):
        map_dn(
            engine,
            site,
            f"/DC=org/DC=example/CN=User {n}",
            "/atlas",
            now=at(f"2025-05-2{5 + n}T00:00:00Z"),
        )
    with pytest.raises(PoolExhaustedError):
        map_dn(
            engine,
            site,
            "/DC=org/DC=example/CN=Five",
            "/atlas",
            now=at("2025-06-01T00:00:00Z"),
        )
    with unit_of_work(engine, write=False) as session:
        (summary,) = pool_summaries(session, site.quiet, at("2025-06-01T00:00:00Z"))
    assert (summary.size, summary.leased, summary.quiet, summary.free) == (3, 3, 0, 0)
    assert "pool exhausted pool=atlas" in caplog.text


def test_capacity_view_counts_free_accounts_still_resting(engine, site):
    from poolmgr.views import pool_summaries

    sync(engine, site, [pool("atlas", "atlas", 2, "/atlas")])
    map_dn(engine, site, JANE, "/atlas", now=at("2025-05-01T00:00:00Z"))
    end_open_lease(engine, "atlas001", at("2025-05-02T00:00:00Z"))
    with unit_of_work(engine, write=False) as session:
        (summary,) = pool_summaries(session, site.quiet, at("2025-06-01T00:00:00Z"))
    assert (summary.leased, summary.quiet, summary.free) == (0, 1, 1)


def test_a_pool_whose_free_accounts_are_all_resting_is_exhausted_at_once(engine, site):
    """Resting accounts are not 'locked by others': no retries, no contention."""
    sync(engine, site, [pool("atlas", "atlas", 1, "/atlas")])
    map_dn(engine, site, KIM, "/atlas", now=at("2025-05-01T00:00:00Z"))
    end_open_lease(engine, "atlas001", at("2025-05-02T00:00:00Z"))
    with pytest.raises(PoolExhaustedError):
        map_dn(engine, site, JANE, "/atlas", now=at("2025-06-01T00:00:00Z"))


def test_exhaustion_counts_free_accounts_nss_does_not_resolve(
    engine, site, monkeypatch
):
    sync(engine, site, [pool("atlas", "atlas", 3, "/atlas")])
    map_dn(engine, site, KIM, "/atlas", now=at("2025-05-01T00:00:00Z"))
    monkeypatch.setattr(nss, "_fetch", lambda kind, key: None)
    nss.clear_cache()
    checking = make_settings(check_nss=True)

    with pytest.raises(PoolExhaustedError) as exhausted:
        map_dn(engine, checking, JANE, "/atlas", now=at("2025-06-01T00:00:00Z"))
    nss.clear_cache()
    assert str(exhausted.value) == (
        f"Pool atlas has no free account for {JANE!r}; 2 free account(s) do not "
        "resolve on this host (atlas002, atlas003): create them, or set "
        "check_nss: false."
    )


@pytest.mark.parametrize("known", [False, True], ids=["new person", "known person"])
def test_accounts_nss_does_not_resolve_are_passed_over_for_the_next(
    engine, site, monkeypatch, known
):
    """The first candidate is read in the same statement as a new person's
    identity on PostgreSQL; a rejected one is skipped like any other."""
    sync(
        engine,
        site,
        [pool("atlas", "atlas", 4, "/atlas"), pool("cms", "cms", 1, "/cms")],
    )
    if known:
        map_dn(engine, site, JANE, "/cms")
    uids = {"atlas003": 100003, "atlas004": 100004}

    def fetch(kind: str, key: str) -> object:
        if kind == "passwd" and key in uids:
            return nss.pwd.struct_passwd((key, "x", uids[key], 1, "", "/", "/bin/sh"))
        return None

    monkeypatch.setattr(nss, "_fetch", fetch)
    nss.clear_cache()
    try:
        result = map_dn(engine, make_settings(check_nss=True), JANE, "/atlas")
    finally:
        nss.clear_cache()
    assert result.account == "atlas003", (
        f"expected the first account that resolves, got {result.account}"
    )
    assert len(all_leases(engine)) == (2 if known else 1)
    assert invariant_violations(engine) == []


@pytest.mark.parametrize("path", ["as the backend writes it", "general"])
@pytest.mark.parametrize("waive", [False, True], ids=["recycled", "override"])
def test_a_lease_never_starts_before_the_account_became_free(
    engine, site, monkeypatch, path, waive
):
    """A mapping that began at t0, before recycling or an override freed the
    account at t0 + 0.4 s, starts its lease when the account became free:
    the account's history shows the two leases one after the other."""
    t0 = at("2026-03-02T10:00:00Z")
    freed = t0 + timedelta(milliseconds=400)
    sync(engine, site, [pool("tst", "tst", 1, "/tst")])
    map_dn(engine, site, JANE, "/tst", now=t0 - timedelta(days=400))
    end_open_lease(engine, "tst001", freed, waive=waive)
    mapper = Mapper(engine, site)
    if path == "general":
        general_path_only(monkeypatch, mapper)

    assert mapper.map(MapRequest(dn=KIM, fqans=("/tst",)), now=t0).account == "tst001"
    kim = max(all_leases(engine), key=lambda lease: lease.id)
    assert (kim.started_at, kim.last_used_at) == (freed, freed), (
        f"expected Kim's lease to start at {freed}, when tst001 became free; "
        f"it started at {kim.started_at}"
    )
    with unit_of_work(engine, write=False) as session:
        started = session.scalars(
            select(Event.at).where(Event.kind == "lease_started").order_by(Event.id)
        ).all()
        assert started[-1] == freed
        assert verify_history(session, site.quiet).violations == []


@pytest.mark.parametrize("waive", [False, True], ids=["recycled", "override"])
def test_a_lease_never_ends_before_it_started(engine, site, waive):
    """A host whose clock is ahead mapped Jane at t0 + 1 h; a host whose
    clock is behind ends the lease at t0. It ends at t0 + 1 h, so the next
    lease of the account follows it in the history."""
    t0 = at("2026-03-02T10:00:00Z")
    ahead = t0 + timedelta(hours=1)
    sync(engine, site, [pool("tst", "tst", 1, "/tst")])
    map_dn(engine, site, JANE, "/tst", now=ahead)
    if waive:
        Recycler(engine, site, actor="sec").force("tst001", "incident", now=t0)
    else:
        end_open_lease(engine, "tst001", t0)
    [jane] = all_leases(engine)
    assert jane.ended_at == ahead, f"expected the lease to end at {ahead}"

    if waive:
        assert map_dn(engine, site, KIM, "/tst", now=ahead).account == "tst001"
    with unit_of_work(engine, write=False) as session:
        assert verify_history(session, site.quiet).violations == []
    assert invariant_violations(engine) == []
