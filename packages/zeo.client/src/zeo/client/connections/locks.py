"""The client's locks, their order, and the checks the tests turn on.

The rules are in ``zeo.client.connections`` (Locks); this module makes
them checkable.  `new_lock` gives a plain ``threading.RLock`` -- unless
`CHECK` is true (zeo.client's own tests set it), when it gives a
`CheckedRLock`, which raises `LockOrderError` the moment a thread takes
it while holding a lock of the same or a later rank.  `check_free` is the
other rule: a thread about to wait (for a reply, a connection) holds
none of these locks, because the thread that would wake it may need one.
"""
from __future__ import annotations

import threading
from typing import Any, Protocol, cast

__all__ = ['CHANNEL', 'CHECK', 'CheckedRLock', 'LockOrderError', 'VISIBILITY',
           'check_free', 'held_by_this_thread', 'new_lock']

#: Rank of a channel's lock (``Channel.lock``): taken first.
CHANNEL = 1
#: Rank of the connection manager's ``visibility`` lock: taken second.
VISIBILITY = 2

#: Whether locks made from now on check their order (tests set it).
CHECK = False


class _Held(threading.local):
    """Per thread: ``held``, the checked locks it holds (unset at first)."""

    held: list[CheckedRLock]


_local = _Held()


class _OwnedRLock(Protocol):
    """An ``RLock`` with ``_is_owned``, which CPython's has (its
    ``Condition`` uses it) but the typeshed stubs leave out."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...

    def _is_owned(self) -> bool: ...


class LockOrderError(AssertionError):
    """A thread broke a rule of zeo.client.connections: the lock order
    (L1-L3), waiting holding a lock (L4), or a second reader (T3)."""


def held_by_this_thread() -> list['CheckedRLock']:
    """The checked locks this thread holds, in the order it took them."""
    try:
        return _local.held
    except AttributeError:
        held: list[CheckedRLock] = []
        _local.held = held
        return held


class CheckedRLock:
    """An ``RLock`` that knows its rank and checks the order it is taken in."""

    def __init__(self, rank: int, name: str) -> None:
        self._lock = cast(_OwnedRLock, threading.RLock())  # for _is_owned, see _OwnedRLock
        self.rank = rank
        self.name = name

    def __repr__(self) -> str:
        return f'<CheckedRLock {self.name} (rank {self.rank})>'

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        held = held_by_this_thread()
        if not self._lock._is_owned():
            for other in held:
                if other.rank >= self.rank:
                    raise LockOrderError(
                        f'{self.name} (rank {self.rank}) taken while holding '
                        f'{other.name} (rank {other.rank})')
        got = self._lock.acquire(blocking, timeout)
        if got:
            held.append(self)
        return got

    def release(self) -> None:
        self._lock.release()
        held = held_by_this_thread()
        for i in range(len(held) - 1, -1, -1):
            if held[i] is self:
                del held[i]
                break

    def _is_owned(self) -> bool:
        return self._lock._is_owned()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


def new_lock(rank: int, name: str) -> Any:
    """A lock of *rank*: checked if `CHECK` is true, else a plain RLock."""
    if CHECK:
        return CheckedRLock(rank, name)
    return threading.RLock()


def check_free(what: str) -> None:
    """With `CHECK`: raise `LockOrderError` if this thread holds a
    client lock while it is about to wait for *what*."""
    if CHECK:
        held = held_by_this_thread()
        if held:
            raise LockOrderError(
                f'waiting for {what} while holding {held[-1].name}')
