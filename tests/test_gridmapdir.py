"""The gridmapdir bridge: lease-name encoding, import (F03, F05, F08), export."""

import os
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from poolmgr.bans import add_ban, dn_entry
from poolmgr.db import unit_of_work
from poolmgr.dn import parse_dn
from poolmgr.errors import NotFoundError, PolicyError
from poolmgr.gridmapdir import (
    UnresolvableNameError,
    decode_lease_name,
    encode_lease_name,
    export_gridmapdir,
    import_gridmapdir,
    lease_name,
    oneline,
)
from poolmgr.gridmapdir import importer as importer_module
from poolmgr.gridmapdir import scan as scan_module
from poolmgr.gridmapdir.importer import Finding
from poolmgr.gridmapdir.scan import datetime_to_ns, mtime_to_datetime
from poolmgr.holds import hold_account
from poolmgr.leases import end_lease
from poolmgr.models import Account, Event, Identity, Lease, Pool
from tests.conftest import make_settings
from tests.factories import (
    at,
    end_open_lease,
    invariant_violations,
    map_dn,
    open_leases,
    pool,
    sync,
)

JANE_LEASE = "%2fdc%3dorg%2fdc%3dexample%2fcn%3djane%20roe"
ALEX_LEASE = "%2fdc%3dorg%2fdc%3dexample%2fcn%3dalex%20example"
MAY_1 = at("2025-05-01T00:00:00Z")


# Writing and reading lease names.


@pytest.mark.parametrize(
    ("dn", "name"),
    [
        ("/DC=org/DC=example/CN=Jane Roe", JANE_LEASE),
        (
            "/DC=org/DC=example-grid/OU=a.b/CN=Jo",
            "%2fdc%3dorg%2fdc%3dexample%2dgrid%2fou%3da%2eb%2fcn%3djo",
        ),
        (
            "/DC=org/CN=Jo/emailAddress=jo@example.org",
            "%2fdc%3dorg%2fcn%3djo%2femailaddress%3djo%40example%2eorg",
        ),
        ("/DC=org/CN=host:8443", "%2fdc%3dorg%2fcn%3dhost%3a8443"),
        ("/DC=org/CN=a=b", "%2fdc%3dorg%2fcn%3da%3db"),
        ("/DC=org/CN=under_score", "%2fdc%3dorg%2fcn%3dunder%5fscore"),
    ],
    ids=["space", "dash-dot", "at", "colon", "equals", "underscore"],
)
def test_lease_names_match_the_lcmaps_encoding_byte_for_byte(dn, name):
    assert lease_name(parse_dn(dn)) == name


@pytest.mark.parametrize(
    ("mode", "name"),
    [
        ("argus", "%2fdc%3dorg%2fcn%3djos%c3%a9"),
        ("lcmaps", "%2fdc%3dorg%2fcn%3djos%5cxc3%5cxa9"),
    ],
    ids=["utf8-bytes", "openssl-escapes"],
)
def test_non_ascii_dn_is_written_in_the_chosen_form(mode, name):
    assert lease_name(parse_dn("/DC=org/CN=José"), non_ascii=mode) == name


def test_group_suffixes_follow_a_literal_colon():
    name = lease_name(parse_dn("/DC=org/CN=Carol"), ("lcmtprd", "lcmt"))
    assert name == "%2fdc%3dorg%2fcn%3dcarol:lcmtprd:lcmt"


def test_oneline_matches_openssl_3_x509_name_oneline():
    # Printed by X509_NAME_oneline of OpenSSL 3.0 for the same entries.
    dn = parse_dn("CN=Jos\\C3\\A9,O=A/B\\+C\\\\D\\, E=F,DC=org")
    assert oneline(dn) == "/DC=org/O=A\\/B\\+C\\D, E=F/CN=Jos\\xC3\\xA9"


def test_encode_lease_name_takes_the_dn_text_as_given():
    assert encode_lease_name("/CN=A b", ("g",)) == "%2fcn%3da%20b:g"


@pytest.mark.parametrize(
    ("name", "key", "groups"),
    [
        (JANE_LEASE.encode(), "/DC=org/DC=example/CN=jane roe", ()),
        (JANE_LEASE.upper().encode(), "/DC=org/DC=example/CN=jane roe", ()),
        (
            b"%2fdc%3dorg%2fdc%3dexample%2fcn%3dmary-ann.o_neil,jr",
            "/DC=org/DC=example/CN=mary-ann.o_neil,jr",
            (),
        ),
        (
            b"%2fdc%3dorg%2fcn%3djos%ffffffc3%ffffffa9",
            "/DC=org/CN=jos\u00e9",
            (),
        ),
        (b"%2fdc%3dorg%2fcn%3djos%5cxc3%5cxa9", "/DC=org/CN=jos\u00e9", ()),
        (b"%2fdc%3dorg%2fcn%3djos%c3%a9", "/DC=org/CN=jos\u00e9", ()),
        (
            ALEX_LEASE.encode() + b":atlasprd:atlasprd",
            "/DC=org/DC=example/CN=alex example",
            ("atlasprd",),
        ),
        (
            b"%2fdc%3dorg%2fcn%3dcarol:lcmtprd:lcmt:mapcount=0001",
            "/DC=org/CN=carol",
            ("lcmtprd", "lcmt"),
        ),
        (
            b"%2fdc%3dch%2fcn%3djdoe%2fcn%3d123456",
            "/DC=ch/CN=jdoe/CN=123456",
            (),
        ),
    ],
    ids=[
        "lcmaps",
        "upper-hex",
        "old-argus-literals",
        "globus-sign-extended",
        "openssl-escapes",
        "utf8-bytes",
        "duplicated-suffix",
        "mapcount",
        "numeric-cn-kept",
    ],
)
def test_decoding_reads_every_lossless_variant(name, key, groups):
    decoded = decode_lease_name(name)
    assert (decoded.dn.key, decoded.groups) == (key, groups)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        (b"%2fdc%3dorg%2fcn%3djos%ff%ff%20m%ff%ffllerbc", "not UTF-8"),
        (b"%2fdc%3dorg%2fcn%3da+b", "raw byte b'\\+'"),
        (b"%2fdc%3dorg%2fcn%3da b", "raw byte b' '"),
        (b"%2fdc%3dorg%2fcn%3da%zz", "without two hex digits"),
        (b"%2fdc%3dorg%2fcn%3da%2", "without two hex digits"),
        (b"%41%42%43", "is not a DN"),
        (b":atlas", "no DN"),
        (b"%2fdc%3dorg%2fcn%3d\xc3\xa9", "raw byte"),
    ],
    ids=[
        "lcmaps-garbled-utf8",
        "plus",
        "space",
        "bad-hex",
        "short-escape",
        "not-a-dn",
        "suffix-only",
        "raw-utf8",
    ],
)
def test_names_that_cannot_be_decoded_losslessly_are_unresolvable(name, problem):
    with pytest.raises(UnresolvableNameError, match=problem):
        decode_lease_name(name)


def test_case_survives_only_when_the_name_holds_capitals():
    assert not decode_lease_name(JANE_LEASE.encode()).cased
    assert decode_lease_name(b"%2fDC%3dorg%2fCN%3dJane").cased


VALUE = st.text(
    st.sampled_from("abcXYZ019 -._@:=,/+'()\u00e9\u00fc\u4e2d"), min_size=1, max_size=12
).filter(lambda v: v.strip(" ") == v)


@given(VALUE, st.sampled_from(["lcmaps", "argus"]))
def test_export_names_decode_back_to_the_same_person(value, mode):
    escaped = value.replace("\\", "\\\\").replace("/", "\\/").replace("+", "\\+")
    dn = parse_dn(f"/DC=org/CN={escaped}/O=Example")
    assert decode_lease_name(lease_name(dn, (), mode).encode()).dn.key == dn.key


def test_file_times_convert_exactly_to_the_microsecond():
    when = at("2025-05-20T10:00:00.123456Z")
    assert mtime_to_datetime(datetime_to_ns(when)) == when
    assert mtime_to_datetime(datetime_to_ns(when) + 999) == when


# Import.


def make_gridmapdir(
    directory: Path,
    accounts: list[str],
    leases: dict[str, str],
    when: datetime = MAY_1,
) -> Path:
    """Account files plus hard links {lease name: account}, all with mtime when."""
    directory.mkdir(exist_ok=True)
    for account in accounts:
        (directory / account).touch()
    for name, account in leases.items():
        os.link(directory / account, directory / name)
    stamp = datetime_to_ns(when)
    for entry in directory.iterdir():
        os.utime(entry, ns=(stamp, stamp))
    return directory


def atlas_site():
    return make_settings(pools={"atlasprd": {"digits": 2}})


def atlas_pools(engine, site):
    sync(
        engine,
        site,
        [
            pool("atlasprd", "atlas", 3, "/atlas/Role=production"),
            pool("atlas", "atlas", 5, "/atlas"),
        ],
    )


def run_import(engine, directory: Path, dry_run: bool = False):
    with unit_of_work(engine, write=not dry_run) as session:
        return import_gridmapdir(session, directory, dry_run=dry_run)


def lease_table(engine) -> list[tuple[str, str, str, datetime]]:
    """(account, pool, identity key, last use) of every open lease, sorted."""
    with unit_of_work(engine, write=False) as session:
        rows = session.execute(
            select(Lease.account_id, Lease.pool_id, Identity.key, Lease.last_used_at)
            .join(Identity, Identity.id == Lease.identity_id)
            .where(Lease.open_marker == 1)
        ).all()
        names = dict(session.execute(select(Account.id, Account.name)).all())
        pools = dict(session.execute(select(Pool.id, Pool.name)).all())
    return sorted((names[a], pools[p], key, last) for a, p, key, last in rows)


def f05_directory(tmp_path: Path) -> Path:
    accounts = [f"atlas00{n}" for n in range(1, 6)]
    accounts += [f"atlasprd0{n}" for n in range(1, 4)]
    directory = make_gridmapdir(
        tmp_path / "gridmapdir",
        accounts,
        {
            JANE_LEASE: "atlas001",
            JANE_LEASE + ":atlasprd": "atlasprd01",
            ALEX_LEASE + ":atlasprd:atlasprd": "atlasprd02",
            "%2fdc%3dorg%2fdc%3dexample%2fcn%3djos%ff%ff": "atlas002",
            "%2fdc%3dorg%2fdc%3dexample%2fcn%3dmary-ann.o": "atlas003",
        },
    )
    (directory / "%2fdc%3dorg%2fdc%3dexample%2fcn%3dsolo").touch()
    return directory


def test_f05_lease_name_variants_are_imported_or_reported(engine, tmp_path):
    site = atlas_site()
    atlas_pools(engine, site)
    directory = f05_directory(tmp_path)

    plan = run_import(engine, directory)

    assert lease_table(engine) == [
        ("atlas001", "atlas", "/DC=org/DC=example/CN=jane roe", MAY_1),
        ("atlas003", "atlas", "/DC=org/DC=example/CN=mary-ann.o", MAY_1),
        ("atlasprd01", "atlasprd", "/DC=org/DC=example/CN=jane roe", MAY_1),
        ("atlasprd02", "atlasprd", "/DC=org/DC=example/CN=alex example", MAY_1),
    ]
    assert sorted((f.kind, f.name) for f in plan.findings) == [
        ("stale", "%2fdc%3dorg%2fdc%3dexample%2fcn%3dsolo"),
        ("unresolvable", "%2fdc%3dorg%2fdc%3dexample%2fcn%3djos%ff%ff"),
    ]
    assert (plan.count("create"), plan.free_accounts, plan.unknown_accounts) == (
        4,
        3,
        [],
    )
    assert invariant_violations(engine) == []

    alex = map_dn(
        engine,
        site,
        "/DC=org/DC=example/CN=Alex Example",
        "/atlas/Role=production",
        now=at("2025-06-01T00:00:00Z"),
    )
    assert (alex.account, alex.new) == ("atlasprd02", False)


def test_import_is_idempotent(sqlite_engine, tmp_path):
    site = atlas_site()
    atlas_pools(sqlite_engine, site)
    directory = f05_directory(tmp_path)
    run_import(sqlite_engine, directory)
    before = lease_table(sqlite_engine)
    with unit_of_work(sqlite_engine, write=False) as session:
        events_before = session.scalar(select(func.count()).select_from(Event))

    again = run_import(sqlite_engine, directory)

    with unit_of_work(sqlite_engine, write=False) as session:
        events_after = session.scalar(select(func.count()).select_from(Event))
    assert lease_table(sqlite_engine) == before
    assert events_after == events_before
    assert (again.count("create"), again.count("unchanged")) == (0, 4)


def test_dry_run_reports_the_plan_and_changes_nothing(sqlite_engine, tmp_path):
    site = atlas_site()
    atlas_pools(sqlite_engine, site)
    plan = run_import(sqlite_engine, f05_directory(tmp_path), dry_run=True)
    assert plan.count("create") == 4
    assert lease_table(sqlite_engine) == []


def test_imported_lease_records_its_source_in_an_event(sqlite_engine, tmp_path):
    site = atlas_site()
    atlas_pools(sqlite_engine, site)
    directory = make_gridmapdir(tmp_path / "g", ["atlas001"], {JANE_LEASE: "atlas001"})
    run_import(sqlite_engine, directory)
    with unit_of_work(sqlite_engine, write=False) as session:
        event = session.scalars(
            select(Event).where(Event.kind == "gridmapdir_imported")
        ).one()
        lease = session.scalars(select(Lease)).one()
    assert (event.account, event.pool, event.lease_id) == (
        "atlas001",
        "atlas",
        lease.id,
    )
    assert str(directory) in (event.details or "")
    assert lease.started_at == lease.last_used_at == MAY_1


def test_f03_import_then_map_keeps_the_account_and_fixes_the_display(
    sqlite_engine, tmp_path
):
    site = make_settings()
    sync(sqlite_engine, site, [pool("example", "example", 9, "/example")])
    directory = make_gridmapdir(
        tmp_path / "g",
        [f"example00{n}" for n in range(1, 10)],
        {
            "%2fdc%3dorg%2fdc%3dexample%2fo%3dexample%20grid%2fcn%3djane%20roe": (
                "example007"
            )
        },
        when=at("2025-05-20T10:00:00Z"),
    )
    run_import(sqlite_engine, directory)
    with unit_of_work(sqlite_engine, write=False) as session:
        imported = session.scalars(select(Identity)).one()
    assert imported.display_lossy

    dn = "/DC=org/DC=example/O=Example Grid/CN=Jane Roe"
    mapping = map_dn(sqlite_engine, site, dn, "/example", now=at("2025-06-01T00:00Z"))

    with unit_of_work(sqlite_engine, write=False) as session:
        identity = session.scalars(select(Identity)).one()
    assert (mapping.account, mapping.new) == ("example007", False)
    assert (identity.display, identity.display_lossy) == (dn, False)
    assert [lease.last_used_at for lease in open_leases(sqlite_engine)] == [
        at("2025-06-01T00:00Z")
    ]


def test_f08_accounts_are_assigned_by_pool_definition_not_prefix(
    sqlite_engine, tmp_path
):
    site = make_settings(
        pools={
            "dteamprd": {"digits": 2},
            "dteamsgm": {"digits": 2},
            "atl-prd": {"digits": 2},
            "cms_plt": {"digits": 2},
        }
    )
    sync(
        sqlite_engine,
        site,
        [
            pool("dteam", "dteam", 3, "/dteam"),
            pool("dteamprd", "dteam", 2, "/dteam/Role=production"),
            pool("dteamsgm", "dteam", 1, "/dteam/Role=lcgadmin"),
            pool("atl-prd", "atlas", 2, "/atlas/Role=production"),
            pool("cms_plt", "cms", 1, "/cms/Role=pilot"),
        ],
    )
    accounts = ["dteam001", "dteam002", "dteam003", "dteamprd01", "dteamprd02"]
    accounts += ["dteamsgm01", "atl-prd01", "atl-prd02", "cms_plt01"]
    accounts += ["dteam004", "dteamprd", "ops001"]
    directory = make_gridmapdir(
        tmp_path / "g",
        accounts,
        {
            JANE_LEASE + ":atl-prd": "atl-prd02",
            ALEX_LEASE + ":cms_plt": "cms_plt01",
            "%2fdc%3dorg%2fcn%3dsam": "dteamprd01",
            "%2fdc%3dorg%2fcn%3dkim": "ops001",
        },
    )

    plan = run_import(sqlite_engine, directory)

    assert [(x.account, x.pool) for x in plan.leases] == [
        ("dteamprd01", "dteamprd"),
        ("cms_plt01", "cms_plt"),
        ("atl-prd02", "atl-prd"),
    ]
    assert plan.unknown_accounts == ["dteam004", "dteamprd", "ops001"]
    assert [(f.kind, f.detail) for f in plan.findings] == [
        ("unknown_account", "linked to unknown account ops001")
    ]


def test_inode_with_more_than_two_names_is_reported_not_imported(
    sqlite_engine, tmp_path
):
    site = atlas_site()
    atlas_pools(sqlite_engine, site)
    directory = make_gridmapdir(
        tmp_path / "g",
        ["atlas001"],
        {JANE_LEASE: "atlas001", ALEX_LEASE: "atlas001"},
    )
    plan = run_import(sqlite_engine, directory)
    assert sorted(f.kind for f in plan.findings) == ["shared", "shared"]
    assert lease_table(sqlite_engine) == []


def test_conflicts_with_poolmgr_leases_are_reported(sqlite_engine, tmp_path):
    site = atlas_site()
    atlas_pools(sqlite_engine, site)
    map_dn(sqlite_engine, site, "/DC=org/DC=example/CN=Kim", "/atlas")
    map_dn(sqlite_engine, site, "/DC=org/DC=example/CN=Jane Roe", "/atlas")
    directory = make_gridmapdir(
        tmp_path / "g",
        ["atlas001", "atlas003", "atlasprd01"],
        {
            ALEX_LEASE: "atlas001",
            JANE_LEASE: "atlas003",
            "%2fdc%3dorg%2fcn%3dcarol:atlasprd:mapcount=0002": "atlasprd01",
        },
    )
    plan = run_import(sqlite_engine, directory)
    details = sorted(f.detail for f in plan.findings)
    assert [f.kind for f in plan.findings] == ["conflict"] * 3
    assert details[0].startswith("mapcount 2")
    assert "already gives this person another account in pool atlas" in details[1]
    assert "already leases atlas001 to '/DC=org/DC=example/CN=Kim'" in details[2]
    assert plan.leases == []


def test_a_later_gridmapdir_use_moves_last_use_forward_only(sqlite_engine, tmp_path):
    site = atlas_site()
    atlas_pools(sqlite_engine, site)
    jane = "/DC=org/DC=example/CN=Jane Roe"
    map_dn(sqlite_engine, site, jane, "/atlas", now=at("2025-04-01T00:00Z"))
    directory = make_gridmapdir(tmp_path / "g", ["atlas001"], {JANE_LEASE: "atlas001"})

    plan = run_import(sqlite_engine, directory)
    assert plan.count("refresh") == 1
    assert lease_table(sqlite_engine)[0][3] == MAY_1

    map_dn(sqlite_engine, site, jane, "/atlas", now=at("2025-06-01T00:00Z"))
    assert run_import(sqlite_engine, directory).count("unchanged") == 1
    assert lease_table(sqlite_engine)[0][3] == at("2025-06-01T00:00Z")


def test_same_person_twice_in_one_pool_keeps_the_latest_used(sqlite_engine, tmp_path):
    site = atlas_site()
    atlas_pools(sqlite_engine, site)
    directory = make_gridmapdir(
        tmp_path / "g",
        ["atlas001", "atlas002"],
        {JANE_LEASE: "atlas001", JANE_LEASE.upper(): "atlas002"},
    )
    later = datetime_to_ns(at("2025-05-02T00:00Z"))
    os.utime(directory / "atlas002", ns=(later, later))
    plan = run_import(sqlite_engine, directory)
    assert [x.account for x in plan.leases] == ["atlas002"]
    assert [f.kind for f in plan.findings] == ["conflict"]


def test_progress_is_reported_while_reading_checking_and_writing(
    sqlite_engine, tmp_path, monkeypatch
):
    monkeypatch.setattr(scan_module, "PROGRESS_EVERY", 2)
    monkeypatch.setattr(importer_module, "PROGRESS_EVERY", 2)
    atlas_pools(sqlite_engine, atlas_site())
    accounts = [f"atlas00{n}" for n in range(1, 6)]
    leases = {f"%2fdc%3dorg%2fcn%3dp{n}": f"atlas00{n}" for n in range(1, 5)}
    directory = make_gridmapdir(tmp_path / "g", accounts, leases)
    seen: list[tuple[str, int]] = []
    with unit_of_work(sqlite_engine) as session:
        import_gridmapdir(session, directory, progress=lambda *a: seen.append(a))
    assert seen == [
        ("read", 2),
        ("read", 4),
        ("read", 6),
        ("read", 8),
        ("checked", 2),
        ("checked", 4),
        ("written", 2),
        ("written", 4),
    ]


# Export.


def leases_for_export(engine, site):
    atlas_pools(engine, site)
    jane = "/DC=org/DC=example/CN=Jane Roe"
    map_dn(engine, site, jane, "/atlas", now=at("2025-05-20T10:00:00.123456Z"))
    map_dn(engine, site, jane, "/atlas/Role=production", now=at("2025-05-21T00:00Z"))
    map_dn(engine, site, "/DC=org/DC=example/CN=José", "/atlas", now=MAY_1)


EXPORT_NOW = at("2025-06-01T00:00:00Z")


def export(engine, directory: Path, **options: object):
    options.setdefault("quiet", atlas_site().quiet)
    options.setdefault("now", EXPORT_NOW)
    with unit_of_work(engine, write=False) as session:
        return export_gridmapdir(session, directory, **options)


def test_export_writes_accounts_links_and_last_use(sqlite_engine, tmp_path):
    site = atlas_site()
    leases_for_export(sqlite_engine, site)
    target = tmp_path / "out"

    result = export(sqlite_engine, target)

    names = sorted(path.name for path in target.iterdir())
    assert names == [
        "%2fdc%3dorg%2fdc%3dexample%2fcn%3djane%20roe:atlas",
        "%2fdc%3dorg%2fdc%3dexample%2fcn%3djane%20roe:atlasprd",
        "%2fdc%3dorg%2fdc%3dexample%2fcn%3djos%5cxc3%5cxa9:atlas",
        "atlas001",
        "atlas002",
        "atlas003",
        "atlas004",
        "atlas005",
        "atlasprd01",
        "atlasprd02",
        "atlasprd03",
    ]
    jane = os.stat(target / names[0])
    assert os.path.samestat(jane, os.stat(target / "atlas001"))
    assert jane.st_nlink == 2 and os.stat(target / "atlas003").st_nlink == 1
    assert jane.st_mtime_ns == datetime_to_ns(at("2025-05-20T10:00:00.123456Z"))
    assert oct(jane.st_mode & 0o777) == "0o644"
    assert oct(target.stat().st_mode & 0o777) == "0o755"
    assert (result.accounts_created, result.links_created) == (8, 3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("suffix", "expected"),
    [
        ("auto", [":atlas", ":atlasprd"]),
        ("group", [":atlas", ":atlasprd"]),
        ("none", [""]),
    ],
    ids=["auto", "group", "none"],
)
def test_export_suffix_modes(sqlite_engine, tmp_path, suffix, expected):
    site = atlas_site()
    atlas_pools(sqlite_engine, site)
    jane = "/DC=org/DC=example/CN=Jane Roe"
    map_dn(sqlite_engine, site, jane, "/atlas", now=at("2025-05-20T00:00Z"))
    map_dn(sqlite_engine, site, jane, "/atlas/Role=production", now=MAY_1)

    result = export(sqlite_engine, tmp_path / "out", suffix=suffix)

    names = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name[0] == "%")
    assert names == [JANE_LEASE + tail for tail in expected]
    if suffix == "none":
        assert [f.kind for f in result.findings] == ["conflict"]
        assert os.path.samestat(
            os.stat(tmp_path / "out" / JANE_LEASE), os.stat(tmp_path / "out/atlas001")
        ), "the more recently used lease must win the shared name"


def test_export_suffix_auto_leaves_dn_only_leases_bare(sqlite_engine, tmp_path):
    site = atlas_site()
    atlas_pools(sqlite_engine, site)
    directory = make_gridmapdir(tmp_path / "g", ["atlas001"], {JANE_LEASE: "atlas001"})
    run_import(sqlite_engine, directory)
    export(sqlite_engine, tmp_path / "out", pools=["atlas"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir())[0] == JANE_LEASE


def test_export_refuses_a_non_empty_directory_without_update(sqlite_engine, tmp_path):
    atlas_pools(sqlite_engine, atlas_site())
    target = tmp_path / "out"
    target.mkdir()
    export(sqlite_engine, target)
    assert len(list(target.iterdir())) == 8
    with pytest.raises(PolicyError, match="not empty"):
        export(sqlite_engine, target)


def hold_and_ban(engine, account: str, dn: str) -> None:
    with unit_of_work(engine) as session:
        hold_account(session, account, reason="incident", actor="sec", now=MAY_1)
        add_ban(session, dn_entry(dn), reason="incident", actor="sec", now=MAY_1)


def test_export_leaves_held_free_accounts_out_and_reports_banned_holders(
    sqlite_engine, tmp_path
):
    site = atlas_site()
    leases_for_export(sqlite_engine, site)
    hold_and_ban(sqlite_engine, "atlas003", "/DC=org/DC=example/CN=Jane Roe")
    target = tmp_path / "out"

    result = export(sqlite_engine, target, pools=["atlas"])

    names = {path.name for path in target.iterdir()}
    assert "atlas003" not in names, "LCMAPS would hand a held free account out"
    assert {"atlas001", "atlas002", "atlas004", "atlas005"} <= names
    assert os.stat(target / "atlas001").st_nlink == 2, "frozen: nobody else gets it"
    assert [(f.kind, f.name) for f in result.findings] == [
        ("held", "atlas003"),
        ("frozen", "atlas001"),
    ]
    assert "ban_dn plugin" in result.findings[1].detail


def test_update_removes_the_file_of_an_account_held_since(sqlite_engine, tmp_path):
    site = atlas_site()
    leases_for_export(sqlite_engine, site)
    target = tmp_path / "out"
    export(sqlite_engine, target, pools=["atlas"])
    hold_and_ban(sqlite_engine, "atlas003", "/DC=org/DC=example/CN=Nobody Here")

    result = export(sqlite_engine, target, pools=["atlas"], update=True)

    assert not (target / "atlas003").exists()
    assert result.accounts_removed == 1
    assert export(sqlite_engine, target, pools=["atlas"], update=True).findings == [
        Finding("held", "atlas003", result.findings[0].detail)
    ]


def test_export_leaves_out_free_accounts_lcmaps_must_not_hand_out(
    sqlite_engine, tmp_path
):
    # LCMAPS knows no quiet period and no cleanup: a free account whose
    # quiet period still runs, or whose cleanup has not succeeded, must not
    # appear as a file with one link.
    site = atlas_site()
    atlas_pools(sqlite_engine, site)
    with unit_of_work(sqlite_engine) as session:
        accounts = {a.name: a for a in session.scalars(select(Account))}
        accounts["atlas001"].last_used_at = at("2025-05-01T00:00:00Z")  # resting
        accounts["atlas002"].last_used_at = at("2024-11-30T23:59:59Z")  # rested
        accounts["atlas003"].state = "cleaning"
        accounts["atlas004"].last_used_at = at("2025-05-01T00:00:00Z")
        accounts["atlas004"].quiet_waived_at = at("2025-05-02T00:00:00Z")
    target = tmp_path / "out"

    result = export(sqlite_engine, target, pools=["atlas"])

    assert sorted(path.name for path in target.iterdir()) == [
        "atlas002",
        "atlas004",
        "atlas005",
    ], "only accounts LCMAPS may give to a newcomer now"
    assert [(f.kind, f.name) for f in result.findings] == [
        ("resting", "atlas001"),
        ("out_of_service", "atlas003"),
    ]
    assert "quiet period until 2025-11-01T00:00:00Z" in result.findings[0].detail
    at_end = export(
        sqlite_engine,
        target,
        pools=["atlas"],
        update=True,
        now=at("2025-11-01T00:00:00Z"),
    )
    assert (target / "atlas001").exists(), "exported once its quiet period is over"
    assert [(f.kind, f.name) for f in at_end.findings] == [
        ("out_of_service", "atlas003")
    ]


@pytest.mark.parametrize("state", ["free", "cleaning"])
def test_update_unlinks_an_ended_lease_whose_account_is_left_out(
    sqlite_engine, tmp_path, state
):
    # The lease ended inside the quiet period (or its cleanup failed): LCMAPS
    # must neither map the former holder to the account through the old link
    # nor, once that link is gone, hand the solitary file to a newcomer.
    site = atlas_site()
    leases_for_export(sqlite_engine, site)
    target = tmp_path / "out"
    export(sqlite_engine, target, pools=["atlas"])
    jose_link = next(p for p in target.iterdir() if "jos" in p.name)
    with unit_of_work(sqlite_engine) as session:
        jose = session.scalars(
            select(Lease).join(Account).where(Account.name == "atlas002")
        ).one()
        end_lease(session, jose, reason="test", actor="test", now=EXPORT_NOW)
        session.get(Account, jose.account_id).state = state

    result = export(sqlite_engine, target, pools=["atlas"], update=True)

    assert not jose_link.exists(), "the ended lease's link must be removed"
    assert not (target / "atlas002").exists(), "the account must be left out"
    assert (result.links_removed, result.accounts_removed) == (1, 1)
    kinds = {"free": "resting", "cleaning": "out_of_service"}
    assert [(f.kind, f.name) for f in result.findings] == [(kinds[state], "atlas002")]


def test_update_moving_a_link_off_a_resting_account_leaves_it_out(
    sqlite_engine, tmp_path
):
    site = atlas_site()
    leases_for_export(sqlite_engine, site)
    target = tmp_path / "out"
    export(sqlite_engine, target, pools=["atlas"])
    with unit_of_work(sqlite_engine) as session:
        accounts = {a.name: a for a in session.scalars(select(Account))}
        accounts["atlas004"].last_used_at = at("2025-05-30T00:00:00Z")  # resting
    jane = target / (JANE_LEASE + ":atlas")
    os.unlink(jane)
    os.link(target / "atlas004", jane)  # a wrong link onto the resting account
    (target / "atlas004").touch()

    result = export(sqlite_engine, target, pools=["atlas"], update=True)

    assert os.path.samestat(os.stat(jane), os.stat(target / "atlas001"))
    assert not (target / "atlas004").exists(), "solitary once the link moved"
    assert [(f.kind, f.name) for f in result.findings] == [("resting", "atlas004")]


def test_export_of_an_unknown_pool_is_not_found(sqlite_engine, tmp_path):
    atlas_pools(sqlite_engine, atlas_site())
    with pytest.raises(NotFoundError, match="'cms'"):
        export(sqlite_engine, tmp_path / "out", pools=["cms"])
    assert not (tmp_path / "out").exists()


def test_export_then_import_preserves_account_person_and_last_use(engine, tmp_path):
    site = atlas_site()
    leases_for_export(engine, site)
    exported = lease_table(engine)
    export(engine, tmp_path / "out", non_ascii="argus")
    with unit_of_work(engine) as session:
        for lease in session.scalars(select(Lease).where(Lease.open_marker == 1)):
            end_lease(
                session, lease, reason="test", actor="test", now=at("2026-01-01T00:00Z")
            )

    plan = run_import(engine, tmp_path / "out")

    assert plan.findings == []
    assert lease_table(engine) == exported


def test_update_brings_an_existing_gridmapdir_in_line(sqlite_engine, tmp_path):
    site = atlas_site()
    leases_for_export(sqlite_engine, site)
    target = tmp_path / "out"
    export(sqlite_engine, target)
    jane_atlas = target / (JANE_LEASE + ":atlas")
    kim = target / "%2fdc%3dorg%2fcn%3dkim"
    os.link(target / "atlas005", kim)
    os.unlink(jane_atlas)
    os.link(target / "atlas004", jane_atlas)
    (target / "%2fdc%3dorg%2fcn%3dsolo").touch()
    (target / "unrelated").write_text("x")
    end_open_lease(sqlite_engine, "atlas002", at("2026-01-01T00:00Z"))

    ended = at("2026-01-01T00:00Z")
    result = export(sqlite_engine, target, update=True, now=ended)

    assert (result.links_removed, result.links_replaced, result.links_created) == (
        3,
        1,
        0,
    )
    assert not kim.exists() and not (target / "%2fdc%3dorg%2fcn%3dsolo").exists()
    assert os.path.samestat(os.stat(jane_atlas), os.stat(target / "atlas001"))
    assert os.stat(target / "atlas004").st_nlink == 1
    assert os.stat(target / "atlas002").st_mtime_ns == datetime_to_ns(MAY_1)
    assert (target / "unrelated").read_text() == "x"
    assert export(sqlite_engine, target, update=True, now=ended).times_set == 0


def test_update_never_gives_an_account_file_a_third_name(
    sqlite_engine, tmp_path, monkeypatch
):
    # LCMAPS readers fail a person whose account file has more than two
    # names. José's link wrongly sits on Jane's account and Jane's link is
    # missing: José's must move before Jane's is made.
    site = atlas_site()
    leases_for_export(sqlite_engine, site)
    target = tmp_path / "out"
    export(sqlite_engine, target)
    jane = target / (JANE_LEASE + ":atlas")
    jose = target / "%2fdc%3dorg%2fdc%3dexample%2fcn%3djos%5cxc3%5cxa9:atlas"
    os.unlink(jane)
    os.unlink(jose)
    os.link(target / "atlas001", jose)
    counts: list[int] = []
    real_link = os.link

    def counting_link(source, destination):
        real_link(source, destination)
        counts.append(os.stat(destination).st_nlink)

    monkeypatch.setattr(os, "link", counting_link)

    result = export(sqlite_engine, target, update=True)

    assert (result.links_replaced, result.links_created) == (1, 1)
    assert counts and max(counts) == 2, f"link counts during the update: {counts}"
    assert os.path.samestat(os.stat(jane), os.stat(target / "atlas001"))
    assert os.path.samestat(os.stat(jose), os.stat(target / "atlas002"))


@pytest.mark.parametrize(
    ("link_time", "problem"),
    [
        ("2026-03-01T00:00:00Z", "its quiet period runs until 2026-07-01T00:00:00Z"),
        ("2026-01-15T00:00:00Z", "after this link's last use"),
        ("2026-07-01T00:00:00Z", None),
    ],
    ids=["inside-quiet-period", "before-previous-end", "after-quiet-period"],
)
def test_import_never_hands_an_account_on_inside_the_quiet_period(
    sqlite_engine, tmp_path, link_time, problem
):
    from poolmgr.leases import end_lease

    site = atlas_site()
    atlas_pools(sqlite_engine, site)
    map_dn(
        sqlite_engine,
        site,
        "/DC=org/DC=example/CN=Bob",
        "/atlas",
        now=at("2026-01-01T00:00:00Z"),
    )
    with unit_of_work(sqlite_engine) as session:
        lease = session.scalars(select(Lease)).one()
        end_lease(
            session,
            lease,
            reason="quiet_period",
            actor="recycle",
            now=at("2026-02-01T00:00:00Z"),
        )
    directory = make_gridmapdir(
        tmp_path / "g", ["atlas001"], {ALEX_LEASE: "atlas001"}, when=at(link_time)
    )
    plan = run_import(sqlite_engine, directory)
    if problem is None:
        assert [lease.account for lease in plan.leases] == ["atlas001"]
        return
    assert plan.leases == []
    assert [f.kind for f in plan.findings] == ["conflict"]
    assert problem in plan.findings[0].detail
