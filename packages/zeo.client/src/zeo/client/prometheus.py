"""An optional Prometheus collector for an application's ZEO clients.

zeo.client does not depend on ``prometheus_client``: an application that
has it registers a collector for its storages, and only then is the
library imported::

    from prometheus_client import REGISTRY
    from zeo.client.prometheus import client_collector

    REGISTRY.register(client_collector(db.storage))

Each scrape reads ``ClientStorage.metrics()`` (`zeo.client.metrics`), in
the scraping thread: the figures are plain numbers the client keeps, read
without waiting for the server. Metrics carry a ``client`` label (the
storage's display name, or the *name* given):

``zeo_client_cache_hits_total``, ``zeo_client_cache_misses_total``,
``zeo_client_cache_records``, ``zeo_client_cache_bytes``,
``zeo_client_cache_size_bytes``, ``zeo_client_connected``,
``zeo_client_connections_total`` (reconnects are this minus one),
``zeo_client_load_seconds`` (histogram of loads the server answered),
``zeo_client_last_transaction_timestamp_seconds`` and
``zeo_client_invalidation_delay_seconds``.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

__all__ = ["client_collector"]


def client_collector(*storages: Any, name: str | None = None) -> Any:
    """A collector of *storages* (ClientStorage objects) for a
    ``prometheus_client`` registry. *name* labels a single storage."""
    try:
        from prometheus_client.metrics_core import (
            CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily)
        from prometheus_client.registry import Collector
        from prometheus_client.utils import floatToGoString
    except ImportError as error:
        raise ImportError("zeo.client.prometheus needs prometheus_client;"
                          " install it to export the client's metrics") from error
    if name is not None and len(storages) != 1:
        raise ValueError("name labels a single storage")

    class ClientCollector(Collector):
        def collect(self) -> Iterator[Any]:
            figures = [(name or m["name"], m) for m in (s.metrics() for s in storages)]

            def family(kind: Any, metric: str, help_text: str,
                       value: Any) -> Any:
                result = kind(metric, help_text, labels=["client"])
                for label, m in figures:
                    result.add_metric([label], value(m))
                return result

            yield family(CounterMetricFamily, "zeo_client_cache_hits",
                         "Loads answered by the cache.", lambda m: m["cache"]["hits"])
            yield family(CounterMetricFamily, "zeo_client_cache_misses",
                         "Loads the cache could not answer.", lambda m: m["cache"]["misses"])
            yield family(GaugeMetricFamily, "zeo_client_cache_records",
                         "Records in the cache.", lambda m: m["cache"]["records"])
            yield family(GaugeMetricFamily, "zeo_client_cache_bytes",
                         "Bytes the cache's records use.", lambda m: m["cache"]["bytes"])
            yield family(GaugeMetricFamily, "zeo_client_cache_size_bytes",
                         "The cache's size limit.", lambda m: m["cache"]["size"])
            yield family(GaugeMetricFamily, "zeo_client_connected",
                         "1 while connected to a server.", lambda m: int(m["connected"]))
            yield family(CounterMetricFamily, "zeo_client_connections",
                         "Connections that became the one in use (reconnects: minus 1).",
                         lambda m: m["connections"])
            yield family(GaugeMetricFamily, "zeo_client_last_transaction_timestamp_seconds",
                         "Commit time of the last transaction seen (0: none).",
                         lambda m: m["last_transaction_time"] or 0.0)
            yield family(GaugeMetricFamily, "zeo_client_invalidation_delay_seconds",
                         "How long after its commit the last invalidation arrived.",
                         lambda m: m["invalidation_delay"] or 0.0)
            loads = HistogramMetricFamily(
                "zeo_client_load_seconds", "Seconds of loads the server answered.",
                labels=["client"])
            for label, m in figures:
                loads.add_metric([label], _buckets(m["loads"], floatToGoString),
                                 sum_value=m["loads"]["sum"])
            yield loads

    return ClientCollector()


def _buckets(loads: dict[str, Any], go: Any) -> list[tuple[str, float]]:
    buckets: list[tuple[str, float]] = []
    total = 0
    counts: Iterable[int] = loads["counts"]
    for bound, count in zip(loads["bounds"], counts):
        total += count
        buckets.append((go(bound), total))
    buckets.append(("+Inf", total + loads["counts"][-1]))
    return buckets
