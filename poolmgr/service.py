"""The mapping service: ``poolmgr serve`` answers LCMAPS on a Unix socket.

The wire format is in protocol.py. Design:

- One thread per open connection (reused between connections), at most
  ``service.max_clients`` of them; further clients wait in the listen
  backlog until a connection closes, and their own timeout decides how long
  they wait. A slow or idle client therefore holds one cheap thread and
  never delays anybody else. Mappings run at most ``service.workers`` at a
  time, which bounds database connections.
- One shared Mapper; its routing table is reloaded after
  ``service.router_ttl`` seconds, so rules changed by sync reach a running
  service within that time.
- Access: the socket is mode 0660 with the configured group (0600 without
  one) from the moment it appears, and every connection's peer credentials
  are checked: root, the service's own uid, or a member of the group.
- The DN received is taken as the end-entity subject (LCMAPS extracts it
  from the proxy chain), so a trailing numeric CN is part of the name;
  ``CN=proxy`` and ``CN=limited proxy`` are still stripped.
- Database outages: each request runs in its own transaction, so a request
  that meets a dead database fails with DB_UNAVAILABLE and leaves nothing
  behind; the next request after the database is back succeeds.
- SIGTERM or SIGINT: stop accepting, let requests in progress finish (at
  most ``service.shutdown_timeout`` seconds), remove the socket, exit 0.
"""

import errno
import grp
import logging
import os
import pwd
import queue
import select
import signal
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from sqlalchemy import Engine

from poolmgr import protocol
from poolmgr.errors import ConfigError, PolicyError, PoolmgrError
from poolmgr.events import format_fields
from poolmgr.leases import Mapper, MapRequest
from poolmgr.settings import ServiceSettings, Settings

logger = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_MAX_GROUPS = 65536
_RECV_SIZE = 65536
_LISTEN_BACKLOG = 128


@dataclass(frozen=True)
class Peer:
    """The process at the other end of a connection, as the kernel saw it."""

    pid: int
    uid: int
    gid: int


@dataclass(frozen=True)
class AccessPolicy:
    """Allowed callers: some uids, and the members of one group."""

    uids: frozenset[int]
    gid: int | None = None

    def allows(self, peer: Peer, groups: Callable[[], Collection[int]] = tuple) -> bool:
        """Return whether peer may connect; groups() is asked only if needed."""
        if peer.uid in self.uids:
            return True
        if self.gid is None:
            return False
        return peer.gid == self.gid or self.gid in groups()


def access_policy(group: str | None) -> AccessPolicy:
    """Return the policy for root, this process's user and group's members.

    Raises ConfigError when the group does not exist.
    """
    uids = frozenset({0, os.geteuid()})
    if group is None:
        return AccessPolicy(uids)
    try:
        return AccessPolicy(uids, grp.getgrnam(group).gr_gid)
    except KeyError:
        raise ConfigError(f"Service group {group!r} does not exist.") from None


def peer_of(conn: socket.socket) -> Peer:
    """Return the credentials the kernel recorded when the peer connected."""
    data = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return Peer(*_UCRED.unpack(data))


def peer_groups(conn: socket.socket, peer: Peer) -> tuple[int, ...]:
    """Return the peer's supplementary groups as of connect time.

    Kernels without SO_PEERGROUPS (before 4.13) fall back to the groups of
    the peer's user in the group database.
    """
    size = 4 * 256
    while True:
        try:
            data = conn.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, size)
        except OSError as exc:
            if exc.errno == errno.ERANGE and size < 4 * _MAX_GROUPS:
                size *= 16
                continue
            return _database_groups(peer)
        count = len(data) // 4
        return struct.unpack(f"{count}I", data[: count * 4])


def _database_groups(peer: Peer) -> tuple[int, ...]:
    try:
        name = pwd.getpwuid(peer.uid).pw_name
    except KeyError:
        return ()
    return tuple(os.getgrouplist(name, peer.gid))


class Handler:
    """Turns one request line into one reply line; shared by all threads."""

    def __init__(self, mapper: Mapper, workers: int) -> None:
        self.mapper = mapper
        self._slots = threading.BoundedSemaphore(workers)

    def reply(self, line: bytes, peer: Peer | None = None) -> bytes:
        """Return the reply to line; never raises."""
        try:
            request = protocol.parse_request(line)
            if request.verb == "PING":
                return protocol.format_pong()
            return self._map(request, peer)
        except PoolmgrError as exc:
            _log_refusal(exc, line, peer)
            return protocol.error_reply(exc)
        except Exception:  # noqa: BLE001  (a bug must not kill the service)
            logger.exception("internal error answering %s", _shorten(line))
            return protocol.format_error(
                "INTERNAL", "Internal error in the mapping service; see its log."
            )

    def _map(self, request: protocol.Request, peer: Peer | None) -> bytes:
        verify = request.verb == "VERIFY"
        # The DN is the end-entity subject: giving it as its own issuer keeps
        # a trailing numeric CN as part of the name (see dn.py, F04).
        query = MapRequest(request.dn, request.fqans, request.dn, verify)
        start = time.perf_counter()
        with self._slots:
            mapping = self.mapper.map(query)
        if logger.isEnabledFor(logging.DEBUG):
            fields = {
                "verb": request.verb,
                "account": mapping.account,
                "pool": mapping.pool,
                "new": mapping.new,
                "dn": mapping.dn,
                "fqan": mapping.fqan,
                "peer_uid": peer.uid if peer else None,
                "ms": f"{(time.perf_counter() - start) * 1000:.2f}",
            }
            logger.debug("%s", format_fields("service_mapped", fields))
        return protocol.format_ok(
            mapping.account,
            mapping.uid,
            mapping.gid,
            mapping.secondary_gids,
            mapping.lease_key,
        )


def _log_refusal(exc: PoolmgrError, line: bytes, peer: Peer | None) -> None:
    fields = {
        "code": exc.code,
        "peer_uid": peer.uid if peer else None,
        "message": str(exc)[:300],
        "request": _shorten(line),
    }
    logger.warning("%s", format_fields("service_refused", fields))


def _shorten(line: bytes) -> str:
    text = repr(line[:120])
    return text + ("..." if len(line) > 120 else "")


class _Stop:
    """A flag plus a pipe whose read end becomes readable once it is set."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()
        self.is_set = False

    def set(self) -> None:
        if not self.is_set:
            self.is_set = True
            os.write(self._write_fd, b"x")

    def close(self) -> None:
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
                continue
            if len(self.buffer) >= protocol.LINE_MAX:
                self._refuse_oversize()
                return
            if not self._fill():
                return

    def _fill(self) -> bool:
        timeout = self.request_timeout if self.buffer else self.idle_timeout
        deadline = time.monotonic() + timeout
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


class _Threads:
    """Daemon threads that each serve one connection at a time, reused."""

    def __init__(self, work: Callable[[socket.socket], None]) -> None:
        self._work = work
        self._queue: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, conn: socket.socket) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        if spawn:
            name = f"poolmgr-conn-{conn.fileno()}"
            threading.Thread(
                target=self._run, args=(conn,), name=name, daemon=True
            ).start()
        else:
            self._queue.put(conn)

    def _run(self, conn: socket.socket) -> None:
        while True:
            self._work(conn)
            with self._lock:
                self._idle += 1
            conn = self._queue.get()


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
        self._slots = threading.BoundedSemaphore(settings.max_clients)
        self._open = 0
        self._open_lock = threading.Condition()
        self._threads = _Threads(self._serve_connection)
        self._listener: socket.socket | None = None
        self._inode: tuple[int, int] | None = None

    def start(self) -> None:
        """Create the listening socket; raise PolicyError if one is live."""
        self._listener = _listen(self.path, self._gid)
        info = self.path.stat()
        self._inode = (info.st_dev, info.st_ino)
        logger.info("service listening socket=%s", self.path)

    def serve_forever(self) -> None:
        """Accept connections until stop() is called, then shut down."""
        assert self._listener is not None, "start() first"
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        poller.register(self._stop.read_fd, select.POLLIN)
        try:
            while self._take_slot():
                if not self._accept(poller):
                    self._slots.release()
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Ask the service to stop; safe from a signal handler."""
        self._stop.set()

    def _take_slot(self) -> bool:
        while not self._stop.is_set:
            if not self._slots.acquire(timeout=0.2):
                continue
            if self._stop.is_set:
                self._slots.release()
                return False
            return True
        return False

    def _accept(self, poller: select.poll) -> bool:
        assert self._listener is not None
        events = dict(poller.poll())
        if self._stop.read_fd in events:
            return False
        try:
            conn, _ = self._listener.accept()
        except OSError as exc:
            logger.warning("accept failed: %s", exc)
            return False
        with self._open_lock:
            self._open += 1
        self._threads.submit(conn)
        return True

    def _serve_connection(self, conn: socket.socket) -> None:
        try:
            self._converse(conn)
        except Exception:  # noqa: BLE001  (one client must not end the service)
            logger.exception("connection handler failed")
        finally:
            conn.close()
            self._slots.release()
            with self._open_lock:
                self._open -= 1
                self._open_lock.notify_all()

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
        conn.settimeout(1.0)
        error = PolicyError(f"User id {peer.uid} may not use the mapping service.")
        with suppress(OSError):
            conn.sendall(protocol.error_reply(error))

    def _shutdown(self) -> None:
        if self._listener is not None:
            self._listener.close()
        self._remove_socket()
        deadline = time.monotonic() + self.settings.shutdown_timeout
        with self._open_lock:
            while self._open and time.monotonic() < deadline:
                self._open_lock.wait(deadline - time.monotonic())
            left = self._open
        if left:
            logger.warning("service stopped with %d connection(s) still busy", left)
        logger.info("service stopped socket=%s", self.path)

    def _remove_socket(self) -> None:
        # Only our own socket: a newer instance may already own the path.
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return
        if (info.st_dev, info.st_ino) == self._inode:
            self.path.unlink()


def _listen(path: Path, gid: int | None) -> socket.socket:
    """Bind path with its final mode and group before anyone can connect."""
    _remove_stale(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(temp))
    except OSError:
        listener.close()
        raise
    finally:
        os.umask(old_umask)
    try:
        if gid is not None:
            os.chown(temp, -1, gid)
            os.chmod(temp, 0o660)
        listener.listen(_LISTEN_BACKLOG)
        os.rename(temp, path)
    except BaseException:
        listener.close()
        temp.unlink(missing_ok=True)
        raise
    return listener


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


def build_service(settings: Settings, engine: Engine) -> MappingService:
    """Return a service for the settings' service section, not yet started."""
    options = settings.service
    policy = access_policy(options.group)
    mapper = Mapper(engine, settings, router_ttl=options.router_ttl)
    return MappingService(Handler(mapper, options.workers), options, policy, policy.gid)


@contextmanager
def _stop_on_signals(service: MappingService) -> Iterator[None]:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %s received, stopping", signal.Signals(signum).name)
        service.stop()

    previous = {
        sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(settings: Settings, engine: Engine) -> None:
    """Run the mapping service until SIGTERM or SIGINT."""
    service = build_service(settings, engine)
    service.start()
    with _stop_on_signals(service):
        service.serve_forever()


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
