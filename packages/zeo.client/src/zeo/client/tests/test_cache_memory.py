"""MemoryCache specifics: least-recently-used eviction by bytes."""
import unittest

from zeo.client.cache.memory import RECORD_OVERHEAD
from zeo.client.cache.memory import MemoryCache


def p64(n):
    return n.to_bytes(8, 'big')


class LRUTests(unittest.TestCase):

    def test_least_recently_used_goes_first(self):
        per = 100 + RECORD_OVERHEAD
        c = MemoryCache(per * 4)
        for oid in range(1, 5):
            c.store(p64(oid), p64(1), None, b'x' * 100)
        c.load(p64(1))                       # 2 is now the oldest
        c.store(p64(5), p64(1), None, b'x' * 100)
        self.assertIsNone(c.load(p64(2)))
        for oid in (1, 3, 4, 5):
            self.assertIsNotNone(c.load(p64(oid)))
        self.assertEqual(c.stats()['bytes'], per * 4)
        self.assertEqual(c.stats()['evictions'], 1)

    def test_loadBefore_counts_as_use(self):
        per = 100 + RECORD_OVERHEAD
        c = MemoryCache(per * 8)
        c.store(p64(1), p64(1), p64(3), b'a' * 100)
        for oid in range(2, 9):
            c.store(p64(oid), p64(1), None, b'b' * 100)
        c.loadBefore(p64(1), p64(2))
        c.store(p64(9), p64(1), None, b'c' * 100)
        self.assertIsNone(c.load(p64(2)))
        self.assertIsNotNone(c.loadBefore(p64(1), p64(2)))

    def test_an_ended_revision_counts_as_used(self):
        # Connections still reading the snapshot before a change are the
        # ones likely to ask for the revision it ended.
        per = 100 + RECORD_OVERHEAD
        c = MemoryCache(per * 4)
        for oid in range(1, 5):
            c.store(p64(oid), p64(1), None, b'x' * 100)
        c.invalidate(p64(1), p64(2))         # 2 is now the oldest
        c.store(p64(5), p64(1), None, b'x' * 100)
        self.assertIsNone(c.load(p64(2)))
        self.assertEqual(c.loadBefore(p64(1), p64(2)),
                         (b'x' * 100, p64(1), p64(2)))
        self.assertEqual(len(c), 4)

    def test_one_entry_per_current_record(self):
        # A cold load costs one entry keyed by the oid, nothing per oid
        # elsewhere (issue #21: it cost a revision object, a set per oid
        # and two more dict entries).
        c = MemoryCache(1 << 20)
        c.store(p64(1), p64(5), None, b'data')
        self.assertEqual(dict(c._records), {p64(1): (p64(5), b'data')})
        self.assertEqual(c._old, {})
        c.invalidate(p64(1), p64(7))
        self.assertEqual(dict(c._records),
                         {(p64(1), p64(5)): (p64(7), b'data')})
        self.assertEqual(c._old, {p64(1): {p64(5): p64(7)}})

    def test_zero_size_caches_nothing(self):
        c = MemoryCache(0)
        c.store(p64(1), p64(1), None, b'')
        self.assertEqual(len(c), 0)

    def test_negative_size(self):
        with self.assertRaises(ValueError):
            MemoryCache(-1)
