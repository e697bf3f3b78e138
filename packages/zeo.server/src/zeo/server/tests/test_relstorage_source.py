"""`PostgresCommitSource` on a real PostgreSQL, in this process.

The database comes from `zeo.server.tests.postgres.POSTGRES_LAYER`; every
test has a database of its own. Two real runzeo fronts over one database
are in ``test_relstorage_fronts``.
"""

from __future__ import annotations

import asyncio
import time
import unittest

import transaction
import ZODB
from ZODB.utils import z64

from zeo.server.relstorage_source import (
    PostgresCommitSource, install_trigger, source_for_storage)
from zeo.server.tests.postgres import POSTGRES_LAYER, create_root, open_relstorage

__all__ = ["PostgresCommitSourceTests", "WatchingTests"]


def commit(dsn: str, keep_history: bool = True, **values) -> bytes:
    """Commit *values* into the root through RelStorage directly (another
    front, as far as the source can tell); the tid."""
    storage = open_relstorage(dsn, keep_history=keep_history)
    db = ZODB.DB(storage)
    try:
        manager = transaction.TransactionManager()
        connection = db.open(manager)
        with manager:
            connection.root().update(values)
        connection.close()
        return storage.lastTransaction()
    finally:
        db.close()


class PostgresCommitSourceTests(unittest.TestCase):
    layer = POSTGRES_LAYER

    def source(self, dsn, **options):
        source = PostgresCommitSource(dsn, **options)
        self.addCleanup(source.stop)
        return source

    def test_commits_since_and_recent_history_preserving(self):
        dsn = POSTGRES_LAYER.new_database()
        create_root(dsn)
        first = commit(dsn, a=1)
        second = commit(dsn, b=2)
        source = self.source(dsn, notify=False)
        commits = source.commits_since(z64)
        self.assertEqual(len(commits), 3)   # the root's creation and two more
        self.assertEqual([tid for tid, _ in commits[1:]], [first, second])
        self.assertEqual(commits[-1][1], (z64,))
        self.assertEqual(sorted(commits), commits)
        self.assertEqual(source.commits_since(first), [(second, (z64,))])
        self.assertEqual(source.commits_since(second), [])
        self.assertEqual(source.recent(2), commits[1:])
        self.assertEqual(source.recent(100), commits)
        self.assertEqual(source.commits_since(b"\xff" * 8), [])
        source.stop()   # and it does not connect again
        self.assertEqual((source.commits_since(z64), source.recent(2)), ([], []))
        self.assertIsNone(source._connection)

    def test_history_free(self):
        dsn = POSTGRES_LAYER.new_database()
        create_root(dsn, keep_history=False)
        before = commit(dsn, keep_history=False, a=1)
        tid = commit(dsn, keep_history=False, a=2)
        source = self.source(dsn, keep_history=False, notify=False)
        # Only each object's newest revision: the root, at the newest tid.
        self.assertEqual(source.commits_since(z64), [(tid, (z64,))])
        self.assertEqual(source.commits_since(before), [(tid, (z64,))])

    def test_the_trigger_is_installed_once(self):
        dsn = POSTGRES_LAYER.new_database()
        create_root(dsn)
        connection = POSTGRES_LAYER.connect(dsn)
        try:
            self.assertTrue(install_trigger(connection, True))
            self.assertFalse(install_trigger(connection, True))
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_trigger"
                               " WHERE tgname = 'zeo_notify_commit'")
                self.assertEqual(cursor.fetchone()[0], 1)
        finally:
            connection.close()

    def test_source_for_storage_reads_the_storages_own_options(self):
        dsn = POSTGRES_LAYER.new_database()
        storage = open_relstorage(dsn, keep_history=False)
        try:
            source = source_for_storage(storage, notify=False, poll_interval=0.5)
        finally:
            storage.close()
        self.assertEqual((source.dsn, source.keep_history, source.notify, source.poll_interval),
                         (dsn, False, False, 0.5))
        with self.assertRaisesRegex(ValueError, "RelStorage on PostgreSQL"):
            source_for_storage(ZODB.DB(None).storage)


class WatchingTests(unittest.TestCase):
    """Started on a loop, the source reports commits made elsewhere."""

    layer = POSTGRES_LAYER

    def watch(self, source, dsn, keep_history=True, commits=3, timeout=10.0):
        """Start *source* on a new loop, make *commits* commits in a thread,
        wait for the source to report each; the reported tids, and those
        made."""
        reported = []

        async def main():
            loop = asyncio.get_running_loop()
            source.start(lambda tid, oids: reported.append((tid, oids)), loop.call_later)
            try:
                made = []
                for n in range(commits):
                    tid = await loop.run_in_executor(
                        None, lambda: commit(dsn, keep_history, n=n))
                    made.append(tid)
                    deadline = time.monotonic() + timeout
                    while not any(t == tid for t, _ in reported):
                        self.assertLess(time.monotonic(), deadline,
                                        f"commit {tid.hex()} was not reported")
                        await asyncio.sleep(0.005)
                return made
            finally:
                source.stop()

        made = asyncio.run(main())
        return [tid for tid, _ in reported], made

    def test_notifications_report_without_waiting_for_the_poll(self):
        dsn = POSTGRES_LAYER.new_database()
        create_root(dsn)
        # A poll so slow that only a notification can report in time.
        source = PostgresCommitSource(dsn, poll_interval=600)
        reported, made = self.watch(source, dsn)
        self.assertEqual(reported, made)
        self.assertGreaterEqual(source.notifications, 3)

    def test_a_notification_read_by_the_servers_query_is_not_lost(self):
        # The server's own commit asks commits_since on the loop; the
        # query reads the notifications already in the socket, which then
        # never wakes the loop for them: they must still cause a look.
        dsn = POSTGRES_LAYER.new_database()
        create_root(dsn)
        source = PostgresCommitSource(dsn, poll_interval=600)
        before = source.commits_since(z64)[-1][0]
        reported = []

        async def main():
            loop = asyncio.get_running_loop()
            source.start(lambda tid, oids: reported.append(tid), loop.call_later)
            try:
                await asyncio.sleep(0.05)
                looks, notifications = source.looks, source.notifications
                # Committed while the loop waits: it cannot see the
                # notification arrive before the query reads it.
                tid = commit(dsn, n=1)
                time.sleep(0.2)
                self.assertEqual(source.commits_since(before), [(tid, (z64,))])
                deadline = time.monotonic() + 5
                while source.notifications == notifications:
                    self.assertLess(time.monotonic(), deadline)
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.05)
                self.assertGreaterEqual(source.looks, looks + 2)
            finally:
                source.stop()

        asyncio.run(main())
        self.assertEqual(reported, [])   # the server got it from commits_since

    def test_history_free_notifications(self):
        dsn = POSTGRES_LAYER.new_database()
        create_root(dsn, keep_history=False)
        source = PostgresCommitSource(dsn, keep_history=False, poll_interval=600)
        reported, made = self.watch(source, dsn, keep_history=False)
        self.assertEqual(reported, made)

    def test_polling_alone(self):
        dsn = POSTGRES_LAYER.new_database()
        create_root(dsn)
        source = PostgresCommitSource(dsn, notify=False, poll_interval=0.05)
        reported, made = self.watch(source, dsn)
        self.assertEqual(reported, made)
        self.assertEqual(source.notifications, 0)
        connection = POSTGRES_LAYER.connect(dsn)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_trigger"
                               " WHERE tgname = 'zeo_notify_commit'")
                self.assertEqual(cursor.fetchone()[0], 0)   # nothing installed
        finally:
            connection.close()

    def test_without_the_right_to_install_the_trigger_it_polls(self):
        dsn = POSTGRES_LAYER.new_database()
        create_root(dsn)
        admin = POSTGRES_LAYER.connect(dsn)
        try:
            with admin.cursor() as cursor:
                cursor.execute("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE"
                               " rolname = 'reader') THEN CREATE ROLE reader LOGIN; END IF;"
                               " END $$")
                cursor.execute('GRANT SELECT ON object_state, "transaction" TO reader')
        finally:
            admin.close()
        source = PostgresCommitSource(dsn.replace("user=postgres", "user=reader"),
                                      poll_interval=0.05)
        with self.assertLogs("zeo.server.relstorage_source", "ERROR") as logged:
            reported, made = self.watch(source, dsn, commits=2)
        self.assertIn("could not install the commit trigger", logged.output[0])
        self.assertEqual(reported, made)
        self.assertEqual(source.notifications, 0)

    def test_an_unreachable_database_is_tried_at_doubling_intervals(self):
        from zeo.server.testing import free_port
        source = PostgresCommitSource(
            f"host=127.0.0.1 port={free_port()} user=postgres dbname=none",
            poll_interval=0.01)
        source._seen = 0   # as if seeded

        async def main():
            loop = asyncio.get_running_loop()
            source.start(lambda tid, oids: None, loop.call_later)
            try:
                await asyncio.sleep(1.0)
            finally:
                source.stop()

        with self.assertLogs("zeo.server.relstorage_source", "ERROR"):
            asyncio.run(main())
        # 0.02 + 0.04 + ... : about 6 attempts in a second, not 100 or 200.
        self.assertLess(source.connects, 15)
        self.assertGreaterEqual(source.connects, 2)

    def test_a_dropped_connection_is_made_again(self):
        dsn = POSTGRES_LAYER.new_database()
        create_root(dsn)
        source = PostgresCommitSource(dsn, poll_interval=0.1)
        reported = []

        async def main():
            loop = asyncio.get_running_loop()
            source.start(lambda tid, oids: reported.append(tid), loop.call_later)
            try:
                admin = POSTGRES_LAYER.connect(dsn)
                try:
                    with admin.cursor() as cursor:
                        cursor.execute("SELECT pg_terminate_backend(pid) FROM"
                                       " pg_stat_activity WHERE application_name ="
                                       " 'zeo.server commit source'")
                finally:
                    admin.close()
                tid = await loop.run_in_executor(None, lambda: commit(dsn, n=1))
                deadline = time.monotonic() + 10
                while tid not in reported:
                    self.assertLess(time.monotonic(), deadline)
                    await asyncio.sleep(0.01)
                return tid
            finally:
                source.stop()

        with self.assertLogs("zeo.server.relstorage_source", "ERROR"):
            tid = asyncio.run(main())
        self.assertEqual(reported, [tid])
