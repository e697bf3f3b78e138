"""Packs and blobs with several runzeo fronts over one RelStorage database.

Only one front packs at a time: RelStorage holds a PostgreSQL advisory
lock (its pack lock) for the whole pack, and a front asked to pack while
another process holds it refuses at once with ``StorageError("Already
packing ...")`` (zeo.server.relstorage_source, ``guard_pack``). Blobs are
stored in the database (``shared-blob-dir false``), each front with a blob
cache directory of its own: a blob committed through one front is read
through another.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import unittest

import psycopg2
import transaction
import ZODB
from ZODB.blob import Blob
from ZODB.POSException import StorageError

import zeo.client
from zeo.server.tests.postgres import POSTGRES_LAYER, create_root, relstorage_section
from zeo.server.tests.relstorage_support import fronts, read, write
from zeo.server.tests.support import ServerProcess

__all__ = ["BlobTests", "PackTests"]

#: RelStorage's advisory lock key for packs (and undos) on PostgreSQL.
PACK_LOCK = -2


class PackTests(unittest.TestCase):
    layer = POSTGRES_LAYER

    def test_a_front_refuses_to_pack_while_another_packs(self):
        dsn = POSTGRES_LAYER.new_database()
        create_root(dsn)
        a, b = fronts(self, 2, dsn)
        db_a = ZODB.DB(zeo.client.ClientStorage(a.address, wait_timeout=30))
        self.addCleanup(db_a.close)
        db_b = ZODB.DB(zeo.client.ClientStorage(b.address, wait_timeout=30))
        self.addCleanup(db_b.close)
        for n in range(3):
            write(db_a, n=n)
        # Another front packing holds the database's pack lock.
        holder = psycopg2.connect(dsn)
        self.addCleanup(holder.close)
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", (PACK_LOCK,))
        with self.assertRaisesRegex(StorageError, "Already packing"):
            db_b.pack(time.time())
        with self.assertRaisesRegex(StorageError, "Already packing"):
            db_a.pack(time.time())
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", (PACK_LOCK,))
        # Released: a pack goes through, on either front, one after the other.
        db_b.pack(time.time())
        write(db_a, n=10)
        db_a.pack(time.time())
        self.assertEqual(read(db_b, "n"), 10)
        for server in (a, b):
            self.assertEqual(server.stop(), 0)
            self.assertNotIn("Traceback", server.log_text())


class BlobTests(unittest.TestCase):
    layer = POSTGRES_LAYER

    def blob_front(self, dsn: str) -> ServerProcess:
        directory = tempfile.mkdtemp(prefix="zeo-front-")
        self.addCleanup(shutil.rmtree, directory, True)
        storage = relstorage_section(dsn, shared_blob_dir="false",
                                     blob_dir=os.path.join(directory, "blob-cache"))
        server = ServerProcess(directory, zeo_options={"commit-source": "postgresql"},
                               storage=storage)
        self.addCleanup(server.stop)
        return server

    def blob_client(self, address) -> ZODB.DB:
        directory = tempfile.mkdtemp(prefix="zeo-blob-client-")
        self.addCleanup(shutil.rmtree, directory, True)
        db = ZODB.DB(zeo.client.ClientStorage(address, wait_timeout=30,
                                              blob_dir=directory, shared_blob_dir=False))
        self.addCleanup(db.close)
        return db

    def test_a_blob_committed_through_one_front_is_read_through_another(self):
        dsn = POSTGRES_LAYER.new_database()
        create_root(dsn)
        a, b = self.blob_front(dsn), self.blob_front(dsn)
        on_a, on_b = self.blob_client(a.address), self.blob_client(b.address)
        data = os.urandom(300_000)
        manager = transaction.TransactionManager()
        connection = on_a.open(transaction_manager=manager)
        with manager:
            blob = connection.root()["blob"] = Blob()
            with blob.open("w") as f:
                f.write(data)
        connection.close()
        tid = on_a.storage.lastTransaction()
        deadline = time.monotonic() + 10
        while on_b.storage.lastTransaction() < tid and time.monotonic() < deadline:
            time.sleep(0.01)
        manager = transaction.TransactionManager()
        connection = on_b.open(transaction_manager=manager)
        with manager:
            with connection.root()["blob"].open() as f:
                self.assertEqual(f.read(), data)
            # And a new revision through B is read through A.
            with connection.root()["blob"].open("w") as f:
                f.write(b"through B")
        connection.close()
        tid = on_b.storage.lastTransaction()
        deadline = time.monotonic() + 10
        while on_a.storage.lastTransaction() < tid and time.monotonic() < deadline:
            time.sleep(0.01)
        manager = transaction.TransactionManager()
        connection = on_a.open(transaction_manager=manager)
        with manager:
            with connection.root()["blob"].open() as f:
                self.assertEqual(f.read(), b"through B")
        connection.close()
        for server in (a, b):
            self.assertEqual(server.stop(), 0)
            self.assertNotIn("Traceback", server.log_text())
