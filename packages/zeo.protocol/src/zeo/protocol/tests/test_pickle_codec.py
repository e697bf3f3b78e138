import io
import pickle
import pickletools
import struct
import unittest

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from zeo.protocol.errors import EncodeError
from zeo.protocol.errors import LocalProtocolError
from zeo.protocol.errors import RemoteProtocolError
from zeo.protocol.events import Call
from zeo.protocol.events import ErrorReply
from zeo.protocol.events import OneWayCall
from zeo.protocol.events import ProtocolAgreed
from zeo.protocol.events import Reply
from zeo.protocol.events import Status
from zeo.protocol.msgpack_codec import SEPARATE_ARGUMENT_SIZE
from zeo.protocol.pickle_codec import PickleCodec
from zeo.protocol.tests.support import OID
from zeo.protocol.tests.support import REFERENCE_MESSAGES
from zeo.protocol.tests.support import TID1
from zeo.protocol.tests.support import TracedMemory
from zeo.protocol.tests.support import argument_tuples
from zeo.protocol.tests.support import connected_pair
from zeo.protocol.tests.support import messages
from zeo.protocol.tests.support import method_names
from zeo.protocol.tests.support import msgids


def zeo_pickle(event):
    """The bytes ZEO's marshal sends: a protocol 3 pickler in fast mode."""
    out = io.BytesIO()
    pickler = pickle.Pickler(out, 3)
    pickler.fast = True
    pickler.dump(tuple(event))
    return out.getvalue()


#: Calls ending with a large bytes argument, of any size around the limit.
large_last_arguments = st.integers(0, 300).map(
    lambda extra: bytes(range(256)) * (SEPARATE_ARGUMENT_SIZE // 256) + b"\x42" * extra)
calls_with_a_large_last_argument = st.one_of(
    st.builds(lambda msgid, name, args, last: Call(msgid, name, args + (last,)),
              msgids, method_names, argument_tuples, large_last_arguments),
    st.builds(lambda name, args, last: OneWayCall(name, args + (last,)),
              method_names, argument_tuples, large_last_arguments),
)


class ReferenceBytesTests(unittest.TestCase):

    def test_encodes_the_reference_bytes(self):
        codec = PickleCodec()
        for name, (event, _, framed, _) in REFERENCE_MESSAGES.items():
            with self.subTest(name):
                self.assertEqual(codec.encode(event), framed[4:])

    def test_decodes_the_reference_bytes(self):
        codec = PickleCodec()
        for name, (event, _, framed, _) in REFERENCE_MESSAGES.items():
            with self.subTest(name):
                decoded = codec.decode(framed[4:])
                # pickle keeps lists as lists: no msgpack-style conversion
                self.assertEqual(decoded, event)
                self.assertIs(type(decoded), type(event))

    def test_protocol_3_without_memo_opcodes(self):
        payload = PickleCodec().encode(Call(1, "x", ((b"a", b"b"), (b"a", b"b"))))
        self.assertEqual(payload[:2], b"\x80\x03")
        opcodes = [op.name for op, _, _ in __import__("pickletools").genops(payload)]
        self.assertNotIn("BINPUT", opcodes)
        self.assertNotIn("MEMOIZE", opcodes)


class PickleCodecTests(unittest.TestCase):

    def setUp(self):
        self.codec = PickleCodec()

    def test_encoding_letter(self):
        self.assertEqual(self.codec.encoding, "Z")

    def test_containers_keep_their_types(self):
        event = Reply(1, ([1], (2,), {"k": [b"v"]}))
        decoded = self.codec.decode(self.codec.encode(event))
        self.assertEqual(decoded, event)
        self.assertIs(type(decoded.result[0]), list)

    def test_unencodable_values(self):
        cyclic = []
        cyclic.append(cyclic)
        for value in (lambda: None, cyclic):
            with self.subTest(value=type(value)):
                with self.assertRaises(EncodeError):
                    self.codec.encode(Reply(1, value))
        self.assertEqual(self.codec.decode(self.codec.encode(Reply(1, 2))), Reply(1, 2))

    def test_objects_with_globals_encode_but_are_refused_by_peers(self):
        # A server must flatten such values (see remote_errors); a peer with
        # the default allow-list refuses them.
        payload = self.codec.encode(Reply(1, ValueError("x")))
        with self.assertRaises(RemoteProtocolError):
            self.codec.decode(payload)

    def test_only_messages_encode(self):
        with self.assertRaises(LocalProtocolError):
            self.codec.encode(Status(b"{}"))

    def test_decode_refuses_garbage(self):
        for payload in (
            b"",
            b"\x80\x03",
            b"not a pickle",
            pickle.dumps((1, False, "x", ()), 3) + b"junk",
            pickle.dumps((1, False, "x", ()), 3)[:-1],
            pickle.dumps([1, False, "x", ()], 3),
            pickle.dumps("x", 3),
        ):
            with self.subTest(payload=payload[:20]):
                with self.assertRaises(RemoteProtocolError):
                    self.codec.decode(payload)

    def test_other_protocols_are_read(self):
        wire = (5, 2, ".reply", ("builtins.KeyError", ("k", 1.5, None, [True])))
        for protocol in (0, 1, 2, 3, 4, 5):
            with self.subTest(protocol=protocol):
                decoded = self.codec.decode(pickle.dumps(wire, protocol))
                self.assertEqual(decoded, ErrorReply(5, *wire[3]))

    def test_python2_style_bytes_need_a_global(self):
        # Below protocol 3, Python 3 pickles bytes as _codecs.encode(...):
        # a global, refused by default (ZEO 5 clients use protocol 3).
        with self.assertRaises(RemoteProtocolError):
            self.codec.decode(pickle.dumps((1, 0, ".reply", b"x"), 2))

    def test_allowed_globals_are_configurable(self):
        codec = PickleCodec({("builtins", "frozenset"): frozenset})
        payload = pickle.dumps((1, False, "x", (frozenset({1}),)), 3)
        self.assertEqual(codec.decode(payload), Call(1, "x", (frozenset({1}),)))
        with self.assertRaises(RemoteProtocolError):
            self.codec.decode(payload)

    @settings(max_examples=150, deadline=None)
    @given(messages)
    def test_round_trip(self, event):
        decoded = self.codec.decode(self.codec.encode(event))
        self.assertEqual(decoded, event)
        self.assertIs(type(decoded), type(event))

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=60))
    def test_random_bytes_decode_or_raise_remote_error(self, payload):
        try:
            self.codec.decode(b"\x80\x03" + payload)
        except RemoteProtocolError:
            pass


class ChunkPiecesTests(unittest.TestCase):
    """A blob chunk is written and read without being copied (under Z5 as
    under M5), and the bytes on the wire are those ZEO sends and reads."""

    def setUp(self):
        self.codec = PickleCodec()

    @settings(max_examples=150, deadline=None)
    @given(st.one_of(messages, calls_with_a_large_last_argument))
    def test_pieces_join_to_the_payload(self, event):
        pieces = self.codec.encode_pieces(event)
        self.assertEqual(b"".join(pieces), self.codec.encode(event))
        self.assertEqual(b"".join(pieces), zeo_pickle(event))
        self.assertTrue(all(type(piece) is bytes for piece in pieces))

    def test_a_large_last_argument_is_a_piece_of_its_own(self):
        chunk = bytes(range(256)) * 4096  # a 1 MiB blob chunk
        for event in (OneWayCall("receiveBlobChunk", (OID, TID1, chunk)),
                      OneWayCall("storeBlobChunk", (chunk,)),
                      OneWayCall("storeBlobChunk", (bytes(range(256)) * 256,)),
                      Call(7, "x", (1, 2, 3, 4, chunk))):
            with self.subTest(method=event.method, args=len(event.args)):
                head, middle, closing = self.codec.encode_pieces(event)
                self.assertIs(middle, event.args[-1])  # not a copy
                self.assertLess(len(head), 80)
                self.assertEqual(len(closing), 3)
                payload = head + middle + closing
                self.assertEqual(payload, zeo_pickle(event))
                self.assertEqual(payload[:2], b"\x80\x03")  # protocol 3, as ZEO
                closer = {1: "TUPLE1", 3: "TUPLE3"}.get(len(event.args), "TUPLE")
                self.assertEqual(
                    [op.name for op, _, _ in pickletools.genops(payload)][-4:],
                    ["BINBYTES", closer, "TUPLE", "STOP"])
                self.assertEqual(self.codec.decode(payload), event)

    def test_what_stays_in_one_piece(self):
        large = b"x" * SEPARATE_ARGUMENT_SIZE
        for event in (
            OneWayCall("receiveBlobChunk", (OID, b"x" * (SEPARATE_ARGUMENT_SIZE - 1))),
            OneWayCall("storeBlobChunk", (bytearray(large),)),  # not bytes
            OneWayCall("storeBlobEnd", (large, TID1)),          # not last
            OneWayCall("storeBlobStart", ()),
            Reply(3, large),                                    # a result
        ):
            with self.subTest(event=event[2]):
                self.assertEqual(self.codec.encode_pieces(event),
                                 (self.codec.encode(event),))

    def test_pieces_errors_are_those_of_encode(self):
        with self.assertRaises(EncodeError):
            self.codec.encode_pieces(
                OneWayCall("x", (lambda: None, b"x" * SEPARATE_ARGUMENT_SIZE)))
        with self.assertRaises(LocalProtocolError):
            self.codec.encode_pieces(ProtocolAgreed("Z"))
        event = OneWayCall("storeBlobChunk", (b"x" * SEPARATE_ARGUMENT_SIZE,))
        self.assertEqual(b"".join(self.codec.encode_pieces(event)), zeo_pickle(event))

    def test_chunk_messages_decode_without_a_copy(self):
        chunk = bytes(range(256)) * 400
        for event in (OneWayCall("receiveBlobChunk", (OID, TID1, chunk)),
                      OneWayCall("receiveBlobChunk", (b"B" * 8, b"B\x00\x00" * 3, chunk)),
                      OneWayCall("storeBlobChunk", (chunk,))):
            with self.subTest(event=event.args[:-1]):
                payload = memoryview(bytearray(zeo_pickle(event)))
                decoded = self.codec.decode_chunk_message(payload)
                self.assertEqual(decoded, event)
                self.assertIs(type(decoded), OneWayCall)
                view = decoded.args[-1]
                self.assertIsInstance(view, memoryview)
                self.assertIs(view.obj, payload.obj)  # the payload's own bytes
                self.assertEqual(decoded.args[:-1], event.args[:-1])

    def test_a_length_lookalike_before_the_chunk(self):
        # The oid holds a "B" whose 4 bytes after it give exactly the
        # length a chunk there would have: tried, refused, and the real
        # chunk header is found after it.
        chunk = b"c" * SEPARATE_ARGUMENT_SIZE
        event = OneWayCall("receiveBlobChunk", (b"\0" * 8, TID1, chunk))
        payload = zeo_pickle(event)
        at = payload.index(b"C\x08") + 2  # the oid's bytes
        oid = b"B" + struct.pack("<I", len(payload) - at - 8) + b"\0\0\0"
        event = OneWayCall("receiveBlobChunk", (oid, TID1, chunk))
        payload = zeo_pickle(event)
        self.assertEqual(payload[at:at + 8], oid)
        decoded = self.codec.decode_chunk_message(memoryview(payload))
        self.assertEqual(decoded, event)
        self.assertIsInstance(decoded.args[-1], memoryview)

    def test_what_is_decoded_whole(self):
        big = b"x" * SEPARATE_ARGUMENT_SIZE
        for event in (
            OneWayCall("storeBlobChunk", (b"x" * 1000,)),       # small
            Call(3, "storeBlobChunk", (big,)),                  # not one-way
            OneWayCall("storeBlobEnd", (OID, big)),             # not a chunk
            OneWayCall("storeBlobChunk", (big, b"s")),          # not last
            OneWayCall("storeBlobChunk", (big.decode(),)),      # not bytes
            Reply(3, big),
        ):
            with self.subTest(event=event[2], args=len(event[3])):
                self.assertIsNone(self.codec.decode_chunk_message(
                    memoryview(zeo_pickle(event))))
        # A chunk whose pickle memoizes (not fast mode), or protocol 4.
        event = OneWayCall("storeBlobChunk", (big,))
        for payload in (pickle.dumps(tuple(event), 3), pickle.dumps(tuple(event), 4),
                        b"B" * 70_000, b"\x80\x03" + b"B" * 70_000 + b"\x85t."):
            with self.subTest(payload=payload[:20]):
                self.assertIsNone(self.codec.decode_chunk_message(memoryview(payload)))

    def test_the_head_goes_through_the_restricted_unpickler(self):
        # A refused global before the chunk: not decoded here, and the whole
        # payload is refused by decode.
        big = b"x" * SEPARATE_ARGUMENT_SIZE
        payload = zeo_pickle(OneWayCall("storeBlobChunk", (ValueError, big)))
        self.assertIn(b"ValueError", payload)
        self.assertIsNone(self.codec.decode_chunk_message(memoryview(payload)))
        with self.assertRaises(RemoteProtocolError):
            self.codec.decode(payload)

    @settings(max_examples=100, deadline=None)
    @given(st.binary(min_size=8, max_size=8), st.binary(min_size=0, max_size=12),
           st.integers(SEPARATE_ARGUMENT_SIZE, SEPARATE_ARGUMENT_SIZE + 300),
           st.sampled_from(["receiveBlobChunk", "storeBlobChunk", "other"]))
    def test_chunk_decoding_agrees_with_decode(self, oid, serial, size, method):
        # Whatever the bytes before the chunk ("B" in them, or a length that
        # happens to fit), the result is the message, or None.
        event = OneWayCall(method, (oid, serial, b"B" * size))
        payload = memoryview(zeo_pickle(event))
        decoded = self.codec.decode_chunk_message(payload)
        if method == "other":
            self.assertIsNone(decoded)
        else:
            self.assertEqual(decoded, self.codec.decode(payload))


class ChunkConnectionTests(unittest.TestCase):
    """Through a pair of connections under Z5: sent in pieces, received as
    a view."""

    def test_a_chunk_is_sent_without_a_copy(self):
        server, client = connected_pair("Z")
        chunk = b"c" * (1 << 20)
        event = OneWayCall("receiveBlobChunk", (OID, TID1, chunk))
        with TracedMemory() as memory:
            for _ in range(3):
                pieces = server.send_pieces(event)
                self.assertIs(pieces[-2], chunk)
            peak = memory.peak()
        self.assertLess(peak, 100_000)
        data = b"".join(pieces)
        self.assertEqual(data, server.send(event))
        client.receive_data(data)
        received = client.next_event()
        self.assertEqual(received, event)
        self.assertIsInstance(received.args[-1], memoryview)

    def test_an_upload_chunk_arrives_as_a_view(self):
        server, client = connected_pair("Z")
        chunk = b"u" * (1 << 20)
        event = OneWayCall("storeBlobChunk", (chunk,))
        server.receive_data(b"".join(client.send_pieces(event)))
        received = server.next_event()
        self.assertEqual(received, event)
        self.assertIsInstance(received.args[-1], memoryview)
