"""Resource bounds: connections, spooled transaction size, unread output."""

import os
import shutil
import socket
import tempfile
import time
import unittest

import zeo.server
from zeo.protocol import ProtocolLimits
from zeo.server.tests.rawclient import RawClient

Z64 = b"\0" * 8


class LimitTests(unittest.TestCase):

    def start(self, **options):
        self.directory = tempfile.mkdtemp(prefix="zeo-limits-")
        self.addCleanup(shutil.rmtree, self.directory)
        address, stop = zeo.server.server(path=os.path.join(self.directory, "Data.fs"),
                                          **options)
        self.addCleanup(stop)
        return address

    def test_connections_beyond_the_maximum_are_closed_on_accept(self):
        address = self.start(max_connections=2)
        first, second = RawClient(address), RawClient(address)
        third = socket.create_connection(address, timeout=10)
        self.assertEqual(third.recv(100), b"")   # closed without a greeting
        third.close()
        first.close()
        # A slot freed by a closed connection can be used again.
        for _ in range(50):
            try:
                again = RawClient(address)
                break
            except (ConnectionError, OSError):
                time.sleep(0.05)
        self.assertEqual(again.call("lastTransaction"), Z64)
        again.close()
        second.close()

    def test_a_transaction_larger_than_the_spool_limit_is_refused(self):
        address = self.start(max_spool_size=100_000)
        client = RawClient(address)
        oid = client.call("new_oids", 1)[0]
        client.send("tpc_begin", 1, b"", b"", {}, None, " ")
        for _ in range(5):
            client.send("storea", oid, Z64, b"x" * 30_000, 1)
        self.assertTrue(client.wait_closed())
        # Nothing of it was committed and the server goes on.
        fresh = RawClient(address)
        self.assertIsInstance(fresh.commit(2, [(oid, Z64, b"small")]), bytes)
        fresh.close()

    def start_with_a_big_record(self):
        # A 1 MiB frame limit lets a 1 MiB output limit; one record of
        # 200 kB makes every load reply that big.
        address = self.start(limits=ProtocolLimits(max_frame_size=1 << 20),
                             max_output_buffer=1 << 20, blob_chunk_size=1 << 16)
        writer = RawClient(address)
        oid = writer.call("new_oids", 1)[0]
        tid = writer.commit(1, [(oid, Z64, b"r" * 200_000)])
        writer.close()
        return address, oid, tid

    def test_a_client_that_does_not_read_its_replies_is_cut_off(self):
        address, oid, tid = self.start_with_a_big_record()
        greedy = RawClient(address)
        # Small socket buffers so that the server's queue, not the
        # kernel's, holds what is not read.
        greedy.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        requests = 300   # 60 MB of replies
        for _ in range(requests):
            greedy.send_call("loadBefore", oid, b"\xff" * 8)
        time.sleep(0.5)
        received, ended = 0, None
        greedy.sock.settimeout(10)
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline:
                data = greedy.sock.recv(1 << 20)
                if not data:
                    ended = "closed"
                    break
                received += len(data)
        except socket.timeout:
            ended = "timed out"
        except ConnectionResetError:
            ended = "reset"
        greedy.close()
        self.assertIn(ended, ("closed", "reset"))
        self.assertLess(received, requests * 200_000 // 2)
        # The server goes on serving, big replies included.
        fresh = RawClient(address)
        self.assertEqual(len(fresh.call("loadBefore", oid, b"\xff" * 8)[0]), 200_000)
        fresh.close()

    def test_a_client_that_reads_gets_every_reply(self):
        address, oid, tid = self.start_with_a_big_record()
        client = RawClient(address)
        ids = [client.send_call("loadBefore", oid, b"\xff" * 8) for _ in range(30)]
        for msgid in ids:
            self.assertEqual(client.wait_reply(msgid)[1], tid)
        client.close()


if __name__ == "__main__":
    unittest.main()
