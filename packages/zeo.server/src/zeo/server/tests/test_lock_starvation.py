"""Silent voters cannot starve the commit lock (commit_lock, Rule 5).

A client blocked in ``vote`` sends nothing until it is answered, so while
they wait an honest voter and one that will never finish look alike. These
tests queue voters that never send anything again behind one that holds
the lock, and check that an honest committer (a raw client retrying on
ConflictError, zeo.client, the reference ZEO 6.2 client) gets through after
about one transaction timeout, not one per silent voter. Real server, real
sockets, real FileStorage.
"""

import logging
import os
import shutil
import socket
import tempfile
import time
import unittest

import transaction

import zeo.server
from zeo.protocol import Call
from zeo.server.admin import status
from zeo.server.tests.rawclient import RawClient, ServerError

Z64 = b"\0" * 8
MAXTID = b"\x7f" + b"\xff" * 7
CONFLICT = "ZODB.POSException.ConflictError"
#: Silent voters queued at once (the defect: each cost one timeout).
K = 4


def label(client):
    """How the server's log lines about *client*'s connection begin."""
    host, port = client.sock.getsockname()[:2]
    return f"{host}:{port}: "


class StarvationTestBase(unittest.TestCase):
    timeout = 1.0
    server_options: dict = {}

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-starvation-")
        self.address, self.stop = zeo.server.server(
            path=os.path.join(self.directory, "Data.fs"),
            transaction_timeout=self.timeout, **self.server_options)
        self.clients = []

    def tearDown(self):
        for client in self.clients:
            client.close()
        self.stop()
        shutil.rmtree(self.directory)

    def client(self):
        client = RawClient(self.address)
        self.clients.append(client)
        return client

    def waiting(self):
        return status(self.address)["1"]["waiting"]

    def wait_until_waiting(self, count, limit=10.0):
        deadline = time.monotonic() + limit
        while self.waiting() != count:
            self.assertLess(time.monotonic(), deadline,
                            f"the commit lock's queue never reached {count}")
            time.sleep(0.01)

    def begin(self, client, txn, oid, data=b"data"):
        client.send("tpc_begin", txn, b"", b"", {}, None, " ")
        client.send("storea", oid, Z64, data, txn)

    def silent_voters(self, count=K):
        """*count* connections that vote and never send anything again:
        the first holds the lock, the others wait. Returns them with the
        message ids of their votes."""
        oids = self.client().call("new_oids", count)
        voters = []
        for index, oid in enumerate(oids):
            voter = self.client()
            self.begin(voter, 1, oid)
            if index == 0:
                self.assertEqual(voter.call("vote", 1), [])   # holds the lock
                voters.append((voter, None))
            else:
                voters.append((voter, voter.send_call("vote", 1)))
        self.wait_until_waiting(count - 1)
        return voters

    def deaf_voter_queued(self):
        """A committer holding the lock, a voter queued behind it that stops
        reading (the server has stopped reading it too: its output is
        backed up), and an honest voter queued last."""
        holder, deaf, honest = self.client(), self.client(), self.client()
        oids = holder.call("new_oids", 4)
        holder.commit(1, [(oids[3], Z64, b"x" * (4 << 20))])
        self.begin(holder, 2, oids[0])
        holder.call("vote", 2)
        self.begin(deaf, 3, oids[1])
        deaf_vote = deaf.send_call("vote", 3)
        self.wait_until_waiting(1)
        # Replies it does not read, then requests the server no longer
        # reads (they are never looked at), until our sending blocks for
        # two seconds: the server has stopped reading, as it does only
        # while the output is backed up.
        for _ in range(8):
            deaf.send_call("loadBefore", oids[3], MAXTID)
        deaf.sock.settimeout(2.0)
        padding = deaf.connection.send(Call(10 ** 6, "ping", (b"-" * (1 << 20),)))
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                deaf.sock.sendall(padding)
            self.fail("the server kept reading a client that does not read")
        except socket.timeout:
            pass
        self.begin(honest, 4, oids[2])
        honest_vote = honest.send_call("vote", 4)
        self.wait_until_waiting(2)
        return holder, (deaf, deaf_vote), (honest, honest_vote)

    def assert_silent_voters_dropped(self, voters, logs):
        holder = voters[0][0]
        self.assertTrue(holder.wait_closed())          # timed out, as before
        for voter, vote in voters[1:]:
            # Never granted: answered with a ConflictError, connection open.
            with self.assertRaises(ServerError) as caught:
                voter.wait_reply(vote)
            self.assertEqual(caught.exception.class_name, CONFLICT)
            self.assertIn("retry", str(caught.exception.payload))
            self.assertEqual(voter.call("lastTransaction").__class__, bytes)
            # One line, naming the client.
            lines = [line for line in logs.output if label(voter) in line]
            self.assertEqual(len(lines), 1, lines)
            self.assertTrue(lines[0].startswith("WARNING:"), lines)
            self.assertIn("ConflictError", lines[0])
        self.assertEqual(self.waiting(), 0)


class SilentVoterTests(StarvationTestBase):

    def test_silent_voters_queued_together_cost_one_timeout(self):
        # Before the fix the lock went to each silent voter in turn, and
        # the honest commit waited K timeouts.
        honest = self.client()
        oid = honest.call("new_oids", 1)[0]
        with self.assertLogs("zeo.server", logging.WARNING) as logs:
            voters = self.silent_voters()
            started = time.monotonic()
            conflicts = 0
            for txn in range(10, 13):      # transaction's attempts loop
                self.begin(honest, txn, oid, b"honest")
                try:
                    honest.call("vote", txn)
                except ServerError as error:
                    self.assertEqual(error.class_name, CONFLICT)
                    conflicts += 1
                    honest.call("tpc_abort", txn)   # a no-op: already aborted
                    continue
                tid = honest.call("tpc_finish", txn)
                break
            else:
                self.fail("the honest commit never got the commit lock")
            elapsed = time.monotonic() - started
        self.assertLess(elapsed, 2.5 * self.timeout)
        self.assertEqual(conflicts, 1)
        self.assertEqual(honest.call("loadBefore", oid, MAXTID)[:2], (b"honest", tid))
        self.assert_silent_voters_dropped(voters, logs)

    def test_zeo_client_retries_and_commits(self):
        import zeo.client
        self.check_database(zeo.client.DB(self.address))

    def test_reference_zeo_client_retries_and_commits(self):
        from ZEO.ClientStorage import ClientStorage
        from ZODB import DB
        self.check_database(DB(ClientStorage(self.address, wait=1, wait_timeout=30)))

    def check_database(self, db):
        """A ZODB application committing with its attempts loop."""
        self.addCleanup(db.close)
        manager = transaction.TransactionManager()
        connection = db.open(manager)
        self.addCleanup(connection.close)
        with self.assertLogs("zeo.server", logging.WARNING) as logs:
            voters = self.silent_voters()
            started = time.monotonic()
            tries = 0
            for attempt in manager.attempts(3):
                with attempt:
                    tries += 1
                    connection.root()["answer"] = 42
            elapsed = time.monotonic() - started
        self.assertLess(elapsed, 2.5 * self.timeout)
        self.assertEqual(tries, 2)    # one ConflictError, retried
        manager.begin()
        self.assertEqual(connection.root()["answer"], 42)
        self.assert_silent_voters_dropped(voters, logs)


class WaiterTests(StarvationTestBase):
    # Long enough that nothing here is settled by a timeout.
    timeout = 60.0

    def test_a_waiter_that_disconnects_leaves_the_queue_at_once(self):
        holder, leaving, staying = self.client(), self.client(), self.client()
        oids = holder.call("new_oids", 3)
        self.begin(holder, 1, oids[0])
        holder.call("vote", 1)
        self.begin(leaving, 2, oids[1])
        leaving.send_call("vote", 2)
        self.begin(staying, 3, oids[2])
        vote = staying.send_call("vote", 3)
        self.wait_until_waiting(2)
        leaving.close()
        self.wait_until_waiting(1)
        first = holder.call("tpc_finish", 1)
        self.assertEqual(staying.wait_reply(vote), [])
        self.assertGreater(staying.call("tpc_finish", 3), first)
        with self.assertRaises(ServerError):     # aborted with its connection
            holder.call("loadBefore", oids[1], MAXTID)


class DeafVoterTests(StarvationTestBase):
    timeout = 60.0
    server_options = {"reader_stall_timeout": 0.2}

    def test_a_voter_that_stops_reading_is_passed_over(self):
        # Its turn comes while its replies have been unread for longer than
        # reader-stall-timeout: it could not be told it has the lock, and
        # would hold it until the transaction timeout.
        with self.assertLogs("zeo.server", logging.WARNING) as logs:
            holder, (deaf, deaf_vote), (honest, honest_vote) = self.deaf_voter_queued()
            holder.call("tpc_finish", 2)
            honest.sock.settimeout(10)
            self.assertEqual(honest.wait_reply(honest_vote), [])
            honest.call("tpc_finish", 4)
        deaf.sock.settimeout(30)
        with self.assertRaises(ServerError) as caught:
            deaf.wait_reply(deaf_vote)
        self.assertEqual(caught.exception.class_name, CONFLICT)
        self.assertIn("not reading", str(caught.exception.payload))
        lines = [line for line in logs.output if label(deaf) in line]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("reader-stall-timeout", lines[0])


class SlowReaderTests(StarvationTestBase):
    timeout = 60.0
    server_options = {"reader_stall_timeout": 60.0}

    def test_a_voter_that_reads_again_in_time_keeps_its_turn(self):
        # Output backed up for less than reader-stall-timeout (a client
        # reading a big blob, say) is no reason to pass a voter over.
        holder, (slow, slow_vote), (honest, honest_vote) = self.deaf_voter_queued()
        holder.call("tpc_finish", 2)
        slow.sock.settimeout(30)
        self.assertEqual(slow.wait_reply(slow_vote), [])   # reads at last
        honest.sock.settimeout(0.3)
        with self.assertRaises(socket.timeout):
            honest.wait_reply(honest_vote)      # still waiting its turn
        honest.sock.settimeout(30)
        # The slow client's stream ends in the middle of a padding frame,
        # so it cannot send tpc_finish: it leaves, and its vote is aborted.
        slow.close()
        self.assertEqual(honest.wait_reply(honest_vote), [])
        honest.call("tpc_finish", 4)


class ReaderStallTimeoutSettingTests(unittest.TestCase):

    def test_default_and_validation(self):
        from zeo.server.config import DEFAULT_READER_STALL_TIMEOUT, ServerConfig
        self.assertEqual(ServerConfig().reader_stall_timeout, DEFAULT_READER_STALL_TIMEOUT)
        self.assertIsNone(ServerConfig(reader_stall_timeout=None).reader_stall_timeout)
        for bad in (0, -1.0, float("nan"), True, "5"):
            with self.assertRaises(ValueError, msg=repr(bad)):
                ServerConfig(reader_stall_timeout=bad)

    def test_zconfig_key(self):
        from zeo.server.config import DEFAULT_READER_STALL_TIMEOUT
        from zeo.server.zconfig import load
        directory = tempfile.mkdtemp(prefix="zeo-starvation-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "zeo.conf")
        for line, expected in (("reader-stall-timeout 2.5", 2.5),
                               ("", DEFAULT_READER_STALL_TIMEOUT)):
            with open(path, "w") as f:
                f.write(f"<zeo>\n address 127.0.0.1:0\n {line}\n</zeo>\n"
                        f"<filestorage 1>\n path {directory}/Data.fs\n</filestorage>\n")
            self.assertEqual(load(path).config.reader_stall_timeout, expected)


if __name__ == "__main__":
    unittest.main()
