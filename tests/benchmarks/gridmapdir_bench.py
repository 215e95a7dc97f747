"""LCMAPS lcmaps_poolaccount on a gridmapdir, measured like poolmgr.

Usage (as root): unshare --mount --propagation private -- \\
    python gridmapdir_bench.py CONFIG.json

lcmaps_poolaccount resolves pool accounts through NSS, so this program
bind-mounts copies of passwd and group holding the pool accounts over
/etc/passwd and /etc/group. It refuses to run unless its mount namespace is
a private one, so the host's own files are never shadowed. For each pool
size it builds a fresh gridmapdir half full, leased in readdir order as
LCMAPS itself would have leased it, then measures new leases, returning
persons on their first use, and returning persons again, at each number of
concurrent callers. Prints one JSON object per measurement.
"""

import json
import os
import pwd
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_db import account_name, person_dn
from bench_lcmaps import (
    POOLACCOUNT,
    count_overleased,
    environment,
    lease_name,
    link_leases,
    load_command,
    make_gridmapdir,
    nss_files,
    unlink_leases,
    write_db,
    write_gridmapfile,
)
from bench_load import Sample, run_processes, split, write_slices


def main(argv: list[str]) -> int:
    config = json.loads(Path(argv[1]).read_text())
    _require_private_namespace()
    workdir = Path(config["workdir"])
    passwd, group = workdir / "passwd", workdir / "group"
    passwd.write_text(Path("/etc/passwd").read_text())
    group.write_text(Path("/etc/group").read_text())
    _bind(passwd, "/etc/passwd")
    _bind(group, "/etc/group")

    gridmapdir, gridmapfile = workdir / "gridmapdir", workdir / "grid-mapfile"
    write_gridmapfile(gridmapfile)
    db = write_db(
        workdir / "lcmaps-poolaccount",
        POOLACCOUNT.name,
        f"-gridmapfile {gridmapfile} -gridmapdir {gridmapdir}",
    )
    for size in config["sizes"]:
        passwd_text, group_text = nss_files(workdir, size)
        passwd.write_text(passwd_text)
        group.write_text(group_text)
        _measure_size(config, db, gridmapdir, size)
    return 0


def _require_private_namespace() -> None:
    # unshare execs this program, so the parent is still in the host's namespace.
    parent = f"/proc/{os.getppid()}/ns/mnt"
    if os.readlink("/proc/self/ns/mnt") == os.readlink(parent):
        sys.exit("gridmapdir_bench: run me under 'unshare --mount' only")


def _bind(source: Path, target: str) -> None:
    subprocess.run(["mount", "--bind", str(source), target], check=True)


def _measure_size(config: dict, db: Path, gridmapdir: Path, size: int) -> None:
    accounts = make_gridmapdir(gridmapdir, size)
    held = int(size * config["prefill"])
    returning = [person_dn("Returning", n) for n in range(1, held + 1)]
    link_leases(gridmapdir, accounts[:held], returning)
    keep = {lease_name(dn) for dn in returning}
    _emit({"size": size, "nss_ms": _nss_cost(size)})

    sample = returning[: config["returning"]]
    for callers in config["callers"]:
        tag = f"g{size}-{callers}"
        new = [person_dn(f"New {tag}", n) for n in range(config["new"])]
        new = new[: size - held]
        runs = (("new", new, 1), ("ret_write", sample, 1), ("ret_read", sample, 2))
        for phase, dns, passes in runs:
            result = _run(config, db, f"{tag}-{phase}", dns, callers, passes)
            overleased = count_overleased(gridmapdir)
            record = {"size": size, "callers": callers, "phase": phase}
            _emit(record | _as_dict(result) | {"overleased": overleased})
        unlink_leases(gridmapdir, keep)


def _run(
    config: dict, db: Path, tag: str, dns: list[str], callers: int, passes: int
) -> Sample:
    workdir = Path(config["workdir"])
    slices = [s for s in split(dns, callers) if s]
    files = write_slices(workdir / "dns", tag, slices)
    driver = Path(config["driver"])
    commands = [
        load_command(
            driver,
            workdir / "logs" / f"{tag}-{i}.log",
            path,
            passes=passes,
            deadline=config["deadline"],
        )
        for i, path in enumerate(files)
    ]
    (workdir / "logs").mkdir(exist_ok=True)
    return run_processes(commands, environment(db))


def _nss_cost(size: int) -> float:
    """Return the median time of getpwnam for a random pool account (ms)."""
    rng = random.Random(size)
    times = []
    for _ in range(21):
        name = account_name(rng.randint(1, size))
        start = time.perf_counter()
        pwd.getpwnam(name)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _as_dict(sample: Sample) -> dict:
    return {
        "ms": sample.ms,
        "errors": dict(sample.errors),
        "start": sample.start,
        "end": sample.end,
    }


def _emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
