"""``zeo.server.server()``: zeo_conf as the reference takes it, threads and
child processes, with real clients."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

import ZConfig

import zeo.client
import zeo.server
from zeo.server import adhoc
from zeo.server.config import ServerConfig
from zeo.server.tests.support import child_env


def refuses_connections(address, timeout=30.0):
    """True once nothing accepts connections at *address* (bounded wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(address, timeout=1).close()
        except OSError:
            return True
        time.sleep(0.05)
    return False


class ZeoConfTests(unittest.TestCase):
    """What a zeo_conf means: the keys and values of a configuration file."""

    def test_nothing_named_means_the_defaults(self):
        self.assertEqual(adhoc.zeo_settings(None), (ServerConfig(), ("127.0.0.1", 0)))
        self.assertEqual(adhoc.zeo_settings("<zeo>\n</zeo>\n", 8100),
                         (ServerConfig(), ("127.0.0.1", 8100)))
        self.assertEqual(adhoc.zeo_settings({}, ("::1", 0)), (ServerConfig(), ("::1", 0)))

    def test_a_section_text(self):
        config, address = adhoc.zeo_settings(textwrap.dedent("""\
            <zeo>
              address 127.0.0.1:8100
              transaction-timeout 5
              read-only true
              max-frame-size 8MB
            </zeo>
            """), 9999)
        self.assertEqual(address, ("127.0.0.1", 8100))   # the text wins over port
        self.assertEqual((config.transaction_timeout, config.read_only),
                         (5.0, True))
        self.assertEqual(config.limits.max_frame_size, 8 << 20)

    def test_a_text_without_tags_or_address(self):
        config, address = adhoc.zeo_settings("invalidation-queue-size 7\nmsgpack false", 8100)
        self.assertEqual(address, ("127.0.0.1", 8100))
        self.assertEqual((config.invalidation_queue_size, config.msgpack), (7, False))

    def test_a_dict_of_keys_as_the_reference_takes_it(self):
        config, address = adhoc.zeo_settings(
            {"transaction_timeout": 5, "read-only": True, "msgpack": False,
             "conflict_resolution_packages": ["BTrees", "mypackage"],
             "max_spool_size": "10MB", "invalidation_age": None}, 8100)
        self.assertEqual(address, ("127.0.0.1", 8100))
        self.assertEqual(config.transaction_timeout, 5.0)
        self.assertTrue(config.read_only)
        self.assertFalse(config.msgpack)
        self.assertEqual(config.conflict_resolution_packages, ("BTrees", "mypackage"))
        self.assertEqual(config.max_spool_size, 10 << 20)
        self.assertEqual(adhoc.zeo_settings({"address": ("::1", 9)})[1], ("::1", 9))
        self.assertEqual(adhoc.zeo_settings({"address": "127.0.0.1"})[1], ("127.0.0.1", 0))

    def test_misspelled_keys_and_bad_values_are_errors(self):
        # The reference silently ignores a dict key it does not know.
        with self.assertRaisesRegex(ZConfig.ConfigurationError, "transaction-timout"):
            adhoc.zeo_settings({"transaction_timout": 5})
        with self.assertRaises(ZConfig.ConfigurationError):
            adhoc.zeo_settings({"max_connections": "many"})
        with self.assertRaises(ValueError):
            adhoc.zeo_settings({"event_loop": "asyncio\n</zeo>"})
        with self.assertRaises(TypeError):
            adhoc.zeo_settings(42)


class ServerTests(unittest.TestCase):
    """Started and stopped by synchronous code; used by a zeo.client DB."""

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-adhoc-")
        self.path = os.path.join(self.directory, "Data.fs")

    def tearDown(self):
        shutil.rmtree(self.directory)

    def commit_and_read(self, address, value):
        db = zeo.client.DB(address, wait_timeout=30)
        try:
            with db.transaction() as connection:
                connection.root()["value"] = value
            with db.transaction() as connection:
                return connection.root()["value"]
        finally:
            db.close()

    def test_in_a_thread_with_a_zeo_conf_text(self):
        address, stop = zeo.server.server(
            path=self.path, zeo_conf="<zeo>\n  transaction-timeout 5\n</zeo>\n")
        try:
            self.assertEqual(address[0], "127.0.0.1")
            self.assertEqual(self.commit_and_read(address, "threaded"), "threaded")
        finally:
            stop()
        stop(5)   # a second call does nothing (ZEO.server's stop takes a timeout too)
        self.assertTrue(refuses_connections(address))

    def test_keyword_fields_win_over_the_zeo_conf(self):
        from zeo.server.tests.rawclient import RawClient, ServerError
        address, stop = zeo.server.server(zeo_conf={"read_only": False}, read_only=True)
        try:
            with self.assertRaisesRegex(ServerError, "ReadOnlyError"):
                RawClient(address)   # registers for writing
            RawClient(address, read_only=True).close()
        finally:
            stop()

    def test_a_taken_port_is_raised(self):
        address, stop = zeo.server.server()
        try:
            with self.assertRaises(OSError):
                zeo.server.server(port=address[1])
        finally:
            stop()

    def test_in_a_child_process(self):
        address, stop = zeo.server.server(
            path=self.path, threaded=False, zeo_conf={"transaction_timeout": 5})
        try:
            self.assertNotIn("zeo.server ad-hoc",
                             [thread.name for thread in __import__("threading").enumerate()])
            self.assertEqual(self.commit_and_read(address, "forked"), "forked")
        finally:
            stop()
        stop()
        self.assertTrue(refuses_connections(address))
        # The child closed the FileStorage: this process can open it.
        from ZODB.FileStorage import FileStorage
        storage = FileStorage(self.path, read_only=True)
        self.assertGreater(len(storage), 0)
        storage.close()

    def test_a_child_that_cannot_start_says_why(self):
        with self.assertRaisesRegex(RuntimeError, "not a known key name"):
            zeo.server.server(threaded=False, zeo_conf={"no_such_key": 1})
        with self.assertRaises(ValueError):
            zeo.server.server(threaded=False, storages={})

    def test_a_child_server_ends_with_its_parent(self):
        # The parent exits without calling stop: its server goes too.
        program = textwrap.dedent("""\
            import os, zeo.server
            address, stop = zeo.server.server(threaded=False)
            print(address[1], flush=True)
            os._exit(0)
            """)
        result = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
            env=child_env())
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(refuses_connections(("127.0.0.1", int(result.stdout))))


if __name__ == "__main__":
    unittest.main()
