"""Engine set-up: what every server connection is given."""

import socket

import pytest

from poolmgr import db
from tests.conftest import BACKENDS, _server_engine

SERVERS = [backend for backend in BACKENDS if backend != "sqlite"]


def _tcp_options(sock: socket.socket) -> dict[str, int]:
    return {
        "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        "user_timeout": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
    }


def _server_socket(raw) -> socket.socket:
    driver = raw.driver_connection
    if hasattr(driver, "pgconn"):
        # A duplicate of libpq's descriptor: the same socket, closed apart.
        return socket.socket(fileno=socket.dup(driver.pgconn.socket))
    return driver._sock


@pytest.mark.parametrize("backend", SERVERS)
def test_server_connections_give_up_on_a_vanished_server(backend):
    # Without these a request that meets a network partition waits about
    # 15 minutes for the kernel, holding a service worker all that time.
    engine = _server_engine(backend)
    raw = engine.raw_connection()
    try:
        sock = _server_socket(raw)
        options = _tcp_options(sock)
        if hasattr(raw.driver_connection, "pgconn"):
            sock.close()
    finally:
        raw.close()
    limit = db.DEAD_PEER_SECONDS
    assert options == {
        "keepalive": 1,
        "idle": limit // 3,
        "interval": limit // 6,
        "count": 3,
        "user_timeout": limit * 1000,
    }, f"{engine.dialect.name} connection lacks the dead-peer limits"
