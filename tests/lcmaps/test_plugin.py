"""The lcmaps_poolmgr plugin inside the real LCMAPS library, against a fake service."""

import json
import pwd
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lcmaps_harness import (
    PLUGIN_SOURCE,
    DriverResult,
    LcmapsBuild,
    StartServer,
    fake_server_command,
    make_certificate,
    make_short_dir,
    run_driver,
    running_server,
    write_lcmaps_db,
)

pytestmark = pytest.mark.lcmaps

ANN = "/DC=org/DC=poolmgr-test/CN=Ann Example"
BOB = "/DC=org/DC=poolmgr-test/CN=Bob Example"
OLGA = "/DC=org/DC=poolmgr-test/CN=Olga Operator"


@dataclass(frozen=True)
class Site:
    """An lcmaps.db pointing at one running fake server, and its request record."""

    db: Path
    record: Path

    def requests(self) -> list[str]:
        """Every raw request line the server received, in order."""
        if not self.record.exists():
            return []
        lines = self.record.read_text().splitlines()
        return [json.loads(line)["raw"] for line in lines]


def make_site(
    lcmaps_build: LcmapsBuild,
    start_server: StartServer,
    directory: Path,
    *options: str,
    timeout: str = "5",
) -> Site:
    """Start the fake server with options and write an lcmaps.db that uses it."""
    sock = directory / "s.sock"
    record = directory / "requests.jsonl"
    start_server(fake_server_command(sock, "--record", str(record), *options), sock)
    plugin_args = f"-socket {sock} -timeout {timeout}"
    return Site(write_lcmaps_db(directory, lcmaps_build.plugin, plugin_args), record)


@pytest.fixture
def pool_site(
    lcmaps_build: LcmapsBuild, start_server: StartServer, short_dir: Path
) -> Site:
    """A fake service with in-memory pools chosen by the first FQAN."""
    return make_site(lcmaps_build, start_server, short_dir)


@dataclass(frozen=True)
class CannedSite(Site):
    """A fake service that answers every request with the bytes of reply_file."""

    reply_file: Path

    def map_with_reply(self, lcmaps_build: LcmapsBuild, reply: bytes) -> DriverResult:
        """Map ANN while the service answers with reply."""
        self.reply_file.write_bytes(reply)
        return run_driver(lcmaps_build, self.db, [ANN, "/atlas"])


@pytest.fixture(scope="module")
def canned_site(lcmaps_build: LcmapsBuild) -> Iterator[CannedSite]:
    """One canned-reply server shared by the reply-checking tests of this module."""
    directory = make_short_dir()
    sock = directory / "s.sock"
    record = directory / "requests.jsonl"
    reply_file = directory / "reply"
    reply_file.write_bytes(b"")
    command = fake_server_command(
        sock, "--record", str(record), "--reply-file", str(reply_file)
    )
    try:
        with running_server(command, sock):
            db = write_lcmaps_db(directory, lcmaps_build.plugin, f"-socket {sock}")
            yield CannedSite(db, record, reply_file)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def assert_failed(result: DriverResult, log_fragment: str) -> None:
    """The mapping failed and the LCMAPS log names the reason."""
    assert result.returncode == 1, f"expected a failed mapping, got {result.data}"
    assert result.data["rc"] == 1, f"expected LCMAPS rc 1, got {result.data}"
    assert log_fragment in result.log, (
        f"expected {log_fragment!r} in the LCMAPS log:\n{result.log}"
    )


def test_map_registers_uid_gids_and_pool_index_from_the_reply(
    lcmaps_build: LcmapsBuild, pool_site: Site
) -> None:
    result = run_driver(lcmaps_build, pool_site.db, [BOB, "/cms"])

    assert result.returncode == 0, f"mapping failed: {result.data}\n{result.log}"
    expected = {"uid": 30001, "pgids": [3000], "sgids": [3001, 3002]}
    got = {key: result.data[key] for key in expected}
    assert got == expected
    assert result.data["poolindex"] == "lease-cms001"
    assert "mapped DN '" + BOB + "' to account cms001" in result.log


def test_same_dn_twice_gets_the_same_account(
    lcmaps_build: LcmapsBuild, pool_site: Site
) -> None:
    first = run_driver(lcmaps_build, pool_site.db, [ANN, "/atlas"])
    other = run_driver(lcmaps_build, pool_site.db, [BOB, "/atlas"])
    second = run_driver(lcmaps_build, pool_site.db, [ANN, "/atlas"])

    assert (first.data["uid"], first.data["poolindex"]) == (20001, "lease-atlas001")
    assert other.data["uid"] == 20002, "a second DN must get another account"
    assert (second.data["uid"], second.data["poolindex"]) == (
        first.data["uid"],
        first.data["poolindex"],
    )


@pytest.mark.parametrize(
    ("fqans", "uid", "gid"),
    [
        pytest.param(["/atlas/Role=production", "/atlas"], 21001, 2100, id="prod"),
        pytest.param(["/atlas", "/atlas/Role=production"], 20001, 2000, id="plain"),
        pytest.param(["/cms/Role=NULL/Capability=NULL"], 30001, 3000, id="cms"),
        pytest.param([], 40001, 4000, id="no-fqan"),
    ],
)
def test_fqans_in_order_choose_the_pool(
    lcmaps_build: LcmapsBuild, pool_site: Site, fqans: list[str], uid: int, gid: int
) -> None:
    result = run_driver(lcmaps_build, pool_site.db, [ANN, *fqans])

    assert (result.data.get("uid"), result.data.get("pgids")) == (uid, [gid])
    expected = "\t".join(["MAP", ANN, *fqans]) + "\n"
    assert pool_site.requests() == [expected]


@pytest.mark.parametrize(
    ("dn", "fqans", "sent"),
    [
        pytest.param(
            "/DC=org/CN=Tab\there 100%\nnew\rline",
            [],
            "MAP\t/DC=org/CN=Tab%09here 100%25%0Anew%0Dline\n",
            id="dn",
        ),
        pytest.param(
            ANN,
            ["/atlas/Role=a\tb%"],
            f"MAP\t{ANN}\t/atlas/Role=a%09b%25\n",
            id="fqan",
        ),
    ],
)
def test_reserved_bytes_in_fields_are_percent_encoded(
    lcmaps_build: LcmapsBuild, pool_site: Site, dn: str, fqans: list[str], sent: str
) -> None:
    result = run_driver(lcmaps_build, pool_site.db, [dn, *fqans])

    assert pool_site.requests() == [sent]
    assert result.returncode == 0, f"mapping failed: {result.data}\n{result.log}"


def test_verify_mode_sends_verify_and_succeeds_only_for_the_leased_uid(
    lcmaps_build: LcmapsBuild, pool_site: Site, short_dir: Path
) -> None:
    cert = make_certificate(short_dir, ANN)
    verify = ["-V", str(cert), "-u", "40001"]

    before = run_driver(lcmaps_build, pool_site.db, verify)
    mapped = run_driver(lcmaps_build, pool_site.db, [ANN])
    after = run_driver(lcmaps_build, pool_site.db, verify)
    wrong_uid = run_driver(lcmaps_build, pool_site.db, ["-V", str(cert), "-u", "40002"])

    assert pool_site.requests() == [
        f"VERIFY\t{ANN}\n",
        f"MAP\t{ANN}\n",
        f"VERIFY\t{ANN}\n",
        f"VERIFY\t{ANN}\n",
    ]
    assert_failed(
        before, "VERIFY failed for DN '" + ANN + "': service refused: NO_LEASE"
    )
    assert mapped.data["uid"] == 40001, "the lease was made by MAP, not by VERIFY"
    assert after.returncode == 0, f"verify failed:\n{after.log}"
    assert "verified DN '" + ANN + "' to account dnonly001" in after.log
    assert wrong_uid.returncode == 1, (
        "LCMAPS must reject a uid the service did not give"
    )


@pytest.mark.parametrize(
    ("dn_length", "sent"),
    [
        pytest.param(16379, True, id="16384-bytes-sent"),
        pytest.param(16380, False, id="16385-bytes-refused"),
    ],
)
def test_request_line_is_limited_to_16384_bytes(
    lcmaps_build: LcmapsBuild, pool_site: Site, dn_length: int, sent: bool
) -> None:
    dn = "/CN=" + "y" * (dn_length - 4)

    result = run_driver(lcmaps_build, pool_site.db, [dn])

    assert [len(line) for line in pool_site.requests()] == ([16384] if sent else [])
    assert result.returncode == (0 if sent else 1), result.log
    if not sent:
        assert_failed(result, "the request would pass the protocol limit of 16384")


ERROR_CODES = [
    "BAD_REQUEST",
    "BAD_INPUT",
    "NO_POOL",
    "POOL_EXHAUSTED",
    "BANNED",
    "BAN_LIST_UNAVAILABLE",
    "NO_LEASE",
    "DB_UNAVAILABLE",
    "CONTENTION",
    "INTERNAL",
]


@pytest.mark.parametrize("code", ERROR_CODES)
def test_err_reply_fails_the_mapping_and_logs_the_code(
    lcmaps_build: LcmapsBuild, canned_site: CannedSite, code: str
) -> None:
    reply = f"ERR\t{code}\tsomething about %25 this\n".encode()

    result = canned_site.map_with_reply(lcmaps_build, reply)

    assert_failed(result, f"service refused: {code}: something about % this")
    assert "LOG_NOTICE" in result.log.split("service refused")[0].splitlines()[-1]


OK_GOOD = b"OK\tatlas001\t20001\t2000\t2001,2002\tlease-atlas001"


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        pytest.param(b"", "malformed reply from service: ''", id="empty-line"),
        pytest.param(b"MAYBE\tx", "malformed reply from service", id="unknown-word"),
        pytest.param(b"OK\ta\t1\t1\t", "malformed reply from service", id="5-fields"),
        pytest.param(OK_GOOD + b"\tx", "malformed reply from service", id="7-fields"),
        pytest.param(b"ERR\tNO_POOL", "malformed reply from service", id="err-short"),
        pytest.param(b"ok\ta\t1\t1\t\tl", "malformed reply from service", id="ok-case"),
        pytest.param(b"OK\t\t20001\t2000\t\tl", "bad account name", id="no-account"),
        pytest.param(b"OK\ta b\t20001\t2000\t\tl", "bad account name", id="acct-sp"),
        pytest.param(b"OK\ta\tabc\t2000\t\tl", "uid 'abc' is not a", id="uid-text"),
        pytest.param(b"OK\ta\t-5\t2000\t\tl", "uid '-5' is not a", id="uid-neg"),
        pytest.param(b"OK\ta\t+5\t2000\t\tl", "uid '+5' is not a", id="uid-plus"),
        pytest.param(b"OK\ta\t 5\t2000\t\tl", "uid ' 5' is not a", id="uid-space"),
        pytest.param(b"OK\ta\t\t2000\t\tl", "uid '' is not a", id="uid-empty"),
        pytest.param(
            b"OK\ta\t4294967296\t2000\t\tl", "uid '4294967296' is not", id="uid-2^32"
        ),
        pytest.param(
            b"OK\ta\t4294967295\t2000\t\tl", "uid '4294967295' is not", id="uid-(-1)"
        ),
        pytest.param(
            b"OK\ta\t99999999999999999999\t2000\t\tl", "is not a valid", id="uid-huge"
        ),
        pytest.param(b"OK\ta\t20001\t2x\t\tl", "gid '2x' is not a", id="gid-text"),
        pytest.param(
            b"OK\ta\t20001\t2000\t2001,,2002\tl", "secondary gid '' is", id="sgid-gap"
        ),
        pytest.param(
            b"OK\ta\t20001\t2000\t2001,\tl", "secondary gid '' is", id="sgid-comma"
        ),
        pytest.param(
            b"OK\ta\t20001\t2000\t2001,2000\tl", "repeat the primary gid", id="sgid-pri"
        ),
        pytest.param(
            b"OK\ta\t20001\t2000\t" + b",".join([b"5"] * 1025) + b"\tl",
            "more than 1024 secondary gids",
            id="sgid-too-many",
        ),
        pytest.param(b"OK\ta\t20001\t2000\t\t", "bad lease key", id="no-lease"),
        pytest.param(b"OK\ta\t20001\t2000\t\tl%01x", "bad lease key", id="lease-ctl"),
        pytest.param(b"OK\ta\t20001\t2000\t\tl%zz", "bad percent-enc", id="bad-pct"),
        pytest.param(b"OK\ta\t20001\t2000\t\tl%00", "bad percent-enc", id="pct-nul"),
        pytest.param(b"OK\ta\x00\t20001\t2000\t\tl", "a NUL byte", id="raw-nul"),
        pytest.param(b"OK\t" + b"a" * 20000, "longer than 16384 bytes", id="too-long"),
    ],
)
def test_malformed_reply_fails_closed_and_logs_why(
    lcmaps_build: LcmapsBuild, canned_site: CannedSite, reply: bytes, reason: str
) -> None:
    result = canned_site.map_with_reply(lcmaps_build, reply + b"\n")

    assert_failed(result, reason)
    assert "LOG_ERR" in result.log.split(reason)[0].splitlines()[-1]


def test_canned_good_reply_is_accepted_with_percent_decoding(
    lcmaps_build: LcmapsBuild, canned_site: CannedSite
) -> None:
    reply = b"OK\tatlas001\t20001\t2000\t2001,2002\tlease%25key with%4a%4B\n"

    result = canned_site.map_with_reply(lcmaps_build, reply)

    assert result.returncode == 0, f"mapping failed:\n{result.log}"
    assert result.data["poolindex"] == "lease%key withJK"
    assert (result.data["uid"], result.data["sgids"]) == (20001, [2001, 2002])


@pytest.mark.parametrize(
    ("reply", "what"),
    [
        pytest.param(b"OK\troot\t0\t0\t\tl\n", "uid 0 (root)", id="uid"),
        pytest.param(b"OK\ta\t20001\t0\t\tl\n", "gid 0 (root)", id="gid"),
        pytest.param(b"OK\ta\t20001\t2000\t5,0\tl\n", "secondary gid 0", id="sgid"),
        pytest.param(b"OK\ta\t00\t2000\t\tl\n", "uid 0 (root)", id="uid-00"),
    ],
)
def test_root_ids_in_a_reply_are_refused(
    lcmaps_build: LcmapsBuild, canned_site: CannedSite, reply: bytes, what: str
) -> None:
    result = canned_site.map_with_reply(lcmaps_build, reply)

    assert_failed(result, f"refused reply: {what}")


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        pytest.param("--hangup", "closed the connection without a complete reply"),
        pytest.param("--no-newline", "closed the connection without a complete reply"),
    ],
)
def test_connection_closed_before_a_full_line_fails(
    lcmaps_build: LcmapsBuild,
    start_server: StartServer,
    short_dir: Path,
    option: str,
    reason: str,
) -> None:
    reply = short_dir / "reply"
    reply.write_bytes(OK_GOOD)
    site = make_site(
        lcmaps_build, start_server, short_dir, option, "--reply-file", str(reply)
    )

    result = run_driver(lcmaps_build, site.db, [ANN, "/atlas"])

    assert_failed(result, reason)


def test_silent_service_fails_within_the_timeout_plus_one_second(
    lcmaps_build: LcmapsBuild, start_server: StartServer, short_dir: Path
) -> None:
    site = make_site(lcmaps_build, start_server, short_dir, "--silent", timeout="1.5")

    result = run_driver(lcmaps_build, site.db, [ANN, "/atlas"])

    assert_failed(result, "timed out after 1500 ms while waiting for the reply")
    assert 1.5 <= result.elapsed < 2.5, f"took {result.elapsed:.2f} s"
    assert site.requests() == [f"MAP\t{ANN}\t/atlas\n"]


def _bind_without_listening(path: Path) -> socket.socket:
    """A socket file nobody listens on: what a crashed service leaves behind."""
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    return stale


@pytest.mark.parametrize(
    ("stale", "reason"),
    [
        pytest.param(False, "No such file or directory", id="no-socket-file"),
        pytest.param(True, "Connection refused", id="nobody-listening"),
    ],
)
def test_service_down_fails_fast(
    lcmaps_build: LcmapsBuild, short_dir: Path, stale: bool, reason: str
) -> None:
    sock = short_dir / "s.sock"
    db = write_lcmaps_db(short_dir, lcmaps_build.plugin, f"-socket {sock} -timeout 30")
    holder = _bind_without_listening(sock) if stale else None

    try:
        result = run_driver(lcmaps_build, db, [ANN, "/atlas"])
    finally:
        if holder is not None:
            holder.close()

    assert_failed(result, f"MAP failed for DN '{ANN}': cannot connect to {sock}")
    assert reason in result.log
    assert result.elapsed < 1.0, f"took {result.elapsed:.2f} s with the service down"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param("-timeout 0", "-timeout must be a number", id="timeout-zero"),
        pytest.param("-timeout 0.0001", "-timeout must be a number", id="under-1ms"),
        pytest.param("-timeout abc", "-timeout must be a number", id="timeout-text"),
        pytest.param("-timeout 2,5", "-timeout must be a number", id="timeout-comma"),
        pytest.param("-timeout -1", "-timeout must be a number", id="timeout-neg"),
        pytest.param("-timeout 3601", "-timeout must be a number", id="timeout-big"),
        pytest.param(
            "-socket relative.sock", "must be an absolute path", id="relative"
        ),
        pytest.param("-socket /" + "x" * 120, "longer than 107 bytes", id="long-path"),
        pytest.param("-sock /tmp/x", "unknown argument '-sock'", id="unknown"),
        pytest.param("-socket", "argument '-socket' needs a value", id="no-value"),
    ],
)
def test_bad_lcmaps_db_arguments_stop_lcmaps_from_starting(
    lcmaps_build: LcmapsBuild, short_dir: Path, args: str, message: str
) -> None:
    db = write_lcmaps_db(short_dir, lcmaps_build.plugin, args)

    result = run_driver(lcmaps_build, db, [ANN])

    assert (result.returncode, result.data) == (2, {"mode": "init", "rc": -1})
    assert message in result.log, f"expected {message!r} in:\n{result.log}"


def test_one_process_maps_repeatedly_without_failures(
    lcmaps_build: LcmapsBuild, pool_site: Site
) -> None:
    result = run_driver(lcmaps_build, pool_site.db, ["-n", "300", ANN, "/atlas"])

    assert (result.data["calls"], result.data["failures"]) == (300, 0)
    assert result.data["median_ms"] < 20, f"median {result.data['median_ms']} ms"
    assert len(pool_site.requests()) == 300


def write_example_db(lcmaps_build: LcmapsBuild, directory: Path, sock: Path) -> Path:
    """The shipped lcmaps.db.example, pointed at this build, socket and a local map."""
    local_map = directory / "grid-mapfile-local"
    local_map.write_text(f'"{OLGA}" nobody\n')
    text = (PLUGIN_SOURCE / "lcmaps.db.example").read_text()
    for old, new in [
        ('"lcmaps_poolmgr.mod"', f'"{lcmaps_build.plugin}"'),
        ("/run/poolmgr/poolmgr.sock", str(sock)),
        ("/etc/grid-security/grid-mapfile-local", str(local_map)),
    ]:
        assert old in text, f"lcmaps.db.example no longer mentions {old}"
        text = text.replace(old, new)
    db = directory / "lcmaps.db"
    db.write_text(text)
    return db


def test_example_db_maps_every_dn_through_poolmgr_while_it_runs(
    lcmaps_build: LcmapsBuild, start_server: StartServer, short_dir: Path
) -> None:
    sock = short_dir / "s.sock"
    start_server(fake_server_command(sock), sock)
    db = write_example_db(lcmaps_build, short_dir, sock)

    results = [run_driver(lcmaps_build, db, [dn]).data.get("uid") for dn in (ANN, OLGA)]

    assert results == [40001, 40002]


def test_example_db_falls_back_to_local_accounts_only_when_poolmgr_is_down(
    lcmaps_build: LcmapsBuild, short_dir: Path
) -> None:
    db = write_example_db(lcmaps_build, short_dir, short_dir / "s.sock")

    pool_user = run_driver(lcmaps_build, db, [ANN])
    operator = run_driver(lcmaps_build, db, [OLGA])
    named_policy = run_driver(lcmaps_build, db, ["-p", "poolmgr_verify", OLGA])

    assert_failed(pool_user, "cannot connect to")
    assert operator.data.get("uid") == pwd.getpwnam("nobody").pw_uid, operator.log
    assert_failed(named_policy, "cannot connect to")
