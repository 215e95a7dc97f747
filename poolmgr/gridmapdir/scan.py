"""Reading a gridmapdir from disk: its names grouped by the inode they share.

A gridmapdir holds one empty file per pool account and, for each lease, a
second hard link to that file named after the person. Which lease belongs to
which account is only visible through the shared inode, and the inode's
mtime is the last use (LCMAPS ``utime``s it on every mapping).
"""

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from poolmgr.errors import BadInputError

Progress = Callable[[str, int], None]
PROGRESS_EVERY = 5000


@dataclass
class Inode:
    """One file of the gridmapdir and every name it has there."""

    key: tuple[int, int]
    nlink: int
    mtime_ns: int
    names: list[bytes] = field(default_factory=list)

    @property
    def last_use(self) -> datetime:
        """Return the mtime as an aware UTC time, to the microsecond."""
        return mtime_to_datetime(self.mtime_ns)


@dataclass
class Scan:
    """What scan_gridmapdir found."""

    inodes: list[Inode]
    entries: int
    odd: list[tuple[bytes, str]]


def mtime_to_datetime(mtime_ns: int) -> datetime:
    """Return a file time in nanoseconds as an aware UTC datetime."""
    seconds, nanos = divmod(mtime_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC)
    return stamp.replace(microsecond=nanos // 1000)


def datetime_to_ns(value: datetime) -> int:
    """Return an aware datetime as nanoseconds since the epoch, exactly."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    delta = value - epoch
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return micros * 1000


def scan_gridmapdir(directory: Path, progress: Progress | None = None) -> Scan:
    """Return the regular files of directory grouped by inode.

    Names starting with "." are skipped (LCMAPS ignores them too); anything
    that is not a regular file is listed in odd. Raises BadInputError when
    directory cannot be read.
    """
    inodes: dict[tuple[int, int], Inode] = {}
    odd: list[tuple[bytes, str]] = []
    entries = 0
    try:
        with os.scandir(os.fsencode(directory)) as listing:
            for entry in listing:
                entries += 1
                if progress is not None and entries % PROGRESS_EVERY == 0:
                    progress("read", entries)
                _add_entry(entry, inodes, odd)
    except OSError as exc:
        raise BadInputError(
            f"Cannot read gridmapdir {str(directory)!r}: {exc.strerror}."
        ) from None
    return Scan(list(inodes.values()), entries, odd)


def _add_entry(
    entry: "os.DirEntry[bytes]",
    inodes: dict[tuple[int, int], Inode],
    odd: list[tuple[bytes, str]],
) -> None:
    if entry.name.startswith(b"."):
        return
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError as exc:
        odd.append((entry.name, f"cannot be read: {exc.strerror}"))
        return
    if not entry.is_file(follow_symlinks=False):
        odd.append((entry.name, "is not a regular file"))
        return
    key = (info.st_dev, info.st_ino)
    inode = inodes.get(key)
    if inode is None:
        inode = inodes[key] = Inode(key, info.st_nlink, info.st_mtime_ns)
    inode.names.append(entry.name)
