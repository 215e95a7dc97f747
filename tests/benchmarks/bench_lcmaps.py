"""The LCMAPS side of the benchmark: build, configure and feed real LCMAPS.

Two LCMAPS set-ups take part: Debian's ``lcmaps_poolaccount`` plugin on a
gridmapdir (what sites run today), and the poolmgr plugin talking to
``poolmgr serve``. Both are driven by ``lcmaps_load``, one process per
concurrent caller, like gatekeepers and gLExec calling LCMAPS in parallel.
"""

import os
import shutil
import string
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from bench_db import DN_BASE, FIRST_UID, GID, POOL, account_name

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODULES = Path("/usr/lib/lcmaps")
POOLACCOUNT = MODULES / "lcmaps_poolaccount.mod"
DUMMY_GOOD = MODULES / "lcmaps_dummy_good.mod"
LOAD_SOURCE = HERE / "lcmaps_load.c"
_PLAIN = frozenset((string.ascii_letters + string.digits).encode())


def missing_lcmaps() -> list[str]:
    """Return what running LCMAPS needs but this machine lacks (empty if ready)."""
    missing = []
    if not Path("/usr/include/lcmaps/lcmaps_basic.h").exists():
        missing.append("liblcmaps-dev and lcmaps-basic-interface")
    if not DUMMY_GOOD.exists():
        missing.append("lcmaps-plugins-basic-dummy")
    if shutil.which("cc") is None:
        missing.append("a C compiler")
    return missing


def missing_poolaccount() -> list[str]:
    """Return what the gridmapdir comparison needs beyond LCMAPS itself."""
    missing = missing_lcmaps()
    if not POOLACCOUNT.exists():
        missing.append("lcmaps-plugins-basic-poolaccount")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        missing.append("root and unshare (for private passwd and group copies)")
    return missing


def build_driver(workdir: Path) -> Path:
    """Compile lcmaps_load into workdir and return its path."""
    driver = workdir / "lcmaps_load"
    subprocess.run(
        ["cc", "-Wall", "-Wextra", "-Werror", "-O2", "-o", str(driver)]
        + [str(LOAD_SOURCE), "-llcmaps"],
        check=True,
        capture_output=True,
    )
    return driver


def build_plugin(workdir: Path) -> Path:
    """Build the poolmgr LCMAPS plugin with the test harness; return the module."""
    sys.path.insert(0, str(REPO / "tests" / "lcmaps"))
    from lcmaps_harness import build

    return build(workdir / "plugin-build").plugin


def environment(db: Path) -> dict[str, str]:
    """The environment that points LCMAPS at db and logs errors only.

    Level 1 matches how the LCMAPS figures in the reference were taken.
    """
    env = dict(os.environ)
    env.update(LCMAPS_DIR=str(db.parent), LCMAPS_DB_FILE=db.name)
    env["LCMAPS_DEBUG_LEVEL"] = "1"
    env.pop("LCMAPS_POLICY_NAME", None)
    return env


def write_db(directory: Path, plugin: str, arguments: str) -> Path:
    """Write an lcmaps.db whose one policy runs plugin, then the dummy good one."""
    directory.mkdir(parents=True, exist_ok=True)
    db = directory / "lcmaps.db"
    db.write_text(
        f"path = {MODULES}\n\n"
        f'mapping = "{plugin}" "{arguments}"\n'
        f'good = "{DUMMY_GOOD.name}"\n\n'
        "bench:\nmapping -> good\n"
    )
    return db


def load_command(
    driver: Path,
    log: Path,
    dn_file: Path,
    fqans: Iterable[str] = (),
    passes: int = 1,
    deadline: float = 1e9,
) -> list[str]:
    """Return the lcmaps_load command for one caller."""
    return [
        str(driver),
        "-l",
        str(log),
        "-P",
        str(passes),
        "-T",
        f"{deadline:g}",
        "-i",
        str(dn_file),
        *fqans,
    ]


def lease_name(dn: str) -> str:
    """Return the gridmapdir lease name of dn, encoded as lcmaps_poolaccount does.

    Letters and digits are kept in lower case; every other byte becomes
    ``%`` and two lower-case hex digits.
    """
    return "".join(
        chr(byte).lower() if byte in _PLAIN else f"%{byte:02x}" for byte in dn.encode()
    )


def make_gridmapdir(directory: Path, size: int) -> list[str]:
    """Create a gridmapdir of size empty account files; return them in readdir order.

    readdir order is the order in which lcmaps_poolaccount scans for a free
    account (hash order on ext4).
    """
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    for number in range(1, size + 1):
        (directory / account_name(number)).touch()
    return [entry.name for entry in os.scandir(directory)]


def link_leases(directory: Path, accounts: list[str], dns: list[str]) -> None:
    """Lease accounts[i] to dns[i] with a hard link, as LCMAPS itself would."""
    for account, dn in zip(accounts, dns, strict=True):
        os.link(directory / account, directory / lease_name(dn))


def unlink_leases(directory: Path, keep: set[str]) -> int:
    """Remove every lease link whose name is not in keep; return how many."""
    removed = 0
    for entry in os.scandir(directory):
        if entry.name.startswith("%") and entry.name not in keep:
            os.unlink(entry.path)
            removed += 1
    return removed


def count_overleased(directory: Path) -> int:
    """Return the account files linked more than twice (a broken gridmapdir)."""
    return sum(
        1
        for entry in os.scandir(directory)
        if not entry.name.startswith("%") and entry.stat().st_nlink > 2
    )


def write_gridmapfile(path: Path) -> None:
    """Map every benchmark DN to the pool, with one wildcard line."""
    path.write_text(f'"{DN_BASE}*" .{POOL}\n')


def nss_files(directory: Path, size: int) -> tuple[str, str]:
    """Return passwd and group texts: this host's, plus the pool accounts."""
    passwd = Path("/etc/passwd").read_text()
    group = Path("/etc/group").read_text()
    accounts = "".join(
        f"{account_name(n)}:x:{FIRST_UID + n}:{GID}::/nonexistent:/usr/sbin/nologin\n"
        for n in range(1, size + 1)
    )
    return passwd + accounts, group + f"{POOL}:x:{GID}:\n"
