"""zeo-status and zeopack against real servers."""

import contextlib
import io
import os
import shutil
import tempfile
import unittest


import zeo.server
from zeo.server.tests.rawclient import RawClient
from zeo.server.tests.test_runzeo import free_port
from zeo.server.tools import CRITICAL, OK, WARNING, pack_main, status_main

Z64 = b"\0" * 8


def run(main, *args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


class ToolTests(unittest.TestCase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-tools-")
        self.path = os.path.join(self.directory, "Data.fs")
        self.address, self.stop = zeo.server.server(path=self.path)
        self.target = f"127.0.0.1:{self.address[1]}"

    def tearDown(self):
        self.stop()
        shutil.rmtree(self.directory)

    def test_status_levels(self):
        code, out, _ = run(status_main, self.target)
        self.assertEqual(code, WARNING)
        self.assertIn("empty storage", out)
        client = RawClient(self.address)
        oid = client.call("new_oids", 1)[0]
        client.commit(1, [(oid, Z64, b"x")])
        code, out, _ = run(status_main, self.target, "--json")
        self.assertEqual(code, OK)
        self.assertIn('"connections": 1', out)
        self.assertIn("OK: storage 1: 1 connections", out)
        client.close()

    def test_status_of_nothing_is_critical(self):
        code, out, _ = run(status_main, f"127.0.0.1:{free_port()}", "--timeout", "2")
        self.assertEqual(code, CRITICAL)
        self.assertTrue(out.startswith("CRITICAL"))

    def test_pack_removes_old_revisions(self):
        import ZODB
        import transaction
        from ZEO.ClientStorage import ClientStorage
        db = ZODB.DB(ClientStorage(self.address, wait_timeout=30))
        for value in range(3):
            with db.transaction() as connection:
                connection.root.value = value
        db.close()
        before = os.path.getsize(self.path)
        code, _, err = run(pack_main, self.target)
        self.assertEqual(code, 0, err)
        self.assertLess(os.path.getsize(self.path), before)
        transaction.abort()

    def test_pack_without_a_server_fails(self):
        code, _, err = run(pack_main, f"127.0.0.1:{free_port()}:1")
        self.assertEqual(code, 1)
        self.assertIn("cannot connect", err)


if __name__ == "__main__":
    unittest.main()
