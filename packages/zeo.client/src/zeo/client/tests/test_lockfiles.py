"""The client's one locking scheme: `ProcessLock` (the object cache file).

`lock_file`/`try_lock_file` (the blob cache's) are covered with the blob
cache, in test_blob_cache and test_blob_concurrency.
"""
import os
import tempfile
import threading
import unittest
import uuid

import zc.lockfile

from zeo.client.boot_id import system_boot_id
from zeo.client.cache.file_io import UNKNOWN_BOOT_ID
from zeo.client.cache.file_io import current_boot_id
from zeo.client.lockfiles import ProcessLock


class ProcessLockTests(unittest.TestCase):

    def setUp(self):
        self.directory = tempfile.TemporaryDirectory(prefix='zeo-lockfiles-')
        self.addCleanup(self.directory.cleanup)
        self.path = os.path.join(self.directory.name, 'cache.zec.lock')

    def take(self):
        lock = ProcessLock.take(self.path)
        if lock is not None:
            self.addCleanup(lock.close)
        return lock

    def test_a_second_lock_in_the_same_process_is_refused(self):
        first = self.take()
        self.assertIsNotNone(first)
        self.assertIsNone(self.take())
        first.close()
        self.assertIsNotNone(self.take())

    def test_any_thread_may_close(self):
        lock = self.take()
        closer = threading.Thread(target=lock.close)
        closer.start()
        closer.join()
        self.assertIsNotNone(self.take())
        lock.close()   # twice is harmless

    def test_it_excludes_the_reference_clients_zc_lockfile_both_ways(self):
        lock = self.take()
        with self.assertRaises(zc.lockfile.LockError):
            zc.lockfile.LockFile(self.path)
        lock.close()
        theirs = zc.lockfile.LockFile(self.path)
        try:
            self.assertIsNone(self.take())
        finally:
            theirs.close()
        self.assertIsNotNone(self.take())

    def test_the_holder_is_written_for_people(self):
        self.take()
        with open(self.path) as f:
            self.assertEqual(f.read().split(), [str(os.getpid())])


class BootIdTests(unittest.TestCase):

    def test_both_caches_read_the_same_boot_id(self):
        text = system_boot_id()
        if text is None:   # a system that does not say: recovery is conservative
            self.assertEqual(current_boot_id(), UNKNOWN_BOOT_ID)
        else:
            self.assertEqual(current_boot_id(), uuid.UUID(text).bytes)
            self.assertNotEqual(current_boot_id(), UNKNOWN_BOOT_ID)
