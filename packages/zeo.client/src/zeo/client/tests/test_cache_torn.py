"""Torn writes: every prefix of every write an operation makes.

A SIGKILL can interrupt a ``pwrite`` between pages, and it can strike
between the several writes of one operation.  For a set of operations we
record the file before, spy on the writes, and rebuild every state a
crash could leave: the writes before number i complete, write i cut
after k bytes.  Each state must recover to a cache whose answers all
come from the state before or after the operation, and recovery must
leave no dead record behind (a second recovery finds exactly the same
records).
"""
import os
import shutil
import tempfile
import unittest
from unittest import mock

from zeo.client.cache.file_io import CacheFile
from zeo.client.cache.persistent import MIN_SIZE
from zeo.client.cache.persistent import FileCache
from zeo.client.tests.support import indexed_offsets, intact_records

BOOT = b'\x07' * 16


def p64(n):
    return n.to_bytes(8, 'big')


def data_for(oid, start):
    return (b'<%d,%d>' % (oid, start)) * (3 + (oid * 7 + start) % 30)


def records(cache):
    """{(oid, start, end)} of everything the cache indexes."""
    return {(oid, start, end) for oid, start, end, _o, _s in cache._index}


class TornWriteTests(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='zeocachetorn')
        self.cache = FileCache(os.path.join(self.dir, 'c.zec'),
                               MIN_SIZE + 6000, boot_id=BOOT)
        self.n = 0
        # Fill a small ring several times over so that stores evict,
        # wrap, and land on free blocks of every kind.
        c = self.cache
        for start in range(2, 9):
            for oid in range(1, 25):
                c.invalidate(p64(oid), p64(start))
                c.store(p64(oid), p64(start), None, data_for(oid, start))
            c.setLastTid(p64(start))
        c.store(p64(90), p64(1), p64(2), data_for(90, 1))

    def tearDown(self):
        self.cache.close()
        shutil.rmtree(self.dir)

    def capture(self, op):
        with open(self.cache.path, 'rb') as f:
            before = f.read()
        old = records(self.cache)
        writes = []
        real = CacheFile.pwrite

        def spy(file, data, offset):
            writes.append((offset, bytes(data)))
            real(file, data, offset)

        with mock.patch.object(CacheFile, 'pwrite', spy):
            op()
        return before, writes, old | records(self.cache)

    def states(self, before, writes, step):
        for i, (offset, data) in enumerate(writes):
            cuts = sorted(set(range(0, len(data), step)) | {len(data)})
            for k in cuts:
                state = bytearray(before)
                for off, done in writes[:i]:
                    state[off:off + len(done)] = done
                state[offset:offset + k] = data[:k]
                yield bytes(state)

    def check_state(self, state, allowed):
        self.n += 1
        path = os.path.join(self.dir, 'torn%d.zec' % self.n)
        with open(path, 'wb') as f:
            f.write(state)
        r = FileCache(path, MIN_SIZE + 6000, boot_id=BOOT)
        try:
            found = records(r)
            self.assertLessEqual(found, allowed)
            for oid, start, end in found:
                got = r.loadBefore(p64(oid), p64(start + 1))
                self.assertEqual(got, (data_for(oid, start), p64(start),
                                       end and p64(end) or None))
            # Recovery leaves no dead record that a later crash could
            # bring back (rule 3): every intact record is indexed, and
            # recovering the recovered file changes nothing.
            self.assertEqual(intact_records(path, r._ring_end),
                             indexed_offsets(r))
            again = path + '.again'
            shutil.copyfile(path, again)
            r2 = FileCache(again, MIN_SIZE + 6000, boot_id=BOOT)
            try:
                self.assertEqual(records(r2), found)
            finally:
                r2.close()
        finally:
            r.close()

    def run_op(self, op, step=7):
        before, writes, allowed = self.capture(op)
        self.assertTrue(writes)
        count = 0
        for state in self.states(before, writes, step):
            self.check_state(state, allowed)
            count += 1
        self.assertGreater(count, 1)

    def test_store_that_evicts(self):
        c = self.cache
        self.run_op(lambda: c.store(p64(50), p64(8), None, data_for(50, 8)))

    def test_store_of_a_non_current_record(self):
        c = self.cache
        self.run_op(lambda: c.store(p64(51), p64(3), p64(6),
                                    data_for(51, 3)))

    def test_invalidate(self):
        c = self.cache
        self.run_op(lambda: c.invalidate(p64(24), p64(9)), step=1)

    def test_invalidate_forget(self):
        c = self.cache
        self.run_op(lambda: c.invalidate(p64(23), None), step=1)

    def test_store_with_copy_forward(self):
        c = self.cache
        for oid, start, _end in records(c):
            c.loadBefore(p64(oid), p64(start + 1))     # everything is hot
        stats = c.stats()

        def op():
            for oid in range(60, 64):
                c.store(p64(oid), p64(8), None, data_for(oid, 8))

        self.run_op(op, step=23)
        self.assertGreater(c.stats()['copies'], stats['copies'])

    def test_wrapping_stores(self):
        c = self.cache

        def op():
            for oid in range(70, 80):
                c.store(p64(oid), p64(8), None, data_for(oid, 8))

        self.run_op(op, step=31)
