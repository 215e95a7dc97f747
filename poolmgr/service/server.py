"""The socket side of the service: listening, connections, shutdown.

Idle threads wait in accept() themselves, so the kernel hands each new
connection to exactly one of them without a hand-over between threads; when
the last idle thread takes a connection another is started, up to
``max_clients``. Beyond that, new clients wait in the listen backlog until a
connection closes (their own timeout decides how long), so an idle or slow
client holds one cheap thread and never delays anybody else.
"""

import logging
import os
import select
import signal
import socket
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

from poolmgr import protocol
from poolmgr.errors import PolicyError, PoolmgrError
from poolmgr.events import format_fields
from poolmgr.service.access import AccessPolicy, Peer, peer_groups, peer_of
from poolmgr.service.handler import Handler
from poolmgr.settings import ServiceSettings

logger = logging.getLogger(__name__)

_RECV_SIZE = 65536
_LISTEN_BACKLOG = 128
_REFUSED_DRAIN_LIMIT = 65536  # bytes read from a refused peer before closing
_REFUSED_HOLD = 1.0  # seconds a refused peer may keep its connection


class _Stop:
    """A flag plus a pipe whose read end becomes readable once it is set."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()
        self.is_set = False

    def set(self) -> None:
        if not self.is_set:
            self.is_set = True
            os.write(self._write_fd, b"x")

    def wait(self) -> None:
        """Block until set() has been called (poll: any descriptor number)."""
        poller = select.poll()
        poller.register(self.read_fd, select.POLLIN)
        while not poller.poll():
            pass

    def close(self) -> None:
        """Close the pipe; only once set, so no later set() can write to it."""
        assert self.is_set, "close() before set()"
        os.close(self.read_fd)
        os.close(self._write_fd)


class _Connection:
    """Reads request lines from one client and writes the replies."""

    def __init__(
        self, conn: socket.socket, stop: _Stop, settings: ServiceSettings
    ) -> None:
        self.conn = conn
        self.stop = stop
        self.idle_timeout = settings.idle_timeout
        self.request_timeout = settings.request_timeout
        self.buffer = bytearray()
        self.line_started = 0.0
        self.poller = select.poll()
        self.poller.register(conn, select.POLLIN)
        self.poller.register(stop.read_fd, select.POLLIN)
        conn.settimeout(settings.request_timeout)

    def lines(self) -> Iterator[bytes]:
        """Yield complete lines until EOF, a timeout, stop, or an oversize line.

        An oversize line is answered with ERR BAD_REQUEST here and ends the
        connection.
        """
        while not self.stop.is_set:
            end = self.buffer.find(b"\n", 0, protocol.LINE_MAX)
            if end >= 0:
                line = bytes(self.buffer[: end + 1])
                del self.buffer[: end + 1]
                yield line
                self.line_started = time.monotonic()
                continue
            if len(self.buffer) >= protocol.LINE_MAX:
                self._refuse_oversize()
                return
            if not self._fill():
                return

    def _fill(self) -> bool:
        # A started line must be complete within request_timeout in total,
        # however slowly its bytes trickle in.
        if self.buffer:
            deadline = self.line_started + self.request_timeout
        else:
            deadline = time.monotonic() + self.idle_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            events = dict(self.poller.poll(left * 1000))
            if self.stop.read_fd in events:
                return False
            if events:
                break
        try:
            data = self.conn.recv(_RECV_SIZE)
        except OSError:
            return False
        if not self.buffer:
            self.line_started = time.monotonic()
        self.buffer += data
        return bool(data)

    def _refuse_oversize(self) -> None:
        logger.warning("%s", format_fields("service_refused", {"code": "BAD_REQUEST"}))
        self.send(
            protocol.format_error(
                "BAD_REQUEST",
                f"The request line is longer than {protocol.LINE_MAX} bytes; "
                "closing the connection.",
            )
        )

    def send(self, data: bytes) -> bool:
        """Send a reply; return False if the client does not take it in time."""
        try:
            self.conn.sendall(data)
        except OSError:
            return False
        return True


class MappingService:
    """Listens on a Unix socket and answers mapping requests."""

    def __init__(
        self,
        handler: Handler,
        settings: ServiceSettings,
        policy: AccessPolicy,
        group_gid: int | None = None,
    ) -> None:
        self.handler = handler
        self.settings = settings
        self.policy = policy
        self.path = settings.socket
        self._gid = group_gid
        self._stop = _Stop()
        self._lock = threading.Condition()
        self._threads = 0
        self._idle = 0
        self._busy = 0
        self._listener: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self.owns_socket = True

    def start(self) -> None:
        """Create the listening socket; raise PolicyError if one is live."""
        self._listener = _listen(self.path, self._gid)
        info = self.path.stat()
        self._inode = (info.st_dev, info.st_ino)
        logger.info("service listening socket=%s", self.path)

    def serve_forever(self) -> None:
        """Serve until stop() is called, then shut down and return."""
        assert self._listener is not None, "start() first"
        with self._lock:
            self._spawn()
        try:
            self._stop.wait()
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Ask the service to stop; safe from a signal handler."""
        self._stop.set()

    def after_fork(self) -> None:
        """Prepare a forked worker process: own stop flag, socket left alone."""
        # The parent's pipe came along with the fork; nothing here waits on it.
        self._stop.is_set = True
        self._stop.close()
        self._stop = _Stop()
        self.owns_socket = False

    def close(self) -> None:
        """Close the listening socket and remove its file if it is ours."""
        if self._listener is not None:
            self._listener.close()
        self._remove_socket()

    def _spawn(self) -> None:
        """Start one more accepting thread; the caller holds the lock."""
        self._threads += 1
        self._idle += 1
        name = f"poolmgr-service-{self._threads}"
        threading.Thread(target=self._accept_loop, name=name, daemon=True).start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        # Stop signals must reach the main thread: Python runs handlers only
        # there, and a signal taken by this thread would not wake its select.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        while not self._stop.is_set:
            try:
                conn, _ = self._listener.accept()
            except OSError as exc:
                if self._stop.is_set:
                    break
                logger.warning("accept failed: %s", exc)
                time.sleep(0.1)
                continue
            self._mark_busy()
            try:
                self._serve_connection(conn)
            finally:
                self._mark_idle()
        with self._lock:
            self._idle -= 1

    def _mark_busy(self) -> None:
        with self._lock:
            self._idle -= 1
            self._busy += 1
            if self._idle == 0 and self._threads < self.settings.max_clients:
                self._spawn()

    def _mark_idle(self) -> None:
        with self._lock:
            self._idle += 1
            self._busy -= 1
            self._lock.notify_all()

    def _serve_connection(self, conn: socket.socket) -> None:
        try:
            self._converse(conn)
        except Exception:  # noqa: BLE001  (one client must not end the service)
            logger.exception("connection handler failed")
        finally:
            conn.close()

    def _converse(self, conn: socket.socket) -> None:
        peer = peer_of(conn)
        if not self.policy.allows(peer, lambda: peer_groups(conn, peer)):
            self._refuse_peer(conn, peer)
            return
        client = _Connection(conn, self._stop, self.settings)
        for line in client.lines():
            if not client.send(self.handler.reply(line, peer)):
                return

    def _refuse_peer(self, conn: socket.socket, peer: Peer) -> None:
        fields = {"code": "REFUSED", "peer_pid": peer.pid, "peer_uid": peer.uid}
        logger.warning("%s", format_fields("service_refused", fields))
        # One deadline for the whole refusal: a refused peer that keeps its
        # socket open and trickles bytes holds this thread no longer.
        deadline = time.monotonic() + _REFUSED_HOLD
        error = PolicyError(f"User id {peer.uid} may not use the mapping service.")
        with suppress(OSError):
            conn.settimeout(_REFUSED_HOLD)
            conn.sendall(protocol.error_reply(error))
            # Read what the client already sent, or sends next, before
            # closing: closing over unread bytes resets the connection, and
            # a client whose write fails never reads the refusal.
            conn.shutdown(socket.SHUT_WR)
            _drain(conn, deadline)

    def _shutdown(self) -> None:
        assert self._listener is not None
        # Also when serve_forever failed: accepting threads end on the flag.
        self._stop.set()
        if self.owns_socket:
            # shutdown() wakes every thread blocked in accept(); close() would
            # not. A forked worker must not: the listening socket is shared,
            # and its idle threads end with the process.
            with suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self.close()
        deadline = time.monotonic() + self.settings.shutdown_timeout
        with self._lock:
            while self._busy and time.monotonic() < deadline:
                self._lock.wait(deadline - time.monotonic())
            left = self._busy
        if left:
            logger.warning("service stopped with %d connection(s) still busy", left)
        else:
            # Busy threads poll the pipe; with none left it can go.
            self._stop.close()
        logger.info("service stopped socket=%s", self.path)

    def _remove_socket(self) -> None:
        # Only our own socket: a newer instance may already own the path.
        if not self.owns_socket:
            return
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return
        if (info.st_dev, info.st_ino) == self._inode:
            self.path.unlink()


def _drain(conn: socket.socket, deadline: float) -> None:
    """Read and drop the peer's bytes until EOF, the limit or the deadline."""
    drained = 0
    while drained < _REFUSED_DRAIN_LIMIT:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        conn.settimeout(left)
        chunk = conn.recv(4096)
        if not chunk:
            return
        drained += len(chunk)


def _listen(path: Path, gid: int | None) -> socket.socket:
    """Bind path with its final mode and group before anyone can connect."""
    _remove_stale(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(temp))
    except OSError as exc:
        listener.close()
        raise _socket_error(path, exc) from None
    finally:
        os.umask(old_umask)
    try:
        if gid is not None:
            os.chown(temp, -1, gid)
            os.chmod(temp, 0o660)
        listener.listen(_LISTEN_BACKLOG)
        os.rename(temp, path)
    except BaseException as exc:
        listener.close()
        temp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _socket_error(path, exc) from None
        raise
    return listener


def _socket_error(path: Path, exc: OSError) -> PoolmgrError:
    """Return the one-line error for a socket path that cannot be bound."""
    if not path.parent.is_dir():
        why = (
            f"the directory {path.parent} does not exist (create it, or run "
            "the systemd unit, whose RuntimeDirectory=poolmgr creates it)"
        )
    else:
        why = (exc.strerror or str(exc)).rstrip(".")
    return PoolmgrError(f"Cannot create the socket {path}: {why}.")


def _remove_stale(path: Path) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise PolicyError(f"{path} exists and is not a socket; not replacing it.")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            logger.info("removing stale socket %s", path)
            path.unlink(missing_ok=True)
            return
    raise PolicyError(f"Another service is already listening on {path}.")
