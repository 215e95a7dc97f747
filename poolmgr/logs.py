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
import sys
import time

from poolmgr.settings import SyslogSettings

_FACILITIES = logging.handlers.SysLogHandler.facility_names


class _UTCFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


def setup_logging(verbosity: int = 0, syslog: SyslogSettings | None = None) -> None:
    """Attach the stderr handler and, if configured and present, syslog."""
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
        syslog_handler = _syslog_handler(syslog)
        if syslog_handler is not None:
            root.addHandler(syslog_handler)


def _stderr_level(verbosity: int) -> int:
    # Without -v the terminal gets only errors: the command's own one-line
    # message says what went wrong, and warnings still reach syslog.
    if verbosity >= 2:
        return logging.DEBUG
    if verbosity == 1:
        return logging.INFO
    return logging.ERROR


def _syslog_handler(settings: SyslogSettings) -> logging.Handler | None:
    facility = _FACILITIES.get(settings.facility.lower())
    if facility is None:
        raise ValueError(f"unknown syslog facility {settings.facility!r}")
    server = settings.server()
    if server is None and not os.path.exists(settings.address):
        return None
    try:
        # A local socket may be a datagram or a stream socket (rsyslog and
        # journald use datagrams, some syslog-ng set-ups a stream): without
        # a socktype the handler tries both. A server takes UDP.
        handler = logging.handlers.SysLogHandler(
            address=server or settings.address,
            facility=facility,
            socktype=socket.SOCK_DGRAM if server else None,
        )
    except OSError:
        return None
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("poolmgr[%(process)d]: %(message)s"))
    return handler
