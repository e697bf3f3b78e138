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
from collections.abc import Iterable

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


def _bad(value: object, what: str) -> ValueError:
    return ValueError(f'{what} must be 8 bytes, not {value!r:.100}')


@implementer(IClientCache)
class MemoryCache:
    """An in-memory cache of at most ``size`` bytes.

    One ordered dict holds every record, least recently used first, in
    two shapes that cost no allocation beyond the entry and one tuple:

    - a current record is keyed by its ``oid`` (bytes) and holds
      ``(start, data)``: a cold load stores just that, and a hit is one
      lookup;
    - a non-current record is keyed by ``(oid, start)`` and holds
      ``(end, data)``; ``_old[oid]`` maps the starts of an object's
      non-current records to their ends, for ``loadBefore`` and the
      admission rules (objects without any have no entry).

    When a current record ends (an invalidation) it moves to the second
    shape and becomes the most recently used: connections still reading
    the snapshot before the change are the ones likely to ask for it.
    oids and tids are compared as bytes: 8-byte big-endian strings order
    like the numbers they hold.
    """

    persistent = False

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f'cache size must not be negative, not {size}')
        self._size = size
        # As in the file cache, one record may use a quarter of the cache.
        self._max_record = size // 4
        self._lock = threading.Lock()
        # oid -> (start, data) | (oid, start) -> (end, data); LRU first.
        self._records: OrderedDict[bytes | tuple[bytes, bytes],
                                   tuple[bytes, bytes]] = OrderedDict()
        self._old: dict[bytes, dict[bytes, bytes]] = {}  # oid -> start -> end
        self._bytes = 0
        self._last_tid: bytes | None = None
        self._closed = False
        self._stats = dict.fromkeys(
            ('hits', 'misses', 'stores', 'evictions', 'toobig',
             'superseded'), 0)
        self._recent: RecentInvalidations[bytes, bytes] = \
            RecentInvalidations()

    def __repr__(self) -> str:
        return f'<MemoryCache size={self._size}>'

    def _closed_error(self) -> CacheError:
        return CacheError('the cache is closed')

    # -- bookkeeping -----------------------------------------------------

    def _add_old(self, oid: bytes, start: bytes, end: bytes,
                 data: bytes) -> None:
        """Add a non-current record (the caller checked it is new)."""
        self._records[(oid, start)] = (end, data)
        olds = self._old.get(oid)
        if olds is None:
            self._old[oid] = {start: end}
        else:
            olds[start] = end
            if len(olds) > MAX_OLD_REVISIONS:
                self._trim(oid, olds)

    def _trim(self, oid: bytes, olds: dict[bytes, bytes]) -> None:
        # At most MAX_OLD_REVISIONS non-current ones: the oldest go.
        while len(olds) > MAX_OLD_REVISIONS:
            self._remove_old(oid, min(olds))
            self._stats['evictions'] += 1

    def _remove_old(self, oid: bytes, start: bytes) -> None:
        _, data = self._records.pop((oid, start))
        olds = self._old[oid]
        del olds[start]
        if not olds:
            del self._old[oid]
        self._bytes -= len(data) + RECORD_OVERHEAD

    def _end_current(self, oid: bytes, end: bytes) -> None:
        """Make the current record of ``oid`` non-current, ending at
        ``end`` (the caller checked that it is newer than its start)."""
        start, data = self._records.pop(oid)
        self._add_old(oid, start, end, data)

    def _evict(self) -> None:
        records = self._records
        evictions = 0
        while self._bytes > self._size:
            key, (_, data) = records.popitem(last=False)
            if type(key) is tuple:
                oid, start = key
                olds = self._old[oid]
                del olds[start]
                if not olds:
                    del self._old[oid]
            self._bytes -= len(data) + RECORD_OVERHEAD
            evictions += 1
        self._stats['evictions'] += evictions

    # -- IClientCache: reads ---------------------------------------------

    def load(self, oid: bytes) -> tuple[bytes, bytes] | None:
        """See IClientCache."""
        if type(oid) is not bytes or len(oid) != 8:
            raise _bad(oid, 'oid')
        with self._lock:
            if self._closed:
                raise self._closed_error()
            records = self._records
            rec = records.get(oid)
            if rec is None:
                self._stats['misses'] += 1
                return None
            records.move_to_end(oid)
            self._stats['hits'] += 1
            return rec[1], rec[0]

    def loadBefore(self, oid: bytes, tid: bytes
                   ) -> tuple[bytes, bytes, bytes | None] | None:
        """See IClientCache."""
        if type(oid) is not bytes or len(oid) != 8:
            raise _bad(oid, 'oid')
        if type(tid) is not bytes or len(tid) != 8:
            raise _bad(tid, 'tid')
        with self._lock:
            if self._closed:
                raise self._closed_error()
            records = self._records
            # Most loads are of the current revision (the newest one).
            rec = records.get(oid)
            if rec is not None and rec[0] < tid:
                records.move_to_end(oid)
                self._stats['hits'] += 1
                return rec[1], rec[0], None
            olds = self._old.get(oid)
            if olds is not None:
                for start, end in olds.items():
                    if start < tid <= end:
                        key = (oid, start)
                        records.move_to_end(key)
                        self._stats['hits'] += 1
                        return records[key][1], start, end
            self._stats['misses'] += 1
            return None

    def contains(self, oid: bytes, tid: bytes) -> bool:
        """See IClientCache."""
        with self._lock:
            rec = self._records.get(oid)
            if rec is not None and rec[0] == tid:
                return True
            return tid in self._old.get(oid, ())

    def getLastTid(self) -> bytes | None:
        """See IClientCache."""
        with self._lock:
            if self._closed:
                raise self._closed_error()
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
        if type(oid) is not bytes or len(oid) != 8:
            raise _bad(oid, 'oid')
        if type(start_tid) is not bytes or len(start_tid) != 8:
            raise _bad(start_tid, 'start tid')
        if end_tid is not None:
            if type(end_tid) is not bytes or len(end_tid) != 8:
                raise _bad(end_tid, 'end tid')
            if end_tid <= start_tid:
                raise ValueError('the end tid must follow the start tid')
        if type(data) is not bytes:
            data = bytes(data)
        with self._lock:
            if self._closed:
                raise self._closed_error()
            cost = len(data) + RECORD_OVERHEAD
            if cost > self._max_record:
                self._stats['toobig'] += 1
                return
            if end_tid is None:
                if not self._admit_current(oid, start_tid):
                    return
                self._records[oid] = (start_tid, data)
            else:
                if not self._admit_old(oid, start_tid, end_tid):
                    return
                self._add_old(oid, start_tid, end_tid, data)
            self._stats['stores'] += 1
            self._bytes += cost
            if self._bytes > self._size:
                self._evict()

    # The same rules as FileCache._admit; see there for the reasons.

    def _admit_current(self, oid: bytes, start: bytes) -> bool:
        if self._recent.supersedes(oid, start):
            self._stats['superseded'] += 1
            return False
        rec = self._records.get(oid)
        if rec is not None:
            if rec[0] == start:
                return False
            raise CacheConsistencyError(
                f'cannot cache revision {start.hex()} of oid '
                f'{oid.hex()} as current: revision {rec[0].hex()} is '
                f'cached as current')
        # A cached revision starting at or after *start* proves it
        # superseded.
        olds = self._old.get(oid)
        return olds is None or max(olds) < start

    def _admit_old(self, oid: bytes, start: bytes, end: bytes) -> bool:
        olds = self._old.get(oid)
        if olds is not None and start in olds:
            return False
        rec = self._records.get(oid)
        if rec is not None:
            current = rec[0]
            if current == start:
                # The caller learned that the current revision ended:
                # that is an invalidation; keep the data we have.
                self._end_current(oid, end)
                return False
            if current < start:
                logger.warning(
                    'Memory cache: dropping revision %s of oid %s, which a '
                    'later revision supersedes', current.hex(), oid.hex())
                self._remove_current(oid)
        return True

    def _remove_current(self, oid: bytes) -> None:
        _, data = self._records.pop(oid)
        self._bytes -= len(data) + RECORD_OVERHEAD

    def invalidate(self, oid: bytes, tid: bytes | None) -> None:
        """See IClientCache."""
        if type(oid) is not bytes or len(oid) != 8:
            raise _bad(oid, 'oid')
        if tid is not None and (type(tid) is not bytes or len(tid) != 8):
            raise _bad(tid, 'tid')
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if tid is None:
                if oid in self._records:
                    self._remove_current(oid)
                return
            self._recent.add(oid, tid)
            rec = self._records.get(oid)
            if rec is not None and tid > rec[0]:
                self._end_current(oid, tid)

    def committed(self, tid: bytes,
                  changes: Iterable[tuple[bytes, bytes | None]]) -> None:
        """See IClientCache.  One lock and one check of ``tid`` for the
        whole transaction; the evictions it causes happen at the end."""
        if type(tid) is not bytes or len(tid) != 8:
            raise _bad(tid, 'tid')
        with self._lock:
            if self._closed:
                raise self._closed_error()
            records, recent, stats = self._records, self._recent, self._stats
            max_record = self._max_record
            try:
                for oid, data in changes:
                    if type(oid) is not bytes or len(oid) != 8:
                        raise _bad(oid, 'oid')
                    # invalidate(oid, tid)
                    recent.add(oid, tid)
                    rec = records.get(oid)
                    if rec is not None and tid > rec[0]:
                        self._end_current(oid, tid)
                    if data is None:
                        continue
                    # store(oid, tid, None, data)
                    if type(data) is not bytes:
                        data = bytes(data)
                    cost = len(data) + RECORD_OVERHEAD
                    if cost > max_record:
                        stats['toobig'] += 1
                        continue
                    try:
                        if not self._admit_current(oid, tid):
                            continue
                    except CacheConsistencyError as e:
                        logger.warning('Memory cache: %s; forgetting the '
                                       'object', e)
                        self._remove_current(oid)
                        continue
                    records[oid] = (tid, data)
                    stats['stores'] += 1
                    self._bytes += cost
            finally:
                if self._bytes > self._size:
                    self._evict()

    def setLastTid(self, tid: bytes) -> None:
        """See IClientCache."""
        if type(tid) is not bytes or len(tid) != 8:
            raise _bad(tid, 'tid')
        with self._lock:
            if self._closed:
                raise self._closed_error()
            last = self._last_tid
            if last is not None and tid < last:
                raise LastTidError(
                    f'the last tid cannot go back from {last.hex()} to '
                    f'{tid.hex()}')
            self._last_tid = tid

    def clear(self) -> None:
        """See IClientCache."""
        with self._lock:
            if self._closed:
                raise self._closed_error()
            self._forget()
            self._last_tid = None

    def close(self) -> None:
        """See IClientCache."""
        with self._lock:
            self._closed = True
            self._forget()

    def _forget(self) -> None:
        self._records.clear()
        self._old.clear()
        self._bytes = 0
