"""Resource bounds: connections, spooled transaction size, unread output."""

import os
import shutil
import socket
import tempfile
import time
import unittest

import zeo.server
from zeo.protocol import ProtocolLimits
from zeo.protocol.framing import frame_header
from zeo.server.admin import status
from zeo.server.tests.rawclient import RawClient
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


if __name__ == "__main__":
    unittest.main()
