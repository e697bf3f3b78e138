import unittest

import msgpack
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from zeo.protocol.errors import EncodeError
from zeo.protocol.errors import LocalProtocolError
from zeo.protocol.errors import RemoteProtocolError
from zeo.protocol.events import Call
from zeo.protocol.events import OneWayCall
from zeo.protocol.events import ProtocolAgreed
from zeo.protocol.events import Reply
from zeo.protocol.msgpack_codec import SEPARATE_ARGUMENT_SIZE
from zeo.protocol.msgpack_codec import MsgpackCodec
from zeo.protocol.tests.support import REFERENCE_MESSAGES
from zeo.protocol.tests.support import messages


class ReferenceBytesTests(unittest.TestCase):

    def test_encodes_the_reference_bytes(self):
        codec = MsgpackCodec()
        for name, (event, _, _, framed) in REFERENCE_MESSAGES.items():
            with self.subTest(name):
                self.assertEqual(codec.encode(event), framed[4:])

    def test_decodes_the_reference_bytes(self):
        codec = MsgpackCodec()
        for name, (event, as_decoded, _, framed) in REFERENCE_MESSAGES.items():
            with self.subTest(name):
                decoded = codec.decode(framed[4:])
                self.assertEqual(decoded, as_decoded or event)
                self.assertIs(type(decoded), type(event))

    def test_same_bytes_as_bare_packb(self):
        # The reference packs with packb(msg, use_bin_type=True).
        event = Call(3, "storea", (b"\0" * 8, "str", [1, 2], {"k": b"v"}, None, 1.5))
        self.assertEqual(
            MsgpackCodec().encode(event), msgpack.packb(tuple(event), use_bin_type=True)
        )


class MsgpackCodecTests(unittest.TestCase):

    def setUp(self):
        self.codec = MsgpackCodec()

    def test_encoding_letter(self):
        self.assertEqual(self.codec.encoding, "M")

    def test_str_and_bytes_stay_apart(self):
        event = Reply(1, ("text", b"bytes"))
        self.assertEqual(self.codec.decode(self.codec.encode(event)), event)

    def test_sequences_decode_as_tuples(self):
        decoded = self.codec.decode(self.codec.encode(Reply(1, [[1], []])))
        self.assertEqual(decoded.result, ((1,), ()))

    def test_unencodable_values(self):
        for value in ({1, 2}, object(), 2**64, "\udcff"):
            with self.subTest(value=value):
                with self.assertRaises(EncodeError):
                    self.codec.encode(Reply(1, value))
        # and the codec is still fine afterwards
        self.assertEqual(self.codec.decode(self.codec.encode(Reply(1, 2))), Reply(1, 2))

    def test_only_messages_encode(self):
        with self.assertRaises(LocalProtocolError):
            self.codec.encode(ProtocolAgreed("M"))
        with self.assertRaises(LocalProtocolError):
            self.codec.encode((1, False, "x", ()))

    def test_decode_refuses_garbage(self):
        for payload in (
            b"",
            b"\xc1",  # never-used type byte
            b"\x94\x01\xc2",  # truncated
            msgpack.packb((1, False, "x", ())) + b"\x00",  # trailing byte
            msgpack.packb(msgpack.ExtType(1, b"x")),
            msgpack.packb((1, False, "x", (msgpack.ExtType(5, b""),))),
            msgpack.packb({1: 2}, use_bin_type=True),  # int map key
            b"\x91" * 5000 + b"\xc0",  # deeper than msgpack allows
            b"\xa2\xff\xfe",  # invalid UTF-8 str
            b"\xdd\xff\xff\xff\xff",  # array claiming 4 billion items
            msgpack.packb([1, False, "x", ()]) [:-1],
            msgpack.packb("not a tuple"),
        ):
            with self.subTest(payload=payload[:20]):
                with self.assertRaises(RemoteProtocolError):
                    self.codec.decode(payload)

    def test_decode_accepts_bytearray(self):
        payload = bytearray(self.codec.encode(OneWayCall("x", (1,))))
        self.assertEqual(self.codec.decode(payload), OneWayCall("x", (1,)))

    def test_repr(self):
        self.assertEqual(repr(self.codec), "<MsgpackCodec 'M'>")

    @settings(max_examples=150, deadline=None)
    @given(messages)
    def test_round_trip(self, event):
        decoded = self.codec.decode(self.codec.encode(event))
        self.assertEqual(decoded, event)
        self.assertIs(type(decoded), type(event))

    @settings(max_examples=150, deadline=None)
    @given(messages)
    def test_pieces_join_to_the_payload(self, event):
        pieces = self.codec.encode_pieces(event)
        self.assertEqual(b"".join(pieces), self.codec.encode(event))
        self.assertTrue(all(type(piece) is bytes for piece in pieces))

    def test_a_large_last_argument_is_a_piece_of_its_own(self):
        chunk = bytes(range(256)) * 256  # SEPARATE_ARGUMENT_SIZE exactly
        self.assertEqual(len(chunk), SEPARATE_ARGUMENT_SIZE)
        for event in (OneWayCall("receiveBlobChunk", (b"o" * 8, b"s" * 8, chunk)),
                      OneWayCall("storeBlobChunk", (chunk,)),
                      Call(7, "storeBlobChunk", (chunk,))):
            with self.subTest(event=type(event).__name__):
                head, tail = self.codec.encode_pieces(event)
                self.assertIs(tail, chunk)  # not a copy
                self.assertLess(len(head), 64)
                payload = head + tail
                self.assertEqual(payload, msgpack.packb(event, use_bin_type=True))
                self.assertEqual(self.codec.decode(payload), event)

    def test_what_stays_in_one_piece(self):
        large = b"x" * SEPARATE_ARGUMENT_SIZE
        for event in (
            OneWayCall("receiveBlobChunk", (b"o" * 8, b"x" * (SEPARATE_ARGUMENT_SIZE - 1))),
            OneWayCall("storeBlobChunk", (bytearray(large),)),  # not bytes
            OneWayCall("storeBlobEnd", (large, b"s" * 8)),     # not last
            OneWayCall("storeBlobStart", ()),
            Reply(3, large),                                   # a result
        ):
            with self.subTest(event=event[2]):
                self.assertEqual(self.codec.encode_pieces(event),
                                 (self.codec.encode(event),))

    def test_pieces_errors_are_encode_errors(self):
        with self.assertRaises(EncodeError):
            self.codec.encode_pieces(OneWayCall("x", ({1}, b"x" * SEPARATE_ARGUMENT_SIZE)))
        with self.assertRaises(LocalProtocolError):
            self.codec.encode_pieces(ProtocolAgreed("M"))

    def test_chunk_messages_decode_without_a_copy(self):
        chunk = bytes(range(256)) * 400
        for event in (OneWayCall("receiveBlobChunk", (b"o" * 8, b"s" * 8, chunk)),
                      OneWayCall("receiveBlobChunk", (b"o" * 8, b"\xc6" * 8, chunk)),
                      OneWayCall("storeBlobChunk", (chunk,))):
            with self.subTest(method=event.method):
                payload = memoryview(bytearray(self.codec.encode(event)))
                decoded = self.codec.decode_chunk_message(payload)
                self.assertEqual(decoded, event)
                self.assertIs(type(decoded), OneWayCall)
                view = decoded.args[-1]
                self.assertIsInstance(view, memoryview)
                self.assertIs(view.obj, payload.obj)  # the payload's own bytes
                self.assertEqual(decoded.args[:-1], event.args[:-1])

    def test_what_is_decoded_whole(self):
        big = b"x" * SEPARATE_ARGUMENT_SIZE
        for event in (
            OneWayCall("storeBlobChunk", (b"x" * 1000,)),       # small
            Call(3, "storeBlobChunk", (big,)),                  # not one-way
            OneWayCall("storeBlobEnd", (b"o" * 8, big)),        # not a chunk
            OneWayCall("storeBlobChunk", (big, b"s")),          # not last
            Reply(3, big),
        ):
            with self.subTest(event=event[2], args=len(event[3])):
                self.assertIsNone(self.codec.decode_chunk_message(
                    memoryview(self.codec.encode(event))))
        self.assertIsNone(self.codec.decode_chunk_message(memoryview(b"\xc6" * 70_000)))

    @settings(max_examples=100, deadline=None)
    @given(st.binary(min_size=8, max_size=8), st.binary(min_size=8, max_size=8),
           st.integers(SEPARATE_ARGUMENT_SIZE, SEPARATE_ARGUMENT_SIZE + 300),
           st.sampled_from(["receiveBlobChunk", "storeBlobChunk", "other"]))
    def test_chunk_decoding_agrees_with_decode(self, oid, serial, size, method):
        # Whatever the oid and serial bytes (0xc6 in them, or a length that
        # happens to fit), the result is the message, or None.
        event = OneWayCall(method, (oid, serial, b"\xc6" * size))
        payload = memoryview(self.codec.encode(event))
        decoded = self.codec.decode_chunk_message(payload)
        if method == "other":
            self.assertIsNone(decoded)
        else:
            self.assertEqual(decoded, self.codec.decode(payload))

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=60))
    def test_random_bytes_decode_or_raise_remote_error(self, payload):
        try:
            self.codec.decode(payload)
        except RemoteProtocolError:
            pass
