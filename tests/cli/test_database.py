"""The database a command works on: its URL, its file, its schema revision."""

import os
import sqlite3
import stat
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from poolmgr import migrate
from poolmgr.cli import main
from poolmgr.settings import default_state_dir

DEAD = "0000dead"


def _set_revision(path, revision: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (revision,))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "database: notaurl\n",
            "database: the value is not a database URL (give sqlite:///PATH, "
            "postgresql://..., mysql://... or mariadb://...)",
        ),
        (
            "database: ftp://x/y\n",
            "database: database backend 'ftp' is not supported "
            "(use sqlite, postgresql, mysql, mariadb)",
        ),
        (
            "database: postgresql+nodriver://h/d\n",
            "database: database driver 'postgresql+nodriver' is not known",
        ),
        (
            "database: sqlite:///a.db\ndatabase: sqlite:///b.db\n",
            "line 2: database: duplicate key 'database' (first at line 1).",
        ),
    ],
    ids=["not-a-url", "foreign-backend", "unknown-driver", "duplicate-key"],
)
def test_a_bad_database_setting_names_file_and_key(tmp_path, capsys, text, message):
    config = tmp_path / "poolmgr.yaml"
    config.write_text(text)
    code = main(["--config", str(config), "pools"])
    _, err = capsys.readouterr()
    assert code == 10
    assert err == f"poolmgr: {config}: {message}\n"


@pytest.mark.parametrize("source", ["--database", "POOLMGR_DATABASE_URL"])
def test_a_bad_database_url_names_the_option_or_variable(capsys, monkeypatch, source):
    args = ["pools"]
    if source == "--database":
        args = ["--database", "notaurl", *args]
    else:
        monkeypatch.setenv(source, "notaurl")
    code = main(args)
    _, err = capsys.readouterr()
    assert code == 10
    assert err.startswith(f"poolmgr: {source}: the value is not a database URL")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://127.0.0.1:1/db?password=s3cretpw",
        "postgresql://u@127.0.0.1:1/db?PassWord=s3cretpw",
        "mysql+pymysql://u@127.0.0.1:1/db?passwd=s3cretpw",
        "postgresql://u:p@ss3cretpw@127.0.0.1:1/db",
    ],
    ids=["query-password", "query-case", "query-passwd", "unencoded-at"],
)
def test_no_message_shows_a_password_however_the_url_carries_it(capsys, url):
    code = main(["--database", url, "pools"])
    _, err = capsys.readouterr()
    assert code == 10, f"expected a bad-configuration exit, got {code}: {err}"
    assert "s3cretpw" not in err, f"the password is shown: {err}"
    assert err.startswith("poolmgr: --database: ") and err.count("\n") == 1


def test_a_dry_run_in_a_missing_directory_names_it(tmp_path, capsys):
    path = tmp_path / "nodir" / "x.db"
    cards = Path(__file__).parents[2] / "vocards"
    code = main(["--database", f"sqlite:///{path}", "sync", "--dry-run", str(cards)])
    _, err = capsys.readouterr()
    assert code == 8
    assert err == (
        f"poolmgr: Database file {path} cannot be opened: the directory "
        f"{path.parent} does not exist.\n"
    )


def test_a_dry_run_sync_plans_without_creating_the_database(cli, tmp_path):
    result = cli("sync", "--dry-run")
    assert result.code == 0, result.err
    assert result.out.startswith("Would make 5 change(s):\n")
    assert list(tmp_path.glob("cli.db*")) == [], "a dry run created the database"
    assert cli("sync").out.startswith("Made 5 change(s):\n")


def test_a_dry_run_recycle_does_not_create_the_database(cli, tmp_path):
    result = cli("recycle", "--dry-run")
    assert (result.code, result.out) == (0, "Nothing to recycle.\n")
    assert list(tmp_path.glob("cli.db*")) == []


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("users.conf", "100001:atlas001:100000:atlas:atlas::\n"),
        ("groups.conf", '"/atlas"::::\n'),
    ],
)
def test_a_dry_run_import_does_not_create_the_database(cli, tmp_path, kind, text):
    source = tmp_path / kind
    source.write_text(text)
    result = cli("import", kind, str(source), "--dry-run")
    assert list(tmp_path.glob("cli.db*")) == [], f"a dry run created it: {result}"


def test_db_status_and_check_do_not_create_the_database(cli, tmp_path):
    status = cli("db", "status")
    assert (status.code, status.err) == (0, ""), status.err
    assert status.out.splitlines()[1:] == [
        "revision: none (no such file)",
        f"head:     {migrate.head_revision()}",
        "state:    not created yet (the first command that uses it does)",
    ]
    checked = cli("db", "check")
    assert checked.code == 8
    assert checked.err == (
        f"poolmgr: Database sqlite:///{tmp_path / 'cli.db'} does not exist.\n"
    )
    assert list(tmp_path.glob("cli.db*")) == [], "asking created the database"


def test_db_status_on_a_fresh_host_creates_nothing(tmp_path, capsys):
    """No configuration and no state directory yet: status says the default
    database is not created, and creates neither it nor its directory."""
    directory = default_state_dir()
    assert directory.is_relative_to(tmp_path) and not directory.exists()
    assert main(["db", "status"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.splitlines()[-1] == (
        "state:    not created yet (the first command that uses it does)"
    )
    assert main(["db", "check"]) == 8
    assert not directory.exists(), "asking created the state directory"


def test_a_tilde_in_an_sqlite_path_is_taken_as_written(tmp_path, capsys, monkeypatch):
    """SQLite opens '~/x.db' below the working directory, so poolmgr does
    too: no stray file appears in the home directory."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert main(["--database", "sqlite:///~/x.db", "pools"]) == 8
    assert capsys.readouterr().err == (
        "poolmgr: Database file ~/x.db cannot be opened: the directory ~ does "
        "not exist.\n"
    )
    assert list(home.iterdir()) == [], "a file was made in the home directory"


def test_the_default_database_is_readable_by_owner_and_group_only(
    tmp_path, capsys, monkeypatch
):
    """With no configuration at all, the first command creates the state
    directory and the database; neither may let other users read the DNs."""
    old = os.umask(0o022)
    try:
        assert main(["pools"]) == 0, capsys.readouterr().err
    finally:
        os.umask(old)
    directory = default_state_dir()
    assert directory.is_relative_to(tmp_path), f"the test escaped to {directory}"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    assert stat.S_IMODE((directory / "poolmgr.db").stat().st_mode) == 0o640


def test_a_new_sqlite_file_at_a_configured_path_is_mode_0640(cli, tmp_path):
    old = os.umask(0o022)
    try:
        assert cli("sync").code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "cli.db").stat().st_mode) == 0o640


@pytest.fixture
def newer(cli, tmp_path):
    """A database that a newer poolmgr upgraded to a revision unknown here."""
    cli("sync")
    _set_revision(tmp_path / "cli.db", DEAD)
    return cli


def test_db_upgrade_refuses_an_unknown_revision(newer, tmp_path):
    result = newer("db", "upgrade")
    assert (result.code, result.out) == (8, "")
    assert result.err == (
        f"poolmgr: Database sqlite:///{tmp_path / 'cli.db'} is at schema revision "
        f"{DEAD}, which this poolmgr (newest revision "
        f"{_head()}) does not know; was it upgraded by a newer poolmgr? Use that "
        "version, or restore a backup.\n"
    )
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    assert rows == [(DEAD,)], "db upgrade changed the revision"


def test_db_status_says_the_revision_is_unknown(newer):
    result = newer("db", "status")
    assert result.code == 8
    assert f"revision: {DEAD}\n" in result.out
    assert result.out.endswith(
        "state:    unknown revision (made by a newer poolmgr?)\n"
    )
    assert "does not know; was it upgraded by a newer poolmgr?" in result.err


@pytest.mark.parametrize(
    "args",
    [("pools",), ("map", "/DC=org/CN=x", "--fqan", "/atlas"), ("db", "check")],
    ids=["pools", "map", "db-check"],
)
def test_other_commands_refuse_an_unknown_revision(newer, args):
    result = newer(*args)
    assert (result.code, result.out) == (8, "")
    assert f"is at schema revision {DEAD}, which this poolmgr" in result.err
    assert result.err.count("\n") == 1


def test_check_is_critical_on_an_unknown_revision(newer):
    result = newer("check")
    assert result.code == 2
    assert result.out.startswith(
        f"POOLMGR CRITICAL - database is at schema revision {DEAD}, which this poolmgr"
    )


def _head() -> str:
    return ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
