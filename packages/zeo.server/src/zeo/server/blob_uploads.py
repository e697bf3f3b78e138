"""Where blob uploads live, and how many spooled bytes the server holds.

Upload directories
------------------

A blob arrives before the vote (``storeBlobStart``/``Chunk``/``End``, or a
shared upload claimed at ``storeBlobShared``) and must be a named file then,
since the storage's ``storeBlob`` moves a file by name. Such files are kept
in an `UploadDirectory`: one directory per storage and server process,
``zeo-uploads-*`` in the storage's temporary directory (the same file system
as its blobs, so the storage can rename them into place). Rules:

1. The owning process holds an exclusive ``flock`` on the directory's
   ``owner.lock`` for as long as the directory exists; the kernel drops it
   when the process dies, however it dies.
2. A directory whose lock can be taken has no owner any more:
   `remove_stale_uploads` (run when a storage starts being served) removes
   it with everything in it. So uploads of a server killed with SIGKILL are
   removed by the next server on the same storage; no process ids are
   guessed. A live server removes its directory when a transaction ends
   and no upload is left in it, and when it closes the storage.
3. A directory is created under a staging name, locked, and only then
   renamed to its ``zeo-uploads-`` name, so a directory under that name is
   never seen without its lock.

The spool budget
----------------

`SpoolBudget` bounds the bytes that all open transactions of one server
hold together, spooled operations and blob uploads alike (``max-spool-total``).
Each transaction's own bound (``max-spool-size``) is checked by its
`TransactionSpool`, which charges the shared budget as it grows and gives
everything back when it is closed.
"""

from __future__ import annotations

import collections
import fcntl
import itertools
import logging
import os
import shutil
import tempfile
from typing import IO

from ZODB.POSException import TransactionTooLargeError

__all__ = [
    "LOCK_NAME",
    "PREFIX",
    "SpoolBudget",
    "UploadDirectory",
    "remove_stale_uploads",
]

logger = logging.getLogger("zeo.server")

#: Name prefix of upload directories (see the module docstring).
PREFIX = "zeo-uploads-"
#: Name prefix of an upload directory being created (Rule 3).
STAGING_PREFIX = ".zeo-uploads-new-"
#: The lock file in an upload directory (Rule 1).
LOCK_NAME = "owner.lock"

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: Upload directories of live `UploadDirectory` objects of this process: on
#: file systems where flock is emulated with POSIX locks, our own lock would
#: not keep us from removing our own directory.
_LIVE: set[str] = set()


class SpoolBudget:
    """Bytes that every open transaction of a server may spool together.

    *limit* None means no limit. `charge` raises
    `ZODB.POSException.TransactionTooLargeError` and charges nothing when
    the total would go over the limit.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0
        #: Charges refused, by limit (this one, and each transaction's
        #: max-spool-size, counted by its spool), for the monitor.
        self.refusals: collections.Counter[str] = collections.Counter()

    def __repr__(self) -> str:
        return f"<SpoolBudget {self.used} of {self.limit} bytes>"

    def charge(self, nbytes: int) -> None:
        if self.limit is not None and self.used + nbytes > self.limit:
            self.refusals["max-spool-total"] += 1
            raise TransactionTooLargeError(
                f"the server's spool space is full: its open transactions hold"
                f" {self.used} bytes, and {nbytes} more would pass its limit of"
                f" {self.limit} bytes (max-spool-total); commit smaller"
                f" transactions or try again later")
        self.used += nbytes

    def release(self, nbytes: int) -> None:
        self.used = max(0, self.used - nbytes)


class UploadDirectory:
    """This process's blob uploads for one storage, in *parent* (the
    storage's temporary directory). Created when first used; `close`
    removes it with whatever is left in it."""

    def __init__(self, parent: str) -> None:
        self.parent = parent
        self.path: str | None = None
        self.fd: int | None = None      # a descriptor of the directory
        self._lock: int | None = None   # the locked owner.lock
        self._names = itertools.count(1)

    def __repr__(self) -> str:
        return f"<UploadDirectory {self.path or self.parent!r}>"

    def _open(self) -> tuple[str, int]:
        # The directory's path and descriptor (set together).
        if self.path is not None:
            assert self.fd is not None
            return self.path, self.fd
        staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.parent)
        lock = os.open(os.path.join(staging, LOCK_NAME),
                       os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path = os.path.join(self.parent,
                                PREFIX + os.path.basename(staging)[len(STAGING_PREFIX):])
            # os.replace is os.rename here (the name is new); ZODB's own
            # tests break os.rename to act out a blob dir on another disk.
            os.replace(staging, path)
            self.fd = fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC)
        except BaseException:
            os.close(lock)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._lock, self.path = lock, path
        _LIVE.add(path)
        return path, fd

    def new_file(self) -> tuple[IO[bytes], str]:
        """A new, empty upload file open for writing, and its path."""
        fd, path = tempfile.mkstemp(suffix=".upload", dir=self._open()[0])
        return os.fdopen(fd, "wb"), path

    def new_name(self) -> tuple[str, str, int]:
        """For a file moved in: the directory, a fresh name, a descriptor."""
        path, fd = self._open()
        return path, f"shared-{next(self._names)}.upload", fd

    def remove_if_empty(self) -> None:
        """Remove the directory if no upload is left in it (it is created
        again when needed), so an idle server leaves nothing behind."""
        if self.fd is not None and os.listdir(self.fd) == [LOCK_NAME]:
            self.close()

    def close(self) -> None:
        path, self.path = self.path, None
        if path is None:
            return
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            _LIVE.discard(path)
            for fd in (self.fd, self._lock):
                if fd is not None:
                    os.close(fd)
            self.fd = self._lock = None


def remove_stale_uploads(parent: str) -> list[str]:
    """Remove the upload directories in *parent* whose owner is gone
    (Rule 2); return their paths."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(parent))
    except OSError as error:   # no such directory, not readable, ...
        if not isinstance(error, FileNotFoundError):
            logger.warning("cannot look for stale blob uploads in %s: %s", parent, error)
        return removed
    for entry in entries:
        try:
            if _remove_if_stale(entry):
                removed.append(entry.path)
        except OSError as error:
            logger.warning("cannot remove the stale blob uploads %s: %s", entry.path, error)
    if removed:
        logger.warning("removed %d blob upload director%s left by a server that"
                       " is gone: %s", len(removed), "y" if len(removed) == 1 else "ies",
                       ", ".join(removed))
    return removed


def _remove_if_stale(entry: os.DirEntry[str]) -> bool:
    """Remove *entry* if it is an upload directory without a live owner."""
    staging = entry.name.startswith(STAGING_PREFIX)
    if not (staging or entry.name.startswith(PREFIX)) or entry.path in _LIVE \
            or not entry.is_dir(follow_symlinks=False):
        return False
    try:
        lock: int | None = os.open(os.path.join(entry.path, LOCK_NAME),
                                   os.O_RDWR | os.O_NOFOLLOW | _CLOEXEC)
    except FileNotFoundError:
        if staging:
            return False   # perhaps being created right now (Rule 3)
        lock = None        # not made by Rule 3: nobody owns it
    try:
        if lock is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False   # its server is alive
        shutil.rmtree(entry.path)
        return True
    finally:
        if lock is not None:
            os.close(lock)
