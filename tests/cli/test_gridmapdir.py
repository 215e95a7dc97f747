"""The gridmapdir import and export commands at the surface."""

import json
import os

from poolmgr.gridmapdir.scan import datetime_to_ns
from tests.factories import at

JANE = "%2fdc%3dorg%2fdc%3dexample%2fcn%3djane%20roe"


def make_gridmapdir(directory, leases):
    directory.mkdir()
    for account in ("atlas001", "atlas002", "atlas003", "atlasprd001", "ops001"):
        (directory / account).touch()
    for name, account in leases.items():
        os.link(directory / account, directory / name)
    stamp = datetime_to_ns(at("2025-05-01T00:00Z"))
    for entry in directory.iterdir():
        os.utime(entry, ns=(stamp, stamp))
    return directory


def test_many_unknown_accounts_are_a_count_and_a_sample(cli, tmp_path):
    source = tmp_path / "g"
    source.mkdir()
    for n in range(1, 785):
        (source / f"dteam{n:03d}").touch()

    result = cli("gridmapdir", "import", "--dry-run", "--no-progress", str(source))

    assert result.code == 0, result.err
    assert result.out.splitlines()[-1] == (
        "Unknown accounts (784): dteam001, dteam002, dteam003, dteam004, "
        "dteam005, dteam006, dteam007, dteam008, dteam009, dteam010 and 774 more. "
        "If they are pool accounts, define their pools and run 'poolmgr sync' "
        "before importing (--json lists them all)."
    )


def test_import_dry_run_prints_the_plan_and_problems(cli, tmp_path):
    cli("sync")
    source = make_gridmapdir(tmp_path / "g", {JANE: "atlas002"})
    (source / "%2fdc%3dorg%2fcn%3dsolo").touch()

    result = cli("gridmapdir", "import", "--dry-run", "--no-progress", str(source))

    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == (
        f"{source}: 7 entries; would import 1 lease(s), 0 already known, 0 with a "
        "later last use; 3 free account(s); 1 problem(s); 1 unknown account(s)."
    )
    assert lines[2].split() == ["ACTION", "ACCOUNT", "POOL", "LAST", "USE", "DN"]
    assert lines[3].split() == [
        "create",
        "atlas002",
        "atlas",
        "2025-05-01T00:00:00Z",
        "/DC=org/DC=example/CN=jane",
        "roe",
    ]
    assert lines[5].split()[:2] == ["PROBLEM", "NAME"]
    assert lines[6].split()[:2] == ["stale", "%2fdc%3dorg%2fcn%3dsolo"]
    assert lines[-1] == (
        "Unknown accounts (1): ops001. If they are pool accounts, define their "
        "pools and run 'poolmgr sync' before importing (--json lists them all)."
    )
    assert cli("leases").out.count("\n") == 1, "a dry run must not import"


def test_import_then_leases_shows_the_imported_lease(cli, tmp_path):
    cli("sync")
    source = make_gridmapdir(tmp_path / "g", {JANE: "atlas002"})

    result = cli("gridmapdir", "import", "--json", str(source))

    data = json.loads(result.out)
    assert result.code == 0
    assert [(x["account"], x["action"]) for x in data["leases"]] == [
        ("atlas002", "create")
    ]
    assert "atlas002" in cli("leases").out
    again = json.loads(cli("gridmapdir", "import", "--json", str(source)).out)
    assert [x["action"] for x in again["leases"]] == ["unchanged"]


def test_import_of_a_missing_directory_is_bad_input(cli, tmp_path):
    cli("sync")
    result = cli("gridmapdir", "import", str(tmp_path / "absent"))
    assert result.code == 2
    assert result.err.startswith("poolmgr: Cannot read gridmapdir ")


def test_export_writes_a_new_directory_and_reports_counts(cli, tmp_path):
    cli("sync")
    cli("map", "/DC=org/DC=example/CN=Jane Roe", "--fqan", "/atlas")
    target = tmp_path / "out"

    result = cli("gridmapdir", "export", str(target))

    assert result.code == 0, result.err
    assert result.out == (
        f"{target}: 5 account file(s) created, 1 lease link(s) created, 0 "
        "replaced, 0 removed, 1 time(s) set; 0 problem(s).\n"
    )
    assert (target / (JANE + ":atlas")).stat().st_nlink == 2


def test_export_errors_have_their_exit_codes(cli, tmp_path):
    cli("sync")
    target = tmp_path / "out"
    target.mkdir()
    (target / "x").touch()
    busy = cli("gridmapdir", "export", str(target))
    assert busy.code == 12 and "--update" in busy.err
    unknown = cli("gridmapdir", "export", "--pool", "cms", str(tmp_path / "new"))
    assert (unknown.code, unknown.err) == (
        11,
        "poolmgr: Unknown pool 'cms'; see 'poolmgr pools'.\n",
    )
    mode = cli("gridmapdir", "export", "--suffix", "odd", str(tmp_path / "new"))
    assert mode.code == 2 and "Unknown suffix mode 'odd'" in mode.err


def test_import_progress_goes_to_stderr_phase_by_phase(cli, tmp_path, monkeypatch):
    from poolmgr.gridmapdir import importer, scan

    monkeypatch.setattr(scan, "PROGRESS_EVERY", 4)
    monkeypatch.setattr(importer, "PROGRESS_EVERY", 1)
    cli("sync")
    source = make_gridmapdir(tmp_path / "g", {JANE: "atlas002"})

    result = cli("gridmapdir", "import", "--progress", str(source))

    assert result.code == 0, result.err
    assert result.err.splitlines() == [
        "4 entries read",
        "1 leases checked",
        "1 leases written",
    ]
    assert result.out.startswith(f"{source}: 6 entries; imported 1 lease(s)")
