"""poolmgr map, leases, show, pools, sync and db at the command line."""

import json

import pytest

from poolmgr.cli import app, main

JANE = "/DC=org/DC=example/CN=Jane Roe"


def test_sync_then_map_prints_the_account(cli):
    assert cli("sync").code == 0
    result = cli("map", JANE, "--fqan", "/atlas")
    assert (result.code, result.out, result.err) == (0, "atlas001\n", "")


def test_map_json_has_the_documented_fields(cli):
    cli("sync")
    result = cli(
        "map", JANE, "--fqan", "/atlas/Role=production", "--fqan", "/atlas", "--json"
    )
    data = json.loads(result.out)
    assert {
        "account",
        "uid",
        "gid",
        "groups",
        "pool",
        "dn",
        "fqan",
        "lease_id",
        "new",
    } <= set(data)
    assert (data["account"], data["pool"], data["fqan"], data["new"]) == (
        "atlasprd001",
        "atlasprd",
        "/atlas/Role=production",
        True,
    )
    assert data["groups"][0] == data["gid"] and len(data["groups"]) == 2


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["not a dn", "--fqan", "/atlas"], 2, "poolmgr: "),
        ([JANE, "--fqan", "atlas"], 2, "'atlas'"),
        ([JANE, "--fqan", "/cms"], 3, "No pool serves FQAN '/cms'."),
        ([JANE, "--fqan", "/atlas", "--verify"], 7, "No open lease"),
    ],
    ids=["bad-dn", "bad-fqan", "no-pool", "verify-without-lease"],
)
def test_map_failures_exit_with_documented_codes(cli, args, code, message):
    cli("sync")
    result = cli("map", *args)
    assert result.code == code
    assert result.out == ""
    assert message in result.err
    assert result.err.count("\n") == 1


def test_exhausted_pool_exits_4_naming_the_pool(cli):
    cli("sync")
    for n in range(2):
        cli("map", f"/DC=org/DC=example/CN=P{n}", "--fqan", "/atlas/Role=production")
    result = cli("map", JANE, "--fqan", "/atlas/Role=production")
    assert result.code == 4
    assert result.err.startswith("poolmgr: Pool atlasprd has no free account")


def test_map_help_documents_the_exit_codes(cli):
    result = cli("map", "--help")
    assert result.code == 0
    for text in ("0 mapped", "2 bad input", "3 no pool matches", "4 pool exhausted"):
        assert text in " ".join(result.out.split())


def test_every_command_has_a_help_line():
    import typer

    def walk(group, path):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                yield from walk(command, [*path, name])
            else:
                yield " ".join([*path, name]), command

    for name, command in walk(typer.main.get_command(app), []):
        assert command.help and command.help.strip(), f"{name} has no help"


def test_sync_dry_run_changes_nothing_and_twice_is_a_no_op(cli):
    plan = cli("sync", "--dry-run")
    assert plan.code == 0 and plan.out.startswith("Would make")
    assert "pool_created" in plan.out
    assert cli("pools", "--json").out.strip() == "[]"
    assert cli("sync").out.startswith("Made")
    assert cli("sync").out == "Nothing to change.\n"


def test_pools_leases_and_show(cli):
    cli("sync")
    cli("map", JANE, "--fqan", "/atlas")
    pools = json.loads(cli("pools", "--json").out)
    atlas = next(p for p in pools if p["name"] == "atlas")
    assert (atlas["size"], atlas["leased"], atlas["free"]) == (3, 1, 2)
    leases = cli("leases")
    assert leases.out.splitlines()[0].split()[:3] == ["LEASE", "ACCOUNT", "POOL"]
    assert "atlas001" in leases.out and JANE in leases.out
    assert (
        json.loads(
            cli("leases", "--dn", "CN=Jane Roe,DC=example,DC=org", "--json").out
        )[0]["account"]
        == "atlas001"
    )
    shown = cli("show", "atlas001")
    assert f"holder:    {JANE}" in shown.out
    assert cli("show", "nobody42").code == 11


def test_db_status_and_check(cli):
    cli("pools")
    status = cli("db", "status")
    assert "state:    up to date" in status.out
    assert cli("db", "check").code == 0
    assert cli("db", "upgrade").out.startswith("Schema already at")


def test_broken_config_is_one_line_and_exit_10(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("quiet_period: -3 days\n")
    code = main(["--config", str(config), "pools"])
    err = capsys.readouterr().err
    assert code == 10
    assert err.startswith(f"poolmgr: {config}: quiet_period:")
    assert err.count("\n") == 1


def test_unreachable_database_is_one_line_and_exit_8(tmp_path, capsys):
    code = main(["--database", "postgresql+psycopg://nobody@127.0.0.1:1/none", "pools"])
    err = capsys.readouterr().err
    assert code == 8
    assert err.startswith(
        "poolmgr: Database postgresql+psycopg://nobody@127.0.0.1:1/none is unavailable"
    )
    assert err.count("\n") == 1


def test_usage_errors_exit_2(cli):
    assert cli("map").code == 2
    assert cli("frobnicate").code == 2


def test_rules_lists_the_routing_table_in_order(cli):
    cli("sync")
    lines = cli("rules").out.splitlines()
    assert lines[0].split() == ["#", "RULE", "POOL", "VO"]
    assert [line.split()[1:3] for line in lines[1:]] == [
        ["/atlas/Role=production", "atlasprd"],
        ["/atlas", "atlas"],
    ]


def test_vocards_check_exits_10_on_a_bad_card(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: poolmgr-vocard/1\nvo: Bad VO\n")
    result = cli("vocards", "check", str(bad))
    assert result.code == 10
    assert result.err.startswith(f"{bad}:2: vo:")


def test_a_mistyped_sqlite_path_fails_instead_of_starting_a_new_history(
    tmp_path, capsys
):
    missing = tmp_path / "no-such-dir" / "poolmgr.db"
    code = main(["--database", f"sqlite:///{missing}", "pools"])
    assert code == 8
    assert capsys.readouterr().err == (
        f"poolmgr: Database file {missing} cannot be opened: the directory "
        f"{missing.parent} does not exist.\n"
    )
    assert not missing.parent.exists()
