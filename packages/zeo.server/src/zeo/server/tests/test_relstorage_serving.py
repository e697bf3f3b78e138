"""RelStorage on a real PostgreSQL, directly and served by our runzeo.

The database comes from `zeo.server.tests.postgres.POSTGRES_LAYER`; every
test has a database of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest

import transaction
import ZODB
from persistent.mapping import PersistentMapping
from ZODB.utils import p64, u64, z64

import zeo.client
from zeo.server.testing import free_port
from zeo.server.tests.postgres import (
    POSTGRES_LAYER, create_root, increment_concurrently, open_relstorage,
    relstorage_section)
from zeo.server.tests.rawclient import ServerError, connect_when_ready
from zeo.server.tests.support import CHECKOUT, ServerProcess

__all__ = ["BuildoutRunzeoTests", "IncrementConcurrentlyTests", "RelStorageTests",
           "ServedRelStorageTests"]


class RelStorageTests(unittest.TestCase):
    layer = POSTGRES_LAYER

    def test_history_preserving_relstorage_commits_and_reads_back(self):
        dsn = POSTGRES_LAYER.new_database()
        db = ZODB.DB(open_relstorage(dsn, keep_history=True))
        try:
            with db.transaction() as connection:
                connection.root.answer = 42
        finally:
            db.close()
        storage = open_relstorage(dsn, keep_history=True)
        db = ZODB.DB(storage)
        try:
            with db.transaction() as connection:
                self.assertEqual(connection.root.answer, 42)
            self.assertTrue(storage.supportsUndo())
            # The root's creation and the change to it.
            self.assertEqual(len(storage.history(z64, size=10)), 2)
        finally:
            db.close()


class ServedRelStorageTests(unittest.TestCase):
    layer = POSTGRES_LAYER

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-relstorage-")
        self.dsn = POSTGRES_LAYER.new_database()
        create_root(self.dsn)
        self.server = ServerProcess(self.directory, storage=relstorage_section(self.dsn))

    def tearDown(self):
        transaction.abort()
        self.server.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def test_runzeo_serves_relstorage_to_a_zeo_client(self):
        db = zeo.client.DB(self.server.address)
        try:
            with db.transaction() as connection:
                connection.root.answer = 42
        finally:
            db.close()
        db = zeo.client.DB(self.server.address)
        try:
            with db.transaction() as connection:
                self.assertEqual(connection.root.answer, 42)
        finally:
            db.close()
        # RelStorage's deprecated fshelper is not used (it warned on every
        # start of a server).
        self.assertNotIn("fshelper is deprecated", self.server.log_text())
        # It is in PostgreSQL: RelStorage opened directly reads it.
        db = ZODB.DB(open_relstorage(self.dsn))
        try:
            with db.transaction() as connection:
                self.assertEqual(connection.root.answer, 42)
        finally:
            db.close()


    def test_a_tid_beyond_maxtid_harms_no_later_load(self):
        # PostgreSQL keeps tids as signed 64-bit integers: such a tid
        # failed the query and left RelStorage's load connection failing
        # every later load of every client ("InFailedSqlTransaction"). The
        # server reads it as maxtid, as it means the same to any storage.
        client = connect_when_ready(self.server.address)
        self.addCleanup(client.close)
        maxtid = b"\x7f" + b"\xff" * 7
        current = tuple(client.call("loadBefore", z64, maxtid))
        self.assertEqual(tuple(client.call("loadBefore", z64, b"\xff" * 8)), current)
        with self.assertRaises(ServerError) as caught:
            client.call("loadSerial", z64, b"\xff" * 8)
        self.assertIn("POSKeyError", str(caught.exception))
        client.call("getInvalidations", b"\x80" + b"\0" * 7)
        other = connect_when_ready(self.server.address)
        self.addCleanup(other.close)
        self.assertEqual(tuple(other.call("loadBefore", z64, maxtid)), current)

    def test_slow_calls_and_loads_never_share_a_database_cursor(self):
        # history (run in a worker thread) and loadBefore (on the loop)
        # used RelStorage's one load cursor at once: hundreds of calls a
        # second failed with "no results to fetch", and loads read the
        # other call's rows (None: "no revision before"). A worker thread is
        # lent an instance of its own.
        db = zeo.client.DB(self.server.address)
        with db.transaction() as connection:
            for i in range(10):
                connection.root()[i] = PersistentMapping({"pad": "x" * (50 * i)})
        with db.transaction() as connection:
            oids = [connection.root()[i]._p_oid for i in range(10)]
        db.close()
        reader = connect_when_ready(self.server.address)
        self.addCleanup(reader.close)
        slow = connect_when_ready(self.server.address)
        self.addCleanup(slow.close)
        # Before the next tid: RelStorage reads it from the database.
        before = p64(u64(reader.call("lastTransaction")) + 1)
        expected = {oid: tuple(reader.call("loadBefore", oid, before)) for oid in oids}
        stop = time.monotonic() + 1.5
        problems = []

        def histories():
            n = 0
            while time.monotonic() < stop:
                try:
                    slow.call("history", oids[n % 10], 5)
                except ServerError as error:
                    problems.append(f"history: {error}")
                n += 1
        thread = threading.Thread(target=histories)
        thread.start()
        loads = 0
        try:
            while time.monotonic() < stop:
                oid = oids[loads % 10]
                try:
                    got = reader.call("loadBefore", oid, before)
                    if got is None or tuple(got) != expected[oid]:
                        problems.append(f"loadBefore of {u64(oid)}: {got!r:.60}")
                except ServerError as error:
                    problems.append(f"loadBefore: {error}")
                loads += 1
        finally:
            thread.join()
        self.assertGreater(loads, 100)
        self.assertEqual(problems[:3], [])


class FreshRelStorageTests(unittest.TestCase):
    layer = POSTGRES_LAYER

    def test_a_client_creates_the_root_of_a_new_database(self):
        # RelStorage raises its own POSKeyError subclass for the missing
        # root; the client used to get a RemoteError and ZODB never made
        # the root (zeo.server.client_errors).
        directory = tempfile.mkdtemp(prefix="zeo-relstorage-")
        self.addCleanup(shutil.rmtree, directory, True)
        server = ServerProcess(directory, storage=relstorage_section(POSTGRES_LAYER.new_database()))
        self.addCleanup(server.stop)
        db = zeo.client.DB(server.address)
        self.addCleanup(db.close)
        with db.transaction() as connection:
            connection.root.answer = 42
        with db.transaction() as connection:
            self.assertEqual(connection.root.answer, 42)


class ContendedRelStorageTests(unittest.TestCase):
    layer = POSTGRES_LAYER

    def test_every_increment_lands(self):
        # RelStorage's CacheConsistencyError (a TransientError) reached the
        # clients as a RemoteError they did not retry: about a third of the
        # commits failed. As a ConflictError it is retried.
        directory = tempfile.mkdtemp(prefix="zeo-relstorage-")
        self.addCleanup(shutil.rmtree, directory, True)
        server = ServerProcess(directory, storage=relstorage_section(POSTGRES_LAYER.new_database()))
        self.addCleanup(server.stop)
        result = increment_concurrently(server.address)
        self.assertEqual(result["errors"], [])
        self.assertEqual((result["landed"], result["final"]), (100, 100))


class IncrementConcurrentlyTests(unittest.TestCase):
    """The contention helper, on a FileStorage server: every commit lands."""

    def test_every_increment_lands_on_a_file_storage(self):
        directory = tempfile.mkdtemp(prefix="zeo-increments-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        server = ServerProcess(directory)
        try:
            result = increment_concurrently(server.address, clients=4, increments=25)
        finally:
            server.stop()
        self.assertEqual(result["errors"], [])
        self.assertEqual((result["landed"], result["final"]), (100, 100))


@unittest.skipIf(CHECKOUT is None or not (CHECKOUT / "bin" / "runzeo").exists(),
                 "no buildout scripts")
class BuildoutRunzeoTests(unittest.TestCase):
    """The buildout's ``bin/runzeo`` has RelStorage on its path."""

    layer = POSTGRES_LAYER

    def test_bin_runzeo_serves_relstorage(self):
        directory = tempfile.mkdtemp(prefix="zeo-relstorage-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        dsn = POSTGRES_LAYER.new_database()
        create_root(dsn)
        address = ("127.0.0.1", free_port())
        path = os.path.join(directory, "zeo.conf")
        with open(path, "w") as f:
            f.write("<zeo>\n  address %s:%d\n</zeo>\n" % address)
            f.write(relstorage_section(dsn))
        with open(os.path.join(directory, "runzeo.log"), "wb") as log:
            process = subprocess.Popen([str(CHECKOUT / "bin" / "runzeo"), "-C", path],
                                       stdout=subprocess.DEVNULL, stderr=log, cwd=directory)
        try:
            connect_when_ready(address, timeout=60).close()
            db = zeo.client.DB(address)
            try:
                with db.transaction() as connection:
                    connection.root.answer = 42
                with db.transaction() as connection:
                    self.assertEqual(connection.root.answer, 42)
            finally:
                db.close()
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)
        self.assertEqual(process.returncode, 0)
