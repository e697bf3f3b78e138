"""A front whose vote waits in PostgreSQL keeps serving (issue #18, item 2).

Between its vote and its finish, a RelStorage transaction of front A holds
PostgreSQL advisory locks: one per object it changes (and, while it
finishes, RelStorage's commit lock, -1). A transaction of front B changing
the same object waits for that lock inside ``tpc_vote``. Here an outside
connection takes the object's lock as A's transaction would, and a client
of front B (a ``runzeo`` subprocess with ``commit-source postgresql``)
votes a change to that object; meanwhile another client of B must get its
``ping`` and ``loadBefore`` answered. When the vote ran on B's event loop,
B answered nobody until the lock was gone. A transaction timeout during
that wait closes the voter's connection and, once the database lets the
vote go, leaves nothing locked: B's next commit works.
"""

from __future__ import annotations

import shutil
import tempfile
import unittest
from typing import Any

from ZODB.utils import p64, z64

from zeo.server.admin import ServerUnreachable
from zeo.server.tests.postgres import POSTGRES_LAYER, create_root, relstorage_section
from zeo.server.tests.rawclient import RawClient
from zeo.server.tests.support import ServerProcess, wait_until

__all__ = ["StalledVoteTests"]

MAX_TID = p64(2 ** 63 - 1)
#: Bound on each wait for front B (a stalled front fails the test).
WAIT = 5.0
#: RelStorage's own bound on a lock wait, well above the tests' waits.
LOCK_TIMEOUT = "30"


class StalledVoteTests(unittest.TestCase):
    layer = POSTGRES_LAYER

    def setUp(self) -> None:
        self.dsn = POSTGRES_LAYER.new_database()
        create_root(self.dsn)

    def front(self, **zeo_options: str) -> ServerProcess:
        directory = tempfile.mkdtemp(prefix="zeo-front-")
        self.addCleanup(shutil.rmtree, directory, True)
        server = ServerProcess(
            directory, zeo_options={"commit-source": "postgresql", **zeo_options},
            storage=relstorage_section(self.dsn, commit_lock_timeout=LOCK_TIMEOUT))
        self.addCleanup(server.stop)
        return server

    def client(self, server: ServerProcess) -> RawClient:
        client = RawClient(server.address, timeout=WAIT)
        self.addCleanup(client.close)
        return client

    def connect(self) -> Any:
        import psycopg2

        connection = psycopg2.connect(self.dsn)
        self.addCleanup(connection.close)
        return connection

    def hold_object_lock(self, oid: bytes) -> Any:
        """An open transaction holding *oid*'s lock, as front A's voted
        transaction changing it does (rolled back to let it go)."""
        connection = self.connect()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (int.from_bytes(oid, "big"),))
        return connection

    def waiting_for_locks(self) -> int:
        with self.connect_autocommit().cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
            return int(cursor.fetchone()[0])

    def connect_autocommit(self) -> Any:
        if not hasattr(self, "_observer"):
            self._observer = self.connect()
            self._observer.autocommit = True
        return self._observer

    def lock_is_free(self, key: int) -> bool:
        """Nobody holds advisory lock *key* (RelStorage's object or commit lock)."""
        with self.connect_autocommit().cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", (key,))
            free = bool(cursor.fetchone()[0])
            if free:
                cursor.execute("SELECT pg_advisory_unlock(%s)", (key,))
        return free

    def vote_on_root(self, client: RawClient, txn: int) -> tuple[int, bytes, bytes]:
        """Send a transaction rewriting the root and its vote: (the vote's
        message id, the root's serial, its data)."""
        data, serial, _ = client.call("loadBefore", z64, MAX_TID)
        client.send("tpc_begin", txn, b"", b"", {}, None, " ")
        client.send("storea", z64, serial, data, txn)
        return client.send_call("vote", txn), serial, data

    def assert_served(self, client: RawClient, serial: bytes) -> None:
        try:
            self.assertIsNone(client.call("ping"))
            self.assertEqual(client.call("loadBefore", z64, MAX_TID)[1], serial)
        except ServerUnreachable as error:
            self.fail(f"front B answered nobody while a vote waited in the database: {error}")

    def test_others_are_served_while_a_vote_waits_in_the_database(self):
        front = self.front()
        voter, other = self.client(front), self.client(front)
        lock = self.hold_object_lock(z64)
        vote, serial, _ = self.vote_on_root(voter, 1)
        wait_until(lambda: self.waiting_for_locks() > 0, "the vote waiting in PostgreSQL",
                   timeout=WAIT)
        self.assert_served(other, serial)
        self.assertGreater(self.waiting_for_locks(), 0)   # still waiting
        lock.rollback()   # front A's transaction ends
        self.assertEqual(voter.wait_reply(vote), [])
        tid = voter.call("tpc_finish", 1)
        # Told only once B's loads see it.
        self.assertEqual(other.wait_one_way("invalidateTransaction").args[0], tid)
        self.assertEqual(other.call("lastTransaction"), tid)
        self.assertEqual(other.call("loadBefore", z64, MAX_TID)[1], tid)
        after = p64(int.from_bytes(tid, "big") + 1)
        self.assertEqual(other.call("loadBefore", z64, after)[1:], (tid, None))

    def test_a_timeout_while_the_vote_waits_frees_everything(self):
        front = self.front(**{"transaction-timeout": "1"})
        voter, other = self.client(front), self.client(front)
        lock = self.hold_object_lock(z64)
        _, serial, data = self.vote_on_root(voter, 1)
        wait_until(lambda: self.waiting_for_locks() > 0, "the vote waiting in PostgreSQL",
                   timeout=WAIT)
        self.assert_served(other, serial)
        self.assertTrue(voter.wait_closed())      # the transaction timeout
        self.assert_served(other, serial)
        lock.rollback()
        # B's thread gets the lock, finishes its vote and aborts it: nothing
        # stays locked, and B commits again.
        wait_until(lambda: self.waiting_for_locks() == 0 and self.lock_is_free(0)
                   and self.lock_is_free(-1), "nothing locked in PostgreSQL", timeout=WAIT)
        tid = other.commit(2, [(z64, serial, data)])
        self.assertEqual(other.call("loadBefore", z64, MAX_TID)[1], tid)
        self.assertTrue(self.lock_is_free(0))
