"""SocketBaton over a real socket pair and a real loop."""
from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import unittest

from zeo.client.connections import baton as baton_module
from zeo.client.connections.loops import new_event_loop


class BatonTests(unittest.TestCase):

    def setUp(self):
        self.loop = new_event_loop('uvloop')
        self.addCleanup(self.loop.close)
        ours, self.peer = socket.socketpair()
        self.addCleanup(self.peer.close)
        self.transport, _ = self.loop.run_until_complete(
            self.loop.create_connection(asyncio.Protocol, sock=ours))
        self.transport.pause_reading()
        self.heard = 0
        self.baton = baton_module.SocketBaton(self.loop, self.transport, self.readable)
        self.addCleanup(self.close)

    def close(self):
        self.baton.reader = None
        self.baton.close()
        self.baton.release()
        self.transport.close()
        self.loop.run_until_complete(asyncio.sleep(0))

    def readable(self):
        self.heard += 1

    def turn(self):
        self.heard = 0
        self.loop.run_until_complete(asyncio.sleep(0.05))
        return self.heard

    def test_the_loop_hears_of_input_only_while_it_holds_the_baton(self):
        self.peer.send(b'x')
        self.assertGreater(self.turn(), 0)
        self.baton.take(threading.get_ident())
        self.assertEqual(self.turn(), 0)
        self.assertEqual(self.baton.socket.recv(10), b'x')  # ours to read
        self.peer.send(b'y')
        self.assertEqual(self.turn(), 0)
        self.baton.give_back()
        self.assertIsNone(self.baton.reader)
        self.assertGreater(self.turn(), 0)

    def test_close_wakes_the_reading_thread_which_releases_the_descriptors(self):
        self.baton.take(threading.get_ident())
        returned = threading.Event()

        def read():
            self.baton.wait(timeout=30_000)
            returned.set()

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(0.05)
        self.assertFalse(returned.is_set())
        fd = self.baton.socket.fileno()
        self.baton.close()
        self.assertTrue(returned.wait(5))
        reader.join()
        os.fstat(fd)  # still open: the reader may be polling it
        self.baton.reader = None
        self.baton.release()
        with self.assertRaises(OSError):
            os.fstat(fd)

    def test_close_without_a_reader_releases_at_once(self):
        fd = self.baton.socket.fileno()
        self.baton.close()
        with self.assertRaises(OSError):
            os.fstat(fd)

    def test_available(self):
        self.assertTrue(baton_module.available(self.transport))
        self.assertFalse(baton_module.available(None))
