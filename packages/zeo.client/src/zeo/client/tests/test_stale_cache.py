"""The ``StaleCache`` event: sent when the client drops a cache it cannot
bring up to date, so that applications can react."""
import os

import zope.event
from ZODB.utils import z64
from zope.interface.verify import verifyObject

from zeo.client.interfaces import IStaleCache, StaleCache
from zeo.client.tests.support import OID1, OID2, ServerFixture
from zeo.client.tests.support import commit


class Subscribed(ServerFixture):

    def setUp(self):
        super().setUp()
        self.events = []
        zope.event.subscribers.append(self.subscriber)
        self.addCleanup(zope.event.subscribers.remove, self.subscriber)

    def subscriber(self, event):
        if isinstance(event, StaleCache):
            # The cache is not emptied yet when subscribers hear of it.
            self.events.append((event, len(event.storage._cache)))

    def cached_client(self):
        cache_dir = os.path.join(self.directory, 'var')
        os.makedirs(cache_dir, exist_ok=True)
        return self.client(client='c', var=cache_dir), cache_dir


class CacheTooOldTests(Subscribed):

    server_options = {'invalidation_queue_size': 1}

    def test_a_cache_older_than_the_queue(self):
        other = self.client()
        tid1 = commit(other, (OID1, z64, b'a1'))
        client, cache_dir = self.cached_client()
        self.assertEqual(client.load(OID1), (b'a1', tid1))
        client.close()
        commit(other, (OID1, tid1, b'a2'))
        commit(other, (OID2, z64, b'b3'))
        self.stop()
        self.assertEqual(self.events, [])
        client, _ = self.reopen(client='c', var=cache_dir)
        self.assertEqual(client._manager.verify_result, 'cache too old')
        [(event, cached)] = self.events
        self.assertTrue(verifyObject(IStaleCache, event))
        self.assertIs(event.storage, client)
        self.assertEqual(event.reason, 'cache too old')
        self.assertEqual(cached, 1)
        self.assertEqual(len(client._cache), 0)


class ServerBehindTests(Subscribed):

    def test_a_server_restored_from_a_backup(self):
        client, cache_dir = self.cached_client()
        commit(client, (OID1, z64, b'a1'))
        client.close()
        self.stop()
        os.remove(self.path)  # the "backup" is an empty database
        with self.assertLogs('zeo.client', 'ERROR'):
            client, _ = self.reopen(client='c', var=cache_dir, server_behind_wait=0)
        [(event, _)] = self.events
        self.assertIs(event.storage, client)
        self.assertEqual(event.reason, 'server behind cache')

    def test_an_up_to_date_cache_sends_nothing(self):
        client, cache_dir = self.cached_client()
        commit(client, (OID1, z64, b'a1'))
        client.close()
        self.stop()
        self.reopen(client='c', var=cache_dir)
        self.assertEqual(self.events, [])

    def test_a_failing_subscriber_is_logged(self):
        def fail(event):
            if isinstance(event, StaleCache):
                raise RuntimeError('subscriber bug')
        client, cache_dir = self.cached_client()
        commit(client, (OID1, z64, b'a1'))
        client.close()
        self.stop()
        os.remove(self.path)
        zope.event.subscribers.append(fail)
        self.addCleanup(zope.event.subscribers.remove, fail)
        with self.assertLogs('zeo.client', 'ERROR') as logged:
            client, _ = self.reopen(client='c', var=cache_dir, server_behind_wait=0)
        self.assertIn('StaleCache subscriber failed', '\n'.join(logged.output))
        self.assertEqual(client._manager.verify_result, 'server behind cache')
        self.assertTrue(client.is_connected())
        self.assertEqual(client.lastTransaction(), z64)

    def test_repr(self):
        class Storage:
            __name__ = 'x' * 300
        text = repr(StaleCache(Storage(), 'server behind cache'))
        self.assertLess(len(text), 260)
        self.assertTrue(text.endswith(': server behind cache>'))
