"""storeBlobShared cannot be used to touch files outside the blob directory."""

import os
import shutil
import tempfile
import unittest

from ZODB.blob import FilesystemHelper
from ZODB.FileStorage import FileStorage

import zeo.server
from zeo.server.tests.rawclient import RawClient

Z64 = b"\0" * 8


class SharedBlobNameTests(unittest.TestCase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-shared-")
        self.blobs = os.path.join(self.directory, "blobs")
        self.address, self.stop = zeo.server.server(storages={"1": FileStorage(
            os.path.join(self.directory, "Data.fs"), blob_dir=self.blobs)})
        self.victim = os.path.join(self.directory, "victim.tmp")
        with open(self.victim, "w") as f:
            f.write("outside the blob directory")

    def tearDown(self):
        self.stop()
        shutil.rmtree(self.directory)

    def attempt(self, filename):
        client = RawClient(self.address)
        oid = client.call("new_oids", 1)[0]
        client.send("tpc_begin", 1, b"", b"", {}, None, " ")
        client.send("storeBlobShared", oid, Z64, b"record", filename, 1)
        closed = client.wait_closed()
        self.assertTrue(closed, f"{filename!r} was accepted")

    def test_names_that_leave_the_directory_are_refused(self):
        for name in ("../../victim.tmp", "/etc/passwd.tmp", "..", ".hidden.tmp",
                     "no-suffix", "a\0b.tmp", ""):
            with self.subTest(name=name):
                self.attempt(name)
        with open(self.victim) as f:
            self.assertEqual(f.read(), "outside the blob directory")

    def test_a_symlink_out_of_the_directory_is_refused(self):
        client = RawClient(self.address)
        oid = client.call("new_oids", 1)[0]
        client.close()
        # The file name is harmless, but it is a symlink pointing outside.
        helper = FilesystemHelper(self.blobs)
        helper.create()
        target_dir = helper.getPathForOID(oid, create=True)
        os.symlink(self.victim, os.path.join(target_dir, "escape.tmp"))
        self.attempt("escape.tmp")
        self.assertTrue(os.path.exists(self.victim))


if __name__ == "__main__":
    unittest.main()
