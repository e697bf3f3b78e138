"""Block-level work on the ring of a file cache: reading and verifying
records, placing new ones at the write pointer, eviction with
copy-forward, freeing records and rewriting end tids.

:class:`RingStore` is a mixin of :class:`~zeo.client.cache.persistent.FileCache`
that holds the ring mechanics; FileCache adds the life cycle (opening,
recovery, header slots, closing) and the IClientCache policy.  Callers
hold the cache lock and have marked the file dirty before any write.
"""
from __future__ import annotations

import logging

from zeo.client.cache.errors import CacheCorruptError
from zeo.client.cache.file_format import END_OFFSET
from zeo.client.cache.file_format import FREE_SIZE
from zeo.client.cache.file_format import KIND_FREE
from zeo.client.cache.file_format import KIND_RECORD
from zeo.client.cache.file_format import RECORD_HEADER_SIZE
from zeo.client.cache.file_format import RecordHeader
from zeo.client.cache.file_format import block_kind
from zeo.client.cache.file_format import pack_end
from zeo.client.cache.file_format import pack_free
from zeo.client.cache.file_format import pack_record
from zeo.client.cache.file_format import parse_free
from zeo.client.cache.file_format import parse_record_header
from zeo.client.cache.file_format import record_data_ok
from zeo.client.cache.file_format import RING_OFFSET
from zeo.client.cache.index import Entry
from zeo.client.cache.index import RecordIndex
from zeo.client.cache.file_io import CacheFile
from zeo.client.cache.recovery import RingReader

__all__ = ['RingStore', 'Record']

logger = logging.getLogger('zeo.client.cache')

#: Bytes read at a time ahead of the write pointer (the blocks the next
#: stores overwrite).
AHEAD_SIZE = 65536

#: A record on its way to the ring: oid, start and end (0: current) as
#: integers, then oid, start tid and end tid (or None) as bytes, then data.
Record = tuple[int, int, int, bytes, bytes, 'bytes | None', bytes]


def _tid_bytes(value: int) -> bytes | None:
    return value.to_bytes(8, 'big') if value else None


class RingStore:
    """Ring mechanics shared by FileCache (a mixin: see the module)."""

    path: str
    _file: CacheFile
    _index: RecordIndex
    _ring_size: int
    _ring_end: int
    _wp: int
    #: ``(offset, end)`` of the free block that `_place` left after the
    #: record it wrote last (only blocks we write lie there, and only
    #: `_place` writes there): while the write pointer is at ``offset``
    #: the next record goes there without reading the ring first.
    _free_run: tuple[int, int] = (0, 0)
    #: What `_make_room` last read ahead of the write pointer, kept equal
    #: to the file by `_ring_write` (every write into the ring goes
    #: through it): consecutive stores share one read.  None after the
    #: ring was rewritten as a whole (clear, recovery).
    _ahead: RingReader | None = None

    def _ring_write(self, data: bytes, pos: int) -> None:
        self._file.pwrite(data, pos)
        if self._ahead is not None:
            self._ahead.patch(data, pos)
    _next_seq: int
    _stats: dict[str, int]

    def _mark_dirty(self) -> None:
        raise NotImplementedError

    def _read(self, oid: int, entry: Entry
              ) -> tuple[bytes, bytes, bytes | None] | None:
        """Read and verify a record; drop it if it is damaged."""
        buf = self._file.pread(entry.size, entry.offset)
        h = parse_record_header(buf)
        if h is None:
            problem = 'record header checksum mismatch'
        elif (int.from_bytes(h.oid, 'big') != oid
              or int.from_bytes(h.start, 'big') != entry.start):
            problem = 'record does not match the index'
        elif not h.end_ok:
            problem = 'end tid checksum mismatch'
        elif int.from_bytes(h.end or b'', 'big') != entry.end:
            problem = 'end tid does not match the index'
        elif not record_data_ok(buf, 0, h):
            problem = 'record data checksum mismatch'
        else:
            data = buf[RECORD_HEADER_SIZE:RECORD_HEADER_SIZE + h.data_length]
            return data, h.start, h.end
        logger.error('Dropping a damaged record from cache %r: %s',
                     self.path, CacheCorruptError(entry.offset, problem))
        self._stats['corrupt'] += 1
        self._mark_dirty()
        self._free_record(oid, entry)
        return None

    def _write_records(self, first: Record) -> None:
        n = RECORD_HEADER_SIZE + len(first[6])
        # Copy-forward budget for this store (see rule 6 in file_format).
        budget = [min(self._ring_size // 8, max(4 * n, 65536))]
        queue = [first]
        while queue:
            queue.extend(self._place(queue.pop(0), budget))

    def _place(self, rec: Record, budget: list[int]) -> list[Record]:
        o, s, e, oid, start_tid, end_tid, data = rec
        n = RECORD_HEADER_SIZE + len(data)
        pos, stop, copies = self._make_room(n, budget)
        slack = stop - pos - n
        if slack >= FREE_SIZE:
            size, tail = n, pack_free(slack)
            free_run = (pos + n, stop)
        else:
            size, tail = n + slack, b'\0' * slack
            free_run = (0, 0)
        block = pack_record(self._next_seq, size, oid, start_tid, end_tid,
                            data)
        self._next_seq += 1
        self._ring_write(block + tail, pos)
        self._wp = pos + size
        self._free_run = free_run
        self._index.add(o, s, e, pos, size)
        return copies

    def _make_room(self, n: int, budget: list[int]
                   ) -> tuple[int, int, list[Record]]:
        """Evict the blocks at the write pointer until ``n`` contiguous
        bytes are free.  Return the start, the end of the last evicted
        block, and the referenced records to copy forward."""
        end = self._ring_end
        if self._wp + n > end:
            # Wrap.  Blocks between the old pointer and the end stay as
            # they are; they are the next to go on the next lap.
            self._wp = RING_OFFSET
        pos = cur = self._wp
        free_at, free_end = self._free_run
        if free_at == pos and pos + n <= free_end:
            return pos, free_end, []          # into the free block we left
        reader = self._ahead
        if reader is None or reader.end != end:
            reader = RingReader(self._file.pread, RING_OFFSET, end,
                                chunk=AHEAD_SIZE)
            self._ahead = reader
        copies: list[Record] = []
        while cur < pos + n:
            buf, i = reader.window(cur, RECORD_HEADER_SIZE)
            kind = block_kind(buf, i)
            size = None
            if kind == KIND_FREE:
                size = parse_free(buf, i)
            elif kind == KIND_RECORD:
                h = parse_record_header(buf, i)
                if h is not None:
                    size = h.size
                    if cur + size <= end:
                        self._evict(h, cur, reader, copies, budget)
            if size is None or cur + size > end:
                self._stats['corrupt'] += 1
                nxt = reader.find_block(cur + 1)
                logger.error('Cache %r: skipping %d damaged bytes: %s',
                             self.path, nxt - cur,
                             CacheCorruptError(cur, 'invalid block header'))
                size = nxt - cur
            cur += size
        return pos, cur, copies

    def _evict(self, h: RecordHeader, pos: int, reader: RingReader,
               copies: list[Record], budget: list[int]) -> None:
        o = int.from_bytes(h.oid, 'big')
        s = int.from_bytes(h.start, 'big')
        got = self._index.evict(o, s, pos)
        if got is None:
            return                   # not a live record (cannot happen)
        entry, referenced = got
        if referenced and budget[0] >= h.size:
            # Second chance: it was read since it was written.
            buf, i = reader.window(pos, h.size)
            if record_data_ok(buf, i, h):
                budget[0] -= h.size
                begin = i + RECORD_HEADER_SIZE
                data = bytes(buf[begin:begin + h.data_length])
                copies.append((o, s, entry.end, h.oid, h.start,
                               _tid_bytes(entry.end), data))
                self._stats['copies'] += 1
                return
        self._stats['evictions'] += 1

    def _free_record(self, oid: int, entry: Entry) -> None:
        # Overwriting the header keeps the ring tiled and makes sure the
        # record can never be found again (rule 3).
        self._ring_write(pack_free(entry.size), entry.offset)
        self._index.remove(oid, entry.start)

    def _set_end(self, oid: int, entry: Entry, end: int) -> None:
        head = self._file.pread(RECORD_HEADER_SIZE, entry.offset)
        h = parse_record_header(head)
        if h is None or int.from_bytes(h.start, 'big') != entry.start:
            logger.error('Dropping a damaged record from cache %r: %s',
                         self.path, CacheCorruptError(
                             entry.offset, 'record header checksum mismatch'))
            self._stats['corrupt'] += 1
            self._free_record(oid, entry)
            return
        hcrc = int.from_bytes(head[4:8], 'big')
        self._ring_write(pack_end(end.to_bytes(8, 'big'), hcrc),
                          entry.offset + END_OFFSET)
        self._index.set_end(oid, entry.start, end)
