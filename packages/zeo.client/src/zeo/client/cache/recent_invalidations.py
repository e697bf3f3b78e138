"""Remember recent invalidations, to refuse stale current records.

A client loads an object, the server commits a change to it, and the
invalidation arrives before the (older) load reply is stored: if the
cache held no record of the object, the invalidation left no trace, and
the stale reply would be cached as current.  A correct client applies
messages in arrival order and never does that, but the cause of several
historical ZEO bugs was exactly this race, so the caches double-check.

Only the window of loads in flight matters, so a bounded memory of the
latest invalidation tid per object is enough; the oldest entries are
forgotten first.
"""
from __future__ import annotations

__all__ = ['MAX_OLD_REVISIONS', 'RecentInvalidations']

#: The most non-current revisions of one object a cache keeps (besides
#: the current one); past it, the oldest go.  A hot object committed
#: thousands of times would otherwise make every store and load of it
#: scan thousands of old revisions that only a very old snapshot could use.
MAX_OLD_REVISIONS = 16


class RecentInvalidations:
    """A bounded map oid -> newest invalidating tid (both integers)."""

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._tids: dict[int, int] = {}

    def add(self, oid: int, tid: int) -> None:
        """Remember that transaction ``tid`` changed ``oid``."""
        tids = self._tids
        if tids.get(oid, -1) < tid:
            tids.pop(oid, None)          # re-insert: newest last
            tids[oid] = tid
            if len(tids) > self._limit:
                del tids[next(iter(tids))]

    def supersedes(self, oid: int, start: int) -> bool:
        """Tell whether a remembered invalidation postdates revision
        ``start`` of ``oid``, i.e. that revision is known not current."""
        return self._tids.get(oid, -1) > start

    def clear(self) -> None:
        self._tids.clear()
