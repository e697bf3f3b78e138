"""IClientCache conformance tests, run against every implementation.

``IClientCacheTests`` is a mixin in the style of ZODB's storage test
mixins: a concrete TestCase provides ``_makeOne(size)`` and inherits every
test.
"""
import os
import shutil
import tempfile
import threading
import unittest

from zope.interface.verify import verifyObject

from zeo.client.cache import FileCache
from zeo.client.cache import MemoryCache
from zeo.client.cache import open_cache
from zeo.client.cache import update_after_commit
from zeo.client.cache.errors import CacheConsistencyError
from zeo.client.cache.recent_invalidations import MAX_OLD_REVISIONS
from zeo.client.cache.errors import CacheError
from zeo.client.cache.errors import CacheLockedError
from zeo.client.cache.errors import LastTidError
from zeo.client.interfaces import IClientCache


def p64(n):
    return n.to_bytes(8, 'big')


OID = p64(1)
OID2 = p64(2)


class IClientCacheTests:
    """Every IClientCache implementation must pass these."""

    size = 1 << 20

    def _makeOne(self, size=None):
        raise NotImplementedError

    def setUp(self):
        self.cache = self._makeOne()

    def tearDown(self):
        self.cache.close()

    def test_interface(self):
        verifyObject(IClientCache, self.cache)

    def test_empty(self):
        c = self.cache
        self.assertIsNone(c.load(OID))
        self.assertIsNone(c.loadBefore(OID, p64(5)))
        self.assertIsNone(c.getLastTid())
        self.assertEqual(len(c), 0)
        self.assertFalse(c.contains(OID, p64(1)))

    def test_store_and_load_current(self):
        c = self.cache
        c.store(OID, p64(3), None, b'data3')
        self.assertEqual(c.load(OID), (b'data3', p64(3)))
        self.assertTrue(c.contains(OID, p64(3)))
        self.assertEqual(len(c), 1)
        self.assertIsNone(c.load(OID2))

    def test_store_identical_current_is_a_noop(self):
        c = self.cache
        c.store(OID, p64(3), None, b'data3')
        c.store(OID, p64(3), None, b'data3')
        self.assertEqual(len(c), 1)
        self.assertEqual(c.load(OID), (b'data3', p64(3)))

    def test_store_different_current_raises(self):
        c = self.cache
        c.store(OID, p64(3), None, b'data3')
        with self.assertRaises(CacheConsistencyError) as cm:
            c.store(OID, p64(4), None, b'data4')
        self.assertIn(OID.hex(), str(cm.exception))
        self.assertEqual(c.load(OID), (b'data3', p64(3)))

    def test_superseded_current_is_not_cached(self):
        c = self.cache
        c.store(OID, p64(3), p64(7), b'data3')
        # A late "current" answer for revision 3 (or older) must not be
        # believed: revision 3 is known to have ended.
        c.store(OID, p64(3), None, b'data3')
        c.store(OID, p64(2), None, b'data2')
        self.assertIsNone(c.load(OID))
        self.assertEqual(c.loadBefore(OID, p64(5)),
                         (b'data3', p64(3), p64(7)))

    def test_current_record_older_than_an_invalidation_is_not_cached(self):
        c = self.cache
        # The invalidation of an uncached object arrives before a stale
        # load reply (a client ordering bug): the reply must not stick.
        c.invalidate(OID, p64(7))
        c.store(OID, p64(5), None, b'stale')
        self.assertIsNone(c.load(OID))
        self.assertEqual(c.stats()['superseded'], 1)
        c.store(OID, p64(7), None, b'fresh')
        self.assertEqual(c.load(OID), (b'fresh', p64(7)))
        # Non-current records are facts and always welcome.
        c.store(OID, p64(5), p64(7), b'stale')
        self.assertEqual(c.loadBefore(OID, p64(6)),
                         (b'stale', p64(5), p64(7)))

    def test_loadBefore(self):
        c = self.cache
        c.store(OID, p64(1), p64(3), b'r1')
        c.store(OID, p64(3), p64(5), b'r3')
        c.store(OID, p64(5), None, b'r5')
        self.assertIsNone(c.loadBefore(OID, p64(1)))
        self.assertEqual(c.loadBefore(OID, p64(2)), (b'r1', p64(1), p64(3)))
        self.assertEqual(c.loadBefore(OID, p64(3)), (b'r1', p64(1), p64(3)))
        self.assertEqual(c.loadBefore(OID, p64(4)), (b'r3', p64(3), p64(5)))
        self.assertEqual(c.loadBefore(OID, p64(5)), (b'r3', p64(3), p64(5)))
        self.assertEqual(c.loadBefore(OID, p64(6)), (b'r5', p64(5), None))
        self.assertEqual(c.load(OID), (b'r5', p64(5)))

    def test_loadBefore_with_a_hole(self):
        c = self.cache
        c.store(OID, p64(1), p64(3), b'r1')
        c.store(OID, p64(5), None, b'r5')
        self.assertIsNone(c.loadBefore(OID, p64(4)))
        self.assertIsNone(c.loadBefore(OID, p64(5)))

    def test_invalidate(self):
        c = self.cache
        c.store(OID, p64(3), None, b'data3')
        c.invalidate(OID, p64(8))
        self.assertIsNone(c.load(OID))
        self.assertEqual(c.loadBefore(OID, p64(8)),
                         (b'data3', p64(3), p64(8)))
        self.assertIsNone(c.loadBefore(OID, p64(9)))
        c.store(OID, p64(8), None, b'data8')
        self.assertEqual(c.load(OID), (b'data8', p64(8)))
        self.assertEqual(len(c), 2)

    def test_old_revisions_of_one_object_are_bounded(self):
        c = self.cache
        last = MAX_OLD_REVISIONS * 3
        for t in range(1, last + 1):
            c.store(OID, p64(t), None, b'data%d' % t)
            c.invalidate(OID, p64(t + 1))
            # Non-current records, as loads for old snapshots store them.
            c.store(OID2, p64(t), p64(t + 1), b'other%d' % t)
        c.store(OID, p64(last + 1), None, b'current')
        newest = range(last + 1 - MAX_OLD_REVISIONS, last + 1)
        for t in range(1, last + 1):
            if t in newest:
                self.assertEqual(c.loadBefore(OID, p64(t + 1)),
                                 (b'data%d' % t, p64(t), p64(t + 1)))
                self.assertEqual(c.loadBefore(OID2, p64(t + 1)),
                                 (b'other%d' % t, p64(t), p64(t + 1)))
            else:
                self.assertIsNone(c.loadBefore(OID, p64(t + 1)))
                self.assertIsNone(c.loadBefore(OID2, p64(t + 1)))
        self.assertEqual(c.load(OID), (b'current', p64(last + 1)))
        self.assertEqual(len(c), 2 * MAX_OLD_REVISIONS + 1)

    def test_invalidate_none_forgets_only_the_current_record(self):
        c = self.cache
        c.store(OID, p64(1), p64(3), b'r1')
        c.store(OID, p64(3), None, b'r3')
        c.invalidate(OID, None)
        self.assertIsNone(c.load(OID))
        self.assertIsNone(c.loadBefore(OID, p64(9)))
        self.assertEqual(c.loadBefore(OID, p64(2)), (b'r1', p64(1), p64(3)))
        self.assertEqual(len(c), 1)

    def test_invalidate_not_newer_is_ignored(self):
        c = self.cache
        c.store(OID, p64(5), None, b'r5')
        c.invalidate(OID, p64(5))
        c.invalidate(OID, p64(4))
        self.assertEqual(c.load(OID), (b'r5', p64(5)))

    def test_invalidate_unknown_oid(self):
        self.cache.invalidate(OID, p64(5))
        self.cache.invalidate(OID, None)
        self.assertEqual(len(self.cache), 0)

    def test_noncurrent_store_ends_the_current_record(self):
        c = self.cache
        c.store(OID, p64(1), None, b'r1')
        c.store(OID, p64(1), p64(4), b'r1')
        self.assertIsNone(c.load(OID))
        self.assertEqual(c.loadBefore(OID, p64(4)), (b'r1', p64(1), p64(4)))
        self.assertEqual(len(c), 1)

    def test_noncurrent_store_drops_a_stale_current_record(self):
        c = self.cache
        c.store(OID, p64(1), None, b'r1')
        c.store(OID, p64(4), p64(6), b'r4')
        self.assertIsNone(c.load(OID))
        self.assertIsNone(c.loadBefore(OID, p64(3)))
        self.assertEqual(c.loadBefore(OID, p64(5)), (b'r4', p64(4), p64(6)))

    def test_last_tid(self):
        c = self.cache
        c.setLastTid(p64(5))
        self.assertEqual(c.getLastTid(), p64(5))
        c.setLastTid(p64(5))                     # equal is tolerated
        c.setLastTid(p64(9))
        with self.assertRaises(LastTidError) as cm:
            c.setLastTid(p64(8))
        self.assertIn(p64(9).hex(), str(cm.exception))
        self.assertEqual(c.getLastTid(), p64(9))

    def test_clear(self):
        c = self.cache
        c.store(OID, p64(1), p64(3), b'r1')
        c.store(OID2, p64(3), None, b'r3')
        c.setLastTid(p64(9))
        c.clear()
        self.assertEqual(len(c), 0)
        self.assertIsNone(c.load(OID2))
        self.assertIsNone(c.getLastTid())
        c.setLastTid(p64(2))
        c.store(OID2, p64(1), None, b'again')
        self.assertEqual(c.load(OID2), (b'again', p64(1)))

    def test_too_big_records_are_not_cached(self):
        c = self._makeOne(size=64 * 1024)
        try:
            c.store(OID, p64(1), None, b'x' * 40000)
            self.assertIsNone(c.load(OID))
            self.assertEqual(len(c), 0)
            self.assertEqual(c.stats()['toobig'], 1)
        finally:
            c.close()

    def test_size_is_respected(self):
        size = 64 * 1024
        c = self._makeOne(size=size)
        try:
            for i in range(1, 2001):
                c.store(p64(i), p64(1), None, bytes([i % 251]) * 100)
            stats = c.stats()
            self.assertLessEqual(stats['bytes'], size)
            self.assertGreater(stats['evictions'], 0)
            self.assertLess(len(c), 2000)
            self.assertEqual(c.getsize(), size)
            # Whatever survived is right.
            for i in range(1, 2001):
                got = c.load(p64(i))
                if got is not None:
                    self.assertEqual(got, (bytes([i % 251]) * 100, p64(1)))
            self.assertEqual(c.load(p64(2000)),
                             (bytes([2000 % 251]) * 100, p64(1)))
        finally:
            c.close()

    def test_stats(self):
        c = self.cache
        c.store(OID, p64(1), None, b'r1')
        c.load(OID)
        c.load(OID2)
        stats = c.stats()
        self.assertEqual(stats['hits'], 1)
        self.assertEqual(stats['misses'], 1)
        self.assertEqual(stats['stores'], 1)
        self.assertEqual(stats['records'], 1)
        self.assertGreater(stats['bytes'], 0)

    def test_bad_arguments(self):
        c = self.cache
        with self.assertRaises(ValueError):
            c.store(b'short', p64(1), None, b'')
        with self.assertRaises(ValueError):
            c.store(OID, p64(3), p64(3), b'')
        with self.assertRaises(ValueError):
            c.load(1)
        with self.assertRaises(ValueError):
            c.setLastTid(b'\0' * 7)

    def test_closed(self):
        c = self._makeOne()
        c.close()
        c.close()
        with self.assertRaises(CacheError):
            c.load(OID)
        with self.assertRaises(CacheError):
            c.store(OID, p64(1), None, b'')

    def test_empty_data(self):
        self.cache.store(OID, p64(1), None, b'')
        self.assertEqual(self.cache.load(OID), (b'', p64(1)))

    def test_reads_from_other_threads(self):
        c = self.cache
        for i in range(1, 101):
            c.store(p64(i), p64(1), None, b'v%d' % i)
        errors = []

        def reader():
            try:
                for _ in range(20):
                    for i in range(1, 101):
                        got = c.load(p64(i))
                        if got is not None and got[0] != b'v%d' % i:
                            errors.append(got)
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        for i in range(1, 101):
            c.invalidate(p64(i), p64(2))
            c.store(p64(i), p64(2), None, b'v%d' % i)
        for t in threads:
            t.join()
        self.assertEqual(errors, [])

    # -- committed: invalidate + store for a transaction, fused ----------

    def test_committed(self):
        c = self.cache
        c.store(OID, p64(3), None, b'r3')
        c.store(OID2, p64(2), None, b'r2')
        c.committed(p64(8), [(OID, b'r8'), (OID2, None), (p64(3), b'n8')])
        self.assertEqual(c.load(OID), (b'r8', p64(8)))
        self.assertEqual(c.loadBefore(OID, p64(8)), (b'r3', p64(3), p64(8)))
        self.assertIsNone(c.load(OID2))          # data unknown: ended only
        self.assertEqual(c.loadBefore(OID2, p64(5)), (b'r2', p64(2), p64(8)))
        self.assertEqual(c.load(p64(3)), (b'n8', p64(8)))
        self.assertEqual(len(c), 4)
        # The same transaction again (its records already cached): no-op.
        c.committed(p64(8), [(OID, b'r8')])
        self.assertEqual(len(c), 4)
        # Nothing changes the last tid: that is the caller's next step.
        self.assertIsNone(c.getLastTid())

    def test_committed_equals_invalidate_then_store(self):
        def history(cache, fused):
            written = {o: [(1, b'first')] for o in range(1, 8)}
            for t in range(3, 40):
                changes = []
                for o in range(1, 8):
                    if (o * t) % 3 != 1:
                        data = b'%d@%d' % (o, t) * (o % 3)
                        written[o].append((t, data))
                        changes.append(
                            (p64(o), None if (o + t) % 5 == 0 else data))
                if fused:
                    cache.committed(p64(t), changes)
                else:
                    for oid, data in changes:
                        cache.invalidate(oid, p64(t))
                        if data is not None:
                            cache.store(oid, p64(t), None, data)
                # Loads by older snapshots bring old revisions in.
                for o in range(1, 8):
                    if cache.loadBefore(p64(o), p64(t - 1)) is None:
                        revs = written[o]
                        i = max(i for i, (s, _) in enumerate(revs)
                                if s < t - 1)
                        end = revs[i + 1][0] if i + 1 < len(revs) else None
                        if end is not None:
                            cache.store(p64(o), p64(revs[i][0]), p64(end),
                                        revs[i][1])

        fused, plain = self._makeOne(), self._makeOne()
        try:
            history(fused, True)
            history(plain, False)
            for o in range(1, 8):
                for t in range(1, 42):
                    self.assertEqual(fused.loadBefore(p64(o), p64(t)),
                                     plain.loadBefore(p64(o), p64(t)))
                self.assertEqual(fused.load(p64(o)), plain.load(p64(o)))
            self.assertEqual(fused.stats(), plain.stats())
        finally:
            fused.close()
            plain.close()

    def test_committed_forgets_an_inconsistent_current_record(self):
        c = self.cache
        # A current record newer than the commit (which cannot happen
        # with a correct server): store would raise; committed forgets.
        c.store(OID, p64(9), None, b'r9')
        c.store(OID2, p64(1), None, b'r1')
        c.committed(p64(5), [(OID, b'r5'), (OID2, b'n5')])
        self.assertIsNone(c.load(OID))
        self.assertIsNone(c.loadBefore(OID, p64(10)))
        self.assertEqual(c.load(OID2), (b'n5', p64(5)))

    def test_committed_refuses_what_a_newer_invalidation_supersedes(self):
        c = self.cache
        c.invalidate(OID, p64(9))
        c.committed(p64(5), [(OID, b'r5')])
        self.assertIsNone(c.load(OID))
        self.assertEqual(c.stats()['superseded'], 1)

    def test_committed_too_big_and_bad_arguments(self):
        c = self._makeOne(size=64 * 1024)
        try:
            c.store(OID, p64(1), None, b'r1')
            c.committed(p64(2), [(OID, b'x' * 40000)])
            self.assertIsNone(c.load(OID))
            self.assertEqual(c.loadBefore(OID, p64(2)),
                             (b'r1', p64(1), p64(2)))
            self.assertEqual(c.stats()['toobig'], 1)
            with self.assertRaises(ValueError):
                c.committed(b'short', [])
            with self.assertRaises(ValueError):
                c.committed(p64(3), [(OID2, b'a'), (b'short', b'b')])
            self.assertEqual(c.load(OID2), (b'a', p64(3)))   # applied
        finally:
            c.close()
        with self.assertRaises(CacheError):
            c.committed(p64(4), [])

    def test_committed_respects_the_size(self):
        size = 64 * 1024
        c = self._makeOne(size=size)
        try:
            c.committed(p64(2), [(p64(i), bytes([i % 251]) * 100)
                                 for i in range(1, 2001)])
            self.assertLessEqual(c.stats()['bytes'], size)
            self.assertGreater(c.stats()['evictions'], 0)
            self.assertEqual(c.load(p64(2000)),
                             (bytes([2000 % 251]) * 100, p64(2)))
        finally:
            c.close()


class MemoryCacheTests(IClientCacheTests, unittest.TestCase):

    def _makeOne(self, size=None):
        return MemoryCache(self.size if size is None else size)

    def test_not_persistent(self):
        self.assertFalse(self.cache.persistent)


class FileCacheTests(IClientCacheTests, unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='zeocache')
        self.count = 0
        super().setUp()

    def tearDown(self):
        super().tearDown()
        shutil.rmtree(self.dir)

    def _makeOne(self, size=None):
        self.count += 1
        path = os.path.join(self.dir, 'c%d.zec' % self.count)
        return FileCache(path, self.size if size is None else size)

    def test_persistent(self):
        self.assertTrue(self.cache.persistent)


class OpenCacheTests(unittest.TestCase):

    def test_memory(self):
        c = open_cache(None, 1000)
        self.assertIsInstance(c, MemoryCache)
        c.close()

    def test_file(self):
        d = tempfile.mkdtemp()
        try:
            c = open_cache(os.path.join(d, 'x.zec'), 1000)
            self.assertIsInstance(c, FileCache)
            self.assertTrue(c.persistent)
            c.close()
        finally:
            shutil.rmtree(d)

    def test_unusable_path_falls_back_to_memory(self):
        d = tempfile.mkdtemp()
        try:
            missing = os.path.join(d, 'no', 'such', 'dir', 'x.zec')
            with self.assertLogs('zeo.client.cache', 'ERROR') as logs:
                c = open_cache(missing, 1000)
            self.assertIsInstance(c, MemoryCache)
            self.assertIn('non-persistent', logs.output[0])
        finally:
            shutil.rmtree(d)

    def test_locked_file_is_an_error(self):
        d = tempfile.mkdtemp()
        try:
            path = os.path.join(d, 'x.zec')
            c = open_cache(path, 1 << 20)
            with self.assertRaises(CacheLockedError):
                open_cache(path, 1 << 20)
            c.close()
        finally:
            shutil.rmtree(d)


class LegacyCache:
    """An application's cache object written before ``committed``."""

    def __init__(self, cache):
        self._cache = cache
        for name in ('load', 'loadBefore', 'store', 'invalidate', 'stats'):
            setattr(self, name, getattr(cache, name))


class UpdateAfterCommitTests(unittest.TestCase):

    def run_history(self, cache):
        cache.store(OID, p64(1), None, b'r1')
        cache.store(OID2, p64(9), None, b'r9')      # newer than the commit
        cache.store(p64(3), p64(1), None, b'x1')
        update_after_commit(cache, p64(5), [
            (OID, b'r5', False),        # stored
            (OID2, b'n5', False),       # inconsistent: forgotten
            (p64(3), b'mine', True),    # the server resolved it
            (p64(4), None, True),       # an undo changed it
        ])
        return [cache.loadBefore(p64(o), p64(t))
                for o in range(1, 5) for t in (2, 6, 10)]

    def test_committed_and_the_old_way_agree(self):
        fused = self.run_history(MemoryCache(1 << 20))
        legacy = LegacyCache(MemoryCache(1 << 20))
        self.assertFalse(hasattr(legacy, 'committed'))
        self.assertEqual(self.run_history(legacy), fused)
        self.assertEqual(fused[0:3], [(b'r1', p64(1), p64(5)),
                                      (b'r5', p64(5), None),
                                      (b'r5', p64(5), None)])
        self.assertEqual(fused[3:6], [None, None, None])
        self.assertEqual(fused[6:9], [(b'x1', p64(1), p64(5)), None, None])
