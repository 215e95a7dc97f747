"""The ban and hold commands at the surface: output lines and exit codes."""

import json
import logging
import sqlite3
from pathlib import Path

import psycopg
import pymysql
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from poolmgr.cli import bans as cli_bans

JANE = "/DC=org/DC=example/CN=Jane Roe"
SAM = "/DC=org/DC=example/CN=Sam Example (guest)"


@pytest.fixture
def central(tmp_path):
    """Configure the ban source 'central' (a file); return the file's path."""
    path = tmp_path / "ban-mapfile"
    with (tmp_path / "poolmgr.yaml").open("a") as config:
        config.write(f"ban_sources:\n  - name: central\n    location: {path}\n")
    return path


def test_ban_refuses_the_person_with_exit_5_and_unban_lets_them_in(cli):
    cli("sync")
    # Entered in RFC 2253 order, the ban is shown in the canonical slash form.
    banned = cli("ban", "CN=Jane Roe,DC=example,DC=org", "--reason", "incident 7")
    assert (banned.code, banned.out) == (
        0,
        f"Banned dn '{JANE}' (ban 1); 0 open lease(s) frozen.\n",
    )
    assert [row["entry"] for row in json.loads(cli("bans", "--json").out)] == [JANE]

    refused = cli("map", JANE + "/CN=proxy", "--fqan", "/atlas")
    assert refused.code == 5
    assert refused.err == (
        f"poolmgr: '{JANE}' is refused: dn ban '{JANE}' entered by hand.\n"
    )

    lifted = cli("unban", JANE, "--reason", "cleared")
    assert (lifted.code, lifted.out) == (0, f"Lifted hand ban 1 on dn '{JANE}'.\n")
    assert cli("map", JANE, "--fqan", "/atlas").out == "atlas001\n"


def test_ban_freezes_the_lease_shown_by_leases_and_show(cli):
    cli("sync")
    cli("map", JANE, "--fqan", "/atlas")
    assert "1 open lease(s) frozen" in cli("ban", JANE, "--reason", "x").out

    header, row = cli("leases").out.splitlines()
    assert header.split()[-2:] == ["STATUS", "DN"]
    assert row.split()[-3:] == ["frozen", *JANE.split()]
    assert json.loads(cli("leases", "--json").out)[0]["status"] == "frozen"
    shown = cli("show", "atlas001")
    assert f"frozen:    holder refused by the dn ban '{JANE}' entered by hand" in (
        shown.out
    )


def test_fqan_ban_and_usage_errors(cli):
    cli("sync")
    assert cli("ban", "--fqan", "/atlas/Role=production", "--reason", "x").code == 0
    assert cli("map", JANE, "--fqan", "/atlas/Role=production").code == 5
    assert cli("map", JANE, "--fqan", "/atlas").code == 0

    both = cli("ban", JANE, "--fqan", "/atlas", "--reason", "x")
    assert (both.code, both.err) == (2, "poolmgr: Give either a DN or --fqan FQAN.\n")
    no_reason = cli("ban", JANE)
    assert (no_reason.code, no_reason.err) == (
        2,
        "poolmgr: A reason is required (--reason TEXT).\n",
    )
    assert cli("unban", JANE, "--reason", "x").code == 11


def test_bans_lists_hand_and_source_bans_apart(cli, central):
    central.write_text(f'"{SAM}"\n')
    synced = cli("bans", "sync")
    assert synced.code == 0
    assert synced.out == f"central: 1 entries, 1 added, 0 removed (sync 1)\n  + {SAM}\n"
    cli("ban", JANE, "--reason", "incident 7", "--by", "alice")

    listed = cli("bans").out.splitlines()
    assert listed[0].split() == [
        "BAN",
        "KIND",
        "ORIGIN",
        "SINCE",
        "BY",
        "FROZEN",
        "LIFTED",
        "ENTRY",
    ]
    assert [line.split()[2] for line in listed[1:]] == ["source:central", "hand"]
    assert [
        row["entry"] for row in json.loads(cli("bans", "--hand", "--json").out)
    ] == [JANE]
    refused = cli("unban", SAM, "--reason", "x")
    assert refused.code == 12 and "from source central" in refused.err


def test_a_source_never_read_refuses_mapping_with_exit_6(cli, central):
    cli("sync")
    unread = cli("bans", "sync", "central")
    assert unread.code == 6 and "cannot read" in unread.err
    refused = cli("map", JANE, "--fqan", "/atlas")
    assert refused.code == 6 and "central has never been read" in refused.err
    sources = cli("bans", "sources").out
    assert "never read: every mapping is refused" in sources


def test_a_bad_line_exits_2_naming_it_and_keeps_the_list(cli, central, caplog):
    central.write_text(f'"{SAM}"\n')
    cli("bans", "sync")
    central.write_text(f'"{SAM}"\n"{JANE}\n')
    caplog.set_level(logging.WARNING, logger="poolmgr.banlists")

    rejected = cli("bans", "sync", "central")

    assert rejected.code == 2
    assert rejected.err.endswith(
        "line 2: the quote is not closed. The list is not used; the bans read "
        "from it before stay in force.\n"
    )
    assert len(json.loads(cli("bans", "--json").out)) == 1
    syncs = json.loads(cli("bans", "syncs", "--json").out)
    assert [row["status"] for row in syncs] == ["rejected", "accepted"]
    changes = cli("bans", "changes", "1")
    assert (
        changes.out == f"sync 1 of central at {syncs[1]['at']}: accepted\n  + {SAM}\n"
    )
    assert cli("bans", "changes", "99").code == 11


def test_unknown_source_exits_11(cli, central):
    assert cli("bans", "sync", "elsewhere").code == 11


def test_hold_release_and_holds(cli):
    cli("sync")
    held = cli("hold", "atlas001", "--reason", "incident 7", "--by", "alice")
    assert (held.code, held.out) == (0, "Account atlas001 held (hold 1).\n")
    assert "already held" in cli("hold", "atlas001", "--reason", "again").out
    assert cli("map", JANE, "--fqan", "/atlas").out == "atlas002\n"
    rows = json.loads(cli("holds", "--json").out)
    assert [(r["account"], r["started_by"], r["reason"]) for r in rows] == [
        ("atlas001", "alice", "incident 7")
    ]
    assert cli("release", "atlas001", "--reason", "closed").out == (
        "Hold 1 on account atlas001 released.\n"
    )
    assert cli("release", "atlas001", "--reason", "closed").code == 11
    assert cli("hold", "nobody01", "--reason", "x").code == 11


def test_release_clears_a_stray_held_flag_and_the_audit_shows_it(cli, tmp_path):
    cli("sync")
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        conn.execute("UPDATE accounts SET held = 1 WHERE name = 'atlas001'")
    released = cli("release", "atlas001", "--reason", "hand edit undone")
    assert (released.code, released.out) == (
        0,
        "Account atlas001 had no standing hold; its stray held flag is cleared "
        "and it returns to circulation.\n",
    )
    audit = cli("audit").out
    assert any(
        "hold_flag_cleared" in line and "hand edit undone" in line
        for line in audit.splitlines()
    ), f"the audit must list the cleared flag:\n{audit}"
    assert cli("release", "atlas001", "--reason", "again").code == 11


def test_every_ban_command_has_help(cli):
    for args in (
        ["ban"],
        ["unban"],
        ["bans"],
        ["bans", "sync"],
        ["bans", "syncs"],
        ["bans", "changes"],
        ["bans", "sources"],
        ["bans", "forget"],
        ["hold"],
        ["release"],
        ["holds"],
    ):
        shown = cli(*args, "--help")
        assert shown.code == 0 and "Usage:" in shown.out, args


def test_ban_sync_units_say_what_when_and_who():
    contrib = Path(__file__).resolve().parents[2] / "contrib"
    service = (contrib / "systemd/poolmgr-bans-sync.service").read_text()
    timer = (contrib / "systemd/poolmgr-bans-sync.timer").read_text()
    cron = (contrib / "cron/poolmgr-bans-sync").read_text()
    assert "ExecStart=/usr/bin/poolmgr bans sync" in service
    assert "User=root" in service
    assert "OnUnitActiveSec=10min" in timer and "OnBootSec=30s" in timer
    assert "*/10 * * * * root /usr/bin/poolmgr bans sync" in cron
    for text in (service, timer, cron):
        comments = " ".join(line for line in text.splitlines() if line.startswith("#"))
        assert "every 10 minutes" in comments and "root" in comments, comments


@pytest.mark.parametrize(
    "orig, code",
    [
        (type("DeadlockDetected", (Exception,), {"sqlstate": "40P01"}), 9),
        (type("SerializationFailure", (Exception,), {"sqlstate": "40001"}), 9),
        (type("LockWaitTimeout", (Exception,), {"args": (1205, "timeout")}), 9),
        (type("SyntaxError", (Exception,), {"sqlstate": "42601"}), 70),
    ],
)
def test_a_clash_with_a_concurrent_writer_is_one_line_and_exit_9(
    cli, monkeypatch, orig, code
):
    """A deadlock or serialization failure rolls the command's transaction
    back: one line that says so, exit 9; any other database error is a bug."""
    assert cli("sync").code == 0

    def clash(*args, **kwargs):
        raise OperationalError("INSERT INTO holds ...", {}, orig("from the server"))

    monkeypatch.setattr(cli_bans, "hold_account", clash)
    result = cli("hold", "atlas001", "--reason", "incident 7")
    assert result.code == code, result.err
    if code == 9:
        assert result.err == (
            "poolmgr hold: the change clashed with a concurrent one and was "
            "rolled back; run the command again.\n"
        )
    else:
        assert "poolmgr: internal error: OperationalError" in result.err
    assert cli("holds").out.count("atlas001") == 0


@pytest.mark.parametrize(
    "orig, code",
    [
        (psycopg.errors.UniqueViolation("duplicate key value"), 9),
        (pymysql.err.IntegrityError(1062, "Duplicate entry '1'"), 9),
        (sqlite3.IntegrityError("UNIQUE constraint failed: holds.id"), 9),
        (psycopg.errors.NotNullViolation("null value in column"), 70),
        (psycopg.errors.CheckViolation("violates check constraint"), 70),
        (pymysql.err.IntegrityError(1048, "Column 'reason' cannot be null"), 70),
        (sqlite3.IntegrityError("CHECK constraint failed: open_state"), 70),
        (sqlite3.IntegrityError("lease is frozen"), 70),
    ],
    ids=[
        "pg-unique",
        "mariadb-unique",
        "sqlite-unique",
        "pg-not-null",
        "pg-check",
        "mariadb-not-null",
        "sqlite-check",
        "sqlite-guard-trigger",
    ],
)
def test_only_a_unique_key_taken_meanwhile_counts_as_a_clash(
    cli, monkeypatch, orig, code
):
    """A unique key taken by another writer clears on a rerun; a NULL, a
    check or a guard trigger refused fails the same way every time, so it
    is reported as the internal error it is, not as a clash to rerun."""
    assert cli("sync").code == 0

    def refused(*args, **kwargs):
        raise IntegrityError("INSERT INTO holds ...", {}, orig)

    monkeypatch.setattr(cli_bans, "hold_account", refused)
    result = cli("hold", "atlas001", "--reason", "incident 7")
    assert result.code == code, result.err
    if code == 70:
        assert "poolmgr: internal error: IntegrityError" in result.err
