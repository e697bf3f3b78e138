"""One ZEO transaction on the server, from ``tpc_begin`` to finish or abort.

Theory of operation
-------------------

``tpc_begin`` only records the metadata. The one-way calls that follow
(stores, deletes, read checks, restores, undos, blob uploads) go to a
`TransactionSpool`; nothing touches the storage and no lock is held, so a
slow upload delays nobody. ``vote`` takes the storage's commit lock and
then `PendingTransaction.vote` replays the spool into the storage inside a
storage-level two-phase commit. After a successful vote the storage
transaction stays open (and the lock held) until ``tpc_finish`` or
``tpc_abort``.

Rules:

1. If the vote fails, the storage transaction is aborted at once; the
   caller releases the lock and forgets this transaction (the client's
   following ``tpc_abort`` is then a no-op), except in
   client-conflict-resolution mode where unresolved conflicts are returned
   for the client to resolve and the spool is kept for another vote.
2. The oids to invalidate are every oid the transaction changed: stored
   (new or not), deleted, restored, blob-stored and undone. The reference
   forgets deletions and restores; other clients then keep serving them.
"""

from __future__ import annotations

import enum
import os
import time
from typing import Any, Callable

from persistent.TimeStamp import TimeStamp
from ZODB.Connection import TransactionMetaData
from ZODB.POSException import ConflictError, StorageTransactionError
from ZODB.utils import tid_repr
from zeo.protocol import RemoteProtocolError, peer_repr, safe_loads, server_pickle_globals

from zeo.server.blob_uploads import SpoolBudget, UploadDirectory
from zeo.server.spool import (
    CheckCurrent, Delete, Restore, Store, StoreBlob, TransactionSpool, Undo)

__all__ = [
    "Phase",
    "PendingTransaction",
    "STATUSES",
    "MAX_TID_AHEAD",
]


class Phase(enum.Enum):
    SPOOLING = "spooling"    # before vote: one-way calls are spooled
    VOTING = "voting"        # vote asked, waiting for the commit lock
    VOTED = "voted"          # storage transaction open, lock held
    FINISHING = "finishing"  # tpc_finish running in a commit thread


class PendingTransaction:
    """The server side of one client transaction.

    *txn_id* is whatever the client uses to name its transaction (the
    reference sends an int); calls naming another id are refused.
    """

    def __init__(self, storage: Any, txn_id: Any, user: Any, description: Any,
                 extension: Any, tid: bytes | None, status: str, *,
                 spool_dir: str, max_spool_size: int | None,
                 client_conflict_resolution: bool,
                 spool_budget: SpoolBudget | None = None) -> None:
        self.storage = storage
        self.txn_id = txn_id
        self.metadata = TransactionMetaData(
            _text_or_bytes(user, "user"), _text_or_bytes(description, "description"),
            _extension(extension))
        self.tid = _checked_tid(tid, status)
        self.status = status
        self.phase = Phase.SPOOLING
        #: When tpc_begin came (epoch seconds; shown by the monitor).
        self.began = time.time()
        self.spool = TransactionSpool(spool_dir, max_size=max_spool_size,
                                      budget=spool_budget)
        self.client_conflict_resolution = client_conflict_resolution
        self.undone_oids: set[bytes] = set()
        self.blob_upload: Any = None     # open temp file between Start and End
        self.blob_upload_path: str | None = None
        self.blob_upload_size = 0
        #: The upload directory this transaction put files in, if any.
        self.uploads: UploadDirectory | None = None
        #: Its storage calls' thread (a zeo.server.commit_threads
        #: `OffLoopCommit`), or None: they run on the loop.
        self.off_loop: Any = None

    def check(self, txn_id: Any) -> None:
        if txn_id != self.txn_id:
            raise StorageTransactionError(
                f"this connection's transaction is {peer_repr(self.txn_id)},"
                f" not {peer_repr(txn_id)}")

    # -- blob uploads ---------------------------------------------------------

    # A blob's bytes count against the spool's bounds as they arrive
    # (TransactionSpool.add_blob_bytes), before they are written; the file
    # is in the storage's UploadDirectory, so it cannot outlive the server.

    def start_blob(self, uploads: UploadDirectory) -> None:
        self.discard_blob_upload()
        self.uploads = uploads
        self.blob_upload, self.blob_upload_path = uploads.new_file()

    def blob_chunk(self, chunk: bytes) -> None:
        if self.blob_upload is None:
            raise StorageTransactionError("storeBlobChunk without storeBlobStart")
        size = memoryview(chunk).nbytes   # bytes, or a view of received bytes
        self.spool.add_blob_bytes(size)
        self.blob_upload_size += size
        self.blob_upload.write(chunk)

    def end_blob(self, oid: bytes, serial: bytes, data: bytes) -> None:
        path = self.blob_upload_path
        if self.blob_upload is None or path is None:
            raise StorageTransactionError("storeBlobEnd without storeBlobStart")
        self.blob_upload.close()
        try:
            self.spool.store_blob(oid, serial, data, path)
        except BaseException:
            self.discard_blob_upload()
            raise
        # The spool owns the file now, and keeps counting its bytes.
        self.blob_upload = self.blob_upload_path = None
        self.blob_upload_size = 0

    def discard_blob_upload(self) -> None:
        if self.blob_upload is not None:
            self.blob_upload.close()
            _remove(self.blob_upload_path)
            self.blob_upload = self.blob_upload_path = None
            self.spool.remove_blob_bytes(self.blob_upload_size)
            self.blob_upload_size = 0

    # -- the vote -------------------------------------------------------------

    def vote(self, on_conflict: Callable[[ConflictError], None]) -> list[Any]:
        """Replay the spool into the storage and vote (on the loop).

        Returns the reference's vote result: oids the storage resolved or
        undid, or (client-conflict-resolution mode) the conflict dicts. On
        any exception the storage transaction is already aborted.
        """
        result, voted = self.storage_vote(on_conflict)
        self.phase = Phase.VOTED if voted else Phase.SPOOLING
        return result

    def storage_vote(self, on_conflict: Callable[[ConflictError], None]
                     ) -> tuple[list[Any], bool]:
        """The storage side of `vote`: ``(result, voted)``; *voted* is
        False when conflicts are handed back (the storage transaction is
        then aborted, as on any exception). It touches only the storage,
        the spool and ``undone_oids``, never ``phase``: it may run in a
        worker thread (zeo.server.commit_threads) while the loop owns the
        rest."""
        storage = self.storage
        if self.tid is None:
            storage.tpc_begin(self.metadata)
        else:
            last = storage.lastTransaction()
            if self.tid <= last:
                raise StorageTransactionError(
                    f"transaction id {tid_repr(self.tid)} is not after the last"
                    f" one, {tid_repr(last)}")
            storage.tpc_begin(self.metadata, self.tid, self.status)
        conflicts: dict[bytes, dict[str, Any]] = {}
        try:
            self.undone_oids.clear()
            for operation in self.spool:
                self._apply(operation, conflicts, on_conflict)
            if conflicts:
                storage.tpc_abort(self.metadata)
                return list(conflicts.values()), False
            resolved = storage.tpc_vote(self.metadata) or ()
        except BaseException:
            storage.tpc_abort(self.metadata)
            raise
        return list(resolved) + sorted(self.undone_oids), True

    def _apply(self, operation: Any, conflicts: dict[bytes, dict[str, Any]],
               on_conflict: Callable[[ConflictError], None]) -> None:
        storage, txn = self.storage, self.metadata
        kind = type(operation)
        if kind is Store or kind is StoreBlob:
            try:
                if kind is Store:
                    storage.store(operation.oid, operation.serial, operation.data, "", txn)
                else:
                    storage.storeBlob(operation.oid, operation.serial, operation.data,
                                      operation.blob_path, "", txn)
            except ConflictError as error:
                on_conflict(error)
                if not (self.client_conflict_resolution and error.serials):
                    raise
                conflicts[operation.oid] = {
                    "oid": operation.oid, "serials": error.serials,
                    "data": operation.data}
            else:
                # A later store of the same oid (the client's resolution)
                # settles an earlier conflict.
                conflicts.pop(operation.oid, None)
        elif kind is CheckCurrent:
            storage.checkCurrentSerialInTransaction(operation.oid, operation.serial, txn)
        elif kind is Delete:
            storage.deleteObject(operation.oid, operation.serial, txn)
        elif kind is Restore:
            storage.restore(operation.oid, operation.serial, operation.data, "",
                            operation.prev_txn, txn)
        elif kind is Undo:
            result = storage.undo(operation.undo_id, txn)
            # ZODB 5 storages return (tid, oids); older ones just oids.
            oids = result[1] if isinstance(result, tuple) and len(result) == 2 \
                and isinstance(result[0], bytes) else result
            self.undone_oids.update(oids or ())
        else:  # pragma: no cover - the spool only yields the kinds above
            raise TypeError(f"unknown spooled operation {operation!r}")

    def changed_oids(self) -> set[bytes]:
        """Every oid this transaction changed (Rule 2)."""
        return set(self.spool.oids) | self.undone_oids

    def finish(self, callback: Callable[[bytes], None]) -> bytes:
        if self.phase is not Phase.VOTED:
            raise StorageTransactionError("tpc_finish before a successful vote")
        tid = self.storage.tpc_finish(self.metadata, callback)
        self.phase = Phase.SPOOLING
        return tid

    def abort(self) -> None:
        """Abort the storage transaction if one is open; idempotent."""
        if self.phase is Phase.VOTED:
            self.phase = Phase.SPOOLING
            self.storage.tpc_abort(self.metadata)

    def close(self) -> None:
        try:
            self.discard_blob_upload()
            self.spool.close()
        finally:
            if self.uploads is not None:
                self.uploads.remove_if_empty()


def _text_or_bytes(value: Any, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"transaction {what} must be bytes or str, not {type(value).__name__}")


def _extension(value: Any) -> dict[Any, Any]:
    # Bytes would be stored as they are, and unpickled by an unrestricted
    # unpickler whenever someone reads the history: only a pickled dict of
    # plain values is taken, and stored as ZODB pickles it.
    if value is None:
        return {}
    if isinstance(value, bytes):
        try:
            value = safe_loads(value, server_pickle_globals()) if value else {}
        except RemoteProtocolError as error:
            raise TypeError(f"transaction extension bytes must be a pickled dict of"
                            f" plain values: {error}") from None
    if isinstance(value, dict):
        return value
    raise TypeError(f"transaction extension must be a dict, not {type(value).__name__}")


#: Transaction statuses a client may ask for (FileStorage's normal, packed
#: and undone); "c" (checkpoint) or anything longer would corrupt the file.
STATUSES = (" ", "p", "u")
#: How far after the server's clock a client-chosen tid may be: one near
#: the end of time would leave no room for later commits.
MAX_TID_AHEAD = 24 * 3600.0


def _checked_tid(tid: Any, status: Any) -> bytes | None:
    if not isinstance(status, str) or status not in STATUSES:
        raise ValueError(f"transaction status must be one of {STATUSES!r},"
                         f" not {peer_repr(status)}")
    if tid is None:
        return None
    if not isinstance(tid, bytes) or len(tid) != 8:
        raise TypeError(f"a transaction id is 8 bytes, not {peer_repr(tid)}")
    if TimeStamp(tid).timeTime() > time.time() + MAX_TID_AHEAD:
        raise ValueError(f"transaction id {tid_repr(tid)} is more than a day in the future")
    return tid


def _remove(path: str | None) -> None:
    if path:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
