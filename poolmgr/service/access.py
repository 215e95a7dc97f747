"""Who may use the mapping service: peer credentials of a Unix socket.

The kernel records the peer's pid, uid and gid (SO_PEERCRED) and its
supplementary groups (SO_PEERGROUPS, Linux 4.13+) when it connects, so a
process cannot pass the check by changing its ids afterwards.
"""

import errno
import grp
import os
import pwd
import socket
import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass

from poolmgr.errors import ConfigError

_UCRED = struct.Struct("3i")
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_MAX_GROUPS = 65536


@dataclass(frozen=True)
class Peer:
    """The process at the other end of a connection, as the kernel saw it."""

    pid: int
    uid: int
    gid: int


@dataclass(frozen=True)
class AccessPolicy:
    """Allowed callers: some uids, and the members of one group."""

    uids: frozenset[int]
    gid: int | None = None

    def allows(self, peer: Peer, groups: Callable[[], Collection[int]] = tuple) -> bool:
        """Return whether peer may connect; groups() is asked only if needed."""
        if peer.uid in self.uids:
            return True
        if self.gid is None:
            return False
        return peer.gid == self.gid or self.gid in groups()


def access_policy(group: str | None) -> AccessPolicy:
    """Return the policy for root, this process's user and group's members.

    Raises ConfigError when the group does not exist.
    """
    uids = frozenset({0, os.geteuid()})
    if group is None:
        return AccessPolicy(uids)
    try:
        return AccessPolicy(uids, grp.getgrnam(group).gr_gid)
    except KeyError:
        raise ConfigError(
            f"Service group {group!r} does not exist: create it (groupadd --system "
            f"{group}) or set service.group to a group that does."
        ) from None


def peer_of(conn: socket.socket) -> Peer:
    """Return the credentials the kernel recorded when the peer connected."""
    data = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return Peer(*_UCRED.unpack(data))


def peer_groups(conn: socket.socket, peer: Peer) -> tuple[int, ...]:
    """Return the peer's supplementary groups as of connect time.

    Kernels without SO_PEERGROUPS (before 4.13) fall back to the groups of
    the peer's user in the group database.
    """
    size = 4 * 256
    while True:
        try:
            data = conn.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, size)
        except OSError as exc:
            if exc.errno == errno.ERANGE and size < 4 * _MAX_GROUPS:
                size *= 16
                continue
            return _database_groups(peer)
        count = len(data) // 4
        return struct.unpack(f"{count}I", data[: count * 4])


def _database_groups(peer: Peer) -> tuple[int, ...]:
    try:
        name = pwd.getpwuid(peer.uid).pw_name
    except KeyError:
        return ()
    return tuple(os.getgrouplist(name, peer.gid))
