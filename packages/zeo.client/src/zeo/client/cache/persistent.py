"""The persistent client cache: a ring of checksummed records in one file.

The file format and the crash-safety rules are specified in
:mod:`zeo.client.cache.file_format`; this module implements them.  Life cycle:

* **open**: take ``<path>.lock``, read the fixed header and the newest
  valid header slot.  If that slot says the file was closed cleanly, adopt
  the saved index as is (no scan: a few milliseconds even for a large
  cache).  Otherwise walk the ring (:mod:`zeo.client.cache.recovery`).  A file
  that is not a cache, is too new or is damaged beyond that is moved to
  ``<path>.bad`` and replaced by an empty cache: a client never fails to
  start because of its cache.
* **first change**: mark the file dirty (a slot without CLEAN, fsynced)
  before touching anything, and drop the saved index.
* **close**: write the index after the ring, fsync, write a CLEAN slot
  pointing to it, fsync.

Threading: one ``threading.Lock`` serialises every call, so application
threads may read (``load``, ``loadBefore``) while the I/O thread writes.
Block-level mechanics live in :mod:`zeo.client.cache.ring`; stale load
replies are refused with the help of :mod:`zeo.client.cache.recent_invalidations`.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from collections.abc import Iterable

from zope.interface import implementer

from zeo.client.cache.errors import CacheConsistencyError
from zeo.client.cache.errors import CacheCorruptError
from zeo.client.cache.errors import CacheError
from zeo.client.cache.errors import CacheFormatError
from zeo.client.cache.errors import CacheVersionError
from zeo.client.cache.errors import LastTidError
from zeo.client.cache.file_format import FIXED_SIZE
from zeo.client.cache.file_format import FREE_SIZE
from zeo.client.cache.file_format import MAX_BLOCK_SIZE
from zeo.client.cache.file_format import RECORD_HEADER_SIZE
from zeo.client.cache.file_format import RING_OFFSET
from zeo.client.cache.file_format import SLOT_OFFSETS
from zeo.client.cache.file_format import SLOT_SIZE
from zeo.client.cache.file_format import Slot
from zeo.client.cache.file_format import check_fixed
from zeo.client.cache.file_format import pack_fixed
from zeo.client.cache.file_format import pack_free
from zeo.client.cache.file_format import pack_slot
from zeo.client.cache.file_format import unpack_slot
from zeo.client.cache.recent_invalidations import MAX_OLD_REVISIONS, RecentInvalidations
from zeo.client.cache.index import RecordIndex
from zeo.client.cache.file_io import UNKNOWN_BOOT_ID
from zeo.client.cache.file_io import CacheFile
from zeo.client.cache.file_io import current_boot_id
from zeo.client.cache.file_io import lock_cache_file
from zeo.client.cache.ring import RingStore
from zeo.client.cache.recovery import free_ranges_to_blocks
from zeo.client.cache.recovery import scan_ring
from zeo.client.interfaces import IClientCache

__all__ = ['FileCache', 'MIN_SIZE']

logger = logging.getLogger('zeo.client.cache')

#: The smallest accepted cache size: the three header pages and a ring of
#: one page.
MIN_SIZE = RING_OFFSET + 4096


def _u64(value: bytes, what: str) -> int:
    """Check an oid or tid argument and return its integer value."""
    if type(value) is not bytes or len(value) != 8:
        raise ValueError(f'{what} must be 8 bytes, not {value!r}')
    return int.from_bytes(value, 'big')


@implementer(IClientCache)
class FileCache(RingStore):
    """A persistent cache of at most ``size`` bytes in the file ``path``.

    ``size`` covers the header pages and the ring; after a clean close
    the file also holds the saved index, 36 bytes per record.
    ``boot_id`` is for tests: it pretends the process runs under another
    kernel boot (see rule 4 in :mod:`zeo.client.cache.file_format`).
    """

    persistent = True

    def __init__(self, path: str | os.PathLike[str], size: int, *,
                 boot_id: bytes | None = None) -> None:
        if size < MIN_SIZE:
            raise ValueError(
                f'a file cache needs at least {MIN_SIZE} bytes, not {size}')
        self.path = os.fspath(path)
        self._size = size
        self._ring_size = size - RING_OFFSET
        self._ring_end = RING_OFFSET + self._ring_size
        # A record may use a quarter of the ring: one huge object must not
        # wipe the whole cache.
        self._max_record = min(self._ring_size // 4, MAX_BLOCK_SIZE)
        self._boot_id = current_boot_id() if boot_id is None else boot_id
        self._lock = threading.Lock()
        self._stats = dict.fromkeys(
            ('hits', 'misses', 'stores', 'evictions', 'copies', 'corrupt',
             'toobig', 'superseded'), 0)
        self._recent: RecentInvalidations[int, int] = RecentInvalidations()
        self._index = RecordIndex()
        self._last_tid: bytes | None = None
        self._generation = 0
        self._wp = RING_OFFSET
        self._next_seq = 1
        self._dirty = False
        self._closed = True
        #: How the file was opened: 'created', 'index' (clean reopen),
        #: 'recovered' (walked after an unclean close or a resize) or
        #: 'replaced' (an unusable file was moved aside).
        self.open_mode = ''
        self._lockfile = lock_cache_file(self.path)
        try:
            self._file = CacheFile(self.path)
        except BaseException:
            self._lockfile.close()
            raise
        try:
            self._open()
        except BaseException:
            self._file.close()
            self._lockfile.close()
            raise
        self._closed = False

    def __repr__(self) -> str:
        return f'<FileCache {self.path!r} size={self._size}>'

    # -- opening -------------------------------------------------------------

    def _open(self) -> None:
        if self._file.size() == 0:
            self._create()
            self.open_mode = 'created'
            return
        try:
            self._load()
        except (CacheFormatError, CacheVersionError, CacheCorruptError) as e:
            bad = self.path + '.bad'
            logger.error(
                'Cannot use the client cache file %r: %s. Moved it to %r '
                'and starting with an empty cache.', self.path, e, bad)
            self._file.close()
            os.replace(self.path, bad)
            self._file = CacheFile(self.path)
            self._create()
            self.open_mode = 'replaced'

    def _create(self) -> None:
        f = self._file
        # Truncating first guarantees a ring of zeros: no old headers.
        f.truncate(0)
        f.truncate(self._ring_end)
        f.pwrite(pack_fixed(), 0)
        self._write_free(RING_OFFSET, self._ring_size)
        self._index = RecordIndex()
        self._wp = RING_OFFSET
        self._free_run = (0, 0)
        self._ahead = None
        self._next_seq = 1
        self._last_tid = None
        self._generation = 0
        self._write_slot()
        f.fsync()
        self._dirty = True

    def _load(self) -> None:
        f = self._file
        check_fixed(f.pread(FIXED_SIZE, 0))
        slots = []
        for offset in SLOT_OFFSETS:
            try:
                slots.append(unpack_slot(f.pread(SLOT_SIZE, offset), offset))
            except CacheCorruptError as e:
                # Normal after a crash during a slot write: the other slot
                # is the previous state.
                logger.info('Ignoring cache header slot: %s', e)
        if not slots:
            raise CacheCorruptError(SLOT_OFFSETS[0],
                                    'both header slots are unreadable')
        slot = max(slots, key=lambda s: s.generation)
        if slot.ring_size < FREE_SIZE:
            raise CacheCorruptError(SLOT_OFFSETS[slot.generation % 2],
                                    'impossible ring size')
        self._generation = slot.generation
        self._last_tid = slot.last_tid
        file_size = f.size()
        if slot.clean and slot.ring_size == self._ring_size:
            index = self._load_index(slot, file_size)
            if index is not None:
                self._index = index
                self._wp = slot.write_pos
                self._next_seq = slot.next_seq
                self._dirty = False
                self.open_mode = 'index'
                return
        trusted = slot.clean or (slot.boot_id == self._boot_id
                                 and slot.boot_id != UNKNOWN_BOOT_ID)
        self._recover(slot, file_size, trusted)
        self.open_mode = 'recovered'

    def _load_index(self, slot: Slot, file_size: int) -> RecordIndex | None:
        where = slot.index_offset
        if (where != self._ring_end or where + slot.index_length > file_size
                or not RING_OFFSET <= slot.write_pos <= self._ring_end):
            logger.warning('Cache %r: saved index is out of bounds; '
                           'scanning the file instead', self.path)
            return None
        image = bytearray(slot.index_length)
        if (self._file.readinto(image, where) != len(image)
                or zlib.crc32(image) != slot.index_crc):
            logger.warning('Cache %r: saved index fails its checksum; '
                           'scanning the file instead', self.path)
            return None
        try:
            return RecordIndex.from_image(image, where)
        except CacheCorruptError as e:
            logger.warning('Cache %r: %s; scanning the file instead',
                           self.path, e)
            return None

    def _recover(self, slot: Slot, file_size: int, trusted: bool) -> None:
        f = self._file
        started = time.monotonic()
        if slot.clean:
            # Rule 2: a CLEAN slot must not vouch for the old index while
            # we change the ring.  (A dirty slot is left alone: its boot
            # id decides how much the next recovery trusts.)
            self._write_slot(ring_size=slot.ring_size)
            f.fsync()
        walk_end = min(RING_OFFSET + slot.ring_size, self._ring_end,
                       max(file_size, RING_OFFSET))
        result = scan_ring(f.pread, RING_OFFSET, walk_end, trusted,
                           tile_end=self._ring_end)
        if file_size < self._ring_end:
            f.truncate(self._ring_end)
        for offset, size in result.free:
            f.pwrite(pack_free(size), offset)
        f.fsync()
        index = RecordIndex()
        index.add_unchecked([(oid, start, end, offset, size)
                             for (oid, start), (end, offset, size)
                             in result.records.items()])
        self._index = index
        self._wp = result.write_pos
        self._free_run = (0, 0)
        self._ahead = None
        self._next_seq = max(result.next_seq, slot.next_seq)
        self._write_slot()      # now with this boot id and the new size
        f.fsync()
        if file_size > self._ring_end:
            f.truncate(self._ring_end)
        self._dirty = True
        logger.info(
            'Recovered client cache %r in %.3f s: %d records kept, %d '
            'dropped, %d damaged or torn blocks skipped%s.', self.path,
            time.monotonic() - started, len(index), result.dropped,
            result.bad_blocks,
            '' if trusted else ' (current records dropped: the machine '
            'may have crashed since they were written)')

    # -- low-level writes ----------------------------------------------------

    def _write_slot(self, clean: bool = False,
                    index: tuple[int, int, int] = (0, 0, 0),
                    ring_size: int | None = None) -> None:
        # Alternate: never overwrite the newest valid slot.
        self._generation += 1
        slot = Slot(self._generation, self._last_tid, clean,
                    self._ring_size if ring_size is None else ring_size,
                    self._wp, self._next_seq, index[0], index[1], index[2],
                    self._boot_id)
        self._file.pwrite(pack_slot(slot),
                          SLOT_OFFSETS[self._generation % 2])

    def _write_free(self, offset: int, size: int) -> None:
        for off, length in free_ranges_to_blocks([(offset, size)]):
            self._file.pwrite(pack_free(length), off)

    def _mark_dirty(self) -> None:
        if self._dirty:
            return
        self._write_slot()
        self._file.fsync()
        self._file.truncate(self._ring_end)    # the saved index is stale
        self._dirty = True

    def _check_open(self) -> None:
        if self._closed:
            raise CacheError(f'the cache {self.path!r} is closed')

    # -- IClientCache: reads -------------------------------------------------

    def load(self, oid: bytes) -> tuple[bytes, bytes] | None:
        """See IClientCache."""
        o = _u64(oid, 'oid')
        with self._lock:
            self._check_open()
            entry = self._index.current(o, touch=True)
            got = None if entry is None else self._read(o, entry)
            if got is None:
                self._stats['misses'] += 1
                return None
            self._stats['hits'] += 1
            return got[0], got[1]

    def loadBefore(self, oid: bytes, tid: bytes
                   ) -> tuple[bytes, bytes, bytes | None] | None:
        """See IClientCache."""
        o = _u64(oid, 'oid')
        t = _u64(tid, 'tid')
        with self._lock:
            self._check_open()
            # Most loads are of the current revision; when it started
            # before t, no other revision can end at or after t.
            chosen = self._index.current(o)
            if chosen is None or chosen.start >= t:
                chosen = next((r for r in self._index.revisions(o)
                               if r.end and r.start < t <= r.end), None)
            if chosen is not None:
                got = self._read(o, chosen)
                if got is not None:
                    self._index.touch(o, chosen.start)
                    self._stats['hits'] += 1
                    return got
            self._stats['misses'] += 1
            return None

    def contains(self, oid: bytes, tid: bytes) -> bool:
        """See IClientCache."""
        o = _u64(oid, 'oid')
        t = _u64(tid, 'tid')
        with self._lock:
            self._check_open()
            return self._index.find(o, t) is not None

    def getLastTid(self) -> bytes | None:
        """See IClientCache."""
        with self._lock:
            self._check_open()
            return self._last_tid

    def __len__(self) -> int:
        """See IClientCache."""
        return len(self._index)

    def getsize(self) -> int:
        """See IClientCache."""
        return self._size

    def stats(self) -> dict[str, int]:
        """See IClientCache."""
        with self._lock:
            return dict(self._stats, records=len(self._index),
                        bytes=self._index.nbytes, size=self._size)

    # -- IClientCache: writes ------------------------------------------------

    def store(self, oid: bytes, start_tid: bytes, end_tid: bytes | None,
              data: bytes) -> None:
        """See IClientCache."""
        o = _u64(oid, 'oid')
        s = _u64(start_tid, 'start tid')
        e = 0 if end_tid is None else _u64(end_tid, 'end tid')
        if end_tid is not None and e <= s:
            raise ValueError('the end tid must follow the start tid')
        data = bytes(data)
        with self._lock:
            self._check_open()
            if RECORD_HEADER_SIZE + len(data) > self._max_record:
                self._stats['toobig'] += 1
                return
            if not self._admit(o, s, e, oid, start_tid):
                return
            self._mark_dirty()
            self._stats['stores'] += 1
            self._write_records((o, s, e, oid, start_tid, end_tid, data))
            if e:
                self._trim(o)

    def _admit(self, o: int, s: int, e: int, oid: bytes,
               start_tid: bytes) -> bool:
        """Apply the consistency rules of ``store``; return whether the
        record must be written."""
        revs = self._index.revisions(o)
        if not e:
            if self._recent.supersedes(o, s):
                self._stats['superseded'] += 1
                return False
            for r in revs:
                if not r.end:
                    if r.start == s:
                        return False               # already cached
                    raise CacheConsistencyError(
                        f'cannot cache revision {start_tid.hex()} of oid '
                        f'{oid.hex()} as current: revision {r.start:016x} '
                        f'is cached as current')
            # A cached revision starting at or after s proves that s was
            # superseded: caching it as current would be wrong.
            return not any(r.start >= s for r in revs)
        for r in revs:
            if r.start == s:
                if not r.end:
                    # The caller learned that the current revision ended:
                    # that is an invalidation; keep the data we have.
                    self._mark_dirty()
                    self._set_end(o, r, e)
                return False
        for r in revs:
            if not r.end and r.start < s:
                # A newer revision exists, so this "current" record missed
                # an invalidation.  Never serve it again.
                logger.warning(
                    'Cache %r: dropping revision %016x of oid %s, which a '
                    'later revision supersedes', self.path, r.start,
                    oid.hex())
                self._mark_dirty()
                self._free_record(o, r)
        return True

    def invalidate(self, oid: bytes, tid: bytes | None) -> None:
        """See IClientCache."""
        o = _u64(oid, 'oid')
        t = None if tid is None else _u64(tid, 'tid')
        with self._lock:
            self._check_open()
            if t is None:
                entry = self._index.current(o)
                if entry is not None:
                    self._mark_dirty()
                    self._free_record(o, entry)
            else:
                self._invalidate(o, t, oid)

    def _invalidate(self, o: int, t: int, oid: bytes) -> None:
        self._recent.add(o, t)
        entry = self._index.current(o)
        if entry is None:
            return
        if t > entry.start:
            self._mark_dirty()
            self._set_end(o, entry, t)
            self._trim(o)
        else:
            logger.debug('Cache %r: ignoring invalidation of oid %s by '
                         '%016x, not newer than the cached revision',
                         self.path, oid.hex(), t)

    def committed(self, tid: bytes,
                  changes: Iterable[tuple[bytes, bytes | None]]) -> None:
        """See IClientCache."""
        t = _u64(tid, 'tid')
        with self._lock:
            self._check_open()
            for oid, data in changes:
                o = _u64(oid, 'oid')
                self._invalidate(o, t, oid)
                if data is None:
                    continue
                if type(data) is not bytes:
                    data = bytes(data)
                if RECORD_HEADER_SIZE + len(data) > self._max_record:
                    self._stats['toobig'] += 1
                    continue
                try:
                    if not self._admit(o, t, 0, oid, tid):
                        continue
                except CacheConsistencyError as e:
                    logger.warning('Cache %r: %s; forgetting the object',
                                   self.path, e)
                    entry = self._index.current(o)
                    if entry is not None:
                        self._mark_dirty()
                        self._free_record(o, entry)
                    continue
                self._mark_dirty()
                self._stats['stores'] += 1
                self._write_records((o, t, 0, oid, tid, None, data))

    def _trim(self, o: int) -> None:
        # At most MAX_OLD_REVISIONS non-current ones: the oldest go.
        # Called dirty (the caller marked it).
        old = [r for r in self._index.revisions(o) if r.end]
        if len(old) > MAX_OLD_REVISIONS:
            old.sort(key=lambda r: r.start)
            for r in old[:len(old) - MAX_OLD_REVISIONS]:
                self._free_record(o, r)
                self._stats['evictions'] += 1

    def setLastTid(self, tid: bytes) -> None:
        """See IClientCache."""
        _u64(tid, 'tid')
        with self._lock:
            self._check_open()
            last = self._last_tid
            if last is not None and tid <= last:
                if tid < last:
                    raise LastTidError(
                        f'the last tid cannot go back from {last.hex()} '
                        f'to {tid.hex()}')
                return
            self._mark_dirty()
            self._last_tid = tid
            # No fsync: see rules 1 and 4 in file_format.
            self._write_slot()

    def clear(self) -> None:
        """See IClientCache."""
        with self._lock:
            self._check_open()
            self._mark_dirty()
            f = self._file
            # Zeroing by truncation is instant and leaves no old headers.
            f.truncate(RING_OFFSET)
            f.truncate(self._ring_end)
            self._write_free(RING_OFFSET, self._ring_size)
            self._index = RecordIndex()
            self._wp = RING_OFFSET
            self._free_run = (0, 0)
            self._ahead = None
            self._last_tid = None
            self._write_slot()

    def close(self) -> None:
        """See IClientCache."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._dirty:
                    self._save()
            finally:
                self._file.close()
                self._lockfile.close()

    def _save(self) -> None:
        f = self._file
        image = self._index.image()
        f.pwrite(image, self._ring_end)
        f.truncate(self._ring_end + len(image))
        f.fsync()
        self._write_slot(clean=True, index=(self._ring_end, len(image),
                                            zlib.crc32(image)))
        f.fsync()
        self._dirty = False
