"""Transaction and record iterators backed by server-side iterators.

The server keeps one iterator per ``iterator_start`` (and per
``iterator_record_start``) until it is exhausted or the client tells it
to forget it with ``iterator_gc``.  An iterator belongs to the
connection it started on: after a reconnect it raises
``ClientDisconnected``.  An iterator dropped before its end is reported
to the storage by a ``weakref.finalize`` (which may run on any thread,
so it only appends to a list); the storage sends ``iterator_gc`` later.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable

import ZODB.BaseStorage

from zeo.client.errors import ClientDisconnected

__all__ = ['RecordIterator', 'TransactionIterator', 'TransactionRecord']


class _ServerIterator:
    """The bookkeeping shared by both kinds of iterator."""

    def __init__(self, call: Callable[..., Any], channel: Any, iid: int,
                 dropped: Callable[[Any, int], None]) -> None:
        self._call = call
        self._channel = channel
        self._iid = iid
        self._ended = False
        self._finalizer = weakref.finalize(self, dropped, channel, iid)

    def __iter__(self) -> '_ServerIterator':
        return self

    def _next(self, method: str) -> Any:
        if self._ended:
            raise StopIteration
        if self._channel.closed:
            raise ClientDisconnected('the connection of this iterator is gone')
        item = self._call(method, self._iid, channel=self._channel)
        if item is None:
            # Exhausted: the server has forgotten it already.
            self._ended = True
            self._finalizer.detach()
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop early; the server forgets the iterator soon."""
        self._ended = True
        self._finalizer()


class TransactionIterator(_ServerIterator):
    """``IStorageIteration.iterator()``: yields `TransactionRecord`."""

    def __init__(self, storage: Any, channel: Any, iid: int) -> None:
        super().__init__(storage._server_call, channel, iid,
                         storage._iterator_dropped)
        self._storage = storage

    def __next__(self) -> 'TransactionRecord':
        tid, status, user, description, extension = self._next('iterator_next')
        return TransactionRecord(self, tid, status, user, description,
                                 extension)

    next = __next__


class TransactionRecord(ZODB.BaseStorage.TransactionRecord):
    """One transaction; iterating it yields its data records (only while
    it is the last one its iterator returned, as the server requires)."""

    def __init__(self, iterator: TransactionIterator, tid: bytes, status: str,
                 user: bytes, description: bytes, extension: Any) -> None:
        super().__init__(tid, status, user, description, extension)
        self._iterator = iterator

    def __iter__(self) -> "RecordIterator":
        iterator = self._iterator
        storage = iterator._storage
        channel = iterator._channel
        if channel.closed:
            raise ClientDisconnected('the connection of this iterator is gone')
        rid = storage._server_call('iterator_record_start', iterator._iid,
                                   self.tid, channel=channel)
        return RecordIterator(storage, channel, rid)


class RecordIterator(_ServerIterator):
    """The data records of one transaction."""

    def __init__(self, storage: Any, channel: Any, rid: int) -> None:
        super().__init__(storage._server_call, channel, rid,
                         storage._iterator_dropped)

    def __next__(self) -> ZODB.BaseStorage.DataRecord:
        oid, tid, data, data_txn = self._next('iterator_record_next')
        return ZODB.BaseStorage.DataRecord(oid, tid, data, data_txn)

    next = __next__
