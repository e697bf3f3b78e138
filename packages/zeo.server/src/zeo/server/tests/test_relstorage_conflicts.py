"""Conflicts resolved by fronts over RelStorage, for a committer whose
snapshot is older than the server's.

A ZEO client stores a record with the serial it loaded. RelStorage's vote
took "the state the committer started from" from the storage's current
snapshot (right for ZODB's Connection, which moves its snapshot with the
transaction), so when another commit had already reached the front's
snapshot the vote failed with ``CacheConsistencyError`` instead of
resolving (zeo.server.relstorage_conflicts). These probes make that
situation on purpose, with the storage API of a zeo.client, through one
front and through two (`StaleSerialTests`), and with RelStorage instances
directly, for each place the starting revision can come from
(`StartRevisionTests`).
"""

from __future__ import annotations

import shutil
import tempfile
import unittest
from typing import Any

import BTrees.Length
import psycopg2
import transaction
import ZODB
from ZODB.Connection import TransactionMetaData
from ZODB.POSException import ConflictError
from ZODB.serialize import ObjectWriter

import zeo.client
from zeo.server.relstorage_conflicts import fix_relstorage_conflict_resolution
from zeo.server.tests.postgres import (POSTGRES_LAYER, create_root, open_relstorage,
                                       relstorage_section)
from zeo.server.tests.relstorage_support import fronts, wait_for
from zeo.server.tests.support import ServerProcess

__all__ = ["StaleSerialTests", "StartRevisionTests", "length_record", "store_and_vote"]


def length_record(oid: bytes, value: int) -> bytes:
    """The record of a ``BTrees.Length.Length`` holding *value*."""
    length = BTrees.Length.Length(value)
    length._p_oid = oid
    return ObjectWriter().serialize(length)


def store_and_vote(storage: Any, oid: bytes, serial: bytes, data: bytes) -> tuple[Any, bytes]:
    """One transaction storing *data* over *serial*: tpc_vote's answer and
    the new tid."""
    txn = TransactionMetaData()
    storage.tpc_begin(txn)
    try:
        storage.store(oid, serial, data, "", txn)
        resolved = storage.tpc_vote(txn)
        tid = storage.tpc_finish(txn)
    except BaseException:
        storage.tpc_abort(txn)
        raise
    return resolved, tid


class StaleSerialTests(unittest.TestCase):
    """Client X stores over serial s1 after s2 was committed (and reached
    the front's snapshot): the server resolves the conflict from the
    revision s1 itself and commits the merged state."""

    layer = POSTGRES_LAYER

    def client(self, address: Any) -> Any:
        storage = zeo.client.ClientStorage(address, wait_timeout=30)
        self.addCleanup(storage.close)
        return storage

    def length_oid(self, address: Any, *, value: int) -> bytes:
        db = ZODB.DB(zeo.client.ClientStorage(address, wait_timeout=30))
        try:
            with db.transaction() as connection:
                connection.root()["length"] = length = BTrees.Length.Length(value)
            oid: bytes = length._p_oid
            return oid
        finally:
            db.close()

    def check_resolved(self, count: int) -> None:
        dsn = POSTGRES_LAYER.new_database()
        create_root(dsn)
        servers = fronts(self, count, dsn)
        front_x, front_y = servers[0], servers[-1]
        oid = self.length_oid(front_x.address, value=100)
        x, y = self.client(front_x.address), self.client(front_y.address)
        wait_for(lambda: y.lastTransaction() >= x.lastTransaction(), "Y to be up to date")
        data, s1 = x.load(oid)
        # Y adds 10 (s2); X hears of it, so X's front has moved past s1.
        _, s2 = store_and_vote(y, oid, y.load(oid)[1], length_record(oid, 110))
        wait_for(lambda: x.lastTransaction() >= s2, "X to hear of s2")
        self.assertEqual(x.load(oid)[1], s2)
        # X adds 5 to what it loaded at s1.
        resolved, s3 = store_and_vote(x, oid, s1, length_record(oid, 105))
        self.assertEqual(list(resolved or ()), [oid])
        self.assertGreater(s3, s2)
        direct = ZODB.DB(open_relstorage(dsn))
        self.addCleanup(direct.close)
        manager = transaction.TransactionManager()
        connection = direct.open(manager)
        self.addCleanup(connection.close)
        self.assertEqual(connection.root()["length"](), 115)
        for server in servers:
            self.assertEqual(server.stop(), 0)
            self.assertNotIn("Traceback", server.log_text())

    def test_one_front(self):
        self.check_resolved(1)

    def test_two_fronts(self):
        self.check_resolved(2)

    def test_an_unresolvable_conflict_is_still_a_conflict_error(self):
        dsn = POSTGRES_LAYER.new_database()
        create_root(dsn)
        (front,) = fronts(self, 1, dsn)
        x = self.client(front.address)
        db = ZODB.DB(zeo.client.ClientStorage(front.address, wait_timeout=30))
        self.addCleanup(db.close)
        with db.transaction() as connection:
            connection.root()["n"] = 1
        data, s1 = x.load(b"\0" * 8)
        with db.transaction() as connection:
            connection.root()["n"] = 2
        wait_for(lambda: x.lastTransaction() >= db.storage.lastTransaction(), "X to hear")
        with self.assertRaises(ConflictError):
            store_and_vote(x, b"\0" * 8, s1, data)

    def test_a_row_lock_timeout_reaches_the_client_as_a_conflict_error(self):
        # Another process holds the root's lock past RelStorage's
        # commit-lock-timeout: its UnableToLockRowsToModifyError (a
        # ConflictError of its own) reaches the client as one it retries.
        dsn = POSTGRES_LAYER.new_database()
        create_root(dsn)
        directory = tempfile.mkdtemp(prefix="zeo-front-")
        self.addCleanup(shutil.rmtree, directory, True)
        front = ServerProcess(directory, zeo_options={"commit-source": "postgresql"},
                              storage=relstorage_section(dsn, commit_lock_timeout="1"))
        self.addCleanup(front.stop)
        x = self.client(front.address)
        data, serial = x.load(b"\0" * 8)
        holder = psycopg2.connect(dsn)
        self.addCleanup(holder.close)
        with holder.cursor() as cursor:
            # What RelStorage's vote takes for each object it modifies.
            cursor.execute("SELECT pg_advisory_xact_lock(0)")
        with self.assertRaises(ConflictError) as raised:
            store_and_vote(x, b"\0" * 8, serial, data)
        self.assertIn("UnableToLockRows", str(raised.exception))
        holder.rollback()
        # Released: the retry goes through.
        store_and_vote(x, b"\0" * 8, serial, data)
        self.assertEqual(front.stop(), 0)


class StartRevisionTests(unittest.TestCase):
    """RelStorage instances in this process, with the fix installed (as a
    server serving a RelStorage installs it): X stores 5 more than it
    started from (s1) after Y committed 10 more (s2)."""

    layer = POSTGRES_LAYER

    def setUp(self) -> None:
        fix_relstorage_conflict_resolution()

    def database(self, *, keep_history: bool = True) -> tuple[str, bytes, bytes]:
        """A new database with a Length of 100: its dsn, oid and serial."""
        dsn = POSTGRES_LAYER.new_database()
        db = ZODB.DB(open_relstorage(dsn, keep_history=keep_history))
        try:
            with db.transaction() as connection:
                connection.root()["length"] = length = BTrees.Length.Length(100)
            return dsn, length._p_oid, length._p_serial
        finally:
            db.close()

    def storage(self, dsn: str, *, keep_history: bool = True) -> Any:
        storage = open_relstorage(dsn, keep_history=keep_history)
        self.addCleanup(storage.close)
        storage.poll_invalidations()
        return storage

    def value(self, dsn: str, *, keep_history: bool = True) -> int:
        db = ZODB.DB(open_relstorage(dsn, keep_history=keep_history))
        try:
            with db.transaction() as connection:
                result: int = connection.root()["length"]()
                return result
        finally:
            db.close()

    def test_the_snapshot_has_moved_past_the_start_revision(self):
        dsn, oid, s1 = self.database()
        y = self.storage(dsn)
        _, s2 = store_and_vote(y, oid, s1, length_record(oid, 110))
        # X's snapshot (and cache) know only s2.
        x = self.storage(dsn)
        self.assertEqual(x.load(oid)[1], s2)
        resolved, _ = store_and_vote(x, oid, s1, length_record(oid, 105))
        self.assertEqual(list(resolved), [oid])
        self.assertEqual(self.value(dsn), 115)

    def test_on_an_instance_made_with_new_instance(self):
        dsn, oid, s1 = self.database()
        main = self.storage(dsn)
        y = main.new_instance()
        self.addCleanup(y.release)
        _, s2 = store_and_vote(y, oid, s1, length_record(oid, 110))
        main.poll_invalidations()
        x = main.new_instance()
        self.addCleanup(x.release)
        x.poll_invalidations()
        self.assertEqual(x.load(oid)[1], s2)
        resolved, _ = store_and_vote(x, oid, s1, length_record(oid, 105))
        self.assertEqual(list(resolved), [oid])
        self.assertEqual(self.value(dsn), 115)

    def test_the_start_revision_is_newer_than_the_snapshot(self):
        # X polled before s1 existed: only the store connection sees it.
        dsn, oid, s0 = self.database()
        x = self.storage(dsn)
        y = self.storage(dsn)
        _, s1 = store_and_vote(y, oid, s0, length_record(oid, 110))
        _, s2 = store_and_vote(y, oid, s1, length_record(oid, 120))
        resolved, _ = store_and_vote(x, oid, s1, length_record(oid, 115))
        self.assertEqual(list(resolved), [oid])
        self.assertEqual(self.value(dsn), 125)

    def test_history_free_the_snapshot_still_holds_the_start_revision(self):
        # ZODB's Connection's case: what X started from is its snapshot.
        dsn, oid, s1 = self.database(keep_history=False)
        x = self.storage(dsn, keep_history=False)
        y = self.storage(dsn, keep_history=False)
        store_and_vote(y, oid, s1, length_record(oid, 110))
        resolved, _ = store_and_vote(x, oid, s1, length_record(oid, 105))
        self.assertEqual(list(resolved), [oid])
        self.assertEqual(self.value(dsn, keep_history=False), 115)

    def test_history_free_an_overwritten_start_revision_is_a_conflict(self):
        # Nothing keeps s1 any more: the client must retry.
        dsn, oid, s1 = self.database(keep_history=False)
        y = self.storage(dsn, keep_history=False)
        store_and_vote(y, oid, s1, length_record(oid, 110))
        x = self.storage(dsn, keep_history=False)
        with self.assertRaises(ConflictError):
            store_and_vote(x, oid, s1, length_record(oid, 105))
        self.assertEqual(self.value(dsn, keep_history=False), 110)

    def test_installed_once(self):
        from relstorage.cache.storage_cache import StorageCache
        from relstorage.storage.tpc.vote import _CachedConflictResolver

        from zeo.server.relstorage_conflicts import load_start_revision, prefetch_start_revisions

        originals = (StorageCache._zeo_original, _CachedConflictResolver._zeo_original)
        fix_relstorage_conflict_resolution()
        self.assertEqual((StorageCache._zeo_original, _CachedConflictResolver._zeo_original),
                         originals)
        self.assertIs(StorageCache.prefetch_for_conflicts, prefetch_start_revisions)
        self.assertIs(_CachedConflictResolver.loadSerial, load_start_revision)
