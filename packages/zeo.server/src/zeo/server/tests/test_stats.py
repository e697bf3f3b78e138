"""Tests of zeo.server.stats."""
import asyncio
import json
import time
import unittest

from zeo.server.commit_lock import CommitLock
from zeo.server.stats import REFERENCE_KEYS
from zeo.server.stats import StorageStats


START = 1_700_000_000.0
LAST = bytes.fromhex('03c3f3e1a2b4c5d6')
Z64 = b'\0' * 8


class FakeClock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


class StatsTests(unittest.TestCase):

    def _makeOne(self, start=START):
        return StorageStats(start_time=start)

    def test_reference_keys_and_formats_without_lock(self):
        stats = self._makeOne()
        status = stats.as_dict(START + 5, Z64)
        for key in REFERENCE_KEYS:
            self.assertIn(key, status)
        self.assertEqual(status['connections'], 0)
        for key in ('loads', 'stores', 'commits', 'aborts', 'active_txns',
                    'conflicts', 'conflicts_resolved', 'waiting'):
            self.assertEqual(status[key], 0, key)
            self.assertIs(type(status[key]), int, key)
        self.assertIsNone(status['lock_time'])
        self.assertEqual(status['start'], time.ctime(START))
        self.assertEqual(status['timeout-thread-is-alive'], 'stub')
        self.assertEqual(status['last-transaction'], '0000000000000000')

    def test_last_transaction_lowercase_hex(self):
        status = self._makeOne().as_dict(START, LAST)
        self.assertEqual(status['last-transaction'], '03c3f3e1a2b4c5d6')

    def test_counters(self):
        stats = self._makeOne()
        stats.loads += 3
        stats.stores += 2
        stats.commits += 1
        stats.aborts += 4
        stats.active_txns += 1
        stats.conflicts += 5
        stats.conflicts_resolved += 6
        stats.bytes_in += 100
        stats.bytes_out += 200
        status = stats.as_dict(START, LAST)
        self.assertEqual(
            [status[k] for k in ('loads', 'stores', 'commits', 'aborts',
                                 'active_txns', 'conflicts',
                                 'conflicts_resolved', 'bytes_in',
                                 'bytes_out')],
            [3, 2, 1, 4, 1, 5, 6, 100, 200])

    def test_connections_by_label(self):
        stats = self._makeOne()
        stats.connection_added('127.0.0.1:5000')
        stats.connection_added('app')
        stats.connection_added('app')
        self.assertEqual(stats.connections, 3)
        self.assertEqual(stats.connections_by_label,
                         {'127.0.0.1:5000': 1, 'app': 2})
        stats.connection_relabelled('127.0.0.1:5000', 'worker')
        stats.connection_removed('app')
        status = stats.as_dict(START, LAST)
        self.assertEqual(status['connections'], 2)
        self.assertEqual(status['connections_by_label'],
                         {'app': 1, 'worker': 1})
        # Copies: callers can't corrupt the counts.
        status['connections_by_label']['app'] = 99
        stats.connections_by_label['app'] = 99
        self.assertEqual(stats.connections_by_label, {'app': 1, 'worker': 1})

    def test_status_lists_the_busiest_labels(self):
        # Issue #17 (7): the anonymous ruok answer carries this dict; its
        # size must not grow with what clients choose as labels.
        stats = self._makeOne()
        for label, count in (('b', 3), ('a', 1), ('c', 2), ('d', 1), ('e', 2)):
            for _ in range(count):
                stats.connection_added(label)
        status = stats.as_dict(START, LAST, max_labels=3)
        self.assertEqual(status['connections_by_label'], {'b': 3, 'c': 2, 'e': 2})
        self.assertEqual(status['connections_by_label_omitted'], 2)
        status = stats.as_dict(START, LAST, max_labels=0)
        self.assertEqual(status['connections_by_label'], {})
        self.assertEqual(status['connections_by_label_omitted'], 9)
        status = stats.as_dict(START, LAST, max_labels=5)
        self.assertEqual(len(status['connections_by_label']), 5)
        self.assertEqual(status['connections_by_label_omitted'], 0)
        self.assertEqual(stats.as_dict(START, LAST)['connections_by_label'],
                         stats.connections_by_label)

    def test_connection_errors(self):
        stats = self._makeOne()
        with self.assertRaisesRegex(ValueError, 'no connection'):
            stats.connection_removed('nobody')
        with self.assertRaises(TypeError):
            stats.connection_added(None)
        stats.connection_added('a')
        with self.assertRaises(ValueError):
            stats.connection_relabelled('b', 'c')
        self.assertEqual(stats.connections_by_label, {'a': 1})
        self.assertEqual(stats.connections, 1)

    def test_uptime_and_bad_tid(self):
        stats = self._makeOne()
        self.assertEqual(stats.as_dict(START + 42.5, LAST)['uptime'], 42.5)
        # A clock that went backwards doesn't give a negative uptime.
        self.assertEqual(stats.as_dict(START - 1, LAST)['uptime'], 0.0)
        with self.assertRaises(ValueError):
            stats.as_dict(START, None)
        with self.assertRaises(ValueError):
            stats.as_dict(START, b'\0')

    def test_extras_without_lock(self):
        status = self._makeOne().as_dict(START, LAST,
                                         invalidation_queue_length=17)
        self.assertIsNone(status['lock_holder'])
        self.assertEqual(status['lock_wait_max'], 0.0)
        self.assertEqual(status['invalidation_queue_length'], 17)


class StatsWithLockTests(unittest.TestCase):

    def setUp(self):
        self.loop = asyncio.new_event_loop()
        self.addCleanup(self.loop.close)
        self.clock = FakeClock(START + 10)

    def make_lock(self, timeout=None):
        kw = {}
        if timeout is not None:
            kw = dict(timeout=timeout, call_later=self.loop.call_later,
                      on_timeout=lambda owner: None)
        return CommitLock(call_soon=self.loop.call_soon, clock=self.clock,
                          **kw)

    def test_lock_values(self):
        lock = self.make_lock()
        stats = StorageStats(start_time=START)
        status = stats.as_dict(START + 10, LAST, lock=lock)
        self.assertIsNone(status['lock_time'])
        self.assertEqual(status['waiting'], 0)
        self.assertIsNone(status['lock_holder'])
        self.assertEqual(status['timeout-thread-is-alive'], 'stub')

        lock.request('alice', lambda: None)
        self.clock.now = START + 12
        lock.request('bob', lambda: None)
        self.clock.now = START + 13
        lock.request('carol', lambda: None)
        status = stats.as_dict(START + 20, LAST, lock=lock,
                               describe_owner=str.upper)
        self.assertEqual(status['lock_time'], START + 10)
        self.assertEqual(status['waiting'], 2)
        self.assertEqual(status['lock_holder'], 'ALICE')
        self.assertEqual(status['lock_wait_max'], 8.0)   # bob since +12

        lock.release('alice')
        status = stats.as_dict(START + 20, LAST, lock=lock)
        self.assertEqual(status['lock_holder'], 'bob')
        self.assertEqual(status['lock_time'], START + 13)
        self.assertEqual(status['lock_wait_max'], 7.0)   # carol since +13

    def test_watchdog_reported_when_timeout_configured(self):
        lock = self.make_lock(timeout=30)
        status = StorageStats(START).as_dict(START, LAST, lock=lock)
        self.assertIs(status['timeout-thread-is-alive'], True)

    def test_json_serializable_like_ruok(self):
        lock = self.make_lock(timeout=30)
        stats = StorageStats(START)
        stats.connection_added('app')
        lock.request(object(), lambda: None)
        lock.request(object(), lambda: None)
        status = stats.as_dict(START + 1, LAST, lock=lock,
                               describe_owner=lambda owner: 'someone')
        text = json.dumps({'1': status})
        self.assertEqual(json.loads(text)['1'], status)
