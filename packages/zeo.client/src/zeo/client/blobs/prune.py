"""Pruning a blob cache directory down to a target size.

:func:`prune_directory` is the whole algorithm; :class:`BlobCache` decides
*when* to call it.  It runs in the caller's thread and returns a
:class:`PruneResult`.  Rules, each one a fix of something the reference
pruner gets wrong or a promise the cache makes:

1. One pruner per directory at a time, across processes: it holds
   ``check_size.lock`` (non-blocking).  If that is busy it leaves a
   ``check_size.attempt`` marker and returns at once; the running pruner
   (ours or a reference client's) sees the marker and makes one more pass,
   so the additions that triggered us are accounted for.
2. It only looks at ``<bucket>/<name>.blob`` files.  Downloads and uploads
   in progress live in ``tmp/`` and are never touched, nor is anything
   else in the directory.
3. Least recently used first.  "Used" is ``max(atime, mtime)``: the cache
   sets both explicitly when it installs or touches a file, so this works
   on ``noatime`` and ``relatime`` mounts too, and a reference client's
   atime bumps count as well.
4. A file used less than ``recent`` seconds ago is never deleted (the
   window between a client handing out a path and the application opening
   it).  Since files are taken oldest first, the first recent one ends
   the pass.
5. A file is deleted only while its bucket's ``.lock`` is held by the
   pruner (non-blocking; a busy bucket is skipped for the rest of the
   pass), and the recency check is redone under that lock.  A loader
   holds the bucket lock while it checks for, downloads and (for
   ``open_committed``) opens a file, so the pruner never deletes a file
   between a loader's "it exists" and its use.
6. Vanished files (another pruner, a manual clean-up) are not errors: the
   size is adjusted and the pass goes on.  Two pruners never both count
   one deletion, because ``os.remove`` succeeds for only one of them.

Pruning is approximate, as in the reference: the target is a goal, not a
hard limit (recent and locked files stay, and others may add files while
a pass runs).
"""
from __future__ import annotations

import logging
import os
import stat
import sys
import time
from dataclasses import dataclass
from typing import Callable

from zeo.client.blobs.layout import BLOB_SUFFIX
from zeo.client.blobs.layout import CHECK_SIZE_ATTEMPT
from zeo.client.blobs.layout import CHECK_SIZE_LOCK
from zeo.client.blobs.layout import LOCK_NAME
from zeo.client.blobs.layout import is_bucket_name
from zeo.client.lockfiles import FileLock
from zeo.client.lockfiles import try_lock_file

__all__ = ['BlobEntry', 'PruneResult', 'scan', 'prune_directory',
           'last_used', 'MAX_PASSES']

logger = logging.getLogger('zeo.client.blob_cache')

#: Most passes one :func:`prune_directory` call makes when others keep
#: asking for more (rule 1): bounded so a pruner always returns.
MAX_PASSES = 3


@dataclass(frozen=True)
class BlobEntry:
    """One cached blob file as seen by a scan."""
    path: str
    bucket: str
    size: int
    last_used: float


@dataclass
class PruneResult:
    """What one :func:`prune_directory` call did."""
    #: False if another pruner held ``check_size.lock`` (nothing was done).
    ran: bool = False
    passes: int = 0
    scanned_files: int = 0
    scanned_bytes: int = 0
    removed_files: int = 0
    removed_bytes: int = 0
    skipped_recent: int = 0
    skipped_locked: int = 0
    #: Estimated bytes left after the last pass.
    remaining_bytes: int = 0


def last_used(st: os.stat_result) -> float:
    """When a blob file was last used, for LRU ordering (rule 3)."""
    return max(st.st_atime, st.st_mtime)


def scan(directory: str) -> list[BlobEntry]:
    """Every committed blob file in the buckets of ``directory``.
    Symbolic links (to buckets or files) are not followed."""
    entries: list[BlobEntry] = []
    try:
        with os.scandir(directory) as top:
            buckets = [e.path for e in top
                       if is_bucket_name(e.name)
                       and e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return entries
    for bucket in buckets:
        try:
            with os.scandir(bucket) as it:
                for entry in it:
                    if not entry.name.endswith(BLOB_SUFFIX):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        entries.append(BlobEntry(
                            entry.path, bucket, st.st_size, last_used(st)))
        except (FileNotFoundError, NotADirectoryError):
            continue
    return entries


def remove_committed(path: str) -> None:
    """Delete a read-only blob file (Windows needs it writable first)."""
    if sys.platform == 'win32':  # pragma: no cover
        os.chmod(path, stat.S_IWRITE)
    os.remove(path)


def _mark_attempt(directory: str) -> None:
    try:
        with open(os.path.join(directory, CHECK_SIZE_ATTEMPT), 'w'):
            pass
    except OSError:
        pass


def _take_attempt(directory: str) -> bool:
    """Remove the attempt marker; whether there was one."""
    try:
        os.remove(os.path.join(directory, CHECK_SIZE_ATTEMPT))
    except FileNotFoundError:
        return False
    except OSError:
        return False
    return True


def prune_directory(directory: str, target: int, *, recent: float,
                    clock: Callable[[], float] = time.time) -> PruneResult:
    """Delete least recently used blob files of ``directory`` until the
    blobs total at most ``target`` bytes, within the rules of the module
    docstring.  ``clock`` gives the current time in the units of file
    times (tests may replace it)."""
    result = PruneResult()
    check_lock = try_lock_file(os.path.join(directory, CHECK_SIZE_LOCK))
    if check_lock is None:
        _mark_attempt(directory)
        logger.debug('blob cache %s: another pruner is running', directory)
        return result
    try:
        result.ran = True
        _take_attempt(directory)
        while True:
            _prune_pass(directory, target, recent, clock, result)
            if result.passes >= MAX_PASSES or not _take_attempt(directory):
                break
    finally:
        check_lock.release()
    logger.debug('blob cache %s pruned: %s', directory, result)
    return result


def _prune_pass(directory: str, target: int, recent: float,
                clock: Callable[[], float], result: PruneResult) -> None:
    result.passes += 1
    entries = scan(directory)
    total = sum(e.size for e in entries)
    result.scanned_files = len(entries)
    result.scanned_bytes = total
    result.remaining_bytes = total
    if total <= target:
        return
    entries.sort(key=lambda e: e.last_used)
    cutoff = clock() - recent
    busy: set[str] = set()
    for index, entry in enumerate(entries):
        if total <= target:
            break
        if entry.last_used > cutoff:
            result.skipped_recent += len(entries) - index
            break
        if entry.bucket in busy:
            result.skipped_locked += 1
            continue
        lock: FileLock | None = try_lock_file(
            os.path.join(entry.bucket, LOCK_NAME))
        if lock is None:
            busy.add(entry.bucket)
            result.skipped_locked += 1
            continue
        try:
            try:
                st = os.lstat(entry.path)
            except FileNotFoundError:
                total -= entry.size
                continue
            if last_used(st) > cutoff:
                result.skipped_recent += 1
                continue
            try:
                remove_committed(entry.path)
            except FileNotFoundError:
                total -= entry.size
                continue
            except OSError as error:  # e.g. open on Windows
                logger.debug('cannot remove %s: %s', entry.path, error)
                continue
        finally:
            lock.release()
        total -= st.st_size
        result.removed_files += 1
        result.removed_bytes += st.st_size
    result.remaining_bytes = total
