"""Server-side transaction and record iterators, named by small ints.

A client walks a storage's history with ``iterator_start`` /
``iterator_next`` and, for the transaction last returned,
``iterator_record_start`` / ``iterator_record_next``. Iterators live until
exhausted, dropped with ``iterator_gc``, or the connection closes.

Two limits hold. One connection may hold at most *limit* iterators of
both kinds (``max-iterators``). A transaction iterator of a FileStorage
holds an open file, so the whole server may hold at most
``max-server-iterators`` transaction iterators, over all connections and
storages (`IteratorBudget`); record iterators read through their
transaction iterator's file and do not count there. A refused start is an
error reply (`TooManyIterators`), never a crash.

Creating a transaction iterator with a start tid makes FileStorage search
its file, so the session does it in a worker thread: `reserve` takes the
id and both slots on the loop, the thread creates the iterator, and
`adopt` (on the loop) puts it in place, or closes it if the connection
has gone meanwhile; `release` gives the slots back if creation failed.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Iterator

from zope.interface import implementer

from zeo.protocol import peer_repr

from zeo.server.interfaces import IIteratorRegistry

__all__ = ["TooManyIterators", "IteratorBudget", "IteratorRegistry", "LentIterator"]


class TooManyIterators(Exception):
    """A connection, or the server, has as many open iterators as allowed."""


class IteratorBudget:
    """The server-wide count of open transaction iterators (loop only)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        #: Iterators refused, by limit (this one and each connection's
        #: max-iterators), for the monitor.
        self.refusals: collections.Counter[str] = collections.Counter()

    def acquire(self) -> None:
        if self.used >= self.limit:
            self.refusals["max-server-iterators"] += 1
            raise TooManyIterators(
                f"the server already has {self.used} open iterators (limit"
                f" {self.limit}, max-server-iterators); try again later")
        self.used += 1

    def release(self) -> None:
        self.used -= 1


@implementer(IIteratorRegistry)
class IteratorRegistry:
    """See `IIteratorRegistry`."""

    def __init__(self, limit: int, budget: IteratorBudget | None = None) -> None:
        self.limit = limit
        self.budget = budget if budget is not None else IteratorBudget(limit)
        self.closed = False
        self._next_id = 0
        self._transactions: dict[int, Any] = {}   # id -> storage iterator
        self._reserved: set[int] = set()          # ids being created in a thread
        self._current: dict[int, Any] = {}        # id -> last transaction returned
        self._records: dict[int, Iterator[Any]] = {}

    def __len__(self) -> int:
        return len(self._transactions) + len(self._reserved) + len(self._records)

    def _new_id(self) -> int:
        if len(self) >= self.limit:
            self.budget.refusals["max-iterators"] += 1
            raise TooManyIterators(
                f"this connection already has {len(self)} open iterators (limit"
                f" {self.limit}, max-iterators); finish or drop some (iterator_gc) first")
        self._next_id += 1
        return self._next_id

    def reserve(self) -> int:
        """An id and the slots for a transaction iterator still to be made."""
        iid = self._new_id()
        self.budget.acquire()
        self._reserved.add(iid)
        return iid

    def adopt(self, iid: int, iterator: Any) -> None:
        """Put the iterator made for *iid* in place (closed if we are)."""
        self._reserved.discard(iid)
        if self.closed:
            self.budget.release()
            _close(iterator)
            return
        self._transactions[iid] = iterator

    def release(self, iid: int) -> None:
        """Creating *iid*'s iterator failed: give its slots back."""
        self._reserved.discard(iid)
        self.budget.release()

    def start(self, storage: Any, start: bytes | None, stop: bytes | None) -> int:
        """Reserve, create and adopt at once (on the caller's thread)."""
        iid = self.reserve()
        try:
            iterator = iter(storage.iterator(start, stop))
        except BaseException:
            self.release(iid)
            raise
        self.adopt(iid, iterator)
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
        if iid not in self._transactions:
            return
        iterator = self._transactions.pop(iid)
        self._current.pop(iid, None)
        self.budget.release()
        _close(iterator)

    def close(self) -> None:
        """Close every iterator; those still being made are closed on adoption."""
        self.closed = True
        self.forget(list(self._transactions) + list(self._records))


class LentIterator:
    """A storage's transaction iterator made on a lent storage instance
    (`ServedStorage.iterator`): *release* gives the instance back, once,
    when the iterator is closed."""

    def __init__(self, iterator: Iterator[Any], release: Callable[[], None]) -> None:
        self._iterator = iterator
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> LentIterator:
        return self

    def __next__(self) -> Any:
        return next(self._iterator)

    def close(self) -> None:
        release, self._release = self._release, None
        try:
            _close(self._iterator)
        finally:
            if release is not None:
                release()


def _close(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()
