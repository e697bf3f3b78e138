"""The per-storage commit lock, its FIFO queue and its timeout watchdog.

Theory of operation
-------------------

A ZEO transaction takes its storage's commit lock at ``vote`` and keeps
it through ``tpc_finish`` or ``tpc_abort``.  Everything before the vote
is spooled per connection without the lock, so only the apply/vote/finish
phase is serialized.

Rule 1: single-threaded.  Every method is called from the event loop
thread; there is no internal locking.

Rule 2: hand-over is immediate, notification is deferred.  When the
holder releases, the first waiter becomes the holder at once (so nobody
can overtake the queue between release and notification), but its
``on_granted`` callback is scheduled with ``call_soon``: it runs after
``release`` has returned, never recursively inside it, so a chain of
quick transactions cannot grow the stack.

Rule 3: every scheduled callback checks, when it runs, that it still
concerns the current grant (a grant number increments on each grant).  A
waiter that was handed the lock and then disconnected before its
notification ran is therefore never called back, and a timer that fires
for a previous holder does nothing.

Rule 4: the lock never releases itself.  On timeout it calls
``on_timeout(owner)``; the session aborts the storage transaction and
releases.  Releasing without the session would let the next voter call
``storage.tpc_begin`` while the previous storage transaction is still
open, which blocks (FileStorage takes a thread lock) the whole server.
If the session's callbacks raise, the exception goes to the event loop's
exception handler and the lock stays held until the owner releases or
disconnects.

Rule 5: a timeout empties the queue.  When the watchdog fires, every
waiter leaves the queue before ``on_timeout`` runs, and its
``on_dropped(waited)`` callback is scheduled with ``call_soon`` (the
session answers the vote with a ConflictError, which ZODB applications
retry).  A client that votes and then goes silent is indistinguishable
from an honest voter while both wait; granting the queue in order would
let K such voters hold the lock one after the other, K timeouts in all.
Emptying the queue bounds what silent voters queued together cost
everyone else to one timeout: the honest clients retry at once, the
silent ones do not.  Under ordinary contention nothing times out and the
queue stays strictly FIFO, however long it is.  A dropped owner that has
already asked again, or holds the lock again, is not called back.

States, per owner: absent -> WAITING -> HOLDING -> absent, or
absent -> HOLDING -> absent, or absent -> WAITING -> absent (released,
or dropped by Rule 5); ``release`` goes to absent from any state.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from collections.abc import Hashable
from typing import Any, Generic, NamedTuple, Optional, TypeVar

from ZODB.POSException import StorageTransactionError
from zope.interface import implementer

from zeo.server.interfaces import ICommitLock


__all__ = ['CommitLock']

#: ``call_soon(fn)`` schedules ``fn()`` on the event loop.
CallSoon = Callable[[Callable[[], None]], Any]
#: ``call_later(delay, fn)`` schedules ``fn()`` and returns a handle with
#: ``cancel()``, like ``asyncio.AbstractEventLoop.call_later``.
CallLater = Callable[[float, Callable[[], None]], Any]


class _Waiter(NamedTuple):
    on_granted: Callable[[], None]
    on_dropped: Optional[Callable[[float], None]]
    since: float


def _check_timeout(timeout: Any) -> Optional[float]:
    if timeout is None:
        return None
    if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout) or timeout <= 0):
        raise ValueError(
            f"transaction timeout must be a positive number of seconds or"
            f" None (no timeout), got {timeout!r}")
    return float(timeout)


#: Whoever takes the lock (a session): only compared and used as a key.
Owner = TypeVar("Owner", bound=Hashable)


@implementer(ICommitLock)
class CommitLock(Generic[Owner]):
    """See `ICommitLock`.

    *call_soon* schedules the ``on_granted`` callbacks (``loop.call_soon``
    in production).  *clock* gives the values reported as
    ``locked_since`` and ``waiting_since``; pass ``time.time`` so they can
    be shown as the reference's epoch ``lock_time``.  If *timeout*
    (seconds) is set, *call_later* (``loop.call_later``) and
    *on_timeout* are required.  For the monitor, *on_wait(seconds)* is
    called at every grant with how long the owner waited (0 when the lock
    was free), and *on_hold(owner, seconds)* at every release by the
    holder with how long it held the lock.
    """

    def __init__(self, *, call_soon: CallSoon, clock: Callable[[], float],
                 timeout: Optional[float] = None,
                 call_later: Optional[CallLater] = None,
                 on_timeout: Optional[Callable[[Owner], None]] = None,
                 on_wait: Optional[Callable[[float], None]] = None,
                 on_hold: Optional[Callable[[Owner, float], None]] = None,
                 ) -> None:
        self.timeout: Optional[float] = _check_timeout(timeout)
        #: What a timeout needs: all of it, or None without a timeout.
        self._expiry: Optional[tuple[float, CallLater, Callable[[Owner], None]]] = None
        if self.timeout is not None:
            if call_later is None or on_timeout is None:
                raise ValueError(
                    "a transaction timeout needs both call_later (to run the"
                    " timer) and on_timeout (to abort the transaction)")
            self._expiry = (self.timeout, call_later, on_timeout)
        self._call_soon = call_soon
        self._clock = clock
        self._on_wait = on_wait
        self._on_hold = on_hold
        self._holder: Optional[Owner] = None
        self._locked_since: Optional[float] = None
        # dicts keep insertion order: this is the FIFO queue, with O(1)
        # removal of a waiter that disconnects.
        self._waiters: dict[Owner, _Waiter] = {}
        self._grant = 0      # incremented on every grant (Rule 3)
        self._timer: Any = None
        self._timed_out = False

    def __repr__(self) -> str:
        return (f'<{type(self).__name__} holder={self._holder!r}'
                f' waiting={len(self._waiters)} timeout={self.timeout}>')

    @property
    def holder(self) -> Optional[Owner]:
        """See `ICommitLock`."""
        return self._holder

    @property
    def waiting(self) -> int:
        """See `ICommitLock`."""
        return len(self._waiters)

    @property
    def waiters(self) -> tuple[Owner, ...]:
        """See `ICommitLock`."""
        return tuple(self._waiters)

    @property
    def locked_since(self) -> Optional[float]:
        """See `ICommitLock`."""
        return self._locked_since

    @property
    def waiting_since(self) -> Optional[float]:
        """See `ICommitLock`."""
        for waiter in self._waiters.values():
            return waiter.since
        return None

    def waiting_since_of(self, owner: Owner) -> Optional[float]:
        """When *owner* started waiting, or None if it is not waiting."""
        waiter = self._waiters.get(owner)
        return None if waiter is None else waiter.since

    @property
    def holder_timed_out(self) -> bool:
        """See `ICommitLock`."""
        return self._timed_out

    def request(self, owner: Owner, on_granted: Callable[[], None],
                on_dropped: Optional[Callable[[float], None]] = None,
                ) -> bool:
        """See `ICommitLock`."""
        if owner is None:
            raise ValueError("the commit lock's owner must not be None")
        if owner == self._holder:
            raise StorageTransactionError(
                f"{owner!r} asked for the commit lock it already holds;"
                f" a connection can vote only one transaction at a time")
        if owner in self._waiters:
            raise StorageTransactionError(
                f"{owner!r} asked for the commit lock it is already"
                f" waiting for; a connection can vote only one transaction"
                f" at a time")
        if self._holder is None:
            self._take(owner)
            if self._on_wait is not None:
                self._on_wait(0.0)
            return True
        self._waiters[owner] = _Waiter(on_granted, on_dropped, self._clock())
        return False

    def release(self, owner: Owner) -> bool:
        """See `ICommitLock`."""
        if owner is not None and owner == self._holder:
            self._stop_timer()
            if self._on_hold is not None:
                since = self._locked_since
                assert since is not None  # set with the holder
                self._on_hold(owner, max(0.0, self._clock() - since))
            self._holder = None
            self._locked_since = None
            self._timed_out = False
            if self._waiters:
                self._hand_over()
            return True
        if self._waiters.pop(owner, None) is not None:
            return True
        return False

    def _hand_over(self) -> None:
        first = next(iter(self._waiters))
        waiter = self._waiters.pop(first)
        grant, since = self._take(first)
        if self._on_wait is not None:
            self._on_wait(max(0.0, since - waiter.since))
        self._call_soon(functools.partial(
            self._notify, first, grant, waiter.on_granted))

    def _take(self, owner: Owner) -> tuple[int, float]:
        # The grant's number and time.
        self._holder = owner
        self._locked_since = since = self._clock()
        self._timed_out = False
        self._grant += 1
        if self._expiry is not None:
            timeout, call_later, on_timeout = self._expiry
            self._timer = call_later(
                timeout,
                functools.partial(self._expire, owner, self._grant, on_timeout))
        return self._grant, since

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _is_current(self, owner: Owner, grant: int) -> bool:
        return self._grant == grant and self._holder == owner

    def _notify(self, owner: Owner, grant: int,
                on_granted: Callable[[], None]) -> None:
        if self._is_current(owner, grant):
            on_granted()

    def _notify_dropped(self, owner: Owner,
                        on_dropped: Callable[[float], None],
                        waited: float) -> None:
        if owner != self._holder and owner not in self._waiters:
            on_dropped(waited)

    def _expire(self, owner: Owner, grant: int,
                on_timeout: Callable[[Owner], None]) -> None:
        if not self._is_current(owner, grant):
            return
        self._timer = None
        self._timed_out = True
        # Rule 5: the queue goes first, so the holder's release (in
        # on_timeout) hands the lock to nobody who was waiting.
        dropped, self._waiters = self._waiters, {}
        now = self._clock()
        for waiter_owner, waiter in dropped.items():
            if waiter.on_dropped is not None:
                self._call_soon(functools.partial(
                    self._notify_dropped, waiter_owner, waiter.on_dropped,
                    max(0.0, now - waiter.since)))
        on_timeout(owner)
