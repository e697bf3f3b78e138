"""Session behaviour over real sockets: locks, invalidations, verification.

Each test runs a real server on 127.0.0.1 with a real FileStorage and
talks to it with `RawClient`s, so it sees exactly what goes on the wire.
"""

import os
import shutil
import socket
import tempfile
import time
import unittest

import zeo.server
from zeo.server.tests.rawclient import RawClient, ServerError

Z64 = b"\0" * 8


class SessionTestBase(unittest.TestCase):
    server_options: dict = {}

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-session-")
        self.address, self.stop = zeo.server.server(
            path=os.path.join(self.directory, "Data.fs"), **self.server_options)
        self.clients = []

    def tearDown(self):
        for client in self.clients:
            client.close()
        self.stop()
        shutil.rmtree(self.directory)

    def client(self, **options):
        client = RawClient(self.address, **options)
        self.clients.append(client)
        return client

    def new_oid(self, client):
        return client.call("new_oids", 1)[0]


class CommitTests(SessionTestBase):

    def test_invalidations_reach_every_other_client_in_commit_order(self):
        committer, watcher1, watcher2 = self.client(), self.client(), self.client()
        oid = self.new_oid(committer)
        other = self.new_oid(committer)
        tid1 = committer.commit(1, [(oid, Z64, b"one")])
        tid2 = committer.commit(2, [(oid, tid1, b"two"), (other, Z64, b"new")])
        self.assertLess(tid1, tid2)
        for watcher in (watcher1, watcher2):
            first = watcher.wait_one_way("invalidateTransaction")
            second = watcher.wait_one_way("invalidateTransaction")
            self.assertEqual(first.args, (tid1, (oid,)))
            # New objects are invalidated too.
            self.assertEqual(second.args, (tid2, tuple(sorted([oid, other]))))
        # The committer gets info, never its own invalidations.
        self.assertEqual(committer.wait_one_way("info").args[0]["length"], 1)
        self.assertEqual(committer.wait_one_way("info").args[0]["length"], 2)
        self.assertFalse([m for m in committer.one_way if m.method == "invalidateTransaction"])

    def test_deletions_are_invalidated(self):
        # The reference forgets deleteObject oids; other clients then keep
        # serving a deleted object from their caches.
        committer, watcher = self.client(), self.client()
        oid = self.new_oid(committer)
        tid1 = committer.commit(1, [(oid, Z64, b"doomed")])
        watcher.wait_one_way("invalidateTransaction")
        committer.send("tpc_begin", 2, b"", b"", {}, None, " ")
        committer.send("deleteObject", oid, tid1, 2)
        committer.call("vote", 2)
        tid2 = committer.call("tpc_finish", 2)
        self.assertEqual(watcher.wait_one_way("invalidateTransaction").args, (tid2, (oid,)))

    def test_a_waiting_voter_is_answered_after_the_holder_finishes(self):
        first, second = self.client(), self.client()
        oid1, oid2 = self.new_oid(first), self.new_oid(first)
        first.send("tpc_begin", 1, b"", b"", {}, None, " ")
        first.send("storea", oid1, Z64, b"a", 1)
        self.assertEqual(first.call("vote", 1), [])
        second.send("tpc_begin", 7, b"", b"", {}, None, " ")
        second.send("storea", oid2, Z64, b"b", 7)
        vote = second.send_call("vote", 7)
        second.sock.settimeout(0.3)
        with self.assertRaises(socket.timeout):
            second.wait_reply(vote)      # held back: the lock is taken
        second.sock.settimeout(10)
        tid1 = first.call("tpc_finish", 1)
        self.assertEqual(second.wait_reply(vote), [])
        # The holder's invalidation arrived before the delayed vote reply.
        self.assertEqual(second.wait_one_way("invalidateTransaction").args[0], tid1)
        self.assertGreater(second.call("tpc_finish", 7), tid1)

    def test_a_disconnected_committer_frees_the_lock_at_once(self):
        first, second = self.client(), self.client()
        oid1, oid2 = self.new_oid(first), self.new_oid(first)
        first.send("tpc_begin", 1, b"", b"", {}, None, " ")
        first.send("storea", oid1, Z64, b"a", 1)
        first.call("vote", 1)
        first.close()
        started = time.monotonic()
        self.assertIsInstance(second.commit(2, [(oid2, Z64, b"b")]), bytes)
        self.assertLess(time.monotonic() - started, 5)
        # Nothing of the aborted transaction was committed.
        with self.assertRaises(ServerError) as caught:
            second.call("loadBefore", oid1, b"\x7f" + b"\xff" * 7)
        self.assertEqual(caught.exception.class_name, "ZODB.POSException.POSKeyError")

    def test_abort_frees_the_lock(self):
        first, second = self.client(), self.client()
        oid = self.new_oid(first)
        first.send("tpc_begin", 1, b"", b"", {}, None, " ")
        first.send("storea", oid, Z64, b"a", 1)
        first.call("vote", 1)
        self.assertIsNone(first.call("tpc_abort", 1))
        self.assertIsNone(first.call("tpc_abort", 1))   # again: a silent no-op
        self.assertIsInstance(second.commit(2, [(oid, Z64, b"b")]), bytes)


class TimeoutTests(SessionTestBase):
    server_options = {"transaction_timeout": 0.5}

    def test_a_timed_out_committer_is_aborted_and_the_waiting_voter_retries(self):
        # The reference closes such a client but keeps the lock forever.
        stalled, waiting = self.client(), self.client()
        oid1, oid2 = self.new_oid(stalled), self.new_oid(stalled)
        stalled.send("tpc_begin", 1, b"", b"", {}, None, " ")
        stalled.send("storea", oid1, Z64, b"a", 1)
        stalled.call("vote", 1)      # holds the lock and never finishes
        started = time.monotonic()
        # The timeout empties the lock's queue (commit_lock, Rule 5): the
        # waiting vote is answered with a ConflictError, to be retried.
        with self.assertRaises(ServerError) as caught:
            waiting.commit(2, [(oid2, Z64, b"b")])
        self.assertEqual(caught.exception.class_name, "ZODB.POSException.ConflictError")
        self.assertGreater(time.monotonic() - started, 0.3)
        self.assertIsNone(waiting.call("tpc_abort", 2))   # already aborted
        self.assertIsInstance(waiting.commit(3, [(oid2, Z64, b"b")]), bytes)
        self.assertTrue(stalled.wait_closed())


class VerificationTests(SessionTestBase):
    server_options = {"invalidation_queue_size": 2, "invalidation_age": 3600.0}

    def test_get_invalidations_from_the_queue(self):
        client = self.client()
        oids = [self.new_oid(client) for _ in range(3)]
        tids = [client.commit(i, [(oid, Z64, b"x")]) for i, oid in enumerate(oids)]
        self.assertEqual(client.call("getInvalidations", tids[1]), (tids[2], (oids[2],)))
        self.assertEqual(client.call("getInvalidations", tids[2]), (tids[2], ()))

    def test_get_invalidations_by_iteration_when_the_queue_is_too_short(self):
        client = self.client()
        oids = [self.new_oid(client) for _ in range(4)]
        tids = [client.commit(i, [(oid, Z64, b"x")]) for i, oid in enumerate(oids)]
        latest, changed = client.call("getInvalidations", tids[0])
        self.assertEqual(latest, tids[-1])
        self.assertEqual(sorted(changed), sorted(oids[1:]))


class RegistrationTests(SessionTestBase):

    def test_calls_before_register_close_the_connection(self):
        client = self.client(register=None)
        client.send_call("loadBefore", Z64, Z64)
        self.assertTrue(client.wait_closed())

    def test_register_errors(self):
        client = self.client(register=None)
        with self.assertRaises(ServerError) as caught:
            client.call("register", "nosuch", False)
        self.assertEqual(caught.exception.class_name, "builtins.ValueError")
        client.call("register", "1", False)
        with self.assertRaises(ServerError):
            client.call("register", "1", False)

    def test_a_read_only_connection_cannot_write_or_undo_but_may_pack(self):
        client = self.client(read_only=True)
        with self.assertRaises(ServerError) as caught:
            client.call("new_oids")
        self.assertEqual(caught.exception.class_name, "ZODB.POSException.ReadOnlyError")
        # As the reference allows (its zeopack connects read-only).
        self.assertIsNone(client.call("pack", time.time()))
        client.send("tpc_begin", 1, b"", b"", {}, None, " ")
        self.assertTrue(client.wait_closed())



class RestoreTests(SessionTestBase):
    """``restorea`` writes a record with the client's serial as its tid, so
    the serial must be the tid the transaction was begun with."""

    def restore(self, client, oid, serial, tid, txn=1):
        client.send("tpc_begin", txn, b"", b"", {}, tid, "p")
        client.send("restorea", oid, serial, b"restored", None, txn)
        client.call("vote", txn)
        return client.call("tpc_finish", txn)

    def test_a_restore_in_its_own_transaction(self):
        client = self.client()
        oid = self.new_oid(client)
        tid = client.call("lastTransaction")
        tid = (int.from_bytes(tid, "big") + 1).to_bytes(8, "big")
        self.assertEqual(self.restore(client, oid, tid, tid), tid)
        self.assertEqual(client.call("loadBefore", oid, b"\xff" * 8),
                         (b"restored", tid, None))

    def test_a_restore_with_another_serial_or_no_tid_is_refused(self):
        writer = self.client()
        oid = self.new_oid(writer)
        last = writer.call("lastTransaction")
        tid = (int.from_bytes(last, "big") + 1).to_bytes(8, "big")
        for serial, begun_with in ((Z64, tid), (tid, None)):
            with self.subTest(serial=serial, tid=begun_with):
                client = self.client()
                client.send("tpc_begin", 1, b"", b"", {}, begun_with, "p")
                client.send("restorea", oid, serial, b"bad", None, 1)
                # The server closed the connection instead of voting.
                with self.assertRaises(ConnectionError):
                    client.call("vote", 1)
                client.close()
        # Nothing was committed, and the server still serves.
        self.assertEqual(writer.call("lastTransaction"), last)
        with self.assertRaises(ServerError) as caught:
            writer.call("loadBefore", oid, b"\xff" * 8)
        self.assertEqual(caught.exception.class_name, "ZODB.POSException.POSKeyError")
        self.assertEqual(self.restore(writer, oid, tid, tid), tid)

if __name__ == "__main__":
    unittest.main()
