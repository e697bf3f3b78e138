"""Channels used by application threads: whoever waits reads.

Real clients of a real server, where the only instrument is a recording
wrapper around the function that settles waiters (it calls the real one).
"""
from __future__ import annotations

import os
import threading
import time

import random

import transaction
import ZODB
from persistent.mapping import PersistentMapping
from ZODB.Connection import TransactionMetaData
from ZODB.POSException import ConflictError, POSKeyError
from ZODB.utils import p64, z64

from zeo.client.connections import output, replies
from zeo.client.errors import ClientDisconnected
from zeo.client.tests.support import (
    OID1, OID2, RecordingDB, ServerFixture, commit, wait_until)


def open_files(*fds):
    """What this process's descriptors *fds* (default: all) refer to."""
    found = set()
    for fd in fds or os.listdir('/proc/self/fd'):
        try:
            found.add(os.readlink(f'/proc/self/fd/{fd}'))
        except OSError:  # closed meanwhile
            pass
    return found


class ThreadRecordingDB(RecordingDB):
    """Records which thread told it of each invalidation, too."""

    def __init__(self):
        super().__init__()
        self.invalidated_by = []

    def invalidate(self, tid, oids):
        super().invalidate(tid, oids)
        self.invalidated_by.append((tid, sorted(oids), threading.get_ident()))


class Settled:
    """Which threads settled waiters (wrapping the real function)."""

    def __init__(self, test):
        self.threads = []
        real = replies._settle

        def settle(waiter, value):
            self.threads.append(threading.get_ident())
            real(waiter, value)

        replies._settle = settle
        test.addCleanup(setattr, replies, '_settle', real)


class WhoeverWaitsReadsTests(ServerFixture):

    def test_a_thread_reads_the_replies_to_its_own_calls(self):
        writer = self.client()
        tid = commit(writer, (OID1, z64, b'one'))
        client = self.client()
        self.assertIsNotNone(client._manager.channel._baton)
        settled = Settled(self)
        client.ping()
        self.assertEqual(client.load(OID1), (b'one', tid))
        self.assertEqual(settled.threads, [threading.get_ident()] * 2)
        # The load reply was cached on the way, as the loop does it.
        self.assertEqual(client._cache.load(OID1), (b'one', tid))

    def test_a_thread_reading_its_own_replies_never_wakes_the_loop(self):
        # It takes the baton before it sends: a reply that comes back
        # before send() returns must not reach the loop's epoll set.
        client = self.client()
        channel = client._manager.channel
        baton = channel._baton
        woken = []

        def readable():
            woken.append(threading.get_ident())
            channel._read_soon()

        def count_wake_ups():
            fd = baton._epoll.fileno()
            channel.loop.remove_reader(fd)
            channel.loop.add_reader(fd, readable)
            swapped.set()

        swapped = threading.Event()
        client._runner.run_on_loop(count_wake_ups)
        self.assertTrue(swapped.wait(10))
        for _ in range(300):
            client.ping()
        self.assertEqual(woken, [])

    def test_on_asyncio_s_own_loop_too(self):
        client = self.client(event_loop='asyncio')
        settled = Settled(self)
        client.ping()
        self.assertEqual(settled.threads, [threading.get_ident()])

    def test_direct_calls_can_be_turned_off(self):
        client = self.client(direct_calls=False)
        self.assertIsNone(client._manager.channel._baton)
        settled = Settled(self)
        client.ping()
        self.assertEqual(len(settled.threads), 1)
        self.assertNotEqual(settled.threads[0], threading.get_ident())

    def vote_waiting_for_the_lock(self, a, b):
        """B holds the commit lock; A votes in a thread, which reads for
        that vote until B is done.  Return (B's txn, A's txn, A's thread,
        the vote's outcome: [('voted', result)] or [('error', error)])."""
        tb = TransactionMetaData()
        b.tpc_begin(tb)
        b.store(OID1, z64, b'from b', '', tb)
        b.tpc_vote(tb)
        ta = TransactionMetaData()
        a.tpc_begin(ta)
        try:
            serial = a.load(OID2)[1]
        except POSKeyError:
            serial = z64
        a.store(OID2, serial, b'from a', '', ta)
        outcome = []

        def vote():
            try:
                outcome.append(('voted', a.tpc_vote(ta)))
            except ClientDisconnected as error:
                outcome.append(('error', error))

        voter = threading.Thread(target=vote)
        voter.start()
        wait_until(lambda: b.server_status()['waiting'] == 1,
                   message='A waiting for the commit lock')
        self.assertEqual(a._manager.channel._baton.reader, voter.ident)
        return tb, ta, voter, outcome

    def two_clients(self):
        db = ThreadRecordingDB()
        a = self.client(db=db)
        b = self.client()
        commit(b, (OID2, z64, b'two'))
        wait_until(lambda: a.lastTransaction() == b.lastTransaction())
        return a, b, db

    def test_an_invalidation_met_while_reading_is_handled_by_the_reader(self):
        # A's vote waits for the commit lock that B holds; B's commit
        # sends A its invalidation before A's vote is answered, so the
        # thread reading for the vote meets it first, and handles it.
        a, b, db = self.two_clients()
        tb, ta, voter, voted = self.vote_waiting_for_the_lock(a, b)
        tid_b = b.tpc_finish(tb)
        voter.join(10)
        self.assertFalse(voter.is_alive())
        self.assertEqual(voted, [('voted', None)])
        self.assertIn((tid_b, [OID1], voter.ident), db.invalidated_by)
        self.assertEqual(a.lastTransaction(), tid_b)
        tid_a = a.tpc_finish(ta)
        self.assertGreater(tid_a, tid_b)
        self.assertEqual(a.load(OID1), (b'from b', tid_b))
        self.assertEqual(a.load(OID2), (b'from a', tid_a))
        channel = a._manager.channel
        self.assertIsNone(channel._baton.reader)
        self.assertIsNone(channel._held)

    def test_a_reply_the_loop_waits_for_is_left_to_the_loop(self):
        a, b, db = self.two_clients()
        channel = a._manager.channel
        resumed = []
        real_resume = channel._resume

        def resume():
            resumed.append(threading.get_ident())
            real_resume()

        channel._resume = resume
        tb, ta, voter, voted = self.vote_waiting_for_the_lock(a, b)
        # A request of the loop's own (a coroutine's future), answered
        # while the voting thread reads.
        futures = []
        a._runner.run_on_loop(
            lambda: futures.append(channel.request('lastTransaction')))
        wait_until(lambda: futures and futures[0].done(),
                   message="the loop's reply")
        self.assertEqual(futures[0].result(), b.lastTransaction())
        self.assertEqual(len(resumed), 1)
        self.assertNotEqual(resumed[0], voter.ident)
        self.assertTrue(voter.is_alive())
        # The loop gave the socket back to nobody: the voter's reply is
        # read by the loop now.
        b.tpc_finish(tb)
        voter.join(10)
        self.assertEqual(voted, [('voted', None)])
        a.tpc_finish(ta)
        self.assertIsNone(channel._baton.reader)
        self.assertIsNone(channel._held)

    def test_a_connection_lost_while_a_thread_reads_fails_its_call(self):
        a, b = self.client(), self.client()
        _, _, voter, outcome = self.vote_waiting_for_the_lock(a, b)
        self.stop()
        voter.join(10)
        self.assertFalse(voter.is_alive())
        self.assertEqual([kind for kind, _ in outcome], ['error'])

    def test_closing_the_client_wakes_a_reading_thread(self):
        a, b = self.client(), self.client()
        _, _, voter, outcome = self.vote_waiting_for_the_lock(a, b)
        baton = a._manager.channel._baton
        # The socket and the wake-up pipe, by inode (numbers get reused).
        ours = open_files(baton.socket.fileno(), baton._wake_read)
        self.assertEqual(len(ours), 2)
        started = time.monotonic()
        a.close()
        voter.join(10)
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual([kind for kind, _ in outcome], ['error'])
        wait_until(lambda: not ours & open_files(), message='the descriptors closed')

    def test_one_way_calls_leave_with_the_next_call(self):
        client = self.client()
        channel = client._manager.channel
        t = TransactionMetaData()
        client.tpc_begin(t)
        client.store(OID1, z64, b'one', '', t)
        self.assertEqual(len(channel._output.queued), 2)   # tpc_begin, storea
        self.assertIsNone(client.tpc_vote(t))        # sent with the vote
        self.assertEqual(channel._output.queued, [])
        tid = client.tpc_finish(t)
        self.assertEqual(client.load(OID1), (b'one', tid))

    def test_the_loop_sends_queued_one_way_calls_first(self):
        client = self.client()
        channel = client._manager.channel
        t = TransactionMetaData()
        client.tpc_begin(t)
        self.assertEqual(len(channel._output.queued), 1)
        # Anything the loop writes takes the queue along, ahead of it.
        client._runner.run_on_loop(channel.one_way, 'set_client_label', ('x',))
        wait_until(lambda: not channel._output.queued, message='the queue sent')
        client.store(OID1, z64, b'one', '', t)
        client.tpc_vote(t)
        tid = client.tpc_finish(t)
        self.assertEqual(client.load(OID1), (b'one', tid))

    def test_a_large_queue_is_sent_without_waiting_for_a_call(self):
        client = self.client()
        channel = client._manager.channel
        t = TransactionMetaData()
        client.tpc_begin(t)
        chunk = os.urandom(output.QUEUED_LIMIT // 4)
        for i in range(1, 13):
            client.store(p64(i), z64, chunk + b'%d' % i, '', t)
            self.assertLess(channel._output.queued_size, output.QUEUED_LIMIT)
        client.tpc_vote(t)
        tid = client.tpc_finish(t)
        for i in range(1, 13):
            self.assertEqual(client.load(p64(i)), (chunk + b'%d' % i, tid))

    def test_threads_take_turns(self):
        writer = self.client()
        tids = [commit(writer, (p64(i), z64, b'%d' % i)) for i in range(1, 41)]
        client = self.client()
        results = {}

        def load(start):
            for i in range(start, 41, 4):
                results[i] = client.load(p64(i))

        threads = [threading.Thread(target=load, args=(s,)) for s in range(1, 5)]
        for thread in threads:
            thread.start()
        for _ in range(200):
            client.ping()
        for thread in threads:
            thread.join(30)
        self.assertEqual(results, {i: (b'%d' % i, tids[i - 1]) for i in range(1, 41)})


class ThreadsAndProcessesTests(ServerFixture):
    """Many threads of two clients moving money between accounts: each
    thread's calls race the others' for the socket, and the invalidations
    of the other client arrive while threads read for themselves."""

    ACCOUNTS = 20
    THREADS = 4
    SECONDS = 2.0

    def test_the_total_never_changes(self):
        dbs = [ZODB.DB(self.client()) for _ in range(2)]
        for db in dbs:
            self.addCleanup(db.close)
        with dbs[0].transaction() as conn:
            conn.root()['accounts'] = [PersistentMapping(balance=100)
                                       for _ in range(self.ACCOUNTS)]
        total = 100 * self.ACCOUNTS
        deadline = time.monotonic() + self.SECONDS
        done, failures = [], []

        def work(db, seed):
            rnd = random.Random(seed)
            manager = transaction.TransactionManager()
            conn = db.open(manager)
            moved = 0
            try:
                while time.monotonic() < deadline:
                    try:
                        accounts = conn.root()['accounts']
                        a, b = rnd.sample(accounts, 2)
                        amount = rnd.randint(1, 10)
                        a['balance'] -= amount
                        b['balance'] += amount
                        if sum(x['balance'] for x in accounts) != total:
                            failures.append('an inconsistent snapshot')
                        manager.commit()
                        moved += 1
                    except ConflictError:
                        manager.abort()
            except Exception as error:  # reported below
                failures.append(repr(error))
            finally:
                manager.abort()
                conn.close()
                done.append(moved)

        threads = [threading.Thread(target=work, args=(db, i * 100 + n))
                   for i, db in enumerate(dbs) for n in range(self.THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.SECONDS + 30)
            self.assertFalse(thread.is_alive(), 'a thread hangs')
        self.assertEqual(failures, [])
        self.assertGreater(sum(done), 0)
        for db in dbs:
            with db.transaction() as conn:
                balances = [x['balance'] for x in conn.root()['accounts']]
            self.assertEqual(sum(balances), total)
