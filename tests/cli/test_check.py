"""poolmgr check: one line on stdout and a Nagios exit code, whatever happens."""

import pytest

from poolmgr.cli import main


def person(n: int) -> str:
    return f"/DC=org/DC=example/CN=Person {n}"


def test_a_database_not_created_yet_is_critical_and_stays_absent(cli, tmp_path):
    result = cli("check")
    assert (result.code, result.err) == (2, "")
    assert result.out == (
        f"POOLMGR CRITICAL - database file {tmp_path / 'cli.db'} does not exist\n"
    )
    assert not (tmp_path / "cli.db").exists()


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
        "OK bans",
    ]


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
