"""The client's choice of event loop (zeo.client.connections.loops)."""

import asyncio
import threading
import unittest

import uvloop
from ZODB.utils import p64, z64

from zeo.client.config import ClientConfig
from zeo.client.connections.loops import DEFAULT_EVENT_LOOP, check_event_loop, new_event_loop
from zeo.client.tests.support import ServerFixture, commit


LOOP_CLASSES = {'uvloop': uvloop.Loop, 'asyncio': asyncio.SelectorEventLoop}


class NewLoopTests(unittest.TestCase):

    def test_kinds(self):
        for name, kind in LOOP_CLASSES.items():
            loop = new_event_loop(name)
            try:
                self.assertIsInstance(loop, kind)
            finally:
                loop.close()

    def test_uvloop_is_the_default_here(self):
        self.assertEqual(DEFAULT_EVENT_LOOP, 'uvloop')
        self.assertEqual(ClientConfig(addresses=(('h', 1),)).event_loop, 'uvloop')

    def test_unknown_names_are_refused_with_the_choices(self):
        with self.assertRaisesRegex(ValueError, 'uvloop, asyncio.*tornado'):
            check_event_loop('tornado')
        with self.assertRaises(ValueError):
            ClientConfig.from_options(('h', 1), event_loop='tornado')


class EveryLoopServesTests(ServerFixture):
    """The same client work on each loop, the server on the other."""

    def check(self, client_loop, server_loop):
        self.stop()
        self.start_server(event_loop=server_loop)
        client = self.client(event_loop=client_loop)
        self.assertIsInstance(client._runner.loop, LOOP_CLASSES[client_loop])
        self.assertTrue(client._runner._thread.is_alive())
        oid = p64(1)
        tid = commit(client, (oid, z64, b'first'))
        self.assertEqual(client.load(oid), (b'first', tid))
        client.close()
        self.assertFalse(any(t.name.startswith('zeo.client') and t.is_alive()
                             for t in threading.enumerate()))

    def test_asyncio_client_uvloop_server(self):
        self.check('asyncio', 'uvloop')

    def test_uvloop_client_asyncio_server(self):
        self.check('uvloop', 'asyncio')


if __name__ == '__main__':
    unittest.main()
