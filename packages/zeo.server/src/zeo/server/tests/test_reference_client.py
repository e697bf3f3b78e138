"""The reference ZEO 6.2 client against our server: ZODB's conformance suites.

Every pairing runs over msgpack (M5) and pickle (Z5), with FileStorage and
MappingStorage, as the server issue asks. The reference is a test peer only.
"""

import unittest

from ZODB.tests import PackableStorage

from zeo.server.tests.conformance import (
    blob_suite, DummyDB, FullMixins, GenericMixins, RecoveryMixins, ServerTestBase, suite_of)


class ReferenceClient:
    """Connect the reference ZEO 6.2 ClientStorage."""

    def make_client(self, **options):
        from ZEO.ClientStorage import ClientStorage
        options.setdefault("blob_dir", self.client_blob_dir())
        options.setdefault("shared_blob_dir", self.shared_blob_dir)
        client = ClientStorage(self.address, wait=1, wait_timeout=30, **options)
        client.registerDB(DummyDB())
        return client


class FileStorageMsgpack(ReferenceClient, ServerTestBase, FullMixins):
    encoding = "M"
    storage_kind = "file"


class FileStoragePickle(ReferenceClient, ServerTestBase, FullMixins):
    encoding = "Z"
    storage_kind = "file"


class MappingStorageMsgpack(ReferenceClient, ServerTestBase, GenericMixins):
    encoding = "M"
    storage_kind = "mapping"


class MappingStoragePickle(ReferenceClient, ServerTestBase, GenericMixins):
    encoding = "Z"
    storage_kind = "mapping"


class RecoveryMsgpack(RecoveryMixins, ReferenceClient, ServerTestBase):
    encoding = "M"


class RecoveryPickle(RecoveryMixins, ReferenceClient, ServerTestBase):
    encoding = "Z"


def _packing_clears_cache():
    from ZEO.ClientStorage import ClientStorage, _check_blob_cache_size

    class PackingClearsCache(ClientStorage):
        """Packing does not reach a client's caches; the IExternalGC doctest
        checks that deleted objects are gone after a pack, so clear them (as
        the reference's own suite does)."""

        def pack(self, t=None, referencesf=None):
            ClientStorage.pack(self, t, referencesf, wait=True)
            self._cache.clear()
            _check_blob_cache_size(self.blob_dir, 0)

    return PackingClearsCache


def external_gc_suite(encoding):
    import os
    import tempfile

    import zeo.server

    def factory(name=None):
        from ZODB.FileStorage import FileStorage
        PackingClearsCache = _packing_clears_cache()
        directory = tempfile.mkdtemp(prefix="zeo-gc-")
        address, stop = zeo.server.server(
            storages={"1": FileStorage(os.path.join(directory, "Data.fs"),
                                       blob_dir=os.path.join(directory, "blobs"),
                                       pack_gc=False)},
            msgpack=encoding == "M")
        client = PackingClearsCache(address, wait=1, wait_timeout=30,
                                    blob_dir=os.path.join(directory, "blob-cache"))
        client.registerDB(DummyDB())
        close = client.close

        def close_all():
            close()
            stop()

        client.close = close_all
        return client

    return PackableStorage.IExternalGC_suite(factory)


def test_suite():
    suite = suite_of(
        FileStorageMsgpack, FileStoragePickle, MappingStorageMsgpack,
        MappingStoragePickle, RecoveryMsgpack, RecoveryPickle)
    suite.addTest(external_gc_suite("M"))
    suite.addTest(external_gc_suite("Z"))
    for encoding in ("M", "Z"):
        for shared in (False, True):
            name = f"Reference{'Shared' if shared else 'NonShared'}Blobs{encoding}"
            suite.addTest(blob_suite(name, reference_client, shared=shared,
                                     encoding=encoding))
    return suite


def reference_client(address, blob_dir, shared):
    from ZEO.ClientStorage import ClientStorage
    return ClientStorage(address, blob_dir=blob_dir, shared_blob_dir=shared,
                         wait_timeout=30)


if __name__ == "__main__":
    unittest.main(defaultTest="test_suite")
