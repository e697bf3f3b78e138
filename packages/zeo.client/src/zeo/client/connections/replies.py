"""The calls in flight on one channel, and who waits for each reply.

Used holding the channel's lock.  A *waiter* is anything with
``set_result(value)`` and ``set_exception(error)``: a `Waiter` for an
application thread, an ``asyncio.Future`` for the loop's own coroutines.
A call gets the next integer message id; ``loadBefore`` uses
``(oid, tid)`` as its id, as the reference does, so identical loads in
flight share one request and all their waiters get the one reply.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from ZODB.POSException import ConflictError, POSKeyError
from zeo.protocol import ErrorReply, Reply, exception_text, peer_repr, zodb_error_table

from zeo.client.connections.waiter import Waiter
from zeo.client.load_refs import waiter_result

__all__ = ['PendingReplies', 'QUIET_ERRORS']

logger = logging.getLogger('zeo.client')

#: Errors that are part of normal operation: raised, never logged.
QUIET_ERRORS = (POSKeyError, ConflictError)

_ERRORS = zodb_error_table()
_InvalidStateError = asyncio.InvalidStateError


def _settle(waiter: Any, value: Any) -> None:
    try:
        waiter.set_result(value)
    except _InvalidStateError:  # a loop future that was cancelled
        pass


def _fail(waiter: Any, error: BaseException) -> None:
    try:
        waiter.set_exception(error)
    except _InvalidStateError:
        pass


class PendingReplies:
    """Message ids and their waiters.  *load_replied(oid, tid, result)*
    hears of a load's result before its waiters (the cache)."""

    def __init__(self, owner: Any, load_replied: Callable[[bytes, bytes, Any], None]) -> None:
        self._owner = owner  # for log lines
        self._load_replied = load_replied
        self._waiters: dict[Any, Any] = {}
        self._next_id = 1

    def add(self, waiter: Any) -> int:
        """A new message id, whose reply goes to *waiter*."""
        msgid = self._next_id
        self._next_id = msgid + 1
        self._waiters[msgid] = waiter
        return msgid

    def add_load(self, key: tuple[bytes, bytes], waiter: Any) -> bool:
        """*waiter* (None: nobody) waits for ``loadBefore(*key)``; True if
        that request must be sent (none is in flight)."""
        waiters = self._waiters.get(key)
        if waiters is None:
            self._waiters[key] = [] if waiter is None else [waiter]
            return True
        if waiter is not None:
            waiters.append(waiter)
        return False

    def loading(self, key: tuple[bytes, bytes]) -> bool:
        return key in self._waiters

    def for_threads(self, msgid: Any) -> bool:
        """May an application thread handle the reply to *msgid*?  Yes if
        only application threads wait for it (or nobody); not if a loop
        future does."""
        waiter = self._waiters.get(msgid)
        if type(waiter) is list:
            for w in waiter:
                if type(w) is not Waiter:
                    return False
            return True
        return waiter is None or type(waiter) is Waiter

    def replied_in_thread(self, event: Reply) -> bool:
        """`replied`, for an application thread: False (and nothing done)
        if a loop future waits for this reply (see `for_threads`)."""
        msgid = event[0]
        waiter = self._waiters.get(msgid)
        if type(waiter) is Waiter:   # one thread's call: the common case
            del self._waiters[msgid]
            _settle(waiter, event[3])
            return True
        if not self.for_threads(msgid):
            return False
        self.replied(event)
        return True

    def replied(self, event: Reply) -> None:
        msgid = event[0]
        waiter = self._waiters.pop(msgid, None)
        result = event[3]
        if type(msgid) is tuple:
            # The cache learns of the reply before anyone else, and before
            # the next message.
            try:
                self._load_replied(msgid[0], msgid[1], result)
            except Exception:
                logger.exception('%r: caching a load reply failed', self._owner)
            if waiter:
                result = waiter_result(result)   # a loadBeforeRefs reply's first three
                for w in waiter:
                    _settle(w, result)
        elif waiter is not None:
            _settle(waiter, result)
        else:
            logger.warning('%r: reply to an unknown call %s', self._owner, peer_repr(msgid))

    def failed(self, event: ErrorReply) -> None:
        waiter = self._waiters.pop(event.msgid, None)
        error = _ERRORS.from_reply(event)
        if not isinstance(error, QUIET_ERRORS):
            logger.info('%r: the server raised %s', self._owner, error.__class__.__name__)
        if waiter is None:
            logger.warning('%r: error reply to an unknown call %s: %s',
                           self._owner, peer_repr(event.msgid), exception_text(error))
        elif type(waiter) is list:
            for w in waiter:
                _fail(w, _ERRORS.from_reply(event))
        else:
            _fail(waiter, error)

    def fail_all(self, error: Callable[[], BaseException]) -> None:
        """The connection is gone: every waiter gets ``error()``."""
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            for w in (waiter if type(waiter) is list else (waiter,)):
                _fail(w, error())
