"""``ClientStorage``: the ZODB storage API over a connection to a server.

Everything here runs in application threads.  Reads are answered from
the client cache when it has the revision (the cache has its own lock);
everything else goes through the `Runner` to the connection in use, whose
messages keep the cache consistent with the server (see
``zeo.client.connections`` for the rules).

A transaction is bound to the connection it began on.  Stores, deletes,
checks, restores, undos and blob uploads are one-way messages sent at
once (a commit costs two round trips however many objects it stores);
``tpc_vote`` and ``tpc_finish`` are calls.  If that connection is lost,
every later call of the transaction raises ``ClientDisconnected`` --
nothing is ever sent on the next connection, so a transaction never
commits half.  ``tpc_abort`` always succeeds locally.

The blob methods (``IBlobStorage`` and the server's blob callbacks) are
in ``zeo.client.storage_blobs``.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

import zope.interface
import ZODB.BaseStorage
import ZODB.interfaces
from ZODB.ConflictResolution import ConflictResolvingStorage
from ZODB.POSException import (
    ConflictError, POSKeyError, ReadOnlyError, StorageTransactionError,
    Unsupported)
from ZODB.utils import maxtid, z64

from zeo.client.arguments import options_from_positional
from zeo.client.cache import open_cache
from zeo.client.config import ClientConfig
from zeo.client.errors import ClientDisconnected
from zeo.client.interfaces import IClientStorage
from zeo.client.iterators import TransactionIterator
from zeo.client.metrics import LoadTiming, client_metrics
from zeo.client.connections.runner import Runner
from zeo.client.storage_blobs import BLOB_CHUNK_SIZE, ClientBlobs, _as_bytes
from zeo.client.transaction_buffer import TransactionBuffer

__all__ = ['ClientStorage', 'MAX_VOTE_ROUNDS', 'BLOB_CHUNK_SIZE']

logger = logging.getLogger('zeo.client')

#: Rounds of client-side conflict resolution before giving up.
MAX_VOTE_ROUNDS = 9

#: The ZODB interfaces a server may advertise that this client implements
#: (given what it needs: a blob directory for blobs, record_iternext).
OPTIONAL_INTERFACES = (
    ZODB.interfaces.IStorageRestoreable,
    ZODB.interfaces.IStorageIteration,
    ZODB.interfaces.IStorageUndoable,
    ZODB.interfaces.IStorageCurrentRecordIteration,
    ZODB.interfaces.IBlobStorage,
    ZODB.interfaces.IExternalGC,
)


def _noop(tid: bytes) -> None:
    pass


@zope.interface.implementer(IClientStorage, ZODB.interfaces.IStorage,
                            ZODB.interfaces.IMultiCommitStorage)
class ClientStorage(ClientBlobs, ConflictResolvingStorage):
    """A ZODB storage served by a ZEO 5/6 server at *addr*.

    *addr* is ``(host, port)``, a port number, a Unix socket path, or a
    list of them; *storage* the served storage's name.  The options are
    those of the reference ``ClientStorage`` (see `ClientConfig`), e.g.
    ``cache_size``, ``client``/``var`` or ``cache``, ``blob_dir``,
    ``read_only``, ``read_only_fallback``, ``wait``, ``wait_timeout``,
    ``server_sync``, ``ssl``; by keyword, or by position in the
    reference's order (`zeo.client.arguments`).  Or pass a ready
    ``config=ClientConfig(...)``.
    """

    def __init__(self, addr: Any = None, storage: str = '1', *args: Any,
                 config: ClientConfig | None = None, **options: Any) -> None:
        if args:
            options = options_from_positional(args, options)
        if config is None:
            config = ClientConfig.from_options(addr, storage=storage, **options)
        elif addr is not None or options:
            raise TypeError('pass either config or an address and options')
        self.config = config
        self.__name__ = config.display_name
        self._storage = config.storage
        self._db: Any = None
        self._closed = False
        self._info: dict[str, Any] = {
            'length': 0, 'size': 0, 'name': 'ZEO Client', 'supportsUndo': False,
            'interfaces': ()}
        self._server_address: Any = None
        self._connection_read_only = config.read_only
        self._oids: list[bytes] = []
        self._oid_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._transaction: Any = None
        self._tbuf: TransactionBuffer | None = None
        self._dropped_iterators: list[tuple[Any, int]] = []
        #: Loads the server answered (see zeo.client.metrics).
        self._load_timing = LoadTiming()
        self._cache = self._open_cache(config)
        try:
            self._open_blobs(config)
            self._runner = Runner(config, self._cache, self)
        except BaseException:
            self._cache.close()
            raise
        self._manager = self._runner.manager
        self._server_call = self._runner.call
        if config.wait:
            try:
                self._runner.wait_connected(config.wait_timeout)
            except BaseException:
                self.close()
                raise

    @staticmethod
    def _open_cache(config: ClientConfig) -> Any:
        cache = config.cache
        if cache is not None and not isinstance(cache, (str, os.PathLike)):
            return cache  # an IClientCache object
        return open_cache(config.cache_path(), config.cache_size)

    def __repr__(self) -> str:
        return f'<ClientStorage {self.getName()}>'

    # -- the connection (callbacks from the connection manager) --------------------

    def notify_connected(self, channel: Any, info: dict[str, Any]) -> None:
        """The manager made *channel* the connection in use."""
        self._info.update(info)
        self._server_address = channel.address
        self._connection_read_only = channel.read_only
        advertised = {tuple(i) for i in info.get('interfaces', ())}
        provided = []
        for iface in OPTIONAL_INTERFACES:
            if (iface.__module__, iface.__name__) not in advertised:
                continue
            if iface is ZODB.interfaces.IBlobStorage and not self.blob_dir:
                continue
            if iface is ZODB.interfaces.IStorageCurrentRecordIteration \
                    and not info.get('supports_record_iternext'):
                continue
            provided.append(iface)
        zope.interface.directlyProvides(self, *provided)

    def notify_disconnected(self, channel: Any) -> None:
        """*channel* is no longer the connection in use."""

    def info(self, info: dict[str, Any]) -> None:
        """The server's ``info`` message (length and size)."""
        self._info.update(info)

    def new_addr(self, addr: Any) -> None:
        """Use these server address(es) from now on."""
        from zeo.client.config import normalize_addresses
        self._runner.new_addresses(normalize_addresses(addr))

    def is_connected(self, test: bool = False) -> bool:
        return self._manager.channel is not None

    @property
    def connection_generation(self) -> int:
        """Bumped each time a connection becomes the one in use."""
        return self._manager.generation

    def metrics(self) -> dict[str, Any]:
        """This client's figures: cache, connection, load latency, how far
        behind the server (see `zeo.client.metrics`)."""
        return client_metrics(self)

    def ping(self) -> None:
        """One round trip to the server."""
        self._server_call('ping')

    def sync(self) -> None:
        """Called by ZODB when a transaction begins: with ``server_sync`` a
        round trip, so every invalidation committed before now is seen."""
        if self.config.server_sync:
            self._server_call('ping')

    def server_status(self, timeout: float | None = None) -> dict[str, Any]:
        return self._server_call('server_status', timeout=timeout)

    # -- IStorage: information --------------------------------------------------

    def registerDB(self, db: Any) -> None:
        super().registerDB(db)
        self._db = db
        self._manager.db = db

    def getName(self) -> str:
        state = 'connected' if self.is_connected() else 'disconnected'
        return f'{self.__name__} ({state})'

    def sortKey(self) -> str:
        address = self._server_address
        if address is None:
            raise ClientDisconnected('never connected: no sort key yet')
        return f'{self._storage}:{address}'

    def __len__(self) -> int:
        return self._info['length']

    def getSize(self) -> int:
        return self._info['size']

    def supportsUndo(self) -> bool:
        return bool(self._info['supportsUndo'])

    def isReadOnly(self) -> bool:
        return bool(self.config.read_only or self._connection_read_only)

    is_read_only = isReadOnly

    def lastTransaction(self) -> bytes:
        # Under visibility: never a tid whose invalidations the database
        # hasn't had (see zeo.client.connections.manager, Rule 3).
        with self._manager.visibility:
            tid = self._cache.getLastTid()
        return z64 if tid is None else tid

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._runner.close()
        finally:
            try:
                self._cache.close()
            finally:
                self._close_blobs()

    # -- reads ------------------------------------------------------------------------

    def loadBefore(self, oid: bytes, tid: bytes) -> Any:
        if self._closed:
            raise ClientDisconnected('the client storage is closed')
        result = self._cache.loadBefore(oid, tid)
        if result is not None:
            return result
        started = time.monotonic()
        result = self._runner.load(oid, tid)
        self._load_timing.observe(time.monotonic() - started)
        return result

    def load(self, oid: bytes, version: str = '') -> tuple[bytes, bytes]:
        result = self.loadBefore(oid, maxtid)
        if result is None:
            raise POSKeyError(oid)
        return result[:2]

    def prefetch(self, oids: Any, tid: bytes) -> None:
        """Start loading *oids* as of *tid* (no waiting)."""
        self._runner.prefetch(oids, tid)

    def loadSerial(self, oid: bytes, serial: bytes) -> bytes:
        return self._server_call('loadSerial', oid, serial)

    def getTid(self, oid: bytes) -> bytes:
        return self._server_call('getTid', oid)

    def history(self, oid: bytes, size: int = 1) -> list[dict[str, Any]]:
        return list(self._server_call('history', oid, size))

    def record_iternext(self, next: Any = None) -> Any:
        return self._server_call('record_iternext', next)

    def undoLog(self, first: int = 0, last: int = -20,
                filter: Callable[..., bool] | None = None) -> list[dict[str, Any]]:
        if filter is not None:
            return []  # a filter function can't travel to the server
        return list(self._server_call('undoLog', first, last))

    def undoInfo(self, first: int = 0, last: int = -20,
                 specification: Any = None) -> list[dict[str, Any]]:
        return list(self._server_call('undoInfo', first, last, specification))

    def iterator(self, start: bytes | None = None,
                 stop: bytes | None = None) -> TransactionIterator:
        self._gc_iterators()
        channel = self._runner.wait_connected()
        iid = self._server_call('iterator_start', start, stop, channel=channel)
        return TransactionIterator(self, channel, iid)

    def _iterator_dropped(self, channel: Any, iid: int) -> None:
        self._dropped_iterators.append((channel, iid))  # any thread

    def _gc_iterators(self) -> None:
        dropped = self._dropped_iterators
        if not dropped:
            return
        self._dropped_iterators = []
        current = self._manager.channel
        iids = [iid for channel, iid in dropped if channel is current]
        if iids and current is not None:
            self._runner.one_way(current, 'iterator_gc', (iids,))

    # -- writes outside transactions ------------------------------------------------

    def new_oid(self) -> bytes:
        if self.isReadOnly():
            raise ReadOnlyError()
        with self._oid_lock:
            if not self._oids:
                self._oids = list(self._server_call('new_oids'))
                self._oids.reverse()
            return self._oids.pop()

    def pack(self, t: float | None = None, referencesf: Any = None,
             wait: bool = True, days: float = 0) -> Any:
        """Pack the storage on the server (with the server's own
        reference finder; *referencesf* is ignored)."""
        if t is None:
            t = time.time()
        if not wait:
            return self._server_call('pack', t - days * 86400, False)
        # The history the cache holds may be packed away now: forget it
        # (in wire order, before the reply is seen; the last tid stays).
        return self._server_call('pack', t - days * 86400, True,
                                 hook=self._manager.forget_history)

    # -- two-phase commit ------------------------------------------------------------

    def tpc_transaction(self) -> Any:
        return self._transaction

    def tpc_begin(self, txn: Any, tid: bytes | None = None,
                  status: str = ' ') -> None:
        if self.config.read_only:
            raise ReadOnlyError()
        if self._transaction is txn:
            raise StorageTransactionError(
                'Duplicate tpc_begin calls for same transaction')
        self._commit_lock.acquire()
        try:
            channel = self._runner.wait_connected()
            if channel.read_only:
                raise ReadOnlyError()
            self._tbuf = TransactionBuffer(txn, channel, self.config.cache_size)
            self._transaction = txn
            self._runner.one_way(channel, 'tpc_begin', (
                id(txn), _as_bytes(txn.user), _as_bytes(txn.description),
                dict(txn.extension), tid, status))
        except BaseException:
            self._transaction = self._tbuf = None
            self._commit_lock.release()
            raise

    def _check_trans(self, txn: Any, method: str) -> TransactionBuffer:
        if self.isReadOnly():
            raise ReadOnlyError()
        tbuf = self._tbuf
        if txn is None or self._transaction is not txn or tbuf is None:
            raise StorageTransactionError(
                f'{method}: the transaction is not committing here', txn)
        channel = tbuf.channel
        if channel.closed or channel is not self._manager.channel:
            raise ClientDisconnected(
                f'{method}: the connection this transaction began on is gone')
        return tbuf

    def store(self, oid: bytes, serial: bytes, data: bytes, version: str,
              txn: Any) -> None:
        if version:
            raise Unsupported('versions are not supported')
        tbuf = self._check_trans(txn, 'store')
        self._runner.one_way(tbuf.channel, 'storea', (oid, serial, data, id(txn)))
        tbuf.store(oid, data)

    def checkCurrentSerialInTransaction(self, oid: bytes, serial: bytes,
                                        txn: Any) -> None:
        tbuf = self._check_trans(txn, 'checkCurrentSerialInTransaction')
        self._runner.one_way(tbuf.channel, 'checkCurrentSerialInTransaction',
                             (oid, serial, id(txn)))

    def deleteObject(self, oid: bytes, serial: bytes, txn: Any) -> None:
        tbuf = self._check_trans(txn, 'deleteObject')
        self._runner.one_way(tbuf.channel, 'deleteObject', (oid, serial, id(txn)))
        tbuf.store(oid, None)

    def restore(self, oid: bytes, serial: bytes, data: bytes | None,
                version: str, prev_txn: bytes | None, txn: Any) -> None:
        if version:
            raise Unsupported('versions are not supported')
        tbuf = self._check_trans(txn, 'restore')
        self._runner.one_way(tbuf.channel, 'restorea',
                             (oid, serial, data, prev_txn, id(txn)))
        tbuf.store(oid, None)

    def undo(self, transaction_id: bytes, txn: Any) -> None:
        tbuf = self._check_trans(txn, 'undo')
        self._runner.one_way(tbuf.channel, 'undoa', (transaction_id, id(txn)))

    def copyTransactionsFrom(self, other: Any, verbose: int = 0) -> None:
        ZODB.BaseStorage.copy(other, self, verbose)

    def tpc_vote(self, txn: Any) -> list[bytes] | None:
        tbuf = self._check_trans(txn, 'tpc_vote')
        channel = tbuf.channel
        for _ in range(MAX_VOTE_ROUNDS):
            try:
                result = self._server_call('vote', id(txn), channel=channel)
            except ConflictError as error:
                # We may have missed an invalidation (we shouldn't): make
                # sure the retry loads the object afresh.
                if getattr(error, 'oid', None) is not None:
                    self._manager.forget_current(error.oid)
                raise
            conflicts = False
            for item in result or ():
                if isinstance(item, dict):
                    # The server leaves conflict resolution to us.
                    conflicts = True
                    oid = item['oid']
                    committed, read = item['serials']
                    data = self.tryToResolveConflict(oid, committed, read, item['data'])
                    self._runner.one_way(channel, 'storea',
                                         (oid, committed, data, id(txn)))
                    tbuf.resolved_by_client(oid, data)
                else:
                    tbuf.resolved_by_server(item)
            if not conflicts:
                return tbuf.resolved() or None
        raise ConflictError(
            f'conflicts still unresolved after {MAX_VOTE_ROUNDS} votes')

    def tpc_finish(self, txn: Any, f: Callable[[bytes], Any] | None = None) -> bytes:
        tbuf = self._check_trans(txn, 'tpc_finish')
        channel = tbuf.channel
        updates = list(tbuf.updates())
        callback = f or _noop
        finished = self._manager.transaction_finished
        try:
            tid = self._server_call(
                'tpc_finish', id(txn), channel=channel,
                hook=lambda tid: finished(channel, tid, updates, callback))
        except ClientDisconnected:
            self._end_transaction(tbuf)
            raise
        except BaseException:
            # The outcome is unknown: reconnecting re-verifies the cache.
            self._runner.run_on_loop(channel.close)
            self._end_transaction(tbuf)
            raise
        self._end_transaction(tbuf, tid)
        return tid

    def tpc_abort(self, txn: Any, timeout: float | None = None) -> None:
        tbuf = self._tbuf
        if txn is None or self._transaction is not txn or tbuf is None:
            return
        try:
            channel = tbuf.channel
            if not channel.closed and channel is self._manager.channel:
                try:
                    self._server_call('tpc_abort', id(txn), channel=channel)
                except ClientDisconnected:
                    pass  # the server aborts a disconnected transaction
        finally:
            self._end_transaction(tbuf)

    def _end_transaction(self, tbuf: TransactionBuffer, tid: bytes | None = None) -> None:
        if self._tbuf is not tbuf:
            return
        self._transaction = self._tbuf = None
        try:
            if tbuf.blobs:
                self._blobs_committed(tbuf.blobs, tid)
            self._gc_iterators()
        finally:
            self._commit_lock.release()
