"""Runner: the loop thread, and what the storage calls."""
from __future__ import annotations

import threading
import time
import unittest

from ZODB.MappingStorage import MappingStorage

import zeo.server
from zeo.client.cache import MemoryCache
from zeo.client.config import ClientConfig
from zeo.client.errors import ClientDisconnected
from zeo.client.connections import Runner
from zeo.client.tests.support import free_port, wait_until


class Client:
    """The storage-side callbacks a connection manager needs."""

    def notify_connected(self, channel, info):
        self.info = info

    def notify_disconnected(self, channel):
        pass

    def info(self, info):
        pass


class RunnerTests(unittest.TestCase):

    def setUp(self):
        self.port = free_port()
        self.stops = []
        self.addCleanup(lambda: [stop() for stop in self.stops])

    def serve(self):
        address, stop = zeo.server.server(storages={'1': MappingStorage()},
                                          port=self.port)
        self.stops.append(stop)
        return address

    def runner(self, **options):
        config = ClientConfig.from_options(
            self.port, disconnect_poll=0.05, max_disconnect_poll=0.1, **options)
        runner = Runner(config, MemoryCache(1 << 20), Client())
        self.addCleanup(runner.close)
        return runner

    def test_calls(self):
        self.serve()
        runner = self.runner()
        channel = runner.wait_connected()
        self.assertIsNone(runner.call('ping'))
        self.assertIsNone(runner.call('ping', channel=channel))
        self.assertEqual(len(runner.call('new_oids', 3)), 3)
        runner.one_way(None, 'set_client_label', ('label',))
        self.assertEqual(runner.call('server_status')['connections'], 1)

    def test_calls_wait_for_the_connection(self):
        runner = self.runner(wait_timeout=30)
        threading.Timer(0.2, self.serve).start()
        start = time.monotonic()
        self.assertIsNone(runner.call('ping'))
        self.assertGreater(time.monotonic() - start, 0.1)

    def test_no_synchronous_call_from_the_loop_thread(self):
        self.serve()
        runner = self.runner()
        runner.wait_connected()
        errors = []

        def on_loop():
            try:
                runner.call('ping')
            except RuntimeError as error:
                errors.append(error)

        runner.run_on_loop(on_loop)
        wait_until(lambda: errors)

    def test_close(self):
        self.serve()
        runner = self.runner()
        runner.wait_connected()
        thread = runner._thread
        runner.close()
        self.assertFalse(thread.is_alive())
        self.assertRaises(ClientDisconnected, runner.call, 'ping')
        runner.close()   # again: nothing

    def test_close_fails_calls_waiting_for_a_connection(self):
        runner = self.runner(wait_timeout=30)
        errors = []

        def ping():
            try:
                runner.call('ping')
            except ClientDisconnected as error:
                errors.append(error)

        thread = threading.Thread(target=ping)
        thread.start()
        time.sleep(0.1)
        runner.close()
        thread.join(5)
        self.assertEqual(len(errors), 1)


if __name__ == '__main__':
    unittest.main()
