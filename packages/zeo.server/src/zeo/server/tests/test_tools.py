"""zeo-status and zeopack against real servers."""

import os
import shutil
import tempfile
import time
import unittest


import zeo.server
from zeo.server.tests.rawclient import RawClient
from zeo.server.tests.support import free_port, run
from zeo.server.admin import status
from zeo.server.tools import CRITICAL, OK, WARNING, pack_main, status_main

Z64 = b"\0" * 8


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
        self.assertTrue(out.startswith("CRITICAL: no status from 127.0.0.1:"), out)
        self.assertIn(": connection refused (is the server running?)", out)

    def test_nagios_output(self):
        # zeo-nagios' layout: the first metric on the first line, the others
        # last after "| ", one per line; detail lines between.
        code, out, _ = run(status_main, self.target, "-m")
        self.assertEqual(code, WARNING)
        lines = out.splitlines()
        self.assertEqual(lines[0], "Empty storage '1'|active_txns=0")
        self.assertTrue(lines[1].startswith("WARNING: storage 1: 0 connections"), lines)
        self.assertEqual(lines[2:], ["| connections=0", " waiting=0"])
        client = RawClient(self.address)
        oid = client.call("new_oids", 1)[0]
        client.commit(1, [(oid, Z64, b"x")])
        code, out, _ = run(status_main, self.target, "--output-metrics")
        self.assertEqual(code, OK)
        self.assertTrue(out.startswith("OK|active_txns=0\nOK: storage 1: 1 connections"), out)
        client.close()

    def test_rates_from_a_status_file(self):
        status_file = os.path.join(self.directory, "status.json")
        code, out, _ = run(status_main, self.target, "-m", "-s", status_file)
        self.assertNotIn("commits", out)      # nothing to compare with yet
        client = RawClient(self.address)
        oid = client.call("new_oids", 1)[0]
        serial = client.commit(1, [(oid, Z64, b"x")])
        client.commit(2, [(oid, serial, b"y")])
        client.close()
        two_minutes_ago = time.time() - 120
        os.utime(status_file, (two_minutes_ago, two_minutes_ago))
        code, out, _ = run(status_main, self.target, "-m", "-s", status_file, "-u", "minutes")
        self.assertEqual(code, OK, out)
        metrics = dict(line.strip(" |").split("=") for line in out.splitlines()
                       if line.startswith((" ", "|")))
        self.assertAlmostEqual(float(metrics["commits"]), 1.0, places=2)  # 2 in 2 minutes
        self.assertEqual(float(metrics["aborts"]), 0.0)
        self.assertEqual(set(metrics), {"connections", "waiting", "aborts", "commits",
                                        "conflicts", "conflicts_resolved", "loads", "stores"})

    def test_thresholds(self):
        holder = RawClient(self.address)
        self.addCleanup(holder.close)
        oid = holder.call("new_oids", 1)[0]
        holder.send("tpc_begin", 1, b"", b"", {}, None, " ")
        holder.send("storea", oid, Z64, b"x", 1)
        holder.call("vote", 1)                 # holds the commit lock
        waiter = RawClient(self.address)
        self.addCleanup(waiter.close)
        waiter.send("tpc_begin", 1, b"", b"", {}, None, " ")
        waiter.send("storea", oid, Z64, b"y", 1)
        waiter.send_call("vote", 1)            # queued behind it
        deadline = time.monotonic() + 10
        while status(self.address)["1"]["waiting"] != 1:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.05)
        code, out, _ = run(status_main, self.target, "-m", "--lock-warning", "0",
                           "--lock-critical", "3600", "--clients-critical", "1",
                           "--waiting-warning", "0", "--waiting-critical", "1")
        self.assertEqual(code, CRITICAL, out)
        lines = out.splitlines()
        self.assertEqual(lines[0], "CRITICAL: storage '1': 2 connections (more than 1)"
                                   "|active_txns=2")
        self.assertIn("WARNING: storage '1': 1 transactions waiting for the commit lock"
                      " (more than 0)", lines)
        self.assertTrue(any(line.startswith("WARNING: storage '1': commit lock held for ")
                            for line in lines), lines)
        self.assertIn("| connections=2;;1", lines)
        self.assertIn(" waiting=1;0;1", lines)
        self.assertIn("commit lock held for", lines[-3])
        code, out, _ = run(status_main, self.target, "--lock-critical", "3600",
                           "--clients-warning", "2", "--waiting-critical", "1")
        self.assertEqual(code, WARNING, out)   # only the empty storage
        self.assertEqual(out.splitlines()[0], "Empty storage '1'")

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
