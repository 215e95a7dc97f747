"""poolmgr who, history and audit at the command line."""

import csv
import io
import json
import os

import pytest
from freezegun import freeze_time

DREW = "/DC=org/DC=example/CN=Drew Past"
DREW_RFC2253 = "CN=Drew Past,DC=example,DC=org"
ELI = "/DC=org/DC=example/CN=Eli Next"
REASON = "home dir 2 TB, user left VO"


@pytest.fixture
def handed_over(cli):
    """Drew held atlas001 from September; an override gave it to Eli on 1 March."""
    cli("sync")
    with freeze_time("2024-09-01T00:00:00Z"):
        cli("map", DREW, "--fqan", "/atlas")
        cli("map", "/DC=org/DC=example/CN=B", "--fqan", "/atlas")
        cli("map", "/DC=org/DC=example/CN=C", "--fqan", "/atlas")
    with freeze_time("2025-03-01T00:00:00Z"):
        forced = cli("recycle", "--force", "atlas001", "--reason", REASON, "--by", "a1")
        assert forced.code == 0, forced.err
        assert cli("map", ELI, "--fqan", "/atlas").out == "atlas001\n"
    with freeze_time("2025-03-05T00:00:00Z"):
        cli("map", DREW, "--fqan", "/atlas/Role=production")
    return cli


def test_who_answers_with_the_holder_at_each_time(handed_over):
    before = handed_over("who", "atlas001", "--at", "2025-02-10T14:00Z")
    after = handed_over("who", "atlas001", "--at", "2025-03-02T00:00:00+00:00")
    assert before.code == after.code == 0
    assert before.out == (
        f"atlas001 at 2025-02-10T14:00:00Z: {DREW}\n"
        "  lease 1, pool atlas, started 2024-09-01T00:00:00Z, last use "
        "2024-09-01T00:00:00Z, ended 2025-03-01T00:00:00Z (override by a1)\n"
    )
    assert after.out.startswith(f"atlas001 at 2025-03-02T00:00:00Z: {ELI}\n")
    assert after.out.endswith(", still open\n")


def test_who_json_and_nobody(handed_over):
    found = json.loads(
        handed_over("who", "atlas001", "--at", "2025-02-10T15:00+01:00", "--json").out
    )
    assert (found["at"], found["holder"]["dn"]) == ("2025-02-10T14:00:00Z", DREW)
    assert found["holder"]["end_note"] == REASON
    empty = handed_over("who", "atlas001", "--at", "2024-08-31T23:59:59Z", "--json")
    assert json.loads(empty.out)["holder"] is None
    text = handed_over("who", "atlas001", "--at", "2024-08-31T23:59:59Z")
    assert text.out == "atlas001 at 2024-08-31T23:59:59Z: nobody\n"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["atlas001", "--at", "2025-02-10T14:00"], 2, "has no zone"),
        (["atlas404", "--at", "2025-02-10T14:00Z"], 11, "'atlas404'"),
        (["atlas001", "--tz", "Mars/Olympus"], 2, "'Mars/Olympus'"),
        (["atlas001", "--at", "9999-12-31T23:59:59-12:00"], 2, "outside the years"),
        (["atlas001", "--tz", "Europe"], 2, "'Europe' is not known"),
        (["atlas001", "--tz", "Z" * 5000], 2, "is not known"),
    ],
    ids=["no-zone", "unknown-account", "unknown-zone", "overflow", "dir", "huge"],
)
def test_who_rejects_bad_input(handed_over, args, code, message):
    result = handed_over("who", *args)
    assert (result.code, result.out) == (code, "")
    assert message in result.err
    assert result.err.count("\n") == 1, "one line on stderr"


@freeze_time("2025-06-01T12:00:00Z")
def test_who_at_now_answers_and_a_second_later_is_refused(handed_over):
    now = handed_over("who", "atlas001", "--at", "2025-06-01T12:00:00Z")
    assert (now.code, now.err) == (0, "")
    assert now.out.startswith(f"atlas001 at 2025-06-01T12:00:00Z: {ELI}\n")
    later = handed_over("who", "atlas001", "--at", "2025-06-01T12:00:01Z")
    assert (later.code, later.out) == (2, "")
    assert later.err == (
        "poolmgr: --at 2025-06-01T12:00:01Z is in the future (now is "
        "2025-06-01T12:00:00Z); leave out --at to ask who holds it now.\n"
    )


def test_history_lists_every_lease_of_a_person_in_any_dn_form(handed_over):
    result = handed_over("history", DREW_RFC2253, "--json")
    data = json.loads(result.out)
    assert data["dn"] == DREW
    assert [
        (row["account"], row["pool"], row["end_reason"]) for row in data["leases"]
    ] == [("atlas001", "atlas", "override"), ("atlasprd001", "atlasprd", None)]

    text = handed_over("history", DREW, "--tz", "Europe/Zurich")
    assert text.out.splitlines()[0] == f"dn: {DREW}"
    assert "2025-03-01T01:00:00+01:00" in text.out
    assert handed_over("history", ELI.replace("Eli", "Nobody")).code == 11


def test_audit_text_lists_the_override(handed_over):
    result = handed_over("audit", "--since", "2025-01-01")
    assert result.code == 0
    override = next(line for line in result.out.splitlines() if "a1" in line)
    assert "atlas001" in override and REASON in override
    assert "no account went to another person inside its quiet period" in result.out


def test_audit_formats_to_stdout(handed_over):
    data = json.loads(
        handed_over("audit", "--format", "json", "--since", "2025-01-01").out
    )
    assert data["overrides"][0]["actor"] == "a1"
    rows = csv.DictReader(io.StringIO(handed_over("audit", "--format", "csv").out))
    assert {"summary", "pool", "idle"} <= {row["section"] for row in rows}


def test_audit_html_is_written_atomically_to_a_file(handed_over, tmp_path):
    target = tmp_path / "reports" / "audit.html"
    target.parent.mkdir()
    target.write_text("old report")
    result = handed_over(
        "audit", "--format", "html", "--output", str(target), "--since", "2025-01-01"
    )
    assert (result.code, result.out, result.err) == (0, "", "")
    assert os.stat(target).st_mode & 0o777 == 0o640
    assert [p.name for p in target.parent.iterdir()] == ["audit.html"]
    page = target.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 2
    assert REASON in page


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--since", "last week"], 2, "'last week'"),
        (["--format", "pdf"], 2, "pdf"),
        (["--output", "/nonexistent/dir/audit.txt"], 1, "Cannot write"),
        (["--since", "0001-01-01T00:00+14:00"], 2, "outside the years 1 to 9999"),
        (["--since", "2026-13-01"], 2, "Date '2026-13-01' does not exist"),
    ],
    ids=["bad-since", "bad-format", "unwritable", "since-overflow", "no-such-date"],
)
def test_audit_failures_exit_with_documented_codes(cli, args, code, message):
    cli("sync")
    result = cli("audit", *args)
    assert (result.code, result.out) == (code, "")
    assert message in result.err


def test_text_audit_sections_with_a_verdict_do_not_add_none(cli):
    cli("sync")
    lines = cli("audit").out.splitlines()
    start = lines.index(
        "History check: handovers inside the quiet period without an override (0)"
    )
    assert lines[start + 1 : start + 3] == [
        "0 lease(s) checked: no account went to another person inside its quiet "
        "period without an override.",
        "",
    ]
    restricted = lines.index("Frozen and held accounts now (never recycled) (0)")
    assert lines[restricted + 2] == "", "a note then '(none)' reads twice"
