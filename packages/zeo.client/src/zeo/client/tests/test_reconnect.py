"""Reconnecting with the default backoff: back within about a second of
the server's return, without hammering it during the outage.

A 60 s outage used to cost 33 s more before the client noticed the server
was back (delays doubling to 30 s, +-50%).  The tests here do not wait a
minute: they let the backoff reach its cap, which is what a long outage
does, and then bring the server back.
"""
import math
import socket
import threading
import time
import unittest

from ZODB.utils import z64

from zeo.client.connections import manager as manager_module
from zeo.client.config import ClientConfig
from zeo.client.storage import ClientStorage
from zeo.client.tests.support import OID1, RecordingDB, ServerFixture
from zeo.client.tests.support import commit, wait_until


def failures_to_reach_the_cap(config):
    """Failed attempts after which the client waits its longest delay."""
    return 1 + math.ceil(math.log2(
        config.max_disconnect_poll / config.disconnect_poll))


class JitterTests(unittest.TestCase):

    def test_waits_lie_between_half_the_delay_and_the_delay(self):
        waits = [manager_module._jitter(2.0) for _ in range(2000)]
        self.assertGreaterEqual(min(waits), 1.0)
        self.assertLessEqual(max(waits), 2.0)
        self.assertGreater(len(set(waits)), 1000)   # drawn, not fixed

    def test_defaults(self):
        config = ClientConfig(addresses=(('127.0.0.1', 1),))
        # The reference retries every 1 to 2 s; so do we, once the
        # backoff has reached its cap.
        self.assertLessEqual(config.max_disconnect_poll, 2.0)
        self.assertLess(config.disconnect_poll, config.max_disconnect_poll)


class OutageTests(ServerFixture):

    def test_back_within_the_longest_delay_after_a_long_outage(self):
        client = ClientStorage(self.address, wait_timeout=10)  # defaults
        self.addCleanup(client.close)
        client.registerDB(RecordingDB())
        tid = commit(client, (OID1, z64, b'before'))
        config = client.config
        manager = client._manager
        self.stop()
        # A long outage: the client has failed until it waits its longest
        # delay between attempts.
        needed = failures_to_reach_the_cap(config)
        wait_until(lambda: manager._failures >= needed, timeout=10,
                   interval=0.02,
                   message=f'{needed} failed attempts (the cap)')
        self.assertFalse(client.is_connected())
        self.start_server()
        # Bounded: the longest delay, plus time to connect and verify.
        self.assertTrue(
            manager.connected.wait(config.max_disconnect_poll + 2.0),
            'no reconnect within the longest delay')
        self.assertEqual(client.load(OID1), (b'before', tid))


class Refusing:
    """A listening socket that closes every connection at once, noting
    when each arrived."""

    def __init__(self):
        self.sock = socket.create_server(('127.0.0.1', 0))
        self.sock.settimeout(0.05)
        self.address = self.sock.getsockname()
        self.times = []
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            self.times.append(time.monotonic())
            conn.close()

    def close(self):
        self.running = False
        self.thread.join(5)
        self.sock.close()


class SpacingTests(unittest.TestCase):

    def test_attempts_during_an_outage_are_spaced(self):
        server = Refusing()
        self.addCleanup(server.close)
        client = ClientStorage(server.address, wait=False)  # defaults
        self.addCleanup(client.close)
        config = client.config
        wait_until(lambda: len(server.times) >= 4, timeout=10,
                   message='four attempts')
        times = list(server.times)
        gaps = [b - a for a, b in zip(times, times[1:])]
        delay = config.disconnect_poll
        for gap in gaps:
            # Never sooner than half the current delay (less a little for
            # the time the listener took to note the previous attempt).
            self.assertGreaterEqual(gap, delay / 2 - 0.1, gaps)
            delay = min(delay * 2, config.max_disconnect_poll)
        self.assertFalse(client.is_connected())


if __name__ == '__main__':
    unittest.main()
