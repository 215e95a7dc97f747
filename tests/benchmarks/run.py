"""poolmgr benchmarks: mapping latency and throughput, with LCMAPS side by side.

Usage: .venv/bin/python tests/benchmarks/run.py [--quick] [options]
(``make benchmark`` runs the full set). See tests/benchmarks/README.md for
what each column means. Progress goes to stderr, the tables to stdout.
"""

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_lcmaps  # noqa: E402
from bench_db import (  # noqa: E402
    FQAN,
    backdate,
    bench_settings,
    count_open,
    create_database,
    drop_database,
    load_pool,
    person_dn,
    prefill,
    release_new,
    server_version,
    tidy,
    time_sync,
)
from bench_history import Measured, run_history  # noqa: E402
from bench_load import (  # noqa: E402
    Sample,
    run_library,
    run_processes,
    split,
    write_slices,
)
from bench_report import (  # noqa: E402
    HISTORY_HEADER,
    MAPPING_HEADER,
    Row,
    cpu_probe,
    history_rows,
    machine,
    mapping_rows,
    table,
    target_lines,
)
from bench_service import serving, write_config  # noqa: E402

from poolmgr import db  # noqa: E402
from poolmgr.leases import Mapper  # noqa: E402
from poolmgr.settings import ServiceSettings  # noqa: E402
from poolmgr.timeutil import utcnow  # noqa: E402

PATHS = ("library", "socket", "lcmaps-poolmgr", "lcmaps-gridmapdir")
Runner = Callable[[list[str], int, int], Sample]


@dataclass(frozen=True)
class Plan:
    """What to measure, from the command line."""

    backends: tuple[str, ...]
    sizes: tuple[int, ...]
    callers: tuple[int, ...]
    paths: tuple[str, ...]
    new: int
    returning: int
    deadline: float
    history: tuple[int, ...]
    history_backends: tuple[str, ...]
    sync_sizes: tuple[int, ...]
    service_processes: int | None
    prefill: float = 0.5


def parse_plan(argv: list[str]) -> tuple[Plan, argparse.Namespace]:
    """Return the plan; --quick changes the defaults, explicit options win."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small subset, < 3 min")
    parser.add_argument("--backends", help="sqlite,postgresql[,mariadb]")
    parser.add_argument("--sizes", help="pool sizes, e.g. 100,1000,10000,100000")
    parser.add_argument("--callers", help="concurrent callers, e.g. 1,8,32")
    parser.add_argument("--paths", help=",".join(PATHS))
    parser.add_argument("--new", type=int, help="new leases per measurement")
    parser.add_argument("--returning", type=int, help="returning persons sampled")
    parser.add_argument("--deadline", type=float, help="seconds per LCMAPS phase")
    parser.add_argument("--history", help="ended leases per step, 0 to skip")
    parser.add_argument("--sync-sizes", help="pool sizes to time sync at, 0 to skip")
    parser.add_argument(
        "--service-processes",
        type=int,
        default=None,
        help="poolmgr serve processes (default: the service's, one per CPU)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    quick = args.quick
    backends = _list(args.backends, "sqlite,postgresql")
    plan = Plan(
        backends=backends,
        sizes=_ints(args.sizes, "100,1000" if quick else "100,1000,10000,100000"),
        callers=_ints(args.callers, "1,8" if quick else "1,8,32"),
        paths=_list(args.paths, ",".join(PATHS)),
        new=args.new or (200 if quick else 1000),
        returning=args.returning or (200 if quick else 1000),
        deadline=args.deadline or (3.0 if quick else 10.0),
        history=_ints(args.history, "10000,100000" if quick else "100000,1000000"),
        history_backends=backends,
        sync_sizes=_ints(args.sync_sizes, "1000" if quick else "1000,10000,100000"),
        service_processes=args.service_processes,
    )
    return plan, args


def _list(value: str | None, default: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in (value or default).split(",") if item.strip())


def _ints(value: str | None, default: str) -> tuple[int, ...]:
    return tuple(int(item) for item in _list(value, default) if int(item) > 0)


def progress(text: str) -> None:
    """Report progress on stderr with the elapsed time."""
    print(f"[{time.monotonic() - _STARTED:6.0f} s] {text}", file=sys.stderr, flush=True)


_STARTED = time.monotonic()
LOAD = [os.getloadavg()]
PROBE = [cpu_probe()]


@dataclass
class Tools:
    """The LCMAPS programs, when this machine can build them."""

    driver: Path | None = None
    plugin: Path | None = None
    why_not: str = ""


def build_tools(plan: Plan, workdir: Path) -> Tools:
    """Build lcmaps_load and the poolmgr plugin if an LCMAPS path is wanted."""
    if not {"lcmaps-poolmgr", "lcmaps-gridmapdir"} & set(plan.paths):
        return Tools()
    missing = bench_lcmaps.missing_lcmaps()
    if missing:
        return Tools(why_not="missing " + ", ".join(missing))
    driver = bench_lcmaps.build_driver(workdir)
    plugin = None
    if "lcmaps-poolmgr" in plan.paths:
        plugin = bench_lcmaps.build_plugin(workdir)
    return Tools(driver, plugin)


WARM_UP = 40


class Cells:
    """Measures one path at every caller count on one prepared database."""

    def __init__(self, plan: Plan, engine, pool_id: int, prefilled, size: int):
        self.plan = plan
        self.engine = engine
        self.pool_id = pool_id
        self.prefilled = prefilled
        self.size = size

    def measure(self, backend: str, path: str, run: Runner) -> list[Row]:
        """Return one row per caller count: new, first use and returning."""
        self._warm_up(f"{backend} {path} {self.size}", run)
        rows = []
        for callers in self.plan.callers:
            progress(f"{backend} {path} pool {self.size:,} callers {callers}")
            rows.append(self._cell(backend, path, run, callers))
        return rows

    def _cell(self, backend: str, path: str, run: Runner, callers: int) -> Row:
        free = self.size - self.prefilled.count
        tag = f"{backend} {path} {self.size} {callers}"
        newcomers = [
            person_dn(f"New {tag}", n) for n in range(min(self.plan.new, free))
        ]
        new = run(newcomers, callers, 1)
        notes = self._check_new(new)

        sample = list(self.prefilled.dns[: self.plan.returning])
        backdate(self.engine, len(sample), utcnow() - timedelta(days=1))
        first = run(sample, callers, 1)
        # Small pools have few persons: more passes, so that every returning
        # measurement has as many calls (2 x --returning) and a fair rate.
        again = run(sample, callers, max(2, -(-2 * self.plan.returning // len(sample))))
        return Row(backend, path, self.size, callers, new, first, again, notes)

    def _warm_up(self, tag: str, run: Runner) -> None:
        """Map WARM_UP new persons unmeasured, then free their accounts again.

        A service that has run for a while has its connections open and its
        statements planned: PostgreSQL plans a prepared statement afresh on
        each connection during its first executions (psycopg prepares it at
        the sixth, the server keeps a generic plan after five more).
        """
        free = self.size - self.prefilled.count
        run([person_dn(f"Warm {tag}", n) for n in range(min(WARM_UP, free))], 1, 1)
        release_new(self.engine, self.pool_id, self.prefilled.count)
        tidy(self.engine)

    def _check_new(self, new: Sample) -> list[str]:
        """Free the new leases; note it if their number differs from the successes."""
        opened = count_open(self.engine) - self.prefilled.count
        ended = release_new(self.engine, self.pool_id, self.prefilled.count)
        tidy(self.engine)
        succeeded = new.calls - new.failures
        if opened == ended == succeeded:
            return []
        return [f"{succeeded} new mappings succeeded but {opened} leases opened"]


def measure_poolmgr(
    plan: Plan, backend: str, size: int, tools: Tools, workdir: Path
) -> list[Row]:
    """Measure the library, the socket and LCMAPS+plugin paths on one pool."""
    url = create_database(backend, workdir, f"pmbench_{size}")
    engine = db.get_engine(url)
    try:
        started = time.perf_counter()
        pool_id = load_pool(engine, size)
        held = int(size * plan.prefill)
        prefilled = prefill(engine, pool_id, held, utcnow() - timedelta(days=1))
        tidy(engine)
        progress(
            f"{backend}: pool of {size:,} with {held:,} leases built in "
            f"{time.perf_counter() - started:.1f} s"
        )
        cells = Cells(plan, engine, pool_id, prefilled, size)
        rows: list[Row] = []
        if "library" in plan.paths:
            mapper = Mapper(engine, bench_settings(), router_ttl=5.0)
            rows += cells.measure(backend, "library", _library_runner(mapper))
        if {"socket", "lcmaps-poolmgr"} & set(plan.paths):
            rows += _through_service(plan, cells, backend, url, tools, workdir)
        return rows
    finally:
        drop_database(backend, url)


def _through_service(
    plan: Plan, cells: Cells, backend: str, url: str, tools: Tools, workdir: Path
) -> list[Row]:
    service = (
        {} if plan.service_processes is None else {"processes": plan.service_processes}
    )
    config = write_config(workdir / "serve.yaml", url, **service)
    rows: list[Row] = []
    with serving(config, workdir / "s.sock") as socket_path:
        if "socket" in plan.paths:
            run = _socket_runner(socket_path, workdir, plan.deadline * 30)
            rows += cells.measure(backend, "socket", run)
        if "lcmaps-poolmgr" in plan.paths and tools.plugin and tools.driver:
            db_file = bench_lcmaps.write_db(
                workdir / "lcmaps-poolmgr",
                str(tools.plugin),
                f"-socket {socket_path} -timeout 30",
            )
            run = _lcmaps_runner(tools.driver, db_file, workdir, plan.deadline * 30)
            rows += cells.measure(backend, "lcmaps-poolmgr", run)
    return rows


def _library_runner(mapper: Mapper) -> Runner:
    def run(dns: list[str], callers: int, passes: int) -> Sample:
        slices = [s for s in split(dns, callers) if s]
        return run_library(mapper, slices, (FQAN,), passes)

    return run


_tags = itertools.count()


def _socket_runner(socket_path: Path, workdir: Path, deadline: float) -> Runner:
    client = HERE / "socket_client.py"

    def run(dns: list[str], callers: int, passes: int) -> Sample:
        files = _dn_files(workdir, dns, callers)
        commands = [
            [sys.executable, str(client), str(socket_path), str(path), FQAN]
            + [str(passes), str(deadline)]
            for path in files
        ]
        return run_processes(commands)

    return run


def _lcmaps_runner(driver: Path, db_file: Path, workdir: Path, deadline: float):
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)

    def run(dns: list[str], callers: int, passes: int) -> Sample:
        files = _dn_files(workdir, dns, callers)
        commands = [
            bench_lcmaps.load_command(
                driver, logs / f"{path.stem}.log", path, (FQAN,), passes, deadline
            )
            for path in files
        ]
        return run_processes(commands, bench_lcmaps.environment(db_file))

    return run


def _dn_files(workdir: Path, dns: list[str], callers: int) -> list[Path]:
    slices = [s for s in split(dns, callers) if s]
    return write_slices(workdir / "dns", f"c{next(_tags)}", slices)


def measure_gridmapdir(plan: Plan, tools: Tools, workdir: Path) -> list[Row]:
    """Run gridmapdir_bench.py in a private mount namespace; return its rows."""
    missing = bench_lcmaps.missing_poolaccount()
    if missing or tools.driver is None:
        progress("LCMAPS gridmapdir skipped: missing " + ", ".join(missing))
        return []
    config = workdir / "gridmapdir.json"
    config.write_text(
        json.dumps(
            {
                "workdir": str(workdir / "gridmapdir-work"),
                "driver": str(tools.driver),
                "sizes": plan.sizes,
                "callers": plan.callers,
                "prefill": plan.prefill,
                "new": plan.new,
                "returning": plan.returning,
                "deadline": plan.deadline,
            }
        )
    )
    (workdir / "gridmapdir-work").mkdir()
    command = ["unshare", "--mount", "--propagation", "private", "--"]
    command += [sys.executable, str(HERE / "gridmapdir_bench.py"), str(config)]
    progress("LCMAPS gridmapdir (lcmaps_poolaccount) in a private mount namespace")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    records = []
    for line in process.stdout:
        record = json.loads(line)
        records.append(record)
        if "phase" in record:
            progress(
                f"gridmapdir pool {record['size']:,} callers "
                f"{record['callers']} {record['phase']} done"
            )
    if process.wait() != 0:
        raise RuntimeError(f"gridmapdir_bench.py failed with {process.returncode}")
    return _gridmapdir_rows(records)


NSS_COST: dict[int, float] = {}


def _gridmapdir_rows(records: list[dict]) -> list[Row]:
    phases: dict[tuple[int, int], dict[str, Sample]] = {}
    notes: dict[tuple[int, int], list[str]] = {}
    for record in records:
        if "nss_ms" in record:
            NSS_COST[record["size"]] = record["nss_ms"]
            continue
        sample = Sample()
        sample.add(record)
        key = (record["size"], record["callers"])
        phases.setdefault(key, {})[record["phase"]] = sample
        if record["overleased"]:
            notes.setdefault(key, []).append(
                f"{record['overleased']} accounts linked more than twice"
            )
    return [
        Row(
            "files",
            "lcmaps-gridmapdir",
            size,
            callers,
            got["new"],
            got["ret_write"],
            got["ret_read"],
            notes.get((size, callers), []),
        )
        for (size, callers), got in phases.items()
    ]


def measure_sync(plan: Plan, workdir: Path) -> list[list[str]]:
    """Time poolmgr's own sync at each size, on each backend."""
    rows = []
    for backend in plan.backends:
        for size in plan.sync_sizes:
            progress(f"{backend}: sync of a pool of {size:,}")
            seconds, error = time_sync(backend, workdir, size)
            shown = f"{seconds:.1f}" if seconds is not None else "failed"
            rows.append([backend, f"{size:,}", shown, error])
    return rows


def measure_history(plan: Plan, workdir: Path) -> list[Measured]:
    """Time recycle and audit as the history grows, on each backend."""
    results: list[Measured] = []
    if not plan.history:
        return results
    for backend in plan.history_backends:
        results += run_history(backend, workdir, plan.history, progress)
    return results


def report(
    plan: Plan,
    rows: list[Row],
    sync_rows: list[list[str]],
    history: list[Measured],
    versions: list[str],
    tools: Tools,
) -> str:
    """Return the whole printed report."""
    parts = ["machine:", *(f"  {line}" for line in machine() + versions)]
    processes = plan.service_processes or ServiceSettings().processes
    parts.append(f"  poolmgr serve: {processes} process(es) x 8 workers")
    load = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(LOAD[0], LOAD[1], strict=True))
    parts.append(f"  load average (1/5/15 min) at start/end: {load}")
    probe = "/".join(f"{seconds:.3f}" for seconds in PROBE)
    parts += [f"  cpu probe at start/end (sum of 20,000,000 integers, s): {probe}", ""]
    parts += ["Mapping latency (ms) and throughput (mappings/s):", ""]
    parts += [table(MAPPING_HEADER, mapping_rows(rows)), ""]
    for row in rows:
        for note in row.notes:
            parts.append(f"note: {row.backend} {row.path} {row.size:,}: {note}")
    if tools.why_not:
        parts.append(f"LCMAPS paths not measured: {tools.why_not}")
    if NSS_COST:
        costs = ", ".join(f"{n:,}: {ms:.2f} ms" for n, ms in sorted(NSS_COST.items()))
        parts.append(f"getpwnam in a files passwd of N pool accounts: {costs}")
    if sync_rows:
        parts += ["", "poolmgr sync creating the pool (s):", ""]
        parts.append(table(("backend", "pool", "s", "error"), sync_rows))
    if history:
        parts += ["", "Recycle and audit over a growing history:", ""]
        parts.append(table(HISTORY_HEADER, history_rows(history)))
    parts += ["", "Targets:", *target_lines(rows, history)]
    return "\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    plan, args = parse_plan(argv)
    workdir = Path(tempfile.mkdtemp(prefix="pmb-", dir="/tmp"))
    progress(f"work directory {workdir}")
    try:
        tools = build_tools(plan, workdir)
        versions = _server_versions(plan, workdir)
        rows: list[Row] = []
        for backend in plan.backends:
            for size in plan.sizes:
                rows += measure_poolmgr(plan, backend, size, tools, workdir)
        if "lcmaps-gridmapdir" in plan.paths:
            rows += measure_gridmapdir(plan, tools, workdir)
        sync_rows = measure_sync(plan, workdir)
        history = measure_history(plan, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    LOAD.append(os.getloadavg())
    PROBE.append(cpu_probe())
    text = report(plan, rows, sync_rows, history, versions, tools)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(_as_json(plan, rows, history), indent=1))
    progress("done")
    return 0


def _server_versions(plan: Plan, workdir: Path) -> list[str]:
    versions = []
    for backend in plan.backends:
        if backend == "sqlite":
            continue
        url = create_database(backend, workdir, "pmbench_version")
        versions.append(f"{backend}: {server_version(db.get_engine(url))}")
        drop_database(backend, url)
    return versions


def _as_json(plan: Plan, rows: list[Row], history: list[Measured]) -> dict:
    def summary(sample: Sample) -> dict:
        return {
            "calls": sample.calls,
            "errors": dict(sample.errors),
            "p50_ms": sample.median,
            "p99_ms": sample.percentile(0.99),
            "per_s": sample.rate,
        }

    return {
        "plan": asdict(plan),
        "mapping": [
            {
                "backend": r.backend,
                "path": r.path,
                "size": r.size,
                "callers": r.callers,
                "new": summary(r.new),
                "first_use": summary(r.first),
                "returning": summary(r.again),
                "notes": r.notes,
            }
            for r in rows
        ],
        "history": [asdict(m) for m in history],
        "nss_ms": NSS_COST,
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
