"""The on-disk format of the persistent client cache, specified in code.

Integers are unsigned and big-endian, except in the index region (see
there).  oids and tids are stored as the 8 raw bytes the protocol uses.
``crc32`` is ``zlib.crc32``.  Offsets are absolute file offsets.

File layout::

    OFFSET   SIZE    DESCRIPTION
    0        4096    page 0: the fixed header (written once, at creation)
    4096     4096    page 1: header slot 0
    8192     4096    page 2: header slot 1
    12288    R       the ring: R = ring_size bytes of blocks, see below
    12288+R  I       index region, present only after a clean close

Each header structure has a page of its own so that a torn sector write
can damage at most one of them.

Fixed header (page 0, ``FIXED_FMT``, 24 bytes)::

    0   8  magic b'\\x89ZEOC\\r\\n\\x1a' -- the high byte and CR LF catch
           7-bit and newline-translating copies, as PNG's signature does
    8   2  write version: the format version of the code that created the
           file
    10  2  read version: the oldest format version a reader must
           understand to read the file correctly.  A reader whose
           FORMAT_VERSION is >= the read version may read the file; only a
           reader whose FORMAT_VERSION is >= the write version may also
           modify it (the sqlite rule).  A cache must write, so this code
           refuses both cases with CacheVersionError.
    12  4  ring offset (12288)
    16  4  page size (4096)
    20  4  crc32 of bytes 0..19

Header slots (pages 1 and 2, ``SLOT_FMT``, 96 bytes)::

    0   4  marker b'ZCHS'
    4   4  crc32 of bytes 8..95
    8   8  generation: incremented by every slot write.  A write goes to
           slot ``generation % 2``, so it never overwrites the newest
           valid slot; the reader takes the valid slot with the higher
           generation (LMDB's two meta pages).  A torn slot write fails
           its crc and the previous slot wins.
    16  8  last tid (meaningful if flag HAS_TID)
    24  1  flags: 1 = HAS_TID, 2 = CLEAN
    25  7  reserved, zero
    32  8  ring size R
    40  8  write pointer (offset of the next block to reuse) [CLEAN only]
    48  8  next record sequence number                      [CLEAN only]
    56  8  index region offset                              [CLEAN only]
    64  8  index region length                              [CLEAN only]
    72  4  crc32 of the index region                        [CLEAN only]
    76  4  reserved, zero
    80  16 boot id of the kernel that ran the writer (zero if unknown)

Ring blocks.  The ring is always *tiled*: a sequence of blocks, each
starting with a header that gives its total size, covering the ring
exactly.  Blocks are at least ``FREE_SIZE`` bytes.  Two kinds:

Record block (``RECORD_FMT``, 60-byte header, then data, then padding)::

    0   4  marker b'\\xabZCR'
    4   4  header crc: crc32 of bytes 8..47
    8   8  sequence number (increases with every record written)
    16  8  block size (header + data + padding)
    24  8  oid
    32  8  start tid
    40  4  data length
    44  4  crc32 of the data
    48  8  end tid, eight zero bytes while the record is current
    56  4  end crc: crc32(end tid, header crc) -- binds the only mutable
           field to this record so a stale or torn end tid is detected
    60  .. data, then padding up to the block size

Free block (``FREE_FMT``, 16 bytes)::

    0   4  marker b'\\xabZCF'
    4   4  crc32 of bytes 8..15
    8   8  block size

Index region (``INDEX_HEAD_FMT`` then five columns of n entries, sorted
by (oid, start tid)).  It describes exactly the records of the ring at
the time of the clean close recorded in the slot that points to it.  The
columns are little-endian so that the common hosts can use the bytes in
place (``memoryview.cast``) instead of building millions of Python
objects -- which is what makes reopening fast::

    0   4  marker b'ZCIX'
    4   4  reserved, zero
    8   8  n, the number of records (big-endian, like every header)
    16  8  total size of the n record blocks (big-endian)
    24     8n oids as u64 LE
    24+8n  8n start tids as u64 LE
    24+16n 8n end tids as u64 LE (0 = current)
    24+24n 8n record block offsets as u64 LE
    24+32n 4n record block sizes as u32 LE

Rules that make the file crash-safe (the *why* behind the layout):

1. Write ordering for a process crash (``kill -9``): every write is an
   ``os.pwrite`` that goes straight to the kernel page cache, which
   survives the process.  Invalidations are written to the record's end
   field before the caller advances the last tid, and the last tid is
   written to a slot only after that, so the slot never claims more than
   the records show.  Only the one operation in flight can be torn, and
   the checksums catch it.
2. Dirty marking: the first change after opening writes a slot without
   CLEAN (and with this kernel's boot id), fsyncs it *before* the change
   is made, and truncates the file to the end of the ring (the saved
   index is stale from then on).  Closing writes the index, fsyncs, then
   writes a CLEAN slot pointing to it and fsyncs again.  A saved index is
   used only if the newest valid slot is CLEAN and the index crc matches;
   otherwise the ring is scanned.  A session that changes nothing writes
   nothing.
3. No dead record header survives outside the operation in flight:
   eviction overwrites records with the new record (one write: record,
   padding, then a free block header for the rest of the last evicted
   block), ``invalidate(oid, None)`` overwrites the header with a free
   block, ``clear`` truncates the ring to zeros, and recovery writes a
   free block header at the offset of *each* block it does not keep
   (never merging neighbours).  Free blocks therefore never contain intact
   headers,
   which is why recovery may resynchronise on any header whose checksums
   hold: it is either live or was evicted by the interrupted operation
   (in which case no invalidation can have been missed since).
4. Operating-system crash: writes after the last fsync may reach the
   disk in any order.  If the slot's boot id differs from the running
   kernel's (or either is unknown), recovery keeps only non-current
   records -- immutable facts -- and drops every current one, because an
   invalidation of it may have been lost.  Non-current records and the
   slot's last tid stay valid (a stale last tid only makes the client ask
   the server for more invalidations).
5. Recovery (after an unclean close, or to resize the ring) walks the
   ring; a block whose checksums fail is skipped by searching for the
   next valid marker (a record whose header holds but whose data does not
   is *not* skipped by its size: the unwritten rest of a torn write may
   hold headers that must be seen).  It keeps one record per (oid, start
   tid), at most one current record per oid, and drops a current record
   that a newer revision supersedes.  It writes free blocks over the
   rest, fsyncs, and only then writes a slot with the new boot id.  The
   write pointer resumes after the kept record with the highest sequence
   number.
6. Eviction is a ring: the write pointer moves forward and each new
   record overwrites the oldest blocks (FIFO).  When a record does not fit
   before the end of the ring the pointer wraps to its start; the blocks
   left behind stay live and go on the next lap.  A record that was read
   since it was written gets a second chance: instead of being dropped it
   is copied forward to the write pointer (CLOCK-like), within a budget
   of max(4 x the new record, 64 KiB) per store (at most an eighth of the
   ring), so a hot working set cannot make one store rewrite the ring.
   Records bigger than a quarter of the ring are not cached.
"""
from __future__ import annotations

import struct
import sys
import zlib
from typing import NamedTuple

from zeo.client.cache.errors import CacheCorruptError
from zeo.client.cache.errors import CacheError
from zeo.client.cache.errors import CacheFormatError
from zeo.client.cache.errors import CacheVersionError

__all__ = [
    'CacheError', 'CacheFormatError', 'CacheVersionError',
    'CacheCorruptError',
    'MAGIC', 'FORMAT_VERSION', 'READ_VERSION', 'PAGE_SIZE', 'RING_OFFSET',
    'SLOT_OFFSETS', 'FIXED_FMT', 'FIXED_SIZE', 'SLOT_FMT', 'SLOT_SIZE',
    'RECORD_FMT', 'RECORD_HEADER_SIZE', 'FREE_FMT', 'FREE_SIZE',
    'INDEX_HEAD_FMT', 'INDEX_HEAD_SIZE', 'INDEX_ENTRY_SIZE', 'Z64',
    'FLAG_HAS_TID', 'FLAG_CLEAN', 'BOOT_ID_SIZE', 'MAX_BLOCK_SIZE',
    'Slot', 'RecordHeader',
    'pack_fixed', 'check_fixed', 'pack_slot', 'unpack_slot',
    'pack_record', 'pack_end', 'parse_record_header', 'record_data_ok',
    'check_record', 'record_size',
    'pack_free', 'parse_free', 'block_kind', 'pack_index_head',
    'unpack_index_head', 'RECORD_MARKER', 'FREE_MARKER', 'MARKER_PREFIX',
    'END_OFFSET', 'KIND_RECORD', 'KIND_FREE', 'KIND_INVALID',
]

MAGIC = b'\x89ZEOC\r\n\x1a'
#: Version written by this code.  Bump READ_VERSION too when old readers
#: would misread a file of the new version.
FORMAT_VERSION = 1
READ_VERSION = 1

PAGE_SIZE = 4096
SLOT_OFFSETS = (PAGE_SIZE, 2 * PAGE_SIZE)
RING_OFFSET = 3 * PAGE_SIZE

Z64 = b'\0' * 8
BOOT_ID_SIZE = 16
FLAG_HAS_TID = 1
FLAG_CLEAN = 2

FIXED_FMT = '>8sHHIII'
FIXED_SIZE = 24
SLOT_FMT = '>4sIQ8sB7xQQQQQII16s'
SLOT_SIZE = 96
SLOT_MARKER = b'ZCHS'
RECORD_FMT = '>4sIQQ8s8sII8sI'
RECORD_HEADER_SIZE = 60
END_OFFSET = 48           # offset of the end tid inside a record header
FREE_FMT = '>4sIQ'
FREE_SIZE = 16
INDEX_HEAD_FMT = '>4s4xQQ'
INDEX_HEAD_SIZE = 24
INDEX_MARKER = b'ZCIX'
#: oid, start, end, offset (u64 each) and block size (u32).
INDEX_ENTRY_SIZE = 36
#: Block sizes live in a u32 column of the index; records are capped far
#: below this anyway (a fraction of the ring), free blocks may be larger
#: and are then split.
MAX_BLOCK_SIZE = 0xFFFF_FFFF

MARKER_PREFIX = b'\xabZC'
RECORD_MARKER = MARKER_PREFIX + b'R'
FREE_MARKER = MARKER_PREFIX + b'F'

KIND_INVALID = 0
KIND_RECORD = 1
KIND_FREE = 2

_FIXED = struct.Struct(FIXED_FMT)
_SLOT = struct.Struct(SLOT_FMT)
_RECORD = struct.Struct(RECORD_FMT)
_FREE = struct.Struct(FREE_FMT)
_INDEX_HEAD = struct.Struct(INDEX_HEAD_FMT)
_U64 = struct.Struct('>Q')

# The offsets above are part of the format: a typo in a format string must
# stop the import rather than write files nobody can read.
for _s, _size in ((_FIXED, FIXED_SIZE), (_SLOT, SLOT_SIZE),
                  (_RECORD, RECORD_HEADER_SIZE), (_FREE, FREE_SIZE),
                  (_INDEX_HEAD, INDEX_HEAD_SIZE)):
    if _s.size != _size:
        raise ImportError(
            f'cache format {_s.format!r} is {_s.size} bytes, '
            f'expected {_size}')
if FREE_SIZE > RECORD_HEADER_SIZE or SLOT_SIZE > PAGE_SIZE:
    raise ImportError('cache format constants are inconsistent')
if sys.byteorder not in ('little', 'big'):  # pragma: no cover
    raise ImportError('unknown byte order')


# -- fixed header ---------------------------------------------------------

def pack_fixed() -> bytes:
    """Return the fixed header of a new file."""
    head = _FIXED.pack(MAGIC, FORMAT_VERSION, READ_VERSION, RING_OFFSET,
                       PAGE_SIZE, 0)[:FIXED_SIZE - 4]
    return head + struct.pack('>I', zlib.crc32(head))


def check_fixed(buf: bytes) -> None:
    """Validate a fixed header; raise a CacheError subclass if unusable."""
    if len(buf) < FIXED_SIZE or buf[:len(MAGIC)] != MAGIC:
        raise CacheFormatError('not a zeo.client cache file (bad magic)')
    magic, write_v, read_v, ring_offset, page, crc = _FIXED.unpack_from(buf)
    if zlib.crc32(buf[:FIXED_SIZE - 4]) != crc:
        raise CacheCorruptError(0, 'fixed header checksum mismatch')
    if read_v > FORMAT_VERSION:
        raise CacheVersionError(
            f'cache file needs format version {read_v} to be read; this '
            f'zeo.client understands version {FORMAT_VERSION}',
            read_v, FORMAT_VERSION)
    if write_v > FORMAT_VERSION:
        raise CacheVersionError(
            f'cache file was written with format version {write_v}; this '
            f'zeo.client could read it but must not update it (it writes '
            f'version {FORMAT_VERSION})', write_v, FORMAT_VERSION)
    if ring_offset != RING_OFFSET or page != PAGE_SIZE:
        raise CacheCorruptError(0, 'unexpected ring offset or page size')


# -- header slots ---------------------------------------------------------

class Slot(NamedTuple):
    """The decoded contents of one header slot."""
    generation: int
    last_tid: bytes | None
    clean: bool
    ring_size: int
    write_pos: int = 0
    next_seq: int = 0
    index_offset: int = 0
    index_length: int = 0
    index_crc: int = 0
    boot_id: bytes = b'\0' * BOOT_ID_SIZE


def pack_slot(slot: Slot) -> bytes:
    """Encode a slot (96 bytes) with its checksum."""
    flags = (FLAG_HAS_TID if slot.last_tid is not None else 0) | (
        FLAG_CLEAN if slot.clean else 0)
    body = _SLOT.pack(
        SLOT_MARKER, 0, slot.generation, slot.last_tid or Z64, flags,
        slot.ring_size, slot.write_pos, slot.next_seq, slot.index_offset,
        slot.index_length, slot.index_crc, 0, slot.boot_id)
    crc = zlib.crc32(memoryview(body)[8:])
    return body[:4] + struct.pack('>I', crc) + body[8:]


def unpack_slot(buf: bytes, offset: int) -> Slot:
    """Decode a slot read from ``offset``; raise CacheCorruptError if it is
    torn or was never written."""
    if len(buf) < SLOT_SIZE:
        raise CacheCorruptError(offset, 'header slot truncated')
    (marker, crc, generation, tid, flags, ring_size, write_pos, next_seq,
     index_offset, index_length, index_crc, _reserved,
     boot_id) = _SLOT.unpack_from(buf)
    if marker != SLOT_MARKER:
        raise CacheCorruptError(offset, 'header slot marker missing')
    if zlib.crc32(memoryview(buf)[8:SLOT_SIZE]) != crc:
        raise CacheCorruptError(offset, 'header slot checksum mismatch')
    return Slot(generation, tid if flags & FLAG_HAS_TID else None,
                bool(flags & FLAG_CLEAN), ring_size, write_pos, next_seq,
                index_offset, index_length, index_crc, boot_id)


# -- ring blocks ----------------------------------------------------------

class RecordHeader(NamedTuple):
    """A decoded record header (the data is checked separately)."""
    seq: int
    size: int
    oid: bytes
    start: bytes
    data_length: int
    data_crc: int
    end: bytes | None        # None: current; also None if end_ok is False
    end_ok: bool             # False: the end tid field is torn/corrupt


def pack_record(seq: int, size: int, oid: bytes, start: bytes,
                end: bytes | None, data: bytes) -> bytes:
    """Encode a record block header followed by the data (no padding)."""
    dcrc = zlib.crc32(data)
    head = _RECORD.pack(RECORD_MARKER, 0, seq, size, oid, start, len(data),
                        dcrc, Z64, 0)
    hcrc = zlib.crc32(memoryview(head)[8:END_OFFSET])
    return b''.join((RECORD_MARKER, struct.pack('>I', hcrc),
                     head[8:END_OFFSET], pack_end(end, hcrc), data))


def pack_end(end: bytes | None, header_crc: int) -> bytes:
    """Encode the mutable end-tid field (12 bytes) of a record."""
    end = end or Z64
    return end + struct.pack('>I', zlib.crc32(end, header_crc))


def block_kind(buf: bytes | bytearray | memoryview, pos: int = 0) -> int:
    """Classify the block header at ``buf[pos:]`` by its marker only."""
    marker = bytes(buf[pos:pos + 4])
    if marker == RECORD_MARKER:
        return KIND_RECORD
    if marker == FREE_MARKER:
        return KIND_FREE
    return KIND_INVALID


def parse_record_header(buf: bytes | bytearray | memoryview, pos: int = 0
                        ) -> RecordHeader | None:
    """Decode and verify the record header at ``buf[pos:]``.

    Return None if the marker or the header checksum is wrong (a torn or
    foreign header).  The end tid is checked by its own checksum and
    reported through ``end_ok``.
    """
    if len(buf) - pos < RECORD_HEADER_SIZE:
        return None
    (marker, hcrc, seq, size, oid, start, dlen, dcrc, end,
     ecrc) = _RECORD.unpack_from(buf, pos)
    if marker != RECORD_MARKER:
        return None
    if zlib.crc32(buf[pos + 8:pos + END_OFFSET]) != hcrc:
        return None
    if size < RECORD_HEADER_SIZE + dlen or size > MAX_BLOCK_SIZE:
        return None
    end_ok = zlib.crc32(end, hcrc) == ecrc
    return RecordHeader(seq, size, oid, start, dlen, dcrc,
                        None if end == Z64 or not end_ok else end, end_ok)


def record_data_ok(buf: bytes | bytearray | memoryview, pos: int,
                   header: RecordHeader) -> bool:
    """Check the data of the record whose header is at ``buf[pos:]``."""
    begin = pos + RECORD_HEADER_SIZE
    stop = begin + header.data_length
    if len(buf) < stop:
        return False
    return zlib.crc32(buf[begin:stop]) == header.data_crc


_RECORD_INTS = struct.Struct('>4sIQQQQIIQI')   # RECORD_FMT, tids as ints
_FREE_AND_SIZE = struct.Struct('>4sIQQ')       # marker, crc, seq, size
if _RECORD_INTS.size != RECORD_HEADER_SIZE:
    raise ImportError('cache record format mismatch')


def record_size(buf: bytes | bytearray | memoryview, pos: int) -> int | None:
    """Return the block size of the record header at ``buf[pos:]`` if its
    marker and header checksum hold, else None (data not checked)."""
    if len(buf) - pos < RECORD_HEADER_SIZE:
        return None
    marker, hcrc, _seq, size = _FREE_AND_SIZE.unpack_from(buf, pos)
    if (marker != RECORD_MARKER
            or zlib.crc32(buf[pos + 8:pos + END_OFFSET]) != hcrc
            or size < RECORD_HEADER_SIZE or size > MAX_BLOCK_SIZE):
        return None
    return int(size)


def check_record(view: memoryview, pos: int
                 ) -> tuple[int, int, int, int, int] | None:
    """Fully verify the record block at ``view[pos:]`` (header, end tid
    and data) and return ``(seq, size, oid, start, end)`` with the oid and
    tids as integers (end 0 = current), or None if anything is wrong.

    The fast path of recovery: one struct call and three crc32 calls on
    memoryview slices, no copies.  ``view`` must hold the whole block.
    """
    if len(view) - pos < RECORD_HEADER_SIZE:
        return None
    (marker, hcrc, seq, size, oid, start, dlen, dcrc, end,
     ecrc) = _RECORD_INTS.unpack_from(view, pos)
    if (marker != RECORD_MARKER
            or zlib.crc32(view[pos + 8:pos + END_OFFSET]) != hcrc
            or size < RECORD_HEADER_SIZE + dlen
            or len(view) - pos < size
            or zlib.crc32(view[pos + END_OFFSET:pos + END_OFFSET + 8],
                          hcrc) != ecrc
            or zlib.crc32(view[pos + RECORD_HEADER_SIZE:
                               pos + RECORD_HEADER_SIZE + dlen]) != dcrc):
        return None
    return seq, size, oid, start, end


def pack_free(size: int) -> bytes:
    """Encode a free block header of ``size`` bytes (FREE_SIZE..2**32-1)."""
    if not FREE_SIZE <= size <= MAX_BLOCK_SIZE:
        raise ValueError(f'bad free block size {size}')
    body = _U64.pack(size)
    return FREE_MARKER + struct.pack('>I', zlib.crc32(body)) + body


def parse_free(buf: bytes | bytearray | memoryview, pos: int = 0) -> int | None:
    """Return the size of the free block whose header is at ``buf[pos:]``,
    or None if the header is not a valid free block header."""
    if len(buf) - pos < FREE_SIZE:
        return None
    marker, crc, size = _FREE.unpack_from(buf, pos)
    if marker != FREE_MARKER or zlib.crc32(buf[pos + 8:pos + 16]) != crc:
        return None
    if size < FREE_SIZE:
        return None
    return int(size)


# -- index region ---------------------------------------------------------

def pack_index_head(count: int, total_size: int) -> bytes:
    """Encode the index region header for ``count`` records whose blocks
    add up to ``total_size`` bytes."""
    return _INDEX_HEAD.pack(INDEX_MARKER, count, total_size)


def unpack_index_head(buf: bytes | bytearray | memoryview, offset: int
                      ) -> tuple[int, int]:
    """Return ``(count, total_size)`` of an index region, checking that
    its length matches the count."""
    if len(buf) < INDEX_HEAD_SIZE:
        raise CacheCorruptError(offset, 'index region truncated')
    marker, count, total = _INDEX_HEAD.unpack_from(buf)
    if marker != INDEX_MARKER:
        raise CacheCorruptError(offset, 'index marker missing')
    if len(buf) != INDEX_HEAD_SIZE + count * INDEX_ENTRY_SIZE:
        raise CacheCorruptError(offset, 'index length does not match count')
    return count, total
