"""Site settings that only show their faults when a command runs."""

import sqlite3

from tests.cli.conftest import edit_site


def test_an_unreachable_syslog_warns_once_and_events_are_still_written(cli, tmp_path):
    missing = tmp_path / "no-log"
    edit_site(tmp_path, "enabled: false\n", f"address: {missing}\n")
    result = cli("-v", "sync")
    assert result.code == 0
    warnings = [line for line in result.err.splitlines() if "warning" in line]
    assert warnings == [
        f"poolmgr: warning: syslog {missing} is unreachable (No such file or "
        "directory); log lines are not sent to syslog, events are still "
        "recorded in the database."
    ], f"expected one warning for the whole run, got {result.err!r}"
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        (events,) = conn.execute("SELECT count(*) FROM events").fetchone()
    assert events == 5, "the event rows must be written without syslog"


def test_a_dn_only_pool_that_does_not_exist_is_named_when_mapping(
    cli, tmp_path, capsys
):
    cli("sync")
    edit_site(tmp_path, "check_nss: false\n", "check_nss: false\ndn_only_pool: x\n")
    result = cli("map", "/DC=org/CN=Jane")
    assert result.code == 3
    assert result.err == (
        "poolmgr: No FQAN given for '/DC=org/CN=Jane' and no pool serves DN-only "
        "requests: dn_only_pool is not set, or names a pool that does not exist "
        "or is retired ('poolmgr check' says which).\n"
    )


def test_a_duplicate_key_in_a_vo_card_is_refused_with_its_line(cli, tmp_path):
    card = tmp_path / "vocards" / "atlas.yaml"
    card.write_text(card.read_text() + "vo: atlas\n")
    result = cli("sync")
    assert result.code == 10
    lines = card.read_text().count("\n")
    assert result.err == (
        f"poolmgr: {card}:{lines}: vo: duplicate key 'vo' (first at line 2).\n"
    )


def test_a_mistyped_vocards_path_names_the_setting_and_its_file(cli, tmp_path):
    edit_site(tmp_path, f"vocards: {tmp_path / 'vocards'}", "vocards: /nonexistent")
    config = tmp_path / "poolmgr.yaml"
    for command in (["sync"], ["vocards", "check"]):
        result = cli(*command)
        assert (result.code, result.err) == (
            10,
            "poolmgr: /nonexistent: no such file or directory (the vocards "
            f"setting of {config}).\n",
        ), f"poolmgr {' '.join(command)} must name the setting it read"
    assert not (tmp_path / "cli.db").exists(), "a failed sync created the database"
