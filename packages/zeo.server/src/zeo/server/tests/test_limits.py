"""Resource bounds: connections, spooled transaction size, unread output,
open iterators."""

import logging
import os
import shutil
import socket
import struct
import tempfile
import time
import unittest

import zope.event

import zeo.server
from zeo.protocol import ProtocolError, ProtocolLimits
from zeo.protocol.framing import frame_header
from zeo.server.admin import status
from zeo.server.config import (
    DEFAULT_MAX_ITERATORS, DEFAULT_MAX_SERVER_ITERATORS, ServerConfig)
from zeo.server.interfaces import IServing
from zeo.server.tests.rawclient import RawClient, ServerError
from zeo.server.tests.support import ServerProcess, wait_until

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


class AnnouncedFrameTests(unittest.TestCase):
    """A server's memory grows with the bytes its clients send, never with
    the sizes their frame headers announce."""

    CONNECTIONS = 8
    ANNOUNCED = 64 << 20   # the default maximum frame size
    SENT = (4 << 20) + (512 << 10)   # a sixteenth of 64 MiB, and more

    def test_frames_announced_at_64_mib_cost_what_was_sent(self):
        # Each client registers, then announces a 64 MiB frame and sends
        # 4.5 MiB of it.  The old frame reader allocated the whole frame
        # once a sixteenth of it was there: 540 MiB more for these 36.
        directory = tempfile.mkdtemp(prefix="zeo-limits-")
        self.addCleanup(shutil.rmtree, directory, True)
        server = ServerProcess(directory)
        self.addCleanup(server.stop)
        clients = [server.client() for _ in range(self.CONNECTIONS)]
        for client in clients:
            self.addCleanup(client.close)
        received = status(server.address)["1"]["bytes_in"]
        before = server.rss_kib() * 1024
        body = b"b" * self.SENT
        for client in clients:
            client.sock.sendall(frame_header(self.ANNOUNCED) + body)
        # Until the server has read it all (its counter of bytes in).
        expected = received + self.CONNECTIONS * (4 + self.SENT)
        deadline = time.monotonic() + 30
        while status(server.address)["1"]["bytes_in"] < expected:
            self.assertLess(time.monotonic(), deadline, "the server did not read it all")
            time.sleep(0.05)
        time.sleep(0.2)  # and asked for its next buffers
        grown = server.rss_kib() * 1024 - before
        sent = self.CONNECTIONS * self.SENT
        self.assertLess(grown, 3 * sent + (16 << 20),
                        f"{grown >> 20} MiB more for {sent >> 20} MiB sent")
        # The server goes on.
        other = server.client()
        self.assertEqual(other.call("lastTransaction"), Z64)
        other.close()


MAXTID = b"\x7f" + b"\xff" * 7
MiB = 1 << 20


class ProcessWideLimitTests(unittest.TestCase):
    """What all connections hold together (zeo.server.budgets), over real
    sockets with small limits."""

    def start(self, port=0, **options):
        self.directory = tempfile.mkdtemp(prefix="zeo-budgets-")
        self.addCleanup(shutil.rmtree, self.directory)
        serving = []
        note = lambda event: IServing.providedBy(event) and serving.append(event)  # noqa: E731
        zope.event.subscribers.append(note)
        try:
            address, stop = zeo.server.server(
                path=os.path.join(self.directory, "Data.fs"), port=port, **options)
        finally:
            zope.event.subscribers.remove(note)
        self.addCleanup(stop)
        self.server = serving[0].server
        return address

    def open_socket(self, address, source=None):
        """A connection that completed the handshake (pickle, the default), unregistered."""
        sock = socket.create_connection(address, timeout=10, source_address=source)
        self.addCleanup(sock.close)
        greeting = sock.recv(64)
        self.assertEqual(greeting[4:6], b"Z5")
        sock.sendall(struct.pack(">I", 2) + b"Z5")
        return sock

    def assert_serving(self, address):
        client = RawClient(address)
        try:
            oid = client.call("new_oids", 1)[0]
            tid = client.commit(1, [(oid, Z64, b"still here")])
            self.assertEqual(client.call("loadBefore", oid, MAXTID), (b"still here", tid, None))
        finally:
            client.close()

    def closed_by_server(self, sock):
        client = RawClient.__new__(RawClient)
        client.sock = sock
        return server_closed(client)

    def test_the_biggest_holders_of_partial_input_are_closed(self):
        # Each hoarder announces an almost maximal frame and sends only
        # part of it. Together they pass the 2 MiB budget with the last
        # one: the biggest (the first) is closed, the others are kept.
        address = self.start(limits=ProtocolLimits(max_frame_size=MiB),
                             blob_chunk_size=MiB // 4, max_output_buffer=2 * MiB,
                             max_total_input_buffer=2 * MiB)
        budgets = self.server.budgets
        hoarders = []
        held = 0
        with self.assertLogs("zeo.server", logging.WARNING) as logged:
            for size in (1_000_000, 500_000, 300_000, 400_000):
                sock = self.open_socket(address)
                sock.sendall(struct.pack(">I", MiB - 8) + b"h" * size)
                hoarders.append(sock)
                held += size + 4
                if held <= 2 * MiB:
                    wait_until(lambda: budgets.input_total == held,
                               f"the server does not hold {held} bytes")
            biggest = hoarders[0]
            wait_until(lambda: self.closed_by_server(biggest), "the biggest holder is open")
            wait_until(lambda: budgets.input_total == held - 1_000_004,
                       "the closed connection's input is still counted")
        self.assertEqual(len(logged.output), 1, logged.output)
        self.assertIn("1000004 bytes of unfinished requests", logged.output[0])
        self.assertIn("max-total-input-buffer", logged.output[0])
        for sock in hoarders[1:]:
            self.assertFalse(self.closed_by_server(sock))
        self.assert_serving(address)
        for sock in hoarders[1:]:
            sock.close()
        wait_until(lambda: budgets.input_total == 0, "closed connections are still counted")

    def test_the_connections_with_the_most_unsent_output_are_aborted(self):
        # Clients that ask for 600 kB records and do not read: each has
        # about 1 to 2 MB of replies waiting when the server stops
        # answering it (write_buffer high water: 1 MiB). Four of them are
        # over the 3 MiB budget (each one alone is well under its own
        # 8 MiB limit): some are aborted, at least one is kept. On a Unix
        # socket, so that the kernel holds little.
        directory = tempfile.mkdtemp(prefix="zeo-unix-")
        self.addCleanup(shutil.rmtree, directory)
        address = self.start(port=os.path.join(directory, "socket"),
                             limits=ProtocolLimits(max_frame_size=MiB),
                             blob_chunk_size=MiB // 4, max_output_buffer=8 * MiB,
                             max_total_output_buffer=3 * MiB)
        budgets = self.server.budgets
        writer = RawClient(address)
        oid = writer.call("new_oids", 1)[0]
        writer.commit(1, [(oid, Z64, b"r" * 600_000)])
        writer.close()
        greedy = []
        with self.assertLogs("zeo.server", logging.WARNING) as logged:
            for _ in range(4):
                client = RawClient(address)
                greedy.append(client)
                for _ in range(20):
                    client.send_call("loadBefore", oid, MAXTID)
                time.sleep(0.2)
            wait_until(lambda: len(logged.output) >= 1, "nobody was aborted")
        self.assertLessEqual(budgets.output_total, 3 * MiB)
        # The others get every answer as they read.
        closed = 0
        for client in greedy:
            try:
                for msgid in range(1, client.next_id + 1):
                    if msgid != 1:   # register
                        self.assertEqual(len(client.wait_reply(msgid)[0]), 600_000)
            except (OSError, ProtocolError):   # reset, or cut in a message
                closed += 1
            client.close()
        self.assertGreaterEqual(closed, 1)
        self.assertLess(closed, 4)
        self.assertEqual(len(logged.output), closed, logged.output)
        for line in logged.output:
            self.assertIn("max-total-output-buffer", line)
        self.assert_serving(address)

    def test_connections_beyond_the_limit_per_address_are_closed_on_accept(self):
        address = self.start(max_connections_per_address=2)
        first, second = RawClient(address), RawClient(address)
        with self.assertLogs("zeo.server", logging.WARNING) as logged:
            third = socket.create_connection(address, timeout=10)
            self.assertEqual(third.recv(100), b"")   # closed without a greeting
            third.close()
        self.assertEqual(len(logged.output), 1, logged.output)
        self.assertIn("2 connections from 127.0.0.1 already", logged.output[0])
        self.assertIn("max-connections-per-address", logged.output[0])
        # Another address has its own count (all of 127/8 is loopback).
        other = self.open_socket(address, source=("127.0.0.2", 0))
        self.assertFalse(self.closed_by_server(other))
        # A closed connection frees its slot.
        first.close()
        wait_until(lambda: len(self.server.connections) == 2, "the slot was not freed")
        again = RawClient(address)
        self.assertEqual(again.call("lastTransaction"), Z64)
        for client in (again, second):
            client.close()

    def test_unix_socket_connections_have_no_limit_per_address(self):
        directory = tempfile.mkdtemp(prefix="zeo-unix-")
        self.addCleanup(shutil.rmtree, directory)
        address = self.start(port=os.path.join(directory, "socket"),
                             max_connections_per_address=1)
        clients = [RawClient(address) for _ in range(3)]
        for client in clients:
            self.assertEqual(client.call("lastTransaction"), Z64)
            client.close()

    def test_idle_connections_are_closed_unless_busy(self):
        address = self.start(idle_timeout=1.0)
        idle = RawClient(address)
        talking = RawClient(address)
        committing = RawClient(address)
        # A transaction in progress is not idle, however quiet.
        committing.send("tpc_begin", 1, b"", b"", {}, None, " ")
        started = time.monotonic()
        with self.assertLogs("zeo.server", logging.WARNING) as logged:
            while not server_closed(idle):
                self.assertLess(time.monotonic() - started, 10, "the idle client is open")
                self.assertIsNone(talking.call("ping"))
                time.sleep(0.05)
        self.assertGreaterEqual(time.monotonic() - started, 1.0)
        self.assertEqual(len(logged.output), 1, logged.output)
        self.assertIn("(idle-timeout)", logged.output[0])
        # As long again: the others are still there (a ping every 50 ms
        # keeps one busy, a transaction the other).
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            self.assertIsNone(talking.call("ping"))
            time.sleep(0.05)
        self.assertFalse(server_closed(committing))
        self.assertIsNone(committing.call("tpc_abort", 1))
        for client in (idle, talking, committing):
            client.close()

    def test_no_idle_timeout_by_default(self):
        self.assertIsNone(ServerConfig().idle_timeout)
        address = self.start(handshake_timeout=0.2)
        quiet = RawClient(address)
        time.sleep(0.6)
        self.assertEqual(quiet.call("lastTransaction"), Z64)
        quiet.close()


class ProcessWideLimitConfigTests(unittest.TestCase):

    def test_defaults(self):
        config = ServerConfig()
        self.assertEqual(config.total_input_limit, 1 << 30)
        self.assertEqual(config.total_output_limit, 1 << 30)
        self.assertEqual(config.max_connections_per_address, 1000)
        big = ServerConfig(limits=ProtocolLimits(max_frame_size=256 * MiB))
        self.assertEqual(big.total_input_limit, 16 * 256 * MiB)
        self.assertEqual(big.total_output_limit, 8 * 512 * MiB)
        set_ = ServerConfig(max_total_input_buffer=100 * MiB, max_total_output_buffer=200 * MiB)
        self.assertEqual((set_.total_input_limit, set_.total_output_limit), (100 * MiB, 200 * MiB))

    def test_the_address_counted_per_connection(self):
        from zeo.server.adapter import peer_host

        class Transport:
            def __init__(self, peer):
                self.peer = peer

            def get_extra_info(self, name):
                return self.peer

        self.assertEqual(peer_host(Transport(("10.0.0.1", 8100))), "10.0.0.1")
        self.assertEqual(peer_host(Transport(("::ffff:10.0.0.1", 8100, 0, 0))), "10.0.0.1")
        self.assertEqual(peer_host(Transport(("::1", 8100, 0, 0))), "::1")
        self.assertIsNone(peer_host(Transport("")))   # a Unix socket

    def test_bad_values_are_refused(self):
        for field, bad in [("max_total_input_buffer", 0), ("max_total_input_buffer", MiB),
                           ("max_total_output_buffer", -1), ("max_total_output_buffer", "1GB"),
                           ("idle_timeout", 0), ("idle_timeout", float("inf")),
                           ("max_connections_per_address", 0),
                           ("max_connections_per_address", True)]:
            with self.assertRaises(ValueError, msg=(field, bad)):
                ServerConfig(**{field: bad})


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
