"""Resource bounds: connections, spooled transaction size."""

import os
import shutil
import socket
import tempfile
import time
import unittest

import zeo.server
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


if __name__ == "__main__":
    unittest.main()
