"""One storage served under a name, and what its sessions share.

A served storage owns the commit lock (with its transaction-timeout
watchdog), the invalidation queue, the status counters and the set of
registered sessions. Sessions call `commit_finished` from inside the
storage's ``tpc_finish`` callback, so the queue and the fan-out to the other
sessions happen while the storage still holds its own commit lock: no
session can observe the new tid before the invalidations are on their way.
Commits made elsewhere (the storage's ``registerDB`` notifications, an
`ICommitSource`) are merged with ours by an `Announcer`, whose rules are in
zeo.server.commit_sources.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ZODB.interfaces import IBlobStorage, IMVCCStorage
from ZODB.POSException import POSError, StorageError
from zeo.protocol import peer_repr

from zeo.server.blob_uploads import SpoolBudget, UploadDirectory, remove_stale_uploads
from zeo.server.commit_lock import CommitLock
from zeo.server.commit_sources import Announcer, DatabaseStandIn, move_snapshot
from zeo.server.commit_threads import wants_commit_threads
from zeo.server.config import ServerConfig
from zeo.server.conflicts import guard_conflict_resolution
from zeo.server.invalidation_queue import InvalidationQueue, invalidations_by_iteration
from zeo.server.iterators import IteratorBudget, LentIterator
from zeo.server.results import Delayed
from zeo.server.shared_blobs import claim_shared_blob
from zeo.server.size_info import RunInThread, SizeInfo
from zeo.server.stats import StorageStats

if TYPE_CHECKING:
    from zeo.server.session import StorageSession

__all__ = ["LoopHooks", "MAX_IDLE_INSTANCES", "ServedStorage"]

logger = logging.getLogger(__name__)

#: Idle instances a storage committing in threads keeps for the next
#: transactions (see `ServedStorage.new_instance`): one transaction
#: commits at a time, and the next may take its instance while the
#: previous one gives its own back.
MAX_IDLE_INSTANCES = 2


class LoopHooks:
    """The event-loop services the core needs, passed in explicitly.

    In production these are ``loop.call_soon``, ``loop.call_later``,
    ``time.time`` and ``loop.call_soon_threadsafe`` (how a storage's own
    thread hands commits made elsewhere over; it defaults to *call_soon*);
    nothing in the core reads a clock or a loop by itself.
    """

    __slots__ = ("call_soon", "call_later", "clock", "call_soon_threadsafe")

    def __init__(self, call_soon: Callable[..., Any], call_later: Callable[..., Any],
                 clock: Callable[[], float] = time.time,
                 call_soon_threadsafe: Callable[..., Any] | None = None) -> None:
        self.call_soon = call_soon
        self.call_later = call_later
        self.clock = clock
        #: ``loop.call_soon_threadsafe``: how other threads wake the loop.
        self.call_soon_threadsafe = call_soon_threadsafe or call_soon


class ServedStorage:
    """A ZODB storage served under *name*.

    *spool_budget* is shared by every storage of a server (see
    `zeo.server.blob_uploads.SpoolBudget`); without it this storage has its
    own, of ``config.max_spool_total`` bytes. *source* (an `ICommitSource`)
    reports commits made elsewhere; they and the storage's own
    ``registerDB`` notifications are merged with this server's commits by
    an `Announcer` (see zeo.server.commit_sources), started by `start`.
    """

    def __init__(self, name: str, storage: Any, config: ServerConfig,
                 hooks: LoopHooks, spool_budget: SpoolBudget | None = None,
                 iterator_budget: IteratorBudget | None = None,
                 source: Any = None) -> None:
        self.name = name
        self.storage = storage
        self.config = config
        self.hooks = hooks
        self._size_info = SizeInfo(storage, hooks.clock)
        self.read_only = bool(config.read_only or storage.isReadOnly())
        self.sessions: set[StorageSession] = set()
        self.stats = StorageStats(start_time=hooks.clock(),
                                  slow_threshold=config.monitor_slow_transaction)
        self.queue = InvalidationQueue(config.invalidation_queue_size)
        self.lock = CommitLock(
            call_soon=hooks.call_soon,
            clock=hooks.clock,
            timeout=config.transaction_timeout,
            call_later=hooks.call_later if config.transaction_timeout else None,
            on_timeout=self._transaction_timed_out if config.transaction_timeout else None,
            on_wait=self.stats.lock_waited,
            on_hold=self._lock_held,
        )
        self.supports_undo = bool(getattr(storage, "supportsUndo", lambda: False)())
        self.blob_dir = _blob_dir(storage)
        #: Where transactions spool and blob uploads land (see _spool_dir).
        self.spool_dir = _spool_dir(storage)
        self.spool_budget = spool_budget or SpoolBudget(config.max_spool_total)
        #: Blob uploads of this process (None: the storage has no blobs).
        self.uploads: UploadDirectory | None = None
        if IBlobStorage.providedBy(storage):
            remove_stale_uploads(self.spool_dir)
            self.uploads = UploadDirectory(self.spool_dir)
        guard_conflict_resolution(storage, config.conflict_resolution_packages)
        #: Open transaction iterators, shared by every storage of a server.
        self.iterator_budget = iterator_budget or IteratorBudget(config.max_server_iterators)
        #: The outcome of the pack running now, if any (see `pack`).
        self.packing: Delayed | None = None
        #: Commits run in threads, an instance per transaction (see
        #: zeo.server.commit_threads), else on the loop.
        self.commit_threads = wants_commit_threads(storage, config.commit_threads)
        self._idle_instances: list[Any] = []   # see new_instance
        self._instances_lock = threading.Lock()
        self._instances_closed = False
        #: Merges this server's commits with those made elsewhere.
        self.announcer = Announcer(self, hooks.call_soon_threadsafe, source)
        self.announcer.seed()
        self.started = False

    def start(self) -> None:
        """Listen to commits made elsewhere (on the loop, once): the
        storage's ``registerDB`` and the commit source, if any."""
        if self.started:
            return
        self.started = True
        register_db = getattr(self.storage, "registerDB", None)
        if register_db is not None:
            register_db(DatabaseStandIn(self.announcer))
        if self.announcer.source is not None:
            self.announcer.source.start(self.announcer.report, self.hooks.call_later)
            self.announcer.flush()

    def __repr__(self) -> str:
        return f"<ServedStorage {self.name!r} {self.storage!r}>"

    # -- sessions -----------------------------------------------------------

    def add(self, session: StorageSession) -> None:
        self.sessions.add(session)
        self.stats.connection_added(session.label)

    def remove(self, session: StorageSession) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.stats.connection_removed(session.label)

    # -- commits ------------------------------------------------------------

    def commit_finished(self, committer: StorageSession, tid: bytes,
                        oids: Iterable[bytes]) -> None:
        """Record a commit and tell every other session, in commit order
        (after older commits made elsewhere: see `Announcer.own`)."""
        self.announcer.own(committer, tid, tuple(oids))

    def new_instance(self) -> Any:
        """The storage a transaction's thread commits on (any thread; see
        zeo.server.commit_threads): an instance of an MVCC storage of its
        own, with a view as new as the database's (moved by
        `move_snapshot`: for RelStorage, at its first read), else the
        storage itself.
        Instances given back in a clean state are kept (at most
        `MAX_IDLE_INSTANCES`) and handed out again: a new one opens its
        own database connections."""
        storage = self.storage
        if not (IMVCCStorage.providedBy(storage) and hasattr(storage, "new_instance")):
            return storage
        with self._instances_lock:
            instance = self._idle_instances.pop() if self._idle_instances else None
        try:
            if instance is None:
                instance = storage.new_instance()
                guard_conflict_resolution(instance, self.config.conflict_resolution_packages)
            move_snapshot(instance)
        except BaseException:
            if instance is not None:
                self.release_instance(instance, reusable=False)
            raise
        return instance

    def release_instance(self, instance: Any, reusable: bool = True) -> None:
        """Give back what `new_instance` returned (any thread); *reusable*:
        no storage transaction is open on it and none failed."""
        if instance is self.storage:
            return
        with self._instances_lock:
            if reusable and not self._instances_closed \
                    and len(self._idle_instances) < MAX_IDLE_INSTANCES:
                self._idle_instances.append(instance)
                return
        getattr(instance, "release", instance.close)()

    @contextlib.contextmanager
    def borrowed(self) -> Iterator[Any]:
        """A storage a worker thread may call, for the duration (any thread).

        The storage itself where its own locks make that safe (FileStorage,
        as for ZEO). An instance of an MVCC storage (RelStorage) is not
        safe across threads -- its load cursor answers the loop's
        ``loadBefore`` -- so a thread is lent an instance of its own, as
        new as the database (`new_instance`); the main instance is only
        ever used on the loop.
        """
        instance = self.new_instance()
        reusable = False
        try:
            yield instance
            reusable = True
        except POSError:    # an answer (POSKeyError, ...), not a broken instance
            reusable = True
            raise
        finally:
            self.release_instance(instance, reusable)

    def iterator(self, start: bytes | None, stop: bytes | None) -> Iterator[Any]:
        """A transaction iterator (any thread; made in a worker thread):
        on an instance lent (see `borrowed`) until the iterator is
        closed, as its records are read later, on the loop."""
        instance = self.new_instance()
        try:
            iterator = iter(instance.iterator(start, stop))
        except BaseException:
            self.release_instance(instance, reusable=False)
            raise
        if instance is self.storage:
            return iterator
        return LentIterator(iterator, lambda: self.release_instance(instance))

    def register_answer(self, session: StorageSession) -> Any:
        """What a registering *session* is answered: ``lastTransaction``, or
        from a front on a hot standby a `Delayed` settled once the standby
        has caught up with the primary (zeo.server.relstorage_standby)."""
        catch_up = getattr(self.announcer.source, "catch_up", None)
        if catch_up is None or not self.started:
            return self.last_transaction()
        return catch_up(self.last_transaction, self.hooks.call_later,
                        lambda: self.hooks.call_soon(
                            session.peer.close, "the standby is behind the primary"))

    def last_transaction(self) -> bytes:
        """The newest tid announced to the clients (``lastTransaction``)."""
        return self.announcer.last_tid

    def broadcast_info(self) -> None:
        info = self.size_info()
        for session in self.sessions:
            session.notify("info", (info,))

    def claim_shared_blob(self, oid: bytes, filename: Any) -> str:
        """Claim the shared-blob-dir upload *filename* of *oid* and return
        where it is now: see `zeo.server.shared_blobs` for the rules."""
        if self.blob_dir is None or self.uploads is None:
            raise ValueError("this storage has no blob directory; storeBlobShared is refused")
        return claim_shared_blob(self.blob_dir, _fshelper(self.storage).getPathForOID(oid),
                                 filename, self.uploads.new_name)

    def size_info(self, run_in_thread: RunInThread | None = None) -> dict[str, int]:
        """What ``info`` tells clients (zeo.server.size_info: a storage on
        a database is asked in a thread given *run_in_thread*, now and
        then)."""
        return self._size_info(run_in_thread)

    def invalidations_from_queue(self, tid: bytes) -> tuple[bool, Any]:
        """``(True, answer)`` if the queue answers ``getInvalidations(tid)``
        by itself; ``(False, None)`` if iterating the storage might (the
        ``invalidation-age`` fallback, done in a thread: see
        `invalidations_by_iteration` and `merge_invalidations`)."""
        answer = self.queue.since(tid)
        if answer is not None or self.config.invalidation_age is None:
            return True, answer
        return False, None

    def iterate_invalidations(self, tid: bytes, now: float) -> Any:
        """The fallback of `invalidations_from_queue` (any thread)."""
        with self.borrowed() as storage:
            return invalidations_by_iteration(
                storage, tid, self.config.invalidation_age, now)

    def merge_invalidations(self, answer: Any) -> Any:
        """An iterated *answer*, brought up to the commits queued while it
        was computed (on the loop), so that it is what the loop would have
        answered now; None (drop the cache) if the queue cannot tell."""
        if answer is None:
            return None
        last_tid, oids = answer
        newer = self.queue.since(last_tid)
        if newer is None:
            return None
        newest, more = newer
        if not more:
            return answer
        return newest, tuple(sorted(set(oids).union(more)))

    def pack(self, run_in_thread: Callable[..., Delayed], t: float, referencesf: Any,
             who: str = "", log_fields: dict[str, Any] | None = None) -> Delayed:
        """Pack in a pack thread; one pack at a time per storage.

        A pack asked for while one runs is refused at once with
        ``StorageError("Already packing ...")``, as FileStorage refuses a
        second one: nothing queues, so closing the server waits for at most
        the running pack. When a pack ends every client learns the new size.

        Its start and end are logged, with the duration and the storage's
        size before and after, naming the connection *who* (*log_fields*:
        its log fields, see zeo.server.eventlog).
        A commit source's ``guard_pack``, if any, extends this to the other
        fronts of a shared database (zeo.server.relstorage_source).
        """
        if self.packing is not None:
            raise StorageError(
                f"Already packing storage {self.name!r}; this pack request is"
                " refused (try again when the running pack has finished)")
        extra = dict(log_fields or {})
        started, size_before = time.monotonic(), self.storage.getSize()
        logger.info("%s: pack of storage %r started (pack time %s, %d bytes)", who,
                    self.name, peer_repr(t), size_before,
                    extra={**extra, "size_before": size_before})
        guard = getattr(self.announcer.source, "guard_pack", None)

        def pack() -> Any:
            with self.borrowed() as storage:
                if guard is not None:   # one pack over several fronts
                    return guard(lambda: storage.pack(t, referencesf))
                return storage.pack(t, referencesf)

        done = self.packing = run_in_thread(pack, pack=True)

        def packed(error: BaseException | None, _: Any) -> None:
            self.packing = None
            duration = time.monotonic() - started
            extra.update(size_before=size_before, duration=round(duration, 3))
            if error is None:
                self.broadcast_info()   # every client learns the new size
                size_after = extra["size_after"] = self.storage.getSize()
                logger.info("%s: pack of storage %r finished in %.1f s: %d bytes, were %d",
                            who, self.name, duration, size_after, size_before, extra=extra)
            else:
                extra["reason"] = str(error)[:500]
                logger.error("%s: pack of storage %r failed after %.1f s: %s", who,
                             self.name, duration, error, extra=extra)

        done.add_callback(packed)
        return done

    def _transaction_timed_out(self, session: StorageSession) -> None:
        # The watchdog fires for the current lock holder only; the session
        # aborts its storage transaction, which releases the lock, and closes.
        self.stats.timeouts += 1
        session.transaction_timed_out(self.config.transaction_timeout)

    def _lock_held(self, session: StorageSession, seconds: float) -> None:
        # Called at every release by the holder, its storage transaction
        # over and the next holder not begun: the snapshot may move.
        self.stats.lock_held(session.label, seconds, self.hooks.clock())
        try:
            self.announcer.released()
        except Exception:
            logger.exception("storage %r: announcing commits made elsewhere failed;"
                             " trying again at the next release", self.name)

    # -- status -------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The ``server_status`` dict: the reference's keys plus ours."""
        return self.stats.as_dict(
            now=self.hooks.clock(),
            last_transaction=self.last_transaction(),
            lock=self.lock,
            describe_owner=lambda session: session.label,
            invalidation_queue_length=len(self.queue),
            max_labels=self.config.max_status_labels)

    def close(self) -> None:
        source = self.announcer.source
        if self.started and source is not None:
            source.stop()
        with self._instances_lock:
            self._instances_closed = True
            idle, self._idle_instances = self._idle_instances, []
        try:
            for instance in idle:
                getattr(instance, "release", instance.close)()
            if self.uploads is not None:
                self.uploads.close()
        finally:
            self.storage.close()


def _fshelper(storage: Any) -> Any:
    """The storage's blob file-system helper, or None. RelStorage's
    ``fshelper`` is a deprecated property that warns on every use; its
    blob helper holds the same object."""
    if isinstance(getattr(type(storage), "fshelper", None), property):
        return getattr(getattr(storage, "blobhelper", None), "fshelper", None)
    return getattr(storage, "fshelper", None)


def _blob_dir(storage: Any) -> str | None:
    return getattr(_fshelper(storage), "base_dir", None)


def _spool_dir(storage: Any) -> str:
    """Where a transaction's spool and blob uploads go: the storage's own
    temporary directory when it has blobs (so that uploads can be renamed
    into place), else the system's."""
    if IBlobStorage.providedBy(storage):
        return storage.temporaryDirectory()
    return tempfile.gettempdir()
