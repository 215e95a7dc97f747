"""One request line in, one reply line out: the service's decisions."""

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from poolmgr import protocol
from poolmgr.errors import DatabaseUnavailableError, PoolmgrError
from poolmgr.events import format_fields
from poolmgr.leases import Mapper, MapRequest
from poolmgr.service.access import Peer

logger = logging.getLogger(__name__)


class Handler:
    """Turns one request line into one reply line; shared by all threads."""

    def __init__(
        self, mapper: Mapper, workers: int, slot_timeout: float | None = None
    ) -> None:
        self.mapper = mapper
        self._workers = workers
        self._slots = threading.BoundedSemaphore(workers)
        self._slot_timeout = slot_timeout

    def reply(self, line: bytes, peer: Peer | None = None) -> bytes:
        """Return the reply to line; never raises."""
        try:
            request = protocol.parse_request(line)
            if request.verb == "PING":
                return protocol.format_pong()
            return self._map(request, peer)
        except PoolmgrError as exc:
            _log_refusal(exc, line, peer)
            return protocol.error_reply(exc)
        except Exception:  # noqa: BLE001  (a bug must not kill the service)
            logger.exception("internal error answering %s", _shorten(line))
            return protocol.format_error(
                "INTERNAL", "Internal error in the mapping service; see its log."
            )

    def _map(self, request: protocol.Request, peer: Peer | None) -> bytes:
        verify = request.verb == "VERIFY"
        # The DN is the end-entity subject: giving it as its own issuer keeps
        # a trailing numeric CN as part of the name (see dn.py, F04).
        query = MapRequest(
            dn=request.dn, fqans=request.fqans, issuer=request.dn, verify=verify
        )
        start = time.perf_counter()
        with self._slot():
            mapping = self.mapper.map(query)
        if logger.isEnabledFor(logging.DEBUG):
            fields = {
                "verb": request.verb,
                "account": mapping.account,
                "pool": mapping.pool,
                "new": mapping.new,
                "dn": mapping.dn,
                "fqan": mapping.fqan,
                "peer_uid": peer.uid if peer else None,
                "ms": f"{(time.perf_counter() - start) * 1000:.2f}",
            }
            logger.debug("%s", format_fields("service_mapped", fields))
        return protocol.format_ok(
            mapping.account,
            mapping.uid,
            mapping.gid,
            mapping.secondary_gids,
            mapping.lease_key,
        )

    @contextmanager
    def _slot(self) -> Iterator[None]:
        """Hold one of the mapping slots; give up after slot_timeout seconds.

        Mappings only wait on the database, so slots that stay taken mean a
        slow or hung database; a request that waited that long is refused
        rather than run later for a client that has given up by then.
        """
        if not self._slots.acquire(timeout=self._slot_timeout):
            raise DatabaseUnavailableError(
                f"All {self._workers} mapping workers of the service stayed busy "
                f"for {self._slot_timeout:g} s; the database is slow or not "
                "answering."
            )
        try:
            yield
        finally:
            self._slots.release()


def _log_refusal(exc: PoolmgrError, line: bytes, peer: Peer | None) -> None:
    fields = {
        "code": exc.code,
        "peer_uid": peer.uid if peer else None,
        "message": str(exc)[:300],
        "request": _shorten(line),
    }
    logger.warning("%s", format_fields("service_refused", fields))


def _shorten(line: bytes) -> str:
    text = repr(line[:120])
    return text + ("..." if len(line) > 120 else "")
