"""A client's own figures (``ClientStorage.metrics()``) and the optional
Prometheus collector, against a real server."""

import subprocess
import sys
import textwrap
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from ZODB.utils import z64

from zeo.client.tests.support import OID1, OID2, ServerFixture, child_env, commit, wait_until


def samples(text):
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


class ClientMetricsTests(ServerFixture):

    def test_cache_loads_reconnects_and_how_far_behind(self):
        client = self.client()
        other = self.client()
        first = commit(other, (OID1, z64, b'one'))
        wait_until(lambda: client.lastTransaction() == first, message='the invalidation')
        figures = client.metrics()
        self.assertTrue(figures['connected'])
        self.assertEqual(figures['connections'], 1)
        self.assertEqual(figures['reconnects'], 0)
        self.assertEqual(figures['last_transaction'], first.hex())
        self.assertLessEqual(figures['last_transaction_time'], time.time())
        self.assertIsNotNone(figures['invalidation_delay'])
        self.assertGreaterEqual(figures['invalidation_delay'], 0.0)
        # A miss goes to the server (and is timed), then the cache answers.
        before = client.metrics()['cache']
        self.assertEqual(client.load(OID1), (b'one', first))
        self.assertEqual(client.load(OID1), (b'one', first))
        figures = client.metrics()
        self.assertEqual(figures['cache']['misses'], before['misses'] + 1)
        self.assertEqual(figures['cache']['hits'], before['hits'] + 1)
        self.assertGreater(figures['cache']['size'], 0)
        self.assertGreaterEqual(figures['cache']['records'], 1)
        self.assertEqual(sum(figures['loads']['counts']), 1)
        self.assertGreater(figures['loads']['sum'], 0.0)
        # A reconnect is counted.
        self.stop()
        wait_until(lambda: not client.is_connected(), message='the disconnect')
        self.assertFalse(client.metrics()['connected'])
        self.start_server()
        wait_until(client.is_connected, message='the reconnect')
        figures = client.metrics()
        self.assertEqual(figures['connections'], 2)
        self.assertEqual(figures['reconnects'], 1)

    def test_the_collector(self):
        from zeo.client.prometheus import client_collector

        client = self.client()
        commit(client, (OID2, z64, b'two'))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(client_collector(client, name='app'))
        found = samples(generate_latest(registry).decode())
        label = frozenset({('client', 'app')})
        self.assertEqual(found[('zeo_client_connected', label)], 1)
        self.assertEqual(found[('zeo_client_connections_total', label)], 1)
        self.assertIn(('zeo_client_cache_hits_total', label), found)
        self.assertIn(('zeo_client_load_seconds_count', label), found)
        self.assertGreater(found[('zeo_client_last_transaction_timestamp_seconds', label)], 0)
        self.assertGreater(found[('zeo_client_cache_size_bytes', label)], 0)

    def test_the_client_does_not_need_the_library(self):
        code = textwrap.dedent("""\
            import sys
            sys.modules["prometheus_client"] = None
            import zeo.client.storage, zeo.client.metrics, zeo.client.prometheus
            try:
                zeo.client.prometheus.client_collector()
            except ImportError as error:
                print(error)
            """)
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
            env=child_env())
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("needs prometheus_client", result.stdout)
