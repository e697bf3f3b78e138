import unittest

from zeo.protocol.errors import EncodeError
from zeo.protocol.errors import LocalProtocolError
from zeo.protocol.errors import ProtocolError
from zeo.protocol.errors import RemoteProtocolError


class ErrorTaxonomyTests(unittest.TestCase):

    def test_protocol_error_is_abstract(self):
        with self.assertRaises(TypeError):
            ProtocolError("nope")

    def test_hierarchy(self):
        self.assertTrue(issubclass(LocalProtocolError, ProtocolError))
        self.assertTrue(issubclass(RemoteProtocolError, ProtocolError))
        self.assertTrue(issubclass(EncodeError, LocalProtocolError))
        self.assertFalse(issubclass(RemoteProtocolError, LocalProtocolError))

    def test_message(self):
        self.assertEqual(str(RemoteProtocolError("bad peer")), "bad peer")
        self.assertEqual(str(EncodeError("set")), "set")
