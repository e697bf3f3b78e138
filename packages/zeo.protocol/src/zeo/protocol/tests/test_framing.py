import struct
import unittest

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from zeo.protocol.errors import LocalProtocolError
from zeo.protocol.errors import RemoteProtocolError
from zeo.protocol.framing import DIRECT_FRAME_SIZE
from zeo.protocol.framing import MIN_PIECE_SIZE
from zeo.protocol.framing import FrameReader
from zeo.protocol.framing import frame
from zeo.protocol.framing import frame_header
from zeo.protocol.limits import WIRE_MAX_FRAME_SIZE
from zeo.protocol.tests.support import TracedMemory
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


def reserved(reader):
    """Bytes of the buffers the reader holds for a frame read in place."""
    return sum(len(piece) for piece in reader._pieces or ())


def within_bound(reader):
    """What the reader holds for a frame follows what has arrived (see the
    framing module's docstring)."""
    return reserved(reader) <= 2 * reader.buffered + 2 * MIN_PIECE_SIZE


def read_directly(reader, chunks, check=None):
    """Like read_all, but as an I/O layer that reads into receive_buffer()
    whenever the reader offers one; returns the frames and the number of
    bytes that went in directly.  *check* is called with the reader after
    each offer."""
    frames = []
    direct = 0
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            target = reader.receive_buffer()
            if check is not None:
                check(reader)
            if target is None:
                reader.feed(view.tobytes())
                view = view[len(view):]
            else:
                n = min(len(target), len(view))
                target[:n] = view[:n]
                reader.received(n)
                direct += n
                view = view[n:]
            while True:
                payload = reader.next_frame()
                if payload is None:
                    break
                frames.append(bytes(payload))
    return frames, direct


def cut(stream, cuts):
    """*stream* in pieces of the sizes in *cuts*, over and over."""
    chunks, start, i = [], 0, 0
    while start < len(stream):
        chunks.append(stream[start:start + cuts[i % len(cuts)]])
        start += cuts[i % len(cuts)]
        i += 1
    return chunks


class DirectReadTests(unittest.TestCase):
    """Large frames are read straight into buffers of their own, which
    grow with the bytes received, never with the size announced."""

    LARGE = DIRECT_FRAME_SIZE * 4

    def assertWithinBound(self, reader):
        self.assertTrue(within_bound(reader),
                        f"{reserved(reader)} bytes held for {reader.buffered} received")

    def test_a_large_frame_goes_in_directly(self):
        payload = bytes(range(256)) * (self.LARGE // 256)
        stream = frame(payload) + frame(b"next")
        reader = FrameReader(1 << 20)
        # The first read brings more than the frame still lacks, less
        # MIN_PIECE_SIZE: the rest gets the frame's one buffer.
        first = len(frame(payload)) // 2 - MIN_PIECE_SIZE // 2
        reader.feed(stream[:first])
        self.assertIsNone(reader.next_frame())
        target = reader.receive_buffer()
        self.assertEqual(len(target), len(frame(payload)) - first)
        self.assertEqual(reader.buffered, first)
        target[:1000] = stream[first:first + 1000]
        reader.received(1000)
        self.assertEqual(reader.buffered, first + 1000)
        self.assertIsNone(reader.next_frame())
        rest = reader.receive_buffer()
        self.assertEqual(len(rest), len(target) - 1000)
        rest[:] = stream[first + 1000:len(frame(payload))]
        reader.received(len(rest))
        self.assertIs(reader.chunk, rest.obj)  # read in place: no copy
        self.assertIsNone(reader.receive_buffer())  # the frame is complete
        self.assertEqual(reader.next_frame(), payload)
        reader.feed(stream[len(frame(payload)):])
        self.assertEqual(reader.next_frame(), b"next")

    def test_an_announced_size_costs_nothing_until_it_arrives(self):
        # The old reader allocated the whole announced frame once a
        # sixteenth of it had come: 64 MiB for 4.
        reader = FrameReader(64 << 20)
        reader.feed(frame_header(64 << 20) + b"x" * 10)
        self.assertEqual(len(reader.receive_buffer()), MIN_PIECE_SIZE)
        self.assertWithinBound(reader)
        sizes = []
        while reader.buffered < 4 << 20:
            target = reader.receive_buffer()
            self.assertWithinBound(reader)
            sizes.append(len(target))
            target[:] = b"y" * len(target)
            reader.received(len(target))
        # Each new buffer is as large as all that came before it.
        self.assertEqual(sizes[:3], [MIN_PIECE_SIZE, MIN_PIECE_SIZE + 14, 2 * MIN_PIECE_SIZE + 28])
        self.assertLessEqual(len(sizes), 7)
        self.assertEqual(reserved(reader), reader.buffered)

    def test_traced_memory_of_a_frame_announced_at_64_mib(self):
        # 4 MiB arrive of 64 MiB announced, in reads of 256 KiB into the
        # offered buffers (or fed when none is offered).
        head = frame_header(64 << 20) + b"h" * 1000
        body = b"b" * (4 << 20)
        reader = FrameReader(64 << 20)
        with TracedMemory() as memory:
            read_directly(reader, [head] + cut(body, [256 << 10]))
            held, peak = memory.held(), memory.peak()
        self.assertEqual(reader.buffered, len(head) + len(body))
        self.assertGreater(held, 4 << 20)
        self.assertLess(peak, 2 * (4 << 20) + 4 * MIN_PIECE_SIZE)

    def test_large_frames_bytewise_and_in_odd_splits(self):
        payloads = [bytes([n % 251]) * n for n in
                    (DIRECT_FRAME_SIZE, 3 * DIRECT_FRAME_SIZE + 7, 5, 2 * DIRECT_FRAME_SIZE - 1)]
        stream = b"".join(frame(p) for p in payloads)
        for cuts in ([1], [3, 70_001, 1, 4099], [65_537], [5, 200_000]):
            with self.subTest(cuts=cuts[:4]):
                frames, direct = read_directly(
                    FrameReader(1 << 20), cut(stream, cuts), self.assertWithinBound)
                self.assertEqual(frames, payloads)
                self.assertGreater(direct, 0)
        # Fed the ordinary way, byte by byte, while a frame is read in place.
        reader = FrameReader(1 << 20)
        reader.feed(stream[:10])
        self.assertIsNotNone(reader.receive_buffer())
        frames = read_all(reader, cut(stream[10:], [1]))
        self.assertEqual(frames, payloads)

    def test_a_frame_in_pieces_is_joined_once(self):
        # A 60 MiB frame, read 256 KiB at a time: its pieces and the frame
        # they are joined into, but no other copy of it, at once.
        payload = bytes(range(256)) * (60 << 12)
        stream = memoryview(frame(payload))
        reader = FrameReader(64 << 20)
        reader.feed(stream[:256 << 10])
        start = 256 << 10
        with TracedMemory() as memory:
            while start < len(stream):
                target = reader.receive_buffer()
                size = min(len(target), 256 << 10)
                target[:size] = stream[start:start + size]
                del target
                reader.received(size)
                start += size
                if reader._pieces is not None:
                    pieces = len(reader._pieces)
            peak = memory.peak()
        self.assertEqual(pieces, 9)  # 256 KiB, then doubling
        self.assertEqual(len(reader.chunk), len(stream))
        self.assertLess(peak, 2 * len(stream) + 4 * MIN_PIECE_SIZE)
        self.assertEqual(reader.next_frame(), payload)

    def test_small_and_refused_frames_are_never_direct(self):
        reader = FrameReader(self.LARGE)
        reader.feed(frame(b"s" * (DIRECT_FRAME_SIZE - 1))[:-1])
        self.assertIsNone(reader.receive_buffer())
        reader = FrameReader(self.LARGE)
        reader.feed(frame(b"x" * (self.LARGE + 1))[:self.LARGE])
        self.assertIsNone(reader.receive_buffer())
        with self.assertRaises(RemoteProtocolError):
            reader.next_frame()

    def test_feeding_while_reading_directly(self):
        payload = b"p" * self.LARGE
        stream = frame(payload) + frame(b"after")
        for start in (len(stream) // 2, 1000):
            for tail in (stream[start:len(frame(payload))], stream[start:]):
                with self.subTest(start=start,
                                  overflow=len(tail) > len(frame(payload)) - start):
                    reader = FrameReader(1 << 20)
                    reader.feed(stream[:start])
                    self.assertIsNotNone(reader.receive_buffer())
                    reader.feed(tail)  # the ordinary way, maybe past the frame
                    self.assertEqual(reader.next_frame(), payload)
                    if len(tail) > len(frame(payload)) - start:
                        self.assertEqual(reader.next_frame(), b"after")
                    self.assertIsNone(reader.next_frame())

    def test_a_complete_frame_is_never_resized(self):
        # The I/O layer may still hold a view of the buffer it read into.
        payload = b"q" * self.LARGE
        stream = frame(payload) + frame(b"a") + frame(b"b")
        reader = FrameReader(1 << 20)
        reader.feed(stream[:self.LARGE // 2])
        held = reader.receive_buffer()
        held[:] = stream[self.LARGE // 2:len(frame(payload))]
        reader.received(len(held))
        reader.feed(stream[len(frame(payload)):-1])  # before the frame is read
        self.assertEqual(reader.next_frame(), payload)
        reader.feed(stream[-1:])
        self.assertEqual(read_all(reader, []), [])
        self.assertEqual(reader.next_frame(), b"a")
        self.assertEqual(reader.next_frame(), b"b")
        held.release()

    def test_received_must_match_a_buffer(self):
        reader = FrameReader()
        with self.assertRaises(LocalProtocolError):
            reader.received(1)
        reader.feed(frame(b"z" * self.LARGE)[:self.LARGE // 4])
        target = reader.receive_buffer()
        with self.assertRaises(LocalProtocolError):
            reader.received(len(target) + 1)
        with self.assertRaises(LocalProtocolError):
            reader.received(-1)
        # A full buffer takes nothing more until the next is offered.
        target[:] = b"z" * len(target)
        reader.received(len(target))
        with self.assertRaises(LocalProtocolError):
            reader.received(1)
        reader.received(0)
        self.assertGreater(len(reader.receive_buffer()), 0)

    @settings(max_examples=40, deadline=None)
    @given(
        st.lists(st.one_of(st.binary(max_size=70),
                           st.integers(DIRECT_FRAME_SIZE, 5 * DIRECT_FRAME_SIZE)),
                 max_size=5),
        st.lists(st.integers(min_value=1, max_value=70_000), min_size=1, max_size=10),
    )
    def test_any_split_gives_the_same_frames_read_directly(self, specs, cuts):
        payloads = [spec if isinstance(spec, bytes) else bytes([spec % 251]) * spec
                    for spec in specs]
        stream = b"".join(frame(p) for p in payloads)
        frames, direct = read_directly(
            FrameReader(1 << 20), cut(stream, cuts), self.assertWithinBound)
        self.assertEqual(frames, payloads)
        if any(len(p) >= DIRECT_FRAME_SIZE for p in payloads) and max(cuts) < 4096:
            self.assertGreater(direct, 0)
