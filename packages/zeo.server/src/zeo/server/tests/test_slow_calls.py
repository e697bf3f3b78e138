"""Storage calls whose cost grows with the database run off the event loop.

Real in-process servers on 127.0.0.1 with a real FileStorage. The storage
used here lets the test hold a slow call inside the storage (a "gate"), so
"another client is answered while the slow call runs" is checked without
measuring any speed: before the fix, the gated call held the event loop
and the other client's answer never came until the gate opened.
"""

import os
import shutil
import socket
import tempfile
import threading
import time
import unittest

from ZODB.FileStorage import FileStorage
from ZODB.MappingStorage import MappingStorage
from ZODB.tests.MinPO import MinPO
from ZODB.tests.StorageTestBase import zodb_pickle

import zeo.server
from zeo.server.config import ServerConfig
from zeo.server.iterators import IteratorBudget, IteratorRegistry, TooManyIterators
from zeo.server.results import Delayed
from zeo.server.served_storage import LoopHooks, ServedStorage
from zeo.server.slow_calls import ConnectionClosedError, SlowCalls, TooManyWaitingCalls
from zeo.server.tests.rawclient import RawClient, ServerError
from zeo.server.tests.support import SlowPackStorage, commit_directly

Z64 = b"\0" * 8
MAXTID = b"\x7f" + b"\xff" * 7
#: How long a test waits for what must happen; never reached when it works.
PATIENCE = 5.0
#: An undoInfo specification the gated storage holds until the gate opens.
GATED = {"gate": True}


class GatedFileStorage(FileStorage):
    """A FileStorage whose slow calls can be held inside the storage."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)
        self.gate_iterators = False
        self.iterators_made = []
        self.packs = 0

    def _hold(self):
        self.entered.release()
        self.gate.wait(60)

    def undoInfo(self, first=0, last=-20, specification=None):
        if specification == GATED:
            self._hold()
            specification = {"never": "matches"}
        return super().undoInfo(first, last, specification)

    def iterator(self, start=None, stop=None):
        if self.gate_iterators:
            self._hold()
        iterator = super().iterator(start, stop)
        self.iterators_made.append(iterator)
        return iterator

    def pack(self, t, referencesf, gc=None):
        self.packs += 1
        self._hold()


class SlowCallTestBase(unittest.TestCase):
    server_options: dict = {}
    transactions = 300

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-slow-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.storage = GatedFileStorage(os.path.join(self.directory, "Data.fs"))
        self.last_tid = commit_directly(self.storage, self.transactions)
        self.address, stop = zeo.server.server(
            storages={"1": self.storage}, **self.server_options)
        self.addCleanup(stop)
        self.addCleanup(self.storage.gate.set)   # before stop: nothing stays held

    def client(self, **options):
        client = RawClient(self.address, **options)
        self.addCleanup(client.close)
        return client

    def wait_entered(self):
        self.assertTrue(self.storage.entered.acquire(timeout=PATIENCE),
                        "the gated call never reached the storage")

    def answered_within(self, client, msgid, seconds=PATIENCE):
        """The reply to *msgid*, or fail if none comes in *seconds*."""
        client.sock.settimeout(seconds)
        try:
            return client.wait_reply(msgid)
        except socket.timeout:
            self.fail(f"no answer within {seconds} s: the event loop is held")
        finally:
            client.sock.settimeout(30)


class OffTheLoopTests(SlowCallTestBase):

    def test_other_clients_are_answered_while_an_undo_search_runs(self):
        reader, other = self.client(read_only=True), self.client(read_only=True)
        slow = reader.send_call("undoInfo", 0, -10 ** 9, GATED)
        self.wait_entered()
        self.assertIsNone(self.answered_within(other, other.send_call("ping")))
        data, tid, end = self.answered_within(other, other.send_call("loadBefore", Z64, MAXTID))
        self.assertEqual((tid, end), (self.last_tid, None))
        # The reader's own fast calls are answered too, before its slow one.
        self.assertIsNone(self.answered_within(reader, reader.send_call("ping")))
        self.assertNotIn(slow, reader.replies)
        self.storage.gate.set()
        self.assertEqual(self.answered_within(reader, slow), [])   # nothing matched

    def test_one_connection_cannot_occupy_every_worker(self):
        greedy, other = self.client(read_only=True), self.client(read_only=True)
        workers = ServerConfig().worker_threads
        held = [greedy.send_call("undoInfo", 0, -20, GATED) for _ in range(workers + 1)]
        self.wait_entered()
        # More calls than workers, but the greedy connection's other calls
        # wait in its own lane: the other workers are free for somebody else.
        log = self.answered_within(other, other.send_call("undoLog", 0, -3))
        self.assertEqual(len(log), 3)
        history = self.answered_within(other, other.send_call("history", Z64, 2))
        self.assertEqual([entry["tid"] for entry in history][:1], [self.last_tid])
        self.storage.gate.set()
        for msgid in held:
            self.assertEqual(self.answered_within(greedy, msgid), [])

    def test_an_iterator_made_after_its_connection_closed_is_closed(self):
        # Checked on the iterator itself rather than by counting this
        # process's descriptors, which other tests' threads and garbage
        # change meanwhile.
        self.storage.gate_iterators = True
        client = RawClient(self.address, read_only=True)
        client.send_call("iterator_start", self.last_tid, None)
        self.wait_entered()
        client.close()
        time.sleep(0.1)   # the server sees the connection go first
        self.storage.gate_iterators = False
        self.storage.gate.set()

        def closed():
            made = self.storage.iterators_made
            return bool(made) and made[0]._file is None

        deadline = time.monotonic() + PATIENCE
        while not closed() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertTrue(self.storage.iterators_made, "the iterator was never made")
        self.assertTrue(closed(), "the iterator made for a closed connection was left open")
        # Its slot in the server-wide count was given back too.
        other = self.client(read_only=True)
        iid = other.call("iterator_start", None, None)
        self.assertEqual(len(other.call("iterator_next", iid)), 5)


class InvalidationsByIterationTests(SlowCallTestBase):
    server_options = {"invalidation_queue_size": 1, "invalidation_age": 3600.0}
    transactions = 20

    def test_iterating_runs_off_the_loop_and_counts_commits_made_meanwhile(self):
        verifier, writer = self.client(read_only=True), self.client()
        old = verifier.call("history", Z64, 20)[-1]["tid"]
        self.storage.gate_iterators = True
        pending = verifier.send_call("getInvalidations", old)
        self.wait_entered()
        # Meanwhile the server serves others, and a commit happens.
        new_oid = self.answered_within(writer, writer.send_call("new_oids", 1))[0]
        tid = writer.commit(1, [(new_oid, Z64, zodb_pickle(MinPO("new")))])
        self.storage.gate_iterators = False
        self.storage.gate.set()
        self.assertEqual(self.answered_within(verifier, pending),
                         (tid, tuple(sorted([Z64, new_oid]))))
        self.assertEqual(verifier.wait_one_way("invalidateTransaction").args,
                         (tid, (new_oid,)))


class RangeCapTests(SlowCallTestBase):
    server_options = {"max_history_entries": 50}
    transactions = 120

    def test_undo_log_and_info_return_at_most_max_history_entries(self):
        client = self.client(read_only=True)
        self.assertEqual(len(client.call("undoLog", 0, -10 ** 9)), 50)
        self.assertEqual(len(client.call("undoLog", 10, 10 ** 9)), 50)
        self.assertEqual(len(client.call("undoInfo", 0, -10 ** 9, None)), 50)
        self.assertEqual(len(client.call("undoLog", 0, -20)), 20)
        newest = client.call("undoLog", 0, -1)[0]
        self.assertEqual(newest["id"], client.call("undoLog", 0, 1)[0]["id"])

    def test_history_returns_at_most_max_history_entries(self):
        client = self.client(read_only=True)
        history = client.call("history", Z64, 10 ** 9)
        self.assertEqual(len(history), 50)
        self.assertEqual(history[0]["tid"], self.last_tid)
        self.assertEqual(client.call("history", Z64, 0), [])
        with self.assertRaises(ServerError) as caught:
            client.call("history", Z64, "all")
        self.assertEqual(caught.exception.class_name, "builtins.TypeError")

    def test_load_serial_of_an_old_revision(self):
        client = self.client(read_only=True)
        oldest = client.call("history", Z64, 50)[-1]["tid"]
        self.assertEqual(client.call("loadSerial", Z64, oldest),
                         self.storage.loadSerial(Z64, oldest))


class WaitingCallLimitTests(SlowCallTestBase):
    server_options = {"max_waiting_calls": 2}
    transactions = 5

    def test_calls_beyond_the_waiting_limit_are_refused_with_an_error(self):
        client = self.client(read_only=True)
        held = [client.send_call("undoInfo", 0, -20, GATED) for _ in range(3)]
        self.wait_entered()
        with self.assertRaises(ServerError) as caught:
            client.call("undoLog", 0, -20)
        self.assertIn("max-waiting-calls", str(caught.exception.payload))
        self.storage.gate.set()
        for msgid in held:
            self.assertEqual(client.wait_reply(msgid), [])
        self.assertEqual(len(client.call("undoLog", 0, -20)), 5)


class PackTests(SlowCallTestBase):
    transactions = 5

    def test_packs_do_not_queue_and_closing_waits_for_one(self):
        client = self.client()
        # As many as a client may send; only the first one runs.
        for _ in range(20):
            self.assertIsNone(client.call("pack", time.time(), False))
        self.wait_entered()
        with self.assertRaises(ServerError) as caught:
            self.answered_within(client, client.send_call("pack", time.time(), True))
        self.assertEqual(caught.exception.class_name, "ZODB.POSException.StorageError")
        self.assertIn("Already packing", str(caught.exception.payload))
        self.storage.gate.set()
        # When it ends, a new pack may start.
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                client.call("pack", time.time(), True)
                break
            except ServerError:
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.02)
        self.assertEqual(self.storage.packs, 2)


class StopDuringPacksTests(unittest.TestCase):

    def test_stopping_after_many_packs_waits_for_the_running_one_only(self):
        storage = SlowPackStorage()
        packs = []
        original = storage.pack
        storage.pack = lambda *args, **kw: (packs.append(1), original(*args, **kw))
        address, stop = zeo.server.server(storages={"1": storage})
        self.addCleanup(stop)
        client = RawClient(address)
        self.addCleanup(client.close)
        for _ in range(20):
            client.call("pack", time.time(), False)
        self.assertTrue(storage.packing.wait(PATIENCE))
        stopping = threading.Thread(target=stop)
        stopping.start()
        storage.may_finish.set()
        stopping.join(30)
        self.assertFalse(stopping.is_alive())
        self.assertEqual(len(packs), 1)
        self.assertEqual(storage.events, ["packed", "closed"])


class LaneTests(unittest.TestCase):
    """`SlowCalls` without threads: the "thread" is settled by the test."""

    def setUp(self):
        self.started = []   # (function, Delayed) handed to the "thread"

        def run_in_thread(function):
            self.started.append((function, Delayed()))
            return self.started[-1][1]

        self.lane = SlowCalls(run_in_thread, max_waiting=2)

    def finish(self, index):
        function, delayed = self.started[index]
        delayed.resolve(function())

    def test_one_call_at_a_time_in_order(self):
        answers = []
        for n in range(3):
            self.lane.submit(lambda n=n: n).add_callback(lambda e, v: answers.append(v))
        self.assertEqual(len(self.started), 1)
        self.assertEqual(len(self.lane), 3)
        with self.assertRaises(TooManyWaitingCalls):
            self.lane.submit(lambda: 3)
        for index in range(3):
            self.finish(index)
        self.assertEqual(answers, [0, 1, 2])
        self.assertEqual(len(self.lane), 0)

    def test_closing_drops_the_waiting_calls(self):
        running = self.lane.submit(lambda: "ran")
        waiting = self.lane.submit(lambda: "never")
        outcomes = []
        waiting.add_callback(lambda e, v: outcomes.append(type(e)))
        self.lane.close()
        self.assertEqual(outcomes, [ConnectionClosedError])
        self.finish(0)   # the running one still settles (nobody reads it)
        running.add_callback(lambda e, v: outcomes.append(v))
        self.assertEqual(outcomes, [ConnectionClosedError, "ran"])
        self.assertEqual(len(self.started), 1)
        with self.assertRaises(ConnectionClosedError):
            self.lane.submit(lambda: None)

    def test_a_refused_thread_fails_the_call_and_the_lane_goes_on(self):
        def refuse(function):
            raise RuntimeError("the server is closing")

        lane = SlowCalls(refuse, max_waiting=2)
        errors = []
        lane.submit(lambda: None).add_callback(lambda e, v: errors.append(str(e)))
        self.assertEqual(errors, ["the server is closing"])
        self.assertFalse(lane.running)


class IteratorBudgetTests(unittest.TestCase):

    def test_the_budget_is_shared_and_given_back(self):
        budget = IteratorBudget(2)
        first, second = IteratorRegistry(5, budget), IteratorRegistry(5, budget)
        storage = MappingStorage()
        first.start(storage, None, None)
        iid = second.reserve()
        with self.assertRaises(TooManyIterators) as caught:
            first.start(storage, None, None)
        self.assertIn("max-server-iterators", str(caught.exception))
        second.close()
        closed = []

        class Iterator:
            def close(self):
                closed.append(True)

        second.adopt(iid, Iterator())   # made after its connection closed
        self.assertEqual(closed, [True])
        self.assertEqual(budget.used, 1)
        first.close()
        self.assertEqual(budget.used, 0)


class MergeInvalidationsTests(unittest.TestCase):
    """An iterated getInvalidations answer is brought up to the commits
    queued while the thread iterated."""

    def test_merge(self):
        hooks = LoopHooks(call_soon=lambda *args: None, call_later=lambda *args: None)
        served = ServedStorage("1", MappingStorage(), ServerConfig(invalidation_age=60, invalidation_queue_size=2), hooks)
        self.addCleanup(served.close)
        tid = lambda n: n.to_bytes(8, "big")   # noqa: E731
        oid = tid
        served.queue.append(tid(5), [oid(1)])
        served.queue.append(tid(6), [oid(3), oid(2)])
        self.assertEqual(served.merge_invalidations((tid(5), (oid(4),))),
                         (tid(6), (oid(2), oid(3), oid(4))))
        self.assertEqual(served.merge_invalidations((tid(6), (oid(4),))),
                         (tid(6), (oid(4),)))
        self.assertIsNone(served.merge_invalidations(None))
        # Older than the queue: the client must drop its cache.
        self.assertIsNone(served.merge_invalidations((tid(1), (oid(4),))))


if __name__ == "__main__":
    unittest.main()
