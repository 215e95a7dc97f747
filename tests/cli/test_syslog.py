"""Syslog at the command line: every state change, at its priority, greppable."""

import os
import shutil
import socket

import pytest
from freezegun import freeze_time

from poolmgr.cli import main
from tests.cli.conftest import write_site

FALSE = shutil.which("false")
JANE = "/DC=org/DC=example/CN=Jane Roe"
# local3 is facility 19: priority = 19 * 8 + severity.
INFO, DEBUG, WARNING = b"<158>", b"<159>", b"<156>"


@pytest.fixture
def syslog_site(tmp_path):
    """A site whose syslog is a test socket; yields a runner and the socket."""
    address = tmp_path / "log"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(address))
    config = write_site(
        tmp_path,
        "quiet_period: 30 days\n"
        f"recycle:\n  cleanup_command: [{FALSE}]\n"
        f"syslog:\n  facility: local3\n  address: {address}\n",
    )

    def run(*args: str) -> int:
        return main(["--config", str(config), *args])

    yield run, receiver
    receiver.close()


def _drain(receiver: socket.socket) -> list[bytes]:
    receiver.settimeout(0.5)
    lines = []
    try:
        while True:
            lines.append(receiver.recv(65536).rstrip(b"\x00"))
    except TimeoutError:
        return lines


def _event(line: bytes) -> str:
    return line.split(b"event=")[1].split(b" ")[0].decode()


def test_every_state_change_of_a_cli_run_reaches_syslog(
    syslog_site, capsys, monkeypatch
):
    run, receiver = syslog_site
    monkeypatch.setenv("SUDO_USER", "sam")
    with freeze_time("2025-01-01T00:00:00Z"):
        assert run("sync") == 0
        assert run("map", JANE, "--fqan", "/atlas") == 0
        assert run("map", JANE, "--fqan", "/atlas") == 0
    with freeze_time("2025-01-31T00:00:00Z"):
        assert run("recycle") == 1, "the cleanup command fails"
    capsys.readouterr()
    lines = _drain(receiver)
    tag = f"poolmgr[{os.getpid()}]: ".encode()
    assert all(line[5:].startswith(tag) for line in lines), lines

    changes = [(line[:5], _event(line)) for line in lines if _event(line) != "mapped"]
    assert changes == [
        (INFO, "sync_pool_created"),
        (INFO, "sync_pool_created"),
        (INFO, "sync_accounts_added"),
        (INFO, "sync_accounts_added"),
        (INFO, "sync_rules_replaced"),
        (INFO, "lease_started"),
        (INFO, "lease_ended"),
        (WARNING, "cleanup_failed"),
    ]
    created = next(line for line in lines if b"sync_pool_created" in line)
    assert b"actor=sam " in created, "sync records who ran it"
    mapped = [line for line in lines if _event(line) == "mapped"]
    assert [line[:5] for line in mapped] == [DEBUG, DEBUG], "routine: debug"
    assert mapped[1].endswith(
        b'event=mapped account=atlas001 pool=atlas new=False dn="'
        + JANE.encode()
        + b'" fqan=/atlas lease_id=1'
    )
    [failed] = [line for line in lines if _event(line) == "cleanup_failed"]
    assert b"account=atlas001" in failed and JANE.encode() in failed
    assert b'reason="cleanup failed: exit status 1"' in failed
