"""poolmgr export and poolmgr import at the command line."""

USERS_CONF = """\
18001:dteam001:18000:dteam:dteam::
18002:dteam002:18000:dteam:dteam::
19001:dteamprd01:19000,18000:dteamprd,dteam:dteam:prd:
"""
GROUPS_CONF = '"/dteam/ROLE=production":::prd:\n"/dteam"::::\n'


def test_export_passwd_prints_sorted_lines(cli):
    cli("sync")
    result = cli("export", "passwd", "--home-base", "/pool", "--shell", "/bin/sh")
    assert (result.code, result.err) == (0, "")
    assert result.out.splitlines() == [
        "atlasprd001:x:100001:100000:poolmgr pool atlasprd:/pool/atlasprd001:/bin/sh",
        "atlasprd002:x:100002:100000:poolmgr pool atlasprd:/pool/atlasprd002:/bin/sh",
        "atlas001:x:101001:100001:poolmgr pool atlas:/pool/atlas001:/bin/sh",
        "atlas002:x:101002:100001:poolmgr pool atlas:/pool/atlas002:/bin/sh",
        "atlas003:x:101003:100001:poolmgr pool atlas:/pool/atlas003:/bin/sh",
    ]


def test_export_to_a_file_prints_nothing_and_warns_on_shared_flags(cli, tmp_path):
    cli("sync")
    target = tmp_path / "users.conf"
    result = cli("export", "users.conf", "--output", str(target))
    assert (result.code, result.out) == (0, "")
    assert result.err == (
        "poolmgr: warning: pools atlas, atlasprd of VO atlas share the flag ''; "
        "YAIM treats accounts with one VO and flag as one pool.\n"
    )
    assert target.read_text().splitlines()[0] == (
        "100001:atlasprd001:100000:atlasprd:atlas::"
    )


def test_an_unknown_export_is_a_usage_error(cli):
    result = cli("export", "shadow")
    assert result.code == 2
    assert "'shadow' is not one of" in result.err


def test_adopting_a_site_then_sync_changes_no_account(cli, tmp_path):
    users = tmp_path / "users.conf"
    users.write_text(USERS_CONF)
    groups = tmp_path / "groups.conf"
    groups.write_text(GROUPS_CONF)
    cards = tmp_path / "adopted"

    result = cli("import", "users.conf", str(users))
    assert (result.code, result.err) == (0, "")
    assert result.out.splitlines() == [
        "Created 2 pool(s) with 3 account(s):",
        "  dteam        vo=dteam flag='' group=dteam(18000) accounts=2 "
        "uids=18001..18002",
        "  dteamprd     vo=dteam flag='prd' group=dteamprd(19000) accounts=1 "
        "uids=19001..19001",
    ]
    result = cli("import", "groups.conf", str(groups), "--vocards-out", str(cards))
    assert result.out.splitlines() == [
        "Created 1 VO card(s); run 'poolmgr sync' next:",
        f"  {cards / 'dteam.yaml'}",
    ]
    assert cli("sync", str(cards)).out.splitlines()[0] == "Made 1 change(s):"
    assert cli("sync", str(cards)).out == "Nothing to change.\n"
    assert (
        cli(
            "map", "/DC=org/DC=example/CN=Jane Roe", "--fqan", "/dteam/Role=production"
        ).out
        == "dteamprd01\n"
    )


def test_a_conflicting_users_conf_exits_13_and_imports_nothing(cli, tmp_path):
    users = tmp_path / "users.conf"
    users.write_text(USERS_CONF + "18002:dteam003:18001:dteamx:dteam::\n")
    result = cli("import", "users.conf", str(users))
    assert (result.code, result.out) == (13, "")
    lines = result.err.splitlines()
    assert lines[0] == (
        f"poolmgr: Import of {users} refused, nothing changed (2 problem(s)):"
    )
    assert lines[1].startswith(f"  {users}:4: account dteam003 has groups dteamx:18001")
    assert lines[2] == (
        f"  {users}:4: uid 18002 of dteam003 is already used by dteam002 ({users}:2)."
    )
    assert cli("pools", "--json").out.strip() == "[]"


def test_dry_run_reports_and_creates_nothing(cli, tmp_path):
    users = tmp_path / "users.conf"
    users.write_text(USERS_CONF)
    result = cli("import", "users.conf", str(users), "--dry-run")
    assert result.out.startswith("Would create 2 pool(s) with 3 account(s):\n")
    assert cli("pools", "--json").out.strip() == "[]"


def test_import_help_describes_the_adoption_steps(cli):
    result = cli("import", "--help")
    assert result.code == 0
    text = " ".join(result.out.split())
    assert "(3) 'poolmgr sync' installs that routing and changes no account" in text
