"""Large messages through a connection: payloads of LARGE_PAYLOAD_SIZE and
more decoded in place or read into a buffer of their own, blob chunks as
views of the frame, the encoder's grown buffer kept for a stream of chunks
and given back, and send_pieces (a chunk sent without being copied).  See
"Large messages" in docs/protocol.rst."""

import gc
import unittest

import msgpack

from zeo.protocol.connection import KEEP_GROWN_BUFFER_SIZE
from zeo.protocol.connection import LARGE_PAYLOAD_SIZE
from zeo.protocol.connection import ClientConnection
from zeo.protocol.connection import ConnectionState
from zeo.protocol.connection import ServerConnection
from zeo.protocol.errors import EncodeError
from zeo.protocol.errors import LocalProtocolError
from zeo.protocol.errors import RemoteProtocolError
from zeo.protocol.events import Call
from zeo.protocol.events import OneWayCall
from zeo.protocol.events import ProtocolAgreed
from zeo.protocol.events import Reply
from zeo.protocol.framing import MIN_PIECE_SIZE
from zeo.protocol.framing import frame
from zeo.protocol.framing import frame_header
from zeo.protocol.tests.support import OID
from zeo.protocol.tests.support import TID1
from zeo.protocol.tests.support import connected_pair
from zeo.protocol.tests.support import drain
from zeo.protocol.tests.support import TracedMemory


class LargePayloadTests(unittest.TestCase):
    """Payloads of LARGE_PAYLOAD_SIZE and more are decoded in place."""

    def stream(self, encoding):
        server, client = connected_pair(encoding)
        big = bytes(range(256)) * (LARGE_PAYLOAD_SIZE // 256 + 3)
        calls = [
            Call(1, "lastTransaction"),
            OneWayCall("storeBlobChunk", (big,)),
            Call(2, "lastTransaction"),
            OneWayCall("storeBlobChunk", (big[:-1] + b"!",)),
            OneWayCall("storeBlobChunk", (big * 2,)),
        ]
        return server, b"".join(client.send(call) for call in calls), calls

    def test_any_read_size_through_a_reused_buffer(self):
        # As the asyncio adapters feed it: views of one buffer that the
        # next read overwrites.
        for encoding in "MZ":
            for size in (1000, 65536, 100_003, 1 << 20):
                with self.subTest(encoding=encoding, read_size=size):
                    server, data, calls = self.stream(encoding)
                    buffer = bytearray(size)
                    view = memoryview(buffer)
                    events = []
                    for start in range(0, len(data), size):
                        piece = data[start:start + size]
                        buffer[:len(piece)] = piece
                        server.receive_data(view[:len(piece)])
                        events.extend(drain(server))
                        buffer[:] = b"\xee" * size  # the buffer is reused
                    self.assertEqual(events, calls)
                    self.assertIs(server.state, ConnectionState.OPEN)

    def test_reading_into_the_offered_buffer(self):
        # As the asyncio adapters do: into the connection's buffer when it
        # offers one, else into their own, reused one.
        for encoding in "MZ":
            for size in (4096, 100_003):
                with self.subTest(encoding=encoding, read_size=size):
                    server, data, calls = self.stream(encoding)
                    own = bytearray(size)
                    events, direct, start = [], 0, 0
                    while start < len(data):
                        target = server.receive_buffer()
                        buffer = own if target is None else target
                        piece = data[start:start + min(size, len(buffer))]
                        buffer[:len(piece)] = piece
                        start += len(piece)
                        if target is None:
                            server.receive_data(memoryview(own)[:len(piece)])
                            own[:] = b"\xee" * size
                        else:
                            server.received_into(len(piece))
                            direct += len(piece)
                        events.extend(drain(server))
                    self.assertEqual(events, calls)
                    self.assertGreater(direct, len(data) // 2 if size == 4096 else 0)

    def test_blob_chunks_arrive_as_views_of_the_frame(self):
        # The buffer they view is never resized while they live, whatever
        # arrives next and however it is split.
        server, client = connected_pair("M")
        chunk = bytes(range(256)) * 1024
        data = b"".join(client.send(OneWayCall("storeBlobChunk", (chunk,)))
                        for _ in range(3))
        held = []
        for start in range(0, len(data), 70_000):
            server.receive_data(data[start:start + 70_000])
            held.extend(drain(server))
        self.assertEqual(len(held), 3)
        for event in held:
            self.assertIsInstance(event.args[0], memoryview)
            self.assertEqual(event.args[0], chunk)
        # Other large messages are decoded whole, as bytes.
        server.receive_data(client.send(OneWayCall("storeBlobEnd", (chunk, b"s" * 8))))
        self.assertIs(type(drain(server)[0].args[0]), bytes)

    def test_no_buffer_is_offered_after_an_error(self):
        server, client = connected_pair("M")
        server.receive_data(frame(b"\xc1")
                            + frame(b"x" * LARGE_PAYLOAD_SIZE)[:LARGE_PAYLOAD_SIZE // 2])
        with self.assertRaises(RemoteProtocolError):
            server.next_event()
        self.assertIsNone(server.receive_buffer())
        with self.assertRaises(LocalProtocolError):
            server.received_into(10)

    def test_undecodable_large_payload(self):
        for encoding in "MZ":
            with self.subTest(encoding=encoding):
                server, _ = connected_pair(encoding)
                server.receive_data(frame(b"\xc1" * LARGE_PAYLOAD_SIZE))
                with self.assertRaises(RemoteProtocolError):
                    server.next_event()
                self.assertIs(server.state, ConnectionState.ERROR)

    def test_a_large_message_the_role_must_not_receive(self):
        server, client = connected_pair("M")
        data = server.send(OneWayCall("receiveBlobChunk", (b"x" * LARGE_PAYLOAD_SIZE,)))
        data += server.send(Reply(1, b"y" * LARGE_PAYLOAD_SIZE))
        client.receive_data(data)
        self.assertEqual(drain(client)[1].result, b"y" * LARGE_PAYLOAD_SIZE)
        # A server never takes a Reply, large or not.
        server2, client2 = connected_pair("M")
        server2.receive_data(
            frame(msgpack.packb((1, 0, ".reply", b"z" * LARGE_PAYLOAD_SIZE))))
        with self.assertRaises(RemoteProtocolError):
            server2.next_event()


def read_into_offers(connection, data, read_size):
    """Pass *data* to *connection* as the asyncio adapters do: read into
    the buffer it offers, else into a buffer of our own, and ask for a
    buffer once more at the end (as an event loop does before its next
    read); returns the events, each drained as soon as it is there."""
    own = memoryview(bytearray(read_size))
    events, start = [], 0
    while start < len(data):
        target = connection.receive_buffer()
        buffer = own if target is None else target
        size = min(read_size, len(buffer), len(data) - start)
        buffer[:size] = data[start:start + size]
        start += size
        del buffer
        if target is None:
            connection.receive_data(own[:size])
        else:
            del target
            connection.received_into(size)
        events.extend(drain(connection))
    connection.receive_buffer()
    return events


class ReceivingMemoryTests(unittest.TestCase):
    """What a connection holds for a large message grows with the bytes
    received, never with the size its frame header announces."""

    READ_SIZE = 256 * 1024

    def test_a_frame_announced_at_64_mib_of_which_4_arrive(self):
        # The old reader allocated (and zero-filled) all 64 MiB.
        server, client = connected_pair("M")
        head = client.send(OneWayCall("storeBlobChunk", (b"c" * 1000,)))
        data = frame_header(64 << 20) + head[4:] + b"b" * (4 << 20)
        with TracedMemory() as memory:
            events = read_into_offers(server, data, self.READ_SIZE)
            peak = memory.peak()
        self.assertEqual(events, [])
        self.assertLess(peak, self.bound(data))

    def bound(self, data):
        # Twice what arrived, the reader's slack and our own read buffer.
        return 2 * len(data) + 2 * MIN_PIECE_SIZE + self.READ_SIZE + 10_000

    def test_blob_chunks_of_1_and_60_mib_are_copied_once(self):
        # Read into the pieces the reader offers, joined once (the pieces
        # and the frame are held together for that moment), the chunk a
        # view of the frame.
        server, client = connected_pair("M")
        for size in (1 << 20, 60 << 20):
            with self.subTest(size=size):
                chunk = bytes(range(256)) * (size // 256)
                data = client.send(OneWayCall("storeBlobChunk", (chunk,)))
                with TracedMemory() as memory:
                    [event] = read_into_offers(server, data, self.READ_SIZE)
                    peak = memory.peak()
                self.assertIsInstance(event.args[0], memoryview)
                self.assertEqual(event.args[0], chunk)
                self.assertLess(peak, self.bound(data))
                del event, chunk, data


class EncodingMemoryTests(unittest.TestCase):
    """A connection does not keep the memory one large message needed."""

    def held_after(self, encoding, size):
        server, client = connected_pair(encoding=encoding)
        with TracedMemory() as memory:
            data = server.send(Reply(1, b"x" * size))
            self.assertEqual(len(data) // 1000, size // 1000)
            del data
            gc.collect()
            # The next message is small, and goes through the same path.
            server.send(Reply(2, None))
            return memory.held()

    def test_msgpack(self):
        self.assertLess(self.held_after("M", 20_000_000), 1_000_000)

    def test_pickle(self):
        self.assertLess(self.held_after("Z", 20_000_000), 1_000_000)

    def test_a_stream_of_chunks_reuses_the_grown_buffer(self):
        # Up to KEEP_GROWN_BUFFER_SIZE, the buffer one chunk grew serves
        # the next; the next small message gives it back.
        server, client = connected_pair("M")
        chunk = b"c" * (1 << 20)
        with TracedMemory() as memory:
            server.send(OneWayCall("receiveBlobChunk", (chunk,)))
            packer = server._encode.__self__
            for _ in range(3):
                server.send(OneWayCall("receiveBlobChunk", (chunk,)))
                self.assertIs(server._encode.__self__, packer)
            during = memory.held()
            del packer
            server.send(Reply(2, None))
            gc.collect()
            after = memory.held()
        self.assertGreater(during, 1 << 20)   # the grown buffer, kept
        self.assertLess(after, 1_000_000)     # and given back
        # Bigger messages give it back at once.
        self.assertGreater(20_000_000, KEEP_GROWN_BUFFER_SIZE)
        packer = server._encode.__self__
        server.send(OneWayCall("receiveBlobChunk", (b"c" * (KEEP_GROWN_BUFFER_SIZE + 1),)))
        self.assertIsNot(server._encode.__self__, packer)
        self.assertEqual(server._kept_buffer_size, server.codec.kept_buffer_size)


class SendPiecesTests(unittest.TestCase):
    """send_pieces: the same bytes as send, a blob chunk not copied."""

    def test_the_same_bytes_as_send(self):
        chunk = b"c" * (1 << 20)
        for encoding in "MZ":
            for event in (OneWayCall("receiveBlobChunk", (OID, TID1, chunk)),
                          OneWayCall("receiveBlobStop", (OID, TID1)),
                          Reply(5, chunk)):
                with self.subTest(encoding=encoding, event=event[2]):
                    server, client = connected_pair(encoding)
                    pieces = server.send_pieces(event)
                    self.assertIsInstance(pieces, list)
                    data = b"".join(pieces)
                    self.assertEqual(data, server.send(event))
                    client.receive_data(data)
                    self.assertEqual(client.next_event(), event)

    def test_a_chunk_is_not_copied(self):
        server, client = connected_pair("M")
        chunk = b"c" * (1 << 20)
        event = OneWayCall("receiveBlobChunk", (OID, TID1, chunk))
        with TracedMemory() as memory:
            for _ in range(3):
                pieces = server.send_pieces(event)
                self.assertIs(pieces[-1], chunk)
            peak = memory.peak()
        self.assertLess(peak, 100_000)

    def test_a_small_head_gives_a_grown_buffer_back(self):
        server, client = connected_pair("M")
        server.send(OneWayCall("receiveBlobChunk", (b"c" * (1 << 20),)))
        self.assertEqual(server._kept_buffer_size, -1)  # kept for a stream
        server.send_pieces(OneWayCall("receiveBlobChunk", (b"c" * (1 << 20),)))
        self.assertEqual(server._kept_buffer_size, server.codec.kept_buffer_size)

    def test_what_the_connection_owes_goes_first(self):
        server = ServerConnection(encoding="M")
        client, twin = ClientConnection(), ClientConnection()
        greeting = server.initiate()
        for connection in (client, twin):
            connection.receive_data(greeting)
            list(connection.events())  # agreed; the answer is owed
        pieces = client.send_pieces(OneWayCall("storeBlobChunk", (b"c" * (1 << 17),)))
        self.assertEqual(pieces[0], twin.data_to_send())
        self.assertEqual(client.data_to_send(), b"")
        server.receive_data(b"".join(pieces))
        self.assertEqual([type(e) for e in server.events()], [ProtocolAgreed, OneWayCall])

    def test_refusals_are_those_of_send(self):
        server, client = connected_pair()
        with self.assertRaises(LocalProtocolError):
            server.send_pieces(Call(1, "x"))
        with self.assertRaises(LocalProtocolError):
            ClientConnection().send_pieces(OneWayCall("x", (b"c" * (1 << 20),)))
        with self.assertRaises(EncodeError):
            client.send_pieces(OneWayCall("x", ({1}, b"c" * (1 << 20))))
        # and the connection still works
        server.receive_data(b"".join(client.send_pieces(Call(2, "ping"))))
        self.assertEqual(server.next_event(), Call(2, "ping"))
