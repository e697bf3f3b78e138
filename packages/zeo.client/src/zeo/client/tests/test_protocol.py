"""ClientProtocol without a network: a recording transport, and the
server's side played by zeo.protocol's ServerConnection."""
from __future__ import annotations

import asyncio
import unittest

from ZODB.POSException import ConflictError, POSKeyError
from zeo.protocol import (
    NEED_DATA, Call, ErrorReply, OneWayCall, ProtocolLimits, Reply,
    ServerConnection, exception_to_wire)

from zeo.client.errors import ClientDisconnected
from zeo.client.protocol import ClientProtocol
from zeo.client.tests.support import Handler, Transport, Waiter




class ProtocolTests(unittest.TestCase):

    def setUp(self):
        self.loop = asyncio.new_event_loop()
        self.addCleanup(self.loop.close)
        self.handler = Handler()
        self.protocol = ClientProtocol(self.loop, ('127.0.0.1', 1), self.handler,
                                       limits=ProtocolLimits(), heartbeat_interval=60)
        self.transport = Transport()
        self.protocol.connection_made(self.transport)
        self.server = ServerConnection(encoding='M', native=False)
        self.log = []
        self.feed(self.server.initiate())

    def feed(self, data, split=False):
        if split:
            for i in range(len(data)):
                self.protocol.data_received(data[i:i + 1])
        else:
            self.protocol.data_received(data)

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
        self.assertTrue(self.protocol.handshake_done.done())

    def test_calls_and_replies_in_any_order(self):
        self.server_receives()
        self.protocol.call('a', (1,), Waiter(self.log, 'a'))
        self.protocol.call('b', (), Waiter(self.log, 'b'))
        self.assertEqual(self.server_receives(), [Call(1, 'a', (1,)), Call(2, 'b', ())])
        self.feed(self.server.send(Reply(2, 'B')) + self.server.send(Reply(1, 'A')),
                  split=True)
        self.assertEqual(self.log, [('b', 'result', 'B'), ('a', 'result', 'A')])

    def test_identical_loads_share_one_request(self):
        self.server_receives()
        key = (b'o' * 8, b't' * 8)
        self.protocol.load(*key, Waiter(self.log, 1))
        self.protocol.load(*key, Waiter(self.log, 2))
        self.protocol.load(*key, None)
        self.assertTrue(self.protocol.loading(*key))
        self.assertEqual(self.server_receives(), [Call(key, 'loadBefore', key)])
        result = (b'data', b's' * 8, None)
        self.feed(self.server.send(Reply(key, result)))
        # The handler (the cache) hears of it before the callers.
        self.assertEqual(self.handler.events[-1], ('load',) + key + (result,))
        self.assertEqual(self.log, [(1, 'result', result), (2, 'result', result)])
        self.assertFalse(self.protocol.loading(*key))

    def test_errors_are_rebuilt(self):
        self.server_receives()
        self.protocol.call('x', (), Waiter(self.log, 'x'))
        key = (b'o' * 8, b't' * 8)
        self.protocol.load(*key, Waiter(self.log, 'load'))
        conflict = ConflictError(oid=b'o' * 8, serials=(b'1' * 8, b'2' * 8))
        self.feed(self.server.send(ErrorReply(1, *exception_to_wire(conflict)))
                  + self.server.send(ErrorReply(key, *exception_to_wire(POSKeyError(b'o' * 8)))))
        (_, _, error1), (_, _, error2) = self.log
        self.assertIsInstance(error1, ConflictError)
        self.assertEqual(error1.oid, b'o' * 8)
        self.assertIsInstance(error2, POSKeyError)

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
        self.protocol.call('x', (), Waiter(self.log, 'x'))
        self.protocol.load(b'o' * 8, b't' * 8, Waiter(self.log, 'load'))
        self.protocol.connection_lost(None)
        self.assertEqual([(n, kind) for n, kind, _ in self.log],
                         [('x', 'error'), ('load', 'error')])
        self.assertIsInstance(self.log[0][2], ClientDisconnected)
        self.assertEqual(self.handler.events[-1], ('lost', None))
        # Later calls fail at once; one-way calls are dropped.
        self.transport.written.clear()
        self.protocol.call('y', (), Waiter(self.log, 'y'))
        self.assertIsInstance(self.log[-1][2], ClientDisconnected)
        self.protocol.one_way('z', ())
        self.assertEqual(self.transport.written, [])

    def test_cork_collects_output(self):
        self.server_receives()
        self.protocol.cork()
        self.protocol.one_way('a', ())
        self.protocol.one_way('b', ())
        self.assertEqual(self.transport.written, [])
        self.protocol.uncork()
        self.assertEqual(len(self.transport.written), 1)
        self.assertEqual(self.server_receives(), [OneWayCall('a', ()), OneWayCall('b', ())])

    def test_a_stream_keeps_its_place_behind_corked_output(self):
        self.server_receives()
        self.protocol.cork()
        self.protocol.one_way('before', ())
        self.protocol.stream(iter([('storeBlobStart', ())]))
        self.protocol.one_way('after', ())
        self.protocol.uncork()
        self.assertEqual(self.server_receives(), [
            OneWayCall('before', ()), OneWayCall('storeBlobStart', ()),
            OneWayCall('after', ())])

    def test_streams_honour_back_pressure_and_order(self):
        self.server_receives()
        self.protocol.pause_writing()
        self.protocol.stream(iter([('storeBlobStart', ()), ('storeBlobChunk', (b'x',))]))
        self.protocol.one_way('after', ())
        self.assertEqual(self.transport.written, [])
        self.protocol.resume_writing()
        self.assertEqual(self.server_receives(), [
            OneWayCall('storeBlobStart', ()), OneWayCall('storeBlobChunk', (b'x',)),
            OneWayCall('after', ())])

    def test_blob_chunks_are_written_as_read(self):
        self.server_receives()
        chunk = b'c' * (1 << 20)
        self.protocol.stream(iter([('storeBlobStart', ()), ('storeBlobChunk', (chunk,))]))
        self.assertTrue(any(piece is chunk for piece in self.transport.pieces))
        self.assertEqual(self.server_receives(), [
            OneWayCall('storeBlobStart', ()), OneWayCall('storeBlobChunk', (chunk,))])

    def test_large_frames_are_read_into_buffers_of_their_own(self):
        self.server_receives()
        chunk = bytes(range(256)) * 4096
        data = self.server.send(OneWayCall('receiveBlobChunk', (b'o' * 8, b't' * 8, chunk)))
        own = 0
        while data:
            buffer = self.protocol.get_buffer(-1)
            if buffer is not self.protocol._buffer:
                own += 1
            n = min(len(buffer), 65536, len(data))
            buffer[:n] = data[:n]
            data = data[n:]
            self.protocol.buffer_updated(n)
        self.assertGreater(own, 10)
        self.assertEqual(self.handler.events[-1],
                         ('message', 'receiveBlobChunk', (b'o' * 8, b't' * 8, chunk)))

    def test_a_protocol_error_closes_the_connection(self):
        self.server_receives()
        self.feed(b'\x00\x00\x00\x02\xc1\xc1')  # not msgpack
        self.assertTrue(self.transport.closing)
        self.assertTrue(self.protocol.closed)

    def test_heartbeat_is_a_loop_timer(self):
        self.server_receives()
        self.protocol._send_heartbeat()
        events = self.server_receives()
        self.assertEqual(type(events[0]).__name__, 'Heartbeat')
        self.assertIsNotNone(self.protocol._heartbeat)
        self.protocol.close()
        self.assertIsNone(self.protocol._heartbeat)


if __name__ == '__main__':
    unittest.main()
