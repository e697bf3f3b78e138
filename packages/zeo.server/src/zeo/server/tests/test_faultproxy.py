"""Adversity: faults injected between real clients and a real server.

Whatever the network does, nothing half-committed becomes visible, the
commit lock is freed, and the server keeps serving.
"""

import os
import shutil
import tempfile
import time
import unittest

import zeo.server
from zeo.protocol import Call
from zeo.server.tests.faultproxy import FaultProxy
from zeo.server.tests.rawclient import RawClient, ServerError

Z64 = b"\0" * 8
MAXTID = b"\x7f" + b"\xff" * 7


class FaultProxyTests(unittest.TestCase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-faults-")
        self.address, self.stop = zeo.server.server(
            path=os.path.join(self.directory, "Data.fs"))
        self.proxy = FaultProxy(self.address)
        self.proxied = self.proxy.start()

    def tearDown(self):
        self.proxy.stop()
        self.stop()
        shutil.rmtree(self.directory)

    def direct(self):
        return RawClient(self.address)

    def assert_absent(self, oid):
        client = self.direct()
        try:
            with self.assertRaises(ServerError) as caught:
                client.call("loadBefore", oid, MAXTID)
            self.assertEqual(caught.exception.class_name, "ZODB.POSException.POSKeyError")
        finally:
            client.close()

    def assert_lock_free(self):
        client = self.direct()
        try:
            oid = client.call("new_oids", 1)[0]
            started = time.monotonic()
            self.assertIsInstance(client.commit(99, [(oid, Z64, b"after")]), bytes)
            self.assertLess(time.monotonic() - started, 5)
        finally:
            client.close()

    def test_delayed_traffic_still_commits(self):
        self.proxy.delay(0.02)
        client = RawClient(self.proxied)
        oid = client.call("new_oids", 1)[0]
        tid = client.commit(1, [(oid, Z64, b"slow")])
        self.assertEqual(client.call("loadBefore", oid, MAXTID), (b"slow", tid, None))
        client.close()

    def test_cut_in_the_middle_of_an_upload(self):
        client = RawClient(self.proxied)
        oid = client.call("new_oids", 1)[0]
        client.send("tpc_begin", 1, b"", b"", {}, None, " ")
        self.proxy.cut_after(1000)           # inside the next frame
        client.send("storea", oid, Z64, b"x" * 100_000, 1)
        self.assertTrue(client.wait_closed())
        self.assert_absent(oid)
        self.assert_lock_free()

    def test_reset_while_holding_the_commit_lock(self):
        client = RawClient(self.proxied)
        oid = client.call("new_oids", 1)[0]
        client.send("tpc_begin", 1, b"", b"", {}, None, " ")
        client.send("storea", oid, Z64, b"never", 1)
        client.call("vote", 1)               # the lock is held now
        self.proxy.reset()
        self.assertTrue(client.wait_closed())
        self.assert_absent(oid)
        self.assert_lock_free()

    def test_stalled_finish_then_reset(self):
        client = RawClient(self.proxied)
        oid = client.call("new_oids", 1)[0]
        client.send("tpc_begin", 1, b"", b"", {}, None, " ")
        client.send("storea", oid, Z64, b"maybe", 1)
        client.call("vote", 1)
        self.proxy.stall()                   # tpc_finish never reaches the server
        client.send_call("tpc_finish", 1)
        self.proxy.reset()
        self.assertTrue(client.wait_closed())
        self.assert_absent(oid)
        self.assert_lock_free()

    def test_hold_after_some_frames_then_release(self):
        # The client's protocol and register frames pass, then one call.
        self.proxy.hold_after(3, "up")
        client = RawClient(self.proxied, timeout=0.5)
        first, second = Call(101, "new_oids", (1,)), Call(102, "new_oids", (1,))
        # Both in one chunk: the proxy splits it at the frame boundary.
        client.sock.sendall(client.connection.send(first) + client.connection.send(second))
        self.assertEqual(len(client.wait_reply(101)), 1)
        with self.assertRaises(TimeoutError):
            client.wait_reply(102)
        self.proxy.release()
        client.sock.settimeout(10)
        self.assertEqual(len(client.wait_reply(102)), 1)
        client.close()

    def test_a_reference_client_recovers_after_a_reset(self):
        import ZODB
        from ZEO.ClientStorage import ClientStorage
        from ZEO.Exceptions import ClientDisconnected

        db = ZODB.DB(ClientStorage(self.proxied, wait_timeout=30))
        try:
            with db.transaction() as connection:
                connection.root.value = 1
            self.proxy.reset()
            # The client notices, reconnects through the proxy and verifies
            # its cache; a commit cut by the reset fails as a transient
            # error and succeeds when retried.
            deadline = time.monotonic() + 30
            while True:
                try:
                    with db.transaction() as connection:
                        connection.root.value = 2
                    break
                except ClientDisconnected:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            with db.transaction() as connection:
                self.assertEqual(connection.root.value, 2)
        finally:
            db.close()


if __name__ == "__main__":
    unittest.main()
