"""The server side of one client connection: the ZEO 5/6 RPC surface.

A `StorageSession` is pure: it knows nothing of sockets or encodings. The
network adapter (`zeo.server.adapter`) decodes a call, checks the name
against `EXPOSED_METHODS`, calls the method of the same name, and, for a
call (not a one-way message), replies with what it returns (a value, or a
`Delayed` settled later). Any method may come either way, as the reference
server allows: an exception from a call becomes an error reply; one from a
one-way message closes the connection, since it cannot be reported.

The session talks back through its *peer* (see `ISessionPeer`): one-way
messages to the client (``info``, ``invalidateTransaction``, blob chunks),
closing the connection, and running slow storage calls off the loop.

Calls whose cost grows with the database or an object's history
(``undoLog``, ``undoInfo``, ``history``, ``loadSerial``, ``iterator_start``,
``getInvalidations`` beyond the queue) go through the session's
`SlowCalls` lane and reply with a `Delayed`; the thread rules are in
zeo.server.slow_calls. The others run on the loop. ``vote``, ``tpc_finish``
and ``tpc_abort`` are in `zeo.server.commit_steps.CommitSteps`; a storage
whose commits can block (RelStorage) has them run in commit threads
(zeo.server.commit_threads).

It logs registrations, timeouts and slow commits (zeo.server.connection_log).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ZODB.POSException import ReadOnlyError, StorageTransactionError
from ZODB.serialize import referencesf
from zope.interface import implementer, providedBy

from zeo.protocol import peer_repr

from zeo.server.arguments import (
    checked_count, checked_id8, checked_label, checked_record, checked_serial, checked_tid)
from zeo.server.commit_steps import CommitSteps
from zeo.server.config import DEFAULT_MAX_LABEL_LENGTH
from zeo.server.connection_log import CommitTimer, session_fields
from zeo.server.interfaces import IStorageSession
from zeo.server.iterators import IteratorRegistry
from zeo.server.load_refs import RefLoads
from zeo.server.pending import PendingTransaction, Phase
from zeo.server.results import Delayed, chain
from zeo.server.served_storage import ServedStorage
from zeo.server.shared_blobs import BlobMessages, open_blob
from zeo.server.slow_calls import SlowCalls

__all__ = [
    "EXPOSED_METHODS", "MAX_NEW_OIDS", "ONE_WAY_METHODS", "SYNC_METHODS", "StorageSession",
]

logger = logging.getLogger("zeo.server")

#: Calls answered with a reply. Everything else but ONE_WAY_METHODS is
#: refused and closes the connection. Either kind may come in either mode,
#: as the reference server accepts it (see `EXPOSED_METHODS`).
SYNC_METHODS = frozenset({
    "register", "get_info", "lastTransaction", "getInvalidations", "ping",
    "new_oids", "loadBefore", "loadBeforeRefs", "loadSerial", "getTid", "history",
    "record_iternext", "undoLog", "undoInfo", "pack", "vote", "tpc_finish",
    "tpc_abort", "sendBlob", "iterator_start", "iterator_next",
    "iterator_record_start", "iterator_record_next", "server_status",
})
#: Calls without a reply (message id 0).
ONE_WAY_METHODS = frozenset({
    "tpc_begin", "storea", "deleteObject", "checkCurrentSerialInTransaction",
    "restorea", "undoa", "storeBlobStart", "storeBlobChunk", "storeBlobEnd",
    "storeBlobShared", "iterator_gc", "set_client_label",
})
#: What a client may call, as a call (answered, errors included) or as a
#: one-way message (not answered; an error closes the connection).
EXPOSED_METHODS = SYNC_METHODS | ONE_WAY_METHODS

#: Most oids handed out by one ``new_oids`` call, as in the reference.
MAX_NEW_OIDS = 100


@implementer(IStorageSession)
class StorageSession(CommitSteps, RefLoads):
    """See `IStorageSession`; vote, finish and abort are in `CommitSteps`,
    ``loadBeforeRefs`` in `RefLoads`."""

    # Set by `register`, with `served`: the adapter calls no other method
    # before it, so the RPC methods below take them as set.
    _served: ServedStorage
    _iterators: IteratorRegistry
    _slow: SlowCalls

    def __init__(self, storages: dict[str, ServedStorage], peer: Any,
                 label: str, max_label_length: int = DEFAULT_MAX_LABEL_LENGTH) -> None:
        self._storages = storages
        self.peer = peer
        self.label = label
        self._max_label_length = max_label_length
        self._label_cut_logged = False
        self.served: ServedStorage | None = None
        self.read_only = True
        self.txn: PendingTransaction | None = None
        #: The reply to a vote that waits for the commit lock.
        self._waiting_vote: Delayed | None = None
        self._commit_timer = CommitTimer()   # for the slow-commit line

    def __repr__(self) -> str:
        return f"<StorageSession {self.label}>"

    @property
    def name(self) -> str:
        """This connection in log lines: the peer's label (the client's
        label and address), else ours."""
        return getattr(self.peer, "label", None) or self.label

    @property
    def registered(self) -> bool:
        return self.served is not None

    @property
    def in_transaction(self) -> bool:
        return self.txn is not None

    def notify(self, method: str, args: tuple[Any, ...]) -> None:
        self.peer.notify(method, args)

    # -- registration and information ---------------------------------------

    def register(self, storage_name: str, read_only: Any) -> bytes:
        if self.served is not None:
            raise ValueError("duplicate register() call")
        served = self._storages.get(storage_name)
        if served is None:
            raise ValueError(f"unknown storage: {peer_repr(storage_name)}")
        if served.read_only and not read_only:
            raise ReadOnlyError()
        self.read_only = bool(read_only) or served.read_only
        self._iterators = IteratorRegistry(served.config.max_iterators,
                                           served.iterator_budget)
        self._slow = SlowCalls(self.peer.run_in_thread, served.config.max_waiting_calls)
        self.served = self._served = served
        served.add(self)
        logger.info("%s: registered with storage %r, %s", self.name, served.name,
                    "read-only" if self.read_only else "read-write",
                    extra=session_fields(self, storage=served.name, read_only=self.read_only))
        return served.register_answer(self)

    def _storage(self) -> Any:
        return self._served.storage

    def get_info(self) -> dict[str, Any]:
        """The storage's description; its length and size as ``info``
        gives them (a database's are counted in a thread, now and then:
        see zeo.server.size_info)."""
        storage = self._storage()
        interfaces = tuple(
            (interface.__module__, interface.__name__)
            for interface in providedBy(storage).__iro__)
        figures = self._served.size_info(self.peer.run_in_thread)
        return {
            "length": figures["length"],
            "size": figures["size"],
            "name": storage.getName(),
            "supportsUndo": self._served.supports_undo,
            "supports_record_iternext": hasattr(storage, "record_iternext"),
            "interfaces": interfaces,
        }

    def lastTransaction(self) -> bytes:
        return self._served.last_transaction()

    def getInvalidations(self, tid: bytes) -> Any:
        served = self._served
        known, answer = served.invalidations_from_queue(checked_tid(tid, "a tid"))
        if known:
            return answer
        now = served.hooks.clock()
        iterated = self._off_loop(served.iterate_invalidations, tid, now)
        # Back on the loop: add what was committed while the thread iterated.
        return chain(iterated, served.merge_invalidations)

    def ping(self) -> None:
        pass

    def server_status(self) -> dict[str, Any]:
        return self._served.status()

    def set_client_label(self, label: Any) -> None:
        """Name this connection in log lines and status. The label is cut to
        ``max_label_length`` characters (logged once per connection), and
        unprintable characters become ``?``: it is shown as it is."""
        label, cut = checked_label(label, self._max_label_length)
        if cut and not self._label_cut_logged:
            self._label_cut_logged = True
            logger.warning("%s: client label of %d characters cut to %d: %s",
                           self.label, cut, self._max_label_length, peer_repr(label))
        if self.served is not None:
            self.served.stats.connection_relabelled(self.label, label)
        self.label = label

    # -- reads ----------------------------------------------------------------

    def loadBefore(self, oid: bytes, tid: bytes) -> Any:
        if oid.__class__ is not bytes or len(oid) != 8 \
                or tid.__class__ is not bytes or len(tid) != 8 or tid[0] & 0x80:
            oid, tid = checked_id8(oid, "an oid"), checked_tid(tid, "a tid")
        self._served.stats.loads += 1
        return self._storage().loadBefore(oid, tid)

    def _off_loop(self, function: Any, *args: Any) -> Delayed:
        """``function(*args)`` in this connection's slow-call lane."""
        return self._slow.submit(lambda: function(*args))

    def _off_loop_call(self, method: str, *args: Any) -> Delayed:
        """``storage.method(*args)`` in this connection's slow-call lane,
        on a storage the thread may use (`ServedStorage.borrowed`)."""
        borrowed = self._served.borrowed

        def call() -> Any:
            with borrowed() as storage:
                return getattr(storage, method)(*args)
        return self._off_loop(call)

    def loadSerial(self, oid: bytes, serial: bytes) -> Any:
        # Walks back the object's revisions, holding the storage's lock.
        return self._off_loop_call("loadSerial",
                                   checked_id8(oid, "an oid"), checked_tid(serial, "a serial"))

    def getTid(self, oid: bytes) -> bytes:
        return self._storage().getTid(checked_id8(oid, "an oid"))

    def history(self, oid: bytes, size: int = 1) -> Any:
        """At most ``max_history_entries`` revisions, read in a thread."""
        limit = self._served.config.max_history_entries
        return self._off_loop_call("history", checked_id8(oid, "an oid"),
                                   checked_count(size, limit, "a history size", minimum=0))

    def record_iternext(self, next: Any = None) -> Any:
        return self._storage().record_iternext(next)

    def undoLog(self, first: int = 0, last: int = -20) -> Any:
        """See `_undo_range`; read in a thread."""
        if not self._served.supports_undo:
            return ()
        return self._off_loop_call("undoLog", *self._undo_range(first, last))

    def undoInfo(self, first: int = 0, last: int = -20, specification: Any = None) -> Any:
        """See `_undo_range`; read in a thread."""
        if not self._served.supports_undo:
            return ()
        if specification is not None and not isinstance(specification, dict):
            raise TypeError(f"an undoInfo specification is a dict or None,"
                            f" not {specification!r:.40}")
        return self._off_loop_call("undoInfo", *self._undo_range(first, last), specification)

    def _undo_range(self, first: Any, last: Any) -> tuple[int, int]:
        """``(first, last)`` asking for at most ``max_history_entries``
        transactions: ``last`` is the end index, or minus a count."""
        limit = self._served.config.max_history_entries
        first = checked_count(first, None, "undo's first", minimum=0)
        if not isinstance(last, int) or isinstance(last, bool):
            raise TypeError(f"undo's last is an int, not {last!r:.40}")
        if last < 0:
            return first, -min(-last, limit)
        return first, min(last, first + limit)

    def sendBlob(self, oid: bytes, serial: bytes) -> None:
        path = self._storage().loadBlob(
            checked_id8(oid, "an oid"), checked_tid(serial, "a serial"))
        blob = open_blob(self._served.blob_dir, path)
        chunk_size = self._served.config.blob_chunk_size
        self.peer.stream(BlobMessages(oid, serial, blob, chunk_size))
        return None

    # -- iterators ------------------------------------------------------------

    def iterator_start(self, start: bytes | None = None, stop: bytes | None = None) -> Any:
        """Reserve the iterator's slots here, create it in a thread
        (FileStorage searches for *start*), adopt it back on the loop."""
        # Checked here: FileStorage's iterator asserts on a wrong type and
        # leaves its file open until garbage collection.
        start, stop = (None if bound is None else checked_tid(bound, "an iterator bound (a tid)")
                       for bound in (start, stop))
        iterators = self._iterators
        iid = iterators.reserve()
        try:
            made = self._off_loop(self._served.iterator, start, stop)
        except BaseException:
            iterators.release(iid)
            raise

        def adopt(iterator: Any) -> int:
            iterators.adopt(iid, iterator)
            return iid

        made.add_callback(lambda error, _: None if error is None else iterators.release(iid))
        return chain(made, adopt)

    def iterator_next(self, iid: int) -> Any:
        return self._iterators.next_transaction(iid)

    def iterator_record_start(self, txn_iid: int, tid: bytes) -> int:
        return self._iterators.start_records(txn_iid, tid)

    def iterator_record_next(self, rid: int) -> Any:
        return self._iterators.next_record(rid)

    def iterator_gc(self, iids: Any) -> None:
        self._iterators.forget(iids)

    # -- writes outside transactions ------------------------------------------

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError()

    def new_oids(self, n: int = 100) -> list[bytes]:
        self._check_writable()
        storage = self._storage()
        return [storage.new_oid() for _ in range(min(max(int(n), 1), MAX_NEW_OIDS))]

    def pack(self, t: float, wait: Any = 1) -> Any:
        """See `ServedStorage.pack`: one at a time per storage. While one
        runs, a waiting caller gets an error; ``wait=False`` is ignored
        (with a log line): nothing ever queues.

        A read-only *connection* may pack, as with the reference: its
        ``zeopack`` connects read-only, and read-only is a promise of the
        client not to write, no security boundary. A read-only server or
        storage refuses (ReadOnlyError).
        """
        served = self._served
        if served.read_only:
            raise ReadOnlyError()
        if not isinstance(t, (int, float)) or isinstance(t, bool):
            raise TypeError(f"a pack time is a number, not {t!r:.40}")
        if served.packing is not None and not wait:
            logger.info("%.200s: pack of storage %r ignored: a pack is already running",
                        self.name, served.name)
            return None
        done = served.pack(self.peer.run_in_thread, t, referencesf,
                           who=self.name, log_fields=session_fields(self))
        return done if wait else None

    # -- the transaction ------------------------------------------------------

    def _transaction(self, txn_id: Any) -> PendingTransaction:
        txn = self.txn
        if txn is None:
            raise StorageTransactionError(
                f"no transaction {peer_repr(txn_id)} on this connection; call tpc_begin first")
        txn.check(txn_id)
        return txn

    def tpc_begin(self, txn_id: Any, user: Any, description: Any, extension: Any,
                  tid: bytes | None = None, status: str = " ") -> None:
        self._check_writable()
        if self.txn is not None:
            if self.txn.txn_id == txn_id:
                return  # a repeated tpc_begin for the same transaction is harmless
            raise StorageTransactionError(
                f"tpc_begin for {peer_repr(txn_id)} while transaction {peer_repr(self.txn.txn_id)}"
                " is still open on this connection")
        served = self._served
        config = served.config
        self.txn = PendingTransaction(
            served.storage, txn_id, user, description, extension, tid, status,
            spool_dir=served.spool_dir,
            max_spool_size=config.max_spool_size,
            client_conflict_resolution=config.client_conflict_resolution,
            spool_budget=served.spool_budget)
        served.stats.active_txns += 1

    def storea(self, oid: bytes, serial: bytes, data: bytes, txn_id: Any) -> None:
        self._spooling(txn_id).spool.store(
            checked_id8(oid, "an oid"), checked_serial(serial), checked_record(data))
        self._served.stats.stores += 1

    def deleteObject(self, oid: bytes, serial: bytes, txn_id: Any) -> None:
        self._spooling(txn_id).spool.delete(checked_id8(oid, "an oid"), checked_serial(serial))
        self._served.stats.stores += 1

    def checkCurrentSerialInTransaction(self, oid: bytes, serial: bytes, txn_id: Any) -> None:
        self._spooling(txn_id).spool.check_current(
            checked_id8(oid, "an oid"), checked_serial(serial))

    def restorea(self, oid: bytes, serial: bytes, data: bytes | None,
                 prev_txn: bytes | None, txn_id: Any) -> None:
        txn = self._spooling(txn_id)
        oid, serial = checked_id8(oid, "an oid"), checked_serial(serial)
        # FileStorage writes *serial* into the record as its tid without
        # looking at the transaction's: a record whose tid is not its
        # transaction's would be seen by snapshots it is not part of.
        if txn.tid is None:
            raise StorageTransactionError(
                "restore needs a transaction begun with its tid"
                " (tpc_begin(transaction, tid, status), as copyTransactionsFrom"
                " does); this one lets the server choose the tid")
        if serial != txn.tid:
            raise StorageTransactionError(
                f"restore of oid {oid.hex()} with serial {peer_repr(serial, 40)} in"
                f" transaction {txn.tid.hex()}: a restored record's serial"
                " must be its transaction's tid")
        txn.spool.restore(
            oid, serial, None if data is None else checked_record(data), prev_txn)
        self._served.stats.stores += 1

    def undoa(self, undo_id: bytes, txn_id: Any) -> None:
        self._spooling(txn_id).spool.undo(undo_id)

    def storeBlobStart(self) -> None:
        txn = self._spooling(None, check_id=False)
        uploads = self._served.uploads
        if uploads is None:
            raise ValueError(f"storage {self._served.name!r} has no blob support;"
                             " storeBlobStart is refused")
        txn.start_blob(uploads)

    def storeBlobChunk(self, chunk: bytes) -> None:
        self._spooling(None, check_id=False).blob_chunk(chunk)

    def storeBlobEnd(self, oid: bytes, serial: bytes, data: bytes, txn_id: Any) -> None:
        self._spooling(txn_id).end_blob(oid, checked_serial(serial), checked_record(data))
        self._served.stats.stores += 1

    def storeBlobShared(self, oid: bytes, serial: bytes, data: bytes, filename: str,
                        txn_id: Any) -> None:
        txn = self._spooling(txn_id)
        oid, serial = checked_id8(oid, "an oid"), checked_serial(serial)
        data = checked_record(data)
        path = self._served.claim_shared_blob(oid, filename)
        txn.uploads = self._served.uploads
        try:
            txn.spool.store_blob(oid, serial, data, path)
        except BaseException:
            os.remove(path)   # ours since claimed; the spool did not take it
            raise
        self._served.stats.stores += 1

    def _spooling(self, txn_id: Any, check_id: bool = True) -> PendingTransaction:
        if self.txn is None:
            raise StorageTransactionError(
                "no transaction on this connection; call tpc_begin first")
        if check_id:
            self.txn.check(txn_id)
        if self.txn.phase is not Phase.SPOOLING:
            raise StorageTransactionError(
                "the transaction is already voting; no more changes are accepted")
        return self.txn

    # -- the end --------------------------------------------------------------

    def connection_lost(self) -> None:
        """Abort whatever is open and leave the storage's sessions."""
        try:
            self._forget_transaction(aborted=True)
        finally:
            if self.served is not None:
                self._slow.close()
                self._iterators.close()
                self.served.remove(self)

