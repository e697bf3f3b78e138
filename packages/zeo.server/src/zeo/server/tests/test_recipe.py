"""The buildout recipe, in a real buildout outside the monorepo.

The outside buildout uses our packages as develop eggs and the monorepo's
eggs directory and pins, so it runs without the network (never through
find-links: that would make buildout scan the whole package index).
"""

import os
import shutil
import subprocess
import tempfile
import textwrap
import unittest

from zeo.server.tests.rawclient import connect_when_ready
from zeo.server.tests.test_layout import CHECKOUT
from zeo.server.tests.test_runzeo import free_port

Z64 = b"\0" * 8


@unittest.skipIf(CHECKOUT is None or not (CHECKOUT / "bin" / "buildout").exists(),
                 "needs the monorepo's buildout (python3 bootstrap.py)")
class RecipeTests(unittest.TestCase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-recipe-")
        self.port = free_port()

    def tearDown(self):
        script = os.path.join(self.directory, "bin", "myzeo")
        if os.path.exists(script):
            subprocess.run([script, "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.directory)

    def buildout(self, parts):
        config = os.path.join(self.directory, "buildout.cfg")
        with open(config, "w") as f:
            f.write(textwrap.dedent(f"""\
                [buildout]
                extends = {CHECKOUT}/versions.cfg
                develop =
                    {CHECKOUT}/packages/zeo.protocol
                    {CHECKOUT}/packages/zeo.server
                eggs-directory = {CHECKOUT}/eggs
                allow-picked-versions = false
                newest = false
                parts = {parts}

                [myzeo]
                recipe = zeo.server
                address = 127.0.0.1:{self.port}
                transaction-timeout = 20
                """))
        result = subprocess.run(
            [str(CHECKOUT / "bin" / "buildout"), "-N", "-c", config],
            cwd=self.directory, capture_output=True, text=True, timeout=600)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def control(self, action):
        return subprocess.run([os.path.join(self.directory, "bin", "myzeo"), action],
                              capture_output=True, text=True, timeout=120)

    def connect(self):
        return connect_when_ready(("127.0.0.1", self.port))

    def test_install_run_and_uninstall_keeping_the_data(self):
        self.buildout("myzeo")
        config = os.path.join(self.directory, "parts", "myzeo", "zeo.conf")
        with open(config) as f:
            text = f.read()
        self.assertIn(f"address 127.0.0.1:{self.port}", text)
        self.assertIn("transaction-timeout 20", text)

        started = self.control("start")
        self.assertIn("daemon process started", started.stdout, started.stderr)
        client = self.connect()
        oid = client.call("new_oids", 1)[0]
        client.commit(1, [(oid, Z64, b"kept")])
        client.close()
        self.assertIn("program running", self.control("status").stdout)
        self.assertIn("daemon process stopped", self.control("stop").stdout)

        data = os.path.join(self.directory, "var", "myzeo", "Data.fs")
        self.assertTrue(os.path.exists(data))
        self.buildout("")    # uninstall the part
        self.assertFalse(os.path.exists(os.path.join(self.directory, "parts", "myzeo")))
        self.assertFalse(os.path.exists(os.path.join(self.directory, "bin", "myzeo")))
        self.assertTrue(os.path.exists(data))


if __name__ == "__main__":
    unittest.main()
