"""The figures ``info`` gives after each commit (zeo.server.size_info)."""

import threading
import unittest

from ZODB.interfaces import IMVCCStorage
from ZODB.MappingStorage import MappingStorage
from zope.interface import alsoProvides

from zeo.server.results import Delayed
from zeo.server.size_info import SizeInfo


class CountingStorage(MappingStorage):
    """Counts how often, and on which thread, it is asked for its size."""

    def __init__(self):
        super().__init__()
        self.asked = []

    def __len__(self):
        self.asked.append(threading.current_thread())
        return 7

    def getSize(self):
        return 1234


class Threads:
    """run_in_thread as the server's: the function runs in another thread;
    its outcome is settled here (the test is the loop) by `settle`."""

    def __init__(self):
        self.running = []

    def __call__(self, function):
        delayed = Delayed()
        outcome = {}

        def run():
            try:
                outcome["value"] = function()
            except Exception as error:
                outcome["error"] = error
        thread = threading.Thread(target=run)
        thread.start()
        self.running.append((thread, delayed, outcome))
        return delayed

    def settle(self):
        for thread, delayed, outcome in self.running:
            thread.join(10)
            if "error" in outcome:
                delayed.fail(outcome["error"])
            else:
                delayed.resolve(outcome["value"])
        self.running = []


class SizeInfoTests(unittest.TestCase):

    def setUp(self):
        self.now = 100.0
        self.threads = Threads()

    def test_a_plain_storage_is_read_at_each_commit_on_the_loop(self):
        storage = CountingStorage()
        info = SizeInfo(storage, lambda: self.now)
        for _ in range(3):
            self.assertEqual(info(self.threads), {"length": 7, "size": 1234})
        self.assertEqual(storage.asked, [threading.current_thread()] * 3)
        self.assertEqual(self.threads.running, [])

    def test_a_storage_on_a_database_is_read_in_a_thread_now_and_then(self):
        storage = CountingStorage()
        alsoProvides(storage, IMVCCStorage)
        info = SizeInfo(storage, lambda: self.now, interval=10.0)
        # The first commit starts a read; its clients get what is known.
        self.assertEqual(info(self.threads), {"length": 0, "size": 0})
        self.assertEqual(info(self.threads), {"length": 0, "size": 0})   # one read at a time
        self.threads.settle()
        self.assertEqual(len(storage.asked), 1)
        self.assertIsNot(storage.asked[0], threading.current_thread())
        # A hundred commits within the interval: no new read.
        for _ in range(100):
            self.assertEqual(info(self.threads), {"length": 7, "size": 1234})
        self.assertEqual(self.threads.running, [])
        self.now += 10.0
        info(self.threads)
        self.threads.settle()
        self.assertEqual(len(storage.asked), 2)
        # A clock set back does not stop the reads.
        self.now -= 3600.0
        info(self.threads)
        self.threads.settle()
        self.assertEqual(len(storage.asked), 3)
        # Without a thread to use (e.g. after a pack), the latest figures.
        self.now += 7200.0
        self.assertEqual(info(), {"length": 7, "size": 1234})
        self.assertEqual(len(storage.asked), 3)

    def test_a_failed_read_keeps_the_latest_figures(self):
        storage = CountingStorage()
        alsoProvides(storage, IMVCCStorage)
        storage.getSize = lambda: 1 / 0
        info = SizeInfo(storage, lambda: self.now)
        with self.assertLogs("zeo.server", "WARNING") as logged:
            info(self.threads)
            self.threads.settle()
        self.assertIn("reading the size of the storage failed", logged.output[0])
        self.assertEqual(info(self.threads), {"length": 0, "size": 0})
