import struct
import unittest

from zeo.protocol.connection import NEED_DATA
from zeo.protocol.connection import ClientConnection
from zeo.protocol.connection import ConnectionState
from zeo.protocol.connection import Role
from zeo.protocol.connection import ServerConnection
from zeo.protocol.errors import EncodeError
from zeo.protocol.errors import LocalProtocolError
from zeo.protocol.errors import RemoteProtocolError
from zeo.protocol.events import Call
from zeo.protocol.events import ConnectionClosed
from zeo.protocol.events import ErrorReply
from zeo.protocol.events import Heartbeat
from zeo.protocol.events import OneWayCall
from zeo.protocol.events import ProtocolAgreed
from zeo.protocol.events import Reply
from zeo.protocol.events import Status
from zeo.protocol.events import StatusRequest
from zeo.protocol.framing import frame
from zeo.protocol.limits import ProtocolLimits
from zeo.protocol.remote_errors import error_reply
from zeo.protocol.tests.support import GREETING_M5
from zeo.protocol.tests.support import GREETING_Z5
from zeo.protocol.tests.support import OID
from zeo.protocol.tests.support import REFERENCE_MESSAGES
from zeo.protocol.tests.support import RUOK
from zeo.protocol.tests.support import TID1
from zeo.protocol.tests.support import Z64
from zeo.protocol.tests.support import chunkings
from zeo.protocol.tests.support import connected_pair
from zeo.protocol.tests.support import drain


def feed_all(conn, chunks):
    """Feed chunks one by one, collecting every event."""
    events = []
    for chunk in chunks:
        conn.receive_data(chunk)
        events.extend(conn.events())
    return events


class ReferenceTrafficTests(unittest.TestCase):
    """Our ends exchange exactly the reference bytes with reference peers."""

    def test_server_side_of_a_reference_session(self):
        for encoding, greeting, index in (("Z", GREETING_Z5, 2), ("M", GREETING_M5, 3)):
            with self.subTest(encoding=encoding):
                server = ServerConnection(encoding=encoding, native=False)
                self.assertEqual(server.initiate(), greeting)
                register = REFERENCE_MESSAGES["register"][index]
                heartbeat = REFERENCE_MESSAGES["heartbeat"][index]
                server.receive_data(greeting + register + heartbeat)
                self.assertEqual(
                    drain(server),
                    [ProtocolAgreed(encoding, b"5"), Call(1, "register", ("1", 0)), Heartbeat()],
                )
                self.assertEqual(
                    server.send(Reply(1, Z64)), REFERENCE_MESSAGES["register_reply"][index]
                )
                self.assertEqual(
                    server.send(ErrorReply(2, "builtins.ValueError", ("unknown storage: nosuch",))),
                    REFERENCE_MESSAGES["error_ValueError"][index],
                )

    def test_client_side_of_a_reference_session(self):
        for encoding, greeting, index in (("Z", GREETING_Z5, 2), ("M", GREETING_M5, 3)):
            with self.subTest(encoding=encoding):
                client = ClientConnection()
                client.receive_data(greeting)
                self.assertEqual(drain(client), [ProtocolAgreed(encoding, b"5")])
                self.assertEqual(client.data_to_send(), greeting)  # the echo
                self.assertEqual(
                    client.send(Call(1, "register", ("1", 0))), REFERENCE_MESSAGES["register"][index]
                )
                self.assertEqual(client.send(Heartbeat()), REFERENCE_MESSAGES["heartbeat"][index])
                stream = b"".join(
                    REFERENCE_MESSAGES[name][index]
                    for name in ("register_reply", "invalidateTransaction", "error_POSKeyError")
                )
                client.receive_data(stream)
                events = drain(client)
                self.assertEqual(events[0], Reply(1, Z64))
                self.assertEqual(events[1].method, "invalidateTransaction")
                self.assertEqual(events[2], ErrorReply(3, "ZODB.POSException.POSKeyError", (OID,)))


class StreamTests(unittest.TestCase):
    """Every reader fed whole, byte by byte and with trailing junk."""

    def client_stream(self, encoding):
        """The bytes a native client sends to a native server."""
        server = ServerConnection(encoding=encoding, capabilities={"a"})
        client = ClientConnection(capabilities={"a"})
        client.receive_data(server.initiate())
        drain(client)
        stream = client.send(Call(1, "register", ("1", False)))  # answer prepended
        stream += client.send(Call((OID, TID1), "loadBefore", (OID, TID1)))
        stream += client.send(OneWayCall("storea", (OID, Z64, b"x" * 500, 42)))
        stream += client.send(Heartbeat())
        expected = [
            ProtocolAgreed(encoding, b"5+zeo1", {"a"}),
            Call(1, "register", ("1", False)),
            Call((OID, TID1), "loadBefore", (OID, TID1)),
            OneWayCall("storea", (OID, Z64, b"x" * 500, 42)),
            Heartbeat(),
        ]
        return stream, expected

    def test_server_reads_any_chunking(self):
        for encoding in "MZ":
            stream, expected = self.client_stream(encoding)
            for label, chunks, junk in chunkings(stream):
                with self.subTest(encoding=encoding, feeding=label):
                    server = ServerConnection(encoding=encoding, capabilities={"a"})
                    server.initiate()
                    if junk:
                        with self.assertRaises(RemoteProtocolError):
                            feed_all(server, chunks)
                        self.assertIs(server.state, ConnectionState.ERROR)
                    else:
                        self.assertEqual(feed_all(server, chunks), expected)

    def test_events_before_junk_are_delivered(self):
        stream, expected = self.client_stream("M")
        server = ServerConnection(encoding="M", capabilities={"a"})
        server.initiate()
        server.receive_data(stream + frame(b"\xc1"))
        got = []
        with self.assertRaises(RemoteProtocolError):
            while True:
                event = server.next_event()
                self.assertIsNot(event, NEED_DATA)
                got.append(event)
        self.assertEqual(got, expected)

    def test_client_reads_any_chunking(self):
        for encoding in "MZ":
            server, client = connected_pair(encoding)
            stream = server.send(Reply(1, Z64))
            stream += server.send(OneWayCall("invalidateTransaction", (TID1, [OID])))
            stream += server.send(error_reply(2, KeyError(OID)))
            stream += server.send(Reply((OID, TID1), (b"r" * 300, TID1, None)))
            expected = [
                Reply(1, Z64),
                OneWayCall("invalidateTransaction", (TID1, (OID,) if encoding == "M" else [OID])),
                ErrorReply(2, "builtins.KeyError", (OID,)),
                Reply((OID, TID1), (b"r" * 300, TID1, None)),
            ]
            greeting = ServerConnection(encoding=encoding).initiate()
            for label, chunks, junk in chunkings(greeting + stream):
                with self.subTest(encoding=encoding, feeding=label):
                    fresh = ClientConnection()
                    if junk:
                        with self.assertRaises(RemoteProtocolError):
                            feed_all(fresh, chunks)
                    else:
                        events = feed_all(fresh, chunks)
                        self.assertEqual(events[1:], expected)


class ConversationTests(unittest.TestCase):

    def test_full_conversation_both_encodings(self):
        for encoding in "MZ":
            with self.subTest(encoding=encoding):
                server, client = connected_pair(encoding)
                self.assertIs(server.state, ConnectionState.OPEN)
                self.assertEqual(server.agreed, client.agreed)
                server.receive_data(client.send(Call(1, "register", ("1", False))))
                self.assertEqual(server.next_event(), Call(1, "register", ("1", False)))
                self.assertIs(server.next_event(), NEED_DATA)
                client.receive_data(server.send(Reply(1, Z64)))
                self.assertEqual(client.next_event(), Reply(1, Z64))
                client.receive_data(server.send(OneWayCall("info", ({"length": 1},))))
                self.assertEqual(client.next_event(), OneWayCall("info", ({"length": 1},)))
                server.receive_data(client.send(Heartbeat()))
                self.assertEqual(server.next_event(), Heartbeat())

    def test_capabilities(self):
        server, client = connected_pair(server_caps={"a", "b"}, client_caps={"b", "z"})
        self.assertEqual(server.agreed.capabilities, {"b"})
        self.assertEqual(server.agreed.version, b"5+zeo1")

    def test_answer_is_prepended_if_not_collected(self):
        server = ServerConnection(encoding="M", native=False)
        client = ClientConnection()
        client.receive_data(server.initiate())
        drain(client)
        data = client.send(Call(1, "x"))
        self.assertTrue(data.startswith(frame(b"M5")))
        self.assertEqual(client.data_to_send(), b"")
        server.receive_data(data)
        self.assertEqual(drain(server), [ProtocolAgreed("M"), Call(1, "x")])

    def test_status_exchange(self):
        server = ServerConnection(encoding="Z")
        client = ClientConnection()
        probe = client.send(StatusRequest())
        self.assertEqual(probe, RUOK)
        self.assertIs(client.state, ConnectionState.STATUS)
        server.receive_data(probe)
        greeting = server.initiate()
        self.assertEqual(drain(server), [StatusRequest()])
        self.assertIs(server.state, ConnectionState.STATUS)
        self.assertIs(server.next_event(), NEED_DATA)
        status = b'{"1": {"connections": 0}}' * 20  # bigger than a handshake frame
        reply = server.send(Status(status))
        self.assertEqual(reply, frame(status))
        self.assertIs(server.state, ConnectionState.CLOSED)
        with self.assertRaises(LocalProtocolError):
            server.send(Reply(1, None))
        server.receive_data(b"ignored")
        self.assertEqual(server.next_event(), ConnectionClosed())
        for chunks in ([greeting + reply, b""], [bytes([b]) for b in greeting + reply] + [b""]):
            fresh = ClientConnection()
            fresh.send(StatusRequest())
            self.assertEqual(feed_all(fresh, chunks), [Status(status), ConnectionClosed()])

    def test_status_probe_refuses_more_frames(self):
        client = ClientConnection()
        client.send(StatusRequest())
        client.receive_data(GREETING_Z5 + frame(b"{}") + frame(b"more"))
        self.assertEqual(client.next_event(), Status(b"{}"))
        with self.assertRaises(RemoteProtocolError):
            client.next_event()

    def test_server_status_client_gone(self):
        server = ServerConnection(encoding="M")
        server.initiate()
        server.receive_data(RUOK)
        server.receive_data(b"")
        self.assertEqual(drain(server), [StatusRequest(), ConnectionClosed()])


class EndOfStreamTests(unittest.TestCase):

    def test_clean_eof(self):
        server, client = connected_pair()
        server.receive_data(client.send(Call(1, "x")) + b"")
        server.receive_data(b"")
        self.assertEqual(drain(server), [Call(1, "x"), ConnectionClosed()])
        self.assertIs(server.state, ConnectionState.CLOSED)
        self.assertEqual(server.next_event(), ConnectionClosed())
        with self.assertRaises(LocalProtocolError):
            server.receive_data(b"late")

    def test_eof_mid_frame(self):
        server, client = connected_pair()
        server.receive_data(client.send(Call(1, "x"))[:-1])
        server.receive_data(b"")
        with self.assertRaises(RemoteProtocolError):
            server.next_event()

    def test_buffered_counts_the_partial_frame_held(self):
        # What the server counts against its process-wide input budget.
        server, client = connected_pair()
        data = client.send(Call(1, "x")) + client.send(Call(2, "y", (b"z" * 200_000,)))
        self.assertEqual(server.buffered, 0)
        server.receive_data(data[:-10])
        self.assertEqual(drain(server), [Call(1, "x")])
        second = len(client.send(Call(3, "y", (b"z" * 200_000,))))
        self.assertEqual(server.buffered, second - 10)
        server.receive_data(data[-10:])
        self.assertEqual(drain(server), [Call(2, "y", (b"z" * 200_000,))])
        self.assertEqual(server.buffered, 0)

    def test_eof_during_handshake(self):
        server = ServerConnection(encoding="M")
        server.initiate()
        server.receive_data(b"")
        self.assertEqual(server.next_event(), ConnectionClosed())
        client = ClientConnection()
        client.receive_data(b"\x00\x00")
        client.receive_data(b"")
        with self.assertRaises(RemoteProtocolError):
            client.next_event()


class LimitTests(unittest.TestCase):

    def test_oversize_frame_refused_on_its_header(self):
        limits = ProtocolLimits(max_frame_size=1000)
        server, client = connected_pair(limits=limits)
        server.receive_data(struct.pack(">I", 1001))
        with self.assertRaises(RemoteProtocolError):
            server.next_event()
        self.assertIs(server.state, ConnectionState.ERROR)

    def test_handshake_frames_have_their_own_limit(self):
        server = ServerConnection(encoding="M")
        server.initiate()
        server.receive_data(struct.pack(">I", 257))
        with self.assertRaises(RemoteProtocolError):
            server.next_event()
        client = ClientConnection(limits=ProtocolLimits(max_handshake_size=8))
        client.receive_data(frame(b"M5+zeo1:abc"))
        with self.assertRaises(RemoteProtocolError):
            client.next_event()

    def test_frame_limit_applies_after_handshake(self):
        limits = ProtocolLimits(max_frame_size=2000)
        server, client = connected_pair(limits=limits)
        server.receive_data(client.send(OneWayCall("storeBlobChunk", (b"x" * 1500,))))
        self.assertEqual(server.next_event().args, (b"x" * 1500,))


class MisuseTests(unittest.TestCase):

    def test_send_before_handshake(self):
        server = ServerConnection(encoding="M")
        server.initiate()
        with self.assertRaises(LocalProtocolError) as caught:
            server.send(Reply(1, None))
        self.assertIn("before the handshake", str(caught.exception))
        with self.assertRaises(LocalProtocolError):
            ClientConnection().send(Call(1, "register", ("1", False)))

    def test_read_before_initiate(self):
        server = ServerConnection(encoding="M")
        server.receive_data(frame(b"M5"))
        with self.assertRaises(LocalProtocolError):
            server.next_event()

    def test_initiate_once(self):
        server = ServerConnection(encoding="M")
        server.initiate()
        with self.assertRaises(LocalProtocolError):
            server.initiate()

    def test_role_checks_on_send(self):
        server, client = connected_pair()
        for event in (Call(1, "x"), Heartbeat(), StatusRequest()):
            with self.subTest(event=event):
                with self.assertRaises(LocalProtocolError) as caught:
                    server.send(event)
                self.assertIn("server", str(caught.exception))
        for event in (Reply(1, None), ErrorReply(1, "a.B"), Status(b"")):
            with self.subTest(event=event):
                with self.assertRaises(LocalProtocolError):
                    client.send(event)
        with self.assertRaises(LocalProtocolError):
            client.send(ConnectionClosed())
        with self.assertRaises(LocalProtocolError):
            client.send((1, False, "x", ()))
        with self.assertRaises(LocalProtocolError):
            client.send(StatusRequest())  # only as the very first frame

    def test_role_checks_on_receive(self):
        cases = [
            ("server gets a reply", "server", Reply(1, None)),
            ("server gets an error reply", "server", ErrorReply(1, "a.B")),
            ("client gets a call", "client", Call(1, "x")),
            ("client gets a heartbeat", "client", Heartbeat()),
        ]
        for label, receiver, event in cases:
            for encoding in "MZ":
                with self.subTest(label, encoding=encoding):
                    server, client = connected_pair(encoding)
                    conn = server if receiver == "server" else client
                    conn.receive_data(frame(conn.codec.encode(event)))
                    with self.assertRaises(RemoteProtocolError):
                        conn.next_event()

    def test_client_answering_z5_to_m5_is_refused(self):
        for native in (True, False):
            server = ServerConnection(encoding="M", native=native)
            server.initiate()
            server.receive_data(GREETING_Z5)
            with self.assertRaises(RemoteProtocolError):
                server.next_event()
            self.assertIs(server.state, ConnectionState.ERROR)

    def test_error_state_is_final(self):
        server, client = connected_pair()
        server.receive_data(frame(b"\xc1"))
        with self.assertRaises(RemoteProtocolError):
            server.next_event()
        self.assertIs(server.state, ConnectionState.ERROR)
        for attempt in (
            lambda: server.next_event(),
            lambda: server.receive_data(b"x"),
            lambda: server.receive_data(b""),
            lambda: server.send(Reply(1, None)),
            lambda: list(server.events()),
        ):
            with self.assertRaises(LocalProtocolError) as caught:
                attempt()
            self.assertIn("ERROR state", str(caught.exception))

    def test_encode_errors_leave_the_connection_usable(self):
        for encoding, bad in (("M", {1, 2}), ("M", 2**64), ("Z", lambda: 0)):
            with self.subTest(encoding=encoding, bad=type(bad)):
                server, client = connected_pair(encoding)
                with self.assertRaises(EncodeError):
                    server.send(Reply(1, bad))
                self.assertIs(server.state, ConnectionState.OPEN)
                client.receive_data(server.send(Reply(1, "fine")))
                self.assertEqual(client.next_event(), Reply(1, "fine"))

    def test_repr(self):
        server, client = connected_pair("Z", server_native=False)
        self.assertEqual(repr(server), "<ServerConnection OPEN agreed=b'Z5'>")
        self.assertEqual(repr(ClientConnection()), "<ClientConnection HANDSHAKE agreed=None>")
        self.assertIs(server.role, Role.SERVER)
        self.assertEqual(repr(ConnectionState.OPEN), "OPEN")
        self.assertEqual(repr(NEED_DATA), "NEED_DATA")
