"""Server-side conflict resolution runs no code a client chose."""

import os
import shutil
import tempfile
import unittest

import transaction
import ZODB
import ZODB.utils
from BTrees.OOBTree import OOBTree

import zeo.client
import zeo.server
from zeo.server.conflicts import (
    ConflictResolutionGuard, Unsafe, pickle_globals, pickle_metadata)
from zeo.server.tests.fuzzing import hostile_pickles


def record(obj):
    """A ZODB data record for *obj*, as a client would store it."""
    db = ZODB.DB(None)
    try:
        with db.transaction() as conn:
            conn.root.obj = obj
        return db.storage.load(obj._p_oid)[0]
    finally:
        db.close()


class GuardTests(unittest.TestCase):

    def setUp(self):
        self.guard = ConflictResolutionGuard(("BTrees", "persistent", "ZODB"))
        self.marker = os.path.join(tempfile.mkdtemp(), "MARKER")
        self.addCleanup(shutil.rmtree, os.path.dirname(self.marker))

    def test_btrees_records_pass(self):
        tree = OOBTree()
        tree.update({"a": 1, "b": 2})
        self.guard.check([record(tree)])

    def test_hostile_records_are_refused_and_nothing_runs(self):
        for hostile in hostile_pickles(self.marker):
            with self.assertRaises(Unsafe):
                self.guard.check([hostile])
        self.assertFalse(os.path.exists(self.marker))

    def test_a_persistent_class_outside_the_listed_packages_is_refused(self):
        guard = ConflictResolutionGuard(("persistent",))
        with self.assertRaisesRegex(Unsafe, "BTrees.OOBTree.OOBTree"):
            guard.check([record(OOBTree())])

    def test_made_up_names_do_not_grow_the_guard(self):
        # Each name a client makes up used to be remembered for ever.
        import zeo.server.conflicts
        limit = getattr(zeo.server.conflicts, "MAX_REMEMBERED_NAMES", 4096)
        for number in range(limit + 100):
            with self.assertRaises(Unsafe):
                self.guard.check_class(("made_up", f"Class{number}"))
        self.assertLessEqual(len(self.guard._resolvable), limit)
        tree = OOBTree()
        self.guard.check([record(tree)])   # real classes still pass

    def test_names_are_read_not_loaded(self):
        self.assertEqual(pickle_globals(b"\x80\x03cos\nsystem\nX\x01\x00\x00\x00xR."),
                         [("os", "system")])
        with self.assertRaisesRegex(Unsafe, "STACK_GLOBAL"):
            pickle_globals(b"\x80\x04X\x02\x00\x00\x00osX\x06\x00\x00\x00system\x93.")
        with self.assertRaisesRegex(Unsafe, "EXT1"):
            pickle_globals(b"\x80\x02\x82\x01.")
        with self.assertRaisesRegex(Unsafe, "unreadable"):
            pickle_globals(b"\x80\x03(")


class MetadataTests(unittest.TestCase):

    def test_the_same_names_as_zodb_for_real_records(self):
        tree = OOBTree()
        self.assertEqual(pickle_metadata(record(tree)), ("BTrees.OOBTree", "OOBTree"))

    def test_nothing_runs(self):
        marker = os.path.join(tempfile.mkdtemp(), "MARKER")
        self.addCleanup(shutil.rmtree, os.path.dirname(marker))
        for hostile in hostile_pickles(marker):
            pickle_metadata(hostile)
        self.assertFalse(os.path.exists(marker))
        self.assertEqual(pickle_metadata(b"garbage"), ("", ""))

    def test_a_server_makes_zodbs_conflict_errors_use_it(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        _, stop = zeo.server.server(path=os.path.join(directory, "Data.fs"))
        stop()
        self.assertIs(ZODB.utils.get_pickle_metadata, pickle_metadata)


class ResolutionStillWorksTests(unittest.TestCase):
    """Two clients add different keys to one BTree bucket at once: the
    server resolves the conflict, as ZEO users expect."""

    def test_concurrent_inserts_into_one_bucket_both_commit(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        address, stop = zeo.server.server(path=os.path.join(directory, "Data.fs"))
        self.addCleanup(stop)
        dbs = [ZODB.DB(zeo.client.ClientStorage(address)) for _ in range(2)]
        for db in dbs:
            self.addCleanup(db.close)
        with dbs[0].transaction() as conn:
            conn.root.tree = OOBTree()
        managers = [transaction.TransactionManager() for _ in dbs]
        conns = [db.open(transaction_manager=tm) for db, tm in zip(dbs, managers)]
        for n, conn in enumerate(conns):
            conn.root.tree[f"key{n}"] = n
        for tm in managers:
            tm.commit()
        with dbs[0].transaction() as conn:
            self.assertEqual(dict(conn.root.tree), {"key0": 0, "key1": 1})


if __name__ == "__main__":
    unittest.main()
