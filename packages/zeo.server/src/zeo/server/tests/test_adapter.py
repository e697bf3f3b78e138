"""The network adapter under bad input: the connection goes, the server stays.
And pipelined requests: their replies are written together, in order.

Every test sends something hostile over a real socket, checks that the
server closes that connection, and then checks that a normal client still
commits and reads, and that what was committed before is still there.
"""

import json
import os
import pickle
import shutil
import socket
import struct
import tempfile
import time
import unittest

import zope.event
from zeo.protocol import Call

import zeo.server
from zeo.server.interfaces import IServing
from zeo.server.tests.rawclient import RawClient
from zeo.server.tests.support import WriteRecorder

Z64 = b"\0" * 8
MAXTID = b"\x7f" + b"\xff" * 7


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


class HostileInputTests(unittest.TestCase):
    msgpack = True
    handshake_timeout = 0.5

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-hostile-")
        self.address, self.stop = zeo.server.server(
            path=os.path.join(self.directory, "Data.fs"), msgpack=self.msgpack,
            handshake_timeout=self.handshake_timeout)
        client = RawClient(self.address)
        self.oid = client.call("new_oids", 1)[0]
        self.tid = client.commit(1, [(self.oid, Z64, b"precious")])
        client.close()

    def tearDown(self):
        self.stop()
        shutil.rmtree(self.directory)

    def raw_socket(self):
        sock = socket.create_connection(self.address, timeout=10)
        self.addCleanup(sock.close)
        greeting = sock.recv(64)
        self.assertEqual(greeting[4:6], b"M5" if self.msgpack else b"Z5")
        return sock

    def assert_closed(self, sock):
        # The server may have sent replies first; then it must close.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if sock.recv(1 << 16) == b"":
                    sock.close()
                    return
            except ConnectionResetError:
                sock.close()
                return
        self.fail("the server did not close the connection")

    def assert_still_serving(self):
        client = RawClient(self.address)
        try:
            data, start, end = client.call("loadBefore", self.oid, MAXTID)
            self.assertEqual((data, start, end), (b"precious", self.tid, None))
            oid = client.call("new_oids", 1)[0]
            self.assertIsInstance(client.commit(2, [(oid, Z64, b"more")]), bytes)
        finally:
            client.close()

    def test_garbage_handshake(self):
        sock = self.raw_socket()
        sock.sendall(frame(b"\xff\x00garbage"))
        self.assert_closed(sock)
        self.assert_still_serving()

    def test_oversize_frame_refused_on_its_header(self):
        sock = self.raw_socket()
        sock.sendall(b"\xff\xff\xff\xff")   # 4 GiB announced, nothing buffered
        self.assert_closed(sock)
        self.assert_still_serving()

    def test_other_encoding_than_announced(self):
        sock = self.raw_socket()
        sock.sendall(frame(b"Z5" if self.msgpack else b"M5"))
        self.assert_closed(sock)
        self.assert_still_serving()

    def test_stalled_handshake_is_closed(self):
        sock = self.raw_socket()
        started = time.monotonic()
        self.assert_closed(sock)
        self.assertLess(time.monotonic() - started, 5)
        self.assert_still_serving()

    def test_undecodable_message(self):
        sock = self.raw_socket()
        sock.sendall(frame(b"M5" if self.msgpack else b"Z5") + frame(b"\xc1\xc1\xc1"))
        self.assert_closed(sock)
        self.assert_still_serving()

    def test_unknown_method(self):
        client = RawClient(self.address)
        self.addCleanup(client.close)
        client.send_call("__class__")
        self.assertTrue(client.wait_closed())
        self.assert_still_serving()

    def test_wrong_arguments_to_a_one_way_call_abort_the_transaction(self):
        client = RawClient(self.address)
        self.addCleanup(client.close)
        client.send("tpc_begin", 9, b"", b"", {}, None, " ")
        client.send("storea", self.oid, self.tid, b"half", 9)
        client.send("storea", "not an oid", 42)
        self.assertTrue(client.wait_closed())
        self.assert_still_serving()

    def test_status_probe(self):
        sock = self.raw_socket()
        sock.sendall(frame(b"ruok"))
        data = b""
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
        (length,) = struct.unpack(">I", data[:4])
        status = json.loads(data[4:4 + length])
        self.assertEqual(status["1"]["last-transaction"], self.tid.hex())
        self.assert_still_serving()


class HostilePickleTests(HostileInputTests):
    msgpack = False

    def test_a_hostile_pickle_runs_nothing(self):
        marker = os.path.join(self.directory, "pwned")

        class Gadget:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        sock = self.raw_socket()
        payload = pickle.dumps((1, False, "loadBefore", (Gadget(),)), protocol=3)
        sock.sendall(frame(b"Z5") + frame(payload))
        self.assert_closed(sock)
        self.assertFalse(os.path.exists(marker))
        self.assert_still_serving()


if __name__ == "__main__":
    unittest.main()


class PipelinedRequestTests(unittest.TestCase):
    """The replies to the requests of one read leave together, in order."""

    def setUp(self):
        self.servers = []
        zope.event.subscribers.append(self.note_server)
        self.addCleanup(zope.event.subscribers.remove, self.note_server)
        self.address, stop = zeo.server.server()
        self.addCleanup(stop)
        self.client = RawClient(self.address)
        self.addCleanup(self.client.close)
        server = self.servers[0].server
        protocol, = server.connections
        # Replaced between requests; the server thread reads it per write.
        self.recorder = protocol.transport = WriteRecorder(protocol.transport)

    def note_server(self, event):
        if IServing.providedBy(event):
            self.servers.append(event)

    def send_pipelined(self, *calls):
        client = self.client
        data = b""
        ids = []
        for method, args in calls:
            client.next_id += 1
            ids.append(client.next_id)
            data += client.connection.send(Call(client.next_id, method, args))
        client.sock.sendall(data)  # one write: the server reads it at once
        return ids

    def test_many_replies_one_write_per_batch(self):
        ids = self.send_pipelined(*[("lastTransaction", ())] * 300)
        for msgid in ids:
            self.assertEqual(self.client.wait_reply(msgid), Z64)
        # 300 replies of 16 bytes: one or a few writes (the request bytes
        # may arrive in more than one read), not 300.
        self.assertLessEqual(self.recorder.writes, 5)

    def test_big_batches_are_written_in_pieces(self):
        oid = self.client.call("new_oids", 1)[0]
        self.client.commit(1, [(oid, Z64, b"x" * 5000)])
        self.recorder.writes = 0
        ids = self.send_pipelined(*[("loadBefore", (oid, MAXTID))] * 100)
        for msgid in ids:
            self.assertEqual(self.client.wait_reply(msgid)[0], b"x" * 5000)
        # About 500 KB of replies, written in 64 KiB pieces while the
        # client reads.
        self.assertGreaterEqual(self.recorder.writes, 5)
        self.assertLess(self.recorder.writes, 100)

    def test_replies_before_a_bad_request_are_delivered(self):
        ids = self.send_pipelined(
            ("lastTransaction", ()), ("lastTransaction", ()), ("__class__", ()))
        for msgid in ids[:2]:
            self.assertEqual(self.client.wait_reply(msgid), Z64)
        self.assertTrue(self.client.wait_closed())


class BlobStreamTests(unittest.TestCase):
    """Blob chunks: read into buffers of their own, written as read."""

    def setUp(self):
        directory = tempfile.mkdtemp(prefix="zeo-blob-stream-")
        self.addCleanup(shutil.rmtree, directory)
        served = []
        zope.event.subscribers.append(served.append)
        try:
            self.address, stop = zeo.server.server(
                os.path.join(directory, "Data.fs"),
                blob_dir=os.path.join(directory, "blobs"), blob_chunk_size=1 << 20,
                msgpack=True)   # msgpack writes each chunk as a piece of its own
        finally:
            zope.event.subscribers.remove(served.append)
        self.addCleanup(stop)
        self.server = [event for event in served if IServing.providedBy(event)][0].server
        self.client = RawClient(self.address)
        self.addCleanup(self.client.close)

    def test_chunks_are_pieces_of_their_own(self):
        client = self.client
        blob = os.urandom(3 << 20)
        oid = client.call("new_oids", 1)[0]
        # The chunks arrive mostly straight into buffers of their own.
        protocol, = self.server.connections
        direct = []
        received_into = protocol._connection.received_into

        def count(nbytes):
            direct.append(nbytes)
            received_into(nbytes)
        protocol._connection.received_into = count
        client.send("tpc_begin", 1, b"", b"", {}, None, " ")
        client.send("storeBlobStart")
        for start in range(0, len(blob), 1 << 20):
            client.send("storeBlobChunk", blob[start:start + (1 << 20)])
        client.send("storeBlobEnd", oid, Z64, b"blob record", 1)
        client.call("vote", 1)
        tid = client.call("tpc_finish", 1)
        self.assertGreater(sum(direct), len(blob) // 2)
        recorder = protocol.transport = WriteRecorder(protocol.transport)
        client.call("sendBlob", oid, tid)
        received = b"".join(message.args[2] for message in client.one_way
                            if message.method == "receiveBlobChunk")
        self.assertEqual(received, blob)
        self.assertEqual([len(piece) for piece in recorder.pieces if len(piece) > 1000],
                         [1 << 20] * 3)
