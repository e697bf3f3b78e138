"""A client's own figures: ``ClientStorage.metrics()``.

What a client can tell about itself, as plain data (no metrics library
here; `zeo.client.prometheus` turns it into Prometheus metrics for an
application that wants them):

* the cache: hits, misses, records, bytes used, its size limit;
* the connection: connected or not, how many times a connection became
  the one in use (``connections``; every one after the first is a
  reconnect);
* load latency: a histogram of loads the server answered (cache misses),
  from the call to the answer;
* how far behind the server it is: ``last_transaction_time``, when the
  last transaction it has seen was committed, and ``invalidation_delay``,
  how long after its commit the last transaction another client committed
  reached this one (None before any has).

Loads come from any application thread, so `LoadTiming` takes a lock per
observation; a load that reaches the server costs a network round trip,
which the lock does not change. A cache hit costs nothing more.
"""

from __future__ import annotations

import bisect
import threading
import time
from typing import Any

from ZODB.TimeStamp import TimeStamp
from ZODB.utils import z64

__all__ = ["LOAD_BOUNDS", "LoadTiming", "client_metrics"]

#: Upper bounds (seconds) of the load-latency buckets; a last, unbounded
#: bucket follows.
LOAD_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
               0.5, 1.0, 2.5, 5.0, 10.0)


class LoadTiming:
    """A thread-safe histogram of durations: ``counts[i]`` durations at
    most ``LOAD_BOUNDS[i]``, the last count for the rest."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = [0] * (len(LOAD_BOUNDS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        index = bisect.bisect_left(LOAD_BOUNDS, seconds)
        with self._lock:
            self.counts[index] += 1
            self.total += seconds

    def read(self) -> tuple[list[int], float]:
        """A consistent copy: the counts and their sum."""
        with self._lock:
            return list(self.counts), self.total


def _tid_time(tid: bytes | None) -> float | None:
    if tid is None or tid == z64:
        return None
    return TimeStamp(tid).timeTime()


def client_metrics(storage: Any) -> dict[str, Any]:
    """The figures of a `zeo.client.storage.ClientStorage`; see the module
    docstring."""
    cache = storage._cache
    manager = storage._manager
    stats = dict(cache.stats())
    counts, total = storage._load_timing.read()
    last_tid = storage.lastTransaction()
    invalidated = manager.last_invalidation   # (tid, epoch seconds) or None
    delay = None
    if invalidated is not None:
        committed = _tid_time(invalidated[0])
        if committed is not None:
            delay = max(0.0, invalidated[1] - committed)
    return {
        "name": storage.__name__,
        "storage": storage._storage,
        "connected": storage.is_connected(),
        "connections": manager.generation,
        "reconnects": max(0, manager.generation - 1),
        "cache": {
            "hits": stats.get("hits", 0),
            "misses": stats.get("misses", 0),
            "records": stats.get("records", 0),
            "bytes": stats.get("bytes", 0),
            "size": cache.getsize(),
        },
        "loads": {"bounds": list(LOAD_BOUNDS), "counts": counts, "sum": total},
        "last_transaction": last_tid.hex(),
        "last_transaction_time": _tid_time(last_tid),
        "invalidation_delay": delay,
        "now": time.time(),
    }
