"""Running the service: one process, or a supervisor and forked workers.

A single Python process is bound by one interpreter lock; with
``service.processes`` above 1 the parent binds the socket, forks that many
workers that all accept on it, and only supervises: it restarts a worker
that dies, and on SIGTERM or SIGINT passes the signal on, waits for the
workers (bounded), removes the socket and exits 0. The parent starts no
threads, so forking again later is safe.
"""

import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from types import FrameType
from typing import NoReturn

from sqlalchemy import Engine

from poolmgr.leases import Mapper
from poolmgr.service.access import access_policy
from poolmgr.service.handler import Handler
from poolmgr.service.server import MappingService
from poolmgr.settings import Settings

logger = logging.getLogger(__name__)

_RESTART_PAUSE = 1.0
_GRACE = 5.0
_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def build_service(settings: Settings, engine: Engine) -> MappingService:
    """Return a service for the settings' service section, not yet started."""
    options = settings.service
    policy = access_policy(options.group)
    mapper = Mapper(engine, settings, router_ttl=options.router_ttl)
    handler = Handler(mapper, options.workers, options.request_timeout)
    return MappingService(handler, options, policy, policy.gid)


def serve(settings: Settings, engine: Engine) -> None:
    """Run the mapping service until SIGTERM or SIGINT."""
    service = build_service(settings, engine)
    service.start()
    if settings.service.processes == 1:
        with _stop_on_signals(service.stop):
            service.serve_forever()
        return
    _Supervisor(service, engine, settings.service.processes).run()


@contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %s received, stopping", signal.Signals(signum).name)
        stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Supervisor:
    """Forks the workers, restarts dead ones, stops them all on a signal."""

    def __init__(self, service: MappingService, engine: Engine, count: int) -> None:
        self.service = service
        self.engine = engine
        self.count = count
        self.workers: dict[int, float] = {}
        self.stopping = False
        self.parent = os.getpid()

    def run(self) -> None:
        with _stop_on_signals(self._stop):
            for _ in range(self.count):
                self._fork()
            self._watch()
        self.service.close()
        logger.info("service supervisor stopped socket=%s", self.service.path)

    def _stop(self) -> None:
        self.stopping = True
        for pid in self.workers:
            _signal(pid, signal.SIGTERM)

    def _fork(self) -> None:
        # Signals wait until each side has its own handler in place.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        if self.stopping:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
            return
        pid = os.fork()
        if pid == 0:
            self._work()
        self.workers[pid] = time.monotonic()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

    def _work(self) -> NoReturn:
        """Run one worker process and exit with it."""
        status = 0
        try:
            _die_with_parent(self.parent)
            # Pooled connections belong to the parent; open our own.
            self.engine.dispose(close=False)
            self.service.after_fork()
            with _stop_on_signals(self.service.stop):
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
                self.service.serve_forever()
        except BaseException:  # noqa: BLE001  (report, then leave the process)
            logger.exception("service worker failed")
            status = 70
        finally:
            logging.shutdown()
            os._exit(status)

    def _watch(self) -> None:
        deadline = None
        while self.workers:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                if self.stopping and deadline is None:
                    deadline = time.monotonic() + self.service.settings.shutdown_timeout
                    deadline += _GRACE
                if deadline is not None and time.monotonic() > deadline:
                    for worker in self.workers:
                        _signal(worker, signal.SIGKILL)
                time.sleep(0.1)
                continue
            self._reap(pid, status)

    def _reap(self, pid: int, status: int) -> None:
        started = self.workers.pop(pid, None)
        if started is None or self.stopping:
            return
        logger.error(
            "service worker pid=%d ended unexpectedly (%s); starting another",
            pid,
            _describe(status),
        )
        if time.monotonic() - started < _RESTART_PAUSE:
            time.sleep(_RESTART_PAUSE)
        self._fork()


def _die_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM to this worker when the supervisor dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _signal(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, sig)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
