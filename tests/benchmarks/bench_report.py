"""Tables, the machine description and the target check of a benchmark run."""

import platform
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench_history import Measured
from bench_load import Sample

REPO = Path(__file__).resolve().parents[2]
LCMAPS_PACKAGES = (
    "liblcmaps0",
    "lcmaps-plugins-basic-poolaccount",
    "lcmaps-plugins-basic-dummy",
)


@dataclass
class Row:
    """One line of the mapping table: a path at one pool size and caller count."""

    backend: str
    path: str
    size: int
    callers: int
    new: Sample
    first: Sample
    again: Sample
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> Counter[str]:
        """Return failed calls by error code, over all three measurements."""
        return self.new.errors + self.first.errors + self.again.errors


MAPPING_HEADER = (
    "backend",
    "path",
    "pool",
    "callers",
    "new n",
    "new p50",
    "new p99",
    "new/s",
    "ret p50",
    "ret p99",
    "ret/s",
    "1st p50",
    "1st p99",
    "1st/s",
    "failed",
)


def mapping_rows(rows: Iterable[Row]) -> list[list[str]]:
    """Render the mapping measurements as table cells."""
    return [
        [
            row.backend,
            row.path,
            f"{row.size:,}",
            str(row.callers),
            str(row.new.calls),
            _ms(row.new.median),
            _ms(row.new.percentile(0.99)),
            _rate(row.new.rate),
            _ms(row.again.median),
            _ms(row.again.percentile(0.99)),
            _rate(row.again.rate),
            _ms(row.first.median),
            _ms(row.first.percentile(0.99)),
            _rate(row.first.rate),
            _failed(row),
        ]
        for row in rows
    ]


def _failed(row: Row) -> str:
    calls = row.new.calls + row.first.calls + row.again.calls
    if not row.failures:
        return f"0/{calls}"
    codes = ",".join(f"{code}:{n}" for code, n in sorted(row.failures.items()))
    return f"{row.failures.total()}/{calls} ({codes})"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def table(header: Sequence[str], rows: list[list[str]]) -> str:
    """Return a plain-text table with right-aligned numeric columns."""
    widths = [
        max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i])
        for i in range(len(header))
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for cells in rows:
        lines.append(
            "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
            )
        )
    return "\n".join(lines)


def history_rows(results: Iterable[Measured]) -> list[list[str]]:
    """Render the recycle and audit measurements as table cells."""
    return [
        [
            r.backend,
            r.command,
            f"{r.history:,}",
            f"{r.seconds:.1f}",
            f"{r.peak_mb:.0f}",
            str(r.status),
            r.note,
        ]
        for r in results
    ]


HISTORY_HEADER = ("backend", "command", "ended leases", "s", "peak MB", "exit", "note")


def machine() -> list[str]:
    """Describe this machine and the software measured, one fact per line."""
    lines = [
        f"cpu: {_cpu()}",
        f"memory: {_memory()}",
        f"kernel: {platform.system()} {platform.release()}",
        f"python: {platform.python_version()}, SQLite {sqlite3.sqlite_version}",
        f"poolmgr: {_git('rev-parse', '--short', 'HEAD')}"
        + (" (with uncommitted changes)" if _git("status", "--porcelain") else ""),
    ]
    versions = [f"{p} {_package(p)}" for p in LCMAPS_PACKAGES if _package(p)]
    if versions:
        lines.append("lcmaps: " + ", ".join(versions))
    return lines


def cpu_probe() -> float:
    """Seconds a fixed CPU-bound loop takes here, best of three.

    Printed at the start and end of a run: on a shared virtual machine the
    speed of a core moves from hour to hour, and this shows by how much
    between two reports, independently of poolmgr and LCMAPS.
    """
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        sum(range(20_000_000))
        best = min(best, time.perf_counter() - started)
    return best


def _cpu() -> str:
    info = _run(["lscpu"])
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    model = fields.get("Model name", "?").strip()
    return f"{model}, {fields.get('CPU(s)', '?').strip()} CPUs"


def _memory() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) // 1024 // 1024 + 1} GiB"
    return "?"


def _package(name: str) -> str:
    return _run(["dpkg-query", "-W", "-f", "${Version}", name])


def _git(*args: str) -> str:
    return _run(["git", "-C", str(REPO), *args])


def _run(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def target_lines(rows: list[Row], history: list[Measured]) -> list[str]:
    """Return the verdicts on the issue's targets, per backend, with figures."""
    lines = []
    for backend in sorted({r.backend for r in rows} - {"files"}):
        mine = [r for r in rows if r.backend == backend]
        one = [r for r in mine if r.path == "socket" and r.callers == 1]
        lines.append(
            _verdict(
                f"{backend}: returning person through the socket, p50 <= 1 ms",
                [(r, r.again.median) for r in one],
                1.0,
                "ms",
            )
        )
        lines.append(
            _verdict(
                f"{backend}: new lease through the socket, p50 <= 2 ms",
                [(r, r.new.median) for r in one],
                2.0,
                "ms",
            )
        )
        eight = [r for r in mine if r.path == "socket" and r.callers == 8]
        lines.append(
            _verdict(
                f"{backend}: returning persons, 8 socket callers, >= 2,000/s",
                [(r, r.again.rate) for r in eight],
                2000.0,
                "/s",
                at_least=True,
            )
        )
    lines.append(_failures(rows))
    lines.extend(_history_verdicts(history))
    return lines


def _verdict(
    label: str,
    values: list[tuple[Row, float | None]],
    limit: float,
    unit: str,
    *,
    at_least: bool = False,
) -> str:
    measured = [(r, v) for r, v in values if v is not None]
    if not measured:
        return f"[not measured] {label}"
    met = all((v >= limit) if at_least else (v <= limit) for _, v in measured)
    digits = 2 if unit == "ms" else 0
    figures = ", ".join(f"{r.size:,}: {v:,.{digits}f}" for r, v in measured)
    return f"[{'met' if met else 'MISSED'}] {label} (pool {figures} {unit})"


def _failures(rows: list[Row]) -> str:
    ours = [r for r in rows if r.path != "lcmaps-gridmapdir"]
    failed = sum(r.failures.total() for r in ours)
    calls = sum(r.new.calls + r.first.calls + r.again.calls for r in ours)
    theirs = [r for r in rows if r.path == "lcmaps-gridmapdir" and r.callers > 1]
    lcmaps_failed = sum(r.new.failures for r in theirs)
    lcmaps_calls = sum(r.new.calls for r in theirs)
    beside = (
        f"LCMAPS gridmapdir {lcmaps_failed} of {lcmaps_calls} concurrent new "
        "leases failed"
        if theirs
        else "LCMAPS gridmapdir not measured with concurrent callers"
    )
    return (
        f"[{'met' if failed == 0 else 'MISSED'}] zero failed mappings under "
        f"contention: poolmgr {failed} of {calls} failed; {beside}"
    )


def _history_verdicts(history: list[Measured]) -> list[str]:
    lines = []
    for backend in sorted({m.backend for m in history}):
        for command in ("recycle", "audit"):
            runs = sorted(
                (m for m in history if m.backend == backend and m.command == command),
                key=lambda m: m.history,
            )
            if len(runs) < 2:
                continue
            first, last = runs[0], runs[-1]
            growth = last.peak_mb / first.peak_mb if first.peak_mb else 0
            ok = last.seconds < 60 and growth < 1.5 and last.status == 0
            lines.append(
                f"[{'met' if ok else 'MISSED'}] {backend} {command}: "
                f"{first.history:,} -> {last.history:,} ended leases: "
                f"{first.seconds:.1f} -> {last.seconds:.1f} s, "
                f"peak {first.peak_mb:.0f} -> {last.peak_mb:.0f} MB"
            )
    return lines
