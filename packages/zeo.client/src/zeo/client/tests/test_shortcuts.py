"""zeo.client.client, DB and connection."""
from __future__ import annotations

import unittest

import transaction
from ZODB.MappingStorage import MappingStorage

import zeo.client
import zeo.server
from zeo.client.tests.support import free_port


class ShortcutTests(unittest.TestCase):

    def setUp(self):
        self.address, stop = zeo.server.server(storages={'1': MappingStorage()})
        self.addCleanup(stop)

    def test_client(self):
        client = zeo.client.client(self.address)
        self.addCleanup(client.close)
        self.assertIsInstance(client, zeo.client.ClientStorage)
        client.ping()

    def test_db_and_connection(self):
        db = zeo.client.DB(self.address)
        self.addCleanup(db.close)
        with db.transaction() as conn:
            conn.root()['x'] = 1
        conn = zeo.client.connection(self.address)
        self.assertEqual(conn.root()['x'], 1)
        storage = conn.db().storage
        conn.close()   # closes its database and storage too
        self.assertFalse(storage.is_connected())
        transaction.abort()

    def test_no_module_is_named_like_the_connection_shortcut(self):
        # With a subpackage zeo.client.connection, the attribute
        # zeo.client.connection is either the package or this function:
        # ``import zeo.client.connection.locks as locks`` then failed.
        import zeo.client.connections.locks as locks
        self.assertEqual(locks.__name__, 'zeo.client.connections.locks')
        self.assertEqual(zeo.client.connection.__module__, 'zeo.client.shortcuts')

    def test_the_storage_is_closed_when_the_db_cannot_open(self):
        with self.assertRaises(zeo.client.ClientDisconnected):
            zeo.client.DB(('127.0.0.1', free_port()), wait_timeout=0.1)

    def test_public_names(self):
        for name in zeo.client.__all__:
            self.assertTrue(hasattr(zeo.client, name), name)
        self.assertRaises(AttributeError, getattr, zeo.client, 'nonesuch')


if __name__ == '__main__':
    unittest.main()
