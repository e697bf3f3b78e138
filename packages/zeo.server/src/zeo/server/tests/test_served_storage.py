"""ServedStorage: what the server keeps per storage, decided once."""

import os
import shutil
import tempfile
import threading
import unittest

import transaction
from ZODB.FileStorage import FileStorage
from ZODB.MappingStorage import MappingStorage
from ZODB.POSException import POSKeyError
from ZODB.tests.MVCCMappingStorage import MVCCMappingStorage
from ZODB.utils import p64, z64

import zeo.server
from zeo.server.config import ServerConfig
from zeo.server.iterators import LentIterator
from zeo.server.served_storage import LoopHooks, ServedStorage
from zeo.server.tests.rawclient import RawClient, ServerError
from zeo.server.tests.support import wait_until


def served(storage):
    hooks = LoopHooks(call_soon=lambda *args: None, call_later=lambda *args: None)
    return ServedStorage("1", storage, ServerConfig(), hooks)


class SpoolDirectoryTests(unittest.TestCase):
    """Spools and blob uploads go where an upload can be renamed into place."""

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-served-")
        self.addCleanup(shutil.rmtree, self.directory, True)

    def test_a_blob_storage_spools_in_its_own_temporary_directory(self):
        storage = FileStorage(os.path.join(self.directory, "Data.fs"),
                              blob_dir=os.path.join(self.directory, "blobs"))
        served_storage = served(storage)
        self.addCleanup(served_storage.close)
        self.assertEqual(served_storage.spool_dir, storage.temporaryDirectory())
        self.assertTrue(served_storage.spool_dir.startswith(
            os.path.join(self.directory, "blobs")))
        self.assertEqual(os.path.normpath(served_storage.blob_dir),
                         os.path.join(self.directory, "blobs"))

    def test_other_storages_spool_in_the_system_temporary_directory(self):
        served_storage = served(MappingStorage())
        self.addCleanup(served_storage.close)
        self.assertEqual(served_storage.spool_dir, tempfile.gettempdir())
        self.assertIsNone(served_storage.blob_dir)
        file_storage = served(FileStorage(os.path.join(self.directory, "Data.fs")))
        self.addCleanup(file_storage.close)
        self.assertEqual(file_storage.spool_dir, tempfile.gettempdir())


if __name__ == "__main__":
    unittest.main()


class WhereInstance:
    """An instance of a `WhereStorage`: records the thread of each call."""

    def __init__(self, storage, instance):
        self._storage = storage
        self._instance = instance

    def __getattr__(self, name):
        if name in ("undoLog", "undoInfo"):     # MappingStorage has none
            def attribute(*args, **kw):
                return []
        else:
            attribute = getattr(self._instance, name)
        if name in WhereStorage.RECORDED:
            def recorded(*args, **kw):
                self._storage.calls.append((name, "instance", threading.current_thread().name))
                return attribute(*args, **kw)
            return recorded
        return attribute

    def release(self):
        self._storage.released.append(self)
        self._instance.release()


class WhereStorage(MVCCMappingStorage):
    """An MVCC storage with instances (as RelStorage): which calls run on
    the main instance, which on instances, in which threads."""

    RECORDED = ("loadBefore", "history", "loadSerial", "undoLog", "undoInfo", "iterator")

    def __init__(self):
        super().__init__()
        self.calls = []
        self.instances = []
        self.released = []

    def new_instance(self):
        instance = WhereInstance(self, super().new_instance())
        self.instances.append(instance)
        return instance

    def __getattribute__(self, name):
        if name in WhereStorage.RECORDED:
            calls = super().__getattribute__("calls")
            calls.append((name, "main", threading.current_thread().name))
        return super().__getattribute__(name)

    def undoLog(self, first=0, last=-20, filter=None):
        return []

    def undoInfo(self, first=0, last=-20, specification=None):
        return []

    def supportsUndo(self):
        return True


class LentInstancesTests(unittest.TestCase):
    """A storage instance is not shared across threads: the loop's loads
    use the main one, a call run in a worker thread is lent one of its own
    (RelStorage's load cursor answered both and failed with "no results to
    fetch", or worse, answered one call with the other's rows)."""

    def setUp(self):
        self.storage = WhereStorage()
        self.oid, self.tid = self.commit_one()
        address, stop = zeo.server.server(storages={"1": self.storage})
        self.addCleanup(stop)
        self.client = RawClient(address, timeout=10)
        self.addCleanup(self.client.close)
        self.storage.calls.clear()

    def commit_one(self):
        storage = self.storage.new_instance()
        txn = transaction.Transaction()
        storage.tpc_begin(txn)
        storage.store(z64, z64, b"root", "", txn)
        storage.tpc_vote(txn)
        committed = []
        storage.tpc_finish(txn, committed.append)
        storage.release()
        self.storage.instances.clear()
        self.storage.released.clear()
        return z64, committed[0]

    def where(self, method):
        return {(kind, thread == "MainThread")
                for name, kind, thread in self.storage.calls if name == method}

    def test_slow_calls_run_on_lent_instances_loads_on_the_main_one(self):
        self.client.call("loadBefore", self.oid, p64(2 ** 63 - 1))
        self.client.call("history", self.oid, 5)
        self.client.call("loadSerial", self.oid, self.tid)
        self.client.call("undoLog", 0, -20)
        self.client.call("undoInfo", 0, -20, None)
        self.assertEqual(self.where("loadBefore"), {("main", False)})   # the loop's thread
        for method in ("history", "loadSerial", "undoLog", "undoInfo"):
            self.assertEqual(self.where(method), {("instance", False)}, method)
        # Each given back before its reply and lent again: one was made.
        self.assertEqual(len(self.storage.instances), 1)

    def test_an_answer_that_is_an_error_keeps_the_instance(self):
        with self.assertRaises(ServerError) as caught:
            self.client.call("loadSerial", p64(42), p64(1))
        self.assertIn("POSKeyError", str(caught.exception))
        self.client.call("history", self.oid, 1)
        self.assertEqual(len(self.storage.instances), 1)    # lent twice, made once

    def test_an_iterator_keeps_its_instance_until_it_is_done(self):
        iid = self.client.call("iterator_start", None, None)
        self.assertEqual(self.where("iterator"), {("instance", False)})
        instance, = self.storage.instances
        self.client.call("history", self.oid, 1)     # not lent the iterator's
        self.assertEqual(len(self.storage.instances), 2)
        self.assertIsNotNone(self.client.call("iterator_next", iid))
        self.assertIsNone(self.client.call("iterator_next", iid))
        self.client.call("history", self.oid, 1)     # given back: lent again
        self.assertEqual(len(self.storage.instances), 2)

    def test_get_info_counts_a_database_in_a_thread(self):
        # RelStorage opens a database connection to count objects and
        # another for the size: not on the loop at each registration.
        counted = []

        class Counted(WhereStorage):
            def __len__(self):
                counted.append(threading.current_thread().name)
                return 7
        storage = Counted()
        address, stop = zeo.server.server(storages={"1": storage})
        self.addCleanup(stop)
        client = RawClient(address, timeout=10)
        self.addCleanup(client.close)
        with self.assertRaises(ServerError):     # nothing there: a POSKeyError
            client.call("loadBefore", z64, p64(2 ** 63 - 1))
        loop_thread = next(thread for name, kind, thread in storage.calls
                           if name == "loadBefore")
        wait_until(lambda: counted, "the count at startup")
        for _ in range(3):
            self.assertEqual(client.call("get_info")["length"], 7)
        self.assertNotIn(loop_thread, counted)

    def test_a_file_storage_is_called_itself(self):
        directory = tempfile.mkdtemp(prefix="zeo-served-")
        self.addCleanup(shutil.rmtree, directory, True)
        storage = FileStorage(os.path.join(directory, "Data.fs"))
        self.addCleanup(storage.close)
        serving = served(storage)
        with serving.borrowed() as lent:
            self.assertIs(lent, storage)
        iterator = serving.iterator(None, None)
        self.addCleanup(iterator.close)
        self.assertIsInstance(iterator, FileStorage.iterator.__annotations__.get("return", object))
        self.assertNotIsInstance(iterator, LentIterator)


class LentIteratorTests(unittest.TestCase):

    def test_closing_gives_the_instance_back_once(self):
        released = []
        lent = LentIterator(iter([1, 2]), lambda: released.append(1))
        self.assertEqual(list(lent), [1, 2])
        lent.close()
        lent.close()
        self.assertEqual(released, [1])

    def test_borrowed_gives_back_a_broken_instance_as_not_reusable(self):
        storage = WhereStorage()
        serving = served(storage)
        with self.assertRaises(POSKeyError):
            with serving.borrowed() as lent:
                raise POSKeyError(z64)
        with self.assertRaises(RuntimeError):
            with serving.borrowed() as again:
                self.assertIs(again, lent)          # the answer kept it
                raise RuntimeError("the database went away")
        with serving.borrowed() as third:
            self.assertIsNot(third, lent)           # a failure did not
        self.assertIn(lent, storage.released)
