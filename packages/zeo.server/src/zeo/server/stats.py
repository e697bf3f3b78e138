"""Per-storage statistics, reported by ``server_status`` and ``ruok``.

`StorageStats.as_dict` must keep the reference server's key names and
value formats exactly: monitoring tools (zeo-nagios among them) read
``active_txns``, ``connections``, ``waiting``, the counters and
``last-transaction`` from it.  Extra keys are added for operators; tools
that look keys up by name ignore them.

No clock is read here: the caller passes the start time and ``now``
(epoch seconds, i.e. ``time.time()``, because the reference reports
``lock_time`` as an epoch float and ``start`` as ``time.ctime`` text).

The monitor endpoint (`zeo.server.monitor`) reads more than ``as_dict``
reports: the `Timing` histograms (commit-lock wait and hold, vote and
finish latency), ``timeouts``, ``refusals`` and the recent slow
transactions. They are plain ints and floats, updated on the event loop
and read there: nothing here locks or imports the metrics library.
"""
from __future__ import annotations

import bisect
import collections
import heapq
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Any
from typing import NamedTuple
from typing import Optional
from typing import Union

from zope.interface import implementer

from zeo.server.interfaces import IStorageStats


if TYPE_CHECKING:
    from zeo.server.commit_lock import CommitLock


__all__ = ['LATENCY_BOUNDS', 'SlowTransaction', 'StorageStats', 'Timing']

#: The reference's value for ``timeout-thread-is-alive`` when no
#: transaction timeout is configured.
NO_WATCHDOG = 'stub'

#: The reference's status keys, in the order it reports them.
REFERENCE_KEYS = (
    'connections', 'loads', 'stores', 'commits', 'aborts', 'active_txns',
    'lock_time', 'conflicts', 'conflicts_resolved', 'start', 'waiting',
    'timeout-thread-is-alive', 'last-transaction',
)


#: Upper bounds (seconds) of the latency histograms' buckets; a last,
#: unbounded bucket follows. From a millisecond (an uncontended commit)
#: to a minute (twice the default transaction timeout).
LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                  1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: Slow transactions remembered per storage (the most recent ones).
SLOW_TRANSACTIONS_KEPT = 20


class Timing:
    """A histogram of durations as plain counts: ``counts[i]`` durations
    at most ``LATENCY_BOUNDS[i]`` (and above the bound before), the last
    count for the rest; ``total`` their sum in seconds."""

    __slots__ = ('counts', 'total')

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BOUNDS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.counts[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)


class SlowTransaction(NamedTuple):
    """A transaction that held the commit lock at least the threshold."""

    ended: float     # epoch seconds when it released the lock
    label: str       # its connection's label
    held: float      # seconds it held the lock


@implementer(IStorageStats)
class StorageStats:
    """See `IStorageStats`.

    *start_time* is the epoch time at which the storage started serving;
    a transaction holding the commit lock for *slow_threshold* seconds or
    more is remembered in ``slow_transactions``.
    """

    def __init__(self, start_time: float, slow_threshold: float = 1.0) -> None:
        self.start_time = start_time
        self.slow_threshold = slow_threshold
        #: Transactions aborted by the transaction timeout.
        self.timeouts = 0
        #: Requests refused by a per-storage limit, by the limit's key.
        self.refusals: collections.Counter[str] = collections.Counter()
        #: Commit-lock wait (vote to grant) and hold (grant to release)
        #: times; vote and finish latency (the call to its reply).
        self.lock_wait = Timing()
        self.lock_hold = Timing()
        self.vote_latency = Timing()
        self.finish_latency = Timing()
        self.slow_transactions: collections.deque[SlowTransaction] = \
            collections.deque(maxlen=SLOW_TRANSACTIONS_KEPT)
        self.loads = 0
        self.stores = 0
        self.commits = 0
        self.aborts = 0
        self.active_txns = 0
        self.conflicts = 0
        self.conflicts_resolved = 0
        self.bytes_in = 0
        self.bytes_out = 0
        # label -> number of connections with that label (labels repeat:
        # several clients on one host, or clients sharing a label).
        self._labels: dict[str, int] = {}
        self._connections = 0

    def __repr__(self) -> str:
        return (f'<{type(self).__name__} connections={self._connections}'
                f' commits={self.commits}>')

    def lock_waited(self, seconds: float) -> None:
        """The commit lock was granted after *seconds* of waiting."""
        self.lock_wait.observe(seconds)

    def lock_held(self, label: str, seconds: float, now: float) -> None:
        """The connection *label* released the commit lock after holding
        it *seconds*; *now* is the epoch time."""
        self.lock_hold.observe(seconds)
        if seconds >= self.slow_threshold:
            self.slow_transactions.append(SlowTransaction(now, label, seconds))

    @property
    def connections(self) -> int:
        """See `IStorageStats`."""
        return self._connections

    @property
    def connections_by_label(self) -> dict[str, int]:
        """See `IStorageStats`."""
        return dict(self._labels)

    def connection_added(self, label: str) -> None:
        """See `IStorageStats`."""
        if not isinstance(label, str):
            raise TypeError(
                f"connection label must be a str, got {type(label).__name__}")
        self._labels[label] = self._labels.get(label, 0) + 1
        self._connections += 1

    def connection_removed(self, label: str) -> None:
        """See `IStorageStats`."""
        count = self._labels.get(label)
        if not count:
            raise ValueError(
                f"no connection is counted under the label {label!r};"
                f" pass the label the connection currently has")
        if count == 1:
            del self._labels[label]
        else:
            self._labels[label] = count - 1
        self._connections -= 1

    def connection_relabelled(self, old_label: str, new_label: str) -> None:
        """See `IStorageStats`."""
        self.connection_removed(old_label)
        self.connection_added(new_label)

    def _labels_shown(self, max_labels: Optional[int]) -> tuple[dict[str, int], int]:
        """The labels with the most connections, and how many connections
        the others have."""
        labels = self._labels
        if max_labels is None or len(labels) <= max_labels:
            return dict(labels), 0
        shown = dict(heapq.nsmallest(
            max_labels, labels.items(), key=lambda item: (-item[1], item[0])))
        return shown, self._connections - sum(shown.values())

    def as_dict(self, now: float, last_transaction: bytes,
                lock: Optional[CommitLock] = None,
                describe_owner: Callable[[Any], str] = str,
                invalidation_queue_length: int = 0,
                max_labels: Optional[int] = None,
                ) -> dict[str, Any]:
        """See `IStorageStats`."""
        by_label, omitted = self._labels_shown(max_labels)
        if (not isinstance(last_transaction, bytes)
                or len(last_transaction) != 8):
            raise ValueError(f"last_transaction must be 8 bytes, got"
                             f" {last_transaction!r}")
        watchdog: Union[bool, str] = NO_WATCHDOG
        lock_time = holder = None
        waiting = 0
        lock_wait_max = 0.0
        if lock is not None:
            lock_time = lock.locked_since
            waiting = lock.waiting
            if lock.timeout is not None:
                # Our watchdog is a loop timer; it is "alive" whenever a
                # timeout is configured.
                watchdog = True
            if lock.holder is not None:
                holder = describe_owner(lock.holder)
            since = lock.waiting_since
            if since is not None:
                lock_wait_max = max(0.0, now - since)
        return {
            # The reference's keys and formats.
            'connections': self._connections,
            'loads': self.loads,
            'stores': self.stores,
            'commits': self.commits,
            'aborts': self.aborts,
            'active_txns': self.active_txns,
            'lock_time': lock_time,
            'conflicts': self.conflicts,
            'conflicts_resolved': self.conflicts_resolved,
            'start': time.ctime(self.start_time),
            'waiting': waiting,
            'timeout-thread-is-alive': watchdog,
            'last-transaction': last_transaction.hex(),
            # Extras.
            'uptime': max(0.0, now - self.start_time),
            'bytes_in': self.bytes_in,
            'bytes_out': self.bytes_out,
            'connections_by_label': by_label,
            'connections_by_label_omitted': omitted,
            'lock_holder': holder,
            'lock_wait_max': lock_wait_max,
            'invalidation_queue_length': invalidation_queue_length,
        }
