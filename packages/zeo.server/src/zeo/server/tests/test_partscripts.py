"""The recipe's zeopack and status scripts, against a real server."""

import shutil
import tempfile
import unittest

import zeo.server
from zeo.server.partscripts import status, zeopack
from zeo.server.tests.support import run
from zeo.server.tests.support import TLSServer


class PartScriptTests(unittest.TestCase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-partscripts-")
        self.address, self.stop = zeo.server.server(path=f"{self.directory}/Data.fs")
        self.target = f"127.0.0.1:{self.address[1]}"

    def tearDown(self):
        self.stop()
        shutil.rmtree(self.directory)

    def test_plone_recipe_zeoserver_flags(self):
        # -S names the storage instead of the part's; -D the days.
        code, _, err = run(lambda argv: zeopack(self.target, "1", "1", argv),
                           "-S", "nosuch", "-D", "0")
        self.assertEqual(code, 1)
        self.assertIn("storage 'nosuch'", err)
        code, _, err = run(lambda argv: zeopack(self.target, "nosuch", "1", argv),
                           "-S1", "-B", "/some/blobs")
        self.assertEqual(code, 0, err)
        self.assertIn("-B is not needed", err)
        code, _, err = run(lambda argv: zeopack(self.target, "1", "1", argv), "-D")
        self.assertEqual(code, 2)
        self.assertIn("-D needs a value", err)

    def test_status(self):
        code, out, _ = run(lambda argv: status(self.target, argv), "--json")
        self.assertEqual(code, 1)     # an empty storage
        self.assertIn('"connections"', out)

    def test_other_options_pass_through(self):
        code, out, _ = run(lambda argv: status(self.target, argv), "-m", "--ssl")
        self.assertEqual(code, 2)
        self.assertIn("TLS handshake failed", out)
        code, _, err = run(lambda argv: zeopack(self.target, "1", "1", argv),
                           "-D", "0", "-t", "00:00")
        self.assertEqual(code, 0, err)


class PartScriptsOverTLSTests(TLSServer):
    """*tls*, the part's client TLS options, come before the command line."""

    def test_status_and_pack_with_the_part_s_tls_options(self):
        code, out, err = run(lambda argv: status(self.target, argv, tls=self.tls()), "-m")
        self.assertEqual(code, 1, out + err)     # a new, empty storage: WARNING
        self.assertIn("Empty storage", out)
        code, _, err = run(lambda argv: zeopack(self.target, "1", "0", argv,
                                                tls=self.tls()))
        self.assertEqual(code, 0, err)

    def test_the_command_line_overrides_them(self):
        code, out, err = run(lambda argv: status(self.target, argv, tls=self.tls()),
                             "--ssl-server-hostname", "elsewhere", "--timeout", "5")
        self.assertEqual(code, 2, out + err)
        self.assertIn("elsewhere", out)


if __name__ == "__main__":
    unittest.main()
