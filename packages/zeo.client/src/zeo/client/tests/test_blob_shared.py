"""SharedBlobDir: reading the server's blob directory directly."""
import os
import shutil
import tempfile
import unittest

import ZODB.blob
from ZODB.POSException import POSKeyError

from zeo.client.blobs.cache import BlobCache
from zeo.client.blobs.errors import BlobCacheLayoutError
from zeo.client.blobs.shared import SharedBlobDir


def p64(n):
    return n.to_bytes(8, 'big')


class SharedBlobDirTests(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix='zeoblobshared')
        self.dir = os.path.join(self.tmp, 'blobs')
        # What a server's blob storage creates.
        self.server = ZODB.blob.FilesystemHelper(self.dir)
        self.server.create()

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def commit(self, oid, tid, data):
        """Put a committed file where the server would."""
        self.server.getPathForOID(oid, create=True)
        path = self.server.getBlobFilename(oid, tid)
        with open(path, 'wb') as f:
            f.write(data)
        return path

    def test_reads_the_server_layout(self):
        shared = SharedBlobDir(self.dir)
        self.assertEqual(shared.layout, 'bushy')
        path = self.commit(p64(5), p64(9), b'server data')
        self.assertEqual(shared.path_for(p64(5), p64(9)), path)
        self.assertTrue(shared.exists(p64(5), p64(9)))
        self.assertEqual(shared.load(p64(5), p64(9)), path)
        with shared.open_committed(p64(5), p64(9)) as f:
            self.assertEqual(f.read(), b'server data')
        self.assertFalse(shared.needs_pruning)
        self.assertEqual(shared.prune(), 0)

    def test_missing_is_pos_key_error(self):
        shared = SharedBlobDir(self.dir)
        with self.assertRaises(POSKeyError):
            shared.load(p64(5), p64(9))
        with self.assertRaises(POSKeyError):
            shared.open_committed(p64(5), p64(9))

    def test_stage_for_store_blob_shared(self):
        shared = SharedBlobDir(self.dir)
        source = os.path.join(shared.temporary_directory(), 'upload')
        with open(source, 'wb') as f:
            f.write(b'new blob')
        name = shared.stage(p64(5), p64(9), source)
        self.assertFalse(os.path.exists(source))
        self.assertNotIn(os.sep, name)
        self.assertTrue(name.endswith('.tmp'), name)
        staged = os.path.join(self.server.getPathForOID(p64(5)), name)
        with open(staged, 'rb') as f:
            self.assertEqual(f.read(), b'new blob')

    def test_a_client_cache_is_refused(self):
        cache_dir = os.path.join(self.tmp, 'cache')
        BlobCache(cache_dir).close()
        with self.assertRaises(BlobCacheLayoutError) as caught:
            SharedBlobDir(cache_dir)
        self.assertIn('zeocache', str(caught.exception))
        with self.assertRaises(BlobCacheLayoutError):
            BlobCache(self.dir)
