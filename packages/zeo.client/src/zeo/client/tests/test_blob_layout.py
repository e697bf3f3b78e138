"""The zeocache layout: the same paths as the reference client, and a
one-to-one map from (oid, tid) to paths."""
import os
import unittest

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from zeo.client.blobs import layout as blob_layout
from zeo.client.blobs.layout import blob_relpath
from zeo.client.blobs.layout import bucket_name
from zeo.client.blobs.layout import check_id
from zeo.client.blobs.layout import parse_blob_relpath

try:
    from ZEO.ClientStorage import BlobCacheLayout as ReferenceLayout
except ImportError:  # pragma: no cover
    ReferenceLayout = None

ids = st.binary(min_size=8, max_size=8)


def p64(n):
    return n.to_bytes(8, 'big')


class LayoutTests(unittest.TestCase):

    def test_examples(self):
        self.assertEqual(blob_relpath(p64(0), p64(0)),
                         os.path.join('0', '0.0000000000000000.blob'))
        self.assertEqual(blob_relpath(p64(1000), p64(3)),
                         os.path.join('3', '1.0000000000000003.blob'))
        self.assertEqual(blob_relpath(p64(996), p64(0xABCDEF)),
                         os.path.join('996', '0.0000000000abcdef.blob'))
        top = (1 << 64) - 1
        self.assertEqual(
            blob_relpath(p64(top), p64(top)),
            os.path.join(str(top % 997),
                         f'{top // 997}.ffffffffffffffff.blob'))
        self.assertEqual(bucket_name(p64(997 * 5 + 4)), '4')

    def test_constants_are_the_reference_ones(self):
        self.assertEqual(blob_layout.LAYOUT_NAME, 'zeocache')
        self.assertEqual(blob_layout.BUCKETS, 997)
        if ReferenceLayout is not None:
            self.assertEqual(ReferenceLayout.size, blob_layout.BUCKETS)

    def test_ids_must_be_8_bytes(self):
        for bad in (b'', b'\0' * 7, b'\0' * 9, 5, '12345678',
                    bytearray(8)):
            with self.subTest(bad=bad):
                with self.assertRaises(ValueError):
                    check_id(bad, 'oid')
                with self.assertRaises(ValueError):
                    blob_relpath(p64(1), bad)

    def test_parse_rejects_what_is_not_a_blob_path(self):
        for relpath in (
                'tmp/1.0000000000000003.blob',       # not a bucket
                '3/1.0000000000000003.blob.dl',      # download suffix
                '3/1.000000000000003.blob',          # 15 hex digits
                '3/1.000000000000000G.blob',
                '3/1.000000000000000A.blob',         # upper case
                '997/0.0000000000000000.blob',       # bucket too big
                '03/1.0000000000000003.blob',        # leading zero
                '3/01.0000000000000003.blob',
                '3/.lock',
                '3',
                f'0/{1 << 64}.0000000000000000.blob',  # oid too big
                '\u0663/1.0000000000000003.blob',    # arabic-indic 3
        ):
            with self.subTest(relpath=relpath):
                self.assertIsNone(parse_blob_relpath(relpath))


@unittest.skipIf(ReferenceLayout is None, 'the reference ZEO is not installed')
class ReferenceLayoutTests(unittest.TestCase):

    @settings(max_examples=300, deadline=None)
    @given(ids, ids)
    def test_same_path_as_reference(self, oid, tid):
        layout = ReferenceLayout()
        self.assertEqual(blob_relpath(oid, tid),
                         layout.getBlobFilePath(oid, tid))
        self.assertEqual(bucket_name(oid), layout.oid_to_path(oid))


class RoundTripTests(unittest.TestCase):

    @settings(max_examples=500, deadline=None)
    @given(ids, ids)
    def test_path_round_trip(self, oid, tid):
        # parse is a left inverse, so the map (oid, tid) -> path is
        # injective: two revisions never share a file.
        self.assertEqual(parse_blob_relpath(blob_relpath(oid, tid)),
                         (oid, tid))

    @settings(max_examples=200, deadline=None)
    @given(ids, ids, ids, ids)
    def test_distinct_revisions_distinct_paths(self, o1, t1, o2, t2):
        same = blob_relpath(o1, t1) == blob_relpath(o2, t2)
        self.assertEqual(same, (o1, t1) == (o2, t2))
