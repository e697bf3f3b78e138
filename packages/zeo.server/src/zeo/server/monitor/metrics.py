"""The server's figures as Prometheus metrics, through ``prometheus_client``.

`ServerCollector` is a custom collector: nothing is counted through the
library while the server works. The server keeps plain ints and `Timing`
bucket counts (`zeo.server.stats`, `zeo.server.budgets`), and each scrape
turns them into metric families, on the event loop (the package's Rule 2).
The library writes the exposition format: the Prometheus text format, or
OpenMetrics when the scraper's ``Accept`` asks for it (`exposition`).

Metrics (``storage`` is the storage's name; process-wide ones have none):

=====================================  =======================================
``zeo_connections``                    connections by ``storage`` and
                                       ``state`` (see `snapshot.STATES`;
                                       storage "" before registration)
``zeo_loads_total`` ... (counters)     loads, stores, commits, aborts,
                                       conflicts, conflicts resolved,
                                       transaction timeouts, bytes received
                                       and sent, per storage
``zeo_commit_lock_wait_seconds``       histograms per storage: waiting for
``zeo_commit_lock_hold_seconds``       the commit lock, holding it, and the
``zeo_vote_duration_seconds``          vote and ``tpc_finish`` calls from
``zeo_finish_duration_seconds``        receipt to reply
``zeo_refusals_total``                 requests and connections refused or
                                       cut off, by ``limit`` (the ``<zeo>``
                                       key) and ``storage``
gauges                                 invalidation queue length, active
                                       transactions, lock waiters, spooled
                                       bytes (and blob bytes), open
                                       iterators, buffered input and output,
                                       storage size, objects, last commit
=====================================  =======================================

Plus the library's process and platform collectors (memory, CPU, open
files), in the endpoint's own registry, never the library's global one.
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from zeo.server.monitor.snapshot import STATES, Z64, tid_time, connection_state
from zeo.server.stats import LATENCY_BOUNDS, Timing

if TYPE_CHECKING:
    from zeo.server.storage_server import StorageServer

__all__ = ["PROCESS_LIMITS", "STORAGE_LIMITS", "ServerCollector", "exposition", "registry_for"]

#: Process-wide limits whose refusals are counted (always exposed, 0 or not).
PROCESS_LIMITS = (
    "max-connections", "max-connections-per-address", "max-total-input-buffer",
    "max-total-output-buffer", "max-output-buffer", "idle-timeout",
    "handshake-timeout", "max-spool-size", "max-spool-total", "max-iterators",
    "max-server-iterators",
)
#: Per-storage limits whose refusals are counted.
STORAGE_LIMITS = ("reader-stall-timeout", "transaction-timeout")

#: (metric name without _total, StorageStats attribute, help).
_COUNTERS = (
    ("zeo_loads", "loads", "Objects loaded (loadBefore calls)."),
    ("zeo_stores", "stores", "Objects stored in transactions (store-like calls)."),
    ("zeo_commits", "commits", "Transactions committed."),
    ("zeo_aborts", "aborts", "Transactions aborted (by the client, a conflict, a"
                             " timeout or a lost connection)."),
    ("zeo_conflicts", "conflicts", "Write conflicts found at vote."),
    ("zeo_conflicts_resolved", "conflicts_resolved", "Write conflicts resolved."),
    ("zeo_transaction_timeouts", "timeouts",
     "Transactions aborted for holding the commit lock too long."),
    ("zeo_received_bytes", "bytes_in", "Bytes received from registered clients."),
    ("zeo_sent_bytes", "bytes_out", "Bytes sent to registered clients."),
)
#: (metric name, StorageStats Timing attribute, help).
_HISTOGRAMS = (
    ("zeo_commit_lock_wait_seconds", "lock_wait",
     "Seconds a vote waited for the commit lock (0 when it was free)."),
    ("zeo_commit_lock_hold_seconds", "lock_hold",
     "Seconds a transaction held the commit lock (vote to finish or abort)."),
    ("zeo_vote_duration_seconds", "vote_latency",
     "Seconds from a vote call to its reply (waiting for the lock included)."),
    ("zeo_finish_duration_seconds", "finish_latency",
     "Seconds from a tpc_finish call to its reply."),
)


def _buckets(timing: Timing) -> list[tuple[str, float]]:
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip(LATENCY_BOUNDS, timing.counts):
        total += count
        buckets.append((floatToGoString(bound), total))
    buckets.append(("+Inf", total + timing.counts[-1]))
    return buckets


class ServerCollector(Collector):
    """The metrics of one `StorageServer`; see the module docstring."""

    def __init__(self, server: StorageServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server = self.server
        storages = list(server.storages.values())
        names = [served.name for served in storages]
        yield self._connections(names)
        for metric, attribute, help_text in _COUNTERS:
            family = CounterMetricFamily(metric, help_text, labels=["storage"])
            for served in storages:
                family.add_metric([served.name], getattr(served.stats, attribute))
            yield family
        for metric, attribute, help_text in _HISTOGRAMS:
            histogram = HistogramMetricFamily(metric, help_text, labels=["storage"])
            for served in storages:
                timing = getattr(served.stats, attribute)
                histogram.add_metric([served.name], _buckets(timing), sum_value=timing.total)
            yield histogram
        yield self._refusals(storages)
        yield from self._storage_gauges(storages)
        yield from self._process_gauges()

    def _connections(self, names: list[str]) -> GaugeMetricFamily:
        now, monotonic_now = time.time(), time.monotonic()
        counts: collections.Counter[tuple[str, str]] = collections.Counter()
        for connection in list(self.server.connections):
            state, _ = connection_state(connection, now, monotonic_now)
            session = connection.session
            served = session.served if session is not None else None
            counts[(served.name if served is not None else "", state)] += 1
        family = GaugeMetricFamily(
            "zeo_connections", "Client connections by storage and state"
            " (storage is empty before a client registers).", labels=["storage", "state"])
        for name in names:
            for state in STATES[:4]:
                family.add_metric([name, state], counts.pop((name, state), 0))
        for state in STATES[4:]:
            family.add_metric(["", state], counts.pop(("", state), 0))
        for (name, state), count in sorted(counts.items()):
            family.add_metric([name, state], count)
        return family

    def _refusals(self, storages: list[Any]) -> CounterMetricFamily:
        server = self.server
        family = CounterMetricFamily(
            "zeo_refusals", "Connections and requests refused or cut off, by the"
            " <zeo> key of the limit.", labels=["limit", "storage"])
        process = collections.Counter(server.budgets.refusals)
        process.update(server.spool_budget.refusals)
        process.update(server.iterator_budget.refusals)
        for limit in PROCESS_LIMITS:
            family.add_metric([limit, ""], process.pop(limit, 0))
        for limit, count in sorted(process.items()):
            family.add_metric([limit, ""], count)
        for served in storages:
            refusals = collections.Counter(served.stats.refusals)
            for limit in STORAGE_LIMITS:
                family.add_metric([limit, served.name], refusals.pop(limit, 0))
            for limit, count in sorted(refusals.items()):
                family.add_metric([limit, served.name], count)
        return family

    def _storage_gauges(self, storages: list[Any]) -> Iterator[Metric]:
        now = time.time()

        def gauge(name: str, help_text: str, value: Any) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, help_text, labels=["storage"])
            for served in storages:
                family.add_metric([served.name], value(served))
            return family

        yield gauge("zeo_invalidation_queue_length",
                    "Transactions in the invalidation queue.", lambda s: len(s.queue))
        yield gauge("zeo_active_transactions", "Open transactions (tpc_begin to the end).",
                    lambda s: s.stats.active_txns)
        yield gauge("zeo_commit_lock_waiting", "Votes waiting for the commit lock.",
                    lambda s: s.lock.waiting)
        yield gauge("zeo_commit_lock_held_seconds",
                    "Seconds the current holder has held the commit lock (0: free).",
                    lambda s: 0.0 if s.lock.locked_since is None
                    else max(0.0, now - s.lock.locked_since))
        yield gauge("zeo_spool_bytes", "Bytes spooled by open transactions, blobs included.",
                    lambda s: sum(x.txn.spool.size for x in s.sessions if x.txn is not None))
        yield gauge("zeo_spool_blob_bytes", "Blob bytes uploaded by open transactions.",
                    lambda s: sum(x.txn.spool.blob_bytes for x in s.sessions
                                  if x.txn is not None))
        yield gauge("zeo_open_iterators", "Open transaction and record iterators.",
                    lambda s: sum(len(getattr(x, "_iterators", None) or ())
                                  for x in s.sessions))
        # As clients are told: a storage on a database is asked now and then,
        # in a thread (zeo.server.size_info), never here on the loop.
        yield gauge("zeo_storage_size_bytes", "The storage's size (getSize).",
                    lambda s: s.size_info()["size"])
        yield gauge("zeo_storage_objects", "Objects in the storage (len).",
                    lambda s: s.size_info()["length"])
        yield gauge("zeo_last_transaction_timestamp_seconds",
                    "Time of the storage's last transaction (0: none).",
                    lambda s: tid_time(s.storage.lastTransaction() or Z64) or 0.0)
        yield gauge("zeo_start_time_seconds", "When the storage started being served.",
                    lambda s: s.stats.start_time)

    def _process_gauges(self) -> Iterator[Metric]:
        server = self.server
        spool = server.spool_budget
        yield GaugeMetricFamily("zeo_server_spool_bytes",
                                "Bytes all open transactions hold spooled (max-spool-total).",
                                value=spool.used)
        yield GaugeMetricFamily("zeo_server_input_buffer_bytes",
                                "Bytes of unfinished requests all connections hold.",
                                value=server.budgets.input_total)
        yield GaugeMetricFamily("zeo_server_output_buffer_bytes",
                                "Bytes of replies waiting unsent, all connections.",
                                value=server.budgets.output_total)
        yield GaugeMetricFamily("zeo_server_transaction_iterators",
                                "Open transaction iterators (max-server-iterators).",
                                value=server.iterator_budget.used)


def registry_for(server: StorageServer) -> CollectorRegistry:
    """A registry of the server's collector and the process's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The metrics as the scraper asked (its ``Accept`` header): the body
    and its content type."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
