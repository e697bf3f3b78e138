"""Several runzeo fronts over one RelStorage with one shared blob directory.

RelStorage's ``shared-blob-dir true`` keeps blob files only in a directory
every RelStorage process of the database uses (``blob-dir``), not in the
database: each front is such a process, all with the same directory. A
blob committed through one front's client is read through another front's
client, for both kinds of ZEO client: one with a blob cache of its own
(``shared_blob_dir`` false: blobs travel over the wire, ``storeBlob`` and
``sendBlob``) and one using the shared directory itself (``shared_blob_dir``
true: ``storeBlobShared``, and files read in place).

The fronts' blob uploads share the blob directory's ``tmp`` too (each
front its own flock-ed ``zeo-uploads-*`` directory there): a front that
starts leaves another front's uploads alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import unittest
from typing import Any

import transaction
import ZODB
from ZODB.blob import Blob
from ZODB.Connection import TransactionMetaData
from ZODB.serialize import ObjectWriter
from ZODB.utils import z64

import zeo.client
from zeo.server.tests.postgres import POSTGRES_LAYER, create_root, relstorage_section
from zeo.server.tests.relstorage_support import wait_for
from zeo.server.tests.support import ServerProcess, wait_until

__all__ = ["SharedBlobDirectoryTests"]


class SharedBlobDirectoryTests(unittest.TestCase):
    layer = POSTGRES_LAYER

    def setUp(self) -> None:
        self.dsn = POSTGRES_LAYER.new_database()
        create_root(self.dsn)
        self.blobs = tempfile.mkdtemp(prefix="zeo-shared-blobs-")
        self.addCleanup(shutil.rmtree, self.blobs, True)
        self.servers = [self.front(), self.front()]

    def front(self) -> ServerProcess:
        directory = tempfile.mkdtemp(prefix="zeo-front-")
        self.addCleanup(shutil.rmtree, directory, True)
        storage = relstorage_section(self.dsn, shared_blob_dir="true", blob_dir=self.blobs)
        server = ServerProcess(directory, zeo_options={"commit-source": "postgresql"},
                               storage=storage)
        self.addCleanup(server.stop)
        return server

    def client(self, server: ServerProcess, *, shared: bool, reference: bool = False) -> Any:
        if shared:
            blob_dir = self.blobs
        else:
            blob_dir = tempfile.mkdtemp(prefix="zeo-blob-cache-")
            self.addCleanup(shutil.rmtree, blob_dir, True)
        if reference:   # ZEO 6.2's own client
            from ZEO.ClientStorage import ClientStorage
            storage = ClientStorage(server.address, wait=1, wait_timeout=30,
                                    blob_dir=blob_dir, shared_blob_dir=shared)
        else:
            storage = zeo.client.ClientStorage(server.address, wait_timeout=30,
                                               blob_dir=blob_dir, shared_blob_dir=shared)
        db = ZODB.DB(storage)
        self.addCleanup(db.close)
        return db

    def write(self, db: Any, key: str, data: bytes) -> bytes:
        manager = transaction.TransactionManager()
        connection = db.open(transaction_manager=manager)
        try:
            with manager:
                root = connection.root()
                if key not in root:
                    root[key] = Blob()
                with root[key].open("w") as f:
                    f.write(data)
        finally:
            connection.close()
        tid: bytes = db.storage.lastTransaction()
        return tid

    def read(self, db: Any, key: str, tid: bytes) -> bytes:
        wait_for(lambda: db.storage.lastTransaction() >= tid, f"the client to hear of {tid.hex()}")
        manager = transaction.TransactionManager()
        connection = db.open(transaction_manager=manager)
        try:
            with manager:
                with connection.root()[key].open() as f:
                    data: bytes = f.read()
                    return data
        finally:
            connection.close()

    def check(self, *, shared_a: bool, shared_b: bool, reference_b: bool = False) -> None:
        a, b = self.servers
        on_a = self.client(a, shared=shared_a)
        on_b = self.client(b, shared=shared_b, reference=reference_b)
        data = os.urandom(300_000)
        tid = self.write(on_a, "blob", data)
        self.assertEqual(self.read(on_b, "blob", tid), data)
        # A new revision through B is read through A; the old one stays.
        tid = self.write(on_b, "blob", b"through B")
        self.assertEqual(self.read(on_a, "blob", tid), b"through B")
        # The files are in the shared directory, and nothing is left
        # behind in the fronts' upload directories.
        files = [name for _, _, names in os.walk(self.blobs) for name in names
                 if name.endswith(".blob")]
        self.assertEqual(len(files), 2, files)
        for server in self.servers:
            self.assertEqual(server.stop(), 0)
            self.assertNotIn("Traceback", server.log_text())

    def test_clients_with_blob_caches_of_their_own(self):
        self.check(shared_a=False, shared_b=False)

    def test_clients_using_the_shared_directory(self):
        self.check(shared_a=True, shared_b=True)

    def test_one_client_of_each_kind(self):
        self.check(shared_a=True, shared_b=False)

    def test_the_reference_client_using_the_shared_directory(self):
        self.check(shared_a=False, shared_b=True, reference_b=True)

    def test_a_front_starting_leaves_the_uploads_of_another_alone(self):
        a, b = self.servers
        on_a, on_b = self.client(a, shared=False), self.client(b, shared=False)
        storage = on_a.storage
        blob = Blob()
        blob._p_oid = oid = storage.new_oid()
        data = ObjectWriter().serialize(blob)
        source = os.path.join(tempfile.mkdtemp(prefix="zeo-blob-source-"), "upload")
        self.addCleanup(shutil.rmtree, os.path.dirname(source), True)
        with open(source, "wb") as f:
            f.write(b"uploaded before C started")
        txn = TransactionMetaData()
        storage.tpc_begin(txn)
        storage.storeBlob(oid, z64, data, source, "", txn)
        tmp = os.path.join(self.blobs, "tmp")

        def uploads() -> list[str]:
            return [os.path.join(root, name) for root, _, names in os.walk(tmp)
                    for name in names if name != "owner.lock"]

        wait_until(lambda: uploads(), "front A to hold the upload")
        held = uploads()
        # A third front starts on the same directory: it removes upload
        # directories whose owner is gone, not A's.
        self.servers.append(self.front())
        self.assertEqual(uploads(), held)
        storage.tpc_vote(txn)
        tid = storage.tpc_finish(txn)
        wait_for(lambda: on_b.storage.lastTransaction() >= tid, "B's client to hear of it")
        with open(on_b.storage.loadBlob(oid, tid), "rb") as f:
            self.assertEqual(f.read(), b"uploaded before C started")
        self.assertEqual(uploads(), [])
        for server in self.servers:
            self.assertEqual(server.stop(), 0)
            self.assertNotIn("Traceback", server.log_text())
