"""The layers of zeo.server.testing, used as an application would."""

import os
import subprocess
import sys
import tempfile
import textwrap
import unittest
from typing import Any

from zeo.server.testing import SERVER_LAYER
from zeo.server.tests.rawclient import RawClient
from zeo.server.tests.support import child_env

Z64 = b"\0" * 8


class SampleApplicationTests(unittest.TestCase):
    """Each test sees an empty storage on the same address."""

    layer = SERVER_LAYER
    addresses: set[Any] = set()

    def check_fresh_storage_then_write(self):
        client = RawClient(SERVER_LAYER.address)
        try:
            self.assertEqual(client.last_tid, Z64)   # nothing committed yet
            oid = client.call("new_oids", 1)[0]
            client.commit(1, [(oid, Z64, b"left behind")])
        finally:
            client.close()
        self.addresses.add(SERVER_LAYER.address)

    def test_first(self):
        self.check_fresh_storage_then_write()

    def test_second(self):
        self.check_fresh_storage_then_write()

    def test_third_same_address(self):
        self.check_fresh_storage_then_write()
        self.assertEqual(len(self.addresses), 1)



class SampleDBTests(unittest.TestCase):
    """An application's tests on DB_LAYER: a zeo.client DB per test, and
    nothing left over from the previous test."""

    from zeo.server.testing import DB_LAYER as layer

    def test_write_then_read(self):
        db = self.layer.db
        with db.transaction() as connection:
            self.assertNotIn("answer", connection.root())
            connection.root.answer = 42
        with db.transaction() as connection:
            self.assertEqual(connection.root.answer, 42)

    def test_blobs_work(self):
        import ZODB.blob
        db = self.layer.db
        with db.transaction() as connection:
            connection.root.blob = ZODB.blob.Blob(b"blob data")
        with db.transaction() as connection, connection.root.blob.open() as f:
            self.assertEqual(f.read(), b"blob data")

    def test_zz_nothing_left_from_other_tests(self):
        with self.layer.db.transaction() as connection:
            self.assertEqual(list(connection.root()), [])


class WithoutClientTests(unittest.TestCase):
    """An outside suite using DB_LAYER where zeo.client is not installed."""

    def test_clear_message_and_nothing_left_behind(self):
        with tempfile.TemporaryDirectory(prefix="zeo-no-client-") as directory:
            package = os.path.join(directory, "app", "tests")
            temp = os.path.join(directory, "tmp")
            os.makedirs(package)
            os.mkdir(temp)
            for init in (os.path.dirname(package), package):
                open(os.path.join(init, "__init__.py"), "w").close()
            with open(os.path.join(package, "test_app.py"), "w") as f:
                f.write(textwrap.dedent("""\
                    import sys
                    import unittest
                    sys.modules["zeo.client"] = None   # not installed
                    from zeo.server.testing import DB_LAYER

                    class AppTests(unittest.TestCase):
                        layer = DB_LAYER

                        def test_it(self):
                            pass
                    """))
            env = child_env(directory,
                       TMPDIR=temp)
            run = subprocess.run(
                [sys.executable, "-m", "zope.testrunner", "--test-path", directory],
                env=env, capture_output=True, text=True, timeout=120)
            output = run.stdout + run.stderr
            self.assertNotEqual(run.returncode, 0, output)
            self.assertIn("install zeo.server[testing]", output)
            self.assertNotIn("ModuleNotFoundError", output)
            self.assertEqual(os.listdir(temp), [])


if __name__ == "__main__":
    unittest.main()
