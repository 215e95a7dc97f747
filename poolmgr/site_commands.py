"""Running the site's own commands (cleanup, in-use check): argv, never a shell.

A command runs in a session of its own with a clean environment (the system
PATH, LC_ALL=C and its POOLMGR_* variables), so that a
timeout, or an interruption of poolmgr, kills it together with every process
it started, and nothing of
poolmgr's environment (a database URL with a password, say) leaks into it.
Its output goes to a temporary file, of which only the tail is kept: a
cleanup that lists a million deleted files cannot fill memory.
"""

import os
import signal
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import BinaryIO

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OUTPUT_TAIL = 400


@dataclass(frozen=True)
class CommandResult:
    """How a command ended: its exit status, None when it never finished."""

    status: int | None
    output: str
    problem: str | None = None

    def describe(self) -> str:
        """Return a one-line account of the result, with the output's tail."""
        what = self.problem or f"exit status {self.status}"
        return f"{what}: {self.output}" if self.output else what


Runner = Callable[[Sequence[str], Mapping[str, str], int], CommandResult]


def run_command(
    argv: Sequence[str], variables: Mapping[str, str], timeout: int
) -> CommandResult:
    """Run argv with the system PATH, LC_ALL=C and variables as its whole
    environment.

    The PATH is fixed, not inherited: a command run as root by a timer or
    a crontab finds the same programs whatever PATH that caller had.
    """
    env = {"PATH": DEFAULT_PATH, "LC_ALL": "C"}
    env.update({key: value.replace("\0", "") for key, value in variables.items()})
    with tempfile.TemporaryFile() as output:
        try:
            proc = subprocess.Popen(
                list(argv),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            return CommandResult(None, "", f"cannot run {argv[0]}: {exc.strerror}")

        try:
            status: int | None = proc.wait(timeout=timeout)
            problem = None
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            status, problem = None, f"timed out after {timeout} s"
        except BaseException:
            # poolmgr is interrupted (Ctrl-C, SIGTERM): the command runs in
            # its own session and would not get the signal, so stop it here.
            _kill_group(proc)
            raise
        return CommandResult(status, _tail(output), problem)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the command and every process of its group; reap the command."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tail(handle: BinaryIO) -> str:
    size = handle.seek(0, os.SEEK_END)
    handle.seek(max(0, size - OUTPUT_TAIL))
    return " ".join(handle.read().decode("utf-8", "replace").split())
