"""A non-persistent client cache kept in process memory.

Used when the client has no cache file (the reference calls this a
"temporary" cache).  Eviction is least-recently-used by bytes: every
record costs its data plus a fixed overhead, and the least recently
stored or read records go first when the total would exceed the size.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from zope.interface import implementer

from zeo.client.cache.errors import CacheConsistencyError
from zeo.client.cache.errors import CacheError
from zeo.client.cache.errors import LastTidError
from zeo.client.cache.recent_invalidations import MAX_OLD_REVISIONS, RecentInvalidations
from zeo.client.interfaces import IClientCache

__all__ = ['MemoryCache', 'RECORD_OVERHEAD']

logger = logging.getLogger('zeo.client.cache')

#: Bytes charged per record on top of its data: roughly what the key,
#: the tids and the bookkeeping objects cost.  Also keeps a flood of
#: empty records from being free.
RECORD_OVERHEAD = 64


class _Revision:
    """One cached revision: its end tid (None while current) and data."""

    __slots__ = ('end', 'data')

    def __init__(self, end: bytes | None, data: bytes) -> None:
        self.end = end
        self.data = data


def _check(value: bytes, what: str) -> bytes:
    if type(value) is not bytes or len(value) != 8:
        raise ValueError(f'{what} must be 8 bytes, not {value!r}')
    return value


@implementer(IClientCache)
class MemoryCache:
    """An in-memory cache of at most ``size`` bytes."""

    persistent = False

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f'cache size must not be negative, not {size}')
        self._size = size
        # As in the file cache, one record may use a quarter of the cache.
        self._max_record = size // 4
        self._lock = threading.Lock()
        # (oid, start) -> revision; order = recency (LRU first).
        self._records: OrderedDict[tuple[bytes, bytes],
                                   _Revision] = OrderedDict()
        self._current: dict[bytes, bytes] = {}      # oid -> start
        self._starts: dict[bytes, set[bytes]] = {}  # oid -> every start
        self._bytes = 0
        self._last_tid: bytes | None = None
        self._closed = False
        self._stats = dict.fromkeys(
            ('hits', 'misses', 'stores', 'evictions', 'toobig',
             'superseded'), 0)
        self._recent = RecentInvalidations()

    def __repr__(self) -> str:
        return f'<MemoryCache size={self._size}>'

    def _check_open(self) -> None:
        if self._closed:
            raise CacheError('the cache is closed')

    # -- bookkeeping -----------------------------------------------------

    def _add(self, oid: bytes, start: bytes, end: bytes | None,
             data: bytes) -> None:
        self._records[(oid, start)] = _Revision(end, data)
        self._starts.setdefault(oid, set()).add(start)
        if end is None:
            self._current[oid] = start
        self._bytes += len(data) + RECORD_OVERHEAD

    def _trim(self, oid: bytes) -> None:
        # At most MAX_OLD_REVISIONS non-current ones: the oldest go.
        # The current revision, if any, has the largest start: it is never
        # the oldest of several.
        starts = self._starts[oid]
        while len(starts) - (oid in self._current) > MAX_OLD_REVISIONS:
            self._remove(oid, min(starts))
            self._stats['evictions'] += 1

    def _remove(self, oid: bytes, start: bytes) -> None:
        rev = self._records.pop((oid, start))
        starts = self._starts[oid]
        starts.discard(start)
        if not starts:
            del self._starts[oid]
        if rev.end is None:
            del self._current[oid]
        self._bytes -= len(rev.data) + RECORD_OVERHEAD

    def _hit(self, oid: bytes, start: bytes) -> _Revision:
        self._records.move_to_end((oid, start))
        self._stats['hits'] += 1
        return self._records[(oid, start)]

    # -- IClientCache: reads ---------------------------------------------

    def load(self, oid: bytes) -> tuple[bytes, bytes] | None:
        """See IClientCache."""
        _check(oid, 'oid')
        with self._lock:
            self._check_open()
            start = self._current.get(oid)
            if start is None:
                self._stats['misses'] += 1
                return None
            return self._hit(oid, start).data, start

    def loadBefore(self, oid: bytes, tid: bytes
                   ) -> tuple[bytes, bytes, bytes | None] | None:
        """See IClientCache."""
        _check(oid, 'oid')
        _check(tid, 'tid')
        with self._lock:
            self._check_open()
            # Most loads are of the current revision (the newest one).
            current = self._current.get(oid)
            if current is not None and current < tid:
                return self._hit(oid, current).data, current, None
            for start in self._starts.get(oid, ()):
                end = self._records[(oid, start)].end
                if end is not None and start < tid <= end:
                    return self._hit(oid, start).data, start, end
            self._stats['misses'] += 1
            return None

    def contains(self, oid: bytes, tid: bytes) -> bool:
        """See IClientCache."""
        with self._lock:
            return (oid, tid) in self._records

    def getLastTid(self) -> bytes | None:
        """See IClientCache."""
        with self._lock:
            self._check_open()
            return self._last_tid

    def __len__(self) -> int:
        """See IClientCache."""
        return len(self._records)

    def getsize(self) -> int:
        """See IClientCache."""
        return self._size

    def stats(self) -> dict[str, int]:
        """See IClientCache."""
        with self._lock:
            return dict(self._stats, records=len(self._records),
                        bytes=self._bytes, size=self._size)

    # -- IClientCache: writes --------------------------------------------

    def store(self, oid: bytes, start_tid: bytes, end_tid: bytes | None,
              data: bytes) -> None:
        """See IClientCache."""
        _check(oid, 'oid')
        _check(start_tid, 'start tid')
        if end_tid is not None and _check(end_tid, 'end tid') <= start_tid:
            raise ValueError('the end tid must follow the start tid')
        data = bytes(data)
        with self._lock:
            self._check_open()
            cost = len(data) + RECORD_OVERHEAD
            if cost > self._max_record:
                self._stats['toobig'] += 1
                return
            if not self._admit(oid, start_tid, end_tid):
                return
            self._add(oid, start_tid, end_tid, data)
            self._stats['stores'] += 1
            if end_tid is not None:
                self._trim(oid)
            while self._bytes > self._size:
                (o, s), _ = next(iter(self._records.items()))
                self._remove(o, s)
                self._stats['evictions'] += 1

    def _admit(self, oid: bytes, start: bytes, end: bytes | None) -> bool:
        # The same rules as FileCache._admit; see there for the reasons.
        starts = self._starts.get(oid, ())
        current = self._current.get(oid)
        if end is None:
            if self._recent.supersedes(int.from_bytes(oid, 'big'),
                                       int.from_bytes(start, 'big')):
                self._stats['superseded'] += 1
                return False
            if current is not None:
                if current == start:
                    return False
                raise CacheConsistencyError(
                    f'cannot cache revision {start.hex()} of oid '
                    f'{oid.hex()} as current: revision {current.hex()} is '
                    f'cached as current')
            # A cached revision starting at or after *start* proves it
            # superseded (the current one, if any, has the largest start).
            return not starts or max(starts) < start
        if start in starts:
            if current == start:
                self._records[(oid, start)].end = end
                del self._current[oid]
            return False
        if current is not None and current < start:
            logger.warning(
                'Memory cache: dropping revision %s of oid %s, which a '
                'later revision supersedes', current.hex(), oid.hex())
            self._remove(oid, current)
        return True

    def invalidate(self, oid: bytes, tid: bytes | None) -> None:
        """See IClientCache."""
        _check(oid, 'oid')
        if tid is not None:
            _check(tid, 'tid')
        with self._lock:
            self._check_open()
            if tid is not None:
                self._recent.add(int.from_bytes(oid, 'big'),
                                 int.from_bytes(tid, 'big'))
            start = self._current.get(oid)
            if start is None:
                return
            if tid is None:
                self._remove(oid, start)
            elif tid > start:
                self._records[(oid, start)].end = tid
                del self._current[oid]
                self._trim(oid)

    def setLastTid(self, tid: bytes) -> None:
        """See IClientCache."""
        _check(tid, 'tid')
        with self._lock:
            self._check_open()
            last = self._last_tid
            if last is not None and tid < last:
                raise LastTidError(
                    f'the last tid cannot go back from {last.hex()} to '
                    f'{tid.hex()}')
            self._last_tid = tid

    def clear(self) -> None:
        """See IClientCache."""
        with self._lock:
            self._check_open()
            self._records.clear()
            self._current.clear()
            self._starts.clear()
            self._bytes = 0
            self._last_tid = None

    def close(self) -> None:
        """See IClientCache."""
        with self._lock:
            self._closed = True
            self._records.clear()
            self._current.clear()
            self._starts.clear()
            self._bytes = 0
