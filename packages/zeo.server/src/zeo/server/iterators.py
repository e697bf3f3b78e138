"""Server-side transaction and record iterators, named by small ints.

A client walks a storage's history with ``iterator_start`` /
``iterator_next`` and, for the transaction last returned,
``iterator_record_start`` / ``iterator_record_next``. Iterators live until
exhausted, dropped with ``iterator_gc``, or the connection closes; one
connection may hold at most *limit* at a time.
"""

from __future__ import annotations

from typing import Any, Iterator

from zeo.protocol import peer_repr


class TooManyIterators(Exception):
    """A connection asked for more open iterators than its limit."""


class IteratorRegistry:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._next_id = 0
        self._transactions: dict[int, Any] = {}   # id -> storage iterator
        self._current: dict[int, Any] = {}        # id -> last transaction returned
        self._records: dict[int, Iterator[Any]] = {}

    def __len__(self) -> int:
        return len(self._transactions) + len(self._records)

    def _new_id(self) -> int:
        if len(self) >= self.limit:
            raise TooManyIterators(
                f"this connection already has {len(self)} open iterators (limit"
                f" {self.limit}); finish or drop some (iterator_gc) first")
        self._next_id += 1
        return self._next_id

    def start(self, storage: Any, start: bytes | None, stop: bytes | None) -> int:
        iid = self._new_id()
        self._transactions[iid] = iter(storage.iterator(start, stop))
        return iid

    def next_transaction(self, iid: int) -> tuple[Any, ...] | None:
        iterator = self._transactions[iid]   # KeyError for unknown ids, as ZEO
        try:
            info = next(iterator)
        except StopIteration:
            self._drop_transactions(iid)
            return None
        self._current[iid] = info
        return (info.tid, info.status, info.user, info.description, info.extension)

    def start_records(self, iid: int, tid: bytes) -> int:
        info = self._current.get(iid)
        if info is None or info.tid != tid:
            raise ValueError(
                f"iterator {peer_repr(iid)} is not at transaction {peer_repr(tid)}; call"
                " iterator_record_start for the transaction iterator_next returned")
        rid = self._new_id()
        self._records[rid] = iter(info)
        return rid

    def next_record(self, rid: int) -> tuple[Any, ...] | None:
        iterator = self._records[rid]
        try:
            record = next(iterator)
        except StopIteration:
            del self._records[rid]
            return None
        return (record.oid, record.tid, record.data, record.data_txn)

    def forget(self, ids: Any) -> None:
        for iid in ids:
            self._drop_transactions(iid)
            self._records.pop(iid, None)

    def _drop_transactions(self, iid: int) -> None:
        iterator = self._transactions.pop(iid, None)
        self._current.pop(iid, None)
        close = getattr(iterator, "close", None)
        if close is not None:
            close()

    def close(self) -> None:
        self.forget(list(self._transactions) + list(self._records))
