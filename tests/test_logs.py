"""Logging set-up: syslog on a datagram or a stream socket, or none at all."""

import logging
import socket

import pytest

from poolmgr.logs import setup_logging
from poolmgr.settings import SyslogSettings


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
    assert [type(h).__name__ for h in handlers] == ["StreamHandler"]
