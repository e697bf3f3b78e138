"""Small helpers for the file cache: unbuffered positional file I/O, the
inter-process lock and the kernel boot id.

Every write goes through ``os.pwrite`` on a raw descriptor: no user-space
buffer may hold data back, because the crash-safety argument (rule 1 in
:mod:`zeo.client.cache.file_format`) relies on each completed write already
being in the kernel when the process dies.
"""
from __future__ import annotations

import os
import uuid

from zeo.client.cache.errors import CacheLockedError
from zeo.client.cache.file_format import BOOT_ID_SIZE
from zeo.client.lockfiles import ProcessLock
from zeo.client.boot_id import system_boot_id

__all__ = ['CacheFile', 'lock_cache_file', 'current_boot_id',
           'UNKNOWN_BOOT_ID']

UNKNOWN_BOOT_ID = b'\0' * BOOT_ID_SIZE


def current_boot_id() -> bytes:
    """This kernel boot's id as 16 bytes, or UNKNOWN_BOOT_ID where the
    system does not say (then recovery after an unclean shutdown is
    conservative: it cannot tell a process crash, which loses nothing
    already written, from a machine crash, which may)."""
    text = system_boot_id()
    try:
        return UNKNOWN_BOOT_ID if text is None else uuid.UUID(text).bytes
    except ValueError:
        return UNKNOWN_BOOT_ID


def lock_cache_file(path: str) -> ProcessLock:
    """Take the lock that gives this process the cache file ``path``."""
    lock = ProcessLock.take(path + '.lock')
    if lock is None:
        raise CacheLockedError(path)
    return lock


class CacheFile:
    """A file opened for unbuffered positional reads and writes."""

    def __init__(self, path: str) -> None:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, 'O_BINARY', 0)
        self.path = path
        self.fd: int | None = os.open(path, flags, 0o644)

    def _fileno(self) -> int:
        if self.fd is None:
            raise ValueError('cache file is closed')
        return self.fd

    def pread(self, size: int, offset: int) -> bytes:
        """Read up to ``size`` bytes at ``offset`` (fewer only at EOF)."""
        fd = self._fileno()
        chunks = []
        while size > 0:
            chunk = _pread(fd, size, offset)
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
            offset += len(chunk)
        return chunks[0] if len(chunks) == 1 else b''.join(chunks)

    def readinto(self, buf: bytearray, offset: int) -> int:
        """Fill ``buf`` from ``offset``; return the number of bytes read."""
        fd = self._fileno()
        view = memoryview(buf)
        done = 0
        while done < len(buf):
            if _HAVE_PREADV:
                n = os.preadv(fd, [view[done:]], offset + done)
            else:  # pragma: no cover - platforms without preadv
                chunk = _pread(fd, len(buf) - done, offset + done)
                n = len(chunk)
                view[done:done + n] = chunk
            if n == 0:
                break
            done += n
        return done

    def pwrite(self, data: bytes, offset: int) -> None:
        """Write all of ``data`` at ``offset``."""
        fd = self._fileno()
        view = memoryview(data)
        while view:
            n = _pwrite(fd, view, offset)
            view = view[n:]
            offset += n

    def size(self) -> int:
        return os.fstat(self._fileno()).st_size

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fileno(), size)

    def fsync(self) -> None:
        os.fsync(self._fileno())

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


_HAVE_PREADV = hasattr(os, 'preadv')


def _pread(fd: int, size: int, offset: int) -> bytes:
    if _HAVE_PREAD:
        return os.pread(fd, size, offset)
    # Windows: emulate.  Callers hold the cache lock, so nobody else
    # moves the file position in between.
    os.lseek(fd, offset, os.SEEK_SET)  # pragma: no cover
    return os.read(fd, size)  # pragma: no cover


def _pwrite(fd: int, data: memoryview, offset: int) -> int:
    if _HAVE_PREAD:
        return os.pwrite(fd, data, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # pragma: no cover
    return os.write(fd, data)  # pragma: no cover


_HAVE_PREAD = hasattr(os, 'pread')
