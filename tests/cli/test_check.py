"""poolmgr check: one line on stdout and a Nagios exit code, whatever happens."""

import pytest
from sqlalchemy.exc import SQLAlchemyError

from poolmgr import health
from poolmgr.cli import main
from tests.cli.conftest import edit_site

# Performance data of the test site's two pools, after every probe line.
PERFDATA = " | 'atlas'=3;1:;1:;0;3 'atlasprd'=2;1:;1:;0;2 'invariant_violations'=0;;0;0"


def person(n: int) -> str:
    return f"/DC=org/DC=example/CN=Person {n}"


def test_a_database_not_created_yet_is_critical_and_stays_absent(cli, tmp_path):
    result = cli("check")
    assert (result.code, result.err) == (2, "")
    assert result.out == (
        f"POOLMGR CRITICAL - database file {tmp_path / 'cli.db'} does not exist\n"
    )
    assert not (tmp_path / "cli.db").exists()


def test_a_database_without_pools_is_critical(cli):
    """A site never synced, or a mistyped SQLite path that made a new empty
    database, maps nobody: monitoring must not call that healthy."""
    assert cli("pools").code == 0
    result = cli("check")
    assert result.code == 2, result.out
    assert result.out.startswith(
        "POOLMGR CRITICAL - no live pool, so every mapping fails: run "
        "'poolmgr sync', or check that the database is the site's"
    ), result.out


def test_a_healthy_site_is_ok_and_verbose_lists_every_check(cli):
    cli("sync")
    result = cli("check", "--verbose")
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[0].startswith("POOLMGR OK - database schema current (")
    assert [line.split(":")[0] for line in lines[1:]] == [
        "OK database",
        "OK pools",
        "OK nss",
        "OK accounts",
        "OK invariants",
        "OK bans",
        "OK dn_only_pool",
        "OK syslog",
    ]
    assert lines[0].endswith(
        " | 'atlas'=3;1:;1:;0;3 'atlasprd'=2;1:;1:;0;2 'invariant_violations'=0;;0;0"
    ), "performance data: available accounts per pool, then invariant violations"


@pytest.mark.parametrize(
    ("mapped", "options", "code", "line"),
    [
        (1, [], 0, "POOLMGR OK - database schema current"),
        (
            2,
            ["--warning", "50"],
            1,
            "POOLMGR WARNING - pools near exhaustion (available/accounts): atlas 1/3",
        ),
        (
            3,
            [],
            2,
            "POOLMGR CRITICAL - pools exhausted (available/accounts): atlas 0/3",
        ),
    ],
    ids=["ok", "warning", "critical"],
)
def test_pool_exhaustion_sets_the_exit_code(cli, mapped, options, code, line):
    cli("sync")
    for n in range(mapped):
        cli("map", person(n), "--fqan", "/atlas")
    result = cli("check", *options)
    assert result.code == code
    assert result.out.startswith(line)
    assert result.out.count("\n") == 1


def test_a_bad_configuration_is_unknown_in_one_line(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("quiet_period: soon\n")
    code = main(["--config", str(config), "check"])
    out, err = capsys.readouterr()
    assert code == 3
    assert out.startswith(f"POOLMGR UNKNOWN - configuration: {config}: quiet_period")
    assert out.count("\n") == 1


def test_an_unreachable_database_is_critical_in_one_line(tmp_path, capsys):
    config = tmp_path / "poolmgr.yaml"
    config.write_text(
        "database: postgresql://poolmgr@127.0.0.1:1/poolmgr\n"
        "syslog:\n  enabled: false\n"
    )
    code = main(["--config", str(config), "check"])
    out, _ = capsys.readouterr()
    assert code == 2
    assert out.startswith(
        "POOLMGR CRITICAL - database postgresql://poolmgr@127.0.0.1:1/poolmgr "
        "is unavailable: "
    )
    assert out.count("\n") == 1


def test_check_help_documents_the_nagios_codes(cli):
    result = cli("check", "--help")
    text = " ".join(result.out.split())
    assert "0 OK, 1 WARNING, 2 CRITICAL" in text and "3 UNKNOWN" in text


@pytest.mark.parametrize(
    ("args", "env", "where"),
    [
        (["--database", "notaurl"], None, "--database"),
        ([], "notaurl", "POOLMGR_DATABASE_URL"),
        ([], "ftp://x/y", "POOLMGR_DATABASE_URL"),
    ],
    ids=["option", "environment", "foreign-backend"],
)
def test_a_bad_database_url_is_unknown_in_one_line(
    tmp_path, capsys, monkeypatch, args, env, where
):
    if env is not None:
        monkeypatch.setenv("POOLMGR_DATABASE_URL", env)
    code = main([*args, "check"])
    out, err = capsys.readouterr()
    assert (code, err) == (3, ""), f"expected UNKNOWN and no stderr, got {out}{err}"
    assert out.startswith(f"POOLMGR UNKNOWN - configuration: {where}: ")
    assert out.count("\n") == 1


def test_a_bad_database_url_in_the_file_is_unknown_naming_file_and_key(
    tmp_path, capsys
):
    config = tmp_path / "poolmgr.yaml"
    config.write_text("database: notaurl\n")
    code = main(["--config", str(config), "check"])
    out, _ = capsys.readouterr()
    assert code == 3
    assert out.startswith(
        f"POOLMGR UNKNOWN - configuration: {config}: database: the value is not "
        "a database URL"
    )


def test_a_failure_while_reporting_a_failure_is_still_unknown(
    tmp_path, capsys, monkeypatch
):
    def broken(url, exc):
        raise RuntimeError("broken reporter")

    monkeypatch.setattr(health, "_unavailable", broken)
    monkeypatch.setattr(
        health, "run_checks", lambda *a: (_ for _ in ()).throw(SQLAlchemyError("x"))
    )
    code = main(["check"])
    out, _ = capsys.readouterr()
    assert code == 3
    assert out == "POOLMGR UNKNOWN - check failed: RuntimeError: broken reporter\n"


def test_a_dn_only_pool_that_does_not_exist_is_critical(cli, tmp_path):
    cli("sync")
    edit_site(
        tmp_path, "check_nss: false\n", "check_nss: false\ndn_only_pool: nopool\n"
    )
    result = cli("check")
    assert result.code == 2
    assert result.out == (
        "POOLMGR CRITICAL - dn_only_pool names a pool that does not exist "
        "('nopool'); DN-only requests fail"
        f"{PERFDATA}\n"
    )


def test_a_dn_only_pool_that_exists_is_ok(cli, tmp_path):
    cli("sync")
    edit_site(tmp_path, "check_nss: false\n", "check_nss: false\ndn_only_pool: atlas\n")
    result = cli("check", "--verbose")
    assert result.code == 0
    assert "OK dn_only_pool: dn_only_pool atlas live" in result.out.splitlines()


def test_an_unreachable_syslog_is_a_warning_naming_it(cli, tmp_path):
    cli("sync")
    missing = tmp_path / "no-such-log"
    edit_site(tmp_path, "enabled: false\n", f"address: {missing}\n")
    result = cli("check")
    assert result.code == 1
    assert result.out == (
        f"POOLMGR WARNING - syslog {missing} is unreachable "
        f"(No such file or directory){PERFDATA}\n"
    )


def test_a_database_url_that_does_not_parse_is_unknown_in_one_line(capsys):
    code = main(["--database", "postgresql://u:SECRET@db:port/poolmgr", "check"])
    out, err = capsys.readouterr()
    assert (code, err) == (3, "")
    assert (
        out == "POOLMGR UNKNOWN - configuration: --database: the value is not a "
        "database URL (give sqlite:///PATH, postgresql://..., mysql://... or "
        "mariadb://...).\n"
    ), "the password is never repeated"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--bogus"], "No such option: --bogus"),
        (["-w", "lots"], "Invalid value for '--warning' / '-w'"),
    ],
    ids=["unknown-option", "bad-threshold"],
)
def test_a_mistyped_probe_definition_is_critical_in_one_line(cli, args, line):
    result = cli("check", *args)
    assert result.code == 2
    assert result.out.startswith(f"POOLMGR CRITICAL - usage: {line}")
    assert result.out.count("\n") == 1
    assert result.err.startswith(f"poolmgr check: {line}"), "one usage line on stderr"
    assert result.err.count("\n") == 1


def test_other_check_commands_keep_plain_usage_errors(cli):
    result = cli("vocards", "check", "--bogus")
    assert (result.code, result.out) == (2, "")
