"""Load generators: callers that map lists of DNs and time every call.

A caller is a thread (library path) or a process (socket clients and the
LCMAPS driver). Process callers print ``ready`` once initialised and wait
for ``go`` on stdin, so that every caller starts together and start-up cost
never counts; each prints one JSON object with its latencies at the end.
"""

import json
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from poolmgr.errors import PoolmgrError
from poolmgr.leases import Mapper, MapRequest


@dataclass
class Sample:
    """The calls of one measurement, over all callers."""

    ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    start: float = float("inf")
    end: float = float("-inf")

    @property
    def calls(self) -> int:
        return len(self.ms)

    @property
    def failures(self) -> int:
        return sum(self.errors.values())

    @property
    def wall(self) -> float:
        return max(self.end - self.start, 1e-9)

    def percentile(self, fraction: float) -> float | None:
        """Return the latency below which fraction of the calls fall (ms)."""
        if not self.ms:
            return None
        ordered = sorted(self.ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @property
    def median(self) -> float | None:
        return statistics.median(self.ms) if self.ms else None

    @property
    def rate(self) -> float | None:
        """Return completed calls per second of wall time, all callers together."""
        return self.calls / self.wall if self.ms else None

    def add(self, result: dict) -> None:
        """Merge one caller's JSON result."""
        self.ms.extend(result["ms"])
        self.errors.update(result.get("errors", {}))
        if result["ms"]:
            self.start = min(self.start, result["start"])
            self.end = max(self.end, result["end"])


def split(items: Sequence[str], callers: int) -> list[list[str]]:
    """Deal items round-robin to callers (some may get none)."""
    return [list(items[i::callers]) for i in range(callers)]


def run_library(
    mapper: Mapper,
    slices: list[list[str]],
    fqans: tuple[str, ...],
    passes: int = 1,
) -> Sample:
    """Map each slice in its own thread, all released together; return the sample."""
    barrier = threading.Barrier(len(slices))
    results: list[dict] = [{} for _ in slices]

    def caller(index: int) -> None:
        ms: list[float] = []
        errors: Counter[str] = Counter()
        barrier.wait()
        start = time.monotonic()
        for _ in range(passes):
            for dn in slices[index]:
                began = time.perf_counter()
                try:
                    mapper.map(MapRequest(dn, fqans))
                except PoolmgrError as exc:
                    errors[exc.code] += 1
                ms.append((time.perf_counter() - began) * 1000)
        results[index] = {
            "ms": ms,
            "errors": errors,
            "start": start,
            "end": time.monotonic(),
        }

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(len(slices))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sample = Sample()
    for result in results:
        sample.add(result)
    return sample


def write_slices(directory: Path, tag: str, slices: list[list[str]]) -> list[Path]:
    """Write one DN file per caller and return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, dns in enumerate(slices):
        path = directory / f"{tag}-{index}.dns"
        path.write_text("".join(dn + "\n" for dn in dns))
        paths.append(path)
    return paths


def run_processes(
    commands: list[list[str]], env: dict[str, str] | None = None, timeout: float = 900
) -> Sample:
    """Start every caller, release them together, and merge their results."""
    processes = [
        subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        for command in commands
    ]
    try:
        for process in processes:
            _expect_ready(process)
        for process in processes:
            process.stdin.write("go\n")
            process.stdin.flush()
        sample = Sample()
        for process in processes:
            out, err = process.communicate(timeout=timeout)
            if process.returncode not in (0, 1) or not out.strip():
                raise RuntimeError(
                    f"caller {process.args[0]} failed ({process.returncode}): "
                    f"{err.strip()[-500:]}"
                )
            sample.add(json.loads(out.strip().splitlines()[-1]))
        return sample
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _expect_ready(process: subprocess.Popen[str]) -> None:
    line = process.stdout.readline()
    if line.strip() != "ready":
        _, err = process.communicate(timeout=30)
        raise RuntimeError(
            f"caller {process.args[0]} did not start ({process.returncode}): "
            f"{(line + err).strip()[-500:]}"
        )
