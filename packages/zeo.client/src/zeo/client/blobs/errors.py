"""Exceptions raised by the client blob cache.

All of them derive from :class:`BlobCacheError`.  A blob that the server
does not have is not a cache error: it is reported as
``ZODB.POSException.POSKeyError``, as every storage does.
"""
from __future__ import annotations

__all__ = [
    'BlobCacheError',
    'BlobCacheLayoutError',
    'BlobCacheLockTimeout',
]


class BlobCacheError(Exception):
    """Base class of every error raised by the blob cache."""


class BlobCacheLayoutError(BlobCacheError, ValueError):
    """The directory's ``.layout`` marker names a layout we cannot use.

    ``directory`` is the blob directory, ``found`` the layout named by its
    marker and ``expected`` the layout this code needs.
    """

    def __init__(self, directory: str, found: str, expected: str) -> None:
        self.directory = directory
        self.found = found
        self.expected = expected
        if expected == 'zeocache':
            hint = (
                'A blob *cache* directory must use the zeocache layout. If '
                'this is the server\'s own blob directory, mounted here, '
                'set shared-blob-dir (shared_blob_dir=True) instead; '
                'otherwise give the client an empty directory of its own.')
        else:
            hint = ('A shared blob directory must be the server\'s blob '
                    'directory, not a client blob cache.')
        super().__init__(
            f'blob directory {directory!r} is marked (in its .layout file) '
            f'as using the {found!r} layout, but {expected!r} is needed '
            f'here. {hint}')


class BlobCacheLockTimeout(BlobCacheError, TimeoutError):
    """A blob cache lock file stayed locked longer than the timeout.

    ``path`` is the lock file and ``timeout`` the time waited, in seconds.
    """

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        super().__init__(
            f'could not lock {path!r} within {timeout:g} seconds: another '
            f'thread or process holds it (usually while it downloads a '
            f'blob). If no live process uses this blob cache directory, '
            f'the lock is not stale (locks die with their process), so '
            f'look for a hung client sharing the directory.')
