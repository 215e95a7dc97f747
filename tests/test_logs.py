"""Logging set-up: syslog on a datagram or a stream socket; an unreachable one
is said once, never silently."""

import logging
import logging.handlers
import socket

import pytest

from poolmgr.logs import setup_logging, syslog_problem
from poolmgr.settings import SyslogSettings

audit = logging.getLogger("poolmgr.audit")


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("poolmgr: warning")]


def test_a_missing_syslog_socket_is_one_warning_for_many_lines(tmp_path, capsys):
    missing = tmp_path / "no-log"
    setup_logging(1, SyslogSettings(address=str(missing)))
    for n in range(3):
        audit.info("event=test n=%s", n)
    err = capsys.readouterr().err
    assert _warnings(err) == [
        f"poolmgr: warning: syslog {missing} is unreachable (No such file or "
        "directory); log lines are not sent to syslog, events are still "
        "recorded in the database."
    ], f"expected one warning line, got {err!r}"
    assert err.count("event=test") == 3, "the -v lines still reach stderr"


def test_nothing_is_said_before_a_line_is_lost(tmp_path, capsys):
    setup_logging(0, SyslogSettings(address=str(tmp_path / "no-log")))
    assert capsys.readouterr().err == ""


def test_a_syslog_that_goes_away_is_one_warning(tmp_path, capsys):
    address = tmp_path / "log"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(address))
    setup_logging(0, SyslogSettings(address=str(address)))
    audit.info("event=first")
    assert receiver.recv(4096).endswith(b"event=first\x00")
    receiver.close()
    address.unlink()
    audit.info("event=second")
    audit.info("event=third")
    assert _warnings(capsys.readouterr().err) == [
        f"poolmgr: warning: syslog {address} stopped accepting lines; log lines "
        "are not sent to syslog, events are still recorded in the database."
    ]


def test_syslog_problem_names_the_address(tmp_path):
    address = tmp_path / "log"
    assert syslog_problem(SyslogSettings(address=str(address))) == (
        f"syslog {address} is unreachable (No such file or directory)"
    )
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(address))
    try:
        assert syslog_problem(SyslogSettings(address=str(address))) is None
    finally:
        receiver.close()
    assert syslog_problem(SyslogSettings(enabled=False, address="/nowhere")) is None


@pytest.mark.parametrize(
    "kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["datagram", "stream"]
)
def test_state_changes_reach_a_local_syslog_socket_of_either_kind(tmp_path, kind):
    address = tmp_path / "log"
    receiver = socket.socket(socket.AF_UNIX, kind)
    receiver.bind(str(address))
    receiver.settimeout(2)
    if kind == socket.SOCK_STREAM:
        receiver.listen(1)
    try:
        setup_logging(0, SyslogSettings(address=str(address), facility="local3"))
        logging.getLogger("poolmgr.audit").info("event=test account=atlas001")
        if kind == socket.SOCK_STREAM:
            connection, _ = receiver.accept()
            connection.settimeout(2)
            data = connection.recv(4096)
            connection.close()
        else:
            data = receiver.recv(4096)
    finally:
        setup_logging(0, None)
        receiver.close()
    # local3 (19) * 8 + info (6) = 158.
    assert data.startswith(b"<158>poolmgr["), data
    assert data.endswith(b"]: event=test account=atlas001\x00"), data


def test_a_missing_local_socket_leaves_syslog_out(tmp_path):
    setup_logging(0, SyslogSettings(address=str(tmp_path / "absent")))
    handlers = logging.getLogger("poolmgr").handlers
    assert not [h for h in handlers if isinstance(h, logging.handlers.SysLogHandler)]
