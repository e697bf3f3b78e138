"""The checks of client arguments (zeo.server.arguments)."""

import unittest

from zeo.server.arguments import (
    checked_count, checked_id8, checked_label, checked_record, checked_serial,
    checked_tid)


class ArgumentTests(unittest.TestCase):

    def test_id8(self):
        self.assertEqual(checked_id8(b"\0" * 8, "an oid"), b"\0" * 8)
        for bad in (b"\0" * 7, "\0" * 8, None, 8):
            with self.assertRaisesRegex(TypeError, "an oid is 8 bytes"):
                checked_id8(bad, "an oid")

    def test_a_tid_above_maxtid_is_read_as_maxtid(self):
        maxtid = b"\x7f" + b"\xff" * 7
        self.assertEqual(checked_tid(maxtid, "a tid"), maxtid)
        self.assertEqual(checked_tid(b"\1" * 8, "a tid"), b"\1" * 8)
        for above in (b"\x80" + b"\0" * 7, b"\xff" * 8):
            self.assertEqual(checked_tid(above, "a tid"), maxtid)
            self.assertEqual(checked_serial(above), maxtid)
        with self.assertRaisesRegex(TypeError, "a tid is 8 bytes"):
            checked_tid(b"\0" * 7, "a tid")

    def test_record_is_non_empty_bytes(self):
        self.assertEqual(checked_record(b"data"), b"data")
        for bad in (b"", "data", None):
            with self.assertRaises(ValueError):
                checked_record(bad)

    def test_serial_as_text_from_zodbs_tests(self):
        self.assertEqual(checked_serial("\0" * 8), b"\0" * 8)
        self.assertEqual(checked_serial(b"\1" * 8), b"\1" * 8)
        self.assertIsNone(checked_serial(None))

    def test_count_is_cut_and_bounded_below(self):
        self.assertEqual(checked_count(5, 3, "a size"), 3)
        self.assertEqual(checked_count(-5, None, "a size"), 1)
        self.assertEqual(checked_count(10**5000, 100, "a size"), 100)
        with self.assertRaises(TypeError):
            checked_count(True, None, "a size")

    def test_label_cut_and_printable(self):
        self.assertEqual(checked_label("worker-1", 200), ("worker-1", 0))
        self.assertEqual(checked_label("x" * 300, 200), ("x" * 200, 300))
        self.assertEqual(checked_label("a\nb\x1b", 200), ("a?b?", 0))
        self.assertEqual(checked_label(42, 200), ("42", 0))

    def test_errors_show_peer_values_cut_short(self):
        with self.assertRaises(TypeError) as raised:
            checked_count("x" * 10_000_000, None, "a size")
        self.assertLess(len(str(raised.exception)), 200)
        with self.assertRaises(TypeError) as raised:
            checked_id8(b"x" * 10_000_000, "an oid")
        self.assertLess(len(str(raised.exception)), 200)


if __name__ == "__main__":
    unittest.main()
