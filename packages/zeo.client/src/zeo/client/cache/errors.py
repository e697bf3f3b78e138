"""Exceptions raised by the client caches.

All of them derive from :class:`CacheError`.  The three "file" errors
(:class:`CacheFormatError`, :class:`CacheVersionError`,
:class:`CacheCorruptError`) describe a cache file that cannot be used as
it is; :class:`~zeo.client.cache.persistent.FileCache` reacts to them by moving
the file aside and starting with an empty cache, so an application never
fails to start because of its cache.  :class:`CacheLockedError` is the one
file error that is *not* handled that way: another live process owns the
file and silently starting a second, empty cache next to it would hide a
configuration mistake.
"""
from __future__ import annotations

__all__ = [
    'CacheError',
    'CacheFormatError',
    'CacheVersionError',
    'CacheCorruptError',
    'CacheLockedError',
    'CacheConsistencyError',
    'LastTidError',
]


class CacheError(Exception):
    """Base class of every error raised by a client cache."""


class CacheFormatError(CacheError):
    """The file is not a zeo.client cache file (wrong magic, too short)."""


class CacheVersionError(CacheError):
    """The file was written by a newer, incompatible version of the format.

    ``file_version`` is the version found in the file and
    ``supported_version`` the newest one this code understands.
    """

    def __init__(self, message: str, file_version: int,
                 supported_version: int) -> None:
        super().__init__(message)
        self.file_version = file_version
        self.supported_version = supported_version


class CacheCorruptError(CacheError):
    """A structure inside the cache file failed its checks.

    ``offset`` is the byte offset of the structure in the file (or -1 when
    the problem is not tied to one place) and ``why`` says what was wrong.
    """

    def __init__(self, offset: int, why: str) -> None:
        super().__init__(offset, why)
        self.offset = offset
        self.why = why

    def __str__(self) -> str:
        if self.offset < 0:
            return f'corrupt cache file: {self.why}'
        return f'corrupt cache file at offset {self.offset}: {self.why}'


class CacheLockedError(CacheError):
    """Another process (or another cache object) already uses the file."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f'the client cache file {path!r} is already in use: its lock '
            f'file {path + ".lock"!r} is held by another process (or by '
            f'another open cache in this process). A persistent cache file '
            f'can serve only one client at a time; give each client its '
            f'own cache file (a distinct client name or cache directory), '
            f'or stop the other process first.')


class CacheConsistencyError(CacheError, ValueError):
    """A caller asked for an update that contradicts what the cache holds.

    Example: storing a current revision of an object while the cache holds
    a *different* current revision of it.  This signals a bug in the
    caller's ordering of loads and invalidations, never a file problem.
    """


class LastTidError(CacheError, ValueError):
    """``setLastTid`` was asked to move the last transaction id backwards."""
