"""Writing the files commands produce: atomically, or not at all.

Every command that writes a file (an export, a report, a VO card) goes
through ``write_atomically``: the text goes to a temporary file beside the
target, is synced, and replaces the target in one rename, so a reader sees
the old file or the new one, never half of it. A target that cannot be
written is an expected failure with one line naming the path.
"""

import os
import tempfile
from pathlib import Path

from poolmgr.errors import PoolmgrError


class OutputFileError(PoolmgrError):
    """An output file could not be written (missing directory, permissions)."""

    exit_code = 1
    code = "ERROR"


def write_atomically(
    path: Path, text: str, mode: int = 0o644, *, replace: bool = True
) -> bool:
    """Write text to path through a temporary file and a rename.

    With replace=False an existing path is left alone and False returned.
    Raises OutputFileError, naming the path, when it cannot be written.
    """
    if path.is_dir():
        raise _error(path, "Is a directory")
    try:
        return _write(path, text, mode, replace)
    except OSError as exc:
        raise _error(path, exc.strerror or str(exc)) from None


def _write(path: Path, text: str, mode: int, replace: bool) -> bool:
    directory = path.parent if str(path.parent) else Path(".")
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        if replace:
            os.replace(temporary, path)
            return True
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)


def _error(path: Path, why: str) -> OutputFileError:
    return OutputFileError(f"Cannot write {str(path)!r}: {why.rstrip('.')}.")
