"""Recovery: rebuild the index of a cache ring by walking it.

Used only when the saved index cannot be trusted (the previous process
did not close the cache cleanly) or the ring is being resized.  The walk
reads the ring in large chunks, checks every block's checksums, and
resynchronises on the next valid block marker after anything it cannot
parse.  Rule 3 of :mod:`zeo.client.cache.file_format` is what makes that
resynchronisation safe.  The walk itself writes nothing; it returns what
to keep and which byte ranges must become free blocks, and the caller
writes those.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from zeo.client.cache.file_format import FREE_SIZE
from zeo.client.cache.file_format import KIND_FREE
from zeo.client.cache.file_format import KIND_RECORD
from zeo.client.cache.file_format import MARKER_PREFIX
from zeo.client.cache.file_format import MAX_BLOCK_SIZE
from zeo.client.cache.file_format import RECORD_HEADER_SIZE
from zeo.client.cache.file_format import block_kind
from zeo.client.cache.file_format import check_record
from zeo.client.cache.file_format import parse_free
from zeo.client.cache.file_format import parse_record_header
from zeo.client.cache.file_format import record_size

__all__ = ['ScanResult', 'scan_ring', 'free_ranges_to_blocks',
           'RingReader']

#: Bytes read per chunk while walking: big enough to amortise a system
#: call over many records, small enough not to matter for memory.
CHUNK_SIZE = 4 << 20

PRead = Callable[[int, int], bytes]   # (size, offset) -> bytes


class RingReader:
    """Buffered random access to ``[begin, end)`` of the cache file."""

    def __init__(self, pread: PRead, begin: int, end: int,
                 chunk: int = CHUNK_SIZE) -> None:
        self._pread = pread
        self.begin = begin
        self.end = end
        self._chunk = chunk
        self._base = begin
        self._buf: bytes | bytearray = b''
        #: A memoryview of the current buffer (slicing it copies nothing).
        self.view = memoryview(self._buf)

    def window(self, pos: int, length: int
               ) -> tuple[bytes | bytearray, int]:
        """Return ``(buffer, index)`` such that ``buffer[index:]`` starts
        at file offset ``pos`` and holds ``length`` bytes unless the ring
        ends first."""
        length = min(length, self.end - pos)
        base, buf = self._base, self._buf
        if not (base <= pos and pos + length <= base + len(buf)):
            size = min(max(length, self._chunk), self.end - pos)
            self._buf = buf = self._pread(size, pos)
            self.view = memoryview(buf)
            self._base = base = pos
        return buf, pos - base

    def patch(self, data: bytes, pos: int) -> None:
        """Apply a write of ``data`` at file offset ``pos`` to the buffer,
        so that it stays a copy of the file."""
        base, buf = self._base, self._buf
        lo, hi = max(pos, base), min(pos + len(data), base + len(buf))
        if lo >= hi:
            return
        if type(buf) is not bytearray:
            self._buf = buf = bytearray(buf)
            self.view = memoryview(buf)
        buf[lo - base:hi - base] = data[lo - pos:hi - pos]

    def find_block(self, pos: int) -> int:
        """Return the offset of the first block header at or after ``pos``
        whose header checksum holds (and that ends inside the ring), or
        ``end`` if there is none."""
        while pos < self.end:
            buf, i = self.window(pos, self._chunk)
            hit = buf.find(MARKER_PREFIX, i)
            if hit < 0:
                avail = len(buf) - i
                if pos + avail >= self.end:
                    break
                # Overlap by a few bytes so that a marker split by the
                # chunk edge is still found.
                pos = max(pos + avail - (len(MARKER_PREFIX) - 1), pos + 1)
                continue
            cand = pos + hit - i
            if self.block_size(cand) is not None:
                return cand
            pos = cand + 1
        return self.end

    def block_size(self, pos: int) -> int | None:
        """Return the size of the block at ``pos`` if its header is valid
        (record data is *not* checked here), else None."""
        buf, i = self.window(pos, RECORD_HEADER_SIZE)
        kind = block_kind(buf, i)
        if kind == KIND_FREE:
            size = parse_free(buf, i)
        elif kind == KIND_RECORD:
            header = parse_record_header(buf, i)
            size = None if header is None else header.size
        else:
            return None
        if size is None or pos + size > self.end:
            return None
        return size


@dataclass
class ScanResult:
    """What a walk of the ring found.

    ``records`` maps ``(oid, start)`` (integers) to ``(end, offset,
    size)``; ``free`` lists the ``(offset, size)`` free block headers to
    write; ``write_pos`` is the end of the newest kept record;
    ``next_seq`` exceeds every sequence number kept.
    """
    records: dict[tuple[int, int], tuple[int, int, int]]
    free: list[tuple[int, int]]
    write_pos: int
    next_seq: int
    bad_blocks: int = 0
    dropped: int = 0


# Kinds of the segments a walk cuts the ring into.
_FREE, _RECORD, _GAP = range(3)


def scan_ring(pread: PRead, begin: int, end: int, trust_current: bool,
              tile_end: int | None = None) -> ScanResult:
    """Walk the ring ``[begin, end)`` and decide what to keep.

    ``trust_current`` is False after a possible operating-system crash:
    then every current record is dropped (rule 4 of file_format).
    ``tile_end`` (default ``end``) is where the returned free blocks must
    reach: a ring being grown has nothing worth walking beyond ``end``.
    """
    reader = RingReader(pread, begin, end)
    # (oid, start) -> (seq, end, offset, size) of record candidates
    found: dict[tuple[int, int], tuple[int, int, int, int]] = {}
    segments: list[tuple[int, int, int]] = []      # (offset, size, kind)
    bad = 0
    pos = begin
    while pos < end:
        buf, i = reader.window(pos, RECORD_HEADER_SIZE)
        # Fast path: a complete, valid record inside the buffer.
        checked = check_record(reader.view, i)
        if checked is None:
            # Slow path: the record continues past the buffer, or this
            # is a free block, or something damaged.
            kind = block_kind(buf, i)
            if kind == KIND_RECORD:
                size = record_size(buf, i)
                if size is not None and pos + size <= end:
                    buf, i = reader.window(pos, size)
                    checked = check_record(reader.view, i)
        if checked is not None and pos + checked[1] <= end:
            seq, size, oid, start, stop = checked
            key = (oid, start)
            candidate = (seq, stop, pos, size)
            other = found.get(key)
            if other is None or _better(candidate, other):
                found[key] = candidate
            segments.append((pos, size, _RECORD))
            pos += size
            continue
        kind = block_kind(buf, i)
        if kind == KIND_FREE:
            size = parse_free(buf, i)
            if size is not None and pos + size <= end:
                segments.append((pos, size, _FREE))
                pos += size
                continue
        # Torn, corrupt or foreign bytes: skip to the next valid header.
        # A record whose header is fine but whose data is not is treated
        # the same way (not skipped by its size): the unwritten part of an
        # interrupted write may still hold valid headers of the records it
        # was replacing, and those must be seen and accounted for.
        bad += 1
        nxt = reader.find_block(pos + 1)
        segments.append((pos, nxt - pos, _GAP))
        pos = nxt
    tile_end = end if tile_end is None else tile_end
    if tile_end > end:
        segments.append((end, tile_end - end, _GAP))

    records, dropped = _select(found, trust_current)
    write_pos = begin
    newest = 0
    for key, (stop, off, size) in records.items():
        seq = found[key][0]
        if seq > newest:
            newest, write_pos = seq, off + size
    free = _free_blocks(segments, records)
    return ScanResult(records, free, write_pos,
                      max((c[0] for c in found.values()), default=0) + 1,
                      bad, dropped)


def _better(a: tuple[int, int, int, int], b: tuple[int, int, int, int]
            ) -> bool:
    # Two copies of one revision (a copy-forward interrupted by a crash).
    # A copy that knows its end tid is better informed; else the newer.
    if (a[1] != 0) != (b[1] != 0):
        return a[1] != 0
    return a[0] > b[0]


def _select(found: dict[tuple[int, int], tuple[int, int, int, int]],
            trust_current: bool
            ) -> tuple[dict[tuple[int, int], tuple[int, int, int]], int]:
    """Apply the consistency rules to the candidate records."""
    newest_start: dict[int, int] = {}      # oid -> newest start seen
    for oid, start in found:
        if start > newest_start.get(oid, -1):
            newest_start[oid] = start
    records: dict[tuple[int, int], tuple[int, int, int]] = {}
    dropped = 0
    for (oid, start), (_seq, stop, off, size) in found.items():
        if stop == 0:
            # A current record is kept only if trusted and if no newer
            # revision of the object is known (which would prove that an
            # invalidation of it was lost).
            keep = trust_current and newest_start[oid] == start
        else:
            keep = stop > start
        if keep:
            records[(oid, start)] = (stop, off, size)
        else:
            dropped += 1
    return records, dropped


def _free_blocks(segments: list[tuple[int, int, int]],
                 records: dict[tuple[int, int], tuple[int, int, int]]
                 ) -> list[tuple[int, int]]:
    """Return the free block headers to write so that every segment that
    is not a kept record becomes free space.

    Rule 3 forbids merging neighbours: a dropped record must get a free
    header at its *own* offset, or its intact header would survive inside
    a bigger free block, where a later resynchronisation could find it.
    Existing free blocks are left as they are.  Only a gap too small for
    a header is merged, into its neighbour, which must then be rewritten
    (and, if it was a kept record, given up).
    """
    kept_offsets = {off for _stop, off, _size in records.values()}
    # [offset, size, state]: 0 keep, 1 leave as is (free), 2 write
    out: list[list[int]] = []
    for off, size, kind in segments:
        if kind == _RECORD:
            state = 0 if off in kept_offsets else 2
        else:
            state = 1 if kind == _FREE else 2
        if kind == _GAP and size < FREE_SIZE:
            if out:
                prev = out[-1]
                if prev[2] == 0:
                    _give_up(records, prev[0])
                prev[1] += size
                prev[2] = 2
                continue
        out.append([off, size, state])
    writes = []
    if out and out[0][1] < FREE_SIZE and len(out) > 1:
        # A tiny gap at the very start of the ring: absorb the next
        # segment too, and kill that segment's own header.
        first, second = out[0], out[1]
        if second[2] == 0:
            _give_up(records, second[0])
        writes.append((second[0], second[1]))
        out[0:2] = [[first[0], first[1] + second[1], 2]]
    for off, size, state in out:
        if state == 2:
            writes.append((off, size))
    return free_ranges_to_blocks(writes)


def _give_up(records: dict[tuple[int, int], tuple[int, int, int]],
             offset: int) -> None:
    for key, (_stop, off, _size) in list(records.items()):
        if off == offset:
            del records[key]


def free_ranges_to_blocks(ranges: list[tuple[int, int]]
                          ) -> list[tuple[int, int]]:
    """Split ranges longer than a block may be into several blocks."""
    blocks = []
    for off, size in ranges:
        while size > MAX_BLOCK_SIZE:
            # Leave at least FREE_SIZE for the last piece.
            piece = MAX_BLOCK_SIZE - FREE_SIZE
            blocks.append((off, piece))
            off += piece
            size -= piece
        blocks.append((off, size))
    return blocks
