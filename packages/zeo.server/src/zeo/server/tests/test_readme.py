"""The README's quick start client runs, against a server like the README's.

The README's client connects to ``127.0.0.1:8100``, where ``bin/zeo fg``
serves (``test_layout`` runs that command). Here the same lines run against
a ``zeo.server.server()`` on a free port, so the test never touches the
developer's ``var/`` nor competes for port 8100.
"""

import configparser
import doctest
import os
import shutil
import tempfile
import unittest

import zeo.server
from zeo.protocol.tests.doctests import FLAGS
from zeo.server.tests.support import CHECKOUT

README_ADDRESS = "('127.0.0.1', 8100)"


@unittest.skipIf(CHECKOUT is None, "not in a checkout")
class ReadmeTests(unittest.TestCase):

    def setUp(self):
        self.text = (CHECKOUT / "README.rst").read_text()

    def test_the_client_connects_where_the_server_listens(self):
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(CHECKOUT / "buildout.cfg")
        self.assertEqual(parser["zeo"]["address"], "127.0.0.1:8100")
        self.assertIn("on 127.0.0.1:8100", " ".join(self.text.split()))
        self.assertIn(f"zeo.client.DB({README_ADDRESS})", self.text)

    def test_the_client_snippet_connects_commits_and_reads(self):
        directory = tempfile.mkdtemp(prefix="zeo-readme-")
        self.addCleanup(shutil.rmtree, directory)
        address, stop = zeo.server.server(path=os.path.join(directory, "Data.fs"),
                                          blob_dir=os.path.join(directory, "blobs"))
        self.addCleanup(stop)
        test = doctest.DocTestParser().get_doctest(
            self.text, {}, "README.rst", str(CHECKOUT / "README.rst"), 0)
        self.assertGreaterEqual(len(test.examples), 5)
        for example in test.examples:
            example.source = example.source.replace(README_ADDRESS, repr(address))
        runner = doctest.DocTestRunner(optionflags=FLAGS)
        runner.run(test, out=lambda text: self.fail(f"README.rst:\n{text}"))
        self.assertEqual(runner.failures, 0)
        self.assertTrue(any(repr(address) in example.source for example in test.examples))


if __name__ == "__main__":
    unittest.main()
