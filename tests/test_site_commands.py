"""Site commands (cleanup, in-use check): whatever they start ends with them."""

import signal
import time
from pathlib import Path

import pytest

from poolmgr.site_commands import run_command

# Starts a grandchild in the background, says both pids, then waits.
SCRIPT = """#!/bin/sh
sleep 300 &
echo "$$ $!" > "$1.tmp" && mv "$1.tmp" "$1"
sleep 300
"""


def is_running(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


def survivors(pids: list[int]) -> list[int]:
    """Return the pids still running once a kill had 5 s to take effect."""
    deadline = time.monotonic() + 5
    while any(is_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return [pid for pid in pids if is_running(pid)]


def wait_for(path: Path) -> list[int]:
    deadline = time.monotonic() + 10
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} was never written"
        time.sleep(0.02)
    return [int(word) for word in path.read_text().split()]


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "site-command"
    path.write_text(SCRIPT)
    path.chmod(0o755)
    return path


def test_a_timeout_kills_the_command_and_what_it_started(script, tmp_path):
    pids = tmp_path / "pids"
    result = run_command([str(script), str(pids)], {}, 1)
    assert (result.status, result.problem) == (None, "timed out after 1 s")
    still = survivors(wait_for(pids))
    assert still == [], f"processes {still} outlived the timeout"


def test_an_interrupt_kills_the_command_and_what_it_started(script, tmp_path):
    pids = tmp_path / "pids"

    def interrupt(signum, frame):
        if not pids.exists():
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            return
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_command([str(script), str(pids)], {}, 60)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    still = survivors(wait_for(pids))
    assert still == [], f"processes {still} outlived the interrupted poolmgr"
