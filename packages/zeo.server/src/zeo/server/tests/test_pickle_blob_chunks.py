"""Blob chunks under pickle (Z5), the default encoding: written as pieces of
their own, received as views of the frame, and read by the reference ZEO 6.2
client as ever.  (The same under msgpack: ``test_adapter.BlobStreamTests``.)
"""

import os
import shutil
import tempfile
import unittest

import transaction
import zope.event
from ZODB.blob import Blob

import zeo.server
from zeo.server.interfaces import IServing
from zeo.server.tests.rawclient import RawClient
from zeo.server.tests.support import WriteRecorder

Z64 = b"\0" * 8
CHUNK = 1 << 20


class PickleBlobChunkTests(unittest.TestCase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-pickle-chunks-")
        self.addCleanup(shutil.rmtree, self.directory)
        served = []
        zope.event.subscribers.append(served.append)
        try:
            self.address, stop = zeo.server.server(
                os.path.join(self.directory, "Data.fs"),
                blob_dir=os.path.join(self.directory, "blobs"),
                blob_chunk_size=CHUNK, msgpack=False)
        finally:
            zope.event.subscribers.remove(served.append)
        self.addCleanup(stop)
        self.server = [event for event in served if IServing.providedBy(event)][0].server

    def test_chunks_are_pieces_and_views(self):
        client = RawClient(self.address)
        self.addCleanup(client.close)
        protocol, = self.server.connections
        self.assertEqual(protocol._connection.agreed.encoding, "Z")
        decoded = []
        decode_chunk = protocol._connection._decode_chunk

        def spy(payload):
            event = decode_chunk(payload)
            decoded.append(event)
            return event
        protocol._connection._decode_chunk = spy
        blob = os.urandom(3 * CHUNK)
        oid = client.call("new_oids", 1)[0]
        client.send("tpc_begin", 1, b"", b"", {}, None, " ")
        client.send("storeBlobStart")
        for start in range(0, len(blob), CHUNK):
            client.send("storeBlobChunk", blob[start:start + CHUNK])
        client.send("storeBlobEnd", oid, Z64, b"blob record", 1)
        client.call("vote", 1)
        tid = client.call("tpc_finish", 1)
        # Each uploaded chunk was handed on as a view of its frame.
        self.assertEqual([type(event.args[-1]) for event in decoded if event is not None],
                         [memoryview] * 3)
        recorder = protocol.transport = WriteRecorder(protocol.transport)
        client.call("sendBlob", oid, tid)
        received = b"".join(message.args[2] for message in client.one_way
                            if message.method == "receiveBlobChunk")
        self.assertEqual(received, blob)
        # Each downloaded chunk was written as a piece of its own.
        self.assertEqual([len(piece) for piece in recorder.pieces if len(piece) > 1000],
                         [CHUNK] * 3)

    def test_the_reference_client_stores_and_loads_large_blobs(self):
        from ZEO.ClientStorage import ClientStorage
        self.round_trip(ClientStorage, uploads_in_views=0)  # it sends 59,000-byte chunks

    def test_our_client_stores_and_loads_large_blobs(self):
        from zeo.client import ClientStorage
        self.round_trip(ClientStorage, uploads_in_views=3)

    def round_trip(self, client_storage, uploads_in_views):
        """A client commits a blob of 3 MiB and a bit; a second one, with an
        empty blob cache, downloads it."""
        from ZODB import DB
        blob_data = os.urandom(3 * CHUNK + 12345)
        decoded = []

        def database(name):
            storage = client_storage(
                self.address, wait_timeout=30,
                blob_dir=os.path.join(self.directory, name))
            db = DB(storage)
            self.addCleanup(db.close)
            return db

        def watch_decoding():
            for protocol in self.server.connections:
                connection = protocol._connection
                decode_chunk = connection._decode_chunk

                def spy(payload, decode_chunk=decode_chunk):
                    event = decode_chunk(payload)
                    decoded.append(event)
                    return event
                connection._decode_chunk = spy

        writer = database("writer-blobs")
        watch_decoding()
        connection = writer.open(transaction.TransactionManager())
        connection.root()["blob"] = blob = Blob()
        with blob.open("w") as f:
            f.write(blob_data)
        connection.transaction_manager.commit()
        connection.close()
        self.assertEqual(len([event for event in decoded if event is not None]),
                         uploads_in_views)
        # A second client with an empty blob cache downloads it.
        reader = database("reader-blobs")
        recorders = []
        for protocol in self.server.connections:
            recorders.append(WriteRecorder(protocol.transport))
            protocol.transport = recorders[-1]
        connection = reader.open(transaction.TransactionManager())
        with connection.root()["blob"].open() as f:
            self.assertEqual(f.read(), blob_data)
        connection.close()
        for protocol in self.server.connections:
            self.assertEqual(protocol._connection.agreed.encoding, "Z")
        # The full chunks were written as pieces of their own (copied into
        # a frame, each would be a piece of a little more than CHUNK bytes).
        self.assertEqual(
            [len(piece) for recorder in recorders for piece in recorder.pieces
             if len(piece) >= CHUNK],
            [CHUNK] * 3)
