"""What fuzzing the dispatch found, one regression test each, over real sockets.

Each test names the rule it holds the server to. Before the fixes:

- A client's record data was unpickled by ZODB's conflict resolution
  (a store with a stale serial, or an undo that meets a later change),
  whose unpickler imports and calls anything: hostile data ran code in
  the server.
- A client's transaction extension could be bytes, which FileStorage
  unpickles with an unrestricted unpickler in ``history``, ``undoLog``,
  ``undoInfo`` and the iterator: hostile bytes ran code in the server
  when anybody read the history.
- ``tpc_begin`` passed a client's *tid* and *status* to the storage
  unchecked: a status other than one character of " pu" was written into
  the transaction header (``"c"`` makes FileStorage drop that transaction
  and every later one when it rebuilds its index; longer strings overwrite
  header fields), a tid not after the last one broke the file's order, and
  one near the end of time made every later commit invisible to clients.
- An empty record (``storea`` with ``b""``) was written as a data record
  without a back pointer: the file no longer opened without its index.
- A ``vote`` waiting for the commit lock was never answered if its
  transaction was aborted meanwhile (``tpc_abort``, or a ``tpc_finish``
  that fails): the lock's waiter was dropped and its reply with it.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
import unittest

from ZODB.FileStorage import FileStorage
from ZODB.scripts import fstest
from ZODB.utils import p64, u64

import zeo.server
from zeo.server.tests.fuzzing import MAXTID, Z64, hostile_pickles
from zeo.server.tests.rawclient import RawClient, ServerError


class FindingTestBase(unittest.TestCase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-findings-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.path = os.path.join(self.directory, "Data.fs")
        self.marker = os.path.join(self.directory, "MARKER")
        self.address, self.stop = zeo.server.server(
            path=self.path, blob_dir=os.path.join(self.directory, "blobs"))
        self.addCleanup(self.stop)
        self.client = RawClient(self.address)
        self.addCleanup(lambda: self.client.close())
        self.committed: dict[bytes, bytes] = {}

    def commit(self, stores, txn=1, extension=None):
        client = self.client
        client.send("tpc_begin", txn, b"", b"", extension or {}, None, " ")
        for oid, serial, data in stores:
            client.send("storea", oid, serial, data, txn)
        client.call("vote", txn)
        tid = client.call("tpc_finish", txn)
        for oid, _, data in stores:
            self.committed[oid] = data
        return tid

    def reconnect(self):
        """A fresh connection after the server closed this one (a refusal)."""
        self.client.close()
        self.client = RawClient(self.address)

    def new_oid(self):
        return self.client.call("new_oids", 1)[0]

    def assert_nothing_ran(self):
        self.assertFalse(os.path.exists(self.marker), "a hostile pickle ran in the server")

    def assert_file_sound(self):
        """Stop the server; the file passes fstest and, reopened without its
        index (as after a crash), still holds every normal commit."""
        self.client.close()
        self.stop()
        fstest.check(self.path)
        os.remove(self.path + ".index")
        storage = FileStorage(self.path, read_only=True)
        try:
            for oid, data in self.committed.items():
                self.assertEqual(storage.load(oid)[0], data)
        finally:
            storage.close()


class ConflictResolutionPickleTests(FindingTestBase):

    def test_a_hostile_record_in_a_conflicting_store_runs_nothing(self):
        for hostile in hostile_pickles(self.marker):
            oid = self.new_oid()
            self.commit([(oid, Z64, b"current")])
            with self.assertRaises(ServerError):
                self.commit([(oid, Z64, hostile)], txn=2)   # stale serial: conflict
            self.assert_nothing_ran()

    def test_undoing_over_a_hostile_record_runs_nothing(self):
        oid = self.new_oid()
        first = self.commit([(oid, Z64, hostile_pickles(self.marker)[0])])
        second = self.commit([(oid, first, b"second")])
        self.commit([(oid, second, b"third")])
        self.client.send("tpc_begin", 4, b"", b"", {}, None, " ")
        self.client.send("undoa", base64.encodebytes(second).rstrip(), 4)
        with self.assertRaises(ServerError):
            self.client.call("vote", 4)   # undoing "second" restores "first" over "third"
        self.assert_nothing_ran()


class ExtensionPickleTests(FindingTestBase):

    def test_hostile_extension_bytes_run_nothing_when_the_history_is_read(self):
        oid = self.new_oid()
        try:
            self.commit([(oid, Z64, b"data")], extension=hostile_pickles(self.marker)[0])
        except (ServerError, ConnectionError):
            self.reconnect()   # refusing them is fine
            self.commit([(oid, Z64, b"data")])
        for method, args in [("history", (oid, 1)), ("undoLog", (0, 10)),
                             ("undoInfo", (0, 10, None))]:
            try:
                self.client.call(method, *args)
            except ServerError:
                pass
            self.assert_nothing_ran()
        iid = self.client.call("iterator_start", None, None)
        try:
            while self.client.call("iterator_next", iid) is not None:
                pass
        except ServerError:
            pass
        self.assert_nothing_ran()


class TpcBeginTidTests(FindingTestBase):

    def commit_with(self, tid, status):
        """A restore-style transaction with a client-chosen tid and status;
        the server may refuse it, but must not damage the file."""
        oid = self.new_oid()
        self.client.send("tpc_begin", 2, b"", b"", {}, tid, status)
        self.client.send("storea", oid, Z64, b"restored", 2)
        try:
            self.client.call("vote", 2)
            self.client.call("tpc_finish", 2)
        except (ServerError, ConnectionError):
            self.reconnect()
        else:
            self.committed[oid] = b"restored"

    def later(self, tid, by=1):
        return p64(u64(tid) + by)

    def test_a_checkpoint_status_loses_no_transaction(self):
        last = self.commit([(self.new_oid(), Z64, b"before")])
        self.commit_with(self.later(last), "c")
        self.commit([(self.new_oid(), Z64, b"after")], txn=3)
        self.assert_file_sound()

    def test_a_long_status_damages_no_header(self):
        last = self.commit([(self.new_oid(), Z64, b"before")])
        self.commit_with(self.later(last), "xyz")
        self.assert_file_sound()

    def test_a_status_of_the_wrong_type_is_refused(self):
        last = self.commit([(self.new_oid(), Z64, b"before")])
        self.commit_with(self.later(last), 5)
        self.commit([(self.new_oid(), Z64, b"after")], txn=3)
        self.assert_file_sound()

    def test_a_tid_at_the_end_of_time_is_refused(self):
        # Else the next commit gets the last tid there is, and loadBefore(oid,
        # maxtid), how every client reads current data, no longer sees it.
        self.commit_with(p64(u64(MAXTID) - 1), " ")
        oid = self.new_oid()
        self.commit([(oid, Z64, b"after")], txn=3)
        self.assertEqual(self.client.call("loadBefore", oid, MAXTID)[0], b"after")
        self.assert_file_sound()

    def test_a_tid_before_the_last_one_is_refused(self):
        self.commit([(self.new_oid(), Z64, b"before")])
        self.commit_with(p64(1), " ")
        self.commit([(self.new_oid(), Z64, b"after")], txn=3)
        self.assertEqual(self.client.call("loadBefore", list(self.committed)[-1], MAXTID)[0],
                         b"after")
        self.assert_file_sound()


class EmptyRecordTests(FindingTestBase):

    def test_an_empty_record_leaves_a_file_that_opens(self):
        self.commit([(self.new_oid(), Z64, b"before")])
        oid = self.new_oid()
        try:
            self.commit([(oid, Z64, b"")], txn=2)
        except (ServerError, ConnectionError):
            self.reconnect()   # refusing it is fine
        self.commit([(self.new_oid(), Z64, b"after")], txn=3)
        self.assert_file_sound()


class VoteUnansweredTests(FindingTestBase):

    def test_a_waiting_vote_is_answered_when_its_transaction_is_aborted(self):
        holder = self.client
        waiter = RawClient(self.address, timeout=5)
        self.addCleanup(waiter.close)
        for client in (holder, waiter):
            client.send("tpc_begin", 1, b"", b"", {}, None, " ")
            client.send("storea", self.new_oid(), Z64, b"x", 1)
        holder.call("vote", 1)                  # holds the commit lock
        vote = waiter.send_call("vote", 1)      # waits for it
        self.assertIsNone(waiter.call("tpc_abort", 1))
        holder.call("tpc_finish", 1)
        try:
            waiter.wait_reply(vote)
        except ServerError:
            pass   # an error is an answer
        self.assertIsNone(waiter.call("ping"))


class IdentifierTests(FindingTestBase):
    """Oids, tids and iterator bounds are checked before the storage sees
    them: a clear TypeError, not FileStorage's AssertionError (nor an
    iterator file left open)."""

    def test_wrong_identifiers_get_a_type_error(self):
        for method, args in [("loadBefore", (b"short", MAXTID)),
                             ("loadBefore", (Z64, "a tid as text")),
                             ("loadSerial", (5, Z64)),
                             ("history", (None,)),
                             ("iterator_start", ("start", None)),
                             ("iterator_start", (None, b"\0" * 9))]:
            with self.assertRaises(ServerError) as caught:
                self.client.call(method, *args)
            self.assertEqual(caught.exception.args[0], "builtins.TypeError", (method, args))
        self.assertIsNone(self.client.call("ping"))


if __name__ == "__main__":
    unittest.main()
