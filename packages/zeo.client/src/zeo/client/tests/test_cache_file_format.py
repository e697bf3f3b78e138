"""Tests of the cache file format helpers (zeo.client.cache.file_format)."""
import struct
import unittest
import zlib

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from zeo.client.cache import file_format as fmt
from zeo.client.cache.errors import CacheCorruptError
from zeo.client.cache.errors import CacheError
from zeo.client.cache.errors import CacheFormatError
from zeo.client.cache.errors import CacheVersionError

TIDS = st.binary(min_size=8, max_size=8)


class ConstantsTests(unittest.TestCase):

    def test_struct_sizes(self):
        for name, size in (('FIXED', 'FIXED_SIZE'), ('SLOT', 'SLOT_SIZE'),
                           ('RECORD', 'RECORD_HEADER_SIZE'),
                           ('FREE', 'FREE_SIZE'),
                           ('INDEX_HEAD', 'INDEX_HEAD_SIZE')):
            self.assertEqual(struct.calcsize(getattr(fmt, name + '_FMT')),
                             getattr(fmt, size))

    def test_layout(self):
        self.assertEqual(fmt.SLOT_OFFSETS, (4096, 8192))
        self.assertEqual(fmt.RING_OFFSET, 12288)
        self.assertEqual(len(fmt.MAGIC), 8)
        self.assertEqual(fmt.INDEX_ENTRY_SIZE, 4 * 8 + 4)
        self.assertEqual(fmt.END_OFFSET + 12, fmt.RECORD_HEADER_SIZE)

    def test_errors(self):
        e = CacheCorruptError(1234, 'bad thing')
        self.assertIsInstance(e, CacheError)
        self.assertEqual((e.offset, e.why), (1234, 'bad thing'))
        self.assertIn('1234', str(e))
        self.assertIn('bad thing', str(e))
        self.assertNotIn('offset', str(CacheCorruptError(-1, 'x')))


class FixedHeaderTests(unittest.TestCase):

    def test_round_trip(self):
        head = fmt.pack_fixed()
        self.assertEqual(len(head), fmt.FIXED_SIZE)
        fmt.check_fixed(head)

    def test_foreign(self):
        with self.assertRaises(CacheFormatError):
            fmt.check_fixed(b'ZEC3' + b'\0' * 30)
        with self.assertRaises(CacheFormatError):
            fmt.check_fixed(b'')

    def test_damaged(self):
        head = bytearray(fmt.pack_fixed())
        head[13] ^= 1
        with self.assertRaises(CacheCorruptError) as cm:
            fmt.check_fixed(bytes(head))
        self.assertEqual(cm.exception.offset, 0)

    def with_versions(self, write, read):
        head = bytearray(fmt.pack_fixed())
        struct.pack_into('>HH', head, 8, write, read)
        struct.pack_into('>I', head, 20, zlib.crc32(head[:20]))
        return bytes(head)

    def test_versions(self):
        v = fmt.FORMAT_VERSION
        fmt.check_fixed(self.with_versions(v, v))
        with self.assertRaises(CacheVersionError) as cm:
            fmt.check_fixed(self.with_versions(v + 1, v + 1))
        self.assertEqual(cm.exception.file_version, v + 1)
        self.assertEqual(cm.exception.supported_version, v)
        with self.assertRaises(CacheVersionError) as cm:
            fmt.check_fixed(self.with_versions(v + 1, v))
        self.assertIn('must not update', str(cm.exception))


class SlotTests(unittest.TestCase):

    @given(generation=st.integers(0, 2**64 - 1), tid=st.none() | TIDS,
           clean=st.booleans(), ring=st.integers(16, 2**40),
           boot=st.binary(min_size=16, max_size=16))
    @settings(max_examples=50, deadline=None, database=None)
    def test_round_trip(self, generation, tid, clean, ring, boot):
        slot = fmt.Slot(generation, tid, clean, ring, 12288, 7, 99, 24, 5,
                        boot)
        packed = fmt.pack_slot(slot)
        self.assertEqual(len(packed), fmt.SLOT_SIZE)
        self.assertEqual(fmt.unpack_slot(packed, 4096), slot)

    def test_every_torn_byte_is_detected(self):
        packed = fmt.pack_slot(fmt.Slot(3, b'\1' * 8, True, 1000))
        for i in range(fmt.SLOT_SIZE):
            damaged = bytearray(packed)
            damaged[i] ^= 0x80
            with self.assertRaises(CacheCorruptError) as cm:
                fmt.unpack_slot(bytes(damaged), 8192)
            self.assertEqual(cm.exception.offset, 8192)

    def test_blank(self):
        with self.assertRaises(CacheCorruptError):
            fmt.unpack_slot(b'\0' * fmt.SLOT_SIZE, 4096)
        with self.assertRaises(CacheCorruptError):
            fmt.unpack_slot(b'', 4096)


class RecordTests(unittest.TestCase):

    def test_round_trip(self):
        block = fmt.pack_record(5, 100, b'O' * 8, b'S' * 8, None, b'data')
        self.assertEqual(len(block), fmt.RECORD_HEADER_SIZE + 4)
        self.assertEqual(fmt.block_kind(block), fmt.KIND_RECORD)
        h = fmt.parse_record_header(block)
        self.assertEqual((h.seq, h.size, h.oid, h.start, h.end, h.end_ok),
                         (5, 100, b'O' * 8, b'S' * 8, None, True))
        self.assertTrue(fmt.record_data_ok(block, 0, h))

    def test_end_tid_is_bound_to_its_record(self):
        a = fmt.pack_record(5, 100, b'O' * 8, b'S' * 8, b'E' * 8, b'a')
        b = fmt.pack_record(6, 100, b'O' * 8, b'S' * 8, None, b'a')
        self.assertEqual(fmt.parse_record_header(a).end, b'E' * 8)
        # Pasting a's (valid) end field onto b is detected.
        e = fmt.END_OFFSET
        mixed = b[:e] + a[e:e + 12] + b[e + 12:]
        h = fmt.parse_record_header(mixed)
        self.assertFalse(h.end_ok)
        self.assertIsNone(h.end)

    def test_damage_is_detected(self):
        block = fmt.pack_record(5, 100, b'O' * 8, b'S' * 8, b'E' * 8,
                                b'payload')
        for i in range(len(block)):
            damaged = bytearray(block)
            damaged[i] ^= 0x01
            h = fmt.parse_record_header(bytes(damaged))
            ok = (h is not None and h.end_ok
                  and fmt.record_data_ok(bytes(damaged), 0, h))
            self.assertFalse(ok, f'undetected damage at byte {i}')

    def test_short_data(self):
        block = fmt.pack_record(5, 100, b'O' * 8, b'S' * 8, None, b'data')
        h = fmt.parse_record_header(block)
        self.assertFalse(fmt.record_data_ok(block[:-1], 0, h))
        self.assertIsNone(fmt.parse_record_header(block[:30]))

    def test_size_too_small_for_data(self):
        block = fmt.pack_record(5, 61, b'O' * 8, b'S' * 8, None, b'data')
        self.assertIsNone(fmt.parse_record_header(block))

    @given(st.binary(max_size=200), st.integers(0, 150))
    @settings(max_examples=200, deadline=None, database=None)
    def test_garbage_never_raises(self, junk, pos):
        h = fmt.parse_record_header(junk, pos)
        if h is not None:
            fmt.record_data_ok(junk, pos, h)
        fmt.parse_free(junk, pos)
        fmt.block_kind(junk, pos)


class FreeTests(unittest.TestCase):

    def test_round_trip(self):
        head = fmt.pack_free(1000)
        self.assertEqual(len(head), fmt.FREE_SIZE)
        self.assertEqual(fmt.block_kind(head), fmt.KIND_FREE)
        self.assertEqual(fmt.parse_free(b'xx' + head, 2), 1000)

    def test_bad(self):
        with self.assertRaises(ValueError):
            fmt.pack_free(fmt.FREE_SIZE - 1)
        with self.assertRaises(ValueError):
            fmt.pack_free(fmt.MAX_BLOCK_SIZE + 1)
        head = bytearray(fmt.pack_free(1000))
        head[12] ^= 1
        self.assertIsNone(fmt.parse_free(bytes(head)))
        self.assertIsNone(fmt.parse_free(b'\0' * 16))


class IndexHeadTests(unittest.TestCase):

    def test_round_trip(self):
        head = fmt.pack_index_head(2, 500)
        image = head + b'\0' * (2 * fmt.INDEX_ENTRY_SIZE)
        self.assertEqual(fmt.unpack_index_head(image, 77), (2, 500))

    def test_bad(self):
        head = fmt.pack_index_head(2, 500)
        with self.assertRaises(CacheCorruptError):
            fmt.unpack_index_head(head, 77)
        with self.assertRaises(CacheCorruptError):
            fmt.unpack_index_head(b'XXXX' + head[4:], 77)
        with self.assertRaises(CacheCorruptError):
            fmt.unpack_index_head(b'', 77)
