"""The command-line surface shared by every command: files, usage, pipes."""

import os
import re
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


def _run_with_stdout(tmp_path, args, **stdout):
    return subprocess.run(
        [sys.executable, "-c", "from poolmgr.cli import run; run()"]
        + ["--config", str(tmp_path / "poolmgr.yaml"), *args],
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        check=False,
        **stdout,
    )


def test_a_stdout_that_was_never_open_counts_as_closed(cli, tmp_path):
    cli("sync")
    # close_fds cannot close fd 1; a shell's '>&-' does, so run one.
    command = " ".join(
        [sys.executable, "-c", "'from poolmgr.cli import run; run()'"]
        + ["--config", str(tmp_path / "poolmgr.yaml"), "pools", ">&-"]
    )
    proc = subprocess.run(
        ["/bin/sh", "-c", command],
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stderr) == (141, ""), proc.stderr


@pytest.mark.parametrize(("command", "code"), [("pools", 1), ("check", 3)])
def test_a_failing_stdout_is_one_line_exit_1(cli, tmp_path, command, code):
    cli("sync")
    with open("/dev/full", "w") as full:
        proc = _run_with_stdout(tmp_path, [command], stdout=full)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr == (
        "poolmgr: cannot write to standard output: No space left on device.\n"
    )


JANE = "/DC=org/DC=example/CN=Jane Roe"
UNUSABLE = {"newline": "disk\nfull", "bidi-override": "disk \u202efull"}


def free_text_commands(text: str) -> dict[str, list[str]]:
    """Every command that records free text, with text as reason or actor."""
    return {
        "ban-reason": ["ban", JANE, "--reason", text],
        "ban-by": ["ban", JANE, "--reason", "incident", "--by", text],
        "unban-reason": ["unban", JANE, "--reason", text],
        "hold-reason": ["hold", "atlas001", "--reason", text],
        "hold-by": ["hold", "atlas001", "--reason", "incident", "--by", text],
        "release-reason": ["release", "atlas001", "--reason", text],
        "recycle-reason": ["recycle", "--force", "atlas001", "--reason", text],
        "recycle-by": ["recycle", "--force", "atlas001", "--reason", "x", "--by", text],
        "forget-reason": ["bans", "forget", "old", "--reason", text],
    }


@pytest.mark.parametrize("text", UNUSABLE.values(), ids=UNUSABLE)
@pytest.mark.parametrize("name", free_text_commands(""))
def test_every_reason_and_actor_refuses_control_characters(cli, name, text):
    cli("sync")
    cli("map", JANE, "--fqan", "/atlas")
    result = cli(*free_text_commands(text)[name])
    assert (result.code, result.out) == (2, ""), result.err
    assert "must be printable (no control or invisible characters)" in result.err
    assert result.err.count("\n") == 1
    assert cli("show", "atlas001").out.count("leased") == 1, "nothing changed"


NOT_UTF8 = "atlas001\udcff"
NOT_UTF8_ARGUMENTS = {
    "touch": (["touch", NOT_UTF8], r"'atlas001\xff'"),
    "show": (["show", NOT_UTF8], r"'atlas001\xff'"),
    "who": (["who", NOT_UTF8], r"'atlas001\xff'"),
    "hold": (["hold", NOT_UTF8, "--reason", "incident"], r"'atlas001\xff'"),
    "release": (["release", NOT_UTF8, "--reason", "closed"], r"'atlas001\xff'"),
    "recycle": (["recycle", "--force", NOT_UTF8, "--reason", "x"], r"'atlas001\xff'"),
    "leases": (["leases", "--account", NOT_UTF8], r"'atlas001\xff'"),
    "map": (["map", "/DC=org/CN=J\udcc3", "--fqan", "/atlas"], r"'/DC=org/CN=J\xc3'"),
    "ban": (["ban", JANE, "--reason", "bad \udcfe byte"], r"'bad \xfe byte'"),
}


@pytest.mark.parametrize(
    ("args", "shown"), NOT_UTF8_ARGUMENTS.values(), ids=NOT_UTF8_ARGUMENTS
)
def test_an_argument_that_is_not_utf8_is_one_line_and_exit_2(cli, args, shown):
    """Bytes that are not UTF-8 arrive as lone surrogates; whatever the
    argument, the command refuses them before touching the database."""
    cli("sync")
    cli("map", JANE, "--fqan", "/atlas")
    before = cli("leases", "--json").out
    result = cli(*args)
    assert (result.code, result.out) == (2, ""), result.err
    assert result.err == (
        f"poolmgr {args[0]}: Argument {shown} is not valid UTF-8. "
        f"See 'poolmgr {args[0]} --help'.\n"
    )
    assert cli("leases", "--json").out == before, "a refused command changed leases"


# Each failure with its exit code; the code must be in the command's --help.
DOCUMENTED_FAILURES = {
    "release-no-reason": (["release", "atlas001"], 2),
    "release-not-held": (["release", "atlas001", "--reason", "x"], 11),
    "hold-no-reason": (["hold", "atlas001"], 2),
    "hold-unknown": (["hold", "nosuch", "--reason", "x"], 11),
    "ban-no-reason": (["ban", JANE], 2),
    "forget-no-reason": (["bans", "forget", "old"], 2),
    "forget-unknown": (["bans", "forget", "old", "--reason", "x"], 11),
    "recycle-by-alone": (["recycle", "--by", "bob"], 2),
    "leases-unknown-pool": (["leases", "--pool", "nosuch"], 11),
    "leases-unknown-account": (["leases", "--account", "nosuch"], 11),
    "show-unknown": (["show", "nosuch"], 11),
    "sizing-zero-window": (["sizing", "--window", "0days"], 2),
    "sizing-unwritable": (["sizing", "-o", "/nonexistent/dir/x"], 1),
    "export-unwritable": (["export", "passwd", "-o", "/nonexistent/dir/x"], 1),
    "who-future": (["who", "atlas001", "--at", "2999-01-01T00:00Z"], 2),
    "serve-no-directory": (["serve", "--socket", "/nonexistent/dir/s"], 1),
}


@pytest.mark.parametrize(
    ("args", "code"), DOCUMENTED_FAILURES.values(), ids=DOCUMENTED_FAILURES
)
def test_exit_codes_are_the_documented_ones(cli, args, code):
    cli("sync")
    cli("map", JANE, "--fqan", "/atlas")
    result = cli(*args)
    assert result.code == code, result.err
    assert result.err.startswith("poolmgr: ") and result.err.count("\n") == 1

    words = [w for w in args if not w.startswith("-")][: 2 if args[0] == "bans" else 1]
    help_text = " ".join(cli(*words, "--help").out.split())
    documented = help_text.partition("Exit codes:")[2]
    assert re.search(rf"(?:^ ?|[;:] ){code} ", documented), (
        f"exit code {code} of {' '.join(words)} is not in its --help: {documented!r}"
    )


def test_sizing_rejects_a_window_that_is_not_positive(cli):
    result = cli("sizing", "--window", "0days")
    assert (result.code, result.out) == (2, "")
    assert (
        result.err == "poolmgr: The --window must be longer than zero, not '0days'.\n"
    )


def test_sizing_html_counts_one_person_in_the_singular(cli):
    cli("sync")
    cli("map", JANE, "--fqan", "/atlas")
    page = cli("sizing", "--format", "html").out
    assert ">1 person<" in page or "1 person " in page, page
    assert "1 persons" not in page
