"""Commits made elsewhere reach our clients, end to end (issue #18).

Real servers on 127.0.0.1 in threads of this process: an upstream zeo
server on a FileStorage and a middle server serving a zeo.client
ClientStorage of it (fan-out); two fronts over one MVCC storage, each with
an `IteratingSource`.
"""

import os
import shutil
import tempfile
import unittest

import ZODB
import zeo.client
from ZODB.tests.MVCCMappingStorage import MVCCMappingStorage

import zeo.server
from zeo.server.commit_sources import IteratingSource
from zeo.server.tests.relstorage_support import client_db, read, write
from zeo.server.tests.support import wait_until

WAIT = 20.0   # bounded waits, seconds


class TwoSides:
    """Helpers for a test with a client database on each side."""

    def db(self, address):
        return client_db(self, address)

    commit = staticmethod(write)
    read = staticmethod(read)

    def sees(self, db, tid, key, value):
        """*db*'s client hears of *tid* (an invalidation) and then reads
        *value*, not a stale cached state."""
        wait_until(lambda: db.storage.lastTransaction() >= tid,
                   f"the client to hear of transaction {tid.hex()}", timeout=WAIT)
        self.assertEqual(self.read(db, key), value)

    def warm(self, db, key):
        # Load the root into the client's caches, so that only an
        # invalidation can make it read the new state.
        self.read(db, key)


class FanOutTests(TwoSides, unittest.TestCase):
    """Serving a zeo.client ClientStorage of an upstream server (registerDB)."""

    def upstream_storage(self, address):
        return zeo.client.ClientStorage(address, wait_timeout=30)

    def setUp(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        upstream, stop_upstream = zeo.server.server(path=os.path.join(directory, "Data.fs"))
        self.addCleanup(stop_upstream)
        self.upstream_client = self.upstream_storage(upstream)
        middle, stop_middle = zeo.server.server(storages={"1": self.upstream_client})
        self.addCleanup(stop_middle)
        self.b = self.db(upstream)    # directly on the upstream
        self.a = self.db(middle)      # on the middle server
        self.directory, self.upstream, self.stop_upstream = directory, upstream, stop_upstream

    def test_upstream_commits_reach_the_middle_servers_clients(self):
        self.commit(self.b, n=0)
        self.sees(self.a, self.b.storage.lastTransaction(), "n", 0)
        for n in range(1, 4):
            tid = self.commit(self.b, n=n)
            self.sees(self.a, tid, "n", n)

    def test_commits_through_the_middle_reach_the_upstreams_clients(self):
        self.warm(self.b, "n")
        tid = self.commit(self.a, n=7)
        self.sees(self.b, tid, "n", 7)
        # And back: the middle announces the upstream's next commit after
        # its own, once (the upstream does not echo our own commit).
        tid = self.commit(self.b, n=8)
        self.sees(self.a, tid, "n", 8)

    def test_both_ways_interleaved(self):
        for n in range(3):
            tid = self.commit(self.a, a=n)
            self.sees(self.b, tid, "a", n)
            tid = self.commit(self.b, b=n)
            self.sees(self.a, tid, "b", n)
        self.assertEqual(self.a.storage.lastTransaction(), self.b.storage.lastTransaction())


    def test_when_the_upstream_cannot_verify_our_clients_drop_their_caches(self):
        self.commit(self.b, n=1)
        self.sees(self.a, self.b.storage.lastTransaction(), "n", 1)
        self.stop_upstream()
        # Commits the upstream's next life cannot list to the middle's
        # ClientStorage (its invalidation queue keeps one): it drops its
        # cache and tells us with invalidateCache.
        path = os.path.join(self.directory, "Data.fs")
        db = ZODB.DB(path)
        for n in (2, 3, 4):
            self.commit(db, n=n)
        db.close()
        with self.assertLogs("zeo.server.commit_sources", "WARNING") as logged:
            _, stop = zeo.server.server(path=path, port=self.upstream,
                                        invalidation_queue_size=1)
            self.addCleanup(stop)
            wait_until(lambda: self.read_fresh(self.a, "n") == 4,
                       "the middle's client to read the upstream's new state",
                       timeout=WAIT)
        self.assertIn("invalidateCache", logged.output[0])

    def read_fresh(self, db, key):
        try:
            return self.read(db, key)
        except Exception:   # disconnected while the servers reconnect
            return None


class ReferenceFanOutTests(FanOutTests):
    """Serving the reference ZEO's ClientStorage of an upstream server."""

    def upstream_storage(self, address):
        import ZEO.ClientStorage
        return ZEO.ClientStorage.ClientStorage(address, wait_timeout=30)


class MVCCFrontsTests(TwoSides, unittest.TestCase):
    """Two fronts over one MVCC storage, each polling it for the other's
    commits (ZODB's MVCCMappingStorage: instances share the data, each
    sees others' commits only when polled)."""

    def setUp(self):
        first = MVCCMappingStorage()
        # The root object exists before either front starts.
        ZODB.DB(first.new_instance()).close()
        second = first.new_instance()
        one, stop_one = zeo.server.server(
            storages={"1": first}, sources={"1": IteratingSource(first, interval=0.02)})
        self.addCleanup(stop_one)
        two, stop_two = zeo.server.server(
            storages={"1": second}, sources={"1": IteratingSource(second, interval=0.02)})
        self.addCleanup(stop_two)
        self.a = self.db(one)
        self.b = self.db(two)

    def test_each_fronts_commits_reach_the_other_fronts_clients(self):
        self.warm(self.a, "n")
        self.warm(self.b, "n")
        for n in range(3):
            tid = self.commit(self.b, n=n)
            self.sees(self.a, tid, "n", n)
            tid = self.commit(self.a, n=n + 10)
            self.sees(self.b, tid, "n", n + 10)


if __name__ == "__main__":
    unittest.main()
