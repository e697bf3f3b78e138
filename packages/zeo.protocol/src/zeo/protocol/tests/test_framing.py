import struct
import unittest

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from zeo.protocol.errors import LocalProtocolError
from zeo.protocol.errors import RemoteProtocolError
from zeo.protocol.framing import FrameReader
from zeo.protocol.framing import frame
from zeo.protocol.framing import frame_header
from zeo.protocol.limits import WIRE_MAX_FRAME_SIZE
from zeo.protocol.tests.support import chunkings


def read_all(reader, chunks):
    """Feed *chunks* one at a time, draining frames after each."""
    frames = []
    for chunk in chunks:
        reader.feed(chunk)
        while True:
            payload = reader.next_frame()
            if payload is None:
                break
            frames.append(bytes(payload))
    return frames


class FrameTests(unittest.TestCase):

    def test_frame_prefixes_big_endian_length(self):
        self.assertEqual(frame(b"Z5"), b"\x00\x00\x00\x02Z5")
        self.assertEqual(frame(b""), b"\x00\x00\x00\x00")
        self.assertEqual(frame(b"x" * 258)[:4], b"\x00\x00\x01\x02")

    def test_frame_header(self):
        self.assertEqual(frame_header(0x01020304), b"\x01\x02\x03\x04")
        self.assertEqual(frame_header(WIRE_MAX_FRAME_SIZE), b"\xff\xff\xff\xff")

    def test_frame_header_refuses_unrepresentable_sizes(self):
        with self.assertRaises(LocalProtocolError):
            frame_header(WIRE_MAX_FRAME_SIZE + 1)
        with self.assertRaises(LocalProtocolError):
            frame_header(-1)


class FrameReaderTests(unittest.TestCase):

    payloads = [b"Z5", b"", b"x" * 300, bytes(range(256))]

    def stream(self):
        return b"".join(frame(p) for p in self.payloads)

    def test_whole_bytewise_and_with_trailing_junk(self):
        for label, chunks, junk in chunkings(self.stream()):
            with self.subTest(label):
                reader = FrameReader()
                frames = read_all(reader, chunks)
                # The junk frame announces 3 bytes and carries "abc".
                expected = self.payloads + ([b"abc"] if junk else [])
                self.assertEqual(frames, expected)
                self.assertEqual(reader.buffered, 0)

    def test_partial_frames_are_kept(self):
        reader = FrameReader()
        reader.feed(b"\x00\x00")
        self.assertIsNone(reader.next_frame())
        reader.feed(b"\x00\x03ab")
        self.assertIsNone(reader.next_frame())
        self.assertEqual(reader.buffered, 6)
        reader.feed(b"c\x00")
        self.assertEqual(reader.next_frame(), b"abc")
        self.assertIsNone(reader.next_frame())
        self.assertEqual(reader.buffered, 1)

    def test_payload_is_a_copy_later_feeds_dont_touch(self):
        source = bytearray(frame(b"abc") + frame(b"de"))
        reader = FrameReader()
        reader.feed(source)
        source[:] = b"\xff" * len(source)  # the caller reuses its buffer
        first = reader.next_frame()
        self.assertEqual(first, b"abc")
        self.assertEqual(reader.next_frame(), b"de")
        # A frame split across feeds, cut from the growable buffer.
        reader.feed(frame(b"xyz")[:5])
        reader.feed(b"yz" + frame(b"next")[:2])
        split = reader.next_frame()
        reader.feed(frame(b"next")[2:])
        self.assertEqual(reader.next_frame(), b"next")
        self.assertEqual((first, split), (b"abc", b"xyz"))

    def test_fed_bytes_are_kept_without_a_copy(self):
        # Immutable input is adopted; mutable input is copied once.
        data = frame(b"abc")
        reader = FrameReader()
        reader.feed(data)
        self.assertIs(reader.chunk, data)
        view = memoryview(bytearray(data))
        reader = FrameReader()
        reader.feed(view)
        self.assertIs(type(reader.chunk), bytes)
        self.assertEqual(reader.next_frame(), b"abc")
        self.assertEqual(reader.buffered, 0)

    def test_empty_feed_is_harmless(self):
        reader = FrameReader()
        reader.feed(b"")
        self.assertIsNone(reader.next_frame())

    def test_oversize_header_refused_before_payload_arrives(self):
        reader = FrameReader(max_frame_size=10)
        reader.feed(struct.pack(">I", 11))  # the header alone
        with self.assertRaises(RemoteProtocolError) as caught:
            reader.next_frame()
        self.assertIn("11-byte frame", str(caught.exception))

    def test_reference_would_buffer_4_gib(self):
        reader = FrameReader()
        reader.feed(b"\xff\xff\xff\xff" + b"x" * 100)
        with self.assertRaises(RemoteProtocolError):
            reader.next_frame()

    def test_limit_is_inclusive_and_adjustable(self):
        reader = FrameReader(max_frame_size=3)
        reader.feed(frame(b"abc") + frame(b"abcd"))
        self.assertEqual(reader.next_frame(), b"abc")
        with self.assertRaises(RemoteProtocolError):
            reader.next_frame()
        reader.max_frame_size = 4
        self.assertEqual(reader.next_frame(), b"abcd")

    def test_repr(self):
        reader = FrameReader(max_frame_size=7)
        reader.feed(b"ab")
        self.assertEqual(repr(reader), "<FrameReader buffered=2 max_frame_size=7>")

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(st.binary(max_size=70), max_size=6),
        st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=10),
    )
    def test_any_split_gives_the_same_frames(self, payloads, cuts):
        stream = b"".join(frame(p) for p in payloads)
        chunks, start, i = [], 0, 0
        while start < len(stream):
            size = cuts[i % len(cuts)]
            chunks.append(stream[start:start + size])
            start += size
            i += 1
        self.assertEqual(read_all(FrameReader(), chunks), payloads)
