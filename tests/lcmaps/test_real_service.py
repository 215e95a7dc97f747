"""The real LCMAPS library with the poolmgr plugin against a real ``poolmgr serve``.

Issue 4's proof: the same DN twice gets the same account, the primary FQAN
chooses the pool, verify mode creates nothing, a ban is refused, and a
stopped or hung service makes the mapping fail instead of hanging.
"""

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from lcmaps_harness import (
    DriverResult,
    LcmapsBuild,
    is_known_person,
    make_certificate,
    make_short_dir,
    open_lease_uses,
    run_driver,
    run_poolmgr,
    running_server,
    serve_command,
    write_lcmaps_db,
    write_poolmgr_config,
)

pytestmark = pytest.mark.lcmaps

ATLAS_CARD = """\
format: poolmgr-vocard/1
vo: atlas
voms_servers: []
fqans:
  - fqan: /atlas
  - fqan: /atlas/Role=production
extensions:
  poolmgr:
    pools:
      - name: atlasprd
        serves: [/atlas/Role=production]
        accounts: 3
      - name: atlas
        serves: [/atlas]
        accounts: 6
"""
DTEAM_CARD = """\
format: poolmgr-vocard/1
vo: dteam
voms_servers: []
fqans:
  - fqan: /dteam
extensions:
  poolmgr:
    pools:
      - name: dteam
        serves: [/dteam]
        accounts: 4
"""
CARDS = {"atlas": ATLAS_CARD, "dteam": DTEAM_CARD}

TEST_DC = "/DC=org/DC=poolmgr-test"
ANN = f"{TEST_DC}/CN=Ann Example"
BEN = f"{TEST_DC}/CN=Ben Banned"
VERA = f"{TEST_DC}/CN=Vera Verified"
STRANGER = f"{TEST_DC}/CN=Stan Stranger"
# How OpenSSL prints "CN=José Müller" from a certificate, as LCMAPS gets it.
JOSE_CERT_FORM = f"{TEST_DC}/CN=Jos\\xC3\\xA9 M\\xC3\\xBCller"
JOSE_UTF8 = f"{TEST_DC}/CN=José Müller"
PLUGIN_TIMEOUT = 1.5


@dataclass(frozen=True)
class ServiceSite:
    """A synced poolmgr site, its running service and an lcmaps.db using it."""

    config: Path
    db: Path
    process: subprocess.Popen[bytes]

    def lcmaps_map(self, lcmaps_build: LcmapsBuild, *args: str) -> DriverResult:
        """Run one LCMAPS mapping (or verification) through the plugin."""
        return run_driver(lcmaps_build, self.db, args)


@contextmanager
def running_site(lcmaps_build: LcmapsBuild, directory: Path) -> Iterator[ServiceSite]:
    """Sync the VO cards, start ``poolmgr serve``, point LCMAPS at its socket."""
    config = write_poolmgr_config(directory, CARDS, "dn_only_pool: dteam\n")
    synced = run_poolmgr(config, "sync")
    assert synced.code == 0, f"poolmgr sync failed: {synced.err}"

    sock = directory / "s.sock"
    with running_server(serve_command(config, sock), sock) as process:
        plugin_args = f"-socket {sock} -timeout {PLUGIN_TIMEOUT}"
        db = write_lcmaps_db(directory, lcmaps_build.plugin, plugin_args)
        yield ServiceSite(config, db, process)


@pytest.fixture(scope="module")
def site(lcmaps_build: LcmapsBuild) -> Iterator[ServiceSite]:
    """One service for the tests that leave it running; each uses its own DNs."""
    directory = make_short_dir()
    try:
        with running_site(lcmaps_build, directory) as running:
            yield running
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def assert_mapped(result: DriverResult) -> None:
    """The LCMAPS mapping succeeded."""
    assert result.returncode == 0, f"mapping failed: {result.data}\n{result.log}"


def assert_refused(result: DriverResult, log_fragment: str) -> None:
    """The LCMAPS call failed and its log says why."""
    assert result.returncode == 1, f"expected a failure, got {result.data}"
    assert log_fragment in result.log, (
        f"expected {log_fragment!r} in the LCMAPS log:\n{result.log}"
    )


def test_same_dn_twice_gets_the_same_account_and_one_lease(
    lcmaps_build: LcmapsBuild, site: ServiceSite
) -> None:
    first = site.lcmaps_map(lcmaps_build, ANN, "/atlas")
    second = site.lcmaps_map(lcmaps_build, ANN, "/atlas")

    assert_mapped(first)
    assert_mapped(second)
    assert (second.data["uid"], second.data["poolindex"]) == (
        first.data["uid"],
        first.data["poolindex"],
    )
    leases = run_poolmgr(site.config, "leases", "--json", "--dn", ANN).json()
    assert len(leases) == 1, f"expected one lease for {ANN}, got {leases}"
    lease = leases[0]
    assert first.data["poolindex"] == f"{lease['pool']}:{lease['lease_id']}"


@pytest.mark.parametrize(
    ("fqans", "pool"),
    [
        pytest.param(["/atlas/Role=production", "/atlas"], "atlasprd", id="prod"),
        pytest.param(["/atlas", "/atlas/Role=production"], "atlas", id="plain"),
    ],
)
def test_first_fqan_chooses_the_pool_and_ids_match_poolmgr_map(
    lcmaps_build: LcmapsBuild, site: ServiceSite, fqans: list[str], pool: str
) -> None:
    dn = f"{TEST_DC}/CN=Routed {pool}"

    result = site.lcmaps_map(lcmaps_build, dn, *fqans)

    assert_mapped(result)
    args = [arg for fqan in fqans for arg in ("--fqan", fqan)]
    answer = run_poolmgr(site.config, "map", "--json", dn, *args).json()
    assert (answer["pool"], answer["new"]) == (pool, False)
    secondary = [gid for gid in answer["groups"] if gid != answer["gid"]]
    assert secondary, "the other FQAN's pool must give a secondary gid"
    registered = {key: result.data[key] for key in ("uid", "pgids", "sgids")}
    assert registered == {
        "uid": answer["uid"],
        "pgids": [answer["gid"]],
        "sgids": secondary,
    }


def test_certificate_form_of_a_non_ascii_dn_is_the_same_person_as_utf8(
    lcmaps_build: LcmapsBuild, site: ServiceSite
) -> None:
    result = site.lcmaps_map(lcmaps_build, JOSE_CERT_FORM, "/atlas")

    assert_mapped(result)
    answer = run_poolmgr(site.config, "map", "--json", JOSE_UTF8, "-f", "/atlas")
    assert (answer.json()["uid"], answer.json()["new"]) == (result.data["uid"], False)


def test_verify_confirms_a_lease_and_creates_nothing_without_one(
    lcmaps_build: LcmapsBuild, site: ServiceSite, short_dir: Path
) -> None:
    (short_dir / "vera").mkdir()
    (short_dir / "stan").mkdir()
    vera_cert = make_certificate(short_dir / "vera", VERA)
    stranger_cert = make_certificate(short_dir / "stan", STRANGER)
    mapped = site.lcmaps_map(lcmaps_build, VERA)
    assert_mapped(mapped)
    uid = str(mapped.data["uid"])
    uses_before = open_lease_uses(site.config)

    confirmed = site.lcmaps_map(lcmaps_build, "-V", str(vera_cert), "-u", uid)
    refused = site.lcmaps_map(lcmaps_build, "-V", str(stranger_cert), "-u", uid)

    assert_mapped(confirmed)
    assert f"verified DN '{VERA}' to account dteam" in confirmed.log
    assert_refused(refused, "service refused: NO_LEASE")
    stranger = run_poolmgr(site.config, "leases", "--json", "--all", "--dn", STRANGER)
    assert stranger.json() == [], "verify mode must not create a lease"
    assert not is_known_person(site.config, STRANGER), "nor an identity"
    assert open_lease_uses(site.config) == uses_before, "nor touch a last use"


def test_banned_person_is_refused_and_their_lease_is_not_touched(
    lcmaps_build: LcmapsBuild, site: ServiceSite
) -> None:
    assert_mapped(site.lcmaps_map(lcmaps_build, BEN, "/atlas"))
    banned = run_poolmgr(site.config, "ban", BEN, "--reason", "x")
    assert banned.code == 0, banned.err
    uses_before = open_lease_uses(site.config)

    result = site.lcmaps_map(lcmaps_build, BEN, "/atlas")

    assert_refused(result, "service refused: BANNED")
    assert open_lease_uses(site.config) == uses_before


@pytest.mark.parametrize(
    ("stop", "log_fragment"),
    [
        pytest.param(signal.SIGTERM, "cannot connect to", id="sigterm"),
        pytest.param(signal.SIGSTOP, "timed out after 1500 ms", id="hung"),
    ],
)
def test_stopped_service_fails_the_mapping_within_the_timeout(
    lcmaps_build: LcmapsBuild,
    short_dir: Path,
    stop: signal.Signals,
    log_fragment: str,
) -> None:
    with running_site(lcmaps_build, short_dir) as own:
        assert_mapped(own.lcmaps_map(lcmaps_build, ANN, "/atlas"))
        # SIGTERM goes to the supervisor, which stops its workers; a hung
        # service is every process of it.
        pids = [own.process.pid]
        if stop == signal.SIGSTOP:
            pids += child_pids(own.process.pid)
        for pid in pids:
            os.kill(pid, stop)
        try:
            if stop == signal.SIGTERM:
                assert own.process.wait(timeout=10) == 0, "serve must exit 0"
            result = own.lcmaps_map(lcmaps_build, ANN, "/atlas")
        finally:
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    assert_refused(result, log_fragment)
    assert result.elapsed < PLUGIN_TIMEOUT + 1, f"took {result.elapsed:.2f} s"


def child_pids(pid: int) -> list[int]:
    """Return the ids of pid's child processes."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children
