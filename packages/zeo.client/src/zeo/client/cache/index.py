"""The in-memory index of a file cache: (oid, start tid) -> record block.

Why two layers
--------------
Reopening a big cache must be fast.  Building a dict of a few hundred
thousand entries costs tens of milliseconds in CPython, more than reading
and checking the whole saved index.  So the records known at open time
stay in the *base*: the saved index region itself (five packed columns
sorted by oid, then start tid) used in place through ``memoryview.cast``
and searched with :func:`bisect.bisect_left`, which runs in C.  Records
added afterwards go to the *overlay*, a dict ``oid -> [[start, end,
offset, size, referenced], ...]``.  Base entries are mutable in place:
a byte of flags per entry says whether it is alive and referenced, and an
invalidation rewrites its end tid in the column.  Saving merges both
layers back into one sorted image, using C-level iteration
(``itertools.compress``, ``zip``, ``list.sort`` on two sorted runs) so
that closing stays well under a second for hundreds of thousands of
records.

oids and tids are handled as unsigned 64-bit integers (their big-endian
value), which keeps comparisons cheap and fits the packed columns.  An end
tid of 0 means "current": no real revision ends at tid 0.
"""
from __future__ import annotations

import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from itertools import compress
from typing import NamedTuple
from typing import Protocol

from zeo.client.cache.errors import CacheConsistencyError
from zeo.client.cache.errors import CacheCorruptError
from zeo.client.cache.file_format import INDEX_ENTRY_SIZE
from zeo.client.cache.file_format import INDEX_HEAD_SIZE
from zeo.client.cache.file_format import pack_index_head
from zeo.client.cache.file_format import unpack_index_head

__all__ = ['Entry', 'RecordIndex']

# Base entry flags.  Zero means removed; any other value means alive.
_ALIVE = 1
_REFERENCED = 2

_START, _END, _OFF, _SIZE, _REF = range(5)
# (column type code, width) of the five columns, in file order.
_COLUMNS = (('Q', 8), ('Q', 8), ('Q', 8), ('Q', 8), ('I', 4))
if array('Q').itemsize != 8 or array('I').itemsize != 4:  # pragma: no cover
    raise ImportError('this platform lacks 8- and 4-byte array types')


class _Column(Protocol):
    """What the index needs of a column: an ``array`` or a memoryview."""

    def __getitem__(self, index: int, /) -> int: ...

    def __setitem__(self, index: int, value: int, /) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[int]: ...


class Entry(NamedTuple):
    """A snapshot of one index entry."""
    start: int
    end: int          # 0 while current
    offset: int
    size: int         # block size in the ring


class RecordIndex:
    """Maps ``(oid, start)`` to the ring block holding that revision.

    The caller (the file cache) guarantees at most one current revision
    per oid and serialises all calls.
    """

    def __init__(self) -> None:
        self._n = 0
        empty: _Column = array('Q')
        self._oids = self._starts = self._ends = self._offs = empty
        self._sizes: _Column = array('I')
        self._flags = bytearray()
        self._overlay: dict[int, list[list[int]]] = {}
        self._count = 0
        self._bytes = 0

    # -- loading and saving ----------------------------------------------

    @classmethod
    def from_image(cls, image: bytearray, offset: int = -1) -> RecordIndex:
        """Adopt a saved index image (see file_format) without copying it
        on little-endian hosts.  ``offset`` is only used in errors."""
        count, total = unpack_index_head(image, offset)
        self = cls()
        view = memoryview(image)
        pos = INDEX_HEAD_SIZE
        columns: list[_Column] = []
        for code, width in _COLUMNS:
            chunk = view[pos:pos + count * width]
            pos += count * width
            if sys.byteorder == 'little':
                columns.append(chunk.cast('Q' if code == 'Q' else 'I'))
            else:  # pragma: no cover - exercised on big-endian hosts only
                col = array(code)
                col.frombytes(chunk)
                col.byteswap()
                columns.append(col)
        (self._oids, self._starts, self._ends, self._offs,
         self._sizes) = columns
        self._n = self._count = count
        self._bytes = total
        self._flags = bytearray(b'\x01') * count
        return self

    def image(self) -> bytes:
        """Return the saved form: header plus sorted packed columns."""
        columns = (self._oids, self._starts, self._ends, self._offs,
                   self._sizes)
        rows = list(zip(*(compress(c, self._flags) for c in columns)))
        for oid, revs in self._overlay.items():
            rows.extend((oid, r[_START], r[_END], r[_OFF], r[_SIZE])
                        for r in revs)
        # The base rows are one sorted run: Timsort only really sorts the
        # overlay rows and then merges.
        rows.sort()
        if len(rows) != self._count:
            raise CacheCorruptError(-1, 'index bookkeeping is inconsistent')
        parts = [pack_index_head(len(rows), self._bytes)]
        for column, (code, _width) in zip(zip(*rows) if rows else
                                          ((),) * 5, _COLUMNS):
            packed = array(code, column)
            if sys.byteorder != 'little':  # pragma: no cover
                packed.byteswap()
            parts.append(packed.tobytes())
        data = b''.join(parts)
        if len(data) != INDEX_HEAD_SIZE + len(rows) * INDEX_ENTRY_SIZE:
            raise CacheCorruptError(-1, 'index image has the wrong size')
        return data

    def add_unchecked(self, rows: list[tuple[int, int, int, int, int]]
                      ) -> None:
        """Add ``(oid, start, end, offset, size)`` rows known to be new and
        distinct (a recovery scan): skips the duplicate check of add."""
        overlay = self._overlay
        for oid, start, end, offset, size in rows:
            revs = overlay.get(oid)
            if revs is None:
                overlay[oid] = [[start, end, offset, size, 0]]
            else:
                revs.append([start, end, offset, size, 0])
            self._bytes += size
        self._count += len(rows)

    # -- queries ---------------------------------------------------------

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Total size of the indexed record blocks."""
        return self._bytes

    def _base_slots(self, oid: int) -> range:
        # The base is sorted by oid: the revisions of one oid are adjacent.
        oids = self._oids
        i = bisect_left(oids, oid)
        j = i
        n = self._n
        while j < n and oids[j] == oid:
            j += 1
        return range(i, j)

    def revisions(self, oid: int) -> list[Entry]:
        """Return every indexed revision of ``oid`` (in no set order)."""
        found = [Entry(r[_START], r[_END], r[_OFF], r[_SIZE])
                 for r in self._overlay.get(oid, ())]
        if self._n:
            offs, flags = self._offs, self._flags
            for i in self._base_slots(oid):
                if flags[i]:
                    found.append(Entry(self._starts[i], self._ends[i],
                                       offs[i], self._sizes[i]))
        return found

    def current(self, oid: int, touch: bool = False) -> Entry | None:
        """Return the current revision of ``oid``; mark it referenced if
        ``touch``."""
        for r in self._overlay.get(oid, ()):
            if r[_END] == 0:
                if touch:
                    r[_REF] = 1
                return Entry(r[_START], 0, r[_OFF], r[_SIZE])
        if self._n:
            offs, ends, flags = self._offs, self._ends, self._flags
            for i in self._base_slots(oid):
                if ends[i] == 0 and flags[i]:
                    if touch:
                        flags[i] = _ALIVE | _REFERENCED
                    return Entry(self._starts[i], 0, offs[i], self._sizes[i])
        return None

    def find(self, oid: int, start: int) -> Entry | None:
        """Return the revision of ``oid`` that starts at ``start``."""
        loc = self._locate(oid, start)
        if loc is None:
            return None
        if isinstance(loc, list):
            return Entry(loc[_START], loc[_END], loc[_OFF], loc[_SIZE])
        return Entry(start, self._ends[loc], self._offs[loc],
                     self._sizes[loc])

    def _locate(self, oid: int, start: int) -> list[int] | int | None:
        for r in self._overlay.get(oid, ()):
            if r[_START] == start:
                return r
        if self._n:
            for i in self._base_slots(oid):
                if self._starts[i] == start and self._flags[i]:
                    return i
        return None

    def __iter__(self) -> Iterator[tuple[int, int, int, int, int]]:
        """Yield ``(oid, start, end, offset, size)`` of every entry."""
        columns = (self._oids, self._starts, self._ends, self._offs,
                   self._sizes)
        yield from zip(*(compress(c, self._flags) for c in columns))
        for oid, revs in list(self._overlay.items()):
            for r in revs:
                yield oid, r[_START], r[_END], r[_OFF], r[_SIZE]

    # -- updates ---------------------------------------------------------

    def add(self, oid: int, start: int, end: int, offset: int,
            size: int) -> None:
        """Index a new record block."""
        if self._locate(oid, start) is not None:
            raise CacheConsistencyError(
                f'revision {start:#x} of oid {oid:#x} is already indexed')
        self._overlay.setdefault(oid, []).append(
            [start, end, offset, size, 0])
        self._count += 1
        self._bytes += size

    def remove(self, oid: int, start: int, offset: int | None = None
               ) -> Entry | None:
        """Forget a revision; return what it was, or None if unknown (or,
        when ``offset`` is given, stored somewhere else)."""
        got = self.evict(oid, start, offset)
        return None if got is None else got[0]

    def evict(self, oid: int, start: int, offset: int | None = None
              ) -> tuple[Entry, bool] | None:
        """Like :meth:`remove`, also telling whether the revision was
        referenced.  One lookup: this is on the path of every store."""
        loc = self._locate(oid, start)
        if loc is None:
            return None
        if isinstance(loc, list):
            if offset is not None and loc[_OFF] != offset:
                return None
            revs = self._overlay[oid]
            revs.remove(loc)
            if not revs:
                del self._overlay[oid]
            entry = Entry(loc[_START], loc[_END], loc[_OFF], loc[_SIZE])
            referenced = bool(loc[_REF])
        else:
            if offset is not None and self._offs[loc] != offset:
                return None
            entry = Entry(start, self._ends[loc], self._offs[loc],
                          self._sizes[loc])
            referenced = bool(self._flags[loc] & _REFERENCED)
            self._flags[loc] = 0
        self._count -= 1
        self._bytes -= entry.size
        return entry, referenced

    def set_end(self, oid: int, start: int, end: int) -> None:
        """Record that the revision starting at ``start`` ended at
        ``end``."""
        loc = self._locate(oid, start)
        if loc is None:
            raise CacheConsistencyError(
                f'revision {start:#x} of oid {oid:#x} is not indexed')
        if isinstance(loc, list):
            loc[_END] = end
        else:
            self._ends[loc] = end

    def take_ref(self, oid: int, start: int) -> bool:
        """Return whether the revision was referenced since it was written
        (or since the last call), clearing the mark."""
        loc = self._locate(oid, start)
        if loc is None:
            return False
        if isinstance(loc, list):
            was, loc[_REF] = loc[_REF], 0
        else:
            was = self._flags[loc] & _REFERENCED
            self._flags[loc] = _ALIVE
        return bool(was)

    def touch(self, oid: int, start: int) -> None:
        """Mark a revision as referenced (it deserves a second chance)."""
        loc = self._locate(oid, start)
        if isinstance(loc, list):
            loc[_REF] = 1
        elif loc is not None:
            self._flags[loc] = _ALIVE | _REFERENCED
