"""ZODB's storage conformance suites with our client.

* against our server, in-process (``zeo.server.server``): msgpack (M5) and
  pickle (Z5), FileStorage and MappingStorage, plus recovery, external GC
  and the blob suites (shared and non-shared blob directories);
* against the reference ZEO 6.2 server (``bin/reference-runzeo`` in a
  subprocess), M5 and Z5 with FileStorage, and the blob suites (shared and
  non-shared blob directories).
"""
from __future__ import annotations

import os
import tempfile
import unittest

import ZODB.tests.util
from ZODB.tests import PackableStorage

import zeo.server
from zeo.client.storage import ClientStorage
from zeo.server.tests.conformance import (
    ReferenceServer,
    blob_suite, drop_examples, DummyDB, FullMixins, GenericMixins, RecoveryMixins,
    ROOT_DEFEATS, ServerTestBase, suite_of)


class OurClient:
    """Connect a zeo.client ClientStorage (a fresh in-memory cache)."""

    def make_client(self, **options):
        options.setdefault('blob_dir', self.client_blob_dir())
        options.setdefault('shared_blob_dir', self.shared_blob_dir)
        client = ClientStorage(self.address, wait_timeout=30, **options)
        client.registerDB(DummyDB())
        return client


class FileStorageMsgpack(OurClient, ServerTestBase, FullMixins):
    encoding = 'M'
    storage_kind = 'file'


class FileStoragePickle(OurClient, ServerTestBase, FullMixins):
    encoding = 'Z'
    storage_kind = 'file'


class MappingStorageMsgpack(OurClient, ServerTestBase, GenericMixins):
    encoding = 'M'
    storage_kind = 'mapping'


class MappingStoragePickle(OurClient, ServerTestBase, GenericMixins):
    encoding = 'Z'
    storage_kind = 'mapping'


class ClientConflictResolution(OurClient, ServerTestBase, FullMixins):
    """The server leaves conflict resolution to the client."""
    encoding = 'M'
    storage_kind = 'file'
    server_options = {'client_conflict_resolution': True}


class RecoveryMsgpack(RecoveryMixins, OurClient, ServerTestBase):
    encoding = 'M'


class RecoveryPickle(RecoveryMixins, OurClient, ServerTestBase):
    encoding = 'Z'


def external_gc_suite(encoding):
    # With the server's blob directory shared: a client's own blob cache
    # keeps blob revisions that a pack removed from the server (they are
    # immutable), while the doctest expects POSKeyError for them.
    def factory(name=None):
        from ZODB.FileStorage import FileStorage
        directory = tempfile.mkdtemp(prefix='zeo-gc-')
        address, stop = zeo.server.server(
            # The doctest wants a storage that doesn't collect garbage
            # when packing.
            storages={'1': FileStorage(os.path.join(directory, 'Data.fs'),
                                       blob_dir=os.path.join(directory, 'blobs'),
                                       pack_gc=False)},
            msgpack=encoding == 'M')
        client = ClientStorage(address, wait_timeout=30, shared_blob_dir=True,
                               blob_dir=os.path.join(directory, 'blobs'))
        client.registerDB(DummyDB())
        close = client.close

        def close_all():
            close()
            stop()

        client.close = close_all
        return client

    return PackableStorage.IExternalGC_suite(factory)


# -- the reference server ------------------------------------------------------

def have_reference() -> bool:
    import importlib.util
    return importlib.util.find_spec('ZEO') is not None  # a test extra


class ReferenceServerBase(ServerTestBase):
    """Our client against ``bin/reference-runzeo`` (one server per test:
    ZODB's mixins need a fresh storage each time)."""

    def setUp(self):
        from ZODB.tests import StorageTestBase
        StorageTestBase.StorageTestBase.setUp(self)
        self.directory = os.getcwd()
        self.server_blob_dir = None
        self.server = ReferenceServer(os.path.join(self.directory, 'Data.fs'),
                                      msgpack=self.encoding == 'M')
        self.addCleanup(self.server.stop)
        self.address = self.server.address
        self._stop_server = self.server.stop
        self._storage = self.make_client()


@unittest.skipUnless(have_reference(), 'the reference ZEO is not installed')
class ReferenceFileStorageMsgpack(OurClient, ReferenceServerBase, FullMixins):
    encoding = 'M'


@unittest.skipUnless(have_reference(), 'the reference ZEO is not installed')
class ReferenceFileStoragePickle(OurClient, ReferenceServerBase, FullMixins):
    encoding = 'Z'


def reference_blob_suite(prefix: str, *, shared: bool, encoding: str) -> unittest.TestSuite:
    """ZODB's blob conformance doctests, our client against the reference
    server: each storage a suite creates is a ``runzeo`` subprocess serving
    a FileStorage with a blob directory (the client's own one when
    *shared*), stopped when the client closes."""
    from ZODB.tests import testblob

    def factory(name, blob_dir):
        # Absolute paths: some of the doctests change the working directory.
        blob_dir = os.path.abspath(blob_dir)
        server = ReferenceServer(
            os.path.abspath(f'{name}.fs'), msgpack=encoding == 'M',
            blob_dir=blob_dir if shared else blob_dir + '-server')
        try:
            client = blob_client(server.address, blob_dir, shared)
        except BaseException:
            server.stop()
            raise
        close = client.close

        def close_client_and_server():
            try:
                close()
            finally:
                server.stop()

        client.close = close_client_and_server
        return client

    suite = testblob.storage_reusable_suite(
        prefix, factory, test_blob_storage_recovery=False,
        # As against our server: a client sees packed-away blob files
        # disappear only when it shares the server's directory.
        test_packing=shared, test_undo=True)
    # The suite's layer makes time.time() jump a second per call, to give
    # pack times distinct from commit times; that can't reach the server
    # process, whose tids follow the real clock, so blob_packing.txt would
    # pack to times in the server's future.  Real time instead (new_time()
    # then sleeps a second where it must).
    suite.layer = ZODB.tests.util.MininalTestLayer(prefix + 'BlobTests')
    if os.geteuid() == 0:
        drop_examples(suite, ROOT_DEFEATS)
    return suite


def test_suite():
    suite = suite_of(
        FileStorageMsgpack, FileStoragePickle, MappingStorageMsgpack,
        MappingStoragePickle, ClientConflictResolution, RecoveryMsgpack,
        RecoveryPickle, ReferenceFileStorageMsgpack, ReferenceFileStoragePickle)
    suite.addTest(external_gc_suite('M'))
    suite.addTest(external_gc_suite('Z'))
    for encoding in ('M', 'Z'):
        for shared in (False, True):
            kind = 'Shared' if shared else 'NonShared'
            suite.addTest(blob_suite(f'Our{kind}Blobs{encoding}', blob_client,
                                     shared=shared, encoding=encoding))
            if have_reference():
                suite.addTest(reference_blob_suite(
                    f'Reference{kind}Blobs{encoding}', shared=shared,
                    encoding=encoding))
    return suite


def blob_client(address, blob_dir, shared):
    return ClientStorage(address, blob_dir=blob_dir, shared_blob_dir=shared,
                         wait_timeout=30)


if __name__ == '__main__':
    unittest.main(defaultTest='test_suite')
