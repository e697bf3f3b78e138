"""The lock rules of zeo.client.connections, checked.

zeo.client's tests run with ``locks.CHECK`` set (see support), so every
test that runs a client checks the order; these tests check the checker,
and that a real client runs with checked locks and is refused when it
breaks the rules."""
from __future__ import annotations

import threading
import unittest

from ZODB.utils import z64

from zeo.client.connections import locks
from zeo.client.tests.support import OID1, ServerFixture, commit, wait_until


class CheckedRLockTests(unittest.TestCase):

    def setUp(self):
        self.channel = locks.CheckedRLock(locks.CHANNEL, 'channel')
        self.visibility = locks.CheckedRLock(locks.VISIBILITY, 'visibility')

    def test_the_documented_order_and_reentry(self):
        with self.channel:
            with self.visibility:
                with self.channel:      # re-entry is no new acquisition
                    self.assertEqual(locks.held_by_this_thread(),
                                     [self.channel, self.visibility, self.channel])
        self.assertEqual(locks.held_by_this_thread(), [])
        with self.visibility:           # alone is fine
            pass

    def test_the_reverse_order_is_refused(self):
        with self.visibility:
            with self.assertRaises(locks.LockOrderError) as raised:
                self.channel.acquire()
        self.assertIn('channel (rank 1) taken while holding visibility', str(raised.exception))
        self.assertFalse(self.channel._is_owned())

    def test_never_two_channels_at_once(self):
        other = locks.CheckedRLock(locks.CHANNEL, 'other channel')
        with self.channel:
            self.assertRaises(locks.LockOrderError, other.acquire)

    def test_no_waiting_while_holding_a_lock(self):
        locks.check_free('a reply')
        with self.channel:
            self.assertRaises(locks.LockOrderError, locks.check_free, 'a reply')

    def test_each_thread_has_its_own_record(self):
        seen = []
        with self.visibility:
            thread = threading.Thread(target=lambda: seen.append(
                (locks.held_by_this_thread(), self.channel.acquire(), self.channel.release())))
            thread.start()
            thread.join()
        self.assertEqual(seen[0][:2], ([], True))

    def test_plain_locks_unless_checking(self):
        checking = locks.CHECK
        self.addCleanup(setattr, locks, 'CHECK', checking)
        locks.CHECK = False
        self.assertIsInstance(locks.new_lock(locks.CHANNEL, 'x'), type(threading.RLock()))
        locks.check_free('anything')  # no check
        locks.CHECK = True
        self.assertIsInstance(locks.new_lock(locks.CHANNEL, 'x'), locks.CheckedRLock)


class ClientLockTests(ServerFixture):

    def test_a_client_runs_with_checked_locks(self):
        client = self.client()
        self.assertIsInstance(client._manager.visibility, locks.CheckedRLock)
        self.assertIsInstance(client._manager.channel.lock, locks.CheckedRLock)
        # Traffic that takes both, in every thread that reads: commits
        # (hooks), invalidations from another client, loads.
        other = self.client()
        tid = commit(other, (OID1, z64, b'one'))
        wait_until(lambda: client.lastTransaction() == tid)
        self.assertEqual(client.load(OID1), (b'one', tid))
        commit(client, (OID1, tid, b'two'))
        client.ping()

    def test_calling_the_server_holding_visibility_is_refused(self):
        # The reader applies invalidations under visibility: a thread that
        # waits for a reply holding it could wait for ever.
        client = self.client()
        with client._manager.visibility:
            self.assertRaises(locks.LockOrderError, client.ping)
        client.ping()

    def test_calling_the_server_holding_the_channel_lock_is_refused(self):
        client = self.client()
        with client._manager.channel.lock:
            self.assertRaises(locks.LockOrderError, client.ping)
        client.ping()

    def test_a_second_reader_is_refused(self):
        client = self.client()
        channel = client._manager.channel
        with channel.lock:
            channel._baton.take(threading.get_ident() + 1)   # another thread reads
            try:
                self.assertRaises(locks.LockOrderError, channel._read, channel._baton, True)
                self.assertRaises(locks.LockOrderError, channel._read, channel._baton, False)
            finally:
                channel._baton.give_back()
        client.ping()
