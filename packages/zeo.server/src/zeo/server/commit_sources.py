"""Commits that did not pass through this server, merged with its own.

A served storage can change behind the server's back: a ``ClientStorage``
of an upstream ZEO server hears of the upstream's other commits (it tells
the object given to ``registerDB``), and an MVCC storage shared by several
fronts (RelStorage) gets commits from the other fronts (a pluggable
`ICommitSource` reports them).  `Announcer` merges those *external* commits
with the server's *own* (made through this server) into the invalidation
queue, the ``lastTransaction`` the server answers, and the
``invalidateTransaction`` messages to the clients.

Rules:

1. Strictly increasing.  A tid is announced (queued and sent) only if it
   is newer than every tid announced before; an older or equal one is a
   duplicate (the upstream echoing our own commit, a source reporting a
   commit twice or one of ours) and is dropped.  The server's
   ``lastTransaction`` is the newest announced tid, never the storage's
   own notion, which may run ahead of what clients have been told.
2. Older first.  When a commit of our own finishes with tid T, the
   external commits older than T are announced before it: the ones
   already handed over and those the source's ``commits_since`` finds
   (the database hands out tids in commit order, so by the time T exists
   every older commit can be found).  Without this, an older external
   commit found later would break rule 1 and be lost to our clients.
3. The snapshot never moves inside a transaction.  An MVCC storage
   (``IMVCCStorage``) sees commits made elsewhere only when its snapshot
   moves (`move_snapshot`); it is moved only when no storage
   transaction is open: at once if the commit lock is free, else when the
   holder releases it (after its ``tpc_finish`` or ``tpc_abort``, before
   the next holder begins).  External commits reported meanwhile wait.
4. Read first, then move.  External commits are read (from the source or
   the hand-over) before the snapshot moves, so the snapshot always
   contains what is announced: a client told that an object changed
   never loads an older revision as current.  The snapshot may be ahead of
   the announcements; that is the ordinary race of any ZEO server.  The
   one exception is rule 2: the older external commits announced at our
   own commit are in the snapshot by the release that follows in the same
   event-loop step, before any other request is served.
5. Any thread may hand over.  The ``registerDB`` stand-in
   (`DatabaseStandIn`) is called from the upstream client's own thread;
   it appends to a thread-safe inbox and wakes the loop with
   ``call_soon_threadsafe``.  A source reports on the loop.
6. Dropped caches.  ``invalidateCache`` (the upstream could not verify
   its cache) empties the queue and closes every client connection: the
   clients reconnect and ask ``getInvalidations``, which the empty queue
   cannot answer, so they drop their caches too.  The reference server
   closes the connections too but re-seeds its queue from the storage's
   ``lastTransaction``, which its own ClientStorage may not have moved yet
   (it calls ``invalidateCache`` before it sets the new last tid): a
   client exactly up to date with the old tid would then keep a stale
   cache.  Until the next commit, ``lastTransaction`` is the storage's.
7. Commits on instances of their own.  When the served storage commits in
   threads (zeo.server.commit_threads), no storage transaction is ever
   open on the instance the loop reads from, so rule 3 never waits, and
   our own commit T was made on another instance: at its announcement the
   external commits are read, then the snapshot moves (it then contains T
   too), then everything read is announced in tid order, T among them.
   Every client is told of T (the committer by its reply) only once a
   load sees it.
8. Own commits are the committer's to tell.  While a commit of ours
   finishes in its thread (between `finishing` and `finished`), commits
   the source reports wait: the source may find T itself (the database
   notifies every listener, this server's too, the moment T commits) and
   would otherwise announce it to every session, its committer among
   them, before the committer's reply.  They are announced at `own`, in
   tid order with T, or at `finished` if T failed.  Rule 2's look is
   skipped when the source has already reported T or a newer tid: having
   seen it, it has reported every older commit (`ICommitSource.start`).
"""

from __future__ import annotations

import collections
import heapq
import logging
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ZODB.interfaces import IMVCCStorage
from ZODB.serialize import referencesf
from zope.interface import implementer

from zeo.server.interfaces import ICommitSource
from zeo.server.invalidation_queue import InvalidationQueue

if TYPE_CHECKING:
    from zeo.server.served_storage import ServedStorage

__all__ = ["Announcer", "DatabaseStandIn", "IteratingSource", "is_mvcc", "move_snapshot"]

logger = logging.getLogger(__name__)

Z64 = b"\0" * 8
Commit = tuple[bytes, tuple[bytes, ...]]


def is_mvcc(storage: Any) -> bool:
    """True for a storage whose view moves only when polled (rule 3)."""
    return IMVCCStorage.providedBy(storage) and hasattr(storage, "poll_invalidations")


def move_snapshot(storage: Any) -> None:
    """Bring an MVCC *storage*'s snapshot up to the database's (rule 3).

    ZODB's contract is ``poll_invalidations``, what a ``ZODB.Connection``
    calls at every transaction start; we drop the oids it returns (our
    clients hear of commits from the queue).  A RelStorage instance's
    ``sync()`` suffices and costs less: it rolls back the instance's load
    connection, and RelStorage polls by itself before the next read on
    it (its load connection's first use after a rollback); until a read,
    nothing can see the old snapshot.  So a snapshot moved twice without a
    read in between costs no database round trip, and a commit's instance
    or the loads' instance is polled once, when it is next read from (a
    read of a client told of a commit therefore sees it).
    """
    if _moves_on_sync(storage):
        storage.sync()
    else:
        storage.poll_invalidations()


def _moves_on_sync(storage: Any) -> bool:
    # By name: the core never imports relstorage (zeo.server.relstorage_source).
    return type(storage).__module__.split(".", 1)[0] == "relstorage"


class Announcer:
    """Merges own and external commits of *served* (see the module rules).

    *call_soon_threadsafe* wakes the loop from another thread; *source* is
    an optional `ICommitSource`.
    """

    def __init__(self, served: ServedStorage, call_soon_threadsafe: Callable[..., Any],
                 source: Any = None) -> None:
        self.served = served
        self.source = source
        self.mvcc = is_mvcc(served.storage)
        #: Rule 7: the snapshot may move at any time.
        self.free = self.mvcc and getattr(served, "commit_threads", False)
        self._call_soon_threadsafe = call_soon_threadsafe
        #: External commits handed over from any thread (rule 5).
        self._inbox: collections.deque[Commit] = collections.deque()
        #: External commits read but not announced yet, a heap by tid.
        self._pending: list[Commit] = []
        #: Rule 4's exception: the snapshot must move at the next release.
        self._move_due = False
        #: Duplicates dropped (rule 1), for tests and curious operators.
        self.duplicates = 0
        #: Own commits finishing in their threads (rule 8).
        self._finishing = 0
        #: The newest tid the source has reported (rule 8).
        self._reported = Z64

    # -- the newest announced tid -------------------------------------------

    @property
    def last_tid(self) -> bytes:
        newest = self.served.queue.newest_tid
        if newest is None:
            return self.served.storage.lastTransaction() or Z64
        return newest

    def seed(self) -> None:
        """Fill the queue when the server starts: the source's recent
        commits if it has any, else the storage's history (rule 4: read,
        then move the snapshot)."""
        queue = self.served.queue
        recent = list(self.source.recent(queue.size)) if self.source is not None else []
        if recent:
            queue.seed_from(_NoHistory(recent[0][0]))
            for tid, oids in recent:
                queue.append(tid, oids)
        else:
            queue.seed_from(self.served.storage)
        if self.source is not None:
            self._read_source()
        if self.mvcc:
            self._move_snapshot()
        self._announce(self._take_pending(), None)

    # -- hand-over ------------------------------------------------------------

    def report(self, tid: bytes, oids: Iterable[bytes]) -> None:
        """An external commit, reported on the loop (`ICommitSource`)."""
        self._add(tid, tuple(oids))
        if _is_id(tid) and tid > self._reported:
            self._reported = tid
        self.flush()

    def finishing(self) -> None:
        """A commit of ours begins ``tpc_finish`` in its thread (rule 8)."""
        self._finishing += 1

    def finished(self, committed: bool) -> None:
        """It ended: just before `own` if it *committed* (which announces
        what waited), else the waiting commits are announced now (rule 8)."""
        self._finishing -= 1
        if not committed:
            self.flush()

    def report_threadsafe(self, tid: bytes, oids: Iterable[bytes]) -> None:
        """An external commit, from any thread (rule 5)."""
        self._inbox.append((tid, tuple(oids)))
        self._wake(self.flush)

    def drop_caches_threadsafe(self) -> None:
        """``invalidateCache`` from any thread (rule 6)."""
        self._wake(self.drop_caches)

    def _wake(self, function: Callable[[], None]) -> None:
        try:
            self._call_soon_threadsafe(function)
        except RuntimeError:
            # The loop is closed: the server has stopped, nobody to tell.
            logger.debug("storage %r: a notification came after the server stopped",
                         self.served.name)

    # -- merging ----------------------------------------------------------------

    def own(self, committer: Any, tid: bytes, oids: tuple[bytes, ...]) -> None:
        """A commit made through this server finished with *tid* (rule 2)."""
        if self.source is not None and self._reported < tid:   # rule 8
            self._read_source()
        self._take_inbox()
        if self.free:   # rule 7
            self._move_snapshot()
            pending = self._take_pending()
            self._announce([commit for commit in pending if commit[0] < tid], None)
            self._announce([(tid, oids)], committer)
            self._announce([commit for commit in pending if commit[0] >= tid], None)
            return
        older = []
        while self._pending and self._pending[0][0] < tid:
            older.append(heapq.heappop(self._pending))
        if older:
            self._announce(older, None)
            self._move_due = self.mvcc
        self._announce([(tid, oids)], committer)
        if not self.mvcc:
            self._announce(self._take_pending(), None)
        elif self.served.lock.holder is None and (self._pending or self._move_due):
            self._publish()   # no release will follow (rule 3 allows it now)

    def flush(self) -> None:
        """Announce the external commits read so far, if rule 3 allows."""
        self._take_inbox()
        if not self._pending or self._finishing:   # rule 8: at own or finished
            return
        if self.mvcc and not self.free and self.served.lock.holder is not None:
            return   # at the holder's release (rule 3)
        self._publish()

    def released(self) -> None:
        """The commit lock's holder released it: no storage transaction is
        open until the next holder begins (rule 3)."""
        self._take_inbox()
        if self._pending or self._move_due:
            self._publish()

    def drop_caches(self) -> None:
        """See rule 6."""
        logger.warning("storage %r: the storage dropped its cache (invalidateCache);"
                       " closing %d client connection(s) so that they verify theirs",
                       self.served.name, len(self.served.sessions))
        self._inbox.clear()
        self._pending.clear()
        # An empty queue: it answers no tid until the next commit, so
        # every client drops its cache (see rule 6).
        queue = self.served.queue
        self.served.queue = InvalidationQueue(queue.size, max_oids=queue.max_oids)
        for session in list(self.served.sessions):
            session.peer.close("the served storage dropped its cache")

    # -- internals ----------------------------------------------------------------

    def _publish(self) -> None:
        if self.mvcc:
            # After reading (rule 4); if it fails, the commits stay pending.
            self._move_snapshot()
        self._announce(self._take_pending(), None)

    def _move_snapshot(self) -> None:
        self._move_due = False
        move_snapshot(self.served.storage)

    def _read_source(self) -> None:
        for tid, oids in self.source.commits_since(self.last_tid):
            self._add(tid, tuple(oids))

    def _take_inbox(self) -> None:
        inbox = self._inbox
        while inbox:
            tid, oids = inbox.popleft()
            self._add(tid, oids)

    def _add(self, tid: bytes, oids: tuple[bytes, ...]) -> None:
        # Checked here, not when queued: a bad value must never make our
        # own commit's announcement fail inside the storage's tpc_finish.
        if not _is_id(tid):
            logger.error("storage %r: ignored an external commit with a bad tid %.100r",
                         self.served.name, tid)
            return
        good = tuple(oid for oid in oids if _is_id(oid))
        if len(good) != len(oids):
            logger.error("storage %r: external commit %s: ignored %d bad oid(s)",
                         self.served.name, tid.hex(), len(oids) - len(good))
        heapq.heappush(self._pending, (tid, good))

    def _take_pending(self) -> list[Commit]:
        pending, self._pending = self._pending, []
        pending.sort()
        return pending

    def _announce(self, commits: Iterable[Commit], committer: Any) -> None:
        served = self.served
        for tid, oids in commits:
            if tid <= self.last_tid:
                self.duplicates += 1   # rule 1
                continue
            served.queue.append(tid, oids)
            for session in served.sessions:
                if session is not committer:
                    session.notify("invalidateTransaction", (tid, oids))


class _NoHistory:
    """Seeds a queue with the pseudo-entry of *tid* (see `IInvalidationQueue`)."""

    def __init__(self, tid: bytes) -> None:
        self._tid = tid

    def lastTransaction(self) -> bytes:
        # The entry before the oldest recent commit: everything after it
        # will be appended.
        return _p64(max(0, _u64(self._tid) - 1))


class DatabaseStandIn:
    """What a server gives its storage's ``registerDB`` (rule 5).

    A storage calls ``invalidate(tid, oids)`` for commits it heard of and
    ``invalidateCache()`` when it lost track; either may come from any
    thread.  The record transforms are the identity, as for a ZODB ``DB``
    without wrappers.
    """

    def __init__(self, announcer: Announcer) -> None:
        self._announcer = announcer
        self.references = referencesf

    def invalidate(self, tid: bytes, oids: Iterable[bytes], version: str = "") -> None:
        if version:
            raise ValueError("versions are not supported")
        self._announcer.report_threadsafe(tid, oids)

    def invalidateCache(self) -> None:
        self._announcer.drop_caches_threadsafe()

    def transform_record_data(self, data: bytes) -> bytes:
        return data

    def untransform_record_data(self, data: bytes) -> bytes:
        return data


@implementer(ICommitSource)
class IteratingSource:
    """An `ICommitSource` for any storage that iterates (``iterator(start)``).

    It polls *storage* every *interval* seconds, on the loop, reading the
    transactions after the last one it has seen.  Only sensible where
    starting an iteration near the end is cheap and the storage can be
    read while another process or front writes to it.
    """

    def __init__(self, storage: Any, interval: float = 1.0) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        self.storage = storage
        self.interval = float(interval)
        self._report: Callable[[bytes, tuple[bytes, ...]], None] | None = None
        self._call_later: Callable[..., Any] | None = None
        self._timer: Any = None
        self._seen = Z64

    def start(self, report: Callable[[bytes, tuple[bytes, ...]], None],
              call_later: Callable[..., Any]) -> None:
        """See `ICommitSource`."""
        self._report = report
        self._call_later = call_later
        self._seen = self.storage.lastTransaction() or Z64
        self._timer = call_later(self.interval, self._poll)

    def stop(self) -> None:
        """See `ICommitSource`."""
        timer, self._timer = self._timer, None
        self._report = None
        if timer is not None:
            timer.cancel()

    def commits_since(self, tid: bytes) -> list[Commit]:
        """See `ICommitSource`."""
        if _u64(tid) >= 2 ** 64 - 1:
            return []
        return list(self._iterate(_p64(_u64(tid) + 1)))

    def recent(self, count: int) -> list[Commit]:
        """See `ICommitSource`."""
        last_invalidations = getattr(self.storage, "lastInvalidations", None)
        if last_invalidations is not None:
            return [(tid, tuple(oids)) for tid, oids in last_invalidations(count)]
        return list(collections.deque(self._iterate(None), maxlen=count))

    def _poll(self) -> None:
        if self._report is None:
            return
        try:
            for tid, oids in self.commits_since(self._seen):
                self._seen = tid
                self._report(tid, oids)
        except Exception:
            logger.exception("polling %r for commits failed; trying again in %g s",
                             self.storage, self.interval)
        call_later = self._call_later  # set by start(), with _report
        if self._report is not None and call_later is not None:
            self._timer = call_later(self.interval, self._poll)

    def _iterate(self, start: bytes | None) -> Iterator[Commit]:
        transactions = self.storage.iterator(start)
        try:
            for txn in transactions:
                yield txn.tid, tuple(record.oid for record in txn)
        finally:
            close = getattr(transactions, "close", None)
            if close is not None:
                close()


def _is_id(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == 8


def _p64(n: int) -> bytes:
    return struct.pack(">Q", n)


def _u64(b: bytes) -> int:
    n: int = struct.unpack(">Q", b)[0]
    return n
