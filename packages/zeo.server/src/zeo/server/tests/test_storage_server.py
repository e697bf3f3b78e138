"""The StorageServer: addresses (IPv4, IPv6, Unix), events, read-only, memory."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import msgpack
import zope.event
from ZODB.MappingStorage import MappingStorage
from zope.interface.verify import verifyObject

import zeo.server
from zeo.protocol import frame
from zeo.server.interfaces import IClosed, IServing
from zeo.server.tests.rawclient import RawClient, ServerError, connect_when_ready
from zeo.server.tests.support import SlowPackStorage, child_env, commit_directly, free_port

Z64 = b"\0" * 8


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


class EventsAndAddressesTests(unittest.TestCase):

    def setUp(self):
        self.events = []
        zope.event.subscribers.append(self.events.append)
        self.addCleanup(zope.event.subscribers.remove, self.events.append)

    def test_serving_and_closed_carry_the_bound_address(self):
        address, stop = zeo.server.server()
        serving = [e for e in self.events if IServing.providedBy(e)]
        self.assertEqual(len(serving), 1)
        verifyObject(IServing, serving[0])
        self.assertEqual(serving[0].address, address)
        self.assertNotEqual(address[1], 0)      # port 0 became a real port
        stop()
        closed = [e for e in self.events if IClosed.providedBy(e)]
        self.assertEqual(len(closed), 1)
        self.assertIs(closed[0].server, serving[0].server)

    @unittest.skipUnless(ipv6_available(), "no IPv6 loopback here")
    def test_ipv6(self):
        address, stop = zeo.server.server(port=("::1", 0))
        self.addCleanup(stop)
        self.assertEqual(address[0], "::1")
        sock = socket.create_connection(address, timeout=10)
        self.assertEqual(sock.recv(64)[4:6], b"Z5")   # pickle, as ZEO announces
        sock.close()

    def test_unix_socket_and_stale_socket_removal(self):
        directory = tempfile.mkdtemp(prefix="zeo-unix-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "zeo.sock")
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)          # a socket file nobody listens on
        stale.close()
        address, stop = zeo.server.server(port=path)
        self.assertEqual(address, path)
        client = RawClient(path)
        self.assertEqual(client.call("lastTransaction"), Z64)
        client.close()
        stop()
        self.assertFalse(os.path.exists(path))

    def test_several_named_storages(self):
        address, stop = zeo.server.server(
            storages={"main": MappingStorage(), "other": MappingStorage()})
        self.addCleanup(stop)
        for name in ("main", "other"):
            client = RawClient(address, register=name)
            self.assertEqual(client.call("get_info")["length"], 0)
            client.close()


class ByteCounterTests(unittest.TestCase):

    def test_status_counts_the_bytes_of_registered_clients(self):
        address, stop = zeo.server.server(msgpack=True)   # sizes below are msgpack's
        self.addCleanup(stop)
        client = RawClient(address)
        self.addCleanup(client.close)
        before = client.call("server_status")
        first_id = client.next_id + 1
        for _ in range(10):
            self.assertEqual(client.call("lastTransaction"), Z64)
        after = client.call("server_status")
        # Exactly the ten requests and the second status request came in.
        sent = sum(
            len(frame(msgpack.packb((msgid, False, "lastTransaction", ()))))
            for msgid in range(first_id, first_id + 10)
        ) + len(frame(msgpack.packb((first_id + 10, False, "server_status", ()))))
        self.assertEqual(after["bytes_in"] - before["bytes_in"], sent)
        # At least the ten replies (and the first status) went out.
        reply = len(frame(msgpack.packb((first_id, 0, ".reply", Z64))))
        self.assertGreater(after["bytes_out"] - before["bytes_out"], 10 * reply)


class ReadOnlyServerTests(unittest.TestCase):

    def test_a_read_only_server_refuses_writable_registration(self):
        address, stop = zeo.server.server(read_only=True)
        self.addCleanup(stop)
        with self.assertRaises(ServerError) as caught:
            RawClient(address)
        self.assertEqual(caught.exception.class_name, "ZODB.POSException.ReadOnlyError")
        client = RawClient(address, read_only=True)
        self.assertEqual(client.call("lastTransaction"), Z64)
        # A read-only connection may pack a writable server, not this one.
        with self.assertRaises(ServerError) as caught:
            client.call("pack", time.time(), 1)
        self.assertEqual(caught.exception.class_name, "ZODB.POSException.ReadOnlyError")
        client.close()


#: The reference ZEO's zeopack script, built by buildout.
REFERENCE_ZEOPACK = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), *[os.pardir] * 6, "bin", "reference-zeopack")


@unittest.skipUnless(os.path.exists(REFERENCE_ZEOPACK), "no buildout scripts")
class ReferenceZeopackTests(unittest.TestCase):
    """The reference's zeopack connects read-only and packs."""

    def serve(self, **options):
        from ZODB.FileStorage import FileStorage

        directory = tempfile.mkdtemp(prefix="zeo-zeopack-")
        self.addCleanup(shutil.rmtree, directory)
        storage = FileStorage(os.path.join(directory, "Data.fs"))
        commit_directly(storage, 5)   # five revisions of the root
        address, stop = zeo.server.server(storages={"1": storage}, **options)
        self.addCleanup(stop)
        return address

    def zeopack(self, address):
        return subprocess.run([REFERENCE_ZEOPACK, "%s:%d" % address],
                              capture_output=True, text=True, timeout=120)

    def test_the_reference_zeopack_packs_our_server(self):
        address = self.serve()
        client = RawClient(address, read_only=True)
        self.addCleanup(client.close)
        self.assertEqual(len(client.call("history", Z64, 10)), 5)
        result = self.zeopack(address)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(len(client.call("history", Z64, 10)), 1)

    def test_a_read_only_server_refuses_it(self):
        result = self.zeopack(self.serve(read_only=True))
        self.assertEqual(result.returncode, 1)
        self.assertIn("ReadOnlyError", result.stderr)


def rss_kb(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise LookupError(key)


@unittest.skipUnless(os.path.exists("/proc/self/status"), "needs /proc")
def worker_threads():
    return [t for t in threading.enumerate() if t.name.startswith("zeo.server worker")]


class WorkerTests(unittest.TestCase):
    """Packs run on the server's own worker threads, which end with it."""

    def test_a_stopped_server_leaves_no_worker_thread(self):
        directory = tempfile.mkdtemp(prefix="zeo-workers-")
        self.addCleanup(shutil.rmtree, directory)
        address, stop = zeo.server.server(path=os.path.join(directory, "Data.fs"))
        self.addCleanup(stop)
        from ZODB.tests.MinPO import MinPO
        from ZODB.tests.StorageTestBase import zodb_pickle
        client = RawClient(address)
        client.commit(1, [(Z64, Z64, zodb_pickle(MinPO("root")))])
        client.call("pack", time.time(), 1)
        self.assertEqual(len(worker_threads()), 1)
        client.close()
        stop()
        self.assertEqual(worker_threads(), [])

    def test_closing_waits_for_a_running_pack(self):
        storage = SlowPackStorage()
        address, stop = zeo.server.server(storages={"1": storage})
        self.addCleanup(stop)
        client = RawClient(address)
        client.send_call("pack", time.time(), 0)   # its reply is not awaited
        self.assertTrue(storage.packing.wait(30))
        stopping = threading.Thread(target=stop)
        stopping.start()
        stopping.join(0.5)
        self.assertTrue(stopping.is_alive(), "the server closed during a pack")
        self.assertEqual(storage.events, [])
        storage.may_finish.set()
        stopping.join(30)
        self.assertFalse(stopping.is_alive())
        self.assertEqual(storage.events, ["packed", "closed"])
        self.assertEqual(worker_threads(), [])
        client.close()


class MemoryTests(unittest.TestCase):
    """Server memory (a real runzeo process) does not grow with transaction
    size, the number of packs, or closed connections."""

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-memory-")
        self.port = free_port()
        env = child_env()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "zeo.server.runzeo", "-a", f"127.0.0.1:{self.port}",
             "-f", os.path.join(self.directory, "Data.fs")],
            env=env, stderr=subprocess.DEVNULL)
        connect_when_ready(("127.0.0.1", self.port)).close()

    def tearDown(self):
        self.process.terminate()
        self.process.wait(30)
        shutil.rmtree(self.directory)

    def client(self):
        return RawClient(("127.0.0.1", self.port))

    def test_a_big_transaction_is_spooled_not_held(self):
        client = self.client()
        oids = client.call("new_oids", 100)
        before = rss_kb(self.process.pid)
        chunk = os.urandom(1 << 20)
        client.send("tpc_begin", 1, b"", b"", {}, None, " ")
        for oid in oids:          # 100 MiB in one transaction
            client.send("storea", oid, Z64, chunk, 1)
        client.call("vote", 1)
        client.call("tpc_finish", 1)
        client.close()
        grown_mb = (rss_kb(self.process.pid, "VmHWM") - before) / 1024
        self.assertLess(grown_mb, 40, f"the server grew {grown_mb:.0f} MB")

    def test_closed_connections_and_packs_leave_nothing_behind(self):
        from ZODB.tests.MinPO import MinPO
        from ZODB.tests.StorageTestBase import zodb_pickle
        record = zodb_pickle(MinPO("x" * 1000))
        client = self.client()
        oid = Z64          # the root: pack's garbage collection starts there
        tid = client.commit(1, [(oid, Z64, record)])
        for round_ in range(2):
            for _ in range(200):
                self.client().close()
            for i in range(5):
                tid = client.commit(10 + i, [(oid, tid, record)])
                client.call("pack", time.time(), 1)
            if round_ == 0:
                baseline = rss_kb(self.process.pid)
        grown_kb = rss_kb(self.process.pid) - baseline
        client.close()
        self.assertLess(grown_kb, 2048, f"the server grew {grown_kb} KB")


if __name__ == "__main__":
    unittest.main()
