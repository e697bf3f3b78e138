"""zeopack's command line, as the reference ZEO 6.2's: each form against
real servers, several servers in one run."""

import os
import shutil
import socket
import tempfile
import time
import unittest

import zeo.server
from zeo.server.runzeo import UsageError
from zeo.server.tests.support import free_port
from zeo.server.tests.support import run
from zeo.server.tools import _pack_parser, _servers, pack_main, pack_time, parse_target
from zeo.server.toolconfig import ClientSettings


def fill(address):
    """Three revisions of the root: a pack to now shrinks the file."""
    import ZODB
    from ZEO.ClientStorage import ClientStorage
    db = ZODB.DB(ClientStorage(address, wait_timeout=30))
    for value in range(3):
        with db.transaction() as connection:
            connection.root.value = value
    db.close()


class Server:
    def __init__(self, directory, name, unix=False):
        self.path = os.path.join(directory, f"{name}.fs")
        port = os.path.join(directory, f"{name}.sock") if unix else 0
        self.address, self.stop = zeo.server.server(path=self.path, port=port)
        fill(self.address)
        self.size = os.path.getsize(self.path)
        self.target = self.address if unix else f"127.0.0.1:{self.address[1]}"

    def packed(self):
        return os.path.getsize(self.path) < self.size


class ZeopackTests(unittest.TestCase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-zeopack-")
        self.addCleanup(shutil.rmtree, self.directory)

    def server(self, name="Data", unix=False):
        server = Server(self.directory, name, unix)
        self.addCleanup(server.stop)
        return server

    def test_time_of_day(self):
        server = self.server()
        # Midnight today: everything was written after it, nothing goes.
        code, _, err = run(pack_main, server.target, "-t", "00:00")
        self.assertEqual(code, 0, err)
        self.assertFalse(server.packed())
        code, _, err = run(pack_main, server.target, "-t", "23:59:59", "-d", "1")
        self.assertEqual(code, 0, err)   # yesterday 23:59:59: still before
        self.assertFalse(server.packed())
        code, _, err = run(pack_main, server.target, "--time", "00")
        self.assertEqual(code, 0, err)
        self.assertFalse(server.packed())
        code, _, err = run(pack_main, server.target)
        self.assertEqual(code, 0, err)
        self.assertTrue(server.packed())

    def test_pack_time(self):
        now = time.mktime((2026, 3, 15, 14, 20, 0, 0, 0, -1))
        self.assertEqual(pack_time(now, 0, None), now)
        self.assertEqual(pack_time(now, 2, None), now - 2 * 86400)
        self.assertEqual(pack_time(now, 0, "10"), time.mktime((2026, 3, 15, 10, 0, 0, 0, 0, -1)))
        self.assertEqual(pack_time(now, 1, "10:30"),
                         time.mktime((2026, 3, 15, 10, 30, 0, 0, 0, -1)) - 86400)
        self.assertEqual(pack_time(now, 0, "10:30:15"),
                         time.mktime((2026, 3, 15, 10, 30, 15, 0, 0, -1)))
        for bad in ("10:30:15:1", "ten", "10:", ""):
            if bad:
                with self.assertRaises(UsageError):
                    pack_time(now, 0, bad)
        code, _, err = run(pack_main, "127.0.0.1:1", "-t", "1:2:3:4")
        self.assertEqual(code, 2)
        self.assertIn("invalid time '1:2:3:4'", err)

    def test_unix_sockets(self):
        server = self.server(unix=True)
        code, _, err = run(pack_main, "-u", f"{server.target}:nosuch")
        self.assertEqual(code, 1)
        self.assertIn("'nosuch'", err)
        self.assertFalse(server.packed())
        code, _, err = run(pack_main, "-u", server.target)
        self.assertEqual(code, 0, err)
        self.assertTrue(server.packed())
        code, _, err = run(pack_main, "-u", f"{server.target}:1:2")
        self.assertEqual(code, 2)
        self.assertIn("invalid server specification", err)

    def test_legacy_options(self):
        server = self.server()
        unix = self.server("Other", unix=True)
        port = str(server.address[1])
        code, _, err = run(pack_main, "-h", "127.0.0.1", "-p", port, "-S", "nosuch")
        self.assertEqual(code, 1)
        self.assertIn("'nosuch'", err)
        code, _, err = run(pack_main, "-h", "127.0.0.1")
        self.assertEqual(code, 2)
        self.assertIn("-h HOST needs -p PORT", err)
        code, _, err = run(pack_main, "-h", "127.0.0.1", "-p", port, "-S", "1")
        self.assertEqual(code, 0, err)
        self.assertTrue(server.packed())
        code, _, err = run(pack_main, "-U", unix.target, "-S", "1")
        self.assertEqual(code, 0, err)
        self.assertTrue(unix.packed())
        # -p alone: this machine's name, as the reference does.
        options = _pack_parser().parse_args(["-p", "8100", "-S", "main"])
        self.assertEqual(_servers(options, ClientSettings()),
                         [((socket.gethostname(), 8100), "main")])

    def test_several_servers(self):
        first, second = self.server("First"), self.server("Second")
        unix = self.server("Third", unix=True)
        down = f"127.0.0.1:{free_port()}"
        # One cannot be reached: the others are packed all the same, exit 1.
        code, _, err = run(pack_main, first.target, down, f"{second.target}:1",
                           "-u", unix.target)
        self.assertEqual(code, 1)
        self.assertIn(f"at {down}: connection refused", err)
        self.assertIn("1 of 4 storages not packed", err)
        self.assertTrue(first.packed() and second.packed() and unix.packed())
        code, _, err = run(pack_main, first.target, second.target, "-u", unix.target)
        self.assertEqual((code, err), (0, ""))

    def test_usage(self):
        code, _, err = run(pack_main)
        self.assertEqual(code, 2)
        self.assertIn("usage: zeopack", err)
        code, _, err = run(pack_main, "-d", "3")
        self.assertEqual(code, 2)
        self.assertIn("no server given", err)
        code, _, err = run(pack_main, "a:1:b:c")
        self.assertEqual(code, 2)
        self.assertIn("invalid server specification", err)

    def test_targets(self):
        self.assertEqual(parse_target("db.example.com:8100"), (("db.example.com", 8100), "1"))
        self.assertEqual(parse_target("db:8100:main"), (("db", 8100), "main"))
        self.assertEqual(parse_target(":8100"), (("127.0.0.1", 8100), "1"))
        self.assertEqual(parse_target("8100"), (("127.0.0.1", 8100), "1"))
        self.assertEqual(parse_target("[::1]:8100:main"), (("::1", 8100), "main"))
        self.assertEqual(parse_target("/var/zeo.sock:main"), ("/var/zeo.sock", "main"))
        self.assertEqual(parse_target("/var/zeo.sock"), ("/var/zeo.sock", "1"))


if __name__ == "__main__":
    unittest.main()
