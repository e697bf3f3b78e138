"""``loadBeforeRefs``: a load that also brings the records it references.

Most of a cold read is the round trip, so between our client and our
server a load may bring, besides the record asked for, records it is
likely to be asked for next.  The capability is negotiated in the
handshake (`LOAD_REFS`, offered unless ``load_refs`` is off): a ZEO 6.2
client never agrees to it and a ZEO 6.2 server never offers it, so
neither ever sees the call or the longer reply.

Rules
=====

Rule 1: an extra record is exactly what ``loadBefore(ref, tid)`` would
have answered at that moment, for the *tid* of the request: ``(oid,
data, start, end)``.  The client stores it as it stores a load reply, at
the same place in the message stream, so the cache rules for load
replies (invalidations seen before the reply win) cover it unchanged.

Rule 2: the work per call is bounded: at most ``max_records`` extra
records and ``max_bytes`` of their data, at most twice as many loads
tried, and a record is scanned for references only up to the number of
candidates still wanted (`zeo.protocol.record_refs` builds nothing from
the pickle).  Each load is an indexed storage read, like ``loadBefore``
itself, so nothing here grows with the database.

Rule 3: which records: the references of the loaded record, then those
of the records found, in the order found (the loaded record's subtree,
breadth first), then -- if the loaded oid is among the next
``max_records`` of them -- the remembered rest of the connection's
previous walk after it: its siblings.  The subtree first follows an
application's way through a tree: reading a BTree's values, the next
bucket comes with the last values of one, and its values with it.
That rest (at most `PENDING_FACTOR` times ``max_records`` oids, kept as
one bytes object) lets the siblings of a leaf come with it: a client
reading the 10,000 children of a container one by one asks for the
first unsent one, and the walk goes on from there.  A load found further
on brings no siblings, so a client reading at random is not sent
siblings it will not read; but the remembered walk goes on after it next
time (what came before it is kept behind: records already sent may wait
there for their references to be read).  Only oids a record the client
loaded refers to are remembered, so a client learns nothing it could not
load itself.
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Protocol

from ZODB.POSException import POSKeyError

from zeo.protocol import exception_text
from zeo.protocol.record_refs import LOAD_REFS, persistent_references

__all__ = ["LOAD_REFS", "PENDING_FACTOR", "RefLoads", "RefWalker"]

logger = logging.getLogger("zeo.server")

#: The remembered rest of a walk, in oids, per ``max_records``.
PENDING_FACTOR = 256


class RefWalker:
    """One connection's reference walks (see the module's doc)."""

    __slots__ = ("max_records", "max_bytes", "_max_pending", "_pending")

    def __init__(self, max_records: int, max_bytes: int) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._max_pending = max_records * PENDING_FACTOR
        #: Concatenated 8-byte oids: the rest of the last walk.
        self._pending = b""

    def _siblings(self, oid: bytes) -> tuple[bytes, bytes]:
        # (the remembered oids to walk now, those to keep behind this
        # walk's own): see Rule 3.
        pending = self._pending
        index = pending.find(oid)
        while index >= 0 and index % 8:
            index = pending.find(oid, index + 1)
        if index < 0:
            return b"", pending
        if index < 8 * self.max_records:
            return pending[index + 8:], b""
        return b"", pending[index + 8:] + pending[:index]

    def extras(self, storage: Any, oid: bytes, tid: bytes,
               data: bytes) -> list[tuple[bytes, bytes, bytes, bytes | None]]:
        """The extra records for ``loadBefore(oid, tid)`` that answered
        *data*: ``[(oid, data, start, end), ...]`` (Rules 1 to 3)."""
        max_records = self.max_records
        wanted = self._max_pending + max_records
        own = collections.deque(persistent_references(data, wanted))
        siblings, kept = self._siblings(oid)
        cursor, end_of_siblings = 0, len(siblings)
        later: collections.deque[bytes] = collections.deque()
        seen = {oid}
        found: list[tuple[bytes, bytes, bytes, bytes | None]] = []
        size = 0
        tries = 2 * max_records
        load_before = storage.loadBefore
        while len(found) < max_records and tries:
            if own:
                ref = own.popleft()
            elif later:
                ref = later.popleft()
            elif cursor < end_of_siblings:
                ref = siblings[cursor:cursor + 8]
                cursor += 8
            else:
                break
            if ref in seen:
                continue
            seen.add(ref)
            tries -= 1
            try:
                result = load_before(ref, tid)
            except POSKeyError:
                continue
            except Exception as error:
                # The extras are a bonus: the load asked for stands.
                logger.debug("loading an extra record failed: %s", exception_text(error))
                break
            if result is None:
                continue
            record, start, end = result
            if size + len(record) > self.max_bytes:
                continue
            size += len(record)
            found.append((ref, record, start, end))
            if len(later) < wanted:
                later.extend(persistent_references(record, wanted - len(later)))
        rest = b"".join(own) + b"".join(later) + siblings[cursor:] + kept
        self._pending = rest[:8 * self._max_pending]
        return found


class _Loader(Protocol):
    """What `RefLoads` needs of the session it is mixed into."""

    ref_walker: RefWalker | None

    def loadBefore(self, oid: bytes, tid: bytes) -> Any: ...

    def _storage(self) -> Any: ...


class RefLoads:
    """The ``loadBeforeRefs`` call of a `StorageSession` (a mixin: the
    adapter sets ``ref_walker`` when the capability was agreed)."""

    #: None: the client did not agree to `LOAD_REFS` (or we refuse it).
    ref_walker: RefWalker | None = None

    def loadBeforeRefs(self: _Loader, oid: bytes, tid: bytes) -> Any:
        """``loadBefore(oid, tid)``, and the extra records: ``(data,
        start, end, [(oid, data, start, end), ...])``, or None."""
        walker = self.ref_walker
        if walker is None:
            raise ValueError("loadBeforeRefs needs the load-refs capability")
        result = self.loadBefore(oid, tid)
        if result is None:
            return None
        data, start, end = result
        extras = walker.extras(self._storage(), oid, tid, data) if data else []
        return data, start, end, extras
