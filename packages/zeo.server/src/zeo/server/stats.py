"""Per-storage statistics, reported by ``server_status`` and ``ruok``.

`StorageStats.as_dict` must keep the reference server's key names and
value formats exactly: monitoring tools (zeo-nagios among them) read
``active_txns``, ``connections``, ``waiting``, the counters and
``last-transaction`` from it.  Extra keys are added for operators; tools
that look keys up by name ignore them.

No clock is read here: the caller passes the start time and ``now``
(epoch seconds, i.e. ``time.time()``, because the reference reports
``lock_time`` as an epoch float and ``start`` as ``time.ctime`` text).
"""
from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from collections.abc import Hashable
from typing import TYPE_CHECKING
from typing import Any
from typing import Optional
from typing import Union

from zope.interface import implementer

from zeo.server.interfaces import IStorageStats


if TYPE_CHECKING:
    from zeo.server.commit_lock import CommitLock


__all__ = ['StorageStats']

#: The reference's value for ``timeout-thread-is-alive`` when no
#: transaction timeout is configured.
NO_WATCHDOG = 'stub'

#: The reference's status keys, in the order it reports them.
REFERENCE_KEYS = (
    'connections', 'loads', 'stores', 'commits', 'aborts', 'active_txns',
    'lock_time', 'conflicts', 'conflicts_resolved', 'start', 'waiting',
    'timeout-thread-is-alive', 'last-transaction',
)


@implementer(IStorageStats)
class StorageStats:
    """See `IStorageStats`.

    *start_time* is the epoch time at which the storage started serving.
    """

    def __init__(self, start_time: float) -> None:
        self.start_time = start_time
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
                describe_owner: Callable[[Hashable], str] = str,
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
