"""Build the LCMAPS plugin and driver, start a line-protocol server, run LCMAPS.

Plain functions so that any test can drive the real LCMAPS library against any
server command: the fake server here, or `poolmgr serve`.
"""

import ctypes.util
import io
import itertools
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PLUGIN_SOURCE = REPO / "contrib" / "lcmaps-poolmgr"
DRIVER_SOURCE = HERE / "driver.c"
FAKE_SERVER = HERE / "fakeserver.py"
LCMAPS_HEADER = Path("/usr/include/lcmaps/lcmaps_basic.h")
DEBIAN_MODULES = Path("/usr/lib/lcmaps")
DUMMY_GOOD = DEBIAN_MODULES / "lcmaps_dummy_good.mod"

_log_numbers = itertools.count(1)

StartServer = Callable[..., Path]


@dataclass(frozen=True)
class LcmapsBuild:
    """The plugin module and the driver program, built for one test session."""

    plugin: Path
    driver: Path


@dataclass(frozen=True)
class DriverResult:
    """One driver run: its exit status, its JSON line, the LCMAPS log, the time."""

    returncode: int
    data: dict[str, Any]
    log: str
    elapsed: float


def is_lcmaps_installed() -> bool:
    """Whether the LCMAPS library and its Debian headers are installed."""
    return LCMAPS_HEADER.exists() and ctypes.util.find_library("lcmaps") is not None


def find_missing_tools() -> list[str]:
    """What else building and running the tests needs but this machine lacks."""
    missing = [tool for tool in ("cc", "make", "openssl") if shutil.which(tool) is None]
    if not DUMMY_GOOD.exists():
        missing.append(f"{DUMMY_GOOD} (lcmaps-plugins-basic-dummy)")
    return missing


def _run_checked(command: Sequence[str]) -> None:
    """Run a build step; a failure raises with the compiler's output."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed with status {done.returncode}:\n"
            f"{done.stdout}{done.stderr}"
        )


def build(destination: Path) -> LcmapsBuild:
    """Build the plugin with its Makefile and the driver with cc, in destination."""
    plugin_dir = destination / "plugin"
    _run_checked(["make", "-s", "-C", str(PLUGIN_SOURCE), f"BUILDDIR={plugin_dir}"])

    driver = destination / "driver"
    _run_checked(
        ["cc", "-Wall", "-Wextra", "-Werror", "-O2", "-o", str(driver)]
        + [str(DRIVER_SOURCE), "-llcmaps"]
    )
    return LcmapsBuild(plugin=plugin_dir / "lcmaps_poolmgr.mod", driver=driver)


def write_lcmaps_db(
    directory: Path, plugin: Path, plugin_args: str, policy: str = "poolmgr_policy"
) -> Path:
    """An lcmaps.db with one policy: the poolmgr plugin, then the dummy good one."""
    db = directory / "lcmaps.db"
    db.write_text(
        f"path = {DEBIAN_MODULES}\n\n"
        f'poolmgr = "{plugin}" "{plugin_args}"\n'
        f'good = "{DUMMY_GOOD.name}"\n\n'
        f"{policy}:\n"
        "poolmgr -> good\n"
    )
    return db


def lcmaps_environment(db: Path) -> dict[str, str]:
    """The environment that points LCMAPS at db and logs up to LOG_INFO."""
    env = dict(os.environ)
    env.update(
        LCMAPS_DIR=str(db.parent),
        LCMAPS_DB_FILE=db.name,
        LCMAPS_DEBUG_LEVEL="4",
    )
    env.pop("LCMAPS_POLICY_NAME", None)
    return env


def run_driver(
    lcmaps: LcmapsBuild, db: Path, args: Sequence[str], timeout: float = 60.0
) -> DriverResult:
    """Run the driver once with a fresh log file and parse its JSON line."""
    log = db.parent / f"lcmaps-{next(_log_numbers)}.log"
    start = time.monotonic()
    done = subprocess.run(
        [str(lcmaps.driver), "-l", str(log), *args],
        capture_output=True,
        env=lcmaps_environment(db),
        timeout=timeout,
        check=False,
    )
    elapsed = time.monotonic() - start

    lines = done.stdout.decode().splitlines()
    data = json.loads(lines[-1]) if lines else {}
    text = log.read_text(errors="replace") if log.exists() else ""
    return DriverResult(done.returncode, data, text, elapsed)


def _is_listening(path: Path) -> bool:
    """Whether a stream connection to the Unix socket at path succeeds."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@contextmanager
def running_server(
    command: Sequence[str],
    socket_path: Path,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 10.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start command, wait until socket_path accepts connections, stop it after.

    The command must create the listening Unix socket at socket_path itself.
    """
    stderr_path = socket_path.with_name(socket_path.name + ".stderr")
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            env=None if env is None else dict(env),
        )
    try:
        _wait_until_listening(process, socket_path, stderr_path, ready_timeout)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_listening(
    process: subprocess.Popen[bytes], path: Path, stderr_path: Path, timeout: float
) -> None:
    """Poll until the server listens; raise with its output if it dies or stalls."""
    deadline = time.monotonic() + timeout
    while not _is_listening(path):
        if process.poll() is not None:
            output = stderr_path.read_text(errors="replace")
            raise RuntimeError(
                f"server {process.args!r} exited with status {process.returncode} "
                f"before listening on {path}:\n{output}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"server {process.args!r} did not listen on {path}")
        time.sleep(0.01)


def make_short_dir() -> Path:
    """A fresh directory under /tmp: Unix socket paths must stay under 108 bytes."""
    return Path(tempfile.mkdtemp(prefix="pm-lcmaps-", dir="/tmp"))


def fake_server_command(socket_path: Path, *options: str) -> list[str]:
    """The command that runs fakeserver.py on socket_path with options."""
    return [sys.executable, str(FAKE_SERVER), str(socket_path), *options]


def make_certificate(directory: Path, subject: str) -> Path:
    """A self-signed end-entity certificate for subject, as LCMAPS verify needs."""
    cert = directory / "cert.pem"
    _run_checked(
        ["openssl", "req", "-x509", "-newkey", "ec"]
        + ["-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"]
        + ["-subj", subject, "-addext", "basicConstraints=critical,CA:FALSE"]
        + ["-keyout", str(directory / "key.pem"), "-out", str(cert)]
    )
    return cert


# Helpers for driving the real poolmgr: its CLI, its service, its NSS lines.


@dataclass(frozen=True)
class CliRun:
    """One in-process poolmgr command: exit status, stdout, stderr."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """The JSON the command printed; raises with its stderr if it failed."""
        if self.code != 0:
            raise AssertionError(f"poolmgr exited {self.code}: {self.err}")
        return json.loads(self.out)


def poolmgr_executable() -> Path:
    """The poolmgr console script of the virtualenv running the tests."""
    return Path(sys.executable).parent / "poolmgr"


def write_poolmgr_config(
    directory: Path, cards: Mapping[str, str], extra: str = ""
) -> Path:
    """A site config with an SQLite database and the VO cards in directory."""
    card_dir = directory / "vocards"
    card_dir.mkdir()
    for name, text in cards.items():
        (card_dir / f"{name}.yaml").write_text(text)
    config = directory / "poolmgr.yaml"
    config.write_text(
        f"database: sqlite:///{directory / 'poolmgr.db'}\n"
        f"vocards: {card_dir}\n"
        "check_nss: false\n"
        "last_use_resolution: 0\n"
        "syslog:\n  enabled: false\n" + extra
    )
    return config


def run_poolmgr(config: Path, *args: str) -> CliRun:
    """Run one poolmgr command in this process, with config.

    The same entry point as the console script, without its interpreter
    start-up (over a second per command), which would blow the time budget.
    """
    from poolmgr.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["--config", str(config), *args])
    return CliRun(code, out.getvalue(), err.getvalue())


def serve_command(config: Path, socket_path: Path) -> list[str]:
    """The command that runs the real mapping service on socket_path."""
    return [
        str(poolmgr_executable()),
        *("--config", str(config), "serve", "--socket", str(socket_path)),
    ]


_NAMESPACE_WRAPPER = """#!/bin/sh
# Runs the driver with passwd and group copies bind-mounted over /etc in a
# private mount namespace: the pool accounts resolve, the system is untouched.
exec unshare --mount {user_option} sh -c \\
    'mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group \\
     && shift 2 && exec "$@"' \\
    sh {passwd} {group} {driver} "$@"
"""


def _unshare_user_option() -> str:
    """Root can unshare itself; anybody else needs a user namespace too."""
    return "" if os.geteuid() == 0 else "--map-root-user"


def namespace_problem() -> str | None:
    """Why a private mount namespace with bind mounts is impossible, or None."""
    command = ["unshare", "--mount", *_unshare_user_option().split()]
    command += ["mount", "--bind", "/etc/passwd", "/etc/passwd"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "unshare (util-linux) is not installed"
    if done.returncode != 0:
        return f"{' '.join(command)} failed: {done.stderr.strip()}"
    return None


def with_accounts(
    lcmaps: LcmapsBuild, directory: Path, passwd_lines: str, group_lines: str
) -> LcmapsBuild:
    """The build, its driver wrapped to see extra passwd and group lines.

    The copies are the real files plus the given lines; they exist only
    inside the wrapper's mount namespace, so /etc is never modified.
    """
    passwd = directory / "passwd"
    group = directory / "group"
    passwd.write_text(Path("/etc/passwd").read_text() + passwd_lines)
    group.write_text(Path("/etc/group").read_text() + group_lines)
    wrapper = directory / "driver-with-accounts"
    wrapper.write_text(
        _NAMESPACE_WRAPPER.format(
            user_option=_unshare_user_option(),
            passwd=shlex.quote(str(passwd)),
            group=shlex.quote(str(group)),
            driver=shlex.quote(str(lcmaps.driver)),
        )
    )
    wrapper.chmod(0o755)
    return LcmapsBuild(plugin=lcmaps.plugin, driver=wrapper)


def open_lease_uses(config: Path) -> dict[str, tuple[str, datetime]]:
    """Each open lease's account → (person's DN, exact last use), from the database.

    ``poolmgr leases --json`` prints whole seconds; mtimes and the checks
    that nothing was touched need the stored microseconds.
    """
    from sqlalchemy import select

    from poolmgr.db import get_engine, unit_of_work
    from poolmgr.models import Account, Identity, Lease
    from poolmgr.settings import load_settings

    engine = get_engine(load_settings(config, None).database_url())
    query = (
        select(Account.name, Identity.display, Lease.last_used_at)
        .join(Account, Account.id == Lease.account_id)
        .join(Identity, Identity.id == Lease.identity_id)
        .where(Lease.open_marker == 1)
    )
    with unit_of_work(engine, write=False) as session:
        return {name: (dn, used) for name, dn, used in session.execute(query)}


def is_known_person(config: Path, dn: str) -> bool:
    """Whether the database holds an identity for dn (in any of its forms)."""
    from poolmgr.db import get_engine, unit_of_work
    from poolmgr.dn import parse_dn
    from poolmgr.identities import find_identity
    from poolmgr.settings import load_settings

    engine = get_engine(load_settings(config, None).database_url())
    with unit_of_work(engine, write=False) as session:
        return find_identity(session, parse_dn(dn)) is not None
