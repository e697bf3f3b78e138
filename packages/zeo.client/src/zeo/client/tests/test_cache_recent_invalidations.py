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
        r.add(1, 11)                     # 1 is now the newest
        r.add(4, 10)                     # forgets 2
        self.assertFalse(r.supersedes(2, 5))
        for oid in (1, 3, 4):
            self.assertTrue(r.supersedes(oid, 5))
