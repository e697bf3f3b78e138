"""peer_repr: a peer-supplied value, short, in a log line or error message."""

import unittest

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import zeo.protocol
from zeo.protocol.display import PEER_REPR_LIMIT
from zeo.protocol.display import peer_repr

# What a cut value may add to the limit: "..." and "(N characters)".
SLACK = 40


class PeerReprTests(unittest.TestCase):

    def test_exported(self):
        self.assertIs(zeo.protocol.peer_repr, peer_repr)
        self.assertIn("peer_repr", zeo.protocol.__all__)
        self.assertIn("PEER_REPR_LIMIT", zeo.protocol.__all__)

    def test_short_values_are_their_repr(self):
        for value in ("abc", b"\0x", 12345, -7, 1.5, None, True, (1, b"a"),
                      ["x"], {"k": 1}):
            self.assertEqual(peer_repr(value), repr(value))

    def test_long_strings_and_bytes_are_cut_with_their_size(self):
        text = peer_repr("a" * (60 << 20))
        self.assertEqual(text, "'" + "a" * (PEER_REPR_LIMIT - 1) + "... (62914560 characters)")
        text = peer_repr(b"\xff" * (60 << 20))
        self.assertTrue(text.startswith("b'\\xff\\xff"))
        self.assertTrue(text.endswith("... (62914560 bytes)"))
        self.assertLessEqual(len(text), PEER_REPR_LIMIT + SLACK)
        self.assertEqual(peer_repr(bytearray(1000), 20)[-12:], "(1000 bytes)")
        self.assertEqual(peer_repr(memoryview(b"x" * 9)), "<memoryview of 9 bytes>")

    def test_a_smaller_limit(self):
        self.assertEqual(peer_repr("abcdefghijklmnop", 10),
                         "'abcdefghi... (16 characters)")

    def test_huge_ints(self):
        # repr() refuses ints over 4300 digits; peer_repr shows the size.
        self.assertEqual(peer_repr(10**5000), "<int of 16610 bits>")
        self.assertEqual(peer_repr([-(10**5000)]), "[<int of 16610 bits>]")
        self.assertEqual(peer_repr(2**64), repr(2**64))

    def test_unprintable_characters_are_escaped(self):
        # A value can't start a new log line or send terminal escapes.
        text = peer_repr("x\ny\r\x1b[31m\u202e\udc80")
        self.assertNotIn("\n", text)
        self.assertNotIn("\r", text)
        self.assertNotIn("\x1b", text)
        self.assertNotIn("\u202e", text)
        text.encode("utf-8")   # no lone surrogate left

    def test_containers_show_their_first_items_and_size(self):
        self.assertEqual(peer_repr(list(range(100))), "[0, 1, 2, 3, 4, 5, 6, 7, ...] (100 items)")
        self.assertLessEqual(len(peer_repr(["a" * 1000] * 1000)), PEER_REPR_LIMIT + SLACK)
        self.assertLessEqual(len(peer_repr({"k" * 1000: "v" * 1000})), PEER_REPR_LIMIT + SLACK)

    def test_recursive_and_deep_values(self):
        cyclic = []
        cyclic.append(cyclic)
        self.assertEqual(peer_repr(cyclic), "[[[[...]]]]")
        mapping = {}
        mapping[1] = mapping
        self.assertEqual(peer_repr(mapping), "{1: {1: {1: {...}}}}")
        deep = ()
        for _ in range(100_000):
            deep = (deep,)
        self.assertEqual(peer_repr(deep), "((((...),),),)")

    def test_odd_objects(self):
        class NoRepr:
            def __repr__(self):
                raise RuntimeError("no")

        class LongRepr:
            def __repr__(self):
                return "z" * 10_000

        class BadSize(str):
            def __len__(self):
                raise RuntimeError("no")

        self.assertEqual(peer_repr(NoRepr()), "<NoRepr object>")
        self.assertEqual(peer_repr([NoRepr()]), "[<NoRepr object>]")
        self.assertEqual(peer_repr(LongRepr()), "z" * PEER_REPR_LIMIT + "...")
        self.assertIsInstance(peer_repr(BadSize("x")), str)

    @settings(max_examples=200, deadline=None)
    @given(st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text()
        | st.binary(),
        lambda children: st.lists(children) | st.tuples(children, children)
        | st.dictionaries(st.text() | st.binary(), children),
        max_leaves=50))
    def test_never_raises_and_stays_short(self, value):
        text = peer_repr(value)
        self.assertIsInstance(text, str)
        self.assertLessEqual(len(text), PEER_REPR_LIMIT + SLACK)

