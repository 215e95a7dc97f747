"""Exports for configuration management, and adopting a YAIM site (F15)."""

import grp
import pwd
import stat

import pytest
from sqlalchemy import select

from poolmgr import nss
from poolmgr.adoption import import_users_conf
from poolmgr.cli.pool import card_specs
from poolmgr.db import unit_of_work
from poolmgr.errors import BadInputError, ConflictError, NoPoolMatchError
from poolmgr.files import write_atomically
from poolmgr.groupsconf import import_groups_conf
from poolmgr.models import Account, Pool
from poolmgr.pools import sync_pools
from poolmgr.provisioning import ExportOptions, export_text
from poolmgr.vocards import load_cards
from poolmgr.yaim import parse_groups_conf, parse_users_conf
from tests.conftest import make_settings
from tests.factories import at, map_dn, pool, sync

NOW = at("2026-03-01T12:00:00Z")
JANE = "/DC=org/DC=example/CN=Jane Roe"

# A fictitious site as YAIM configured it: per-VO uid ranges, production,
# software and pilot accounts with the VO group as a secondary group.
USERS_CONF = """\
# users.conf of a fictitious site
18001:dteam001:18000:dteam:dteam::
18002:dteam002:18000:dteam:dteam::
18003:dteam003:18000:dteam:dteam::
19001:dteamprd01:19000,18000:dteamprd,dteam:dteam:prd:
19002:dteamprd02:19000,18000:dteamprd,dteam:dteam:prd:
19101:dteamsgm01:19100,18000:dteamsgm,dteam:dteam:sgm:
20001:atlas001:20000:atlas:atlas::
20002:atlas002:20000:atlas:atlas::
21001:atlplt01:21000,20000:atlasplt,atlas:atlas:pilot:
"""
GROUPS_CONF = """\
"/dteam/ROLE=lcgadmin":::sgm:
"/dteam/ROLE=production":::prd:
"/dteam"::::
"/atlas/ROLE=pilot":::pilot:
"/atlas"::::
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def import_users(engine, settings, path):
    with unit_of_work(engine) as session:
        return import_users_conf(session, settings, path, NOW)


def import_groups(engine, path, out_dir, **options):
    with unit_of_work(engine, write=False) as session:
        return import_groups_conf(session, path, out_dir, **options)


def snapshot(engine):
    with unit_of_work(engine, write=False) as session:
        rows = session.execute(
            select(Account.name, Account.uid, Account.state, Pool.name, Pool.gid)
            .join(Pool)
            .order_by(Account.uid)
        )
        return [tuple(row) for row in rows]


def export(engine, kind, types=None, **options):
    with unit_of_work(engine, write=False) as session:
        return export_text(session, kind, ExportOptions(**options), types)


def adopt(engine, settings, tmp_path):
    """Import the fictitious site's users.conf and groups.conf, then sync."""
    import_users(engine, settings, write(tmp_path, "users.conf", USERS_CONF))
    cards = tmp_path / "vocards"
    import_groups(engine, write(tmp_path, "groups.conf", GROUPS_CONF), cards)
    with unit_of_work(engine) as session:
        return sync_pools(session, settings, card_specs(load_cards(cards)), NOW)


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('"/atlas"::::', ("/atlas", "atlas", "", "", None)),
        (
            '"/atlas/ROLE=lcgadmin":::sgm:',
            ("/atlas/Role=lcgadmin", "atlas", "sgm", "", None),
        ),
        (
            '"/atlas/Role=pilot":::pilot:atlas',
            ("/atlas/Role=pilot", "atlas", "pilot", "", None),
        ),
        (
            '"/atlas/lcg1":atlaslcg1:1399::',
            ("/atlas/lcg1", "atlas", "", "atlaslcg1", 1399),
        ),
        ('"/atlas":::', ("/atlas", "atlas", "", "", None)),
        ('"/atlas/uk/*"::::', ("/atlas/uk/*", "atlas", "", "", None)),
    ],
    ids=[
        "plain",
        "sgm-uppercase-role",
        "pilot-with-vo",
        "group-only",
        "short",
        "subtree",
    ],
)
def test_groups_conf_lines_parse_to_rule_vo_flag_and_group(line, expected):
    (parsed,), problems = parse_groups_conf(line, "groups.conf")
    assert problems == []
    assert (parsed.rule, parsed.vo, parsed.flag, parsed.group, parsed.gid) == expected


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("12:atlas001:1000:atlas:atlas", "is not UID:LOGIN:GIDS:GROUPS:VO:FLAG:"),
        ("x12:atlas001:1000:atlas:atlas::", "uid 'x12' is not a number"),
        ("0:atlas001:1000:atlas:atlas::", "uid '0' is not a number"),
        ("12:atlas001:1000,1001:atlas:atlas::", "2 gid(s) '1000,1001' but 1 group"),
        ("12:Atlas001:1000:atlas:atlas::", "login name 'Atlas001' is not valid"),
        ("12:atlas001:1000:atlas:ATLAS::", "VO name 'ATLAS' is not valid"),
    ],
    ids=["fields", "uid-text", "uid-zero", "gid-count", "login", "vo"],
)
def test_bad_users_conf_lines_are_problems_naming_the_line(line, message):
    lines, problems = parse_users_conf(f"# header\n{line}\n", "users.conf")
    assert lines == []
    assert len(problems) == 1
    assert problems[0].startswith("users.conf:2: ")
    assert message in problems[0]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/atlas::::", 'is not "FQAN":GROUP:GID:FLAG:'),
        ('"/atlas"::x::', "gid 'x' is not a number"),
        ('"atlas"::::', "must start with '/'"),
        ('"/atlas":::sgm:cms', "VO field 'cms' differs from the VO of '/atlas'"),
        ('"/atlas"::::::', 'is not "FQAN":GROUP:GID:FLAG:VO'),
    ],
    ids=["unquoted", "gid", "fqan", "foreign-vo", "fields"],
)
def test_bad_groups_conf_lines_are_problems_naming_the_line(line, message):
    lines, problems = parse_groups_conf(line, "groups.conf")
    assert lines == []
    assert problems[0].startswith("groups.conf:1: ")
    assert message in problems[0]


# -------------------------------------------------------------- users.conf


def test_users_conf_import_keeps_real_uids_groups_and_flags(engine, site, tmp_path):
    report = import_users(engine, site, write(tmp_path, "users.conf", USERS_CONF))
    assert [plan.name for plan in report.pools] == [
        "atlas",
        "atlplt",
        "dteam",
        "dteamprd",
        "dteamsgm",
    ]
    with unit_of_work(engine, write=False) as session:
        prd = session.scalars(select(Pool).where(Pool.name == "dteamprd")).one()
        uids = dict(session.execute(select(Account.name, Account.uid)).all())
    assert (prd.vo, prd.prefix, prd.digits, prd.first_uid) == (
        "dteam",
        "dteamprd",
        2,
        19000,
    )
    assert (prd.group_name, prd.gid, prd.flag, prd.secondary_groups) == (
        "dteamprd",
        19000,
        "prd",
        "dteam:18000",
    )
    assert (prd.size, prd.declared_size) == (2, 2)
    assert uids["dteamprd02"] == 19002 and uids["atlplt01"] == 21001
    assert len(uids) == 9


def test_sync_after_import_changes_no_account_and_routes(engine, site, tmp_path):
    result = adopt(engine, site, tmp_path)
    assert [change.kind for change in result.changes] == ["rules_replaced"]
    before = snapshot(engine)
    assert (
        sync(engine, site, card_specs(load_cards(tmp_path / "vocards"))).changes == []
    )
    assert snapshot(engine) == before

    mapping = map_dn(engine, site, JANE, "/dteam/Role=production", now=NOW)
    assert (mapping.account, mapping.uid, mapping.gid) == ("dteamprd01", 19001, 19000)
    assert map_dn(engine, site, JANE, "/atlas/Role=pilot", now=NOW).uid == 21001


def test_import_writes_one_card_per_vo_in_groups_conf_order(
    sqlite_engine, site, tmp_path
):
    import_users(sqlite_engine, site, write(tmp_path, "users.conf", USERS_CONF))
    report = import_groups(
        sqlite_engine, write(tmp_path, "groups.conf", GROUPS_CONF), tmp_path / "out"
    )
    assert [path.name for path in report.cards] == ["atlas.yaml", "dteam.yaml"]
    (dteam,) = load_cards(tmp_path / "out" / "dteam.yaml")
    assert [(d.name, d.serves, d.accounts, d.type) for d in dteam.pools] == [
        ("dteamsgm", ("/dteam/Role=lcgadmin",), 1, "software"),
        ("dteamprd", ("/dteam/Role=production",), 2, "production"),
        ("dteam", ("/dteam",), 3, "users"),
    ]


def test_conflicts_are_all_reported_and_nothing_is_imported(engine, site, tmp_path):
    sync(engine, site, [pool("cms", "cms", 2, "/cms")])
    existing = snapshot(engine)
    users = write(
        tmp_path,
        "users.conf",
        "100001:ops001:30000:ops:ops::\n"  # uid of cms001
        "30002:ops002:30000:ops:ops::\n"
        "30002:dteam001:30001:dteam:dteam::\n"  # uid twice in the file
        "40001:lhcb001:30000:lhcbusers:lhcb::\n"  # gid 30000 named ops before
        "40501:sgmlhcb:40500:lhcbsgm:lhcb:sgm:\n"  # no number
        "41001:alice001:41000:alice:alice::\n"
        "41003:alice003:41000:alice:alice::\n",  # alice002 missing
    )
    with pytest.raises(ConflictError) as info:
        import_users(engine, site, users)
    message = str(info.value)
    assert message.startswith(f"Import of {users} refused, nothing changed (8 problem")
    lines = message.splitlines()[1:]
    for number, expected in [
        (1, "uid 100001 of ops001 already belongs to account cms001."),
        (1, "uids 30002-100002 of pool ops overlap uids 100001-100002 of pool cms."),
        (3, "uids 30002-30002 of pool dteam overlap uids 30002-100002 of pool ops."),
        (3, f"uid 30002 of dteam001 is already used by ops002 ({users}:2)."),
        (4, f"gid 30000 is named lhcbusers, but ops at {users}:1."),
        (5, "account sgmlhcb has no number"),
        (6, "pool alice is not numbered 1..2 (misses 2, has 3)"),
    ]:
        assert any(
            line.startswith(f"  {users}:{number}: {expected}") for line in lines
        ), expected
    assert snapshot(engine) == existing


@pytest.mark.parametrize(
    ("logins", "expected"),
    [
        (["atlas000", "atlas001"], "pool atlas is not numbered 1..2 (misses 2, has 0)"),
        (["atlas01", "atlas001"], "pool atlas mixes or exceeds number widths"),
        (["atlas01", "atlas001"], "(repeats a number, misses 2)"),
        (["atlas1", "atlas" + "9" * 20], "(misses 2, has 99999999999999999999)"),
        (["atlas001", "atlas001"], "login atlas001 of atlas001 is already used by"),
    ],
    ids=["zero", "widths", "repeat", "huge-number", "same-login-twice"],
)
def test_numbering_problems_are_named(sqlite_engine, site, tmp_path, logins, expected):
    users = write(
        tmp_path,
        "users.conf",
        "".join(
            f"{5001 + i}:{name}:5000:atlas:atlas::\n" for i, name in enumerate(logins)
        ),
    )
    with pytest.raises(ConflictError) as info:
        import_users(sqlite_engine, site, users)
    assert expected in str(info.value)


def test_importing_the_same_file_again_names_each_pool_once(
    sqlite_engine, site, tmp_path
):
    """A second run of an import that succeeded says, one line a pool, that
    the pools are managed already, not once for every account and uid."""
    lines = "".join(
        f"{50000 + n}:atlas{n:03d}:50000:atlas:atlas::\n" for n in range(1, 41)
    ) + "".join(f"{60000 + n}:cms{n:03d}:60000:cms:cms::\n" for n in range(1, 41))
    users = write(tmp_path, "users.conf", lines)
    import_users(sqlite_engine, site, users)
    with pytest.raises(ConflictError) as again:
        import_users(sqlite_engine, site, users)
    assert str(again.value) == (
        f"Import of {users} refused, nothing changed (2 problem(s)):\n"
        f"  {users}:1: pool atlas already exists; an import adopts only pools "
        "poolmgr does not manage yet.\n"
        f"  {users}:41: pool cms already exists; an import adopts only pools "
        "poolmgr does not manage yet."
    )


def test_a_pool_that_exists_or_overlaps_used_uids_is_refused(
    sqlite_engine, site, tmp_path
):
    sync(sqlite_engine, site, [pool("atlas", "atlas", 2, "/atlas")])
    users = write(
        tmp_path,
        "users.conf",
        "50001:atlas001:50000:atlas:atlas::\n"
        "100002:atlasprd01:50500:atlasprd:atlas:prd:\n",
    )
    with pytest.raises(ConflictError) as info:
        import_users(sqlite_engine, site, users)
    message = str(info.value)
    assert "pool atlas already exists" in message
    assert (
        "uids 100002-100002 of pool atlasprd overlap uids 100001-100002 of pool atlas"
        in message
    )


def test_back_to_back_pools_of_a_real_site_import_and_sync_cleanly(
    sqlite_engine, site, tmp_path
):
    lines = [f"{20000 + n}:atlas{n:03d}:2000:atlas:atlas::" for n in range(1, 6)]
    lines += [f"{20005 + n}:atlasprd{n:02d}:2001:atlasprd:atlas:prd:" for n in (1, 2)]
    users = write(tmp_path, "users.conf", "\n".join(lines) + "\n")
    import_users(sqlite_engine, site, users)
    specs = [
        pool("atlasprd", "atlas", 2, "/atlas/Role=production"),
        pool("atlas", "atlas", 5, "/atlas"),
    ]
    changes = sync(sqlite_engine, site, specs).changes
    assert [change.kind for change in changes] == ["rules_replaced"]


def test_site_configuration_that_disagrees_with_the_file_is_refused(
    sqlite_engine, tmp_path
):
    settings = make_settings(pools={"atlas": {"first_uid": 60000, "gid": 2000}})
    users = write(tmp_path, "users.conf", "50001:atlas001:50000:atlas:atlas::\n")
    with pytest.raises(ConflictError) as info:
        import_users(sqlite_engine, settings, users)
    assert "pools.atlas.first_uid is 60000, but the file gives 50000" in str(info.value)
    assert "pools.atlas.gid is 2000, but the file gives 50000" in str(info.value)


def test_unreadable_lines_exit_as_bad_input_listing_the_rest_too(
    sqlite_engine, site, tmp_path
):
    users = write(
        tmp_path,
        "users.conf",
        "garbage\n50001:atlas001:50000:atlas:atlas::\n50001:atlas002:50000:atlas:atlas::\n",
    )
    with pytest.raises(BadInputError) as info:
        import_users(sqlite_engine, site, users)
    assert "users.conf:1: 'garbage' is not" in str(info.value)
    assert "uid 50001 of atlas002 is already used by atlas001" in str(info.value)


def test_irregular_uids_are_kept_and_growth_goes_above_them(
    sqlite_engine, site, tmp_path
):
    users = write(
        tmp_path,
        "users.conf",
        "50001:atlas001:50000:atlas:atlas::\n50007:atlas002:50000:atlas:atlas::\n",
    )
    report = import_users(sqlite_engine, site, users)
    assert report.warnings == [
        "pool atlas: uids do not follow one base; accounts added later get uids "
        "from 50008"
    ]
    sync(sqlite_engine, site, [pool("atlas", "atlas", 3, "/atlas")])
    assert [row[:2] for row in snapshot(sqlite_engine)] == [
        ("atlas001", 50001),
        ("atlas002", 50007),
        ("atlas003", 50008),
    ]


# --------------------------------------------------------------- F15 + NSS


@pytest.fixture
def fake_nss(monkeypatch):
    """NSS of F15: gid 2689 is dteamprd, uid 50502 is oldacct; atlas007 absent."""
    users = {
        "oldacct": 50502,
        **{f"atlas00{n}": 60000 + n for n in (1, 2, 3, 4, 5, 6, 8)},
    }
    groups = {2689: "dteamprd", 60000: "atlas"}

    def fetch(kind, key):
        if kind == "passwd" and key in users:
            return pwd.struct_passwd((key, "x", users[key], 1, "", "/", "/bin/sh"))
        if kind == "uid":
            name = next((n for n, u in users.items() if u == int(key)), None)
            return (
                pwd.struct_passwd((name, "x", int(key), 1, "", "/", "/bin/sh"))
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


def test_f15_gid_name_and_uid_clash_refuse_the_pool(engine, tmp_path, fake_nss):
    settings = make_settings(check_nss=True)
    users = write(
        tmp_path,
        "users.conf",
        "".join(f"5050{n}:atlasprd0{n}:2689:atlasprd:atlas:prd:\n" for n in (1, 2, 3)),
    )
    with pytest.raises(ConflictError) as info:
        import_users(engine, settings, users)
    message = str(info.value)
    assert (
        "users.conf:2: uid 50502 of atlasprd02 belongs to oldacct on this host."
        in message
    )
    assert (
        "users.conf:1: gid 2689 is 'dteamprd' on this host, not 'atlasprd'." in message
    )
    assert snapshot(engine) == []
    with pytest.raises(NoPoolMatchError):
        map_dn(engine, settings, JANE, "/atlas/Role=production")


def test_f15_an_account_missing_from_nss_is_imported_with_a_warning(
    sqlite_engine, tmp_path, fake_nss
):
    settings = make_settings(check_nss=True)
    users = write(
        tmp_path,
        "users.conf",
        "".join(f"6000{n}:atlas00{n}:60000:atlas:atlas::\n" for n in range(1, 9)),
    )
    report = import_users(sqlite_engine, settings, users)
    assert report.warnings == [
        f"{users}:7: account atlas007 does not resolve (defined, unresolvable)"
    ]
    assert len(snapshot(sqlite_engine)) == 8


# -------------------------------------------------------------- groups.conf


def test_groups_conf_problems_write_no_card(sqlite_engine, site, tmp_path):
    import_users(sqlite_engine, site, write(tmp_path, "users.conf", USERS_CONF))
    out = tmp_path / "out"
    out.mkdir()
    (out / "atlas.yaml").write_text("kept\n")
    groups = write(
        tmp_path,
        "groups.conf",
        '"/dteam/ROLE=production":::prd:\n"/dteam"::::\n"/dteam/ROLE=pilot":::pilot:\n'
        '"/atlas"::::\n"/atlas/lcg1":atlaslcg1:1399::\n',
    )
    with pytest.raises(ConflictError) as info:
        import_groups(sqlite_engine, groups, out)
    message = str(info.value)
    assert "groups.conf:3: no imported pool of VO dteam has flag 'pilot'" in message
    assert "pool dteamsgm (VO dteam, flag 'sgm') has no groups.conf line" in message
    assert "pool atlplt (VO atlas, flag 'pilot') has no groups.conf line" in message
    assert f"{out / 'atlas.yaml'}: the VO card exists; use --overwrite." in message
    assert sorted(p.name for p in out.iterdir()) == ["atlas.yaml"]
    assert (out / "atlas.yaml").read_text() == "kept\n"


@pytest.mark.parametrize(
    ("line", "warning"),
    [
        (
            '"/atlas/lcg1":atlaslcg1:1399:lcg1:',
            "/atlas/lcg1 only names group atlaslcg1; poolmgr gives secondary "
            "groups through pools, line skipped",
        ),
        (
            '"/atlas/lcg1":atlaslcg1:1399::',
            "group atlaslcg1 differs from pool atlas's group atlas; the pool's is used",
        ),
    ],
    ids=["no-pool-with-flag", "ordinary-accounts"],
)
def test_a_line_naming_a_group_is_skipped_or_routed_with_a_warning(
    sqlite_engine, site, tmp_path, line, warning
):
    import_users(sqlite_engine, site, write(tmp_path, "users.conf", USERS_CONF))
    groups = write(tmp_path, "groups.conf", GROUPS_CONF + line + "\n")
    report = import_groups(sqlite_engine, groups, tmp_path / "out")
    assert report.warnings == [f"{groups}:6: {warning}"]


def test_dry_run_writes_no_card(sqlite_engine, site, tmp_path):
    import_users(sqlite_engine, site, write(tmp_path, "users.conf", USERS_CONF))
    groups = write(tmp_path, "groups.conf", GROUPS_CONF)
    report = import_groups(sqlite_engine, groups, tmp_path / "out", dry_run=True)
    assert [path.name for path in report.cards] == ["atlas.yaml", "dteam.yaml"]
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ exports


def test_users_conf_round_trips_through_import_and_export(engine, site, tmp_path):
    adopt(engine, site, tmp_path)
    text, warnings = export(engine, "users.conf")
    assert text == "".join(
        line + "\n" for line in USERS_CONF.splitlines() if not line.startswith("#")
    )
    assert warnings == []


def test_groups_conf_round_trips_through_cards_and_sync(sqlite_engine, site, tmp_path):
    adopt(sqlite_engine, site, tmp_path)
    text, _ = export(sqlite_engine, "groups.conf")
    # Cards are read in VO order; each VO keeps its groups.conf order.
    assert text.splitlines() == [
        '"/atlas/Role=pilot":::pilot:',
        '"/atlas"::::',
        '"/dteam/Role=lcgadmin":::sgm:',
        '"/dteam/Role=production":::prd:',
        '"/dteam"::::',
    ]
    exported, problems = parse_groups_conf(text, "export")
    original, _ = parse_groups_conf(GROUPS_CONF, "original")
    assert problems == []
    assert {(g.rule, g.flag) for g in exported} == {(g.rule, g.flag) for g in original}


def test_passwd_and_group_lines_list_accounts_and_secondary_members(
    sqlite_engine, site, tmp_path
):
    adopt(sqlite_engine, site, tmp_path)
    passwd, _ = export(sqlite_engine, "passwd", home_base="/pool/", shell="/bin/sh")
    group, _ = export(sqlite_engine, "group")
    assert passwd.splitlines()[3] == (
        "dteamprd01:x:19001:19000:poolmgr pool dteamprd:/pool/dteamprd01:/bin/sh"
    )
    assert len(passwd.splitlines()) == 9
    assert group.splitlines() == [
        "dteam:x:18000:dteamprd01,dteamprd02,dteamsgm01",
        "dteamprd:x:19000:",
        "dteamsgm:x:19100:",
        "atlas:x:20000:atlplt01",
        "atlasplt:x:21000:",
    ]


def test_pools_made_by_sync_take_their_flag_from_the_card_type(sqlite_engine, site):
    sync(
        sqlite_engine,
        site,
        [
            pool("atlasprd", "atlas", 1, "/atlas/Role=production"),
            pool("atlas", "atlas", 1, "/atlas"),
            pool("atlasamw", "atlas", 1, "/atlas/Role=AMIWriter"),
        ],
    )
    types = {"atlasprd": "production", "atlas": "users", "atlasamw": "other"}
    text, warnings = export(sqlite_engine, "groups.conf", types)
    assert text.splitlines() == [
        '"/atlas/Role=production":::prd:',
        '"/atlas"::::',
        '"/atlas/Role=AMIWriter"::::',
    ]
    assert warnings == [
        "pools atlas, atlasamw of VO atlas share the flag ''; YAIM treats "
        "accounts with one VO and flag as one pool."
    ]


def test_retired_accounts_are_exported_unless_excluded(sqlite_engine, site):
    sync(sqlite_engine, site, [pool("atlas", "atlas", 3, "/atlas")])
    sync(sqlite_engine, site, [pool("atlas", "atlas", 1, "/atlas")])
    every, _ = export(sqlite_engine, "passwd")
    live, _ = export(sqlite_engine, "passwd", include_retired=False)
    assert [line.split(":")[0] for line in every.splitlines()] == [
        "atlas001",
        "atlas002",
        "atlas003",
    ]
    assert [line.split(":")[0] for line in live.splitlines()] == ["atlas001"]


@pytest.mark.parametrize(
    "options",
    [{"home_base": "/home:x"}, {"shell": "bash"}, {"shell": "/bin/sh\n"}],
    ids=["colon", "relative", "newline"],
)
def test_passwd_refuses_a_home_or_shell_that_breaks_the_format(sqlite_engine, options):
    with pytest.raises(BadInputError, match="must be an absolute path"):
        export(sqlite_engine, "passwd", **options)


def test_write_atomically_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "passwd"
    target.write_text("old\n")
    write_atomically(target, "new\n")
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [path.name for path in tmp_path.iterdir()] == ["passwd"]
