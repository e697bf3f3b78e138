"""Blob cache files that survive a crash of the machine, without an fsync each.

The danger: a file gets its final name in the blob cache, and the machine
crashes (power loss, kernel panic) before the kernel has written the
file's data to disk.  After the restart the name may lead to a file that
is empty, short or full of zeros, and the cache would serve that as the
blob.  A crash of the *process* is harmless: the data is in the kernel's
page cache and reaches the disk anyway.

Flushing each file (``fsync``) before it gets its name prevents that, at
a price paid in every download and every commit of a blob: 6 to 8 ms per
10 MB on our machines, and much more when the file system has other
writes pending (ext4 then writes those too).  So where the system says
which boot it is in (Linux: ``/proc/sys/kernel/random/boot_id``) and has
``flock``, `UnsyncedFiles` does this instead:

1. Before a process installs its first unflushed file, it makes sure that
   the directory holds a marker ``.unsynced-<boot id>``, itself flushed to
   disk: "files of this boot may not be on disk yet".
2. Every process (``BlobCache``) using the directory holds a shared
   ``flock`` on ``.users.lock`` from opening to closing.
3. The last one to close -- it gets that lock exclusively without waiting
   -- flushes every blob file added or used since the marker was written,
   then removes the marker: everything is on disk.
4. A process that opens the cache while nobody else uses it (again: the
   exclusive lock without waiting) looks for markers of other boots.  One
   means the machine restarted while unflushed files existed: it deletes
   every blob file (each under its bucket's lock, as a pruner does), then
   the markers, and logs a warning.  Blobs are downloaded again when
   needed.  Files in ``tmp/`` never have a final name, so they can't be
   served, torn or not.

Reference ZEO clients sharing the directory take no part: the files they
write are as safe as ZEO 6.2 makes them.  A process that crashes leaves
the marker behind (and its lock goes with
it); the next last user to close cleans up, or, after a reboot, rule 4
does.  Without a boot id or ``flock`` (Windows), the cache flushes each
file before it gets its name.
"""
from __future__ import annotations

import errno
import logging
import os
import threading

from zeo.client.blobs.layout import LOCK_NAME
from zeo.client.blobs.layout import UNSYNCED_PREFIX
from zeo.client.blobs.layout import USERS_LOCK
from zeo.client.boot_id import BOOT_ID_PATTERN
from zeo.client.boot_id import system_boot_id
from zeo.client.lockfiles import lock_file
from zeo.client.blobs.prune import remove_committed
from zeo.client.blobs.prune import scan

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ['UnsyncedFiles', 'system_boot_id', 'flush_file', 'CLOCK_MARGIN']

logger = logging.getLogger('zeo.client.blob_cache')

#: When the last user closes, files last used up to this many seconds
#: before the marker was written are flushed too: the clock may have been
#: set back meanwhile.
CLOCK_MARGIN = 3600.0
#: How long the clean-up after a crash waits for a bucket's lock.
RECOVERY_LOCK_TIMEOUT = 60.0

def flush_file(path: str) -> None:
    """``fsync`` the file or directory ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        # A few systems refuse fsync on a read-only descriptor; real I/O
        # errors must not be ignored.
        if error.errno not in (errno.EBADF, errno.EINVAL):
            raise
    finally:
        os.close(fd)


class UnsyncedFiles:
    """The rules of the module docstring for one blob cache ``directory``
    in one process.  Use `open`; call `before_install` before a file gets
    its final name unflushed, and `close` once."""

    def __init__(self, directory: str, boot_id: str, lock_fd: int) -> None:
        self.directory = directory
        self.boot_id = boot_id
        self.marker = os.path.join(directory, UNSYNCED_PREFIX + boot_id)
        #: Blob files deleted at opening because of an earlier crash.
        self.dropped = 0
        self._lock_fd: int | None = lock_fd
        self._marked = False
        self._mutex = threading.Lock()

    @classmethod
    def open(cls, directory: str, boot_id: str | None) -> UnsyncedFiles | None:
        """Start using ``directory`` (rules 2 and 4); None if this system
        can't (no ``boot_id``, no ``flock``): then flush each file."""
        if fcntl is None or boot_id is None:
            return None
        if not BOOT_ID_PATTERN.match(boot_id):
            raise ValueError(f'not a boot id: {boot_id!r}')
        try:
            fd = os.open(os.path.join(directory, USERS_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                alone = _try_exclusive(fd)
            except OSError:
                os.close(fd)
                raise
        except OSError as error:
            # E.g. a network file system without locks: flush each file.
            logger.info('blob cache %s: flushing each file (no lock: %s)',
                        directory, error)
            return None
        try:
            self = cls(directory, boot_id, fd)
            if alone:
                try:
                    self._recover()
                finally:
                    fcntl.flock(fd, fcntl.LOCK_SH)
            else:
                fcntl.flock(fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
        return self

    def _recover(self) -> None:
        # We are alone: markers of other boots are files of a crashed one.
        stale = [name for name in os.listdir(self.directory)
                 if name.startswith(UNSYNCED_PREFIX)
                 and name != os.path.basename(self.marker)]
        if not stale:
            return
        for entry in sorted(scan(self.directory), key=lambda e: e.bucket):
            # A reference client sharing the directory may be opening it.
            with lock_file(os.path.join(entry.bucket, LOCK_NAME), RECOVERY_LOCK_TIMEOUT):
                try:
                    remove_committed(entry.path)
                except FileNotFoundError:
                    continue
            self.dropped += 1
        for name in stale:
            os.remove(os.path.join(self.directory, name))
        flush_file(self.directory)
        logger.warning(
            'blob cache %s: the machine restarted while files written since'
            ' the boot %s may not have reached the disk; %d blob files were'
            ' deleted and will be downloaded again when needed',
            self.directory, stale[0][len(UNSYNCED_PREFIX):], self.dropped)

    def before_install(self) -> None:
        """Rule 1: make sure this boot's marker is on disk (once)."""
        if self._marked:
            return
        with self._mutex:
            if self._marked:
                return
            # Even if another process created it: it may not have flushed
            # the directory yet.
            fd = os.open(self.marker, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            flush_file(self.directory)
            self._marked = True

    def close(self) -> None:
        """Stop using the directory; the last user flushes (rule 3)."""
        with self._mutex:
            fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        try:
            if _try_exclusive(fd) and os.path.exists(self.marker):
                self._flush_all()
        finally:
            os.close(fd)

    def _flush_all(self) -> None:
        since = os.stat(self.marker).st_mtime - CLOCK_MARGIN
        for entry in scan(self.directory):
            if entry.last_used >= since:
                try:
                    flush_file(entry.path)
                except FileNotFoundError:
                    continue
        os.remove(self.marker)
        flush_file(self.directory)


def _try_exclusive(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
