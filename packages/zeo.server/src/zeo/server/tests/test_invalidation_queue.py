"""Tests of zeo.server.invalidation_queue."""
import os
import shutil
import struct
import tempfile
import time
import unittest

from persistent.TimeStamp import TimeStamp
from ZODB.Connection import TransactionMetaData
from ZODB.FileStorage import FileStorage
from ZODB.MappingStorage import MappingStorage
from ZODB.utils import z64

from zeo.server.invalidation_queue import DEFAULT_QUEUE_SIZE
from zeo.server.invalidation_queue import InvalidationQueue
from zeo.server.invalidation_queue import find_invalidations
from zeo.server.invalidation_queue import invalidations_by_iteration


def tid(n):
    return struct.pack('>Q', n)


oid = tid


def commit(storage, oids, data=b'x'):
    """Commit one transaction storing *oids*; return its tid."""
    txn = TransactionMetaData()
    storage.tpc_begin(txn)
    for o in oids:
        try:
            serial = storage.load(o)[1]
        except KeyError:
            serial = z64
        storage.store(o, serial, data, '', txn)
    storage.tpc_vote(txn)
    return storage.tpc_finish(txn)


class FileStorageTestCase(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='zeo-invq-')
        self.addCleanup(shutil.rmtree, self.dir)
        self.storage = FileStorage(os.path.join(self.dir, 'Data.fs'))
        self.addCleanup(self.storage.close)


class QueueTests(unittest.TestCase):

    def _makeOne(self, *args, **kw):
        return InvalidationQueue(*args, **kw)

    def test_defaults(self):
        q = self._makeOne()
        self.assertEqual(q.size, DEFAULT_QUEUE_SIZE)
        self.assertEqual(len(q), 0)
        self.assertIsNone(q.newest_tid)
        self.assertIsNone(q.oldest_tid)

    def test_empty_queue_knows_nothing(self):
        self.assertIsNone(self._makeOne().since(z64))

    def test_since_unions_later_entries_sorted(self):
        q = self._makeOne()
        q.append(tid(10), [oid(3), oid(1)])
        q.append(tid(20), [oid(2), oid(1)])
        q.append(tid(30), [oid(9)])
        self.assertEqual(q.since(tid(10)),
                         (tid(30), (oid(1), oid(2), oid(9))))
        self.assertEqual(q.since(tid(15)), (tid(30), (oid(1), oid(2),
                                                      oid(9))))
        self.assertEqual(q.since(tid(20)), (tid(30), (oid(9),)))

    def test_since_newest_returns_newest_and_no_oids(self):
        q = self._makeOne()
        q.append(tid(10), [oid(1)])
        q.append(tid(20), [oid(2)])
        self.assertEqual(q.since(tid(20)), (tid(20), ()))
        # A client ahead of the queue: still answered with the newest tid.
        self.assertEqual(q.since(tid(99)), (tid(20), ()))

    def test_since_older_than_oldest_is_none(self):
        q = self._makeOne()
        q.append(tid(10), [oid(1)])
        self.assertIsNone(q.since(tid(9)))

    def test_oldest_entry_oids_never_reported(self):
        # Exactly at the oldest tid: only later entries count.
        q = self._makeOne()
        q.append(tid(10), [oid(1)])
        q.append(tid(11), [oid(2)])
        self.assertEqual(q.since(tid(10)), (tid(11), (oid(2),)))

    def test_bounded_by_size_drops_oldest(self):
        q = self._makeOne(3)
        for n in range(1, 6):
            q.append(tid(n), [oid(n)])
        self.assertEqual(len(q), 3)
        self.assertEqual(q.oldest_tid, tid(3))
        self.assertEqual(q.newest_tid, tid(5))
        self.assertIsNone(q.since(tid(2)))
        self.assertEqual(q.since(tid(3)), (tid(5), (oid(4), oid(5))))

    def test_bounded_by_total_oids(self):
        q = self._makeOne(100, max_oids=5)
        q.append(tid(1), [oid(1), oid(2)])
        q.append(tid(2), [oid(3), oid(4)])
        self.assertEqual(len(q), 2)
        q.append(tid(3), [oid(5), oid(6)])  # 6 > 5: tid(1) goes
        self.assertEqual(len(q), 2)
        self.assertEqual(q.oldest_tid, tid(2))
        # The newest entry is kept even if it alone exceeds the limit.
        q.append(tid(4), [oid(n) for n in range(10, 20)])
        self.assertEqual([t for t, _ in q], [tid(4)])
        self.assertEqual(len(q.since(tid(4))[1]), 0)

    def test_iteration_newest_first_and_a_copy(self):
        q = self._makeOne()
        q.append(tid(1), [oid(1)])
        q.append(tid(2), (oid(2),))
        entries = list(q)
        self.assertEqual(entries, [(tid(2), (oid(2),)), (tid(1), (oid(1),))])
        for _ in q:
            q.append(tid(3), [])  # no "deque mutated during iteration"
            break

    def test_oids_stored_as_tuples(self):
        q = self._makeOne()
        q.append(tid(1), iter([oid(1), oid(2)]))  # any iterable, consumed
        self.assertIsInstance(list(q)[0][1], tuple)

    def test_duplicates_reported_once(self):
        q = self._makeOne()
        q.append(tid(1), [oid(1)])
        q.append(tid(2), [oid(5), oid(5)])
        q.append(tid(3), [oid(5)])
        self.assertEqual(q.since(tid(1)), (tid(3), (oid(5),)))

    def test_append_requires_increasing_tids(self):
        q = self._makeOne()
        q.append(tid(5), [])
        with self.assertRaisesRegex(ValueError, 'commit order'):
            q.append(tid(5), [])
        with self.assertRaisesRegex(ValueError, 'commit order'):
            q.append(tid(4), [])
        self.assertEqual(len(q), 1)

    def test_bad_tids_and_oids(self):
        q = self._makeOne()
        with self.assertRaises(TypeError):
            q.since('00000000')
        with self.assertRaises(ValueError):
            q.since(b'1234567')
        with self.assertRaises(TypeError):
            q.append(tid(1), [1])
        with self.assertRaises(ValueError):
            q.append(tid(1), [b'short'])
        self.assertEqual(len(q), 0)

    def test_bad_limits(self):
        for bad in (0, -1, True, 1.5, None, '10'):
            with self.assertRaises(ValueError, msg=repr(bad)):
                self._makeOne(bad)
        for bad in (0, False, 2.0):
            with self.assertRaises(ValueError, msg=repr(bad)):
                self._makeOne(max_oids=bad)
        self.assertIsNone(self._makeOne(max_oids=None).max_oids)

    def test_seed_without_last_invalidations(self):
        storage = MappingStorage()
        self.addCleanup(storage.close)
        last = commit(storage, [oid(0)])
        q = self._makeOne()
        q.seed_from(storage)
        self.assertEqual(list(q), [(last, None)])
        # An up-to-date client verifies quickly; an older one can't.
        self.assertEqual(q.since(last), (last, ()))
        self.assertIsNone(q.since(tid(1)))
        # Later commits are unioned, the pseudo-entry's None is skipped.
        q.append(tid(2 ** 62), [oid(7)])
        self.assertEqual(q.since(last), (tid(2 ** 62), (oid(7),)))

    def test_seed_empty_storage_without_history(self):
        storage = MappingStorage()
        self.addCleanup(storage.close)
        q = self._makeOne()
        q.seed_from(storage)
        self.assertEqual(list(q), [(z64, None)])
        self.assertEqual(q.since(z64), (z64, ()))

    def test_seed_accepts_oid_version_pairs(self):
        class OldStorage:
            def lastInvalidations(self, size):
                return [(tid(1), [(oid(1), ''), (oid(2), '')])]

            def lastTransaction(self):
                raise AssertionError('not needed')

        q = self._makeOne()
        q.seed_from(OldStorage())
        self.assertEqual(list(q), [(tid(1), (oid(1), oid(2)))])


class FileStorageSeedTests(FileStorageTestCase):

    def test_seed_from_file_storage_history(self):
        tids = [commit(self.storage, [oid(0)])]
        tids.append(commit(self.storage, [oid(0), oid(1)]))
        tids.append(commit(self.storage, [oid(2)]))
        q = InvalidationQueue(2)
        q.seed_from(self.storage)
        self.assertEqual(list(q), [(tids[2], (oid(2),)),
                                   (tids[1], (oid(0), oid(1)))])
        self.assertEqual(q.since(tids[1]), (tids[2], (oid(2),)))
        self.assertIsNone(q.since(tids[0]))

    def test_seed_replaces_previous_contents(self):
        t = commit(self.storage, [oid(0)])
        q = InvalidationQueue()
        q.append(tid(2 ** 63 - 1), [oid(5)])
        q.seed_from(self.storage)
        self.assertEqual(list(q), [(t, (oid(0),))])

    def test_seed_from_empty_file_storage(self):
        q = InvalidationQueue()
        q.seed_from(self.storage)
        self.assertEqual(list(q), [(z64, None)])
        # A client that saw the empty database gets the first commit.
        t = commit(self.storage, [oid(0)])
        q.append(t, [oid(0)])
        self.assertEqual(q.since(z64), (t, (oid(0),)))


class IterationTests(FileStorageTestCase):

    def setUp(self):
        super().setUp()
        self.t1 = commit(self.storage, [oid(0)])
        self.t2 = commit(self.storage, [oid(1), oid(2)])
        self.t3 = commit(self.storage, [oid(2), oid(3)])
        self.now = TimeStamp(self.t3).timeTime() + 1

    def test_collects_oids_after_tid(self):
        self.assertEqual(
            invalidations_by_iteration(self.storage, self.t1, 60, self.now),
            (self.t3, (oid(1), oid(2), oid(3))))
        self.assertEqual(
            invalidations_by_iteration(self.storage, self.t2, 60, self.now),
            (self.t3, (oid(2), oid(3))))

    def test_nothing_after_tid_is_none(self):
        self.assertIsNone(
            invalidations_by_iteration(self.storage, self.t3, 60, self.now))

    def test_disabled_or_too_old(self):
        self.assertIsNone(
            invalidations_by_iteration(self.storage, self.t1, None, self.now))
        age = self.now - TimeStamp(self.t1).timeTime()
        self.assertIsNone(invalidations_by_iteration(
            self.storage, self.t1, age / 2, self.now))
        self.assertIsNotNone(invalidations_by_iteration(
            self.storage, self.t1, age * 2, self.now))
        # "now" is injected: far in the future everything is too old.
        self.assertIsNone(invalidations_by_iteration(
            self.storage, self.t1, 60, self.now + 3600))

    def test_max_oids(self):
        self.assertIsNone(invalidations_by_iteration(
            self.storage, self.t1, 60, self.now, max_oids=2))
        self.assertIsNotNone(invalidations_by_iteration(
            self.storage, self.t1, 60, self.now, max_oids=3))

    def test_bad_age(self):
        for bad in (0, -1, float('nan'), float('inf'), True, '60'):
            with self.assertRaises(ValueError, msg=repr(bad)):
                invalidations_by_iteration(self.storage, self.t1, bad,
                                           self.now)

    def test_highest_tid(self):
        self.assertIsNone(invalidations_by_iteration(
            self.storage, b'\xff' * 8, 1e30, self.now))

    def test_iterator_closed(self):
        closed = []
        storage = self.storage

        class Recording:
            def iterator(self, start):
                it = storage.iterator(start)
                orig = it.close

                def close():
                    closed.append(True)
                    orig()
                it.close = close
                return it

        # Stopping early (too many oids) must close the iterator, which
        # FileStorage's iterator only does by itself when exhausted.
        self.assertIsNone(invalidations_by_iteration(
            Recording(), self.t1, 60, self.now, max_oids=1))
        self.assertEqual(closed, [True])

    def test_find_invalidations_prefers_queue(self):
        q = InvalidationQueue()
        q.seed_from(self.storage)
        # The queue knows: no iteration needed (a storage without iterator).
        self.assertEqual(
            find_invalidations(q, object(), self.t2, invalidation_age=60,
                               now=self.now),
            (self.t3, (oid(2), oid(3))))

    def test_find_invalidations_falls_back_to_iteration(self):
        q = InvalidationQueue(1)
        q.seed_from(self.storage)
        self.assertIsNone(q.since(self.t1))
        self.assertEqual(
            find_invalidations(q, self.storage, self.t1,
                               invalidation_age=60, now=self.now),
            (self.t3, (oid(1), oid(2), oid(3))))
        self.assertIsNone(
            find_invalidations(q, self.storage, self.t1,
                               invalidation_age=None, now=time.time()))
