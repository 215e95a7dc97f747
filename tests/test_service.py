"""The mapping service on a real Unix socket: protocol, access, robustness."""

import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from poolmgr import db
from poolmgr.errors import DatabaseUnavailableError, NoLeaseError, PolicyError
from poolmgr.leases import MapRequest
from poolmgr.service import (
    AccessPolicy,
    Handler,
    MappingService,
    Peer,
    access_policy,
)
from poolmgr.settings import ServiceSettings
from tests.conftest import make_settings
from tests.factories import invariant_violations, open_leases, pool, sync

JANE = "/DC=org/DC=example/CN=Jane Roe"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: Unix socket paths must fit 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="pm-svc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextmanager
def running(
    handler: Handler,
    path: Path,
    policy: AccessPolicy | None = None,
    gid: int | None = None,
    **options: object,
) -> Iterator[MappingService]:
    """Run a service on path in a thread; stop it and wait afterwards."""
    settings = ServiceSettings(socket=path, **options)
    service = MappingService(handler, settings, policy or access_policy(None), gid)
    service.start()
    thread = threading.Thread(target=service.serve_forever, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.stop()
        thread.join(10)
        assert not thread.is_alive(), "the service did not stop"


def connect(path: Path, timeout: float = 5.0) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    conn.connect(str(path))
    return conn


def read_lines(conn: socket.socket, count: int) -> list[bytes]:
    data = b""
    while data.count(b"\n") < count:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return [line + b"\n" for line in data.split(b"\n")[:count] if line]


def is_closed(conn: socket.socket) -> bool:
    """Whether the service closed conn (EOF, or reset if bytes were unread)."""
    try:
        return conn.recv(100) == b""
    except ConnectionResetError:
        return True


def exchange(path: Path, *lines: bytes) -> list[bytes]:
    """Send lines on one connection and return as many reply lines."""
    with connect(path) as conn:
        conn.sendall(b"".join(lines))
        return read_lines(conn, len(lines))


def mapper_handler(engine, **settings: object) -> Handler:
    from poolmgr.leases import Mapper

    site = make_settings(**settings)
    sync(
        engine,
        site,
        [
            pool("atlasprd", "atlas", 2, "/atlas/Role=production"),
            pool("atlas", "atlas", 40, "/atlas"),
        ],
    )
    return Handler(Mapper(engine, site, router_ttl=5.0), workers=8)


class FakeMapper:
    """Stands in for Mapper: answers or raises what a test asks for."""

    def __init__(self, error: Exception | None = None, delay: float = 0.0) -> None:
        self.error = error
        self.delay = delay
        self.requests: list[MapRequest] = []

    def map(self, request: MapRequest):
        from poolmgr.leases import Mapping

        self.requests.append(request)
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return Mapping(
            "atlas001",
            20001,
            2000,
            (2000, 2100),
            "atlas",
            request.dn,
            request.dn,
            None,
            7,
            False,
        )


def fake_handler(**kwargs: object) -> Handler:
    return Handler(FakeMapper(**kwargs), workers=4)  # type: ignore[arg-type]


# Access decisions, with fake credentials.


@pytest.mark.parametrize(
    ("peer", "groups", "allowed"),
    [
        (Peer(10, 0, 0), (), True),
        (Peer(10, 990, 990), (), True),
        (Peer(10, 1000, 500), (), True),
        (Peer(10, 1000, 1000), (7, 500), True),
        (Peer(10, 1000, 1000), (7, 8), False),
        (Peer(10, 1000, 1000), (), False),
    ],
    ids=["root", "own-uid", "group-primary", "group-supplementary", "other", "none"],
)
def test_access_policy_admits_root_own_uid_and_group_members(peer, groups, allowed):
    policy = AccessPolicy(frozenset({0, 990}), gid=500)
    assert policy.allows(peer, lambda: groups) is allowed


def test_without_a_group_only_the_listed_uids_are_admitted():
    policy = AccessPolicy(frozenset({0}))
    assert policy.allows(Peer(1, 0, 0))
    assert not policy.allows(Peer(1, 1000, 0), lambda: (0,))


def test_groups_are_only_looked_up_when_the_uid_is_not_enough():
    def fail() -> tuple[int, ...]:
        raise AssertionError("groups looked up for an allowed uid")

    assert AccessPolicy(frozenset({0}), gid=5).allows(Peer(1, 0, 0), fail)


def test_unknown_service_group_is_a_config_error():
    from poolmgr.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        access_policy("no-such-group-x")
    assert str(refused.value) == (
        "Service group 'no-such-group-x' does not exist: create it (groupadd "
        "--system no-such-group-x) or set service.group to a group that does."
    )


# The socket file.


def test_socket_is_0600_without_group_and_0660_with_one(short_dir):
    handler = fake_handler()
    with running(handler, short_dir / "a.sock"):
        info = (short_dir / "a.sock").stat()
        assert stat.S_IMODE(info.st_mode) == 0o600
    gid = os.getgid() if os.getgid() else 1
    with running(handler, short_dir / "b.sock", gid=gid):
        info = (short_dir / "b.sock").stat()
        assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o660, gid)
    assert sorted(p.name for p in short_dir.iterdir()) == [], "socket files left"


def test_stale_socket_is_replaced_but_a_live_one_is_not(short_dir):
    path = short_dir / "s.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    handler = fake_handler()
    with running(handler, path):
        assert exchange(path, b"PING\n") == [b"OK\tpong\n"]
        second = MappingService(
            handler, ServiceSettings(socket=path), access_policy(None)
        )
        with pytest.raises(PolicyError, match="already listening"):
            second.start()
        assert exchange(path, b"PING\n") == [b"OK\tpong\n"]


def test_a_regular_file_at_the_socket_path_is_not_replaced(short_dir):
    path = short_dir / "s.sock"
    path.write_text("keep me")
    service = MappingService(
        fake_handler(), ServiceSettings(socket=path), access_policy(None)
    )
    with pytest.raises(PolicyError, match="not a socket"):
        service.start()
    assert path.read_text() == "keep me"


def test_peer_not_allowed_is_refused_on_a_real_socket(short_dir):
    path = short_dir / "s.sock"
    nobody_we_know = AccessPolicy(frozenset({4_000_000}))
    with running(fake_handler(), path, policy=nobody_we_know):
        reply = exchange(path, b"PING\n")
    message = f"User id {os.geteuid()} may not use the mapping service."
    assert reply == [f"ERR\tREFUSED\t{message}\n".encode()]


SERVICE_GID = 4343
OTHER_UID = 4242


def ping_as(path: Path, uid: int, gid: int, groups: list[int]) -> bytes:
    """PING from a forked child with these ids; its reply or its error's name."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (runs in the child; reported through the pipe)
        status = 1
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                    conn.settimeout(5)
                    conn.connect(str(path))
                    conn.sendall(b"PING\n")
                    answer = conn.recv(200)
            except OSError as exc:
                answer = type(exc).__name__.encode()
            os.write(write_end, answer)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0, "the child could not take the ids"
    return answer


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to take other ids")
@pytest.mark.parametrize(
    ("gid", "groups", "mode", "answer"),
    [
        (OTHER_UID, [SERVICE_GID], None, b"OK\tpong\n"),
        (SERVICE_GID, [], None, b"OK\tpong\n"),
        (OTHER_UID, [], None, b"PermissionError"),
        (
            OTHER_UID,
            [],
            0o666,
            f"ERR\tREFUSED\tUser id {OTHER_UID} may not use the mapping "
            "service.\n".encode(),
        ),
    ],
    ids=["supplementary-group", "primary-group", "outsider", "outsider-0666"],
)
def test_real_peer_credentials_admit_the_service_group_only(
    short_dir, gid, groups, mode, answer
):
    # The kernel's SO_PEERCRED and SO_PEERGROUPS, not fake peers: the file
    # mode keeps outsiders out, and the credential check still refuses them
    # when an admin opened the socket to everybody.
    short_dir.chmod(0o755)
    path = short_dir / "s.sock"
    policy = AccessPolicy(frozenset({0}), SERVICE_GID)
    with running(fake_handler(), path, policy=policy, gid=SERVICE_GID):
        if mode is not None:
            path.chmod(mode)
        assert ping_as(path, OTHER_UID, gid, groups) == answer


def test_a_refused_peer_that_writes_late_still_reads_the_refusal(short_dir):
    # The refusal goes out as soon as the peer connects; a client that sends
    # its request only afterwards must neither fail to write nor be reset.
    path = short_dir / "s.sock"
    nobody_we_know = AccessPolicy(frozenset({4_000_000}))
    with running(fake_handler(), path, policy=nobody_we_know), connect(path) as conn:
        time.sleep(0.2)
        conn.sendall(b"PING\nPING\n")
        reply = read_lines(conn, 2)
        assert is_closed(conn)
    assert len(reply) == 1, f"expected one refusal, then EOF; got {reply}"
    assert reply[0].startswith(b"ERR\tREFUSED\t")


def test_a_refused_peer_trickling_bytes_is_dropped_within_one_second(short_dir):
    # Each byte arrives just before a per-read timeout would fire, so only
    # one deadline for the whole refusal bounds how long the thread is held.
    path = short_dir / "s.sock"
    nobody_we_know = AccessPolicy(frozenset({4_000_000}))
    done = threading.Event()

    def trickle(conn: socket.socket) -> None:
        with suppress(OSError):
            while not done.wait(0.95):
                conn.sendall(b"x")

    with running(fake_handler(), path, policy=nobody_we_know), connect(path) as conn:
        started = time.monotonic()
        sender = threading.Thread(target=trickle, args=(conn,))
        sender.start()
        try:
            assert read_lines(conn, 1)[0].startswith(b"ERR\tREFUSED\t")
            # EOF came at once (the service shut its side for writing);
            # POLLHUP only once it has closed the connection.
            poller = select.poll()
            poller.register(conn, select.POLLHUP)
            assert poller.poll(5000), "the service never closed the connection"
            held = time.monotonic() - started
        finally:
            done.set()
            sender.join()
    assert held < 1.5, f"a refused peer held its connection for {held:.2f} s"


# Requests and replies.


def test_map_verify_and_ping_on_one_connection_in_order(sqlite_engine, short_dir):
    path = short_dir / "s.sock"
    with running(mapper_handler(sqlite_engine), path):
        replies = exchange(
            path,
            f"VERIFY\t{JANE}\t/atlas\n".encode(),
            f"MAP\t{JANE}\t/atlas\n".encode(),
            b"PING\n",
            f"VERIFY\t{JANE}\t/atlas\n".encode(),
            f"MAP\t{JANE}\t/atlas/Role=production\t/atlas\n".encode(),
        )
    lease = open_leases(sqlite_engine)[0]
    assert replies[0].startswith(b"ERR\tNO_LEASE\t")
    assert replies[1] == f"OK\tatlas001\t101001\t100001\t\tatlas:{lease.id}\n".encode()
    assert replies[2] == b"OK\tpong\n"
    assert replies[3] == replies[1]
    assert replies[4].startswith(b"OK\tatlasprd001\t100001\t100000\t100001\tatlasprd:")
    assert len(open_leases(sqlite_engine)) == 2


def test_dn_is_the_end_entity_subject_numeric_cn_kept_proxy_cn_stripped(
    sqlite_engine, short_dir
):
    path = short_dir / "s.sock"
    cern = "/DC=ch/DC=cern/OU=Users/CN=jdoe/CN=123456"
    with running(mapper_handler(sqlite_engine), path):
        first, second, third = exchange(
            path,
            f"MAP\t{cern}\t/atlas\n".encode(),
            f"MAP\t{cern}/CN=proxy\t/atlas\n".encode(),
            f"MAP\t{JANE}/CN=limited proxy\t/atlas\n".encode(),
        )
    assert first.startswith(b"OK\tatlas001\t") and second == first
    assert third.startswith(b"OK\tatlas002\t")


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"\n", "BAD_REQUEST"),
        (b"FETCH\tx\n", "BAD_REQUEST"),
        (b"MAP\n", "BAD_REQUEST"),
        (b"MAP\t/DC=org/CN=\xff\n", "BAD_REQUEST"),
        (b"MAP\t/DC=org/CN=A\x00\n", "BAD_REQUEST"),
        (b"MAP\tnot a dn\t/atlas\n", "BAD_INPUT"),
        (b"MAP\t/DC=org/CN=A\t/cms\n", "NO_POOL"),
        (b"MAP\t/DC=org/CN=A\tatlas\n", "BAD_INPUT"),
    ],
    ids=["empty", "verb", "no-dn", "utf8", "nul", "bad-dn", "no-pool", "bad-fqan"],
)
def test_bad_requests_get_an_error_and_the_connection_stays_usable(
    sqlite_engine, short_dir, line, code
):
    path = short_dir / "s.sock"
    with running(mapper_handler(sqlite_engine), path):
        error, pong = exchange(path, line, b"PING\n")
    assert error.startswith(f"ERR\t{code}\t".encode()), error
    assert error.count(b"\t") == 2
    assert pong == b"OK\tpong\n"


def test_oversize_line_gets_bad_request_and_the_connection_is_closed(short_dir):
    path = short_dir / "s.sock"
    with running(fake_handler(), path), connect(path) as conn:
        conn.sendall(b"MAP\t/CN=" + b"x" * 20000)
        reply = read_lines(conn, 1)
        rest = conn.recv(100)
    assert reply[0].startswith(b"ERR\tBAD_REQUEST\tThe request line is longer than")
    assert rest == b""


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (DatabaseUnavailableError("Database x is unavailable: gone"), "DB_UNAVAILABLE"),
        (RuntimeError("bug"), "INTERNAL"),
    ],
    ids=["database-down", "bug"],
)
def test_mapper_failures_become_error_replies(short_dir, error, code):
    path = short_dir / "s.sock"
    with running(fake_handler(error=error), path):
        first, second = exchange(path, f"MAP\t{JANE}\n".encode(), b"PING\n")
    assert first.startswith(f"ERR\t{code}\t".encode())
    assert second == b"OK\tpong\n"


def test_secondary_gids_exclude_the_primary(short_dir):
    path = short_dir / "s.sock"
    with running(fake_handler(), path):
        (reply,) = exchange(path, f"MAP\t{JANE}\n".encode())
    assert reply == b"OK\tatlas001\t20001\t2000\t2100\tatlas:7\n"


# Robustness.


def test_slow_client_does_not_block_others_and_is_cut_off(short_dir):
    path = short_dir / "s.sock"
    with running(fake_handler(), path, request_timeout=0.5), connect(path) as slow:
        slow.sendall(b"MAP\t/DC=org")
        started = time.monotonic()
        assert exchange(path, b"PING\n") == [b"OK\tpong\n"]
        assert time.monotonic() - started < 0.3
        assert slow.recv(100) == b"", "the half-sent request was not cut off"
        assert time.monotonic() - started < 2


def test_a_line_trickling_in_byte_by_byte_is_cut_off_at_the_request_timeout(
    short_dir,
):
    path = short_dir / "s.sock"
    with running(fake_handler(), path, request_timeout=0.5), connect(path) as slow:
        started = time.monotonic()
        with suppress(OSError):
            for byte in b"MAP\t/DC=org/CN=Slow":
                slow.sendall(bytes([byte]))
                time.sleep(0.1)
        assert is_closed(slow)
        assert time.monotonic() - started < 1.5


def test_a_request_waiting_for_busy_workers_is_refused_not_run_later(short_dir):
    # One worker, held by a mapping that hangs on the database: a second
    # request is refused after the slot timeout and never reaches the mapper.
    path = short_dir / "s.sock"
    mapper = FakeMapper(delay=1.5)
    handler = Handler(mapper, workers=1, slot_timeout=0.3)  # type: ignore[arg-type]
    with running(handler, path), connect(path) as stuck:
        stuck.sendall(f"MAP\t{JANE}\n".encode())
        time.sleep(0.1)
        started = time.monotonic()
        (refused,) = exchange(path, b"MAP\t/DC=org/CN=Kim Sample\n")
        waited = time.monotonic() - started
        assert read_lines(stuck, 1)[0].startswith(b"OK\tatlas001\t")
    assert refused == (
        b"ERR\tDB_UNAVAILABLE\tAll 1 mapping workers of the service stayed busy "
        b"for 0.3 s; the database is slow or not answering.\n"
    )
    assert 0.25 < waited < 1.0, f"refused after {waited:.2f} s"
    assert [r.dn for r in mapper.requests] == [JANE]


def test_the_service_bounds_the_wait_for_a_worker_by_the_request_timeout(tmp_path):
    from poolmgr.service import build_service

    site = make_settings(service={"request_timeout": 2.5, "workers": 3})
    service = build_service(site, db.get_engine(f"sqlite:///{tmp_path / 'x.db'}"))
    assert (service.handler._workers, service.handler._slot_timeout) == (3, 2.5)


def test_idle_connection_is_closed_after_the_idle_timeout(short_dir):
    path = short_dir / "s.sock"
    with running(fake_handler(), path, idle_timeout=0.3), connect(path) as idle:
        started = time.monotonic()
        assert idle.recv(100) == b""
        assert 0.25 < time.monotonic() - started < 2


def test_beyond_max_clients_new_connections_wait_their_turn(short_dir):
    path = short_dir / "s.sock"
    with running(fake_handler(), path, max_clients=2):
        first, second = connect(path), connect(path)
        first.sendall(b"PING\n")
        assert read_lines(first, 1) == [b"OK\tpong\n"]
        waiting = connect(path, timeout=0.3)
        waiting.sendall(b"PING\n")
        with pytest.raises(TimeoutError):
            waiting.recv(100)
        first.close()
        waiting.settimeout(5)
        assert read_lines(waiting, 1) == [b"OK\tpong\n"]
        for conn in (second, waiting):
            conn.close()


def test_32_concurrent_clients_each_get_their_own_account(engine, short_dir):
    path = short_dir / "s.sock"
    replies: dict[int, list[bytes]] = {}

    def client(number: int) -> None:
        dn = f"/DC=org/DC=example/CN=Person {number}"
        replies[number] = exchange(path, *[f"MAP\t{dn}\t/atlas\n".encode()] * 3)

    with running(mapper_handler(engine), path):
        threads = [threading.Thread(target=client, args=(n,)) for n in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    accounts = {lines[0].split(b"\t")[1] for lines in replies.values()}
    assert len(replies) == 32 and len(accounts) == 32
    assert all(
        len(set(lines)) == 1 and lines[0].startswith(b"OK")
        for lines in replies.values()
    )
    assert invariant_violations(engine) == []


def test_stop_finishes_the_request_in_progress(short_dir):
    path = short_dir / "s.sock"
    service_ctx = running(fake_handler(delay=0.5), path)
    service = service_ctx.__enter__()
    with connect(path) as busy, connect(path) as idle:
        busy.sendall(f"MAP\t{JANE}\n".encode())
        time.sleep(0.1)
        service.stop()
        assert read_lines(busy, 1)[0].startswith(b"OK\tatlas001\t")
        assert idle.recv(100) == b""
    service_ctx.__exit__(None, None, None)
    assert not path.exists()


def open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_stopped_service_leaves_no_descriptor_open(short_dir):
    path = short_dir / "s.sock"
    handler = fake_handler()
    with running(handler, path):
        pass
    before = open_descriptors()
    for _ in range(3):
        with running(handler, path):
            assert exchange(path, b"PING\n") == [b"OK\tpong\n"]
    leaked = open_descriptors() - before
    assert leaked == set(), f"descriptors left open by stopped services: {leaked}"


def test_the_service_runs_with_descriptor_numbers_above_1024(short_dir):
    # select() cannot watch descriptors above FD_SETSIZE; a process holding
    # many files must still be able to start and stop the service.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the descriptor limit {hard} is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    padding = []
    try:
        while not padding or padding[-1] < 1030:
            padding.append(os.open("/dev/null", os.O_RDONLY))
        with running(fake_handler(), short_dir / "s.sock") as service:
            assert service._stop.read_fd > 1024
            time.sleep(0.2)
            assert exchange(short_dir / "s.sock", b"PING\n") == [b"OK\tpong\n"]
    finally:
        for fd in padding:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextmanager
def serve_process(
    tmp_path: Path, path: Path, *options: str
) -> Iterator[subprocess.Popen]:
    """Run `poolmgr serve` in a subprocess until its socket exists."""
    config = tmp_path / "poolmgr.yaml"
    config.write_text(
        f"database: sqlite:///{tmp_path / 'db.sqlite'}\nsyslog:\n  enabled: false\n"
    )
    command = [sys.executable, "-c", "from poolmgr.cli import run; run()"]
    command += ["--config", str(config), "serve", "--socket", str(path), *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while not path.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "serve did not create its socket"
            time.sleep(0.02)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry.name))
    return found


@pytest.mark.parametrize("processes", ["1", "2"], ids=["threads", "two-workers"])
def test_sigterm_stops_poolmgr_serve_with_exit_0_and_removes_the_socket(
    tmp_path, short_dir, processes
):
    path = short_dir / "s.sock"
    with serve_process(tmp_path, path, "--processes", processes) as process:
        assert exchange(path, b"PING\n") == [b"OK\tpong\n"]
        with connect(path):
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert not path.exists()


def test_supervisor_replaces_a_worker_that_dies(tmp_path, short_dir):
    path = short_dir / "s.sock"
    with serve_process(tmp_path, path, "--processes", "2") as process:
        deadline = time.monotonic() + 5
        while len(workers := children_of(process.pid)) < 2:
            assert time.monotonic() < deadline, f"workers: {workers}"
            time.sleep(0.02)
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 5
        while len(set(children_of(process.pid)) - set(workers)) < 1:
            assert time.monotonic() < deadline, "no replacement worker started"
            time.sleep(0.05)
        assert [exchange(path, b"PING\n") for _ in range(4)] == [[b"OK\tpong\n"]] * 4
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0
    assert b"ended unexpectedly (signal SIGKILL)" in err


# Database outage, against a PostgreSQL instance of our own.

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class ThrowawayPostgres:
    """A PostgreSQL cluster in a temporary directory, run as user postgres."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = _free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *command],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def create(self) -> None:
        shutil.chown(self.directory, "postgres")
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.directory / "data"),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c fsync=off"
        )
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.directory / "data"),
            "-o",
            options,
            "-l",
            str(self.directory / "log"),
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.directory / "data"),
            "-m",
            mode,
            "-w",
            "stop",
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def own_postgres(short_dir) -> Iterator[ThrowawayPostgres]:
    if os.geteuid() != 0 or not (PG_BIN / "initdb").exists():
        pytest.skip("needs root and Debian's PostgreSQL 15 binaries")
    server = ThrowawayPostgres(short_dir)
    server.create()
    server.start()
    try:
        yield server
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(short_dir / "data"),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            check=False,
        )


def test_database_outage_fails_requests_cleanly_and_recovery_needs_no_restart(
    own_postgres, short_dir
):
    from poolmgr import db, migrate

    engine = db.get_engine(own_postgres.url)
    migrate.upgrade(engine)
    path = short_dir / "s.sock"
    kim = "/DC=org/DC=example/CN=Kim Sample"
    try:
        with running(mapper_handler(engine), path):
            (before,) = exchange(path, f"MAP\t{JANE}\t/atlas\n".encode())
            own_postgres.stop()

            started = time.monotonic()
            during = exchange(
                path,
                f"MAP\t{JANE}\t/atlas\n".encode(),
                f"MAP\t{kim}\t/atlas\n".encode(),
                b"PING\n",
            )
            elapsed = time.monotonic() - started

            own_postgres.start()
            after = exchange(
                path,
                f"MAP\t{kim}\t/atlas\n".encode(),
                f"MAP\t{JANE}\t/atlas\n".encode(),
            )
        leases = open_leases(engine)
    finally:
        engine.dispose()

    assert before.startswith(b"OK\tatlas001\t")
    assert [line.split(b"\t")[:2] for line in during[:2]] == [
        [b"ERR", b"DB_UNAVAILABLE"]
    ] * 2
    assert during[2] == b"OK\tpong\n"
    assert elapsed < 3, f"requests took {elapsed:.1f} s to fail with the database down"
    assert after[0].startswith(b"OK\tatlas002\t") and after[1] == before
    assert len(leases) == 2, "a failed request left a lease behind"


# The query command.


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (None, 0),
        (NoLeaseError("No open lease."), 7),
        (DatabaseUnavailableError("Database x is unavailable: gone"), 8),
        (RuntimeError("bug"), 70),
    ],
    ids=["ok", "no-lease", "db-down", "internal"],
)
def test_query_prints_the_reply_and_exits_like_map(short_dir, capsys, error, code):
    from poolmgr.cli import main

    path = short_dir / "s.sock"
    with running(fake_handler(error=error), path):
        status = main(
            ["query", "--socket", str(path), "--verify", JANE, "-f", "/atlas"]
        )
    out, err = capsys.readouterr()
    assert status == code, err
    if code == 0:
        assert out == "atlas001\t20001\t2000\t2100\tatlas:7\n"
    else:
        assert out == "" and err.startswith("poolmgr: ")


def test_query_ping_and_unreachable_service(short_dir, capsys):
    from poolmgr.cli import main

    path = short_dir / "s.sock"
    with running(fake_handler(), path):
        assert main(["query", "--socket", str(path), "--ping"]) == 0
    assert capsys.readouterr().out == "pong\n"
    assert main(["query", "--socket", str(path), "--ping"]) == 1
    assert "Cannot talk to the mapping service" in capsys.readouterr().err
