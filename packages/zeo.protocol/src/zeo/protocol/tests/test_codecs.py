import unittest

from zeo.protocol.codecs import make_codec
from zeo.protocol.errors import LocalProtocolError
from zeo.protocol.errors import RemoteProtocolError
from zeo.protocol.msgpack_codec import MsgpackCodec
from zeo.protocol.pickle_codec import PickleCodec


class MakeCodecTests(unittest.TestCase):

    def test_letters(self):
        self.assertIsInstance(make_codec("M"), MsgpackCodec)
        self.assertIsInstance(make_codec("Z"), PickleCodec)
        with self.assertRaises(LocalProtocolError):
            make_codec("X")

    def test_pickle_globals_are_passed_on(self):
        payload = b"\x80\x03(K\x01\x89X\x01\x00\x00\x00xcbuiltins\nfrozenset\n)R\x85t."
        codec = make_codec("Z", pickle_globals={("builtins", "frozenset"): frozenset})
        self.assertEqual(codec.decode(payload).args, (frozenset(),))
        with self.assertRaises(RemoteProtocolError):
            make_codec("Z").decode(payload)

    def test_fresh_objects(self):
        self.assertIsNot(make_codec("M"), make_codec("M"))
