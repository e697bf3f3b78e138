"""ZODB's storage conformance mixins, run through a client against our server.

A test class combines `ServerTestBase` (a real zeo server on 127.0.0.1 in
a thread, with a real FileStorage or MappingStorage, and a client storage in
``self._storage``) with ZODB's mixins. Subclasses choose the client
implementation (`make_client`), the encoding and the storage.

`ReferenceServer` runs the reference ZEO's ``runzeo`` in a subprocess (for
our client's and our tools' tests against it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import transaction
from ZODB.tests import (
    BasicStorage, ConflictResolution, HistoryStorage, IteratorStorage, MTStorage,
    PackableStorage, ReadOnlyStorage, RecoveryStorage, RevisionStorage,
    StorageTestBase, Synchronization, TransactionalUndoStorage)

import zeo.server
from zeo.server.testing import free_port
from zeo.server.tests.support import child_env


class ReferenceServer:
    """The reference ZEO 6.2 ``runzeo`` in a subprocess, on a free port."""

    def __init__(self, path: str, *, msgpack: bool = False,
                 blob_dir: str | None = None, options: str = '') -> None:
        self.port = free_port()
        self.address = ('127.0.0.1', self.port)
        directory = os.path.dirname(path)
        config = os.path.join(directory, f'zeo-{self.port}.conf')
        blob = f'  blob-dir {blob_dir}\n' if blob_dir else ''
        with open(config, 'w') as f:
            f.write(f'<zeo>\n  address 127.0.0.1:{self.port}\n'
                    f'  msgpack {"true" if msgpack else "false"}\n{options}</zeo>\n'
                    f'<filestorage 1>\n  path {path}\n{blob}</filestorage>\n')
        self.log = tempfile.TemporaryFile()
        # Our own interpreter and path (the test extras bring ZEO and
        # msgpack), rather than bin/reference-runzeo, whose path lacks
        # msgpack.
        self.process = subprocess.Popen(
            [sys.executable, '-c', 'from ZEO.runzeo import main; main()',
             '-C', config],
            stdout=self.log, stderr=subprocess.STDOUT, env=child_env())
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(self.address, timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.log.seek(0)
                    raise RuntimeError('the reference server did not start: '
                                       + self.log.read().decode(errors='replace'))
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class DummyDB:
    """What a client storage needs of a ZODB DB, and no more."""

    def invalidate(self, *args, **kw):
        pass

    def invalidateCache(self):
        pass

    def transform_record_data(self, data):
        return data

    untransform_record_data = transform_record_data


class ServerTestBase(StorageTestBase.StorageTestBase):
    """A zeo server with one storage ``'1'`` and a client in ``self._storage``."""

    #: 'M' (msgpack) or 'Z' (pickle): the encoding the server announces.
    encoding = "M"
    #: 'file' (FileStorage) or 'mapping' (MappingStorage).
    storage_kind = "file"
    #: Give the served storage a blob directory.
    blobs = False
    shared_blob_dir = False
    server_options: dict = {}

    def setUp(self):
        super().setUp()  # a fresh temporary directory, made current
        self.directory = os.getcwd()
        self.server_blob_dir = os.path.join(self.directory, "server-blobs") if self.blobs else None
        self.address, self._stop_server = zeo.server.server(
            storages={"1": self.make_server_storage()},
            msgpack=self.encoding == "M", **self.server_options)
        self._storage = self.make_client()

    def make_server_storage(self):
        if self.storage_kind == "file":
            from ZODB.FileStorage import FileStorage
            return FileStorage(os.path.join(self.directory, "Data.fs"),
                               blob_dir=self.server_blob_dir)
        from ZODB.MappingStorage import MappingStorage
        storage = MappingStorage()
        if self.server_blob_dir:
            from ZODB.blob import BlobStorage
            storage = BlobStorage(self.server_blob_dir, storage)
        return storage

    def client_blob_dir(self):
        if not self.blobs:
            return None
        if self.shared_blob_dir:
            return self.server_blob_dir
        return tempfile.mkdtemp("blob-cache", dir=self.directory)

    def make_client(self, **options):
        raise NotImplementedError("a conformance class chooses its client")

    def _new_storage_client(self):
        return self.make_client()

    def open(self, read_only=0):
        self._storage.close()
        self._storage = self.make_client(read_only=read_only)

    def _do_store_in_separate_thread(self, oid, revid, voted):
        # Store in another client, in a thread; the caller checks that the
        # commit waits for (or races with) its own transaction.
        def do_store():
            store = self._new_storage_client()
            try:
                t = transaction.get()
                store.tpc_begin(t)
                store.store(oid, revid, b"x", "", t)
                store.tpc_vote(t)
                store.tpc_finish(t)
            except Exception as error:
                self.exception = error
            finally:
                store.close()

        self.exception = None
        thread = threading.Thread(name="T2", target=do_store, daemon=True)
        thread.start()
        thread.join(0.1 if voted else 9)
        if self.exception is not None:
            raise self.exception
        return thread

    def tearDown(self):
        try:
            self._storage.close()
        finally:
            self._stop_server()
            super().tearDown()


class GenericMixins(
        BasicStorage.BasicStorage,
        PackableStorage.PackableStorage,
        Synchronization.SynchronizedStorage,
        MTStorage.MTStorage,
        ReadOnlyStorage.ReadOnlyStorage):
    """What every storage, MappingStorage too, must pass through ZEO."""


class FullMixins(
        GenericMixins,
        ConflictResolution.ConflictResolvingStorage,
        ConflictResolution.ConflictResolvingTransUndoStorage,
        PackableStorage.PackableUndoStorage,
        RevisionStorage.RevisionStorage,
        TransactionalUndoStorage.TransactionalUndoStorage,
        IteratorStorage.IteratorStorage,
        HistoryStorage.HistoryStorage):
    """What an undoing, iterable storage (FileStorage) passes through ZEO."""

    def testPackUndoLog(self):
        # The mixin's version patches time.time and time.sleep to fake the
        # passage of time; that cannot reach a server, so run the
        # undecorated test, which then uses real time.
        PackableStorage.PackableUndoStorage.testPackUndoLog.__wrapped__(self)


class RecoveryMixins(RecoveryStorage.RecoveryStorage):
    """copyTransactionsFrom and restore: a FileStorage source, a ZEO destination."""

    def setUp(self):
        from ZODB.FileStorage import FileStorage
        super().setUp()
        self._dst = self._storage
        self._storage = FileStorage(os.path.join(self.directory, "Source.fs"))

    def new_dest(self):
        return self.make_client()

    def tearDown(self):
        try:
            self._dst.close()
        finally:
            super().tearDown()


def suite_of(*classes) -> unittest.TestSuite:
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for cls in classes:
        suite.addTest(loader.loadTestsFromTestCase(cls))
    return suite


def blob_suite(prefix, connect, *, shared, encoding):
    """ZODB's blob conformance doctests through a client against our server.

    *connect(address, blob_dir, shared)* returns a connected client storage.
    Each storage the suite creates gets its own server (FileStorage with a
    blob directory) that stops when the client closes.
    """
    from ZODB.tests import testblob

    def factory(name, blob_dir):
        from ZODB.FileStorage import FileStorage
        # Absolute paths: the server shares this process, and some of the
        # doctests change the working directory.
        server_blob_dir = os.path.abspath(blob_dir if shared else "server-" + blob_dir)
        address, stop = zeo.server.server(
            storages={"1": FileStorage(os.path.abspath(f"{name}.fs"),
                                       blob_dir=server_blob_dir)},
            msgpack=encoding == "M")
        client = connect(address, blob_dir, shared)
        close = client.close

        def close_client_and_server():
            try:
                close()
            finally:
                stop()

        client.close = close_client_and_server
        return client

    suite = testblob.storage_reusable_suite(
        prefix, factory, test_blob_storage_recovery=False,
        # Packing removes blob files from the server's directory, which a
        # client sees only when it shares that directory.
        test_packing=shared, test_undo=True)
    if os.geteuid() == 0:
        drop_examples(suite, ROOT_DEFEATS)
    return suite


#: Doctest examples that cannot pass as root: they expect PermissionError
#: when opening a read-only committed blob for writing, and as root the
#: open succeeds and truncates the blob, breaking every later example.
ROOT_DEFEATS = ("open(blob.committed(), 'w')",)


def drop_examples(suite, sources):
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            drop_examples(test, sources)
            continue
        doctest_ = getattr(test, "_dt_test", None)
        if doctest_ is not None:
            doctest_.examples = [
                example for example in doctest_.examples
                if not any(source in example.source for source in sources)]
