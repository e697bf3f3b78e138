"""Lock files, exclusive between threads *and* processes: the client's one
locking scheme, for the blob cache and the persistent object cache.

`lock_file` and `try_lock_file` are for the blob cache (waiting with a
timeout, re-entrant in a thread); `ProcessLock` is for the object cache
file, which one process owns from open to close, whatever thread closes it.

Why ``flock``
-------------
The reference ZEO client locks the blob cache's ``.lock`` and
``check_size.lock`` files with zc.lockfile, which on POSIX is
``fcntl.flock(fd, LOCK_EX | LOCK_NB)``.  Using ``flock`` on the same files
makes a cache directory safe to share with reference clients.  It is also
the right primitive on its own merits: an ``flock`` lock belongs to an open
file description, so it dies with its process (no stale locks after a
crash) and two descriptors opened by two threads of one process exclude
each other.  ``fcntl``/``lockf`` record locks do neither: they are per
process, and a process loses them as soon as it closes *any* descriptor of
the file.

Waiting without busy-waiting (mostly)
-------------------------------------
``flock`` can block, but not with a timeout, and a lock held by a hung
process must not hang its waiters forever.  So waiting has two stages:

1. Threads of this process queue on a ``threading.RLock`` kept per lock
   file in a module registry.  That is a real blocking wait with a
   timeout: no polling at all when the contention is inside the process,
   the usual case (several application threads missing the same blob).
2. Only the thread that got the in-process lock competes for the
   ``flock``, trying ``LOCK_NB`` with exponential back-off (1 ms doubling
   to 50 ms) until the deadline.  So polling happens only while another
   *process* holds the lock, and then at most 20 times a second, instead
   of the reference's fixed 10 ms for up to 60000 rounds.

The in-process lock is re-entrant for :func:`lock_file` (a thread that
holds a bucket lock may take it again), but :func:`try_lock_file`, used by
the pruner, refuses a lock that the calling thread already holds: holding
the bucket lock means "I am using this bucket", whoever asks.

After ``fork()`` the child forgets the parent's locks (closing its
inherited descriptors without unlocking them, which would release the
parent's lock), so it competes for them like any other process.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from types import TracebackType

from zeo.client.blobs.errors import BlobCacheLockTimeout

# flock everywhere but on Windows (a test a type checker understands).
if sys.platform == 'win32':  # pragma: no cover
    import msvcrt
else:
    import fcntl

__all__ = ['FileLock', 'lock_file', 'try_lock_file', 'ProcessLock']

#: First and longest sleep between two ``LOCK_NB`` attempts while another
#: process holds the lock, in seconds.
FIRST_BACKOFF = 0.001
MAX_BACKOFF = 0.05


def _try_flock(fd: int) -> bool:
    if sys.platform != 'win32':
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    else:  # pragma: no cover (Windows)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True


def _unflock(fd: int) -> None:
    if sys.platform != 'win32':
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:  # pragma: no cover (Windows)
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _open_lock_file(path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        # A lock file created by another user of a shared cache: flock
        # works on a descriptor opened for reading too.
        return os.open(path, os.O_RDONLY)


def _open_and_flock(path: str) -> int | None:
    """A new descriptor of *path* holding its ``flock``, or None if
    someone else holds it (never waits)."""
    fd = _open_lock_file(path)
    try:
        locked = _try_flock(fd)
    except BaseException:
        os.close(fd)
        raise
    if not locked:
        os.close(fd)
        return None
    return fd


class _State:
    """What this process knows about one lock file."""

    __slots__ = ('rlock', 'depth', 'fd')

    def __init__(self) -> None:
        self.rlock = threading.RLock()
        self.depth = 0          # re-entrant acquisitions by the owner
        self.fd: int | None = None


_registry: dict[str, _State] = {}
_registry_guard = threading.Lock()


def _state_for(path: str) -> _State:
    with _registry_guard:
        state = _registry.get(path)
        if state is None:
            state = _registry[path] = _State()
        return state


def _forget_after_fork() -> None:
    global _registry_guard
    _registry_guard = threading.Lock()
    for state in _registry.values():
        if state.fd is not None:
            try:
                os.close(state.fd)
            except OSError:
                pass
            state.fd = None
    _registry.clear()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_forget_after_fork)


class FileLock:
    """A held lock on the file ``path``; release it with :meth:`release`
    or by leaving the ``with`` block."""

    __slots__ = ('path', '_state', '_held')

    def __init__(self, path: str, state: _State) -> None:
        self.path = path
        self._state = state
        self._held = True

    @property
    def held(self) -> bool:
        return self._held

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        state = self._state
        try:
            state.depth -= 1
            if state.depth == 0 and state.fd is not None:
                fd, state.fd = state.fd, None
                try:
                    _unflock(fd)
                finally:
                    os.close(fd)
        finally:
            state.rlock.release()

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __repr__(self) -> str:
        return f'<FileLock {self.path!r} {"held" if self._held else "released"}>'


def _flock_until(path: str, deadline: float | None) -> int | None:
    """Open and ``flock`` ``path``, polling until ``deadline``
    (``time.monotonic()`` value; None: forever).  Return the descriptor,
    or None on timeout."""
    fd = _open_lock_file(path)
    try:
        delay = FIRST_BACKOFF
        while not _try_flock(fd):
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    os.close(fd)
                    return None
                time.sleep(min(delay, left))
            else:
                time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_file(path: str, timeout: float | None) -> FileLock:
    """Lock ``path`` (created if missing), waiting up to ``timeout``
    seconds (None: forever).  Raise :class:`BlobCacheLockTimeout` when the
    time is up.  Re-entrant within a thread."""
    path = os.path.abspath(path)
    state = _state_for(path)
    deadline = None if timeout is None else time.monotonic() + timeout
    if not state.rlock.acquire(timeout=-1 if timeout is None else timeout):
        raise BlobCacheLockTimeout(path, timeout or 0.0)
    try:
        if state.depth == 0:
            fd = _flock_until(path, deadline)
            if fd is None:
                raise BlobCacheLockTimeout(path, timeout or 0.0)
            state.fd = fd
        state.depth += 1
    except BaseException:
        state.rlock.release()
        raise
    return FileLock(path, state)


def try_lock_file(path: str) -> FileLock | None:
    """Lock ``path`` if nobody holds it, this thread included; else None.
    Never waits."""
    path = os.path.abspath(path)
    state = _state_for(path)
    if not state.rlock.acquire(blocking=False):
        return None
    try:
        if state.depth:
            state.rlock.release()
            return None
        fd = _open_and_flock(path)
        if fd is None:
            state.rlock.release()
            return None
        state.fd = fd
        state.depth = 1
    except BaseException:
        state.rlock.release()
        raise
    return FileLock(path, state)


class ProcessLock:
    """An ``flock`` on a lock file of its own, taken without waiting: what
    the reference takes with zc.lockfile on a cache file's ``.lock``, so
    the two exclude each other. Two `ProcessLock` of one file exclude each
    other in one process too; `close` may come from any thread.
    Use `ProcessLock.take`."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def take(cls, path: str) -> ProcessLock | None:
        """Lock ``path`` (created if missing), or None if it is held."""
        fd = _open_and_flock(path)
        if fd is None:
            return None
        try:   # who holds it, for people (as zc.lockfile writes it)
            os.ftruncate(fd, 0)
            os.write(fd, b' %d\n' % os.getpid())
        except OSError:
            pass   # a read-only lock file of another user
        return cls(path, fd)

    def close(self) -> None:
        """Give the lock up (closing the descriptor releases the flock)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
