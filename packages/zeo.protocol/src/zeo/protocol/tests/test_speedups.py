"""The compiled helper agrees with the pure-Python code it speeds up.

Every install we test builds it (buildout's develop eggs and tox's
editable installs compile it), so its absence is a failure here: a
build that silently lost it would be slower without anyone noticing.
"""

import gc
import sys
import pickle
import unittest
from typing import Any
from unittest import mock

import msgpack

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from zeo.protocol import events
from zeo.protocol import framing
from zeo.protocol import safe_unpickle
from zeo.protocol.errors import RemoteProtocolError
from zeo.protocol.events import Call
from zeo.protocol.events import Reply
from zeo.protocol.events import _message_from_wire_py
from zeo.protocol.msgpack_codec import MsgpackCodec
from zeo.protocol.msgpack_codec import _decode_message_py
from zeo.protocol.pickle_codec import PickleCodec
from zeo.protocol.tests.support import OID
from zeo.protocol.tests.support import TID1
from zeo.protocol.tests.support import plain_values


try:
    from zeo.protocol import _speedups
except ImportError:  # pragma: no cover
    _speedups = None


class NotAStr(str):
    pass


class NotATuple(tuple):
    pass


class NotAnInt(int):
    pass


def outcome(function, wire):
    """(type, items) of the event, or the error message."""
    try:
        event = function(wire)
    except RemoteProtocolError as exc:
        return "error", str(exc)
    return type(event), tuple(event)


# Inputs chosen to sit on each edge of the fast paths.
EDGE_CASES: list[Any] = [
    (1, False, "x", ()),
    (2**70, False, "x", ()),
    (2**63, 0, ".reply", None),
    (-(2**70), False, "x", ()),
    (0, False, "x", ()),
    (-1, False, "x", ()),
    (True, False, "x", ()),
    (NotAnInt(3), False, "x", ()),
    ((OID, TID1), False, "loadBefore", (OID, TID1)),
    ((OID, TID1), 0, ".reply", (b"data", TID1, None)),
    ((OID,), False, "loadBefore", ()),
    ((OID, TID1, OID), False, "loadBefore", ()),
    ((OID, "tid"), False, "loadBefore", ()),
    ((bytearray(OID), TID1), False, "loadBefore", ()),
    (NotATuple((OID, TID1)), False, "loadBefore", ()),
    (1, False, ".reply", b"r"),
    (1, False, "", ()),
    (1, False, NotAStr("x"), ()),
    (1, 0, NotAStr(".reply"), None),
    (1, 0, ".reply2", None),
    (1, 0, ".repl", None),
    (1, NotAnInt(0), ".reply", None),
    (1, 0.0, ".reply", None),
    (1, 2**70, ".reply", None),
    (1, 1, ".reply", ("a.B", ())),
    (1, True, "x", ()),
    (0, True, "x", ()),
    (1, False, "x", NotATuple()),
    (1, False, "x", []),
    (-1, 0, ".reply", None),
    NotATuple((1, False, "x", ())),
    (1, False, "x"),
    (1, False, "x", (), ()),
    [1, False, "x", ()],
    None,
    "abcd",
]


@unittest.skipIf(_speedups is None, "the compiled helper is not built")
class MessageFromWireTests(unittest.TestCase):

    def test_it_is_the_one_in_use(self):
        self.assertIs(events.message_from_wire, _speedups.message_from_wire)

    def test_edge_cases_agree(self):
        for wire in EDGE_CASES:
            with self.subTest(wire=wire):
                self.assertEqual(
                    outcome(_speedups.message_from_wire, wire),
                    outcome(_message_from_wire_py, wire),
                )

    @settings(max_examples=400, deadline=None)
    @given(
        st.one_of(
            st.tuples(
                st.one_of(
                    st.integers(),
                    st.tuples(st.binary(max_size=8), st.binary(max_size=8)),
                    st.tuples(st.one_of(st.binary(max_size=2), st.text(max_size=2))),
                    plain_values,
                ),
                st.one_of(st.booleans(), st.integers(-2, 3), st.none(), st.just(0.0)),
                st.one_of(
                    st.sampled_from(["", ".reply", "x", "loadBefore"]),
                    st.text(max_size=8),
                    st.binary(max_size=2),
                ),
                st.one_of(plain_values, st.tuples(), st.lists(st.integers(), max_size=2)),
            ),
            plain_values,
        )
    )
    def test_any_input_agrees(self, wire):
        self.assertEqual(
            outcome(_speedups.message_from_wire, wire),
            outcome(_message_from_wire_py, wire),
        )

    def test_events_are_real_instances(self):
        call = _speedups.message_from_wire((7, False, "ping", ()))
        self.assertIs(type(call), Call)
        self.assertEqual(call, Call(7, "ping"))
        self.assertEqual(call.method, "ping")
        self.assertEqual(hash(call), hash(Call(7, "ping")))
        reply = _speedups.message_from_wire((7, 0, ".reply", b"pong"))
        self.assertIs(type(reply), Reply)
        self.assertEqual(reply.result, b"pong")

    def test_no_reference_is_leaked_or_lost(self):
        msgid = (OID, TID1)
        args = (OID, TID1)
        wire = (msgid, False, "loadBefore", args)
        gc.collect()
        before = [sys.getrefcount(x) for x in (msgid, args, wire)]
        for _ in range(1000):
            event = _speedups.message_from_wire(wire)
        del event
        # The fallback path too.
        odd = (0, True, "x", args)
        for _ in range(1000):
            event = _speedups.message_from_wire(odd)
        del event, odd
        gc.collect()
        after = [sys.getrefcount(x) for x in (msgid, args, wire)]
        self.assertEqual(before, after)

    def test_configure_needs_slotless_tuple_subclasses(self):
        class WithDict(tuple):
            pass

        with self.assertRaises(TypeError):
            _speedups.configure(dict, Reply, print)
        with self.assertRaises(TypeError):
            _speedups.configure(WithDict, Reply, print)
        with self.assertRaises(TypeError):
            _speedups.configure(Call, Reply, "not callable")
        # The failed calls changed nothing.
        self.assertIs(type(events.message_from_wire((1, False, "x", ()))), Call)


def decode_outcome(function, payload):
    """(type, items) of the event, or the exception's class and message."""
    try:
        event = function(payload)
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return type(event), tuple(event)


@unittest.skipIf(_speedups is None, "the compiled helper is not built")
class DecodeMsgpackTests(unittest.TestCase):

    def test_it_is_the_one_in_use(self):
        self.assertIs(MsgpackCodec.decode_message, _speedups.decode_msgpack)
        self.assertIs(MsgpackCodec().decode_message, _speedups.decode_msgpack)

    def test_messages_and_bad_bytes_agree(self):
        payloads = []
        for wire in EDGE_CASES:
            try:  # msgpack has no ints beyond 64 bits, no str/int subclasses
                payloads.append(msgpack.packb(wire, use_bin_type=True))
            except (OverflowError, TypeError):
                pass
        self.assertGreater(len(payloads), 25)
        payloads += [
            b"", b"\xc1", b"\x94\x01", b"\xd4\x05\x00",  # ext type 5
            msgpack.packb((1, False, "x", ())) + b"\x00",   # trailing byte
            memoryview(msgpack.packb((1, False, "x", ()))),
            bytearray(msgpack.packb((1, 0, ".reply", b"r"))),
        ]
        for payload in payloads:
            with self.subTest(payload=bytes(payload)[:40]):
                self.assertEqual(
                    decode_outcome(_speedups.decode_msgpack, payload),
                    decode_outcome(_decode_message_py, payload),
                )

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(
        st.binary(max_size=40),
        st.tuples(st.integers(-2, 2**64 - 1), st.booleans(), st.text(max_size=4),
                  st.tuples(st.binary(max_size=4))).map(
            lambda wire: msgpack.packb(wire, use_bin_type=True)),
    ))
    def test_any_payload_agrees(self, payload):
        self.assertEqual(
            decode_outcome(_speedups.decode_msgpack, payload),
            decode_outcome(_decode_message_py, payload),
        )

    def test_no_reference_is_leaked(self):
        payload = msgpack.packb(((OID, TID1), False, "loadBefore", (OID, TID1)))
        gc.collect()
        before = sys.getrefcount(payload)
        for _ in range(1000):
            event = _speedups.decode_msgpack(payload)
        for _ in range(100):
            try:
                _speedups.decode_msgpack(b"\xc1")
            except Exception:
                pass
        del event
        gc.collect()
        self.assertEqual(sys.getrefcount(payload), before)


def next_message_outcome(function, chunk, pos, unusual):
    """What next_message returns (or raises) and where it leaves the reader."""
    reader = framing.FrameReader()
    reader.chunk, reader.pos = chunk, pos

    def decode(payload):
        if payload[:1] == b"!":
            raise ValueError("undecodable")
        return ("decoded", bytes(payload))  # bytes or bytearray: either decodes

    try:
        result = function(reader, unusual, decode)
    except ValueError as exc:
        result = ("raised", str(exc))
    return result, reader.pos


@unittest.skipIf(_speedups is None, "the compiled helper is not built")
class NextMessageTests(unittest.TestCase):

    def test_it_is_the_one_in_use(self):
        self.assertIs(framing.next_message, _speedups.next_message)

    @settings(max_examples=400, deadline=None)
    @given(
        st.lists(st.binary(max_size=12), max_size=4),
        st.binary(max_size=6),
        st.integers(0, 60),
        st.integers(0, 20),
        st.booleans(),
    )
    def test_any_buffer_agrees(self, payloads, tail, pos, unusual, mutable):
        chunk = b"".join(framing.frame(p) for p in payloads) + tail
        pos = min(pos, len(chunk))
        if mutable:
            chunk = bytearray(chunk)
        self.assertEqual(
            next_message_outcome(_speedups.next_message, chunk, pos, unusual),
            next_message_outcome(framing._next_message_py, chunk, pos, unusual),
        )

    def test_edges(self):
        cases = [
            (b"", 0, 10),                                  # nothing
            (b"\x00\x00\x00", 0, 10),                       # part of a header
            (framing.frame(b"abc"), 0, 3),                 # unusual size
            (framing.frame(b"abc"), 0, 4),                 # just below it
            (framing.frame(b"abc")[:-1], 0, 10),           # incomplete
            (framing.frame(b"abc") * 2, 7, 10),            # the second frame
            (framing.frame(b"abc"), 7, 10),                # all read
            (framing.frame(b"!x"), 0, 10),                 # decode raises
            (b"\xff\xff\xff\xff", 0, 2**40),               # 4 GiB announced
        ]
        for chunk, pos, unusual in cases:
            for kind in (bytes, bytearray):
                with self.subTest(chunk=chunk, pos=pos, unusual=unusual, kind=kind):
                    self.assertEqual(
                        next_message_outcome(_speedups.next_message, kind(chunk), pos, unusual),
                        next_message_outcome(framing._next_message_py, kind(chunk), pos, unusual),
                    )

    def test_no_reference_is_leaked(self):
        chunk = framing.frame(b"abc") * 1000
        reader = framing.FrameReader()

        def decode(payload):
            return payload

        gc.collect()
        before = sys.getrefcount(chunk), sys.getrefcount(decode)
        reader.chunk = chunk
        while _speedups.next_message(reader, 100, decode) is not None:
            pass
        for _ in range(100):  # the other outcomes
            reader.pos = 0
            _speedups.next_message(reader, 2, decode)
        reader.chunk = b""
        gc.collect()
        self.assertEqual((sys.getrefcount(chunk), sys.getrefcount(decode)), before)

    def test_only_bytes_and_bytearray_chunks(self):
        result, pos = next_message_outcome(
            _speedups.next_message, memoryview(framing.frame(b"abc")), 0, 10)
        self.assertIs(result, NotImplemented)
        self.assertEqual(pos, 0)


@unittest.skipIf(_speedups is None, "the compiled helper is not built")
class FrameTests(unittest.TestCase):

    def test_it_is_the_one_in_use(self):
        self.assertIs(framing.frame_bytes, _speedups.frame)

    def test_same_bytes_as_the_pure_python_frame(self):
        for size in (0, 1, 255, 256, 65535, 65536, 1 << 20):
            payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            with self.subTest(size=size):
                self.assertEqual(
                    _speedups.frame(payload), framing._frame_bytes_py(payload)
                )
                self.assertEqual(_speedups.frame(payload), framing.frame(payload))

    def test_only_bytes(self):
        for payload in (bytearray(b"x"), memoryview(b"x"), "x", None):
            with self.subTest(payload=type(payload).__name__):
                with self.assertRaises(TypeError):
                    _speedups.frame(payload)


def loads_outcome(loads, data):
    """The object, or the error message."""
    try:
        return "ok", loads(data)
    except RemoteProtocolError as exc:
        return "error", str(exc)


def pure_loads(*args):
    """``make_loads(*args)`` without the compiled fast path."""
    with mock.patch.object(safe_unpickle, "_plain_loads", None):
        return safe_unpickle.make_loads(*args)


#: A Z5 ping call, as our client sends it.
PING = b"\x80\x03(M\xd2\x04\x89X\x04\x00\x00\x00ping)t."

# Pickles on each edge of plain_loads: memo, every length kind, opcodes it
# leaves to the restricted path, bad sizes, early or missing STOP.
PICKLED: tuple[Any, ...] = (
    None, (), (1, False, "ping", ()), [b"x" * 300, "y" * 300], {"a": (1.5, -2**70)},
    (OID, TID1) * 3, {1, 2}, frozenset(), bytearray(b"ab"), 2**31, -1,
)
PLAIN_EDGES = [
    pickle.dumps(value, protocol) for protocol in range(6) for value in PICKLED
] + [
    PING,
    b"\x80\x03(M\xd2\x04\x89X\x04\x00\x00\x00ping)t.x",       # trailing byte
    b"\x80\x03(M\xd2\x04\x89X\x04\x00\x00\x00ping)t",         # no STOP
    b"\x80\x03(M\xd2\x04\x89X\x05\x00\x00\x00ping)t.",       # runs past the end
    b"\x80\x03(M\xd2\x04\x89X\xff\xff\xff\xffping)t.",       # huge length
    b"\x80\x03K\x01r\x00\x00\x00\x00.",                       # LONG_BINPUT 0
    b"\x80\x03K\x01r\xff\xff\xff\x7f.",                       # beyond the size
    b"\x80\x03K\x01q\x00h\x00\x86.",                           # BINPUT, BINGET
    b"\x80\x03h\x00.",                                          # empty memo
    b"\x80\x03\x8a\x02\x01\x02.",                               # LONG1
    b"\x80\x03\x8b\xff\xff\xff\xff.",                           # LONG4 < 0
    b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01K\x02\x86.",  # FRAME
    b"\x80\x05\x96\xff\xff\xff\xff\xff\xff\xff\xff.",            # BYTEARRAY8, huge
    b"\x80\x03cbuiltins\nset\n)\x85R.",                         # a global
    b"\x80\x03\x82\x01.",                                        # EXT1
    b"\x80\x03X\x01\x00\x00\x00aQ.",                            # BINPERSID
    b"(I1\nI2\ntp0\n.",                                         # protocol 0 text
    b"K\x01.",                                                  # no PROTO
    b".", b"", b"\x80", b"\xff.", b"N..",
]


@unittest.skipIf(_speedups is None, "the compiled helper is not built")
class PlainLoadsTests(unittest.TestCase):

    def test_it_is_the_one_in_use(self):
        self.assertIs(safe_unpickle._plain_loads, _speedups.plain_loads)

    def test_a_small_message_skips_the_restricted_unpickler(self):
        # What made a Z5 ping cost 3 microseconds per message to decode.
        codec = PickleCodec()
        call = Call(1234, "loadBefore", (OID, TID1))
        payloads = [codec.encode(call), codec.encode(call.reply((b"data", TID1, None)))]
        with mock.patch.object(safe_unpickle, "walk_pickle") as walk, \
                mock.patch.object(safe_unpickle, "_Source") as source:
            loads = safe_unpickle.make_loads({})
            for payload in payloads:
                self.assertEqual(loads(payload), pickle.loads(payload))
        walk.assert_not_called()
        source.assert_not_called()

    def test_edges_agree(self):
        allowed = safe_unpickle.server_pickle_globals()
        fast, pure = safe_unpickle.make_loads(allowed), pure_loads(allowed)
        for data in PLAIN_EDGES:
            for payload in (data, bytearray(data)):
                with self.subTest(data=data, kind=type(payload)):
                    self.assertEqual(loads_outcome(fast, payload), loads_outcome(pure, payload))
        self.assertEqual(fast(memoryview(PING)), pure(memoryview(PING)))

    @settings(max_examples=300, deadline=None)
    @given(plain_values, st.integers(0, 5), st.integers(0, 40), st.binary(max_size=3))
    def test_any_pickle_agrees(self, value, protocol, cut, tail):
        fast, pure = safe_unpickle.make_loads({}), pure_loads({})
        data = pickle.dumps(value, protocol)
        for payload in (data, data[:-cut or None], data + tail):
            self.assertEqual(loads_outcome(fast, payload), loads_outcome(pure, payload))

    def test_only_up_to_the_nesting_bound(self):
        # Longer payloads get the nesting scan, which the fast path lacks.
        data = pickle.dumps(((((1,),),),), 3)
        loads = safe_unpickle.make_loads({}, max_nesting_depth=len(data) - 1)
        with mock.patch.object(safe_unpickle, "scan_pickle") as scan:
            loads(data)
        scan.assert_called_once()

    def test_no_reference_is_leaked(self):
        payload = pickle.dumps((1, False, "ping", ()), 3)
        bad = payload + b"x"
        gc.collect()
        before = sys.getrefcount(payload), sys.getrefcount(bad)
        value: Any = None
        for _ in range(1000):
            value = _speedups.plain_loads(payload)
            _speedups.plain_loads(bad)
            _speedups.plain_loads(payload[:-1])
        del value
        gc.collect()
        self.assertEqual((sys.getrefcount(payload), sys.getrefcount(bad)), before)

    def test_configure_checks_its_arguments(self):
        with self.assertRaises(TypeError):
            _speedups.configure_plain_loads(b"\xff" * 255, pickle.loads)
        with self.assertRaises(TypeError):
            _speedups.configure_plain_loads(b"\xff" * 256, None)


class BuiltTests(unittest.TestCase):

    def test_the_helper_is_built(self):
        self.assertIsNotNone(
            _speedups,
            "zeo.protocol._speedups is missing: the install could not compile"
            " it (is a C compiler installed?).  Everything works without it,"
            " only slower; re-run the install with a compiler.",
        )
