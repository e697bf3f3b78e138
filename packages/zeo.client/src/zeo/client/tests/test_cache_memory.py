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

    def test_zero_size_caches_nothing(self):
        c = MemoryCache(0)
        c.store(p64(1), p64(1), None, b'')
        self.assertEqual(len(c), 0)

    def test_negative_size(self):
        with self.assertRaises(ValueError):
            MemoryCache(-1)
