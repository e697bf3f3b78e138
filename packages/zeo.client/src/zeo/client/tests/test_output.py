"""Output: a channel's bytes leave in call order, from whichever thread.

A real (not running) loop, the recording transport of support, and a
socket stand-in recording what an application thread sends into it."""
from __future__ import annotations

import asyncio
import threading
import unittest

from zeo.client.connections import locks
from zeo.client.connections.output import QUEUED_LIMIT, Output
from zeo.client.tests.support import Transport


class Socket:
    """Takes at most *room* bytes per send."""

    def __init__(self, room=1 << 30):
        self.sent = []
        self.room = room

    def send(self, data):
        taken = bytes(data[:self.room])
        self.sent.append(taken)
        return len(taken)


class BufferingTransport(Transport):
    """Reports *unsent* bytes in its write buffer."""

    unsent = 0

    def get_write_buffer_size(self):
        return self.unsent


class OutputTests(unittest.TestCase):

    def setUp(self):
        self.loop = asyncio.new_event_loop()
        self.addCleanup(self.loop.close)
        self.lock = locks.new_lock(locks.CHANNEL, 'test channel')
        self.failed = []
        self.output = Output(self.loop, self.lock, lambda m, a: [m.encode(), repr(a).encode()],
                             self.failed.append)
        self.transport = self.output.transport = BufferingTransport()
        self.output.loop_thread = -1   # this thread is an application thread

    def turn(self):
        self.loop.run_until_complete(asyncio.sleep(0))

    def send(self, data):
        with self.lock:
            self.output.send(data)

    def test_an_application_thread_sends_into_the_socket_itself(self):
        socket = self.output.socket = Socket()
        self.send(b'ping')
        self.assertEqual(socket.sent, [b'ping'])
        self.turn()
        self.assertEqual(self.transport.written, [])

    def test_what_the_socket_did_not_take_is_left_to_the_loop(self):
        self.output.socket = Socket(room=2)
        self.send(b'ping')
        self.send(b'pong')   # behind the rest of ping
        self.assertEqual(self.transport.written, [])
        self.turn()
        self.assertEqual(self.transport.written, [b'ngpong'])

    def test_nothing_overtakes_bytes_the_transport_still_holds(self):
        socket = self.output.socket = Socket()
        self.transport.unsent = 10
        self.send(b'late')
        self.assertEqual(socket.sent, [])
        self.turn()
        self.assertEqual(self.transport.written, [b'late'])

    def test_without_a_socket_the_loop_writes_everything_in_one_write(self):
        for data in (b'a', b'b', b'c'):
            self.send(data)
        self.turn()
        self.assertEqual(self.transport.written, [b'abc'])

    def test_the_loop_thread_writes_into_the_transport(self):
        self.output.socket = Socket()
        self.output.loop_thread = threading.get_ident()
        self.send(b'x')
        self.assertEqual(self.transport.written, [b'x'])
        self.assertEqual(self.output.socket.sent, [])

    def test_one_way_calls_wait_for_the_next_send_or_the_limit(self):
        socket = self.output.socket = Socket()
        with self.lock:
            self.output.queue(b'1')
            self.output.queue(b'2')
        self.assertEqual(socket.sent, [])
        self.send(b'call')
        self.assertEqual(socket.sent, [b'12call'])
        with self.lock:
            self.output.queue(b'x' * QUEUED_LIMIT)
        self.assertEqual(socket.sent[-1], b'x' * QUEUED_LIMIT)
        self.assertEqual(self.output.queued, [])

    def test_a_failing_stream_ends_the_channel(self):
        def messages():
            yield 'storeBlobStart', ()
            raise OSError('the blob file is gone')

        with self.lock:
            self.output.stream(messages())
        with self.assertLogs('zeo.client', 'ERROR'):
            self.turn()
        self.assertEqual(self.transport.written, [b'storeBlobStart()'])
        [error] = self.failed
        self.assertIsInstance(error, OSError)

    def test_nothing_leaves_once_closed(self):
        self.output.socket = Socket()
        with self.lock:
            self.output.clear()
        self.send(b'x')
        self.turn()
        self.assertEqual((self.transport.written, self.output.socket.sent), ([], []))
