"""The command-line surface shared by every command: files, usage, pipes."""

import os
import subprocess
import sys

import pytest

OUTPUT_COMMANDS = {
    "export": ["export", "passwd", "-o"],
    "sizing": ["sizing", "-o"],
    "audit": ["audit", "--output"],
}


@pytest.mark.parametrize("command", OUTPUT_COMMANDS.values(), ids=OUTPUT_COMMANDS)
def test_an_output_file_in_a_missing_directory_is_one_line_exit_1(
    cli, tmp_path, command
):
    cli("sync")
    target = tmp_path / "missing" / "out.txt"
    result = cli(*command, str(target))
    assert (result.code, result.out) == (1, ""), result.err
    assert result.err == (
        f"poolmgr: Cannot write '{target}': No such file or directory.\n"
    )


@pytest.mark.parametrize("command", OUTPUT_COMMANDS.values(), ids=OUTPUT_COMMANDS)
def test_an_output_file_that_is_a_directory_is_one_line_exit_1(cli, tmp_path, command):
    cli("sync")
    target = tmp_path / "reports"
    target.mkdir()
    result = cli(*command, str(target))
    assert (result.code, result.out) == (1, ""), result.err
    assert result.err == f"poolmgr: Cannot write '{target}': Is a directory.\n"
    assert list(target.iterdir()) == [], "nothing may be left behind"


def test_serve_on_a_socket_in_a_missing_directory_names_the_path(cli, tmp_path):
    socket_path = tmp_path / "run" / "poolmgr" / "poolmgr.sock"
    result = cli("serve", "--socket", str(socket_path))
    assert (result.code, result.out) == (1, "")
    assert result.err == (
        f"poolmgr: Cannot create the socket {socket_path}: the directory "
        f"{socket_path.parent} does not exist (create it, or run the systemd "
        "unit, whose RuntimeDirectory=poolmgr creates it).\n"
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["map"], "poolmgr map: Missing argument 'DN'. See 'poolmgr map --help'."),
        (
            ["map", "/CN=x", "--bogus"],
            "poolmgr map: No such option: --bogus. See 'poolmgr map --help'.",
        ),
        (
            ["map", "/CN=x", "--fqan"],
            "poolmgr map: Option '--fqan' requires an argument. "
            "See 'poolmgr map --help'.",
        ),
        (
            ["nosuch"],
            "poolmgr: No such command 'nosuch'. Did you mean 'touch'? "
            "See 'poolmgr --help'.",
        ),
        (
            ["vocards", "check", "--bogus"],
            "poolmgr vocards check: No such option: --bogus. "
            "See 'poolmgr vocards check --help'.",
        ),
        (
            ["-v", "release"],
            "poolmgr release: Missing argument 'ACCOUNT'. "
            "See 'poolmgr release --help'.",
        ),
    ],
    ids=[
        "missing-argument",
        "unknown-option",
        "option-value",
        "unknown-command",
        "subgroup",
        "after-global-option",
    ],
)
def test_a_usage_error_is_one_line_naming_the_command(cli, args, line):
    result = cli(*args)
    assert (result.code, result.out) == (2, "")
    assert result.err == line + "\n"


def test_help_keeps_its_usage_block(cli):
    result = cli("map", "--help")
    assert (result.code, result.err) == (0, "")
    assert result.out.startswith("Usage: poolmgr map [OPTIONS]")


@pytest.mark.parametrize(
    "args",
    [["leases"], ["sync", "--dry-run"], ["export", "passwd"], ["--help"]],
    ids=["leases", "sync-dry-run", "export", "help"],
)
def test_a_closed_stdout_exits_141_silently(cli, tmp_path, args):
    cli("sync")
    cli("map", "/DC=org/DC=example/CN=Jane Roe", "--fqan", "/atlas")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", "from poolmgr.cli import run; run()"]
            + ["--config", str(tmp_path / "poolmgr.yaml"), *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (141, "")
