"""Tests of the memory of recent invalidations (zeo.client.cache.recent_invalidations)."""
import unittest

from zeo.client.cache.recent_invalidations import RecentInvalidations


class RecentInvalidationsTests(unittest.TestCase):

    def test_supersedes(self):
        r = RecentInvalidations()
        self.assertFalse(r.supersedes(1, 5))
        r.add(1, 7)
        r.add(1, 6)                      # older: ignored
        self.assertTrue(r.supersedes(1, 5))
        self.assertTrue(r.supersedes(1, 6))
        self.assertFalse(r.supersedes(1, 7))
        self.assertFalse(r.supersedes(2, 1))
        r.clear()
        self.assertFalse(r.supersedes(1, 5))

    def test_bounded_oldest_first(self):
        r = RecentInvalidations(limit=3)
        for oid in (1, 2, 3):
            r.add(oid, 10)
        r.add(1, 11)                     # 1 is now among the newest
        r.add(4, 10)
        r.add(5, 10)                     # a generation of 3: forgets 2, 3
        for oid in (2, 3):
            self.assertFalse(r.supersedes(oid, 5))
        for oid in (1, 4, 5):
            self.assertTrue(r.supersedes(oid, 5))
        self.assertTrue(r.supersedes(1, 10))

    def test_the_limit_newest_are_remembered_and_memory_is_bounded(self):
        limit = 7
        r = RecentInvalidations(limit=limit)
        for n in range(1, 200):
            r.add(n, n + 1000)
            if n > 1:
                r.add(n - 1, n + 1000)   # moves an older entry up
            newest = range(max(1, n - limit + 1), n + 1)
            for oid in newest:
                self.assertTrue(r.supersedes(oid, 999), (n, oid))
            self.assertLess(len(r._young) + len(r._old), 2 * limit)
        self.assertTrue(r.supersedes(198, 1198))     # the newer tid won
        self.assertFalse(r.supersedes(198, 1199))

    def test_bytes_tids_order_like_the_transactions(self):
        r = RecentInvalidations()
        r.add(b'\0' * 8, (256).to_bytes(8, 'big'))
        self.assertTrue(r.supersedes(b'\0' * 8, (255).to_bytes(8, 'big')))
        self.assertFalse(r.supersedes(b'\0' * 8, (256).to_bytes(8, 'big')))

    def test_limit_must_be_positive(self):
        with self.assertRaises(ValueError):
            RecentInvalidations(limit=0)
