"""Tests of zeo.server.commit_lock, driven by a real asyncio event loop."""
import asyncio
import itertools
import unittest

from ZODB.POSException import StorageTransactionError

from zeo.server.commit_lock import CommitLock


class Owner:
    """A stand-in for a session: hashable by identity, records grants."""

    def __init__(self, name, log):
        self.name = name
        self.log = log

    def __repr__(self):
        return f'<Owner {self.name}>'

    def granted(self):
        self.log.append(('granted', self.name))

    def dropped(self, waited):
        self.log.append(('dropped', self.name, waited))


class LoopTestCase(unittest.TestCase):

    timeout: float | None = None

    def setUp(self):
        self.loop = asyncio.new_event_loop()
        self.addCleanup(self.loop.close)
        self.unexpected = []
        # Fail on exceptions escaping loop callbacks (asyncpg's rule).
        self.loop.set_exception_handler(
            lambda loop, context: self.unexpected.append(context))
        self.log = []
        self.clock = itertools.count(1000)
        self.timeouts = []
        self.lock = self._makeOne()

    def tearDown(self):
        self.assertEqual(self.unexpected, [])

    def _makeOne(self, **kw):
        kw.setdefault('call_soon', self.loop.call_soon)
        kw.setdefault('clock', lambda: float(next(self.clock)))
        if self.timeout is not None:
            kw.setdefault('timeout', self.timeout)
            kw.setdefault('call_later', self.loop.call_later)
            kw.setdefault('on_timeout', self.on_timeout)
        return CommitLock(**kw)

    def on_timeout(self, owner):
        self.timeouts.append(owner)

    def owner(self, name):
        return Owner(name, self.log)

    def spin(self, seconds=0):
        """Run the loop for *seconds* (0: just the ready callbacks)."""
        self.loop.run_until_complete(asyncio.sleep(seconds))


class LockTests(LoopTestCase):

    def test_free_lock_granted_immediately_without_callback(self):
        a = self.owner('a')
        self.assertIsNone(self.lock.holder)
        self.assertIsNone(self.lock.locked_since)
        self.assertTrue(self.lock.request(a, a.granted))
        self.assertIs(self.lock.holder, a)
        self.assertEqual(self.lock.locked_since, 1000.0)
        self.assertEqual(self.lock.waiting, 0)
        self.spin()
        self.assertEqual(self.log, [])

    def test_waiter_granted_after_release_via_call_soon(self):
        a, b = self.owner('a'), self.owner('b')
        self.lock.request(a, a.granted)
        self.assertFalse(self.lock.request(b, b.granted))
        self.assertEqual(self.lock.waiting, 1)
        self.assertEqual(self.lock.waiters, (b,))
        self.assertEqual(self.lock.waiting_since, 1001.0)
        self.assertTrue(self.lock.release(a))
        # Handed over at once, but notified only once release returned.
        self.assertIs(self.lock.holder, b)
        self.assertEqual(self.lock.locked_since, 1002.0)
        self.assertEqual(self.lock.waiting, 0)
        self.assertIsNone(self.lock.waiting_since)
        self.assertEqual(self.log, [])
        self.spin()
        self.assertEqual(self.log, [('granted', 'b')])

    def test_fifo_fairness(self):
        owners = [self.owner(n) for n in 'abcde']
        for o in owners:
            self.lock.request(o, o.granted)
        self.assertEqual(self.lock.waiters, tuple(owners[1:]))
        order = [self.lock.holder.name]
        while self.lock.holder is not None:
            self.lock.release(self.lock.holder)
            self.spin()
            if self.lock.holder is not None:
                order.append(self.lock.holder.name)
        self.assertEqual(order, list('abcde'))
        self.assertEqual(self.log, [('granted', n) for n in 'bcde'])

    def test_newcomer_cannot_overtake_between_release_and_notify(self):
        a, b, c = self.owner('a'), self.owner('b'), self.owner('c')
        self.lock.request(a, a.granted)
        self.lock.request(b, b.granted)
        self.lock.release(a)
        self.assertFalse(self.lock.request(c, c.granted))
        self.spin()
        self.assertIs(self.lock.holder, b)
        self.assertEqual(self.log, [('granted', 'b')])

    def test_release_by_waiter_leaves_queue(self):
        a, b, c = self.owner('a'), self.owner('b'), self.owner('c')
        self.lock.request(a, a.granted)
        self.lock.request(b, b.granted)
        self.lock.request(c, c.granted)
        self.assertTrue(self.lock.release(b))
        self.assertIs(self.lock.holder, a)
        self.assertEqual(self.lock.waiters, (c,))
        self.lock.release(a)
        self.spin()
        self.assertIs(self.lock.holder, c)
        self.assertEqual(self.log, [('granted', 'c')])

    def test_release_unknown_is_noop(self):
        a = self.owner('a')
        self.assertFalse(self.lock.release(a))
        self.assertFalse(self.lock.release(None))
        self.lock.request(a, a.granted)
        self.assertFalse(self.lock.release(self.owner('z')))
        self.assertIs(self.lock.holder, a)
        self.assertTrue(self.lock.release(a))
        self.assertFalse(self.lock.release(a))  # twice: no-op
        self.assertIsNone(self.lock.holder)
        self.assertIsNone(self.lock.locked_since)

    def test_double_request_raises(self):
        a, b = self.owner('a'), self.owner('b')
        self.lock.request(a, a.granted)
        with self.assertRaisesRegex(StorageTransactionError, 'already holds'):
            self.lock.request(a, a.granted)
        self.lock.request(b, b.granted)
        with self.assertRaisesRegex(StorageTransactionError,
                                    'already waiting'):
            self.lock.request(b, b.granted)
        # State unchanged by the failed requests.
        self.assertIs(self.lock.holder, a)
        self.assertEqual(self.lock.waiters, (b,))

    def test_none_owner_rejected(self):
        with self.assertRaises(ValueError):
            self.lock.request(None, lambda: None)

    def test_granted_waiter_that_releases_before_notify_is_not_called(self):
        a, b, c = self.owner('a'), self.owner('b'), self.owner('c')
        self.lock.request(a, a.granted)
        self.lock.request(b, b.granted)
        self.lock.request(c, c.granted)
        self.lock.release(a)           # hands over to b
        self.lock.release(b)           # b disconnects before its callback
        self.assertIs(self.lock.holder, c)
        self.spin()
        self.assertEqual(self.log, [('granted', 'c')])

    def test_rerequest_after_release_before_notify(self):
        a, b = self.owner('a'), self.owner('b')
        self.lock.request(a, a.granted)
        self.lock.request(b, b.granted)
        self.lock.release(a)
        self.lock.release(b)
        # b asks again and gets the free lock directly: the stale
        # notification for the previous grant must not fire.
        self.assertTrue(self.lock.request(b, b.granted))
        self.spin()
        self.assertEqual(self.log, [])

    def test_owner_may_request_again_after_release(self):
        a = self.owner('a')
        self.assertTrue(self.lock.request(a, a.granted))
        self.lock.release(a)
        self.assertTrue(self.lock.request(a, a.granted))

    def test_callback_releasing_hands_on(self):
        # A granted callback that aborts at once passes the lock on
        # without recursion: each grant is its own loop callback.
        a = self.owner('a')
        self.lock.request(a, a.granted)
        owners = []

        def make(n):
            o = self.owner(n)

            def granted():
                self.log.append(('granted', n))
                self.lock.release(o)
            owners.append(o)
            return o, granted

        for n in range(3):
            self.lock.request(*make(n))
        self.lock.release(a)
        self.assertEqual(self.log, [])
        self.spin()
        self.spin()
        self.spin()
        self.assertEqual(self.log, [('granted', n) for n in range(3)])
        self.assertIsNone(self.lock.holder)

    def test_callback_exception_goes_to_loop_and_lock_stays_held(self):
        a, b = self.owner('a'), self.owner('b')
        self.lock.request(a, a.granted)

        def boom():
            raise RuntimeError('session bug')
        self.lock.request(b, boom)
        self.lock.release(a)
        self.spin()
        self.assertEqual(len(self.unexpected), 1)
        self.assertIsInstance(self.unexpected[0]['exception'], RuntimeError)
        self.unexpected.clear()
        self.assertIs(self.lock.holder, b)

    def test_no_timeout_means_no_watchdog(self):
        self.assertIsNone(self.lock.timeout)
        a = self.owner('a')
        self.lock.request(a, a.granted)
        self.spin(0.02)
        self.assertFalse(self.lock.holder_timed_out)

    def test_bad_configuration(self):
        for bad in (0, -1, float('nan'), float('inf'), True, '5'):
            with self.assertRaises(ValueError, msg=repr(bad)):
                CommitLock(call_soon=self.loop.call_soon, clock=float,
                           timeout=bad, call_later=self.loop.call_later,
                           on_timeout=self.on_timeout)
        with self.assertRaisesRegex(ValueError, 'call_later'):
            CommitLock(call_soon=self.loop.call_soon, clock=float, timeout=1,
                       on_timeout=self.on_timeout)
        with self.assertRaisesRegex(ValueError, 'on_timeout'):
            CommitLock(call_soon=self.loop.call_soon, clock=float, timeout=1,
                       call_later=self.loop.call_later)
        lock = CommitLock(call_soon=self.loop.call_soon, clock=float,
                          timeout=2, call_later=self.loop.call_later,
                          on_timeout=self.on_timeout)
        self.assertEqual(lock.timeout, 2.0)


class TimeoutTests(LoopTestCase):

    # Real loop timers.  "Has not fired yet" checks leave at least 40 ms
    # of margin; "has fired" checks wait for the callback itself.
    timeout = 0.1

    def on_timeout(self, owner):
        super().on_timeout(owner)
        if self.fired is not None and not self.fired.done():
            self.fired.set_result(None)

    def setUp(self):
        self.fired = None
        super().setUp()

    def wait_for_timeout(self, limit=2.0):
        """Run the loop until the next on_timeout call."""
        self.fired = self.loop.create_future()
        self.loop.run_until_complete(asyncio.wait_for(self.fired, limit))
        self.fired = None

    def test_timeout_fires_for_holder(self):
        a = self.owner('a')
        self.lock.request(a, a.granted)
        self.spin(0.02)
        self.assertEqual(self.timeouts, [])
        self.assertFalse(self.lock.holder_timed_out)
        self.wait_for_timeout()
        self.assertEqual(self.timeouts, [a])
        self.assertTrue(self.lock.holder_timed_out)
        # The lock does not release itself.
        self.assertIs(self.lock.holder, a)
        # And the timer is one-shot.
        self.spin(0.15)
        self.assertEqual(self.timeouts, [a])

    def test_release_cancels_timer(self):
        a = self.owner('a')
        self.lock.request(a, a.granted)
        self.lock.release(a)
        self.spin(0.15)
        self.assertEqual(self.timeouts, [])
        self.assertFalse(self.lock.holder_timed_out)

    def test_release_cancels_the_loop_timer_itself(self):
        # Not just ignored when it fires: no stale timers pile up.
        handles = []

        def call_later(delay, fn):
            handles.append(self.loop.call_later(delay, fn))
            return handles[-1]
        self.lock = self._makeOne(call_later=call_later)
        a, b = self.owner('a'), self.owner('b')
        self.lock.request(a, a.granted)
        self.lock.request(b, b.granted)
        self.assertEqual(len(handles), 1)    # waiters have no timer
        self.lock.release(a)
        self.assertEqual(len(handles), 2)
        self.assertTrue(handles[0].cancelled())
        self.assertFalse(handles[1].cancelled())
        self.lock.release(b)
        self.assertTrue(handles[1].cancelled())

    def test_waiters_do_not_time_out_and_timer_restarts_on_grant(self):
        a, b = self.owner('a'), self.owner('b')
        self.lock.request(a, a.granted)
        self.lock.request(b, b.granted)
        self.spin(0.06)
        self.lock.release(a)        # b's own timer starts now
        self.spin(0.06)             # 0.12 s after b asked, 0.06 s held
        self.assertEqual(self.timeouts, [])
        self.wait_for_timeout()
        self.assertEqual(self.timeouts, [b])

    def releasing_lock(self):
        """A lock whose on_timeout releases, as the session's abort does."""
        fired = self.on_timeout

        def on_timeout(owner):
            self.lock.release(owner)
            fired(owner)
        return self._makeOne(on_timeout=on_timeout)

    def test_regrant_after_timeout(self):
        a, b = self.owner('a'), self.owner('b')
        self.lock = self.releasing_lock()
        self.lock.request(a, a.granted)
        self.wait_for_timeout()
        self.assertEqual(self.timeouts, [a])
        self.assertIsNone(self.lock.holder)
        self.assertTrue(self.lock.request(b, b.granted))
        self.assertFalse(self.lock.holder_timed_out)
        self.wait_for_timeout()
        self.assertEqual(self.timeouts, [a, b])
        self.assertIsNone(self.lock.holder)
        self.assertEqual(self.log, [])

    # Rule 5: a timeout empties the queue.

    def test_timeout_drops_every_waiter_instead_of_granting(self):
        self.lock = self.releasing_lock()
        a, b, c, d = (self.owner(n) for n in 'abcd')
        self.lock.request(a, a.granted, a.dropped)    # clock 1000
        for o in (b, c, d):                           # 1001, 1002, 1003
            self.assertFalse(self.lock.request(o, o.granted, o.dropped))
        self.wait_for_timeout()                       # swept at 1004
        self.assertEqual(self.timeouts, [a])
        # The queue was empty when a released: nobody was granted.
        self.assertIsNone(self.lock.holder)
        self.assertEqual(self.lock.waiting, 0)
        self.assertIsNone(self.lock.waiting_since)
        self.spin()
        self.assertEqual(self.log, [('dropped', 'b', 3.0), ('dropped', 'c', 2.0),
                                    ('dropped', 'd', 1.0)])

    def test_k_silent_waiters_cost_one_timeout(self):
        # a..d never release (silent voters); e releases as soon as it is
        # granted and asks again when dropped (a retrying client).
        self.lock = self.releasing_lock()
        silent = [self.owner(n) for n in 'abcd']
        e = self.owner('e')
        committed = self.loop.create_future()

        def e_granted():
            self.lock.release(e)
            committed.set_result(None)

        def e_dropped(waited):
            self.log.append(('dropped', 'e', waited))
            if self.lock.request(e, e_granted, e_dropped):
                e_granted()
        for o in silent:
            self.lock.request(o, o.granted, o.dropped)
        self.lock.request(e, e_granted, e_dropped)
        self.loop.run_until_complete(asyncio.wait_for(committed, 2.0))
        # One timeout, not four: b, c and d were never granted.
        self.assertEqual(self.timeouts, silent[:1])
        self.assertEqual([entry[:2] for entry in self.log],
                         [('dropped', n) for n in 'bcde'])

    def test_waiters_are_not_dropped_under_ordinary_contention(self):
        # Every holder releases within the timeout: the last waiter waits
        # longer than the timeout in all, and is still granted in turn.
        owners = [self.owner(n) for n in 'abcd']
        for o in owners:
            self.lock.request(o, o.granted, o.dropped)
        for o in owners:
            self.assertIs(self.lock.holder, o)
            self.spin(0.05)
            self.lock.release(o)
        self.spin()
        self.assertEqual(self.timeouts, [])
        self.assertEqual(self.log, [('granted', n) for n in 'bcd'])

    def test_a_dropped_owner_that_asked_again_is_not_called_back(self):
        a, b, c = self.owner('a'), self.owner('b'), self.owner('c')
        fired = self.on_timeout

        def on_timeout(owner):
            self.lock.release(owner)
            # Before the notifications run, b asks again and gets the
            # free lock, c asks again and waits.
            self.assertTrue(self.lock.request(b, b.granted, b.dropped))
            self.assertFalse(self.lock.request(c, c.granted, c.dropped))
            fired(owner)
        self.lock = self._makeOne(on_timeout=on_timeout)
        self.lock.request(a, a.granted, a.dropped)
        self.lock.request(b, b.granted, b.dropped)
        self.lock.request(c, c.granted, c.dropped)
        self.wait_for_timeout()
        self.spin()
        self.assertEqual(self.log, [])
        self.assertEqual(self.lock.waiters, (c,))

    def test_waiters_without_on_dropped_just_leave(self):
        self.lock = self.releasing_lock()
        a, b = self.owner('a'), self.owner('b')
        self.lock.request(a, a.granted)
        self.lock.request(b, b.granted)
        self.wait_for_timeout()
        self.spin()
        self.assertIsNone(self.lock.holder)
        self.assertEqual(self.lock.waiting, 0)
        self.assertEqual(self.log, [])

    def test_a_failing_drop_callback_does_not_stop_the_others(self):
        self.lock = self.releasing_lock()
        a, b, c = self.owner('a'), self.owner('b'), self.owner('c')

        def boom(waited):
            raise RuntimeError('session bug')
        self.lock.request(a, a.granted)
        self.lock.request(b, b.granted, boom)
        self.lock.request(c, c.granted, c.dropped)
        self.wait_for_timeout()
        self.spin()
        self.assertEqual(len(self.unexpected), 1)
        self.unexpected.clear()
        self.assertEqual([entry[:2] for entry in self.log], [('dropped', 'c')])

    def test_the_queue_is_dropped_before_on_timeout_runs(self):
        # A session whose abort fails leaves the lock held (Rule 4), but
        # the waiters are answered all the same.
        a, b = self.owner('a'), self.owner('b')
        self.lock.request(a, a.granted)
        self.lock.request(b, b.granted, b.dropped)
        self.wait_for_timeout()
        self.assertIs(self.lock.holder, a)
        self.assertEqual(self.lock.waiting, 0)
        self.spin()
        self.assertEqual([entry[:2] for entry in self.log], [('dropped', 'b')])

    def test_stale_timer_does_not_fire_for_new_holder(self):
        # Cancel is the normal path; this checks the grant guard by using
        # a call_later whose handles can't be cancelled.
        class Uncancellable:
            def cancel(self):
                pass

        def call_later(delay, fn):
            self.loop.call_later(delay, fn)
            return Uncancellable()
        self.lock = self._makeOne(call_later=call_later)
        a, b = self.owner('a'), self.owner('b')
        self.lock.request(a, a.granted)
        self.spin(0.06)
        self.lock.release(a)
        self.lock.request(b, b.granted)   # b's timer: 0.1 s from now
        self.spin(0.06)                   # a's old timer has fired here
        self.assertEqual(self.timeouts, [])
        self.wait_for_timeout()
        self.assertEqual(self.timeouts, [b])
