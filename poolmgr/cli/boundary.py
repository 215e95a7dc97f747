"""The one place where failures of a command become a line and an exit code.

- an expected failure (PoolmgrError): its message, its exit code;
- a usage error: one line naming the command and the problem, exit 2;
- Ctrl-C or SIGTERM: one line saying what state was left, exit 130 or 143;
- stdout closed by the reader (``poolmgr leases | head -1``), or never open
  (``>&-``) once something is written: silence, exit 141, as a shell
  reports a command ended by SIGPIPE;
- stdout failing otherwise (a full disk): one line, exit 1 (3, UNKNOWN,
  for ``poolmgr check``);
- a clash with a concurrent writer (a deadlock, a serialization failure, a
  lock timeout, a unique key taken meanwhile): its transaction was rolled
  back; one line, exit 9, so the command can be run again;
- an argument holding bytes that are not UTF-8: one line, exit 2, before
  the command runs;
- anything else is a bug: logged with its traceback, exit 70.
"""

import errno
import io
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from types import FrameType
from typing import Any

import typer
from sqlalchemy.exc import DBAPIError
from typer._click import exceptions as click_errors
from typer._click.core import Command

from poolmgr.cli.state import state
from poolmgr.db import is_conflict
from poolmgr.dn import is_valid_utf8, quote_input
from poolmgr.errors import INTERNAL_ERROR_EXIT, ContentionError, PoolmgrError

logger = logging.getLogger("poolmgr")

INTERRUPTED_EXIT = 130
TERMINATED_EXIT = 143
BROKEN_PIPE_EXIT = 141
DEFAULT_INTERRUPT_NOTE = "changes not yet committed were rolled back"


class TerminatedError(KeyboardInterrupt):
    """SIGTERM arrived: unwinds like Ctrl-C, so site commands are stopped."""


def run_guarded(command: Command, args: Sequence[str]) -> int:
    """Run command with args; return the exit status of the whole program."""
    state.interrupt_note = None
    if sys.stdout is None:
        sys.stdout = _ClosedStdout()
    try:
        _refuse_bytes_that_are_not_utf8(args)
        with _terminate_as_interrupt():
            with command.make_context("poolmgr", list(args)) as ctx:
                status = command.invoke(ctx)
            sys.stdout.flush()
    except BaseException as exc:  # noqa: BLE001  (the boundary)
        return _handle(exc, command, args)
    return status if isinstance(status, int) else 0


def _refuse_bytes_that_are_not_utf8(args: Sequence[str]) -> None:
    """Refuse an argument holding bytes that are not UTF-8, before any command.

    Every name, DN, reason and path poolmgr stores or looks up is text;
    such bytes reach Python as lone surrogates that no database accepts.
    """
    for arg in args:
        if not is_valid_utf8(arg):
            raise click_errors.UsageError(
                f"Argument {quote_input(arg)} is not valid UTF-8."
            )


def _handle(exc: BaseException, command: Command, args: Sequence[str]) -> int:
    for kind, handler in _HANDLERS:
        if isinstance(exc, kind):
            return handler(exc, command, args)
    if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
        return _broken_pipe(exc, command, args)
    if isinstance(exc, OSError) and _is_stdout_failure(exc):
        return _stdout_failed(exc, command, args)
    if isinstance(exc, DBAPIError) and is_conflict(exc):
        return _clashed(exc, command, args)
    if not isinstance(exc, Exception):
        raise exc
    logger.exception("internal error")
    typer.echo(
        f"poolmgr: internal error: {type(exc).__name__}: {str(exc)[:200]}",
        err=True,
    )
    return INTERNAL_ERROR_EXIT


def _expected(exc: Any, command: Command, args: Sequence[str]) -> int:
    typer.echo(f"poolmgr: {exc}", err=True)
    return int(exc.exit_code)


def _clashed(exc: DBAPIError, command: Command, args: Sequence[str]) -> int:
    logger.debug("clash with a concurrent writer: %s", exc.orig)
    typer.echo(
        f"{command_path(command, args)}: the change clashed with a "
        "concurrent one and was rolled back; run the command again.",
        err=True,
    )
    return ContentionError.exit_code


def _exit(exc: Any, command: Command, args: Sequence[str]) -> int:
    return int(exc.exit_code)


def _help_shown(exc: Any, command: Command, args: Sequence[str]) -> int:
    exc.show()
    return int(exc.exit_code)


def _usage(exc: Any, command: Command, args: Sequence[str]) -> int:
    where = exc.ctx.command_path if exc.ctx is not None else None
    where = where or command_path(command, args)
    message = " ".join(usage_message(exc).split())
    if not message.endswith((".", "?", "!")):
        message += "."
    typer.echo(f"{where}: {message} See '{where} --help'.", err=True)
    if where == "poolmgr check":
        # Nagios shows stdout: the probe's one line says what is wrong.
        typer.echo(f"POOLMGR CRITICAL - usage: {message}")
    return int(exc.exit_code)


def _click_error(exc: Any, command: Command, args: Sequence[str]) -> int:
    typer.echo(f"poolmgr: {' '.join(exc.format_message().split())}", err=True)
    return int(exc.exit_code)


def _interrupted(exc: Any, command: Command, args: Sequence[str]) -> int:
    what = "terminated" if isinstance(exc, TerminatedError) else "interrupted"
    note = state.interrupt_note or DEFAULT_INTERRUPT_NOTE
    _echo_quietly(f"poolmgr: {what}; {note}.")
    return TERMINATED_EXIT if isinstance(exc, TerminatedError) else INTERRUPTED_EXIT


def _broken_pipe(exc: Any, command: Command, args: Sequence[str]) -> int:
    # The reader went away: say nothing, and keep the interpreter's final
    # flush of stdout from failing again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # pragma: no cover
        pass  # (stdout is not a real file, e.g. captured by a test harness)
    return BROKEN_PIPE_EXIT


def _is_stdout_failure(exc: OSError) -> bool:
    # Output goes through typer.echo and the final flush: the innermost
    # frame of a failed write to stdout is one of those two.
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    frame = tb.tb_frame
    if frame.f_code.co_name == "echo":
        return not frame.f_locals.get("err")
    return frame.f_code.co_name == "run_guarded"


def _stdout_failed(exc: OSError, command: Command, args: Sequence[str]) -> int:
    _broken_pipe(exc, command, args)  # the final flush must not fail again
    _echo_quietly(
        f"poolmgr: cannot write to standard output: {os.strerror(exc.errno or 0)}."
    )
    # For Nagios, a probe whose line was lost is UNKNOWN, not WARNING.
    return 3 if command_path(command, args) == "poolmgr check" else 1


class _ClosedStdout(io.TextIOBase):
    """Stands for a stdout that was never open: writing is a closed pipe."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


_HANDLERS: list[tuple[type[BaseException], Callable[..., int]]] = [
    (PoolmgrError, _expected),
    (typer.Exit, _exit),
    (click_errors.NoArgsIsHelpError, _help_shown),
    (click_errors.UsageError, _usage),
    (click_errors.ClickException, _click_error),
    (typer.Abort, _interrupted),
    (KeyboardInterrupt, _interrupted),
    (BrokenPipeError, _broken_pipe),
]


def usage_message(exc: Any) -> str:
    """Return Click's message, with an argument named as in the usage line."""
    param = getattr(exc, "param", None)
    if (
        isinstance(exc, click_errors.MissingParameter)
        and param is not None
        and param.param_type_name == "argument"
        and param.metavar is None
    ):
        return f"Missing argument '{str(param.name).upper()}'"
    return str(exc.format_message())


def command_path(command: Command, args: Sequence[str]) -> str:
    """Return 'poolmgr SUB ...' for the (sub)command that args select."""
    words, current = ["poolmgr"], command
    items = iter(args)
    for word in items:
        if word.startswith("-"):
            if "=" not in word and _takes_value(current, word):
                next(items, None)
            continue
        sub = getattr(current, "commands", {}).get(word)
        if sub is None:
            break
        words.append(word)
        current = sub
    return " ".join(words)


def _takes_value(command: Command, flag: str) -> bool:
    for param in command.params:
        if flag in getattr(param, "opts", ()):
            return not (
                getattr(param, "is_flag", False) or getattr(param, "count", False)
            )
    return False


def _echo_quietly(line: str) -> None:
    # stderr may be gone too; the exit code still says what happened.
    with suppress(OSError):
        typer.echo(line, err=True)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    def on_term(signum: int, frame: FrameType | None) -> None:
        raise TerminatedError

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # pragma: no cover
        yield  # (not the main thread: signals cannot be caught here)
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
