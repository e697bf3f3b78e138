"""storeBlobShared and sendBlob cannot be used to touch files outside the
blob directory, or committed blobs: no symlinks, no second links, and no
check-then-use gap (see zeo.server.shared_blobs)."""

import os
import shutil
import tempfile
import unittest

from ZODB.blob import FilesystemHelper
from ZODB.FileStorage import FileStorage

import zeo.server
from zeo.server.tests.rawclient import RawClient, ServerError

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



class SharedBlobSymlinkTests(unittest.TestCase):
    """A client that can write the shared blob directory plants symlinks,
    hard links and swapped directories; the server moves and serves none of
    what they point to."""

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-shared-")
        self.addCleanup(shutil.rmtree, self.directory)
        self.blobs = os.path.join(self.directory, "blobs")
        self.address, stop = zeo.server.server(
            path=os.path.join(self.directory, "Data.fs"), blob_dir=self.blobs)
        self.addCleanup(stop)
        self.helper = FilesystemHelper(self.blobs)
        self.client = RawClient(self.address)
        self.addCleanup(self.client.close)
        self.outside = os.path.join(self.directory, "outside")
        os.mkdir(self.outside)

    def stage(self, oid, content, name="upload.tmp"):
        """Put an upload where a shared-blob-dir client does."""
        with open(os.path.join(self.helper.getPathForOID(oid, create=True), name), "wb") as f:
            f.write(content)
        return name

    def commit(self, txn, oid, content):
        client = self.client
        client.send("tpc_begin", txn, b"", b"", {}, None, " ")
        client.send("storeBlobShared", oid, Z64, b"record", self.stage(oid, content), txn)
        client.call("vote", txn)
        return client.call("tpc_finish", txn)

    def send_blob(self, oid, tid):
        client = RawClient(self.address)
        try:
            client.call("sendBlob", oid, tid)
            return b"".join(message.args[2] for message in client.one_way
                            if message.method == "receiveBlobChunk")
        finally:
            client.close()

    def assert_refused(self, oid, name, txn):
        client = self.client
        client.send("tpc_begin", txn, b"", b"", {}, None, " ")
        client.send("storeBlobShared", oid, Z64, b"record", name, txn)
        with self.assertRaises((ConnectionError, OSError)):
            client.call("vote", txn)
            client.call("tpc_finish", txn)
        self.client = RawClient(self.address)
        self.addCleanup(self.client.close)

    def test_a_symlink_to_a_committed_blob_is_refused(self):
        precious, other = self.client.call("new_oids", 2)
        tid = self.commit(1, precious, b"precious")
        committed = self.helper.getBlobFilename(precious, tid)
        other_dir = self.helper.getPathForOID(other, create=True)
        os.symlink(committed, os.path.join(other_dir, "evil.tmp"))
        self.assert_refused(other, "evil.tmp", 2)
        # Nor is another (hard) link of it an upload.
        os.link(committed, os.path.join(other_dir, "evil2.tmp"))
        self.assert_refused(other, "evil2.tmp", 3)
        self.assertEqual(self.send_blob(precious, tid), b"precious")

    def test_a_directory_swapped_for_a_symlink_before_the_vote_moves_nothing(self):
        oid = self.client.call("new_oids", 1)[0]
        client = self.client
        client.send("tpc_begin", 1, b"", b"", {}, None, " ")
        client.send("storeBlobShared", oid, Z64, b"record", self.stage(oid, b"mine"), 1)
        client.call("lastTransaction")   # storeBlobShared has been handled
        # The object's directory becomes a symlink to one holding a file of
        # the uploaded name, which the server must not move.
        victim = os.path.join(self.outside, "upload.tmp")
        with open(victim, "wb") as f:
            f.write(b"not yours")
        oid_dir = self.helper.getPathForOID(oid)
        os.rename(oid_dir, oid_dir + "-away")
        os.symlink(self.outside, oid_dir)
        try:
            client.call("vote", 1)
            client.call("tpc_finish", 1)
        except (ServerError, ConnectionError, OSError):
            pass
        with open(victim, "rb") as f:
            self.assertEqual(f.read(), b"not yours")

    def test_send_blob_refuses_planted_symlinks(self):
        oid = self.client.call("new_oids", 1)[0]
        tid = self.commit(1, oid, b"the blob")
        self.assertEqual(self.send_blob(oid, tid), b"the blob")
        committed = self.helper.getBlobFilename(oid, tid)
        secret = os.path.join(self.outside, os.path.basename(committed))
        with open(secret, "wb") as f:
            f.write(b"secret")
        # The blob file itself replaced by a symlink ...
        os.rename(committed, committed + "-away")
        os.symlink(secret, committed)
        with self.assertRaises(ServerError):
            self.send_blob(oid, tid)
        # ... or by a FIFO, which must not block the server in open() ...
        os.remove(committed)
        os.mkfifo(committed)
        with self.assertRaises(ServerError):
            self.send_blob(oid, tid)
        os.remove(committed)
        os.symlink(secret, committed)
        # ... or a directory on the way.
        os.remove(committed)
        oid_dir = self.helper.getPathForOID(oid)
        os.rename(oid_dir, oid_dir + "-away")
        os.symlink(self.outside, oid_dir)
        with self.assertRaises(ServerError):
            self.send_blob(oid, tid)


if __name__ == "__main__":
    unittest.main()
