"""RelStorage's vote-time conflict resolution, for ZEO clients.

To resolve a conflict on an object, ``tpc_vote`` needs three revisions:
the one being stored, the one currently committed, and the one the
committer *started from* -- the revision whose serial the committer gave
to ``store``. RelStorage 4.3 gets the first from its temporary store and
the second from the row it has just locked (both right), but the third
from ``StorageCache.prefetch_for_conflicts``, which loads the object's
current revision *in the storage instance's snapshot* and checks that its
tid is the serial asked for; if it isn't, it raises
``CacheConsistencyError`` (when the instance has polled) or hands the
wrong revision on, which ``_CachedConflictResolver.loadSerial`` trips over
(when it never has).

That holds under ZODB's Connection, which moves the storage's snapshot at
each transaction boundary: what it started from is what its snapshot
holds. A ZEO server shares one snapshot between many clients and moves it
whenever a commit happens anywhere, so a client that loaded serial s1 and
stores over it after s2 was committed finds the snapshot at s2: RelStorage
refused a conflict it could resolve (issue #18, "Correct conflicts").

`fix_relstorage_conflict_resolution` replaces, process-wide and once, the
two class attributes involved, so that every instance -- the served one and
those made with ``new_instance()`` -- reads the starting revision by
``(oid, serial)``:

1. ``StorageCache.prefetch_for_conflicts`` (`prefetch_start_revisions`)
   keeps only exact ``(oid, serial)`` matches -- from the local cache, or
   the current revision in the snapshot when its tid *is* the serial (the
   Connection case, in one query) -- and never raises for the others;
2. ``_CachedConflictResolver.loadSerial`` (`load_start_revision`) returns a
   prefetched match, else reads the revision by ``(oid, serial)``: the
   storage's own ``loadSerial`` (local cache, then the load connection),
   then the transaction's store connection, which sees every committed
   revision (its snapshot is not older than the client's).

A history-free database keeps only current revisions: when s1 is neither
cached nor current, it cannot be read, and the client gets the retryable
``ConflictError`` (through zeo.server.conflicts' guard, which loads the
same revision first). Nothing else about RelStorage's vote changes: the
committed revision is still the locked row's, and an unresolvable
conflict is still a ``ConflictError``.

Only a server that serves a RelStorage calls this; the module imports
RelStorage only then.
"""

from __future__ import annotations

import importlib
import logging
import struct
from typing import Any, Iterable

from ZODB.POSException import POSKeyError

__all__ = ["RELSTORAGE_CACHE", "RELSTORAGE_RESOLVER", "fix_relstorage_conflict_resolution",
           "load_start_revision", "prefetch_start_revisions"]

logger = logging.getLogger("zeo.server")

#: The class whose ``prefetch_for_conflicts`` loads the starting revisions.
RELSTORAGE_CACHE = ("relstorage.cache.storage_cache", "StorageCache")
#: The class through which the vote resolves conflicts (see also
#: zeo.server.conflicts, which guards its ``tryToResolveConflict``).
RELSTORAGE_RESOLVER = ("relstorage.storage.tpc.vote", "_CachedConflictResolver")

#: The attribute marking a class already fixed (the originals are kept there).
_ORIGINAL = "_zeo_original"

_U64 = struct.Struct(">Q")


def prefetch_start_revisions(cache: Any, cursor: Any,
                             oid_tid_pairs: Iterable[tuple[int, int]]
                             ) -> dict[int, tuple[bytes, int]]:
    """``{oid: (state, tid)}`` for each ``(oid, tid)`` pair found exactly:
    in the local cache, or as the current revision on *cursor* (the load
    connection). Pairs found neither way are left out (no error): the
    resolver reads them by ``(oid, serial)``."""
    results: dict[int, tuple[bytes, int]] = {}
    wanted: dict[int, int] = {}
    local = cache.cache
    for oid, tid in oid_tid_pairs:
        # peek: no stats, no MRU move, no lock (as RelStorage's own).
        cached = local.get((oid, tid), peek=True)
        if cached and cached[1] == tid:
            results[oid] = cached
        else:
            wanted[oid] = tid
    if wanted:
        for oid, state, tid in cache.adapter.mover.load_currents(cursor, list(wanted)):
            if wanted.get(oid) == tid:
                results[oid] = (state, tid)
    return results


def load_start_revision(resolver: Any, oid: bytes, serial: bytes) -> bytes:
    """The revision *serial* of *oid*, for *resolver* (a
    ``_CachedConflictResolver``): prefetched, else read by ``(oid,
    serial)``. Raises ``POSKeyError`` when no connection can read it
    (history-free, overwritten)."""
    oid_int, = _U64.unpack(oid)
    tid_int, = _U64.unpack(serial)
    entry = resolver._old_states_and_tids.get(oid_int)
    if entry is not None and entry[1] == tid_int:
        state: bytes = entry[0]
        return state
    storage = resolver.__dict__.get("_zeo_storage")
    if storage is None:
        raise POSKeyError(oid)
    state = _read_revision(storage, oid, serial)
    # Asked twice per conflict (the guard, then the resolution): read once.
    resolver._old_states_and_tids[oid_int] = (state, tid_int)
    return state


def _read_revision(storage: Any, oid: bytes, serial: bytes) -> bytes:
    try:
        state: bytes = storage.loadSerial(oid, serial)
        return state
    except POSKeyError:   # RelStorage's is a subclass
        pass
    # The load connection's snapshot may be older than what the client
    # saw; the store connection (read committed, rows locked) is not.
    cursor = storage._tpc_phase.shared_state.store_connection.cursor
    found: bytes | None = storage._adapter.mover.load_revision(
        cursor, *_U64.unpack(oid), *_U64.unpack(serial))
    if found is None:
        raise POSKeyError(oid)
    return found


def fix_relstorage_conflict_resolution() -> None:
    """Install `prefetch_start_revisions` and `load_start_revision` in
    RelStorage's classes (once per process; see the module docstring).
    Raises RuntimeError when RelStorage lacks them (another version):
    such a RelStorage is refused rather than served with the old rule."""
    cache_class = _find(RELSTORAGE_CACHE, "prefetch_for_conflicts")
    resolver_class = _find(RELSTORAGE_RESOLVER, "loadSerial")
    if _ORIGINAL not in cache_class.__dict__:
        setattr(cache_class, _ORIGINAL, cache_class.prefetch_for_conflicts)
        cache_class.prefetch_for_conflicts = prefetch_start_revisions
    if _ORIGINAL not in resolver_class.__dict__:
        original_init = resolver_class.__init__

        def __init__(self: Any, storage: Any, old_states_and_tids: Any) -> None:
            original_init(self, storage, old_states_and_tids)
            self._zeo_storage = storage

        setattr(resolver_class, _ORIGINAL, (original_init, resolver_class.loadSerial))
        resolver_class.__init__ = __init__
        resolver_class.loadSerial = load_start_revision


def _find(where: tuple[str, str], attribute: str) -> Any:
    module_name, class_name = where
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
        getattr(cls, attribute)
    except (ImportError, AttributeError):
        raise RuntimeError(f"cannot fix RelStorage's conflict resolution: no"
                           f" {module_name}.{class_name}.{attribute}") from None
    return cls
