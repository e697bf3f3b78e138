"""A session's vote, finish and abort: the end of its transaction.

`CommitSteps` is the part of `zeo.server.session.StorageSession` that
takes a transaction from ``vote`` to ``tpc_finish`` or ``tpc_abort``:
waiting for the storage's commit lock (zeo.server.commit_lock), replaying
the spool into the storage (zeo.server.pending) and answering. A served
storage whose commits can block (``commit_threads``) has the storage calls
run in a commit thread, on an instance of its own per transaction
(zeo.server.commit_threads); the others run them on the loop. Either way
every vote and finish is answered, and the lock is released once the
storage holds nothing of the transaction.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ZODB.POSException import ConflictError, StorageTransactionError
from zeo.protocol import peer_repr

from zeo.server.commit_threads import OffLoopCommit
from zeo.server.connection_log import CommitTimer, session_fields
from zeo.server.pending import PendingTransaction, Phase
from zeo.server.results import Delayed

__all__ = ["CommitSteps"]

logger = logging.getLogger("zeo.server")


class CommitSteps:
    """The transaction-ending calls of a session (a mixin)."""

    #: The served storage (a `ServedStorage`), once registered.
    served: Any
    txn: PendingTransaction | None
    peer: Any
    _waiting_vote: Delayed | None
    _commit_timer: CommitTimer

    if TYPE_CHECKING:
        @property
        def name(self) -> str: ...

        def notify(self, method: str, args: tuple[Any, ...]) -> None: ...

        def _transaction(self, txn_id: Any) -> PendingTransaction: ...

    #: Transactions of this session whose commit thread has not ended yet
    #: (their lock and spool are released when it has: commit_threads).
    _ending = 0

    def vote(self, txn_id: Any) -> Any:
        txn = self._transaction(txn_id)
        if txn.phase is not Phase.SPOOLING:
            raise StorageTransactionError(f"Already voting ({txn.phase.value})")
        if self._ending:
            # This session still holds the commit lock for the previous one.
            raise ConflictError(message="this connection's previous transaction is still"
                                " being aborted in the storage; retry the transaction")
        txn.discard_blob_upload()
        txn.phase = Phase.VOTING
        asked = self.served.hooks.clock()
        delayed = Delayed()
        if self.served.lock.request(
                self, lambda: self._vote_now(txn, delayed),
                lambda waited: self._vote_dropped(txn, delayed, waited)):
            self._commit_timer.ask(asked, granted=True)
            return self._vote(txn)
        self._commit_timer.ask(asked, granted=False)
        self._waiting_vote = delayed
        return delayed

    def _vote_now(self, txn: PendingTransaction, delayed: Delayed) -> None:
        self._waiting_vote = None
        if self.txn is not txn:   # aborted or disconnected while waiting
            self.served.lock.release(self)
            if not delayed.settled:
                delayed.fail(StorageTransactionError(
                    "the transaction was aborted while its vote waited for"
                    " the commit lock"))
            return
        self._commit_timer.grant(self.served.hooks.clock())
        stalled = self.peer.writing_paused_for
        limit = self.served.config.reader_stall_timeout
        if limit is not None and stalled >= limit:
            # A client that does not read would hold the lock, unanswerable,
            # until the transaction timeout: pass it over (the lock goes on
            # to the next waiter) with a reply it can retry on.
            self.served.stats.refusals["reader-stall-timeout"] += 1
            self._refuse_vote(
                delayed, f"its turn for the commit lock came while its replies had"
                f" been left unread for {stalled:.1f} s (reader-stall-timeout"
                f" {limit:g} s); passed over",
                "the commit lock was passed over because this client was not"
                " reading its replies; retry the transaction")
            return
        try:
            result = self._vote(txn)
        except Exception as error:
            delayed.fail(error)
        else:
            if isinstance(result, Delayed):   # voting in a thread
                result.add_callback(lambda error, value: delayed.fail(error)
                                    if error is not None else delayed.resolve(value))
            else:
                delayed.resolve(result)

    def _vote_dropped(self, txn: PendingTransaction, delayed: Delayed,
                      waited: float) -> None:
        """The holder timed out while this vote waited (see commit_lock,
        Rule 5)."""
        if self.txn is not txn or delayed.settled:
            return   # aborted or disconnected meanwhile: already answered
        timeout = self.served.config.transaction_timeout
        self.served.stats.refusals["transaction-timeout"] += 1
        self._refuse_vote(
            delayed, f"its vote waited {waited:.1f} s for the commit lock, whose"
            f" holder timed out; dropped from the queue",
            f"the commit lock was busy for {waited:.1f} s and its holder timed"
            f" out after {timeout:g} s; retry the transaction")

    def _refuse_vote(self, delayed: Delayed, why: str, message: str) -> None:
        """Answer a waiting vote with a ConflictError (a TransientError:
        ZODB applications retry it) and abort its transaction."""
        logger.warning("%.200s: %s; answered with ConflictError", self.name, why)
        self._waiting_vote = None
        try:
            delayed.fail(ConflictError(message=message))
        finally:
            self._forget_transaction(aborted=True)

    def _vote(self, txn: PendingTransaction) -> Any:
        served = self.served
        stats = served.stats
        if served.commit_threads:
            return self._vote_off_loop(txn)
        try:
            result = txn.vote(on_conflict=lambda error: _count_conflict(stats))
        except BaseException:
            self._forget_transaction(aborted=True)
            raise
        if txn.phase is not Phase.VOTED:
            # Client conflict resolution: hand the conflicts back, keep the
            # spool for the next vote, and let others commit meanwhile.
            self._commit_timer.end(self, "resolving conflicts")
            served.lock.release(self)
        return result

    def _vote_off_loop(self, txn: PendingTransaction) -> Delayed:
        """`_vote` in a commit thread (see zeo.server.commit_threads); the
        outcome is taken on the loop, where the session may have forgotten
        the transaction meanwhile (its thread then aborts it)."""
        served = self.served
        if txn.off_loop is None:
            txn.off_loop = OffLoopCommit(
                txn, served.new_instance, served.release_instance,
                lambda function: self.peer.run_in_thread(function, commit=True))
        conflicts: list[None] = []   # appended to in the thread
        reply = Delayed()

        def voted(error: BaseException | None, outcome: Any) -> None:
            served.stats.conflicts += len(conflicts)
            if self.txn is not txn:
                reply.fail(error or StorageTransactionError(
                    "the transaction was aborted while it voted"))
                return
            if error is not None:
                self._forget_transaction(aborted=True)
                reply.fail(error)
                return
            result, storage_voted = outcome
            txn.phase = Phase.VOTED if storage_voted else Phase.SPOOLING
            if not storage_voted:   # client conflict resolution, as in _vote
                self._commit_timer.end(self, "resolving conflicts")
                served.lock.release(self)
            reply.resolve(result)

        try:
            running = txn.off_loop.vote(lambda error: conflicts.append(None))
        except BaseException:
            self._forget_transaction(aborted=True)
            raise
        running.add_callback(voted)
        return reply

    def tpc_finish(self, txn_id: Any) -> Any:
        txn = self.txn
        if txn is None or txn.txn_id != txn_id:
            logger.warning("%s: tpc_finish for unknown transaction %s", self.name,
                           peer_repr(txn_id))
            return None
        if txn.off_loop is not None:
            return self._finish_off_loop(txn)
        served = self.served
        oids = txn.changed_oids()

        def committed(tid: bytes) -> None:
            # Called by the storage under its commit lock (see ServedStorage).
            served.commit_finished(self, tid, sorted(oids))

        try:
            tid = txn.finish(committed)
        except BaseException:
            self._forget_transaction(aborted=True)
            raise
        served.stats.commits += 1
        self.notify("info", (served.size_info(self.peer.run_in_thread),))
        self._forget_transaction(aborted=False)
        return tid

    def _finish_off_loop(self, txn: PendingTransaction) -> Delayed:
        """`tpc_finish` in a commit thread. Back on the loop the commit is
        announced (the main instance sees it first: commit_sources, rule
        7), then the committer is answered; a commit that finished after
        its session forgot it (a timeout, a disconnection) is announced
        all the same."""
        if txn.phase is not Phase.VOTED:
            self._forget_transaction(aborted=True)
            raise StorageTransactionError("tpc_finish before a successful vote")
        served = self.served
        oids = sorted(txn.changed_oids())
        txn.phase = Phase.FINISHING
        reply = Delayed()

        def finished(error: BaseException | None, tid: Any) -> None:
            if error is not None:
                served.announcer.finished(committed=False)
                if self.txn is txn:
                    self._forget_transaction(aborted=True)
                reply.fail(error)
                return
            try:
                served.announcer.finished(committed=True)
                served.commit_finished(self, tid, oids)
            except Exception:   # committed all the same: answer, release
                logger.exception("%.200s: announcing commit %s failed", self.name, tid.hex())
            served.stats.commits += 1
            if self.txn is txn:
                self.notify("info", (served.size_info(self.peer.run_in_thread),))
                self._forget_transaction(aborted=False)
            reply.resolve(tid)

        served.announcer.finishing()   # commit_sources, rule 8
        try:
            running = txn.off_loop.finish()
        except BaseException:
            served.announcer.finished(committed=False)
            raise
        running.add_callback(finished)
        return reply

    def tpc_abort(self, txn_id: Any) -> None:
        txn = self.txn
        if txn is None or txn.txn_id != txn_id:
            return None  # unknown or already forgotten: silently nothing, as ZEO
        self._forget_transaction(aborted=True)
        return None

    def _forget_transaction(self, aborted: bool) -> None:
        txn, self.txn = self.txn, None
        if txn is None:
            return
        waiting, self._waiting_vote = self._waiting_vote, None
        if waiting is not None and not waiting.settled:
            # Leaving the lock's queue drops the callback that would have
            # answered the vote: answer it now.
            waiting.fail(StorageTransactionError(
                "the transaction was aborted while its vote waited for the"
                " commit lock"))
        served = self.served
        self._commit_timer.end(self, "aborted" if aborted else "committed")

        def release() -> None:
            try:
                served.lock.release(self)
            finally:
                txn.close()

        if txn.off_loop is not None:
            # The lock and the spool wait for the thread (commit_threads, rule 4).
            if aborted and txn.phase is not Phase.FINISHING:   # else it commits
                served.stats.aborts += 1
            served.stats.active_txns -= 1
            self._ending += 1

            def ended() -> None:
                self._ending -= 1
                release()

            txn.off_loop.end(ended)
            return
        try:
            if aborted:
                txn.abort()
                served.stats.aborts += 1
        finally:
            served.stats.active_txns -= 1
            release()

    def transaction_timed_out(self, timeout: float | None) -> None:
        logger.critical(
            "%s: transaction timeout after %s seconds holding the commit lock of"
            " storage %r; aborting it and closing the connection", self.name, timeout,
            self.served.name if self.served else None,
            extra=session_fields(self, reason="transaction timeout", held=timeout))
        self._commit_timer.forget()   # this line says it all
        self._forget_transaction(aborted=True)
        self.peer.close("transaction timeout")


def _count_conflict(stats: Any) -> None:
    stats.conflicts += 1
