"""Client caches: choose one, and the names a client needs.

The parts:

- `zeo.client.cache.memory`: `MemoryCache`, kept in process memory;
- `zeo.client.cache.persistent`: `FileCache`, the persistent cache, a ring
  of checksummed records in one file, built from `file_format` (the
  on-disk format, specified in code), `file_io` (positional I/O and the
  lock), `index` (oid, start tid -> block), `ring` (block-level work) and
  `recovery` (rebuilding the index by walking the ring);
- `zeo.client.cache.recent_invalidations`: what both caches remember to
  refuse stale current records;
- `zeo.client.cache.errors`: the exceptions;
- `update_after_commit`: what a client's own commit does to its cache.

>>> cache = open_cache(None, 1 << 20)     # no path: kept in memory
>>> cache.persistent
False
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

from zeo.client.cache.errors import CacheConsistencyError
from zeo.client.cache.errors import CacheCorruptError
from zeo.client.cache.errors import CacheError
from zeo.client.cache.errors import CacheFormatError
from zeo.client.cache.errors import CacheLockedError
from zeo.client.cache.errors import CacheVersionError
from zeo.client.cache.errors import LastTidError
from zeo.client.cache.persistent import MIN_SIZE
from zeo.client.cache.persistent import FileCache
from zeo.client.cache.memory import MemoryCache

__all__ = [
    'open_cache', 'update_after_commit', 'FileCache', 'MemoryCache', 'MIN_SIZE',
    'CacheError', 'CacheFormatError', 'CacheVersionError',
    'CacheCorruptError', 'CacheLockedError', 'CacheConsistencyError',
    'LastTidError',
]


logger = logging.getLogger('zeo.client.cache')


def open_cache(path: str | os.PathLike[str] | None,
               size: int) -> FileCache | MemoryCache:
    """Return a persistent :class:`FileCache` at ``path``, or a
    :class:`MemoryCache` if ``path`` is None.

    A damaged or foreign file at ``path`` is moved aside and replaced (by
    FileCache itself).  If the file cannot be used at all -- no such
    directory, no permission, disk full -- the error is logged and a
    memory cache is returned: a client must not fail to start because of
    its cache.  A file in use by another process is different, it is a
    configuration mistake: :class:`CacheLockedError` is raised.  Sizes
    below :data:`MIN_SIZE` are raised to it for a file cache.
    """
    if path is None:
        return MemoryCache(size)
    try:
        return FileCache(path, max(size, MIN_SIZE))
    except OSError as e:
        logger.error('Cannot open the client cache file %r (%s); using a '
                     'non-persistent cache in memory instead.', path, e)
        return MemoryCache(size)


def update_after_commit(cache: Any, tid: bytes, updates: Iterable[
        tuple[bytes, bytes | None, bool]]) -> None:
    """Apply this client's transaction ``tid`` to ``cache``.

    ``updates`` yields ``(oid, data or None, resolved_by_server)`` (see
    ``TransactionBuffer.updates``): the data of an object the server
    resolved a conflict on is not what was committed, so it is only
    invalidated.  One ``IClientCache.committed`` call; a cache object
    from an application that predates that method gets the same through
    ``invalidate`` and ``store``.
    """
    committed = getattr(cache, 'committed', None)
    if committed is not None:
        committed(tid, [(oid, None if resolved else data)
                        for oid, data, resolved in updates])
        return
    for oid, data, resolved in updates:
        try:
            cache.invalidate(oid, tid)
            if data is not None and not resolved:
                cache.store(oid, tid, None, data)
        except CacheConsistencyError:
            cache.invalidate(oid, None)
