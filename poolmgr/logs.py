"""Logging set-up: stderr for the operator, syslog for the security officer.

Only this module attaches handlers. Every module logs through
``logging.getLogger(__name__)``; state changes go through poolmgr.audit at
INFO (syslog priority info; overrides and failed cleanups at warning),
routine mapping decisions at DEBUG.
"""

import logging
import logging.handlers
import os
import socket
import stat
import sys
import time

from poolmgr.settings import SyslogSettings

_FACILITIES = logging.handlers.SysLogHandler.facility_names


class _UTCFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


def setup_logging(verbosity: int = 0, syslog: SyslogSettings | None = None) -> None:
    """Attach the stderr handler and, if enabled, syslog.

    A syslog that cannot be reached does not stop the command: the first
    line it would have received prints one warning on stderr instead.
    """
    root = logging.getLogger("poolmgr")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.DEBUG)
    root.propagate = False

    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(_stderr_level(verbosity))
    stderr.setFormatter(_UTCFormatter("%(asctime)s %(levelname)s %(message)s"))
    root.addHandler(stderr)

    if syslog is not None and syslog.enabled:
        root.addHandler(_syslog_handler(syslog))


def syslog_problem(settings: SyslogSettings) -> str | None:
    """Return why the configured syslog cannot be reached, or None if it can."""
    if not settings.enabled:
        return None
    try:
        _open_syslog(settings).close()
    except (OSError, ValueError) as exc:
        return _unreachable(settings, exc)
    return None


def _unreachable(settings: SyslogSettings, exc: Exception) -> str:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return f"syslog {settings.address} is unreachable ({reason})"


def _stderr_level(verbosity: int) -> int:
    # Without -v the terminal gets only errors: the command's own one-line
    # message says what went wrong, and warnings still reach syslog.
    if verbosity >= 2:
        return logging.DEBUG
    if verbosity == 1:
        return logging.INFO
    return logging.ERROR


class _WarnOnce:
    """Says once per process run, on stderr, that syslog lines are lost.

    The event rows in the database are written either way; the operator
    should know that the security officer's syslog copy is missing.
    """

    def __init__(self, problem: str) -> None:
        self.problem = problem
        self.warned = False

    def warn(self) -> None:
        if self.warned:
            return
        self.warned = True
        sys.stderr.write(
            f"poolmgr: warning: {self.problem}; log lines are not sent to "
            "syslog, events are still recorded in the database.\n"
        )


class _LostSyslogHandler(logging.Handler):
    """Stands in for a syslog that could not be opened."""

    def __init__(self, problem: str) -> None:
        super().__init__(logging.DEBUG)
        self.once = _WarnOnce(problem)

    def emit(self, record: logging.LogRecord) -> None:
        self.once.warn()


class _SyslogHandler(logging.handlers.SysLogHandler):
    """A syslog handler that warns once on stderr when sending fails."""

    once: _WarnOnce

    def handleError(self, record: logging.LogRecord) -> None:
        self.once.warn()


def _syslog_handler(settings: SyslogSettings) -> logging.Handler:
    try:
        handler = _open_syslog(settings)
    except (OSError, ValueError) as exc:
        return _LostSyslogHandler(_unreachable(settings, exc))
    handler.once = _WarnOnce(f"syslog {settings.address} stopped accepting lines")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("poolmgr[%(process)d]: %(message)s"))
    return handler


def _open_syslog(settings: SyslogSettings) -> _SyslogHandler:
    """Return a handler connected to settings.address; raise OSError if absent."""
    facility = _FACILITIES[settings.facility.lower()]
    server = settings.server()
    if server is None:
        # SysLogHandler itself accepts a missing socket and fails only later,
        # line by line, so the path is looked at here first.
        if not stat.S_ISSOCK(os.stat(settings.address).st_mode):
            raise OSError(f"{settings.address} is not a socket")
    else:
        socket.getaddrinfo(*server, 0, socket.SOCK_DGRAM)
    # A local socket may be a datagram or a stream socket (rsyslog and
    # journald use datagrams, some syslog-ng set-ups a stream): without a
    # socktype the handler tries both. A server takes UDP.
    return _SyslogHandler(
        address=server or settings.address,
        facility=facility,
        socktype=socket.SOCK_DGRAM if server else None,
    )
