"""The mapping service: ``poolmgr serve`` answers LCMAPS on a Unix socket.

The wire format is in poolmgr/protocol.py. Design:

- Threads: idle threads wait in accept(), one connection per thread, at
  most ``service.max_clients``; beyond that, clients wait in the listen
  backlog (server.py). Mappings run at most ``service.workers`` at a time,
  which bounds database connections (handler.py). ``service.processes``
  above 1 forks that many such workers under a supervisor (run.py).
- One shared Mapper per process; its routing table is reloaded after
  ``service.router_ttl`` seconds, so rules changed by sync reach a running
  service within that time.
- Access: the socket is mode 0660 with the configured group (0600 without
  one) from the moment it appears, and each connection's peer credentials
  are checked: root, the service's own uid, or a member of the group
  (access.py).
- The DN received is taken as the end-entity subject, as LCMAPS passes it,
  so a trailing numeric CN is part of the name; ``CN=proxy`` and ``CN=limited
  proxy`` are still stripped.
- Database outages: each request is its own transaction, so a request that
  meets a dead database fails with DB_UNAVAILABLE and leaves nothing behind;
  the first request after the database is back succeeds. A request that
  waits ``service.request_timeout`` for a worker is refused the same way,
  and a vanished server is given up after 30 s (db.py), so a hung database
  cannot pile up requests to run once it answers again.
- SIGTERM or SIGINT: stop accepting, let requests in progress finish (at
  most ``service.shutdown_timeout`` seconds), remove the socket, exit 0.
"""

from poolmgr.service.access import (
    AccessPolicy,
    Peer,
    access_policy,
    peer_groups,
    peer_of,
)
from poolmgr.service.client import send_request
from poolmgr.service.handler import Handler
from poolmgr.service.run import build_service, serve
from poolmgr.service.server import MappingService

__all__ = [
    "AccessPolicy",
    "Handler",
    "MappingService",
    "Peer",
    "access_policy",
    "build_service",
    "peer_groups",
    "peer_of",
    "send_request",
    "serve",
]
