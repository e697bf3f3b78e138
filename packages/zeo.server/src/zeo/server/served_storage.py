"""One storage served under a name, and what its sessions share.

A served storage owns the commit lock (with its transaction-timeout
watchdog), the invalidation queue, the status counters and the set of
registered sessions. Sessions call `commit_finished` from inside the
storage's ``tpc_finish`` callback, so the queue and the fan-out to the other
sessions happen while the storage still holds its own commit lock: no
session can observe the new tid before the invalidations are on their way.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ZODB.interfaces import IBlobStorage

from zeo.server.blob_uploads import SpoolBudget, UploadDirectory, remove_stale_uploads
from zeo.server.commit_lock import CommitLock
from zeo.server.config import ServerConfig
from zeo.server.conflicts import guard_conflict_resolution
from zeo.server.invalidation_queue import InvalidationQueue, find_invalidations
from zeo.server.stats import StorageStats

if TYPE_CHECKING:
    from zeo.server.session import StorageSession

logger = logging.getLogger(__name__)

Z64 = b"\0" * 8


class LoopHooks:
    """The three event-loop services the core needs, passed in explicitly.

    In production these are ``loop.call_soon``, ``loop.call_later`` and
    ``time.time``; nothing in the core reads a clock or a loop by itself.
    """

    __slots__ = ("call_soon", "call_later", "clock")

    def __init__(self, call_soon: Callable[..., Any], call_later: Callable[..., Any],
                 clock: Callable[[], float] = time.time) -> None:
        self.call_soon = call_soon
        self.call_later = call_later
        self.clock = clock


class ServedStorage:
    """A ZODB storage served under *name*.

    *spool_budget* is shared by every storage of a server (see
    `zeo.server.blob_uploads.SpoolBudget`); without it this storage has its
    own, of ``config.max_spool_total`` bytes.
    """

    def __init__(self, name: str, storage: Any, config: ServerConfig,
                 hooks: LoopHooks, spool_budget: SpoolBudget | None = None) -> None:
        self.name = name
        self.storage = storage
        self.config = config
        self.hooks = hooks
        self.read_only = bool(config.read_only or storage.isReadOnly())
        self.sessions: set[StorageSession] = set()
        self.stats = StorageStats(start_time=hooks.clock())
        self.queue = InvalidationQueue(config.invalidation_queue_size)
        self.queue.seed_from(storage)
        self.lock = CommitLock(
            call_soon=hooks.call_soon,
            clock=hooks.clock,
            timeout=config.transaction_timeout,
            call_later=hooks.call_later if config.transaction_timeout else None,
            on_timeout=self._transaction_timed_out if config.transaction_timeout else None,
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
        """Record a commit and tell every other session, in commit order."""
        oids = tuple(oids)
        self.queue.append(tid, oids)
        for session in self.sessions:
            if session is not committer:
                session.notify("invalidateTransaction", (tid, oids))

    def broadcast_info(self) -> None:
        info = self.size_info()
        for session in self.sessions:
            session.notify("info", (info,))

    def size_info(self) -> dict[str, int]:
        return {"length": len(self.storage), "size": self.storage.getSize()}

    def invalidations_since(self, tid: bytes) -> tuple[bytes, tuple[bytes, ...]] | None:
        return find_invalidations(
            self.queue, self.storage, tid,
            invalidation_age=self.config.invalidation_age, now=self.hooks.clock())

    def _transaction_timed_out(self, session: StorageSession) -> None:
        # The watchdog fires for the current lock holder only; the session
        # aborts its storage transaction, which releases the lock, and closes.
        session.transaction_timed_out(self.config.transaction_timeout)

    # -- status -------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The ``server_status`` dict: the reference's keys plus ours."""
        return self.stats.as_dict(
            now=self.hooks.clock(),
            last_transaction=self.storage.lastTransaction() or Z64,
            lock=self.lock,
            describe_owner=lambda session: session.label,
            invalidation_queue_length=len(self.queue),
            max_labels=self.config.max_status_labels)

    def close(self) -> None:
        try:
            if self.uploads is not None:
                self.uploads.close()
        finally:
            self.storage.close()


def _blob_dir(storage: Any) -> str | None:
    helper = getattr(storage, "fshelper", None)
    return getattr(helper, "base_dir", None)


def _spool_dir(storage: Any) -> str:
    """Where a transaction's spool and blob uploads go: the storage's own
    temporary directory when it has blobs (so that uploads can be renamed
    into place), else the system's."""
    if IBlobStorage.providedBy(storage):
        return storage.temporaryDirectory()
    return tempfile.gettempdir()
