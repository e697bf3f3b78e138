"""ClientStorage against a real server: interfaces, the storage API beyond
the conformance suites, blobs, and a persistent cache across restarts and
a kill -9 of the client process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import unittest

import transaction
import ZODB
import ZODB.blob
import ZODB.interfaces
from ZODB.Connection import TransactionMetaData
from ZODB.FileStorage import FileStorage
from ZODB.POSException import ConflictError, POSKeyError, StorageTransactionError
from ZODB.utils import p64, z64
from zope.interface.verify import verifyObject

from zeo.client.errors import ClientDisconnected
from zeo.client.interfaces import IClientStorage, IConnectionManager
from zeo.client.tests.support import OID1, OID2, ServerFixture, child_env, commit, wait_until


class InterfaceTests(ServerFixture):

    def test_interfaces_follow_the_server(self):
        client = self.client()
        verifyObject(ZODB.interfaces.IStorage, client)
        verifyObject(ZODB.interfaces.IMultiCommitStorage, client)
        verifyObject(IClientStorage, client)
        verifyObject(IConnectionManager, client._manager)
        for iface in (ZODB.interfaces.IStorageIteration,
                      ZODB.interfaces.IStorageUndoable,
                      ZODB.interfaces.IStorageRestoreable,
                      ZODB.interfaces.IExternalGC,
                      ZODB.interfaces.IStorageCurrentRecordIteration):
            self.assertTrue(iface.providedBy(client), iface)
            verifyObject(iface, client)
        # No blob directory here, so no blobs, whatever the server says.
        self.assertFalse(ZODB.interfaces.IBlobStorage.providedBy(client))

    def test_a_mapping_storage_offers_less(self):
        from ZODB.MappingStorage import MappingStorage
        address, stop = self.start_server(MappingStorage(), port=0)
        self.addCleanup(stop)
        client = self.client(address)
        self.assertFalse(ZODB.interfaces.IStorageUndoable.providedBy(client))
        self.assertFalse(client.supportsUndo())

    def test_information(self):
        client = self.client(name='the name', storage='1')
        self.assertEqual(client.getName(), 'the name (connected)')
        self.assertEqual(client.sortKey(), f'1:{self.address}')
        commit(client, (OID1, z64, b'x'))
        self.assertEqual(len(client), 1)
        self.assertGreater(client.getSize(), 0)
        status = client.server_status()
        self.assertEqual(status['commits'], 1)
        client.sync()  # no server_sync: nothing
        self.assertIn('ClientStorage', repr(client))


class StorageAPITests(ServerFixture):

    def test_new_oids_come_in_batches(self):
        client = self.client()
        oids = [client.new_oid() for _ in range(150)]
        self.assertEqual(len(set(oids)), 150)
        self.assertEqual(oids, sorted(oids))

    def test_transaction_misuse(self):
        client = self.client()
        t = TransactionMetaData()
        self.assertRaises(StorageTransactionError, client.store, OID1, z64, b'', '', t)
        client.tpc_begin(t)
        self.assertRaises(StorageTransactionError, client.tpc_begin, t)
        self.assertRaises(StorageTransactionError, client.tpc_vote, TransactionMetaData())
        client.tpc_abort(TransactionMetaData())   # not ours: nothing
        client.tpc_abort(t)
        client.tpc_abort(t)                        # twice: nothing

    def test_conflicts_drop_the_cached_record(self):
        client = self.client()
        other = self.client()
        tid1 = commit(client, (OID1, z64, b'1'))
        self.assertEqual(client.load(OID1), (b'1', tid1))
        commit(other, (OID1, tid1, b'2'))
        t = TransactionMetaData()
        client.tpc_begin(t)
        client.store(OID1, tid1, b'3', '', t)
        self.assertRaises(ConflictError, client.tpc_vote, t)
        client.tpc_abort(t)

    def test_server_sync_sees_every_earlier_commit(self):
        client = self.client(server_sync=True)
        other = self.client()
        tid = commit(other, (OID1, z64, b'1'))
        client.sync()   # a round trip: the invalidation came before its reply
        self.assertEqual(client.lastTransaction(), tid)

    def test_prefetch_fills_the_cache(self):
        client = self.client()
        other = self.client()
        tid = commit(other, (OID1, z64, b'1'), (OID2, z64, b'2'))
        client.ping()
        client.prefetch([OID1, OID2], p64(2**62))
        client.ping()   # the loads were sent first: their replies came first
        self.assertEqual(client._cache.load(OID1), (b'1', tid))
        self.assertEqual(client._cache.load(OID2), (b'2', tid))

    def test_iterators_and_history(self):
        client = self.client()
        tids = [commit(client, (OID1, prev, data)) for prev, data in
                ((z64, b'1'),)]
        tids.append(commit(client, (OID1, tids[0], b'2')))
        records = [(txn.tid, [(r.oid, r.data) for r in txn])
                   for txn in client.iterator()]
        self.assertEqual(records, [(tids[0], [(OID1, b'1')]),
                                   (tids[1], [(OID1, b'2')])])
        self.assertEqual([h['tid'] for h in client.history(OID1, 5)],
                         tids[::-1])
        # Dropped iterators are forgotten by the server later.
        for _ in range(120):   # more than the server keeps per connection
            iter(client.iterator()).__next__()
        self.assertEqual(len(list(client.iterator())), 2)

    def test_undo(self):
        client = self.client()
        tid1 = commit(client, (OID1, z64, b'1'))
        tid2 = commit(client, (OID1, tid1, b'2'))
        log = client.undoLog(0, 10)
        self.assertEqual(len(log), 2)
        self.assertEqual(client.undoLog(0, 10, lambda entry: True), [])
        self.assertEqual(len(client.undoInfo(0, 10)), 2)
        t = TransactionMetaData()
        client.tpc_begin(t)
        client.undo(log[0]['id'], t)
        self.assertEqual(client.tpc_vote(t), [OID1])
        tid3 = client.tpc_finish(t)
        self.assertEqual(client.load(OID1), (b'1', tid3))
        self.assertEqual(client.loadSerial(OID1, tid2), b'2')


class BlobTests(ServerFixture):

    def setUp(self):
        super().setUp()
        self.stop()
        self.server_blobs = os.path.join(self.directory, 'server-blobs')
        self.start_server(FileStorage(self.path, blob_dir=self.server_blobs))

    def check_blobs(self, writer, reader):
        db1, db2 = ZODB.DB(writer), ZODB.DB(reader)
        self.addCleanup(db1.close)
        self.addCleanup(db2.close)
        tm1, tm2 = transaction.TransactionManager(), transaction.TransactionManager()
        conn1, conn2 = db1.open(tm1), db2.open(tm2)
        conn1.root()['blob'] = blob = ZODB.blob.Blob(b'x' * 3_000_000)
        tm1.commit()
        with blob.open() as f:
            self.assertEqual(len(f.read()), 3_000_000)
        wait_until(lambda: reader.lastTransaction() == writer.lastTransaction(),
                   message="the reader has the writer's invalidation")
        tm2.begin()
        with conn2.root()['blob'].open() as f:
            self.assertEqual(f.read(), b'x' * 3_000_000)
        with conn1.root()['blob'].open('w') as f:
            f.write(b'second')
        tm1.commit()
        # Without server_sync another client sees a commit once its
        # invalidation has arrived, not when the committer returns.
        wait_until(lambda: reader.lastTransaction() == writer.lastTransaction(),
                   message="the reader has the writer's invalidation")
        tm2.begin()
        with conn2.root()['blob'].open() as f:
            self.assertEqual(f.read(), b'second')
        tm1.abort()
        tm2.abort()

    def test_blob_cache(self):
        writer = self.client(blob_dir=os.path.join(self.directory, 'c1'))
        reader = self.client(blob_dir=os.path.join(self.directory, 'c2'),
                             blob_cache_size=10_000_000)
        self.assertTrue(ZODB.interfaces.IBlobStorage.providedBy(writer))
        self.check_blobs(writer, reader)
        self.assertRaises(POSKeyError, reader.loadBlob, OID1, z64)

    def test_shared_blob_directory(self):
        writer = self.client(blob_dir=self.server_blobs, shared_blob_dir=True)
        reader = self.client(blob_dir=self.server_blobs, shared_blob_dir=True)
        self.check_blobs(writer, reader)
        self.assertRaises(POSKeyError, reader.loadBlob, OID1, z64)


CHILD = textwrap.dedent('''
    import sys
    from ZODB.Connection import TransactionMetaData
    from ZODB.POSException import POSKeyError
    from ZODB.utils import p64, z64
    from zeo.client.storage import ClientStorage
    client = ClientStorage(('127.0.0.1', int(sys.argv[1])), client='k',
                           var=sys.argv[2], wait_timeout=30)
    oid = p64(1)
    try:
        data, tid = client.load(oid)
    except POSKeyError:
        data, tid = b'0', z64
    while True:
        t = TransactionMetaData()
        client.tpc_begin(t)
        client.store(oid, tid, b'%d' % (int(data) + 1), '', t)
        client.tpc_vote(t)
        tid = client.tpc_finish(t)
        data, loaded = client.load(oid)
        if loaded != tid:
            raise SystemExit('read the wrong revision')
        try:
            client.load(p64(2))
        except POSKeyError:
            pass
        print(int(data), flush=True)
''')


class PersistentCacheTests(ServerFixture):

    def run_child(self, var, lines):
        env = child_env()
        child = subprocess.Popen(
            [sys.executable, '-c', CHILD, str(self.port), var],
            stdout=subprocess.PIPE, env=env)
        self.addCleanup(child.wait)
        self.addCleanup(child.stdout.close)
        values = [int(child.stdout.readline()) for _ in range(lines)]
        os.kill(child.pid, signal.SIGKILL)
        child.wait()   # the cache file's lock goes with the process
        return values

    def test_a_killed_client_process_never_serves_stale_data(self):
        var = os.path.join(self.directory, 'var')
        os.mkdir(var)
        other = self.client()
        values = self.run_child(var, 20)
        self.assertEqual(values, list(range(1, 21)))
        # Change both objects behind the dead client's back.
        data, tid = other.load(OID1)
        commit(other, (OID1, tid, b'1000'), (OID2, z64, b'two'))
        values = self.run_child(var, 5)
        self.assertEqual(values, list(range(1001, 1006)))
        data, tid = other.load(OID1)
        tid2 = commit(other, (OID1, tid, b'2000'))
        client = self.client(client='k', var=var)
        self.assertEqual(client.load(OID1), (b'2000', tid2))
        self.assertEqual(client.load(OID2), other.load(OID2))
        self.assertEqual(client.lastTransaction(), tid2)

    def test_the_cache_survives_a_clean_restart(self):
        var = os.path.join(self.directory, 'var')
        os.mkdir(var)
        client = self.client(client='k', var=var)
        tid = commit(client, (OID1, z64, b'1'))
        client.close()
        self.assertRaises(ClientDisconnected, client.load, OID1)
        client = self.client(client='k', var=var)
        self.assertEqual(client._manager.verify_result, 'cache up to date')
        self.assertEqual(client._cache.load(OID1), (b'1', tid))
        self.assertTrue(os.path.exists(os.path.join(var, 'k-1.zec')))


if __name__ == '__main__':
    unittest.main()
