import unittest

import msgpack
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from zeo.protocol.events import ErrorReply
from zeo.protocol.msgpack_codec import MsgpackCodec
from zeo.protocol.pickle_codec import PickleCodec
from zeo.protocol.remote_errors import MAX_PAYLOAD_DEPTH
from zeo.protocol.remote_errors import MAX_PAYLOAD_TEXT
from zeo.protocol.remote_errors import ErrorTable
from zeo.protocol.remote_errors import RemoteError
from zeo.protocol.remote_errors import args_builder
from zeo.protocol.remote_errors import builtin_error_table
from zeo.protocol.remote_errors import error_reply
from zeo.protocol.remote_errors import exception_to_wire
from zeo.protocol.remote_errors import qualified_name


class Custom(Exception):
    pass


class Unrepresentable:
    def __repr__(self):
        raise RuntimeError("no repr for you")


class ExceptionToWireTests(unittest.TestCase):

    def test_reference_shape(self):
        self.assertEqual(
            exception_to_wire(ValueError("unknown storage: nosuch")),
            ("builtins.ValueError", ("unknown storage: nosuch",)),
        )
        self.assertEqual(exception_to_wire(KeyError(b"k")), ("builtins.KeyError", (b"k",)))

    def test_dict_wins_over_args(self):
        exc = Custom("ignored")
        exc.oid = b"\0" * 8
        self.assertEqual(
            exception_to_wire(exc),
            (f"{__name__}.Custom", {"oid": b"\0" * 8}),
        )

    def test_payload_is_flattened_to_plain_values(self):
        exc = Custom(
            {1, 2},
            object,
            2**70,
            "\udcff",
            bytearray(b"ba"),
            [KeyError(b"nested")],
            {3: "int key", b"b": 1, "s": (None, True, 1.5)},
            Unrepresentable(),
        )
        name, payload = exception_to_wire(exc)
        self.assertEqual(name, f"{__name__}.Custom")
        self.assertEqual(payload[0], "{1, 2}")
        self.assertEqual(payload[1], "<class 'object'>")
        self.assertEqual(payload[2], str(2**70))
        self.assertEqual(payload[3], "'\\udcff'")
        self.assertEqual(payload[4], b"ba")
        self.assertEqual(payload[5], [("builtins.KeyError", (b"nested",))])
        self.assertEqual(payload[6], {"3": "int key", b"b": 1, "s": (None, True, 1.5)})
        self.assertEqual(payload[7], "<Unrepresentable object>")
        # ... so that both encodings can always carry it:
        for codec in (MsgpackCodec(), PickleCodec()):
            reply = ErrorReply(1, name, payload)
            self.assertEqual(codec.decode(codec.encode(reply)).class_name, name)

    def test_deep_and_cyclic_payloads_are_cut(self):
        cyclic = []
        cyclic.append(cyclic)
        name, payload = exception_to_wire(Custom(cyclic))
        depth = 0
        while isinstance(payload, (list, tuple)):
            payload = payload[0]
            depth += 1
        self.assertIsInstance(payload, str)
        self.assertLessEqual(depth, MAX_PAYLOAD_DEPTH + 1)
        msgpack.packb(exception_to_wire(Custom(cyclic)))

    def test_long_reprs_are_truncated(self):
        class Big:
            def __repr__(self):
                return "x" * 5000

        name, payload = exception_to_wire(Custom(Big()))
        self.assertEqual(payload[0], "x" * 1000 + "...")

    def test_huge_values_make_a_small_payload_that_encodes(self):
        # Issue #17 (9): repr() of an int over 4300 digits raises; the error
        # reply for iterator_next(10**5000) could not be built. (6): a
        # payload quoting a 20 MB value the client sent is small.
        huge = 10**5000
        big_text = "\n" * (20 << 20)
        cases = [
            KeyError(huge),
            KeyError((huge, -huge)),
            ValueError(big_text),
            KeyError(b"\xff" * (20 << 20)),
            Custom([big_text] * 100_000),
            Custom({str(i): b"v" * 1000 for i in range(10_000)}),
            Custom(bytearray(20 << 20), memoryview(b"x" * (20 << 20))),
        ]
        for exc in cases:
            name, payload = exception_to_wire(exc)
            self.assertEqual(name, qualified_name(type(exc)))
            for codec in (MsgpackCodec(), PickleCodec()):
                encoded = codec.encode(ErrorReply(1, name, payload))
                self.assertLess(len(encoded), 64 * 1024, name)
        name, payload = exception_to_wire(KeyError(huge))
        self.assertEqual(payload, ("<int of 16610 bits>",))
        name, payload = exception_to_wire(ValueError("x" * 5000))
        self.assertEqual(payload, ("x" * MAX_PAYLOAD_TEXT + "... (5000 characters)",))
        name, payload = exception_to_wire(KeyError(b"y" * 5000))
        self.assertEqual(payload, (b"y" * MAX_PAYLOAD_TEXT + b"... (5000 bytes)",))

    def test_an_exception_that_cannot_be_flattened_is_still_sent(self):
        class Hostile(Exception):
            def __getattribute__(self, name):
                if name in ("__dict__", "args"):
                    raise RuntimeError("no state for you")
                return super().__getattribute__(name)

            def __repr__(self):
                raise RuntimeError("no repr either")

        name, payload = exception_to_wire(Hostile())
        self.assertEqual(name, f"{__name__}.Hostile")
        self.assertEqual(payload, ("<Hostile object>",))
        self.assertEqual(error_reply(3, Hostile()).payload, ("<Hostile object>",))

    def test_error_reply(self):
        self.assertEqual(
            error_reply(7, KeyError(b"k")), ErrorReply(7, "builtins.KeyError", (b"k",))
        )

    def test_qualified_name(self):
        self.assertEqual(qualified_name(KeyError), "builtins.KeyError")
        self.assertEqual(qualified_name(Custom), f"{__name__}.Custom")

    @settings(max_examples=100, deadline=None)
    @given(
        st.lists(
            st.recursive(
                st.one_of(
                    st.integers(),
                    st.text(),
                    st.binary(max_size=8),
                    st.complex_numbers(),
                    st.sets(st.integers(), max_size=3),
                    st.from_type(type),
                    st.builds(object),
                ),
                lambda children: st.one_of(
                    st.lists(children, max_size=3),
                    st.dictionaries(st.one_of(st.integers(), st.text()), children, max_size=3),
                ),
                max_leaves=8,
            ),
            max_size=3,
        )
    )
    def test_any_payload_encodes_in_both_encodings(self, args):
        reply = error_reply(1, Custom(*args))
        for codec in (MsgpackCodec(), PickleCodec()):
            self.assertEqual(codec.decode(codec.encode(reply)).class_name, reply.class_name)


class ErrorTableTests(unittest.TestCase):

    def setUp(self):
        self.table = builtin_error_table()

    def test_builtins(self):
        for cls in (KeyError, TypeError, ValueError, AttributeError, IndexError):
            name = f"builtins.{cls.__name__}"
            self.assertIn(name, self.table)
            exc = self.table.build(name, ("boom", 2))
            self.assertIs(type(exc), cls)
            self.assertEqual(exc.args, ("boom", 2))

    def test_reference_aliases(self):
        self.assertIs(type(self.table.build("exceptions.KeyError", (b"k",))), KeyError)
        self.assertIs(type(self.table.build("exceptions.TypeError", ())), TypeError)

    def test_unknown_names_become_remote_errors(self):
        # Never imported: a module named by the peer is just a string.
        for name in ("os.system", "ZEO.Exceptions.ServerException", "nope", ""):
            exc = self.table.build(name, ("x",))
            self.assertIs(type(exc), RemoteError)
            self.assertEqual((exc.class_name, exc.payload), (name, ("x",)))

    def test_builder_failures_become_remote_errors(self):
        table = ErrorTable({"a.B": lambda name, payload: payload["missing"]})
        table.register("a.C", lambda name, payload: "not an exception")
        self.assertIs(type(table.build("a.B", {})), RemoteError)
        self.assertIs(type(table.build("a.C", ())), RemoteError)
        self.assertIs(type(table.build(3, ())), RemoteError)

    def test_from_reply(self):
        exc = self.table.from_reply(ErrorReply(1, "builtins.ValueError", ("v",)))
        self.assertEqual((type(exc), exc.args), (ValueError, ("v",)))

    def test_args_builder_with_dict_payload(self):
        exc = args_builder(ValueError)("builtins.ValueError", {"__notes__": ["n"]})
        self.assertEqual(exc.args, ({"__notes__": ["n"]},))

    def test_register_and_copy(self):
        table = ErrorTable()
        table.register_classes([Custom])
        copied = table.copy()
        copied.register("x.Y", args_builder(KeyError))
        self.assertIn(f"{__name__}.Custom", copied)
        self.assertNotIn("x.Y", table)
        self.assertEqual(list(copied), sorted([f"{__name__}.Custom", "x.Y"]))
        self.assertEqual(len(copied), 2)
        self.assertEqual(repr(copied), "<ErrorTable with 2 classes>")
        with self.assertRaises(TypeError):
            table.register("x", "not callable")

    def test_remote_error(self):
        exc = RemoteError("a.B", {"k": b"v"})
        self.assertEqual(str(exc), "a.B: {'k': b'v'}")
        self.assertIsInstance(exc, Exception)

    def test_round_trip_through_the_wire(self):
        for codec in (MsgpackCodec(), PickleCodec()):
            for original in (KeyError(b"\0" * 8), ValueError("bad", 3), TypeError()):
                reply = codec.decode(codec.encode(error_reply(5, original)))
                rebuilt = self.table.from_reply(reply)
                self.assertIs(type(rebuilt), type(original))
                self.assertEqual(rebuilt.args, original.args)
