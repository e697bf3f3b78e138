import unittest

from zope.interface.verify import verifyClass
from zope.interface.verify import verifyObject

from zeo.protocol import interfaces
from zeo.protocol.connection import ClientConnection
from zeo.protocol.connection import ServerConnection
from zeo.protocol.framing import FrameReader
from zeo.protocol.handshake import ClientHandshake
from zeo.protocol.handshake import ServerHandshake
from zeo.protocol.msgpack_codec import MsgpackCodec
from zeo.protocol.pickle_codec import PickleCodec
from zeo.protocol.remote_errors import ErrorTable
from zeo.protocol.tests.support import connected_pair


class InterfaceTests(unittest.TestCase):

    cases = [
        (interfaces.IFrameReader, FrameReader, FrameReader),
        (interfaces.ICodec, MsgpackCodec, MsgpackCodec),
        (interfaces.ICodec, PickleCodec, PickleCodec),
        (interfaces.IServerHandshake, ServerHandshake, lambda: ServerHandshake(encoding="M")),
        (interfaces.IClientHandshake, ClientHandshake, ClientHandshake),
        (interfaces.IServerConnection, ServerConnection, lambda: ServerConnection(encoding="Z")),
        (interfaces.IClientConnection, ClientConnection, ClientConnection),
        (interfaces.IErrorTable, ErrorTable, ErrorTable),
    ]

    def test_implementations(self):
        for iface, cls, make in self.cases:
            with self.subTest(cls=cls.__name__):
                self.assertTrue(verifyClass(iface, cls))
                self.assertTrue(verifyObject(iface, make()))

    def test_connections_after_the_handshake(self):
        for encoding in "MZ":
            server, client = connected_pair(encoding)
            self.assertTrue(verifyObject(interfaces.IServerConnection, server))
            self.assertTrue(verifyObject(interfaces.IClientConnection, client))
            self.assertTrue(verifyObject(interfaces.ICodec, server.codec))

    def test_hierarchy(self):
        self.assertTrue(interfaces.IServerHandshake.extends(interfaces.IHandshake))
        self.assertTrue(interfaces.IClientConnection.extends(interfaces.IProtocolConnection))
