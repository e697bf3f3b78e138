"""Connection management against real servers over real sockets:
restarts, cache verification, read-only fallback, timeouts, disconnects."""
from __future__ import annotations

import os
import shutil
import threading
import time
import unittest

from ZODB.Connection import TransactionMetaData
from ZODB.MappingStorage import MappingStorage
from ZODB.POSException import POSKeyError, ReadOnlyError
from ZODB.utils import p64, z64

from zeo.client.errors import ClientDisconnected
from zeo.client.storage import ClientStorage
from zeo.client.tests.support import (
    OID1, OID2, RecordingDB, ServerFixture, commit, free_port, wait_until)


class RestartTests(ServerFixture):

    def test_restart_reconnects_with_the_cache_up_to_date(self):
        client = self.client()
        tid = commit(client, (OID1, z64, b'one'))
        self.assertEqual(client.load(OID1), (b'one', tid))
        generation = client.connection_generation
        self.stop()
        wait_until(lambda: not client.is_connected(), message='a disconnect')
        self.start_server()
        wait_until(client.is_connected, message='a reconnect')
        self.assertEqual(client._manager.verify_result, 'cache up to date')
        self.assertGreater(client.connection_generation, generation)
        self.assertEqual(client.load(OID1), (b'one', tid))
        self.assertEqual(client.lastTransaction(), tid)

    def test_missed_invalidations_are_applied_and_the_db_told(self):
        other = self.client()
        tid1 = commit(other, (OID1, z64, b'a1'), (OID2, z64, b'b1'))
        cache_dir = os.path.join(self.directory, 'var')
        os.mkdir(cache_dir)
        client = self.client(client='c', var=cache_dir)
        self.assertEqual(client.load(OID1), (b'a1', tid1))
        self.assertEqual(client.load(OID2), (b'b1', tid1))
        client.close()
        tid2 = commit(other, (OID1, tid1, b'a2'))
        self.stop()
        client, db = self.reopen(client='c', var=cache_dir)
        self.assertEqual(client._manager.verify_result, 'quick verification')
        # Only what changed is invalidated; the object caches stay (#20).
        self.assertEqual(db.invalidated, [(tid2, [OID1])])
        self.assertEqual(db.cache_invalidations, 0)
        self.assertEqual(client.load(OID1), (b'a2', tid2))
        self.assertEqual(client._cache.load(OID2), (b'b1', tid1))
        self.assertEqual(client.lastTransaction(), tid2)

    def test_invalidations_of_a_live_connection(self):
        db = RecordingDB()
        client = self.client(db=db)
        other = self.client()
        tid1 = commit(other, (OID1, z64, b'a1'))
        wait_until(lambda: client.lastTransaction() == tid1)
        self.assertEqual(client.load(OID1), (b'a1', tid1))
        tid2 = commit(other, (OID1, tid1, b'a2'))
        wait_until(lambda: client.lastTransaction() == tid2)
        # The cache was invalidated before the last tid moved.
        self.assertEqual(client._cache.loadBefore(OID1, p64(2**62)), None)
        self.assertEqual(client.loadBefore(OID1, tid2), (b'a1', tid1, tid2))
        self.assertEqual(client.load(OID1), (b'a2', tid2))
        self.assertEqual(db.invalidated, [(tid1, [OID1]), (tid2, [OID1])])

    def test_the_server_restored_from_a_backup_drops_the_cache(self):
        cache_dir = os.path.join(self.directory, 'var')
        os.mkdir(cache_dir)
        client = self.client(client='c', var=cache_dir)
        tid = commit(client, (OID1, z64, b'a1'))
        self.assertEqual(client.load(OID1), (b'a1', tid))
        client.close()
        self.stop()
        os.remove(self.path)  # the "backup" is an empty database
        with self.assertLogs('zeo.client', 'ERROR') as logged:
            client, db = self.reopen(client='c', var=cache_dir, server_behind_wait=0)
        self.assertIn('restored from a backup', '\n'.join(logged.output))
        self.assertEqual(client._manager.verify_result, 'server behind cache')
        self.assertEqual(db.cache_invalidations, 1)
        self.assertEqual(client.lastTransaction(), z64)
        self.assertRaises(POSKeyError, client.load, OID1)

    def test_a_server_behind_the_cache_is_not_used_until_it_catches_up(self):
        # A front or a standby that has not yet heard of the client's last
        # commit: using it would take the client back in time (and drop
        # its cache). It is refused and retried until it has caught up.
        cache_dir = os.path.join(self.directory, 'var')
        os.mkdir(cache_dir)
        client = self.client(client='c', var=cache_dir)
        tid1 = commit(client, (OID1, z64, b'a1'))
        self.stop()
        behind = self.path + '.behind'
        shutil.copyfile(self.path, behind)
        self.start_server()
        wait_until(client.is_connected, message='a connection')
        tid2 = commit(client, (OID1, tid1, b'a2'))
        client.close()
        self.stop()
        caught_up = self.path + '.caught-up'
        for name in ('', '.index', '.tmp', '.lock'):
            if os.path.exists(self.path + name):
                os.rename(self.path + name, caught_up + name)
        shutil.copyfile(behind, self.path)
        with self.assertLogs('zeo.client', 'WARNING') as logged:
            client, db = self.reopen(connected=False, client='c', var=cache_dir,
                                     server_behind_wait=30)
            wait_until(lambda: 'not using it yet' in '\n'.join(logged.output),
                       message='a refusal')
        self.assertFalse(client.is_connected())
        # The server catches up: the client uses it, keeping its cache.
        self.stop()
        for name in ('', '.index', '.tmp', '.lock'):
            if os.path.exists(self.path + name):
                os.remove(self.path + name)
            if os.path.exists(caught_up + name):
                os.rename(caught_up + name, self.path + name)
        self.start_server()
        wait_until(client.is_connected, message='a connection')
        self.assertEqual(client._manager.verify_result, 'cache up to date')
        self.assertEqual(db.cache_invalidations, 0)
        self.assertEqual(client.load(OID1), (b'a2', tid2))

    def test_a_transaction_cut_by_a_disconnect_cannot_commit(self):
        client = self.client()
        t = TransactionMetaData()
        client.tpc_begin(t)
        client.store(OID1, z64, b'half', '', t)
        self.stop()
        self.start_server()
        wait_until(client.is_connected, message='a reconnect')
        self.assertRaises(ClientDisconnected, client.store, OID2, z64, b'x', '', t)
        self.assertRaises(ClientDisconnected, client.tpc_vote, t)
        client.tpc_abort(t)
        self.assertRaises(POSKeyError, client.load, OID1)
        # and the next transaction works
        tid = commit(client, (OID1, z64, b'whole'))
        self.assertEqual(client.load(OID1), (b'whole', tid))

    def test_calls_in_flight_fail_when_the_server_goes(self):
        holder = self.client()
        waiter = self.client()
        t1, t2 = TransactionMetaData(), TransactionMetaData()
        holder.tpc_begin(t1)
        holder.store(OID1, z64, b'1', '', t1)
        holder.tpc_vote(t1)  # holds the commit lock
        waiter.tpc_begin(t2)
        waiter.store(OID2, z64, b'2', '', t2)
        errors = []

        def vote():
            try:
                waiter.tpc_vote(t2)
            except Exception as error:
                errors.append(error)

        thread = threading.Thread(target=vote)
        thread.start()
        time.sleep(0.2)
        self.assertTrue(thread.is_alive())  # waiting for the lock
        self.stop()
        thread.join(10)
        self.assertFalse(thread.is_alive())
        self.assertEqual(len(errors), 1)
        self.assertIsInstance(errors[0], ClientDisconnected)
        waiter.tpc_abort(t2)
        holder.tpc_abort(t1)


class InvalidationQueueTests(ServerFixture):

    server_options = {'invalidation_queue_size': 1}

    def test_a_cache_older_than_the_queue_is_dropped(self):
        other = self.client()
        tid1 = commit(other, (OID1, z64, b'a1'))
        cache_dir = os.path.join(self.directory, 'var')
        os.mkdir(cache_dir)
        client = self.client(client='c', var=cache_dir)
        self.assertEqual(client.load(OID1), (b'a1', tid1))
        client.close()
        tid2 = commit(other, (OID1, tid1, b'a2'))
        tid3 = commit(other, (OID2, z64, b'b3'))
        self.stop()
        client, db = self.reopen(client='c', var=cache_dir)
        self.assertEqual(client._manager.verify_result, 'cache too old')
        self.assertEqual(db.cache_invalidations, 1)
        self.assertEqual(len(client._cache), 0)
        self.assertEqual(client.lastTransaction(), tid3)
        self.assertEqual(client.load(OID1), (b'a2', tid2))


class TimeoutTests(ServerFixture):

    def test_no_server_at_all(self):
        start = time.monotonic()
        with self.assertRaises(ClientDisconnected):
            ClientStorage(('127.0.0.1', free_port()), wait_timeout=0.3)
        self.assertLess(time.monotonic() - start, 10)

    def test_calls_wait_for_a_connection_then_fail(self):
        client = self.client(wait_timeout=0.3)
        self.stop()
        wait_until(lambda: not client.is_connected())
        start = time.monotonic()
        self.assertRaises(ClientDisconnected, client.load, OID1)
        self.assertRaises(ClientDisconnected, client.ping)
        self.assertGreaterEqual(time.monotonic() - start, 0.5)
        # The cache still answers what it has.
        self.assertEqual(client.lastTransaction(), z64)

    def test_calls_wait_for_a_reconnect(self):
        client = self.client(wait_timeout=30)
        self.stop()
        wait_until(lambda: not client.is_connected())
        timer = threading.Timer(0.3, self.start_server)
        timer.start()
        self.addCleanup(timer.join)
        client.ping()   # waits until the server is back
        self.assertTrue(client.is_connected())

    def test_never_connected_without_wait_fails_at_once(self):
        client = ClientStorage(('127.0.0.1', free_port()), wait=False)
        self.addCleanup(client.close)
        start = time.monotonic()
        self.assertRaises(ClientDisconnected, client.ping)
        self.assertRaises(ClientDisconnected, client.sortKey)
        self.assertLess(time.monotonic() - start, 1)


class AddressTests(ServerFixture):

    def test_the_address_that_answers_wins(self):
        dead = ('127.0.0.1', free_port())
        client = self.client([dead, self.address])
        self.assertEqual(client._server_address, self.address)
        self.assertTrue(client.sortKey().endswith(str(self.address)))
        self.assertIn('(connected)', client.getName())

    def test_unix_socket(self):
        path = os.path.join(self.directory, 'zeo.sock')
        address, stop = self.start_server(MappingStorage(), port=path)
        self.addCleanup(stop)
        client = self.client(path)
        client.ping()
        self.assertEqual(client._server_address, path)
        # Direct calls work over Unix sockets too.
        self.assertIsNotNone(client._manager.channel._baton)
        tid = commit(client, (OID1, z64, b'over unix'))
        self.assertEqual(client.load(OID1), (b'over unix', tid))

    def test_new_addr(self):
        client = self.client()
        address, stop = self.start_server(MappingStorage(), port=free_port())
        self.addCleanup(stop)
        client.new_addr(address)
        wait_until(lambda: client._server_address == address and client.is_connected())

    def test_read_only_fallback_then_upgrade(self):
        self.stop()
        read_only, stop_ro = self.start_server(
            MappingStorage(), port=free_port(), read_only=True)
        self.addCleanup(stop_ro)
        client = self.client([read_only, self.address], read_only_fallback=True)
        self.assertTrue(client.isReadOnly())
        self.assertRaises(ReadOnlyError, client.tpc_begin, TransactionMetaData())
        self.assertRaises(ReadOnlyError, client.new_oid)
        client.ping()
        self.start_server(MappingStorage())
        wait_until(lambda: not client.isReadOnly() and client.is_connected(),
                   message='the upgrade')
        self.assertEqual(client._server_address, self.address)
        tid = commit(client, (OID1, z64, b'w'))
        self.assertEqual(client.load(OID1), (b'w', tid))

    def test_a_writable_client_refuses_a_read_only_server(self):
        self.stop()
        address, stop = self.start_server(MappingStorage(), port=free_port(),
                                          read_only=True)
        self.addCleanup(stop)
        with self.assertRaises(ClientDisconnected):
            ClientStorage(address, wait_timeout=0.5, disconnect_poll=0.05)
        client = self.client(address, read_only=True)
        self.assertTrue(client.isReadOnly())
        self.assertRaises(ReadOnlyError, client.tpc_begin, TransactionMetaData())


if __name__ == '__main__':
    unittest.main()
