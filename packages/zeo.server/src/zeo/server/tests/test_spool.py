"""Tests of zeo.server.spool."""
import os
import shutil
import struct
import tempfile
import unittest

from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from ZODB.POSException import StorageTransactionError
from ZODB.POSException import TransactionTooLargeError

from zeo.server import spool as spool_module
from zeo.server.spool import CheckCurrent
from zeo.server.spool import Delete
from zeo.server.spool import Restore
from zeo.server.spool import SpoolCorruptedError
from zeo.server.spool import Store
from zeo.server.spool import StoreBlob
from zeo.server.spool import TransactionSpool
from zeo.server.spool import Undo


def p64(n):
    return struct.pack('>Q', n)


Z64 = p64(0)


def append(spool, op):
    """Append the operation tuple *op* through the spool's public API."""
    method = {Store: spool.store, Delete: spool.delete,
              CheckCurrent: spool.check_current, Restore: spool.restore,
              Undo: spool.undo, StoreBlob: spool.store_blob}[type(op)]
    method(*op)


class SpoolTestCase(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='zeo-spool-test-')
        self.addCleanup(shutil.rmtree, self.dir)

    def _makeOne(self, **kw):
        spool = TransactionSpool(self.dir, **kw)
        self.addCleanup(spool.close)
        return spool

    def blob_file(self, name, content=b'blob'):
        path = os.path.join(self.dir, name)
        with open(path, 'wb') as f:
            f.write(content)
        return path


SAMPLE = [
    Store(p64(1), Z64, b'data one'),
    CheckCurrent(p64(2), p64(7)),
    Delete(p64(3), p64(8)),
    Restore(p64(4), p64(9), b'restored', p64(5)),
    Restore(p64(5), p64(9), None, None),
    Undo(b'AAAAAAAAAAA='),
    Store(p64(1), Z64, b''),
    StoreBlob(p64(6), Z64, b'blob record', '/tmp/no/such/blob.tmp-'),
]


class ModeTests:
    """Behaviour that must hold in memory and in file mode alike."""

    memory_limit: int | None = None

    def make(self, **kw):
        kw.setdefault('memory_limit', self.memory_limit)
        return self._makeOne(**kw)

    def test_replay_in_order(self):
        spool = self.make()
        for op in SAMPLE:
            append(spool, op)
        self.assertEqual(list(spool), SAMPLE)
        self.assertEqual(len(spool), len(SAMPLE))

    def test_replay_twice(self):
        spool = self.make()
        for op in SAMPLE:
            append(spool, op)
        self.assertEqual(list(spool), SAMPLE)
        self.assertEqual(list(spool), SAMPLE)

    def test_append_after_replay_and_replay_again(self):
        # Client conflict resolution: vote, more stores, vote again.
        spool = self.make()
        for op in SAMPLE[:3]:
            append(spool, op)
        self.assertEqual(list(spool), SAMPLE[:3])
        for op in SAMPLE[3:]:
            append(spool, op)
        self.assertEqual(list(spool), SAMPLE)

    def test_append_during_partial_replay(self):
        spool = self.make()
        append(spool, SAMPLE[0])
        append(spool, SAMPLE[1])
        replay = iter(spool)
        self.assertEqual(next(replay), SAMPLE[0])
        append(spool, SAMPLE[2])     # not seen by the running replay
        self.assertEqual(list(replay), [SAMPLE[1]])
        self.assertEqual(list(spool), SAMPLE[:3])

    def test_empty(self):
        spool = self.make()
        self.assertEqual(list(spool), [])
        self.assertEqual(len(spool), 0)
        self.assertEqual(spool.size, 0)
        self.assertEqual(spool.oids, frozenset())

    def test_oids_and_counts(self):
        spool = self.make()
        for op in SAMPLE:
            append(spool, op)
        # Stored, deleted, restored, blob-stored; not checked or undone.
        self.assertEqual(spool.oids,
                         {p64(1), p64(3), p64(4), p64(5), p64(6)})
        self.assertEqual(spool.counts(), {
            'store': 2, 'delete': 1, 'check_current': 1, 'restore': 2,
            'undo': 1, 'store_blob': 1})

    def test_size_counts_encoded_bytes(self):
        spool = self.make()
        spool.store(p64(1), Z64, b'x' * 100)
        # header 5 + three fields with 4-byte lengths.
        self.assertEqual(spool.size, 5 + (4 + 8) * 2 + 4 + 100)

    def test_large_records(self):
        # Records bigger than the replay read chunk.
        spool = self.make()
        big = bytes(range(256)) * (spool_module.READ_CHUNK // 64)
        ops = [Store(p64(1), Z64, big), Store(p64(2), Z64, b'small'),
               Store(p64(3), Z64, big[:-1])]
        for op in ops:
            append(spool, op)
        self.assertEqual(list(spool), ops)

    def test_max_size(self):
        spool = self.make(max_size=200)
        spool.store(p64(1), Z64, b'x' * 100)
        size = spool.size
        with self.assertRaisesRegex(TransactionTooLargeError,
                                    'limit of 200 bytes') as cm:
            spool.store(p64(2), Z64, b'x' * 100)
        # A StorageTransactionError, so ZODB clients know it.
        self.assertIsInstance(cm.exception, StorageTransactionError)
        # The refused operation left no trace.
        self.assertEqual(spool.size, size)
        self.assertEqual(len(spool), 1)
        self.assertEqual(spool.oids, {p64(1)})
        self.assertEqual(list(spool), [Store(p64(1), Z64, b'x' * 100)])
        # Smaller operations still fit.
        spool.delete(p64(3), Z64)
        self.assertEqual(len(spool), 2)

    def test_blob_bytes_count_against_max_size(self):
        spool = self.make(max_size=1000)
        spool.add_blob_bytes(600)
        with self.assertRaisesRegex(TransactionTooLargeError, 'blob uploads included'):
            spool.add_blob_bytes(500)
        # Stores count with the blob bytes.
        with self.assertRaises(TransactionTooLargeError):
            spool.store(p64(1), Z64, b'x' * 500)
        self.assertEqual((spool.blob_bytes, len(spool)), (600, 0))
        spool.remove_blob_bytes(600)   # a discarded upload
        spool.store(p64(1), Z64, b'x' * 500)

    def test_a_budget_bounds_the_sum_over_spools(self):
        from zeo.server.blob_uploads import SpoolBudget
        budget = SpoolBudget(1000)
        first = self.make(max_size=None, budget=budget)
        second = self.make(max_size=None, budget=budget)
        first.store(p64(1), Z64, b'x' * 300)
        first.add_blob_bytes(300)
        with self.assertRaisesRegex(TransactionTooLargeError, 'max-spool-total'):
            second.add_blob_bytes(500)
        with self.assertRaisesRegex(TransactionTooLargeError, 'max-spool-total'):
            second.store(p64(2), Z64, b'x' * 500)
        self.assertEqual(budget.used, first.size + 300)
        second.add_blob_bytes(100)
        second.remove_blob_bytes(100)
        self.assertEqual(budget.used, first.size + 300)
        first.close()    # gives back everything it held
        self.assertEqual(budget.used, 0)
        second.add_blob_bytes(900)
        second.close()
        self.assertEqual(budget.used, 0)

    def test_unlimited(self):
        spool = self.make(max_size=None)
        spool.store(p64(1), Z64, b'x' * 1000)
        self.assertIsNone(spool.max_size)

    def test_closed_spool_refuses_work(self):
        spool = self.make()
        append(spool, SAMPLE[0])
        spool.close()
        self.assertTrue(spool.closed)
        with self.assertRaisesRegex(ValueError, 'closed'):
            spool.store(p64(1), Z64, b'')
        with self.assertRaisesRegex(ValueError, 'closed'):
            iter(spool)
        self.assertEqual(spool.oids, frozenset())
        spool.close()  # idempotent

    def test_close_during_replay(self):
        spool = self.make()
        for op in SAMPLE:
            append(spool, op)
        replay = iter(spool)
        next(replay)
        spool.close()
        with self.assertRaisesRegex(ValueError, 'closed during replay'):
            list(replay)

    def test_blob_files_owned_and_removed_on_close(self):
        spool = self.make()
        kept = self.blob_file('kept.tmp-')
        moved = self.blob_file('moved.tmp-')
        spool.store_blob(p64(1), Z64, b'r1', kept)
        spool.store_blob(p64(2), Z64, b'r2', moved)
        self.assertEqual(spool.blob_paths, (kept, moved))
        os.rename(moved, moved + '.committed')   # what a storage does
        self.assertTrue(os.path.exists(kept))     # never touched before
        spool.close()
        self.assertFalse(os.path.exists(kept))
        self.assertTrue(os.path.exists(moved + '.committed'))
        self.assertEqual(spool.blob_paths, ())

    def test_non_ascii_blob_path_round_trips(self):
        spool = self.make()
        path = os.path.join(self.dir, 'bl\xf6b-\udcff.tmp-')
        spool.store_blob(p64(1), Z64, b'', path)
        self.assertEqual(list(spool)[0].blob_path, path)

    def test_validation(self):
        spool = self.make()
        bad_calls = [
            (TypeError, spool.store, 'oid-as-s', Z64, b''),
            (ValueError, spool.store, b'short', Z64, b''),
            (ValueError, spool.store, p64(1), b'', b''),
            (TypeError, spool.store, p64(1), Z64, 'text'),
            (TypeError, spool.store, p64(1), Z64, None),
            (TypeError, spool.store, p64(1), Z64, bytearray(b'x')),
            (ValueError, spool.delete, p64(1), b'x' * 9),
            (TypeError, spool.check_current, None, Z64),
            (ValueError, spool.restore, p64(1), Z64, None, b'tid'),
            (TypeError, spool.restore, p64(1), Z64, 3, None),
            (TypeError, spool.undo, 'id'),
            (TypeError, spool.store_blob, p64(1), Z64, b'', b'/path'),
            (TypeError, spool.store_blob, p64(1), Z64, b'', ''),
        ]
        for exc, method, *args in bad_calls:
            with self.assertRaises(exc, msg=f'{method.__name__}{args}'):
                method(*args)
        self.assertEqual(len(spool), 0)
        self.assertEqual(spool.size, 0)


class MemoryModeTests(ModeTests, SpoolTestCase):

    memory_limit = 1 << 20

    def test_stays_in_memory(self):
        spool = self.make()
        for op in SAMPLE:
            append(spool, op)
        self.assertTrue(spool.in_memory)
        self.assertEqual(os.listdir(self.dir), [])


class FileModeTests(ModeTests, SpoolTestCase):

    memory_limit = 0

    def test_in_file_from_the_start(self):
        spool = self.make()
        append(spool, SAMPLE[0])
        self.assertFalse(spool.in_memory)


class SpillTests(SpoolTestCase):

    def test_moves_to_file_past_threshold(self):
        spool = self._makeOne(memory_limit=1000)
        ops = [Store(p64(n), Z64, b'%d' % n * 30) for n in range(100)]
        for n, op in enumerate(ops):
            append(spool, op)
            self.assertEqual(spool.in_memory, spool.size <= 1000, n)
        self.assertFalse(spool.in_memory)
        self.assertEqual(list(spool), ops)

    def test_spill_during_replay(self):
        spool = self._makeOne(memory_limit=100)
        append(spool, SAMPLE[0])
        append(spool, SAMPLE[1])
        replay = iter(spool)
        self.assertEqual(next(replay), SAMPLE[0])
        self.assertTrue(spool.in_memory)
        spool.store(p64(9), Z64, b'x' * 200)   # moves to a file
        self.assertFalse(spool.in_memory)
        self.assertEqual(list(replay), [SAMPLE[1]])

    def test_temp_file_anonymous_and_closed_on_close(self):
        spool = self._makeOne(memory_limit=0)
        append(spool, SAMPLE[0])
        f = spool._file
        self.assertFalse(f.closed)
        # Unlinked at creation (POSIX): nothing to leak after a crash.
        self.assertEqual(os.listdir(self.dir), [])
        spool.close()
        self.assertTrue(f.closed)
        self.assertIsNone(spool._file)
        self.assertEqual(os.listdir(self.dir), [])

    def test_temp_file_in_given_directory(self):
        spool = self._makeOne(memory_limit=0)
        append(spool, SAMPLE[0])
        fd_path = os.readlink(f'/proc/self/fd/{spool._file.fileno()}')
        self.assertTrue(fd_path.startswith(os.path.realpath(self.dir)),
                        fd_path)

    def test_failed_spill_keeps_memory_log(self):
        spool = TransactionSpool(os.path.join(self.dir, 'gone'),
                                 memory_limit=40)
        self.addCleanup(spool.close)
        spool.delete(p64(1), Z64)
        with self.assertRaises(FileNotFoundError):
            spool.delete(p64(2), Z64)
        self.assertTrue(spool.in_memory)
        self.assertEqual(list(spool), [Delete(p64(1), Z64)])

    def test_failed_write_poisons_the_spool(self):
        spool = self._makeOne(memory_limit=0)
        append(spool, SAMPLE[0])
        real = spool._file

        class DiskFull:
            def __getattr__(self, name):
                return getattr(real, name)

            def writelines(self, parts):
                real.write(parts[0])     # a partial record
                raise OSError(28, 'No space left on device')
        spool._file = DiskFull()
        with self.assertRaisesRegex(OSError, 'No space'):
            append(spool, SAMPLE[1])
        spool._file = real
        self.assertEqual(len(spool), 1)
        with self.assertRaisesRegex(StorageTransactionError,
                                    'No space.*abort the transaction'):
            append(spool, SAMPLE[2])
        with self.assertRaisesRegex(StorageTransactionError, 'replay'):
            iter(spool)
        spool.close()
        self.assertTrue(real.closed)

    def test_corruption_detected(self):
        spool = self._makeOne(memory_limit=0)
        append(spool, SAMPLE[0])
        f = spool._file
        f.seek(0)
        f.write(b'\x63')               # unknown operation code
        spool._at_end = False
        with self.assertRaisesRegex(SpoolCorruptedError, 'operation code'):
            list(spool)

    def test_truncation_detected(self):
        spool = self._makeOne(memory_limit=0)
        append(spool, SAMPLE[0])
        spool._file.truncate(10)
        with self.assertRaisesRegex(SpoolCorruptedError, 'truncated'):
            list(spool)

    def test_bad_configuration(self):
        for bad in (-1, 1.5, True, None):
            with self.assertRaises(ValueError, msg=repr(bad)):
                TransactionSpool(self.dir, memory_limit=bad)
        for bad in (0, -1, 1.5, False):
            with self.assertRaises(ValueError, msg=repr(bad)):
                TransactionSpool(self.dir, max_size=bad)

    def test_defaults(self):
        spool = self._makeOne()
        self.assertEqual(spool.memory_limit, 1 << 20)
        self.assertEqual(spool.max_size, 1 << 30)


oids = st.integers(0, 2 ** 64 - 1).map(p64)
blobs = st.binary(max_size=3000)
# Absolute paths in a directory that doesn't exist: close() tries to
# remove them, which must find nothing.
paths = st.text(max_size=20, alphabet=st.characters(
    exclude_categories=['Cs'], exclude_characters='\0/')).map(
        lambda name: '/nonexistent-zeo-spool-test/b-' + name)
operations = st.one_of(
    st.builds(Store, oids, oids, blobs),
    st.builds(Delete, oids, oids),
    st.builds(CheckCurrent, oids, oids),
    st.builds(Restore, oids, oids, st.none() | blobs, st.none() | oids),
    st.builds(Undo, st.binary(max_size=40)),
    st.builds(StoreBlob, oids, oids, blobs, paths),
)


class PropertyTests(SpoolTestCase):

    # database=None: no example cache written into the working tree.
    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(ops=st.lists(operations, max_size=40),
           memory_limit=st.sampled_from([0, 64, 4096, 1 << 20]))
    def test_replay_returns_what_was_appended(self, ops, memory_limit):
        spool = TransactionSpool(self.dir, memory_limit=memory_limit)
        try:
            for op in ops:
                append(spool, op)
            self.assertEqual(list(spool), ops)
            self.assertEqual(list(spool), ops)
            self.assertEqual(len(spool), len(ops))
            expected_oids = {op.oid for op in ops
                             if not isinstance(op, (CheckCurrent, Undo))}
            self.assertEqual(spool.oids, expected_oids)
        finally:
            spool.close()
