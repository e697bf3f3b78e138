"""Blob uploads are bounded, per transaction and over the whole server, go
only to storages with blobs, and do not outlive a killed server."""

import errno
import logging
import os
import shutil
import tempfile
import textwrap
import unittest
from unittest import mock

import zeo.server
from zeo.server import blob_uploads
from zeo.server.blob_uploads import UploadDirectory, remove_stale_uploads
from zeo.server.config import DEFAULT_MAX_SPOOL_SIZE, DEFAULT_MAX_SPOOL_TOTAL, ServerConfig
from zeo.server.shared_blobs import claim_shared_blob
from zeo.server.zconfig import load
from zeo.server.tests.rawclient import RawClient
from zeo.server.tests.support import ServerProcess

Z64 = b"\0" * 8


def upload_files(directory):
    return [os.path.join(root, name) for root, _, names in os.walk(directory)
            for name in names if name.endswith(".upload")]


class UploadBoundTests(unittest.TestCase):

    def start(self, blobs=True, **options):
        self.directory = tempfile.mkdtemp(prefix="zeo-uploads-test-")
        self.addCleanup(shutil.rmtree, self.directory)
        self.blobs = os.path.join(self.directory, "blobs") if blobs else None
        address, stop = zeo.server.server(
            path=os.path.join(self.directory, "Data.fs"), blob_dir=self.blobs, **options)
        self.addCleanup(stop)
        return address

    def client(self, address):
        client = RawClient(address)
        self.addCleanup(client.close)
        return client

    def upload(self, client, txn, sizes, end=False):
        oid = client.call("new_oids", 1)[0]
        client.send("tpc_begin", txn, b"", b"", {}, None, " ")
        client.send("storeBlobStart")
        for size in sizes:
            client.send("storeBlobChunk", b"b" * size)
        if end:
            client.send("storeBlobEnd", oid, Z64, b"blob record", txn)
        return client.call("lastTransaction")   # all of the above was handled

    def test_blob_chunks_count_against_the_transaction_bound(self):
        address = self.start(max_spool_size=100_000)
        with self.assertRaises(ConnectionError):
            self.upload(self.client(address), 1, [30_000] * 4)
        self.assertEqual(upload_files(self.blobs), [])
        # So do stores and blobs together.
        client = self.client(address)
        oid = client.call("new_oids", 1)[0]
        client.send("tpc_begin", 1, b"", b"", {}, None, " ")
        client.send("storea", oid, Z64, b"x" * 60_000, 1)
        with self.assertRaises(ConnectionError):
            self.upload(client, 1, [50_000])
        # A transaction within the bound commits.
        client = self.client(address)
        self.upload(client, 1, [50_000, 40_000], end=True)
        client.call("vote", 1)
        self.assertIsInstance(client.call("tpc_finish", 1), bytes)

    def test_the_bound_over_all_connections(self):
        address = self.start(max_spool_size=100_000, max_spool_total=150_000)
        first, second = self.client(address), self.client(address)
        self.upload(first, 1, [80_000], end=True)
        with self.assertRaises(ConnectionError):
            self.upload(second, 1, [80_000])
        # Stores count too.
        third = self.client(address)
        oid = third.call("new_oids", 1)[0]
        third.send("tpc_begin", 1, b"", b"", {}, None, " ")
        third.send("storea", oid, Z64, b"x" * 80_000, 1)
        with self.assertRaises(ConnectionError):
            third.call("lastTransaction")
        # Committing (or aborting) gives the bytes back.
        first.call("vote", 1)
        first.call("tpc_finish", 1)
        fourth = self.client(address)
        self.upload(fourth, 1, [80_000], end=True)
        fourth.call("tpc_abort", 1)
        self.upload(fourth, 2, [80_000], end=True)
        fourth.call("vote", 2)
        fourth.call("tpc_finish", 2)

    def test_no_uploads_to_a_storage_without_blobs(self):
        address = self.start(blobs=False)
        client = self.client(address)
        client.send("tpc_begin", 1, b"", b"", {}, None, " ")
        with self.assertLogs("zeo.server", logging.WARNING) as logged:
            client.send("storeBlobStart")
            with self.assertRaises(ConnectionError):
                client.call("lastTransaction")
        self.assertEqual(len(logged.records), 1)
        self.assertIn("has no blob support", logged.output[0])


class UploadDirectoryTests(unittest.TestCase):

    def setUp(self):
        self.parent = tempfile.mkdtemp(prefix="zeo-uploads-test-")
        self.addCleanup(shutil.rmtree, self.parent)

    def test_only_directories_without_a_live_owner_are_removed(self):
        live = UploadDirectory(self.parent)
        self.addCleanup(live.close)
        live.new_file()[0].close()
        dead = UploadDirectory(self.parent)
        dead.new_file()[0].close()
        # A dead owner: its lock is gone with it (here: closed).
        os.close(dead._lock)
        blob_uploads._LIVE.discard(dead.path)
        # The live one is locked even if this process forgot it is its own.
        blob_uploads._LIVE.discard(live.path)
        try:
            self.assertEqual(remove_stale_uploads(self.parent), [dead.path])
        finally:
            blob_uploads._LIVE.add(live.path)
        self.assertEqual(os.listdir(self.parent), [os.path.basename(live.path)])
        self.assertEqual(len(upload_files(self.parent)), 1)
        live.close()
        self.assertEqual(os.listdir(self.parent), [])


class SharedClaimCopyTests(unittest.TestCase):
    """When the claim's rename fails (the upload directory on another file
    system), the checked file is copied, and the client's file removed."""

    def test_the_claim_copies_when_it_cannot_rename(self):
        blobs = tempfile.mkdtemp(prefix="zeo-uploads-test-")
        self.addCleanup(shutil.rmtree, blobs)
        oid_dir = os.path.join(blobs, "0x01")
        os.makedirs(os.path.join(blobs, "tmp"))
        os.mkdir(oid_dir)
        with open(os.path.join(oid_dir, "upload.tmp"), "wb") as f:
            f.write(b"content")
        uploads = UploadDirectory(os.path.join(blobs, "tmp"))
        self.addCleanup(uploads.close)
        uploads.new_name()   # the directory exists before the rename fails
        cross_device = OSError(errno.EXDEV, "Invalid cross-device link")
        with mock.patch("os.replace", side_effect=cross_device):
            path = claim_shared_blob(blobs, oid_dir, "upload.tmp", uploads.new_name)
        self.assertEqual(os.path.dirname(path), uploads.path)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"content")
        self.assertEqual(os.listdir(oid_dir), [])


class ConfigurationTests(unittest.TestCase):

    def test_the_zeo_keys_and_defaults(self):
        directory = tempfile.mkdtemp(prefix="zeo-uploads-test-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "zeo.conf")
        for keys, size, total in [
                ("", DEFAULT_MAX_SPOOL_SIZE, DEFAULT_MAX_SPOOL_TOTAL),
                ("max-spool-size 2GB\nmax-spool-total 3MB", 2 << 30, 3 << 20)]:
            with open(path, "w") as f:
                f.write(textwrap.dedent(f"""\
                    <zeo>
                      address 127.0.0.1:0
                      {keys}
                    </zeo>
                    <filestorage 1>
                      path {directory}/Data.fs
                    </filestorage>
                    """))
            config = load(path).config
            self.assertEqual((config.max_spool_size, config.max_spool_total), (size, total))
        self.assertEqual(DEFAULT_MAX_SPOOL_TOTAL, 4 * DEFAULT_MAX_SPOOL_SIZE)
        self.assertIsNone(ServerConfig(max_spool_total=None).max_spool_total)
        with self.assertRaises(ValueError):
            ServerConfig(max_spool_total=0)


class KilledServerTests(unittest.TestCase):

    def test_uploads_of_a_killed_server_are_removed_by_the_next(self):
        directory = tempfile.mkdtemp(prefix="zeo-uploads-test-")
        self.addCleanup(shutil.rmtree, directory)
        blobs = os.path.join(directory, "blobs")
        server = ServerProcess(directory, "--blob-dir", blobs)
        self.addCleanup(server.stop)
        client = server.client()
        self.addCleanup(client.close)
        client.send("tpc_begin", 1, b"", b"", {}, None, " ")
        client.send("storeBlobStart")
        client.send("storeBlobChunk", b"b" * 100_000)
        client.call("lastTransaction")
        self.assertEqual(len(upload_files(blobs)), 1)
        server.process.kill()
        server.process.wait(30)
        client.close()
        again = ServerProcess(directory, "--blob-dir", blobs)
        self.addCleanup(again.stop)
        self.assertEqual(upload_files(blobs), [])
        self.assertEqual(os.listdir(os.path.join(blobs, "tmp")), [])


if __name__ == "__main__":
    unittest.main()
