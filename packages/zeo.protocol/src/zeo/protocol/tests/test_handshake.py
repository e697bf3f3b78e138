import unittest

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from zeo.protocol.errors import LocalProtocolError
from zeo.protocol.errors import RemoteProtocolError
from zeo.protocol.events import ProtocolAgreed
from zeo.protocol.events import Status
from zeo.protocol.events import StatusRequest
from zeo.protocol.handshake import CLIENT_TRANSITIONS
from zeo.protocol.handshake import SERVER_TRANSITIONS
from zeo.protocol.handshake import ClientHandshake
from zeo.protocol.handshake import HandshakeState
from zeo.protocol.handshake import ServerHandshake
from zeo.protocol.handshake import parse_capabilities
from zeo.protocol.limits import ProtocolLimits


def reference_client_answer(greeting):
    """What a ZEO 5/6 client answers (notes 1.3, step 2); None: gives up."""
    version = min(greeting[1:], b"5")
    if version != b"5":
        return None
    return greeting[:1] + version


def reference_server_accepts(answer):
    """Notes 1.3, step 3: the reference server checks only the version."""
    return answer[1:] == b"5"


def greeted_server(**kw):
    kw.setdefault("encoding", "M")
    server = ServerHandshake(**kw)
    return server, server.greeting()


class ServerGreetingTests(unittest.TestCase):

    def test_reference_greetings(self):
        self.assertEqual(greeted_server(encoding="Z", native=False)[1], b"Z5")
        self.assertEqual(greeted_server(encoding="M", native=False)[1], b"M5")

    def test_native_greetings(self):
        self.assertEqual(greeted_server()[1], b"M5+zeo1")
        self.assertEqual(
            greeted_server(encoding="Z", capabilities={"b-2", "a.1"})[1], b"Z5+zeo1:a.1,b-2"
        )

    def test_configuration_errors(self):
        for kw in (
            {"encoding": "X"},
            {"encoding": "M", "native": False, "capabilities": {"a"}},
            {"encoding": "M", "capabilities": {"Upper"}},
            {"encoding": "M", "capabilities": "abc"},
            {"encoding": "M", "capabilities": {"x" * 200},
             "limits": ProtocolLimits(max_handshake_size=16)},
        ):
            with self.subTest(kw=kw):
                with self.assertRaises((ValueError, TypeError)):
                    ServerHandshake(**kw)

    def test_greeting_once(self):
        server, _ = greeted_server()
        with self.assertRaises(LocalProtocolError):
            server.greeting()

    def test_receive_before_greeting_is_our_mistake(self):
        with self.assertRaises(LocalProtocolError):
            ServerHandshake(encoding="M").receive(b"M5")


class ServerAnswerTests(unittest.TestCase):

    def test_plain_answer_means_reference_protocol(self):
        for native in (True, False):
            server, _ = greeted_server(native=native, capabilities={"a"} if native else ())
            event, reply = server.receive(b"M5")
            self.assertEqual(event, ProtocolAgreed("M", b"5", frozenset()))
            self.assertIsNone(reply)
            self.assertIs(server.state, HandshakeState.AGREED)
            self.assertEqual(server.agreed, event)

    def test_native_answer(self):
        server, _ = greeted_server(capabilities={"a", "b"})
        event, _ = server.receive(bytearray(b"M5+zeo1:b"))
        self.assertEqual(event, ProtocolAgreed("M", b"5+zeo1", {"b"}))
        server, _ = greeted_server(capabilities={"a", "b"})
        self.assertEqual(server.receive(b"M5+zeo1")[0], ProtocolAgreed("M", b"5+zeo1"))

    def test_ruok(self):
        server, _ = greeted_server()
        self.assertEqual(server.receive(b"ruok"), (StatusRequest(), None))
        self.assertIs(server.state, HandshakeState.STATUS_REQUESTED)
        self.assertEqual(server.send_status(b'{"1": {}}'), b'{"1": {}}')
        self.assertIs(server.state, HandshakeState.DONE)
        with self.assertRaises(LocalProtocolError):
            server.send_status(b"{}")

    def test_status_only_after_ruok(self):
        server, _ = greeted_server()
        with self.assertRaises(LocalProtocolError):
            server.send_status(b"{}")
        server.receive(b"ruok")
        with self.assertRaises(LocalProtocolError):
            server.send_status("text")

    def test_refusals(self):
        cases = [
            ("client forces pickle on a msgpack server", {}, b"Z5"),
            ("client forces msgpack on a pickle server", {"encoding": "Z"}, b"M5"),
            ("old version", {}, b"M4"),
            ("newer reference version", {}, b"M6"),
            ("ZEO 4", {"encoding": "Z"}, b"Z3101"),
            ("trailing garbage", {}, b"M5x"),
            ("version 55", {}, b"M55"),
            ("unknown letter", {}, b"X5"),
            ("lower-case letter", {}, b"m5"),
            ("empty", {}, b""),
            ("letter only", {}, b"M"),
            ("garbage", {}, b"\x00\xff\x10"),
            ("ruok with a newline", {}, b"ruok\n"),
            ("native answer to a plain server", {"native": False}, b"M5+zeo1"),
            ("native revision not offered", {}, b"M5+zeo2"),
            ("native revision 0", {}, b"M5+zeo0"),
            ("leading zero", {}, b"M5+zeo01"),
            ("capability not offered", {"capabilities": {"a"}}, b"M5+zeo1:b"),
            ("duplicate capability", {"capabilities": {"a"}}, b"M5+zeo1:a,a"),
            ("empty capability", {"capabilities": {"a"}}, b"M5+zeo1:a,"),
            ("bad capability", {"capabilities": {"a"}}, b"M5+zeo1:A"),
            ("unknown extension", {}, b"M5+foo"),
            ("oversize", {}, b"M5+zeo1:" + b"a," * 200),
        ]
        for label, kw, answer in cases:
            with self.subTest(label):
                server, _ = greeted_server(**kw)
                with self.assertRaises(RemoteProtocolError):
                    server.receive(answer)
                self.assertIs(server.state, HandshakeState.ERROR)
                with self.assertRaises(LocalProtocolError):
                    server.receive(b"M5")

    def test_no_frames_after_agreement(self):
        server, _ = greeted_server()
        server.receive(b"M5")
        with self.assertRaises(LocalProtocolError):
            server.receive(b"M5")


class ClientTests(unittest.TestCase):

    def answer(self, greeting, **kw):
        client = ClientHandshake(**kw)
        event, reply = client.receive(greeting)
        self.assertIs(client.state, HandshakeState.AGREED)
        self.assertEqual(client.agreed, event)
        return event, reply

    def test_reference_greetings(self):
        self.assertEqual(self.answer(b"Z5"), (ProtocolAgreed("Z", b"5"), b"Z5"))
        self.assertEqual(self.answer(b"M5"), (ProtocolAgreed("M", b"5"), b"M5"))

    def test_newer_reference_versions_get_5_like_the_reference_client(self):
        for greeting in (b"M6", b"Z99999", b"M50"):
            with self.subTest(greeting=greeting):
                self.assertEqual(self.answer(greeting)[1], greeting[:1] + b"5")
                self.assertEqual(reference_client_answer(greeting), greeting[:1] + b"5")

    def test_native_offer(self):
        event, reply = self.answer(b"M5+zeo1:a,b", capabilities={"b", "c"})
        self.assertEqual(event, ProtocolAgreed("M", b"5+zeo1", {"b"}))
        self.assertEqual(reply, b"M5+zeo1:b")
        self.assertEqual(self.answer(b"Z5+zeo1")[1], b"Z5+zeo1")

    def test_future_native_revision_is_answered_with_ours(self):
        event, reply = self.answer(b"M5+zeo7:x,y", capabilities={"y"})
        self.assertEqual(reply, b"M5+zeo1:y")
        self.assertEqual(event.native_version, 1)

    def test_non_native_client_answers_plain(self):
        self.assertEqual(
            self.answer(b"M5+zeo1:a", native=False, capabilities={"a"})[1], b"M5"
        )

    def test_unknown_extensions_are_ignored(self):
        self.assertEqual(self.answer(b"M5+other-thing/2")[1], b"M5")

    def test_refusals(self):
        cases = [
            ("ZEO 4", b"Z4"),
            ("ZEO 4.0", b"Z3101"),
            ("byte-wise below 5", b"M200"),
            ("10 sorts before 5", b"M10"),
            ("unknown letter", b"X5"),
            ("no version", b"M"),
            ("empty", b""),
            ("non-digit version", b"M5a"),
            ("non-ASCII", b"M\xff"),
            ("garbage", b"\x00\x00"),
            ("malformed native offer", b"M5+zeo"),
            ("native revision 0", b"M5+zeo0"),
            ("bad capability list", b"M5+zeo1:A,b"),
            ("spaces in extension", b"M5+a b"),
            ("oversize", b"M5+" + b"x" * 300),
        ]
        for label, greeting in cases:
            with self.subTest(label):
                client = ClientHandshake()
                with self.assertRaises(RemoteProtocolError):
                    client.receive(greeting)
                self.assertIs(client.state, HandshakeState.ERROR)

    def test_status_probe(self):
        client = ClientHandshake()
        self.assertEqual(client.request_status(), b"ruok")
        self.assertEqual(client.receive(b"Z5"), (None, None))  # greeting skipped
        self.assertIs(client.state, HandshakeState.AWAITING_STATUS)
        self.assertEqual(client.receive(b'{"1": {}}'), (Status(b'{"1": {}}'), None))
        self.assertIs(client.state, HandshakeState.DONE)
        with self.assertRaises(RemoteProtocolError):
            client.receive(b"more")

    def test_status_probe_only_first(self):
        client = ClientHandshake()
        client.receive(b"M5")
        with self.assertRaises(LocalProtocolError):
            client.request_status()


class NegotiationMatrixTests(unittest.TestCase):

    server_configs = [
        {"encoding": encoding, "native": native, "capabilities": caps}
        for encoding in "MZ"
        for native, caps in ((False, ()), (True, ()), (True, ("a", "b")))
    ]

    def test_reference_clients_settle_on_5_with_every_server_of_ours(self):
        for config in self.server_configs:
            with self.subTest(config):
                server, greeting = greeted_server(**config)
                answer = reference_client_answer(greeting)
                self.assertEqual(answer, greeting[:1] + b"5")
                event, _ = server.receive(answer)
                self.assertEqual(event, ProtocolAgreed(config["encoding"], b"5"))

    def test_our_clients_agree_with_every_server_of_ours(self):
        for config in self.server_configs:
            for native in (True, False):
                with self.subTest(config, client_native=native):
                    server, greeting = greeted_server(**config)
                    client = ClientHandshake(native=native, capabilities={"b", "c"})
                    client_event, answer = client.receive(greeting)
                    server_event, _ = server.receive(answer)
                    self.assertEqual(client_event, server_event)
                    both = native and config["native"]
                    self.assertEqual(server_event.version, b"5+zeo1" if both else b"5")
                    expected_caps = {"b"} if both and config["capabilities"] else set()
                    self.assertEqual(server_event.capabilities, expected_caps)

    def test_our_clients_work_with_reference_servers(self):
        for greeting in (b"Z5", b"M5"):
            client = ClientHandshake(capabilities={"a"})
            event, answer = client.receive(greeting)
            self.assertTrue(reference_server_accepts(answer))
            self.assertEqual(answer, greeting)
            self.assertEqual(event, ProtocolAgreed(greeting[:1].decode(), b"5"))

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=40))
    def test_garbage_greetings_only_raise_remote_errors(self, greeting):
        client = ClientHandshake()
        try:
            event, answer = client.receive(greeting)
        except RemoteProtocolError:
            self.assertIs(client.state, HandshakeState.ERROR)
        else:
            # Whatever we accept, the reference client accepts too, and we
            # answer something our own server would parse.
            self.assertEqual(answer[:2], reference_client_answer(greeting))
            self.assertIsInstance(event, ProtocolAgreed)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=40))
    def test_garbage_answers_only_raise_remote_errors(self, answer):
        server, _ = greeted_server(capabilities={"a"})
        try:
            server.receive(answer)
        except RemoteProtocolError:
            self.assertIs(server.state, HandshakeState.ERROR)


class TableTests(unittest.TestCase):

    def test_tables_only_lead_to_known_states(self):
        for table in (SERVER_TRANSITIONS, CLIENT_TRANSITIONS):
            for (state, _), new in table.items():
                self.assertIsInstance(state, HandshakeState)
                self.assertIsInstance(new, HandshakeState)
                self.assertIsNot(new, HandshakeState.ERROR)

    def test_parse_capabilities(self):
        self.assertEqual(parse_capabilities(["a", "a", "b_c"]), {"a", "b_c"})
        for bad in ("abc", b"abc", [""], ["a,b"], [1], ["x" * 33]):
            with self.subTest(bad=bad):
                with self.assertRaises((TypeError, ValueError)):
                    parse_capabilities(bad)

    def test_repr(self):
        self.assertEqual(repr(ClientHandshake()), "<ClientHandshake AWAITING_GREETING>")
        self.assertEqual(repr(HandshakeState.AGREED), "AGREED")
