"""The command-line surface shared by every command: files, usage, pipes."""

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
def test_an_output_file_that_is_a_directory_is_one_line_exit_1(
    cli, tmp_path, command
):
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
