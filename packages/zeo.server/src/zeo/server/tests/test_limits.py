"""Resource bounds: connections, spooled transaction size, unread output,
open iterators."""

import os
import shutil
import socket
import tempfile
import time
import unittest

import zeo.server
from zeo.protocol import ProtocolLimits
from zeo.server.config import DEFAULT_MAX_ITERATORS, DEFAULT_MAX_SERVER_ITERATORS
from zeo.server.tests.rawclient import RawClient, ServerError
from zeo.server.tests.serverprocess import ServerProcess

Z64 = b"\0" * 8


def resident_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def server_closed(client):
    """Did the server close or reset *client*'s connection?  Reads (and
    drops) what is there without waiting."""
    client.sock.settimeout(0)
    try:
        while True:
            if not client.sock.recv(1 << 20):
                return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        client.sock.settimeout(10)


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

    def start_with_a_big_record(self, **options):
        address = self.start(**options)
        writer = RawClient(address)
        oid = writer.call("new_oids", 1)[0]
        tid = writer.commit(1, [(oid, Z64, b"r" * 200_000)])
        writer.close()
        return address, oid, tid

    def test_a_client_that_does_not_read_its_replies_is_not_answered_meanwhile(self):
        # 300 loads of a 200 kB record, sent without reading: the server
        # answers only as fast as the client reads (60 MB otherwise sit
        # in this process, which runs the server), and loses nothing.
        address, oid, tid = self.start_with_a_big_record()
        greedy = RawClient(address)
        before = resident_bytes()
        ids = [greedy.send_call("loadBefore", oid, b"\xff" * 8) for _ in range(300)]
        time.sleep(1.0)
        grown = resident_bytes() - before
        self.assertLess(grown, 30_000_000)
        # Others are served meanwhile.
        other = RawClient(address)
        self.assertEqual(other.call("loadBefore", oid, b"\xff" * 8)[1], tid)
        other.close()
        for msgid in ids:
            self.assertEqual(greedy.wait_reply(msgid)[1], tid)
        greedy.close()

    def test_a_client_that_lets_invalidations_pile_up_is_cut_off(self):
        # Small limits so that 1 MB of invalidations exceeds them: 64 kB
        # frames and output limit; 100 commits of 1,000 objects. On a Unix
        # socket, so that the kernel holds no more than its fixed buffer
        # (TCP on loopback would take megabytes).
        self.directory = tempfile.mkdtemp(prefix="zeo-limits-")
        self.addCleanup(shutil.rmtree, self.directory)
        address, stop = zeo.server.server(
            path=os.path.join(self.directory, "Data.fs"),
            port=os.path.join(self.directory, "socket"),
            limits=ProtocolLimits(max_frame_size=1 << 16),
            max_output_buffer=1 << 16, blob_chunk_size=1 << 14)
        self.addCleanup(stop)
        idle = RawClient(address)
        writer = RawClient(address)
        oids = [oid for _ in range(10) for oid in writer.call("new_oids", 100)]
        serial = Z64
        for txn in range(1, 101):
            serial = writer.commit(txn, [(oid, serial, b"o") for oid in oids])
        writer.close()
        deadline = time.monotonic() + 10
        while not server_closed(idle):
            self.assertLess(time.monotonic(), deadline, "the idle client is still connected")
            time.sleep(0.1)
        idle.close()


class IteratorLimitTests(unittest.TestCase):
    """Each server-side transaction iterator holds an open file: the whole
    server holds at most max-server-iterators of them, however many
    read-only connections ask (a real runzeo with its defaults)."""

    def test_read_only_connections_cannot_exhaust_the_descriptors(self):
        directory = tempfile.mkdtemp(prefix="zeo-limits-")
        self.addCleanup(shutil.rmtree, directory)
        server = ServerProcess(directory)
        self.addCleanup(server.stop)
        before = server.descriptors()
        clients = [server.client(read_only=True) for _ in range(4)]
        opened = refused = 0
        for client in clients:
            for _ in range(DEFAULT_MAX_ITERATORS):
                try:
                    client.call("iterator_start", None, None)
                    opened += 1
                except ServerError as error:
                    self.assertIn("TooManyIterators", error.class_name)
                    refused += 1
        self.assertEqual(opened, DEFAULT_MAX_SERVER_ITERATORS)
        self.assertEqual(refused, 4 * DEFAULT_MAX_ITERATORS - DEFAULT_MAX_SERVER_ITERATORS)
        self.assertLessEqual(server.descriptors(),
                             before + len(clients) + DEFAULT_MAX_SERVER_ITERATORS)
        # The server still accepts and serves new clients, refusing them
        # iterators until some are given back.
        newcomer = server.client(read_only=True)
        self.addCleanup(newcomer.close)
        self.assertIsNone(newcomer.call("ping"))
        with self.assertRaises(ServerError):
            newcomer.call("iterator_start", None, None)
        for client in clients:
            client.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                newcomer.call("iterator_start", None, None)
                break
            except ServerError:
                self.assertLess(time.monotonic(), deadline, "iterators never given back")
                time.sleep(0.05)
        self.assertEqual(server.stop(), 0)
        self.assertNotIn("Traceback", server.log_text())


if __name__ == "__main__":
    unittest.main()
