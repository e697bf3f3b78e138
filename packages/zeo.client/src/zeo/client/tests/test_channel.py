"""Channel (and its adapter) without a network: a recording transport,
and the server's side played by zeo.protocol's ServerConnection.  What
application threads do with a channel over a real server is in
test_channel_threads."""
from __future__ import annotations

import asyncio
import threading
import unittest

from ZODB.POSException import ConflictError, POSKeyError
from zeo.protocol import (
    NEED_DATA, Call, ErrorReply, OneWayCall, ProtocolLimits, Reply,
    ServerConnection, exception_to_wire)

from zeo.client.errors import ClientDisconnected
from zeo.client.connections import ClientAdapter, Channel
from zeo.client.tests.support import Handler, Transport, Waiter, feed




class ChannelTests(unittest.TestCase):

    def setUp(self):
        self.loop = asyncio.new_event_loop()
        self.addCleanup(self.loop.close)
        self.handler = Handler()
        self.channel = Channel(self.loop, ('127.0.0.1', 1), self.handler,
                               limits=ProtocolLimits(), heartbeat_interval=60)
        self.adapter = ClientAdapter(self.channel)
        self.transport = Transport()
        self.adapter.connection_made(self.transport)
        self.server = ServerConnection(encoding='M', native=False)
        self.log = []
        self.feed(self.server.initiate())

    def feed(self, data, split=False):
        feed(self.adapter, data, 1 if split else None)

    def call(self, method, args, name):
        # What Channel.call does but for the waiting: the loop's way.
        future = self.channel.request(method, *args)
        future.add_done_callback(lambda f: self.log.append(
            (name, 'error', f.exception()) if f.exception() else (name, 'result', f.result())))
        return future

    def turn(self):
        self.loop.run_until_complete(asyncio.sleep(0))

    def server_receives(self):
        data = b''.join(self.transport.written)
        self.transport.written.clear()
        self.server.receive_data(data)
        events = []
        while True:
            event = self.server.next_event()
            if event is NEED_DATA:
                return events
            events.append(event)

    def test_handshake(self):
        self.assertEqual(self.handler.events, [('agreed',)])
        events = self.server_receives()
        self.assertEqual(events[0].encoding, 'M')
        self.assertTrue(self.channel.handshake_done.done())

    def test_calls_and_replies_in_any_order(self):
        self.server_receives()
        a = self.channel.request('a', 1)
        b = self.channel.request('b')
        self.assertEqual(self.server_receives(), [Call(1, 'a', (1,)), Call(2, 'b', ())])
        self.feed(self.server.send(Reply(2, 'B')) + self.server.send(Reply(1, 'A')),
                  split=True)
        self.assertEqual((a.result(), b.result()), ('A', 'B'))

    def test_identical_loads_share_one_request(self):
        self.server_receives()
        key = (b'o' * 8, b't' * 8)
        self.channel.prefetch(*key)
        self.channel.prefetch(*key)
        self.assertTrue(self.channel.loading(*key))
        self.assertEqual(self.server_receives(), [Call(key, 'loadBefore', key)])
        # Two application threads wait for it too.
        self.assertFalse(self.channel._replies.add_load(key, Waiter(self.log, 1)))
        self.assertFalse(self.channel._replies.add_load(key, Waiter(self.log, 2)))
        result = (b'data', b's' * 8, None)
        self.feed(self.server.send(Reply(key, result)))
        # The handler (the cache) hears of it before the callers.
        self.assertEqual(self.handler.events[-1], ('load',) + key + (result,))
        self.assertEqual(self.log, [(1, 'result', result), (2, 'result', result)])
        self.assertFalse(self.channel.loading(*key))

    def test_errors_are_rebuilt(self):
        self.server_receives()
        call = self.channel.request('x')
        key = (b'o' * 8, b't' * 8)
        self.channel._replies.add_load(key, Waiter(self.log, 'load'))
        conflict = ConflictError(oid=b'o' * 8, serials=(b'1' * 8, b'2' * 8))
        self.feed(self.server.send(ErrorReply(1, *exception_to_wire(conflict)))
                  + self.server.send(ErrorReply(key, *exception_to_wire(POSKeyError(b'o' * 8)))))
        self.assertIsInstance(call.exception(), ConflictError)
        self.assertEqual(call.exception().oid, b'o' * 8)
        (_, _, error), = self.log
        self.assertIsInstance(error, POSKeyError)

    def test_server_values_in_log_lines_are_cut(self):
        # Issue #17 (6): a reply or error reply nobody waits for is logged,
        # with what the server sent cut short.
        self.server_receives()
        huge = 'x' * (4 << 20)
        with self.assertLogs('zeo.client', 'WARNING') as logged:
            self.feed(self.server.send(Reply(2**63, huge))
                      + self.server.send(ErrorReply(7, 'builtins.ValueError', (huge,)))
                      + self.server.send(ErrorReply(8, huge, {huge: huge})))
        self.assertEqual(len(logged.output), 3)
        for line in logged.output:
            self.assertLess(len(line), 2000)
        self.assertIn("unknown call 9223372036854775808", logged.output[0])
        self.assertIn("unknown call 7: ValueError: xxx", logged.output[1])

    def test_one_way_messages_go_to_the_handler_in_order(self):
        self.server_receives()
        self.feed(self.server.send(OneWayCall('info', ({'length': 1},)))
                  + self.server.send(OneWayCall('invalidateTransaction', (b't' * 8, [b'o' * 8]))))
        self.assertEqual(self.handler.events[1:], [
            ('message', 'info', ({'length': 1},)),
            ('message', 'invalidateTransaction', (b't' * 8, (b'o' * 8,)))])

    def test_connection_lost_fails_calls_in_flight(self):
        self.server_receives()
        call = self.channel.request('x')
        self.channel._replies.add_load((b'o' * 8, b't' * 8), Waiter(self.log, 'load'))
        self.adapter.connection_lost(None)
        self.assertIsInstance(call.exception(), ClientDisconnected)
        self.assertEqual([(n, kind) for n, kind, _ in self.log], [('load', 'error')])
        self.assertIsInstance(self.log[0][2], ClientDisconnected)
        self.assertEqual(self.handler.events[-1], ('lost', None))
        # Later calls fail at once; one-way calls are dropped.
        self.transport.written.clear()
        self.assertIsInstance(self.channel.request('y').exception(), ClientDisconnected)
        self.assertRaises(ClientDisconnected, self.channel.call, 'y', ())
        self.assertRaises(ClientDisconnected, self.channel.load, b'o' * 8, b't' * 8)
        self.channel.one_way('z', ())
        self.assertEqual(self.transport.written, [])

    def test_output_waiting_for_the_loop_leaves_in_one_write(self):
        self.server_receives()
        self.adapter.pause_writing()
        self.channel.one_way('a', ())
        self.channel.request('b')
        self.assertEqual(self.transport.written, [])
        self.adapter.resume_writing()
        self.assertEqual(len(self.transport.written), 1)
        self.assertEqual(self.server_receives(), [OneWayCall('a', ()), Call(1, 'b', ())])

    def test_application_threads_one_way_calls_leave_with_the_next_call(self):
        self.server_receives()
        output = self.channel._output
        output.loop_thread = None   # as if this were an application thread
        self.channel.one_way('a', ())
        self.channel.one_way('b', ())
        self.assertEqual(self.transport.written, [])
        self.assertEqual(len(output.queued), 2)
        output.loop_thread = threading.get_ident()
        self.channel.request('c')
        self.assertEqual(len(self.transport.written), 1)
        self.assertEqual(self.server_receives(), [
            OneWayCall('a', ()), OneWayCall('b', ()), Call(1, 'c', ())])

    def test_a_stream_keeps_its_place_between_output_before_and_after(self):
        self.server_receives()
        self.adapter.pause_writing()
        self.channel.one_way('before', ())
        self.channel.stream(iter([('storeBlobStart', ())]))
        self.channel.one_way('after', ())
        self.adapter.resume_writing()
        self.assertEqual(self.server_receives(), [
            OneWayCall('before', ()), OneWayCall('storeBlobStart', ()),
            OneWayCall('after', ())])

    def test_streams_honour_back_pressure_and_order(self):
        self.server_receives()
        self.adapter.pause_writing()
        self.channel.stream(iter([('storeBlobStart', ()), ('storeBlobChunk', (b'x',))]))
        self.channel.one_way('after', ())
        self.turn()
        self.assertEqual(self.transport.written, [])
        self.adapter.resume_writing()
        self.assertEqual(self.server_receives(), [
            OneWayCall('storeBlobStart', ()), OneWayCall('storeBlobChunk', (b'x',)),
            OneWayCall('after', ())])

    def test_blob_chunks_are_written_as_read(self):
        self.server_receives()
        chunk = b'c' * (1 << 20)
        self.channel.stream(iter([('storeBlobStart', ()), ('storeBlobChunk', (chunk,))]))
        self.turn()
        self.assertTrue(any(piece is chunk for piece in self.transport.pieces))
        self.assertEqual(self.server_receives(), [
            OneWayCall('storeBlobStart', ()), OneWayCall('storeBlobChunk', (chunk,))])

    def test_large_frames_are_read_into_buffers_of_their_own(self):
        self.server_receives()
        chunk = bytes(range(256)) * 4096
        data = self.server.send(OneWayCall('receiveBlobChunk', (b'o' * 8, b't' * 8, chunk)))
        own = 0
        while data:
            buffer = self.adapter.get_buffer(-1)
            if buffer is not self.channel._buffer:
                own += 1
            n = min(len(buffer), 65536, len(data))
            buffer[:n] = data[:n]
            data = data[n:]
            self.adapter.buffer_updated(n)
        self.assertGreater(own, 10)
        self.assertEqual(self.handler.events[-1],
                         ('message', 'receiveBlobChunk', (b'o' * 8, b't' * 8, chunk)))

    def test_a_protocol_error_closes_the_connection(self):
        self.server_receives()
        self.feed(b'\x00\x00\x00\x02\xc1\xc1')  # not msgpack
        self.assertTrue(self.transport.closing)
        self.assertTrue(self.channel.closed)

    def test_heartbeat_is_a_loop_timer(self):
        self.server_receives()
        self.channel._send_heartbeat()
        events = self.server_receives()
        self.assertEqual(type(events[0]).__name__, 'Heartbeat')
        self.assertIsNotNone(self.channel._heartbeat)
        self.channel.close()
        self.assertIsNone(self.channel._heartbeat)


if __name__ == '__main__':
    unittest.main()
