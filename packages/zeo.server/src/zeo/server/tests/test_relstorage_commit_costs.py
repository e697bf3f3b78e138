"""What a commit through a front costs in the database, counted (not timed).

A front over RelStorage with a PostgreSQL commit source (as in
``test_relstorage_fronts``), in this process so that RelStorage's polls
can be counted: a commit moves the snapshots of its own instance and of
the loads' instance with a rollback only (zeo.server.commit_sources,
`move_snapshot`), and RelStorage polls when an instance is next read from;
the database's notification of our own commit never reaches its committer
as an invalidation (commit_sources, rule 8). The database comes from
`zeo.server.tests.postgres.POSTGRES_LAYER`.
"""

from __future__ import annotations

import unittest
from typing import Any
from unittest import mock

from ZODB.utils import p64, z64

import zeo.server
from zeo.server.relstorage_source import source_for_storage
from zeo.server.tests.postgres import POSTGRES_LAYER, create_root, open_relstorage
from zeo.server.tests.rawclient import RawClient
from zeo.server.tests.relstorage_support import WAIT, wait_for

__all__ = ["CommitCostTests"]

MAX_TID = p64(2 ** 63 - 1)
#: A pickled PersistentMapping state.
RECORD = (b"\x80\x03cpersistent.mapping\nPersistentMapping\nq\x00.\x80\x03}q\x01"
          b"X\x04\x00\x00\x00dataq\x02}q\x03s.")
COMMITS = 5


class CommitCostTests(unittest.TestCase):
    layer = POSTGRES_LAYER

    def setUp(self) -> None:
        from relstorage.cache.storage_cache import StorageCache
        dsn = POSTGRES_LAYER.new_database()
        create_root(dsn)
        storage = open_relstorage(dsn)
        self.source = source_for_storage(storage)   # with notifications
        self.polls = 0
        poll = StorageCache.poll

        def counted(cache: Any, *args: Any) -> Any:
            self.polls += 1
            return poll(cache, *args)

        patch = mock.patch.object(StorageCache, "poll", counted)
        patch.start()
        self.addCleanup(patch.stop)
        address, stop = zeo.server.server(storages={"1": storage}, sources={"1": self.source})
        self.addCleanup(stop)
        self.committer, self.other = (RawClient(address, timeout=WAIT) for _ in range(2))
        for client in (self.committer, self.other):
            self.addCleanup(client.close)

    def commit_several(self) -> tuple[bytes, list[bytes], int]:
        """A first commit, seen by the other client's load; then `COMMITS`
        more: the object, their tids and the polls they made."""
        oid = self.committer.call("new_oids", 1)[0]
        tid = self.committer.commit(1, [(oid, z64, RECORD)])
        self.other.wait_one_way("invalidateTransaction")
        self.assertEqual(self.other.call("loadBefore", oid, MAX_TID)[1], tid)
        polls = self.polls
        tids = []
        for n in range(COMMITS):
            tid = self.committer.commit(2 + n, [(oid, tid, RECORD)])
            tids.append(tid)
        return oid, tids, self.polls - polls

    def test_commits_poll_nothing_until_a_load_which_sees_them(self):
        oid, tids, polls = self.commit_several()
        # Neither the transactions' instance nor the loads' polled...
        self.assertEqual(polls, 0)
        # ...until a load, which sees the newest commit.
        polls = self.polls
        self.assertEqual(self.other.call("loadBefore", oid, MAX_TID)[1], tids[-1])
        self.assertEqual(self.polls - polls, 1)
        self.assertEqual(self.other.call("loadBefore", oid, MAX_TID)[1], tids[-1])
        self.assertEqual(self.polls - polls, 1)

    def test_the_committer_is_not_told_of_its_own_commits(self):
        oid, tids, _ = self.commit_several()
        heard = []
        while len(heard) < COMMITS:
            heard.append(self.other.wait_one_way("invalidateTransaction").args)
        self.assertEqual(heard, [(tid, (oid,)) for tid in tids])
        # The database notified the source of each of them meanwhile.
        wait_for(lambda: self.source.notifications >= COMMITS + 1, "the notifications")
        self.assertEqual(self.committer.call("lastTransaction"), tids[-1])
        told = [message.args[0] for message in self.committer.one_way
                if message.method == "invalidateTransaction"]
        self.assertEqual(told, [])
