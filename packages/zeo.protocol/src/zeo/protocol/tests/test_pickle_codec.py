import pickle
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
from zeo.protocol.events import Reply
from zeo.protocol.events import Status
from zeo.protocol.pickle_codec import PickleCodec
from zeo.protocol.tests.support import REFERENCE_MESSAGES
from zeo.protocol.tests.support import messages


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

    def test_pieces_are_one_payload(self):
        event = OneWayCall("storeBlobChunk", (b"c" * (1 << 17),))
        self.assertEqual(self.codec.encode_pieces(event), (self.codec.encode(event),))
        self.assertIsNone(self.codec.decode_chunk_message(
            memoryview(self.codec.encode(event))))

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
            self.codec.encode(Status(b"{}"))  # type: ignore[arg-type]

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
