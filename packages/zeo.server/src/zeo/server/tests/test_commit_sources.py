"""The merge of commits made elsewhere with our own (zeo.server.commit_sources).

In-process, with a fake `ICommitSource`, fake sessions and a real
`ServedStorage`; the loop's scheduling is driven by hand.
"""

import os
import shutil
import tempfile
import threading
import unittest

from ZODB.Connection import TransactionMetaData
from ZODB.FileStorage import FileStorage
from ZODB.interfaces import IMVCCStorage
from ZODB.MappingStorage import MappingStorage
from ZODB.utils import p64
from zope.interface import implementer
from zope.interface.verify import verifyObject

import zeo.server
from zeo.server.commit_sources import DatabaseStandIn, IteratingSource
from zeo.server.config import ServerConfig
from zeo.server.interfaces import ICommitSource
from zeo.server.served_storage import LoopHooks, ServedStorage
from zeo.server.storage_server import StorageServer

Z64 = b"\0" * 8


def oid(n):
    return p64(n)


class Loop:
    """call_soon / call_soon_threadsafe / call_later, run by hand."""

    def __init__(self):
        self.soon = []
        self.threadsafe = []
        self.timers = []

    def call_soon(self, function, *args):
        self.soon.append((function, args))

    def call_soon_threadsafe(self, function, *args):
        self.threadsafe.append((function, args))

    def call_later(self, delay, function, *args):
        timer = Timer(function, args)
        self.timers.append(timer)
        return timer

    def run(self):
        while self.soon or self.threadsafe:
            batch = self.threadsafe + self.soon
            self.soon, self.threadsafe = [], []
            for function, args in batch:
                function(*args)

    def fire_timers(self):
        timers, self.timers = self.timers, []
        for timer in timers:
            if not timer.cancelled:
                timer.function(*timer.args)

    def hooks(self):
        return LoopHooks(self.call_soon, self.call_later,
                         call_soon_threadsafe=self.call_soon_threadsafe)


class Timer:
    def __init__(self, function, args):
        self.function, self.args, self.cancelled = function, args, False

    def cancel(self):
        self.cancelled = True


class Peer:
    def __init__(self):
        self.closed = None

    def close(self, reason):
        self.closed = reason


class Session:
    def __init__(self, label, events=None):
        self.label = label
        self.peer = Peer()
        self.heard = []
        self.events = events if events is not None else []

    def notify(self, method, args):
        if method == "invalidateTransaction":
            self.heard.append(args[0])
            self.events.append(("announce", args[0]))

    def __repr__(self):
        return f"<Session {self.label}>"


@implementer(ICommitSource)
class FakeSource:
    """Commits "made elsewhere": *commits* is what the database holds."""

    def __init__(self, commits=()):
        self.commits = list(commits)
        self.report = None
        self.stopped = False

    def start(self, report, call_later):
        self.report = report

    def stop(self):
        self.stopped = True

    def commits_since(self, tid):
        return [c for c in self.commits if c[0] > tid]

    def recent(self, count):
        return self.commits[-count:]

    def commit(self, n, *oids, report=True):
        entry = (p64(n), tuple(oid(o) for o in oids))
        self.commits.append(entry)
        if report:
            self.report(*entry)
        return entry


@implementer(IMVCCStorage)
class SnapshotStorage(MappingStorage):
    """A MappingStorage with a snapshot that moves when polled; it records
    each move and whether a commit lock was held then."""

    served = None

    def __init__(self, events):
        super().__init__()
        self.events = events
        self.moves_while_locked = 0

    def poll_invalidations(self):
        if self.served is not None and self.served.lock.holder is not None \
                and self.served.lock.holder not in self.releasing:
            self.moves_while_locked += 1
        self.events.append(("move",))
        return []

    #: Owners releasing the lock now (the lock calls back before it
    #: forgets its holder): a move then is outside any transaction.
    releasing = ()

    def new_instance(self):
        raise NotImplementedError

    def sync(self, force=True):
        pass

    def release(self):
        pass


class MergeTests(unittest.TestCase):

    #: The served storage's settings.
    config = ServerConfig()

    def serve(self, storage=None, source=None, sessions=2):
        self.loop = Loop()
        self.events = []
        storage = storage if storage is not None else MappingStorage()
        self.source = source if source is not None else FakeSource()
        served = ServedStorage("1", storage, self.config, self.loop.hooks(),
                               source=self.source)
        self.addCleanup(served.close)
        served.start()
        self.sessions = [Session(f"s{n}", self.events) for n in range(sessions)]
        for session in self.sessions:
            served.add(session)
        return served

    def queued(self, served):
        return [tid for tid, _ in reversed(list(served.queue)) if tid != Z64]

    def test_interfaces(self):
        verifyObject(ICommitSource, FakeSource())
        verifyObject(ICommitSource, IteratingSource(MappingStorage()))

    def test_external_commits_are_announced_once_in_order(self):
        served = self.serve()
        self.source.commit(3, 1)
        self.source.commit(5, 2)
        self.source.report(p64(3), (oid(1),))    # reported twice
        self.assertEqual(self.sessions[0].heard, [p64(3), p64(5)])
        self.assertEqual(self.sessions[1].heard, [p64(3), p64(5)])
        self.assertEqual(self.queued(served), [p64(3), p64(5)])
        self.assertEqual(served.last_transaction(), p64(5))
        self.assertEqual(served.queue.since(p64(3)), (p64(5), (oid(2),)))
        self.assertEqual(served.announcer.duplicates, 1)

    def test_older_external_commits_go_before_our_own(self):
        served = self.serve()
        committer, other = self.sessions
        # Committed elsewhere at 5, not reported yet when ours finishes at 6.
        self.source.commit(5, 1, report=False)
        served.commit_finished(committer, p64(6), [oid(2)])
        self.assertEqual(other.heard, [p64(5), p64(6)])
        self.assertEqual(committer.heard, [p64(5)])
        # The late report, and the source seeing our own commit: ignored.
        self.source.report(p64(5), (oid(1),))
        self.source.commit(6, 2)
        self.assertEqual(other.heard, [p64(5), p64(6)])
        self.assertEqual(self.queued(served), [p64(5), p64(6)])
        self.assertEqual(served.last_transaction(), p64(6))

    def test_newer_external_commits_follow_our_own(self):
        served = self.serve()
        committer, other = self.sessions
        self.source.commit(5, 1, report=False)
        self.source.commit(7, 3, report=False)
        served.commit_finished(committer, p64(6), [oid(2)])
        self.assertEqual(other.heard, [p64(5), p64(6), p64(7)])
        self.assertEqual(self.queued(served), [p64(5), p64(6), p64(7)])

    def test_bad_external_values_never_break_our_own_commit(self):
        served = self.serve()
        committer, other = self.sessions
        stand_in = DatabaseStandIn(served.announcer)
        stand_in.invalidate(b"short", [oid(1)])
        stand_in.invalidate(p64(5), [oid(1), "not an oid", b"\0"])
        served.commit_finished(committer, p64(6), [oid(2)])
        self.loop.run()
        self.assertEqual(other.heard, [p64(5), p64(6)])
        self.assertEqual(served.queue.since(p64(4)), (p64(6), (oid(1), oid(2))))

    def test_an_upstream_echo_of_our_own_commit_is_dropped(self):
        served = self.serve()
        committer, other = self.sessions
        served.commit_finished(committer, p64(6), [oid(2)])
        DatabaseStandIn(served.announcer).invalidate(p64(6), [oid(2)])
        self.loop.run()
        self.assertEqual(other.heard, [p64(6)])
        self.assertEqual(committer.heard, [])
        self.assertEqual(served.announcer.duplicates, 1)

    def test_registerDB_hands_over_from_another_thread(self):
        storage = MappingStorage()
        registered = []
        storage.registerDB = registered.append
        served = self.serve(storage)
        [db] = registered
        self.assertIsInstance(db, DatabaseStandIn)
        thread = threading.Thread(target=db.invalidate, args=(p64(4), [oid(1)]))
        thread.start()
        thread.join()
        self.assertEqual(self.sessions[0].heard, [])   # not on the loop yet
        self.loop.run()
        self.assertEqual(self.sessions[0].heard, [p64(4)])
        self.assertEqual(served.last_transaction(), p64(4))

    def test_handed_over_commits_older_than_our_own_go_first(self):
        # The upstream's invalidation arrived (on its thread) before our
        # commit's reply, but the loop has not run it yet.
        served = self.serve()
        committer, other = self.sessions
        DatabaseStandIn(served.announcer).invalidate(p64(5), [oid(1)])
        served.commit_finished(committer, p64(6), [oid(2)])
        self.loop.run()
        self.assertEqual(other.heard, [p64(5), p64(6)])
        self.assertEqual(self.queued(served), [p64(5), p64(6)])

    def test_a_notification_after_the_loop_closed_is_dropped(self):
        served = self.serve()

        def closed(*args):
            raise RuntimeError("Event loop is closed")

        served.announcer._call_soon_threadsafe = closed
        DatabaseStandIn(served.announcer).invalidate(p64(4), [oid(1)])
        DatabaseStandIn(served.announcer).invalidateCache()
        self.assertEqual(self.sessions[0].heard, [])

    def test_invalidateCache_closes_the_clients_and_reseeds_the_queue(self):
        storage = MappingStorage()
        served = self.serve(storage)
        self.source.commit(5, 1)
        DatabaseStandIn(served.announcer).invalidateCache()
        self.assertEqual([s.peer.closed for s in self.sessions], [None, None])
        self.loop.run()
        for session in self.sessions:
            self.assertIn("dropped its cache", session.peer.closed)
        # No tid a client may know can be answered: every client drops its
        # cache; the next commit is queued as usual.
        self.assertEqual(list(served.queue), [])
        self.assertIsNone(served.queue.since(p64(5)))
        self.source.commit(6, 2)
        self.assertEqual(served.queue.since(p64(6)), (p64(6), ()))
        self.assertIsNone(served.queue.since(p64(5)))

    def test_the_queue_is_seeded_from_the_source(self):
        source = FakeSource([(p64(3), (oid(1),)), (p64(4), (oid(2),))])
        served = self.serve(source=source)
        self.assertEqual(served.last_transaction(), p64(4))
        # A client that was up to date at 3 on another front verifies quickly.
        self.assertEqual(served.queue.since(p64(3)), (p64(4), (oid(2),)))
        self.assertEqual(served.queue.since(p64(2)), (p64(4), (oid(1), oid(2))))

    def test_closing_stops_the_source(self):
        served = self.serve()
        served.close()
        self.assertTrue(self.source.stopped)

    def test_a_child_process_server_takes_no_source_objects(self):
        with self.assertRaises(ValueError):
            zeo.server.server(threaded=False, sources={"1": FakeSource()})

    def test_sources_must_name_served_storages(self):
        with self.assertRaises(ValueError):
            StorageServer({"1": MappingStorage()}, sources={"2": FakeSource()})


class MVCCMergeTests(MergeTests):
    """The same rules, plus: the snapshot moves only outside a storage
    transaction, and after the commits are read (rules 3 and 4), when the
    storage commits on the loop."""

    config = ServerConfig(commit_threads="off")

    def serve(self, storage=None, source=None, sessions=2):
        if storage is None:
            storage = SnapshotStorage([])
        served = super().serve(storage, source, sessions)
        if isinstance(storage, SnapshotStorage):
            storage.served = served
            storage.events = self.events
            self.storage = storage
        self.assertTrue(served.announcer.mvcc)
        return served

    def test_registerDB_hands_over_from_another_thread(self):
        storage = SnapshotStorage([])
        registered = []
        storage.registerDB = registered.append
        served = self.serve(storage)
        thread = threading.Thread(target=registered[0].invalidate, args=(p64(4), [oid(1)]))
        thread.start()
        thread.join()
        self.loop.run()
        self.assertEqual(self.sessions[0].heard, [p64(4)])
        self.assertEqual(served.last_transaction(), p64(4))

    def test_invalidateCache_closes_the_clients_and_reseeds_the_queue(self):
        served = self.serve()
        DatabaseStandIn(served.announcer).invalidateCache()
        self.loop.run()
        for session in self.sessions:
            self.assertIn("dropped its cache", session.peer.closed)

    def test_the_snapshot_moves_before_an_announcement(self):
        self.serve()
        self.source.commit(5, 1)
        self.assertEqual(self.events, [("move",), ("announce", p64(5)), ("announce", p64(5))])

    def test_commits_made_during_a_transaction_wait_for_its_end(self):
        served = self.serve()
        committer, other = self.sessions
        self.assertTrue(served.lock.request(committer, lambda: None))
        del self.events[:]
        self.source.commit(5, 1)
        self.assertEqual(self.events, [])       # held back (rule 3)
        self.assertEqual(served.last_transaction(), Z64)
        self.storage.releasing = (committer,)
        served.lock.release(committer)
        self.assertEqual(self.events[0], ("move",))
        self.assertEqual(other.heard, [p64(5)])
        self.assertEqual(self.storage.moves_while_locked, 0)

    def test_our_commit_then_the_release_moves_the_snapshot(self):
        served = self.serve()
        committer, other = self.sessions
        self.assertTrue(served.lock.request(committer, lambda: None))
        del self.events[:]
        self.source.commit(5, 1, report=False)
        self.source.commit(7, 3, report=False)
        served.commit_finished(committer, p64(6), [oid(2)])
        # 5 and our 6 are announced inside tpc_finish, without a move; 7
        # waits for the release, where the snapshot moves first.
        self.assertEqual(other.heard, [p64(5), p64(6)])
        self.assertNotIn(("move",), self.events)
        self.storage.releasing = (committer,)
        served.lock.release(committer)
        self.assertEqual(other.heard, [p64(5), p64(6), p64(7)])
        moved = self.events.index(("move",))
        self.assertLess(moved, self.events.index(("announce", p64(7))))
        self.assertEqual(self.storage.moves_while_locked, 0)

    def test_a_waiting_voter_does_not_hold_commits_back_forever(self):
        served = self.serve(sessions=3)
        first, second, other = self.sessions
        self.assertTrue(served.lock.request(first, lambda: None))
        self.assertFalse(served.lock.request(second, lambda: None))
        self.source.commit(5, 1)
        self.assertEqual(other.heard, [])
        self.storage.releasing = (first,)
        served.lock.release(first)   # hands over to second at once
        self.assertEqual(other.heard, [p64(5)])
        self.assertIs(served.lock.holder, second)


class ThreadedMVCCMergeTests(MergeTests):
    """Rule 7: the storage commits on instances of their own (in threads),
    so the snapshot the loop reads may move at any time, and moves before
    our own commit is announced."""

    def serve(self, storage=None, source=None, sessions=2):
        storage = SnapshotStorage([]) if storage is None else storage
        served = super().serve(storage, source, sessions)
        if isinstance(storage, SnapshotStorage):
            storage.events = self.events
            self.assertTrue(served.commit_threads)   # the default, "auto"
            self.assertTrue(served.announcer.free)
        return served

    def test_commits_made_during_a_transaction_are_announced_at_once(self):
        served = self.serve()
        committer, other = self.sessions
        self.assertTrue(served.lock.request(committer, lambda: None))
        del self.events[:]
        self.source.commit(5, 1)
        self.assertEqual(self.events[0], ("move",))
        self.assertEqual(other.heard, [p64(5)])
        self.assertEqual(served.last_transaction(), p64(5))

    def test_our_commit_is_announced_after_the_snapshot_moved(self):
        served = self.serve()
        committer, other = self.sessions
        self.assertTrue(served.lock.request(committer, lambda: None))
        del self.events[:]
        self.source.commit(5, 1, report=False)
        self.source.commit(6, 2, report=False)   # ours, as the database has it
        self.source.commit(7, 3, report=False)
        served.commit_finished(committer, p64(6), [oid(2)])
        self.assertEqual(self.events[0], ("move",))
        self.assertEqual(other.heard, [p64(5), p64(6), p64(7)])
        self.assertEqual(committer.heard, [p64(5), p64(7)])
        self.assertEqual(served.last_transaction(), p64(7))

    def test_what_the_source_reports_while_our_commit_finishes_waits_for_it(self):
        # Rule 8: the database's notification of our commit 6 can come
        # before its thread returns; the committer hears of 6 by its reply.
        served = self.serve()
        committer, other = self.sessions
        self.assertTrue(served.lock.request(committer, lambda: None))
        served.announcer.finishing()
        self.source.commit(5, 1)
        self.source.commit(6, 2)   # ours, as the database has it
        self.assertEqual((committer.heard, other.heard), ([], []))
        looks = []
        self.source.commits_since = lambda tid: looks.append(tid) or []
        served.announcer.finished(committed=True)
        served.commit_finished(committer, p64(6), [oid(2)])
        self.assertEqual(looks, [])   # the source has seen 6: no look
        self.assertEqual(other.heard, [p64(5), p64(6)])
        self.assertEqual(committer.heard, [p64(5)])
        served.commit_finished(committer, p64(8), [oid(2)])
        self.assertEqual(looks, [p64(6)])   # not seen yet: rule 2's look

    def test_a_failed_finish_announces_what_waited(self):
        served = self.serve()
        committer, other = self.sessions
        served.announcer.finishing()
        self.source.commit(5, 1)
        self.assertEqual(other.heard, [])
        served.announcer.finished(committed=False)
        self.assertEqual((committer.heard, other.heard), ([p64(5)], [p64(5)]))


class IteratingSourceTests(unittest.TestCase):

    def setUp(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        self.storage = FileStorage(os.path.join(directory, "Data.fs"))
        self.addCleanup(self.storage.close)

    def commit(self, *oids):
        txn = TransactionMetaData()
        self.storage.tpc_begin(txn)
        for n in oids:
            try:
                serial = self.storage.load(oid(n))[1]
            except KeyError:
                serial = Z64
            self.storage.store(oid(n), serial, b"data", "", txn)
        self.storage.tpc_vote(txn)
        return self.storage.tpc_finish(txn)

    def test_commits_since_and_recent(self):
        source = IteratingSource(self.storage)
        t1 = self.commit(1)
        t2 = self.commit(2, 3)
        self.assertEqual(source.commits_since(Z64), [(t1, (oid(1),)), (t2, (oid(2), oid(3)))])
        self.assertEqual(source.commits_since(t1), [(t2, (oid(2), oid(3)))])
        self.assertEqual(source.commits_since(t2), [])
        self.assertEqual([tid for tid, _ in source.recent(1)], [t2])

    def test_polls_on_the_loop_until_stopped(self):
        loop = Loop()
        reported = []
        source = IteratingSource(self.storage, interval=0.5)
        self.commit(1)
        source.start(lambda tid, oids: reported.append(tid), loop.call_later)
        loop.fire_timers()
        self.assertEqual(reported, [])            # only what came after start
        t2 = self.commit(2)
        t3 = self.commit(3)
        loop.fire_timers()
        self.assertEqual(reported, [t2, t3])
        loop.fire_timers()
        self.assertEqual(reported, [t2, t3])
        source.stop()
        self.assertTrue(all(timer.cancelled for timer in loop.timers))
        self.commit(4)
        loop.fire_timers()
        self.assertEqual(reported, [t2, t3])

    def test_a_bad_interval_is_refused(self):
        with self.assertRaises(ValueError):
            IteratingSource(self.storage, interval=0)


if __name__ == "__main__":
    unittest.main()
