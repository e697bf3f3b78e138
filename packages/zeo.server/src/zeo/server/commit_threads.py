"""A transaction's storage-level two-phase commit, run off the event loop.

A storage in front of a database can block in ``tpc_vote`` or
``tpc_finish``: RelStorage waits there for row or advisory locks that a
transaction of another front holds. On the loop, that wait would stall
every client of the server. For such storages a session hands the
storage calls of its transaction to an `OffLoopCommit`; for the others
(FileStorage, MappingStorage) they stay on the loop, where a commit pays
for no thread switch. Which it is, is decided per served storage by the
``commit-threads`` setting (`wants_commit_threads`).

Rules:

1. An instance per transaction. The vote's thread takes an instance from
   the served storage (``new_instance()`` of an MVCC storage, whose
   instances are not thread-safe; a storage without it is used itself and
   must be thread-safe, as FileStorage is) and gives it back in the thread
   where the storage transaction ends (the served storage keeps a few
   clean ones for the next transactions and releases the others).
   The loop keeps the main instance for loads and never touches the
   transaction's.
2. One call at a time, in order. ``vote``, ``finish`` and the ending run
   one after the other on the server's commit threads; only those calls
   touch the instance, and ``_instance`` and ``_open`` (the storage
   transaction is open on it), each after the previous one returned.
   While a call runs, the loop leaves the transaction's spool alone.
3. The loop owns the outcome. Every result comes back as a `Delayed`
   settled on the loop, where the session changes its state; nothing of
   the session, the connection or the served storage is touched in a
   thread.
4. Ending frees everything once the thread returns. `end` (an abort, a
   disconnect, a transaction timeout) may come at any time: while a call
   runs, it waits for it, then in a thread it aborts the storage
   transaction if one is open and releases the instance, so nothing stays
   locked in the database; then its *then* runs on the loop (the session
   releases the commit lock and the spool there). The commit lock is
   therefore held until the database holds nothing of the transaction,
   and own commits still finish one at a time, in lock order.
5. A server that refuses threads (it is closing) gets the call run on the
   loop: no other call runs on the instance then (rule 2).
6. Seen before told.  An MVCC storage's loads see a commit only once the
   loop has moved their snapshot, just before it announces the commit
   (zeo.server.commit_sources, rule 7). A storage used itself (``on``
   without ``new_instance``) has no snapshot: its loads may see a commit a
   moment before its clients are told of it, newer data than they know
   of, which ZEO clients handle as any load racing an invalidation.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from ZODB.interfaces import IMVCCStorage
from ZODB.POSException import ConflictError

from zeo.server.config import COMMIT_THREADS
from zeo.server.results import Delayed

__all__ = ["OffLoopCommit", "wants_commit_threads"]

logger = logging.getLogger("zeo.server")

#: ``run_in_thread(function) -> Delayed`` settled on the loop.
RunInThread = Callable[[Callable[[], Any]], Delayed]


def wants_commit_threads(storage: Any, setting: str) -> bool:
    """Whether *storage*'s commits run off the loop: ``"on"``, ``"off"``, or
    ``"auto"``: for MVCC storages with ``new_instance`` (RelStorage), whose
    calls wait on a database."""
    if setting not in COMMIT_THREADS:
        raise ValueError(f"commit_threads must be one of {COMMIT_THREADS},"
                         f" not {setting!r:.100}")
    if setting == "auto":
        return bool(IMVCCStorage.providedBy(storage)
                    and callable(getattr(storage, "new_instance", None)))
    return setting == "on"


class OffLoopCommit:
    """The storage calls of one transaction *txn* (a `PendingTransaction`),
    in threads (see the module rules). *new_instance()* and
    *release_instance(instance, reusable)* come from the served storage;
    *run_in_thread* runs a function on a commit thread."""

    def __init__(self, txn: Any, new_instance: Callable[[], Any],
                 release_instance: Callable[[Any, bool], None],
                 run_in_thread: RunInThread) -> None:
        self.txn = txn
        self._new_instance = new_instance
        self._release_instance = release_instance
        self._run_in_thread = run_in_thread
        self._instance: Any = None   # rule 2
        self._open = False           # rule 2
        #: A call is running (on the loop's side of rule 2).
        self.running = False
        #: `end` was asked (then is pending or done).
        self.ended = False
        self._then_end: Callable[[], None] | None = None

    # -- the calls ------------------------------------------------------------

    def vote(self, on_conflict: Callable[[Any], None]) -> Delayed:
        """``txn.storage_vote`` on a new instance: ``(result, voted)``.
        *on_conflict* is called in the thread."""
        txn = self.txn

        def vote() -> tuple[list[Any], bool]:
            self._instance = txn.storage = self._new_instance()
            try:
                result, voted = txn.storage_vote(on_conflict)
            except ConflictError:
                self._drop_instance(reusable=True)   # aborted cleanly
                raise
            except BaseException:
                self._drop_instance(reusable=False)
                raise
            self._open = voted
            if not voted:   # conflicts handed back: aborted already
                self._drop_instance(reusable=True)
            return result, voted

        return self._run(vote)

    def finish(self) -> Delayed:
        """``tpc_finish`` on the instance: the committed tid."""
        txn = self.txn

        def finish() -> bytes:
            told: list[bytes] = []
            try:
                tid = self._instance.tpc_finish(txn.metadata, told.append)
            except BaseException:
                self._abort(reusable=False)
                raise
            self._open = False
            self._drop_instance(reusable=True)
            return tid if isinstance(tid, bytes) else told[-1]

        return self._run(finish)

    def end(self, then: Callable[[], None]) -> None:
        """Abort what is open and release the instance, after the running
        call if any; then call *then* on the loop (rule 4). Once only."""
        if self.ended:
            raise RuntimeError("this transaction has already ended")
        self.ended = True
        if self.running:
            self._then_end = then
        else:
            self._end(then)

    # -- internals ------------------------------------------------------------

    def _end(self, then: Callable[[], None]) -> None:
        if self._instance is None:
            then()
            return
        outcome = self._submit(self._abort)

        def ended(error: BaseException | None, _: Any) -> None:
            try:
                if error is not None:
                    logger.error("aborting a transaction in its commit thread failed: %.500s",
                                 error)
                    if self._instance is not None:   # it never ran: the server closed
                        self._abort(reusable=False)
            except Exception:
                logger.exception("aborting a transaction on the event loop failed")
            finally:
                then()

        outcome.add_callback(ended)

    def _run(self, function: Callable[[], Any]) -> Delayed:
        if self.running or self.ended:
            raise RuntimeError("a storage call of this transaction is running or it ended")
        self.running = True
        result = Delayed()
        outcome = self._submit(function)

        def settled(error: BaseException | None, value: Any) -> None:
            self.running = False
            try:
                if error is None:
                    result.resolve(value)
                else:
                    result.fail(error)
            finally:
                then, self._then_end = self._then_end, None
                if then is not None:
                    self._end(then)

        outcome.add_callback(settled)
        return result

    def _submit(self, function: Callable[[], Any]) -> Delayed:
        try:
            return self._run_in_thread(function)
        except Exception:   # rule 5: the server is closing
            done = Delayed()
            done.settle_with(function)
            return done

    def _abort(self, reusable: bool = True) -> None:
        """In the thread: abort an open storage transaction, release."""
        try:
            if self._open:
                self._open = False
                self._instance.tpc_abort(self.txn.metadata)
        except BaseException:
            reusable = False
            raise
        finally:
            self._drop_instance(reusable)

    def _drop_instance(self, reusable: bool) -> None:
        instance, self._instance = self._instance, None
        self._open = False
        if instance is not None:
            self._release_instance(instance, reusable)
