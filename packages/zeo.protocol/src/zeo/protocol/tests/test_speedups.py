"""The compiled helper agrees with the pure-Python code it speeds up.

Every install we test builds it (buildout's develop eggs and tox's
editable installs compile it), so its absence is a failure here: a
build that silently lost it would be slower without anyone noticing.
"""

import gc
import sys
import unittest

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from zeo.protocol import events
from zeo.protocol import framing
from zeo.protocol.errors import RemoteProtocolError
from zeo.protocol.events import Call
from zeo.protocol.events import Reply
from zeo.protocol.events import _message_from_wire_py
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
EDGE_CASES = [
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


class BuiltTests(unittest.TestCase):

    def test_the_helper_is_built(self):
        self.assertIsNotNone(
            _speedups,
            "zeo.protocol._speedups is missing: the install could not compile"
            " it (is a C compiler installed?).  Everything works without it,"
            " only slower; re-run the install with a compiler.",
        )
