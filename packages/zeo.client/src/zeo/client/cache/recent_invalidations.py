"""Remember recent invalidations, to refuse stale current records.

A client loads an object, the server commits a change to it, and the
invalidation arrives before the (older) load reply is stored: if the
cache held no record of the object, the invalidation left no trace, and
the stale reply would be cached as current.  A correct client applies
messages in arrival order and never does that, but the cause of several
historical ZEO bugs was exactly this race, so the caches double-check.

Only the window of loads in flight matters, so a bounded memory of the
latest invalidation tid per object is enough; the oldest entries are
forgotten first, a generation at a time (see `RecentInvalidations`).
"""
from __future__ import annotations

from collections.abc import Hashable
from typing import Generic
from typing import TypeVar

__all__ = ['MAX_OLD_REVISIONS', 'RecentInvalidations']

#: The most non-current revisions of one object a cache keeps (besides
#: the current one); past it, the oldest go.  A hot object committed
#: thousands of times would otherwise make every store and load of it
#: scan thousands of old revisions that only a very old snapshot could use.
MAX_OLD_REVISIONS = 16

K = TypeVar('K', bound=Hashable)
#: Tids: integers (the file cache) or 8-byte big-endian strings (the
#: memory cache); both order like the transactions.
T = TypeVar('T', int, bytes)


class RecentInvalidations(Generic[K, T]):
    """A bounded map oid -> newest invalidating tid.

    Two generations of at most ``limit`` oids each: adding goes to the
    young one; when it is full, the old generation is forgotten and the
    young one becomes old.  So the ``limit`` most recently invalidated
    oids are always remembered, never more than ``2 * limit``, and every
    operation is O(1).  (An LRU dict that drops its first entry is not:
    CPython finds a dict's first entry by skipping the deleted ones.)
    """

    __slots__ = ('_limit', '_young', '_old')

    def __init__(self, limit: int = 10_000) -> None:
        if limit < 1:
            raise ValueError(f'limit must be positive, not {limit}')
        self._limit = limit
        self._young: dict[K, T] = {}
        self._old: dict[K, T] = {}

    def add(self, oid: K, tid: T) -> None:
        """Remember that transaction ``tid`` changed ``oid``."""
        young = self._young
        known = young.get(oid)
        if known is None:
            known = self._old.get(oid)
            if known is not None and tid < known:
                tid = known          # keep the newest when it moves up
            young[oid] = tid
            if len(young) >= self._limit:
                self._old = young
                self._young = {}
        elif known < tid:
            young[oid] = tid

    def supersedes(self, oid: K, start: T) -> bool:
        """Tell whether a remembered invalidation postdates revision
        ``start`` of ``oid``, i.e. that revision is known not current."""
        tid = self._young.get(oid)
        if tid is None:
            tid = self._old.get(oid)
            if tid is None:
                return False
        return tid > start

    def clear(self) -> None:
        self._young.clear()
        self._old.clear()
