"""The client blob cache: downloaded and committed blob files on disk.

A ``ClientStorage`` with a (non-shared) ``blob_dir`` keeps every blob
revision it has seen as one read-only file in a directory laid out as the
reference client does (:mod:`zeo.client.blobs.layout`), so the directory can
be shared by several client processes, reference ZEO clients included.

How the client uses it
----------------------
* ``loadBlob(oid, tid)`` -> ``cache.load(oid, tid, fetch)``, and
  ``openCommittedBlobFile`` -> ``cache.open_committed(oid, tid, fetch,
  opener)``, where ``fetch(oid, tid)`` asks the server for the blob
  (``sendBlob``) and returns once it has arrived.  Both take the bucket
  lock (:meth:`BlobCache.lock`) around "if missing: fetch", so concurrent
  misses, in any process, download a blob once.  A client may also do this
  by hand with :meth:`~BlobCache.lock`, :meth:`~BlobCache.exists` and
  :meth:`~BlobCache.touch`.
* The I/O thread receives the blob: ``d = cache.begin_download(oid, tid)``
  on ``receiveBlobStart``, ``d.write(chunk)`` per chunk, ``d.finish()`` on
  ``receiveBlobStop``, ``d.abort()`` if the connection drops.  The data goes
  to a temporary file in ``tmp/``, is made read-only and only then linked
  to its final name.  None of this takes a bucket lock, so the I/O
  thread can finish a download that an application thread is waiting for
  while it holds the lock.
* After ``tpc_finish`` the client hands each uploaded file to
  :meth:`~BlobCache.add_committed` (renamed in, or copied from another file
  system).  Files to upload are staged in :meth:`~BlobCache.temporary_directory`.
* Pruning, when a size is set: :meth:`~BlobCache.note_added` (called by
  the two methods above) counts bytes and raises :attr:`~BlobCache.needs_pruning`
  every ``size * size_check // 100`` bytes, and once at start-up.  The
  client then calls :meth:`~BlobCache.prune` *off the event loop*: in one
  long-lived worker thread (``on_needs_pruning`` can submit it to one) or
  inline in an application thread, never a new thread per check.  It
  prunes least recently used files down to ``size - check`` bytes
  (:mod:`zeo.client.blobs.prune`).

What a reader can rely on
-------------------------
1. **Never partial content.**  A file appears at its final path only by an
   atomic link (or rename) of a complete temporary file and is never
   written again; a crash leaves at worst a stray file in ``tmp/``.  A
   crash of the machine can't leave a torn file behind either: see
   :mod:`zeo.client.blobs.unsynced` (files are flushed to disk in bulk, or
   one by one where the system can't say which boot it is in).
2. **open_committed() never fails because of pruning.**  On a hit it opens
   the file without any lock: once open, a file stays readable on POSIX
   even if it is unlinked the next moment.  If the file is missing it
   takes the bucket lock, downloads if still missing and opens the file
   *under the lock*, which every pruner (ours and the reference's) must
   hold to delete a file of that bucket.
3. **A path from load() is protected, not pinned.**  It exists when
   returned, and no zeo.client pruner deletes it for ``recent`` seconds
   (:data:`RECENT_USE_SECONDS`, 60) after the load: the pruner skips files
   used that recently and re-checks under the bucket lock.  ZODB opens
   blob files through ``openCommittedBlobFile`` (rule 2), so this only
   matters to code that keeps ``Blob.committed()`` paths: open it within
   that time, or be ready for ``FileNotFoundError`` and ask again (the
   blob is downloaded again).  One narrower window remains: a hit
   (``load``) tries the bucket lock without waiting and, when the lock is
   busy (a download or a pruner in that bucket), touches the file without
   it; a pruner that had already judged the file old may then unlink it a
   few microseconds later.  The cure is the same: ``FileNotFoundError``
   at open, ask again.
4. **Never a file being written.**  Downloads and uploads in progress live
   in ``tmp/``, which pruning never looks at (the reference pruner could
   delete a half-written download, hence "blobs are sometimes empty").
5. Reference ZEO clients sharing the directory lock the same files the
   same way, so rules 1, 2 and 4 hold against them too; their pruner does
   not know rule 3's grace period.

On Windows an open file cannot be deleted, so the pruner skips it (and
rule 2 holds trivially); :mod:`zeo.client.lockfiles` falls back to
``msvcrt`` locking.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from types import TracebackType
from typing import IO
from typing import Any
from typing import BinaryIO
from typing import Callable
from typing import TypeVar

from ZODB.POSException import POSKeyError

from zeo.client.blobs.unsynced import UnsyncedFiles
from zeo.client.blobs.unsynced import flush_file
from zeo.client.blobs.unsynced import system_boot_id
from zeo.client.blobs.errors import BlobCacheError
from zeo.client.blobs.errors import BlobCacheLayoutError
from zeo.client.blobs.layout import LAYOUT_MARKER
from zeo.client.blobs.layout import LAYOUT_NAME
from zeo.client.blobs.layout import LOCK_NAME
from zeo.client.blobs.layout import TMP_DIR
from zeo.client.blobs.layout import blob_relpath
from zeo.client.blobs.layout import bucket_name
from zeo.client.blobs.layout import check_id
from zeo.client.lockfiles import FileLock
from zeo.client.lockfiles import lock_file
from zeo.client.lockfiles import try_lock_file
from zeo.client.blobs.prune import PruneResult
from zeo.client.blobs.prune import prune_directory
from zeo.client.blobs.prune import remove_committed
from zeo.client.blobs.prune import scan

__all__ = ['BlobCache', 'BlobDownload', 'RECENT_USE_SECONDS', 'LOCK_TIMEOUT']

logger = logging.getLogger('zeo.client.blob_cache')

#: Seconds after its last use during which the pruner leaves a file alone
#: (rule 3 of the module docstring).
RECENT_USE_SECONDS = 60.0
#: Default for how long :meth:`BlobCache.lock` waits: a download of a big
#: blob over a slow link may hold a bucket lock for minutes.  The reference
#: waits about as long (60000 x 10 ms).
LOCK_TIMEOUT = 600.0
#: How many times :meth:`BlobCache.open_committed` tries when the file keeps
#: vanishing (only possible if something ignores the bucket lock).
OPEN_ATTEMPTS = 3

F = TypeVar('F')
Fetch = Callable[[bytes, bytes], Any]


def _open_rb(path: str) -> BinaryIO:
    return open(path, 'rb')


class BlobCache:
    """A blob cache in ``directory``, pruned to about ``size`` bytes
    (None: unbounded) each time ``size_check`` percent of ``size`` has
    been added.

    Keyword-only tuning: ``recent`` (seconds a used file is safe from
    pruning), ``lock_timeout`` (seconds :meth:`lock` waits; None: forever),
    ``fsync`` (keep files safe from a crash of the machine, see
    :mod:`zeo.client.blobs.unsynced`; only tests turn it off), ``boot_id``
    (returns the system's boot id, or None to flush each file before it
    gets its final name), ``on_needs_pruning`` (called, in the thread that
    added the bytes, each time :attr:`needs_pruning` becomes true,
    including at construction: keep it cheap, e.g. submit :meth:`prune`
    to a worker).
    """

    def __init__(self, directory: str | os.PathLike[str],
                 size: int | None = None, size_check: int = 10, *,
                 recent: float = RECENT_USE_SECONDS,
                 lock_timeout: float | None = LOCK_TIMEOUT,
                 fsync: bool = True,
                 boot_id: Callable[[], str | None] = system_boot_id,
                 on_needs_pruning: Callable[[], Any] | None = None) -> None:
        if size is not None and (
                isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise ValueError(f'blob cache size must be a byte count or None, '
                             f'not {size!r}')
        if (isinstance(size_check, bool) or not isinstance(size_check, int)
                or not 0 < size_check < 100):
            raise ValueError(f'blob cache size check must be a percentage '
                             f'between 1 and 99, not {size_check!r}')
        if recent < 0:
            raise ValueError(f'recent must not be negative: {recent!r}')
        self.directory = os.path.abspath(os.fspath(directory))
        self.size = size
        self.size_check = size_check
        #: Bytes added between two prunings, and the size pruning aims for.
        self.check = None if size is None else size * size_check // 100
        self.target = None if size is None else max(size - (self.check or 0), 0)
        self.recent = recent
        self.lock_timeout = lock_timeout
        self._on_needs_pruning = on_needs_pruning

        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._dir_mode = stat.S_IMODE(os.stat(self.directory).st_mode)
        # Blob files are read-only, readable by whoever may read the
        # directory (what ZODB's set_not_writable does).
        self._file_mode = stat.S_IRUSR | (
            self._dir_mode & (stat.S_IRGRP | stat.S_IROTH))
        self._check_layout()
        self._tmp = os.path.join(self.directory, TMP_DIR)
        self._ensure_dir(self._tmp)
        self._unsynced = UnsyncedFiles.open(self.directory, boot_id()) if fsync else None
        #: Whether each file is flushed before it gets its final name.
        self.fsync = fsync and self._unsynced is None

        self._mutex = threading.Lock()
        self._closed = False
        self._since_check = 0
        self._needs_pruning = False
        self._counts = dict.fromkeys(
            ('added_files', 'added_bytes', 'pruned_files', 'pruned_bytes',
             'prune_runs', 'prune_busy'), 0)
        #: What the last :meth:`prune` call found and did.
        self.last_prune: PruneResult | None = None
        if size is not None:
            self._raise_flag()

    def __repr__(self) -> str:
        return f'<BlobCache {self.directory!r} size={self.size}>'

    # -- layout --------------------------------------------------------------

    def _ensure_dir(self, path: str) -> None:
        try:
            os.mkdir(path, self._dir_mode)
        except FileExistsError:
            pass

    def _check_layout(self) -> None:
        marker = os.path.join(self.directory, LAYOUT_MARKER)
        found = ''
        for _ in range(50):
            try:
                with open(marker) as f:
                    found = f.read().strip()
            except FileNotFoundError:
                self._write_marker(marker)
                continue
            if found:
                break
            time.sleep(0.01)   # another process is writing it right now
        if found != LAYOUT_NAME:
            raise BlobCacheLayoutError(self.directory, found, LAYOUT_NAME)

    def _write_marker(self, marker: str) -> None:
        # Write elsewhere, then link: the marker appears with its content,
        # and only one of several racing processes creates it.
        fd, temp = tempfile.mkstemp(prefix='.layout-', dir=self.directory)
        try:
            os.write(fd, LAYOUT_NAME.encode('ascii'))
            os.close(fd)
            try:
                os.link(temp, marker)
            except FileExistsError:
                pass
            except OSError:   # no hard links on this file system
                if not os.path.exists(marker):
                    os.replace(temp, marker)
        finally:
            try:
                os.remove(temp)
            except FileNotFoundError:
                pass

    def path_for(self, oid: bytes, tid: bytes) -> str:
        """The final path of blob revision ``(oid, tid)``; not created."""
        return os.path.join(self.directory, blob_relpath(oid, tid))

    def exists(self, oid: bytes, tid: bytes) -> bool:
        """Whether blob revision ``(oid, tid)`` is in the cache now."""
        return os.path.isfile(self.path_for(oid, tid))

    def temporary_directory(self) -> str:
        """``<directory>/tmp`` (created): for files to upload, so that
        :meth:`add_committed` can rename them into the cache."""
        self._ensure_dir(self._tmp)
        return self._tmp

    # -- locking -------------------------------------------------------------

    def _lock_path(self, oid: bytes) -> str:
        return os.path.join(self.directory, bucket_name(oid), LOCK_NAME)

    def lock(self, oid: bytes, tid: bytes) -> FileLock:
        """Lock the bucket of ``(oid, tid)`` across threads and processes
        and return the held lock, a context manager.  Waits up to
        ``lock_timeout`` seconds, then raises
        :class:`~zeo.client.blobs.errors.BlobCacheLockTimeout`.  Re-entrant
        within a thread.  Hold it around "if not exists: download"."""
        check_id(tid, 'tid')
        path = self._lock_path(oid)
        self._ensure_dir(os.path.dirname(path))
        return lock_file(path, self.lock_timeout)

    # -- reading -------------------------------------------------------------

    def touch(self, path: str) -> bool:
        """Mark the blob file ``path`` as used now (for LRU and rule 3).
        Return whether it exists."""
        now = time.time()
        try:
            os.utime(path, (now, now))
        except FileNotFoundError:
            return False
        except OSError:   # another user's file: we may not set its times
            return os.path.isfile(path)
        return True

    def _touch_open(self, f: Any, path: str) -> None:
        now = time.time()
        try:
            if os.utime in os.supports_fd:
                os.utime(f.fileno(), (now, now))
                return
        except (AttributeError, OSError, ValueError):
            pass
        self.touch(path)

    def load(self, oid: bytes, tid: bytes, fetch: Fetch) -> str:
        """The path of blob revision ``(oid, tid)``, downloaded with
        ``fetch(oid, tid)`` if missing; for ``loadBlob``.  Raises
        ``POSKeyError`` if it is still missing after ``fetch``.  See rule 3
        of the module docstring for how long the path stays valid."""
        path = self.path_for(oid, tid)
        try:
            hit_lock = try_lock_file(self._lock_path(oid))
        except FileNotFoundError:   # no bucket yet: surely a miss
            hit_lock = None
        if hit_lock is None:
            if self.touch(path):
                return path
        else:
            with hit_lock:
                if self.touch(path):
                    return path
        with self.lock(oid, tid):
            if not self.touch(path):
                fetch(oid, tid)
                if not self.touch(path):
                    raise POSKeyError('No blob file', oid, tid)
            return path

    def open_committed(self, oid: bytes, tid: bytes, fetch: Fetch,
                       opener: Callable[[str], F] = _open_rb) -> F:  # type: ignore[assignment]
        """``opener(path)`` (default: ``open(path, 'rb')``) for blob
        revision ``(oid, tid)``, downloaded with ``fetch`` if missing; for
        ``openCommittedBlobFile`` (pass ``lambda p: ZODB.blob.BlobFile(p,
        'r', blob)`` when given a blob).  Never fails because of pruning
        (rule 2)."""
        path = self.path_for(oid, tid)
        try:
            f = opener(path)
        except FileNotFoundError:
            pass
        else:
            self._touch_open(f, path)
            return f
        for _ in range(OPEN_ATTEMPTS):
            with self.lock(oid, tid):
                if not os.path.isfile(path):
                    fetch(oid, tid)
                    if not os.path.isfile(path):
                        raise POSKeyError('No blob file', oid, tid)
                try:
                    f = opener(path)
                except FileNotFoundError:
                    continue   # deleted by something that ignores the lock
            self._touch_open(f, path)
            return f
        raise BlobCacheError(
            f'blob file {path!r} vanished {OPEN_ATTEMPTS} times while '
            f'being opened: something deletes blob cache files without '
            f'taking the bucket lock')

    # -- adding --------------------------------------------------------------

    def begin_download(self, oid: bytes, tid: bytes) -> BlobDownload:
        """Start receiving blob revision ``(oid, tid)``.  Use the result
        as a context manager (it yields the binary file to write to;
        a normal exit installs the file, an exception deletes it), or call
        its ``write``, ``finish`` and ``abort`` methods."""
        return BlobDownload(self, oid, tid)

    def add_committed(self, oid: bytes, tid: bytes,
                      source_path: str | os.PathLike[str]) -> str:
        """Move the file ``source_path``, just committed as ``(oid, tid)``,
        into the cache (rename, or copy and remove across file systems).
        Return its final path."""
        source = os.fspath(source_path)
        final = self.path_for(oid, tid)
        size = os.stat(source).st_size
        try:
            self._prepare(source)
            installed = self._install(source, final)
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            fd, temp = tempfile.mkstemp(prefix='commit-', suffix='.tmp',
                                        dir=self.temporary_directory())
            try:
                with os.fdopen(fd, 'wb') as out, open(source, 'rb') as src:
                    shutil.copyfileobj(src, out, 1 << 20)
                self._prepare(temp)
                installed = self._install(temp, final)
            except BaseException:
                _remove_quietly(temp)
                raise
            _remove_quietly(source)
        if installed:
            self.note_added(size, files=1)
        return final

    def _prepare(self, path: str, synced: bool = False) -> None:
        """Make a complete file ready for its final name: on disk (unless
        ``synced`` says it is, or the crash marker covers it), used now,
        read-only."""
        if self._unsynced is not None:
            self._unsynced.before_install()
        elif self.fsync and not synced:
            flush_file(path)
        now = time.time()
        os.utime(path, (now, now))
        os.chmod(path, self._file_mode)

    def _install(self, source: str, final: str) -> bool:
        """Give the prepared file ``source`` the name ``final``; ``source``
        is gone afterwards.  False if ``final`` already existed (another
        process got the same revision first; it is identical)."""
        self._ensure_dir(os.path.dirname(final))
        try:
            os.link(source, final)
        except FileExistsError:
            installed = False
        except OSError as error:
            if error.errno == errno.EXDEV:
                raise
            # No hard links on this file system: rename, never over an
            # existing file (a reader may hold it).
            if os.path.exists(final):
                installed = False
            else:
                os.replace(source, final)
                return True
        else:
            installed = True
        _remove_quietly(source)
        return installed

    # -- size control --------------------------------------------------------

    @property
    def needs_pruning(self) -> bool:
        """True when enough has been added since the last :meth:`prune`
        (and right after construction when a size is set)."""
        return self._needs_pruning

    def _raise_flag(self) -> None:
        with self._mutex:
            if self._needs_pruning or self._closed:
                return
            self._needs_pruning = True
        if self._on_needs_pruning is not None:
            self._on_needs_pruning()

    def note_added(self, nbytes: int, files: int = 1) -> None:
        """Count ``nbytes`` added to the cache; raise :attr:`needs_pruning`
        when a check is due.  Called by downloads and commits; a client
        that adds files by other means calls it itself."""
        with self._mutex:
            self._counts['added_files'] += files
            self._counts['added_bytes'] += nbytes
            if self.check is None:
                return
            self._since_check += nbytes
            due = self._since_check >= self.check
        if due:
            self._raise_flag()

    def prune(self) -> int:
        """Prune to the target now, in the calling thread; return the
        bytes removed.  Does nothing (returns 0) without a size, after
        :meth:`close`, or when another thread or process is pruning the
        directory (it is then asked to make another pass).  Errors of the
        file system are logged, not raised: a failed pruning must not
        fail the client."""
        with self._mutex:
            self._needs_pruning = False
            if self.target is None or self._closed:
                return 0
            self._since_check = 0
        try:
            result = prune_directory(self.directory, self.target,
                                     recent=self.recent)
        except OSError:
            logger.warning('pruning blob cache %s failed', self.directory,
                           exc_info=True)
            return 0
        with self._mutex:
            self.last_prune = result
            if result.ran:
                self._counts['prune_runs'] += 1
                self._counts['pruned_files'] += result.removed_files
                self._counts['pruned_bytes'] += result.removed_bytes
            else:
                self._counts['prune_busy'] += 1
        return result.removed_bytes

    def stats(self) -> dict[str, int]:
        """``files`` and ``bytes`` in the cache now (a directory scan, so
        not free), and this object's counters: ``pruned_files``,
        ``pruned_bytes``, ``added_files``, ``added_bytes``, ``prune_runs``,
        ``prune_busy`` (prunings skipped because another one ran)."""
        entries = scan(self.directory)
        with self._mutex:
            counts = dict(self._counts)
        counts['files'] = len(entries)
        counts['bytes'] = sum(e.size for e in entries)
        return counts

    def close(self) -> None:
        """Stop pruning (a running :meth:`prune` finishes its pass).  The
        files stay: the cache is reused by the next client."""
        with self._mutex:
            self._closed = True
            self._needs_pruning = False
        if self._unsynced is not None:
            self._unsynced.close()


def _remove_quietly(path: str) -> None:
    try:
        remove_committed(path)
    except FileNotFoundError:
        pass


class BlobDownload:
    """One blob revision being received into ``<directory>/tmp``."""

    def __init__(self, cache: BlobCache, oid: bytes, tid: bytes) -> None:
        self.cache = cache
        self.final_path = cache.path_for(oid, tid)
        name = os.path.basename(self.final_path)[:-len('.blob')]
        fd, self.temp_path = tempfile.mkstemp(
            prefix=name + '-', suffix='.dl', dir=cache.temporary_directory())
        #: The temporary file, open for binary writing.
        self.file: IO[bytes] = os.fdopen(fd, 'wb')
        self.done = False

    def __repr__(self) -> str:
        state = 'done' if self.done else 'receiving'
        return f'<BlobDownload {self.final_path!r} {state}>'

    def write(self, data: bytes) -> int:
        """Append a chunk."""
        return self.file.write(data)

    def finish(self) -> str:
        """Install the received file under its final name (unless another
        process was first) and count it; return the final path."""
        if self.done:
            raise BlobCacheError(f'{self!r} is already finished or aborted')
        try:
            synced = False
            if not self.file.closed:
                self.file.flush()
                fd = self.file.fileno()
                if self.cache.fsync:
                    os.fsync(fd)
                    synced = True
                size = os.fstat(fd).st_size
                self.file.close()
            else:
                size = os.stat(self.temp_path).st_size
            self.cache._prepare(self.temp_path, synced)
            installed = self.cache._install(self.temp_path, self.final_path)
        except BaseException:
            self.abort()
            raise
        self.done = True
        if installed:
            self.cache.note_added(size, files=1)
        return self.final_path

    def abort(self) -> None:
        """Drop the partial file."""
        self.done = True
        try:
            self.file.close()
        finally:
            _remove_quietly(self.temp_path)

    def __enter__(self) -> IO[bytes]:
        return self.file

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()
