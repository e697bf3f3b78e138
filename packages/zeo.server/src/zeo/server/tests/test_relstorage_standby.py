"""Read-only fronts on a PostgreSQL hot standby (zeo.server.relstorage_standby).

Front A serves the primary of `STANDBY_LAYER`; front S serves the same
database on the standby, with RelStorage ``read-only true`` and
``create-schema false``, and ``commit-source-primary-dsn`` naming the
primary. Replay on the standby is paused (``pg_wal_replay_pause()``) to
make it lag on purpose.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import unittest

import psycopg2
import ZODB
from ZODB.POSException import StorageError

import zeo.client
from zeo.server.tests.postgres import (
    POSTGRES_LAYER, STANDBY_LAYER, create_root, relstorage_section)
from zeo.server.tests.rawclient import RawClient, ServerError
from zeo.server.tests.relstorage_support import read, wait_for, write
from zeo.server.tests.support import ServerProcess

__all__ = ["CatchUpTests", "StandbyConfigurationTests", "StandbyFrontTests"]

#: The bound on "the standby front's client sees it" (not a speed assertion).
WAIT = 10.0


def standby_dsn(dsn: str) -> str:
    """The standby's DSN for the primary's database *dsn*."""
    assert STANDBY_LAYER.cluster is not None
    return STANDBY_LAYER.cluster.dsn(dsn.rsplit("dbname=", 1)[1])


def newest_tid(dsn: str) -> int:
    connection = psycopg2.connect(dsn)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT max(tid) FROM object_state")
            return cursor.fetchone()[0] or 0
    finally:
        connection.close()


def wait_replayed(dsn: str) -> None:
    """Until the standby has replayed the primary's newest commit of *dsn*."""
    target = newest_tid(dsn)

    def replayed() -> bool:
        try:
            return newest_tid(standby_dsn(dsn)) >= target
        except psycopg2.Error:   # the database or schema is not there yet
            return False

    wait_for(replayed, "the standby to replay the primary", WAIT)


def registered_tid(address):
    """The tid a read-only registration with *address* is answered."""
    client = RawClient(address, read_only=True)
    client.close()
    return client.last_tid


class StandbyFrontTests(unittest.TestCase):
    layer = STANDBY_LAYER

    def setUp(self) -> None:
        self.dsn = POSTGRES_LAYER.new_database()
        create_root(self.dsn)
        wait_replayed(self.dsn)

    def front(self, dsn: str, read_only: bool = False, **zeo_options: str) -> ServerProcess:
        directory = tempfile.mkdtemp(prefix="zeo-standby-")
        self.addCleanup(shutil.rmtree, directory, True)
        storage = relstorage_section(dsn, read_only="true", create_schema="false") \
            if read_only else relstorage_section(dsn)
        options = {"commit-source": "postgresql", **zeo_options}
        server = ServerProcess(directory, zeo_options=options, storage=storage,
                               read_only=read_only)
        self.addCleanup(server.stop)
        return server

    def standby_front(self, **zeo_options: str) -> ServerProcess:
        options = {"commit-source-poll-interval": "0.05",
                   "commit-source-primary-dsn": self.dsn, **zeo_options}
        return self.front(standby_dsn(self.dsn), read_only=True, **options)

    def pause_replay(self) -> None:
        connection = STANDBY_LAYER.connect()
        self.addCleanup(connection.close)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_wal_replay_pause()")
        self.addCleanup(self.resume_replay)

    def resume_replay(self) -> None:
        connection = STANDBY_LAYER.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_wal_replay_resume()")
        finally:
            connection.close()

    def client_db(self, address, **options) -> ZODB.DB:
        db = ZODB.DB(zeo.client.ClientStorage(address, wait_timeout=30, **options))
        self.addCleanup(db.close)
        return db

    def test_a_read_only_client_of_the_standby_sees_a_commit_on_the_primary(self):
        primary, standby = self.front(self.dsn), self.standby_front()
        writer = self.client_db(primary.address)
        reader = self.client_db(standby.address, read_only=True)
        self.assertIsNone(read(reader, "n"))   # the root is now cached
        for n in range(3):
            tid = write(writer, n=n)
            wait_for(lambda: reader.storage.lastTransaction() >= tid,
                     f"the standby front's client to hear of {tid.hex()}", WAIT)
            self.assertEqual(read(reader, "n"), n)
        # It cannot write, and no notification could be listened for there.
        with self.assertRaisesRegex(ServerError, "ReadOnlyError"):
            RawClient(standby.address, read_only=False)
        self.assertEqual(standby.stop(), 0)
        log = standby.log_text()
        self.assertIn("hot standby: no notifications there", log)
        self.assertNotIn("Traceback", log)

    def test_a_client_ahead_of_the_standby_waits_until_it_caught_up(self):
        primary, standby = self.front(self.dsn), self.standby_front()
        self.pause_replay()
        tid = write(self.client_db(primary.address), n=1)   # the client has seen tid
        answers: list = []
        thread = threading.Thread(
            target=lambda: answers.append(RawClient(standby.address, read_only=True)))
        thread.start()
        thread.join(0.5)
        self.assertEqual(answers, [])   # never answered with an older state
        self.resume_replay()
        thread.join(WAIT)
        self.assertEqual(len(answers), 1)
        client = answers[0]
        self.addCleanup(client.close)
        self.assertGreaterEqual(client.last_tid, tid)
        self.assertEqual(client.call("lastTransaction"), client.last_tid)

    def test_a_client_moving_from_the_primary_front_is_never_served_older_state(self):
        primary = self.front(self.dsn)
        standby = self.standby_front(**{"commit-source-catch-up-timeout": "0.5"})
        with self.assertLogs("zeo.client", "INFO") as logs:
            db = self.client_db([primary.address, standby.address], read_only_fallback=True)
            wait_for(lambda: db.storage.is_connected() and not db.storage.isReadOnly(),
                     "the client to use the primary front", WAIT)
            self.pause_replay()
            tid = write(db, n=1)   # the client has seen tid; the standby has not
            primary.stop()
            time.sleep(1.5)   # the client tries the standby front meanwhile
            self.assertFalse(db.storage.is_connected())
            self.resume_replay()
            wait_for(lambda: db.storage.is_connected(),
                     "the client to fall back to the standby front", WAIT)
            self.assertTrue(db.storage.isReadOnly())
            self.assertGreaterEqual(db.storage.lastTransaction(), tid)
            self.assertEqual(read(db, "n"), 1)
        text = "\n".join(logs.output)
        self.assertNotIn("behind this client's cache", text)
        self.assertIn("behind the primary", standby.log_text())

    def test_a_standby_that_does_not_catch_up_in_time_refuses_and_closes(self):
        primary = self.front(self.dsn)
        standby = self.standby_front(**{"commit-source-catch-up-timeout": "0.5"})
        up_to_date = RawClient(standby.address, read_only=True)   # no wait: caught up
        self.addCleanup(up_to_date.close)
        self.pause_replay()
        tid = write(self.client_db(primary.address), n=2)
        began = time.monotonic()
        with self.assertRaisesRegex(ServerError, "behind the primary"):
            RawClient(standby.address, read_only=True)
        self.assertLess(time.monotonic() - began, WAIT)
        self.assertLess(up_to_date.call("lastTransaction"), tid)
        self.resume_replay()
        wait_for(lambda: registered_tid(standby.address) >= tid,
                 "a registration once the standby caught up", WAIT)

    def test_without_a_reachable_primary_registering_does_not_wait(self):
        dead = "host=127.0.0.1 port=1 user=postgres dbname=nothing"
        standby = self.standby_front(**{"commit-source-primary-dsn": dead})
        client = RawClient(standby.address, read_only=True)
        self.addCleanup(client.close)
        self.assertEqual(client.last_tid.hex(), f"{newest_tid(self.dsn):016x}")
        standby.stop()
        self.assertIn("could not ask the primary", standby.log_text())


class StandbyConfigurationTests(unittest.TestCase):

    def test_keys_and_defaults(self):
        from zeo.server import zconfig
        from zeo.server.config import ServerConfig
        directory = tempfile.mkdtemp(prefix="zeo-standby-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = f"{directory}/zeo.conf"
        with open(path, "w") as f:
            f.write("<zeo>\n  address 127.0.0.1:0\n</zeo>\n"
                    f"<filestorage 1>\n  path {directory}/Data.fs\n</filestorage>\n")
        config = zconfig.load(path).config
        self.assertEqual((config.commit_source_primary_dsn,
                          config.commit_source_catch_up_timeout), (None, 10.0))
        config = zconfig.load(path, [
            "zeo/commit-source-primary-dsn=host=db1 dbname=zodb",
            "zeo/commit-source-catch-up-timeout=2.5"]).config
        self.assertEqual((config.commit_source_primary_dsn,
                          config.commit_source_catch_up_timeout),
                         ("host=db1 dbname=zodb", 2.5))
        with self.assertRaisesRegex(ValueError, "commit_source_catch_up_timeout"):
            ServerConfig(commit_source_catch_up_timeout=0)


class CatchUpTests(unittest.TestCase):
    """`catch_up` alone, with a stand-in primary and a manual clock-free loop."""

    def run_catch_up(self, target, looks_needed, timeout=10.0, step=0.0):
        from zeo.server.relstorage_standby import catch_up

        class Primary:
            def newest_tid(self):
                return target

        state = {"tid": 5, "looks": 0, "closed": 0}
        timers: list = []

        def look():
            state["looks"] += 1
            if state["looks"] >= looks_needed:
                state["tid"] = 9

        answer = catch_up(Primary(), look, lambda: state["tid"].to_bytes(8, "big"),
                          lambda delay, function: timers.append(function), timeout,
                          lambda: state.__setitem__("closed", state["closed"] + 1))
        for _ in range(100):
            if not timers:
                break
            time.sleep(step)
            timers.pop(0)()
        return answer, state

    def test_caught_up_answers_at_once(self):
        answer, state = self.run_catch_up(5, 1)
        self.assertEqual(answer, (5).to_bytes(8, "big"))
        self.assertEqual(state["looks"], 0)

    def test_primary_unknown_answers_at_once(self):
        answer, _ = self.run_catch_up(None, 1)
        self.assertEqual(answer, (5).to_bytes(8, "big"))

    def test_waits_for_the_primary_tid(self):
        answer, state = self.run_catch_up(9, 3)
        outcome: list = []
        answer.add_callback(lambda error, value: outcome.append((error, value)))
        self.assertEqual(outcome, [(None, (9).to_bytes(8, "big"))])
        self.assertEqual((state["looks"], state["closed"]), (3, 0))

    def test_refuses_and_closes_after_the_timeout(self):
        answer, state = self.run_catch_up(9, 10 ** 6, timeout=0.05, step=0.01)
        outcome: list = []
        answer.add_callback(lambda error, value: outcome.append((error, value)))
        self.assertEqual(len(outcome), 1)
        error, _ = outcome[0]
        self.assertIsInstance(error, StorageError)
        self.assertIn("behind the primary", str(error))
        self.assertEqual(state["closed"], 1)
