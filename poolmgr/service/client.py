"""A minimal client of the mapping service, for ``poolmgr query`` and tests."""

import socket
from pathlib import Path

from poolmgr import protocol
from poolmgr.errors import PoolmgrError

_RECV_SIZE = 65536


def send_request(path: Path, request: bytes, timeout: float = 10.0) -> bytes:
    """Send one request line to the service at path and return its reply line.

    Raises PoolmgrError when the service cannot be reached or does not
    answer with a complete line in time.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(path))
            conn.sendall(request)
            return _read_reply(conn)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise PoolmgrError(
            f"Cannot talk to the mapping service at {path}: {reason}."
        ) from None


def _read_reply(conn: socket.socket) -> bytes:
    data = bytearray()
    while b"\n" not in data and len(data) < protocol.LINE_MAX:
        chunk = conn.recv(_RECV_SIZE)
        if not chunk:
            break
        data += chunk
    end = data.find(b"\n")
    if end < 0:
        raise OSError("the service closed the connection without a full reply")
    return bytes(data[: end + 1])
