"""The per-storage invalidation queue behind ``getInvalidations``.

A reconnecting client tells the server the last tid its cache knows
about; the server answers with every oid changed since then, or with
None if it can't account for all of them (the client then drops its
cache).  The answer comes from a short history of recent commits kept in
memory (`InvalidationQueue`) and, optionally, from iterating the storage
when the tid is recent enough (`invalidations_by_iteration`).
`find_invalidations` combines both the way ``getInvalidations`` does.

Memory: the history is bounded twice, by its number of entries (``size``,
the ``invalidation-queue-size`` option) and by the total number of oids it
holds (``max_oids``), because one huge transaction can carry millions of
oids.  Dropping an entry early is always safe: it only means that clients
further behind must drop their caches.  oids are kept in tuples (one
pointer each) and only turned into a set while answering a query.
"""
from __future__ import annotations

import collections
import math
import struct
from collections.abc import Iterable
from collections.abc import Iterator
from typing import Any
from typing import Optional
from typing import Tuple

from persistent.TimeStamp import TimeStamp
from zope.interface import implementer
from zeo.protocol import peer_repr

from zeo.server.interfaces import IInvalidationQueue


__all__ = [
    'DEFAULT_QUEUE_SIZE',
    'DEFAULT_MAX_QUEUED_OIDS',
    'DEFAULT_MAX_ITERATED_OIDS',
    'InvalidationQueue',
    'invalidations_by_iteration',
    'find_invalidations',
]

Z64 = b'\0' * 8

#: Entries kept per storage; the reference's ``invalidation-queue-size``
#: default.
DEFAULT_QUEUE_SIZE = 100

#: Total oids kept over all entries.  An 8-byte ``bytes`` object costs
#: about 41 bytes plus an 8-byte tuple slot, so this caps the queue near
#: 50 MB per storage even if a few transactions touch millions of objects.
DEFAULT_MAX_QUEUED_OIDS = 1_000_000

#: Oids collected by a storage iteration before giving up and answering
#: None (the client then drops its cache, which is always correct).
DEFAULT_MAX_ITERATED_OIDS = 1_000_000

_MAX_TID_INT = 2 ** 64 - 1

Oids = Tuple[bytes, ...]
Entry = Tuple[bytes, Optional[Oids]]
Answer = Tuple[bytes, Oids]


def _check_tid(tid: Any, what: str = 'tid') -> bytes:
    # tids reach us from the network (getInvalidations) and from storages;
    # comparing anything but 8-byte bytes would silently give wrong answers.
    if not isinstance(tid, bytes):
        raise TypeError(
            f"{what} must be 8 bytes, got {type(tid).__name__}: {peer_repr(tid)}")
    if len(tid) != 8:
        raise ValueError(
            f"{what} must be 8 bytes long, got {len(tid)}: {peer_repr(tid)}")
    return tid


def _oid_of(item: Any) -> bytes:
    # IServeable.lastInvalidations documents (oid, version) pairs, an old
    # API; FileStorage returns bare oids.  Accept both.
    if isinstance(item, (tuple, list)) and len(item) == 2:
        item = item[0]
    return _check_tid(item, 'oid')


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def _check_optional_count(value: Any, name: str) -> Optional[int]:
    return None if value is None else _check_count(value, name)


@implementer(IInvalidationQueue)
class InvalidationQueue:
    """See `IInvalidationQueue`.

    Starts empty; call `seed_from` when the storage is opened.
    """

    def __init__(self, size: int = DEFAULT_QUEUE_SIZE, *,
                 max_oids: Optional[int] = DEFAULT_MAX_QUEUED_OIDS) -> None:
        self.size: int = _check_count(size, 'size')
        self.max_oids: Optional[int] = _check_optional_count(
            max_oids, 'max_oids')
        # Newest first: appendleft on commit, pop from the right to drop.
        self._entries: collections.deque[Entry] = collections.deque()
        self._oid_count = 0

    def __repr__(self) -> str:
        return (f'<{type(self).__name__} entries={len(self._entries)}'
                f' oids={self._oid_count} size={self.size}>')

    @property
    def newest_tid(self) -> Optional[bytes]:
        """See `IInvalidationQueue`."""
        return self._entries[0][0] if self._entries else None

    @property
    def oldest_tid(self) -> Optional[bytes]:
        """See `IInvalidationQueue`."""
        return self._entries[-1][0] if self._entries else None

    def __len__(self) -> int:
        """See `IInvalidationQueue`."""
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        """See `IInvalidationQueue`."""
        # A copy, so callers may append while iterating.
        return iter(tuple(self._entries))

    def seed_from(self, storage: Any) -> None:
        """See `IInvalidationQueue`."""
        self._entries.clear()
        self._oid_count = 0
        last_invalidations = getattr(storage, 'lastInvalidations', None)
        if last_invalidations is not None:
            history = list(last_invalidations(self.size))
            for tid, oids in history:  # oldest first
                self.append(tid, oids)
        if not self._entries:
            # Either the storage keeps no history or it has none.  In the
            # second case this differs from the reference (which leaves the
            # queue empty) but is equally safe: all later commits will be
            # appended, so the queue is complete after this tid.
            last = storage.lastTransaction() or Z64
            self._entries.append((_check_tid(last, 'lastTransaction()'),
                                  None))

    def append(self, tid: bytes, oids: Iterable[Any]) -> None:
        """See `IInvalidationQueue`."""
        _check_tid(tid)
        newest = self.newest_tid
        if newest is not None and tid <= newest:
            raise ValueError(
                f"invalidation for tid {tid.hex()} is not newer than the"
                f" newest queued tid {newest.hex()}; transactions must be"
                f" appended in commit order")
        entry_oids: Oids = tuple(_oid_of(oid) for oid in oids)
        self._entries.appendleft((tid, entry_oids))
        self._oid_count += len(entry_oids)
        self._trim()

    def _trim(self) -> None:
        entries = self._entries
        while len(entries) > self.size:
            self._drop_oldest()
        if self.max_oids is not None:
            # Keep the newest entry whatever its size: without it the
            # queue would claim to know nothing, which is also safe but
            # throws away the most useful entry.
            while self._oid_count > self.max_oids and len(entries) > 1:
                self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, oids = self._entries.pop()
        if oids:
            self._oid_count -= len(oids)

    def since(self, tid: bytes) -> Optional[Answer]:
        """See `IInvalidationQueue`."""
        _check_tid(tid)
        entries = self._entries
        if not entries or entries[-1][0] > tid:
            return None
        changed: set[bytes] = set()
        for entry_tid, oids in entries:  # newest first
            if entry_tid <= tid:
                break
            if oids:
                changed.update(oids)
        # Sorted: deterministic replies and logs, and cheap at this size.
        return entries[0][0], tuple(sorted(changed))


def _p64(n: int) -> bytes:
    return struct.pack('>Q', n)


def _u64(b: bytes) -> int:
    n: int = struct.unpack('>Q', b)[0]
    return n


def invalidations_by_iteration(
        storage: Any, tid: bytes, max_age_seconds: Optional[float],
        now: float, *,
        max_oids: Optional[int] = DEFAULT_MAX_ITERATED_OIDS,
) -> Optional[Answer]:
    """Answer ``getInvalidations(tid)`` by iterating *storage*.

    This is the ``invalidation-age`` fallback.  If *max_age_seconds* is
    None, or *tid* (read as a TimeStamp) is not younger than that at
    epoch time *now*, return None without touching the storage.
    Otherwise iterate the transactions after *tid* and return
    ``(last_iterated_tid, sorted_oids)``, or None if there are none or
    more than *max_oids* oids changed.  Only sensible for storages that
    can start iterating near their end cheaply.
    """
    _check_tid(tid)
    if max_age_seconds is None:
        return None
    if (isinstance(max_age_seconds, bool)
            or not isinstance(max_age_seconds, (int, float))
            or not math.isfinite(max_age_seconds) or max_age_seconds <= 0):
        raise ValueError(f"max_age_seconds must be a positive number or"
                         f" None, got {max_age_seconds!r}")
    age = now - TimeStamp(tid).timeTime()
    if not age < max_age_seconds:
        return None
    start = _u64(tid) + 1
    if start > _MAX_TID_INT:
        return None
    max_oids = _check_optional_count(max_oids, 'max_oids')
    changed: set[bytes] = set()
    last_tid: Optional[bytes] = None
    transactions = storage.iterator(_p64(start))
    try:
        for txn in transactions:
            for record in txn:
                changed.add(record.oid)
            last_tid = txn.tid
            if max_oids is not None and len(changed) > max_oids:
                return None
    finally:
        # FileStorage's iterator holds an open file until closed.
        close = getattr(transactions, 'close', None)
        if close is not None:
            close()
    if last_tid is None:
        return None
    return last_tid, tuple(sorted(changed))


def find_invalidations(
        queue: InvalidationQueue, storage: Any, tid: bytes, *,
        invalidation_age: Optional[float], now: float,
        max_oids: Optional[int] = DEFAULT_MAX_ITERATED_OIDS,
) -> Optional[Answer]:
    """The whole ``getInvalidations(tid)`` algorithm.

    Ask *queue* first; if it can't tell, fall back to
    `invalidations_by_iteration` (which returns None unless
    *invalidation_age* is set and *tid* is recent enough).
    """
    answer = queue.since(tid)
    if answer is None:
        answer = invalidations_by_iteration(
            storage, tid, invalidation_age, now, max_oids=max_oids)
    return answer
