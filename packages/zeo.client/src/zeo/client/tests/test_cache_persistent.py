"""Tests specific to the persistent FileCache: reopening, crashes,
damaged and foreign files, versions, locking, resizing, eviction."""
import logging
import os
import shutil
import struct
import tempfile
import unittest
import zlib
from unittest import mock

from zeo.client.cache import file_format as fmt
from zeo.client.cache import persistent as file_cache
from zeo.client.cache.errors import CacheLockedError
from zeo.client.cache.file_io import CacheFile
from zeo.client.cache.persistent import MIN_SIZE
from zeo.client.cache.persistent import FileCache
from zeo.client.tests.support import indexed_offsets
from zeo.client.tests.support import intact_records


def p64(n):
    return n.to_bytes(8, 'big')


def data_for(oid, start, size=200):
    return (b'%d:%d;' % (oid, start) * size)[:size]


BOOT = b'\x01' * 16


class FileCacheTestBase(unittest.TestCase):

    size = 1 << 20

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='zeofilecache')
        self.path = os.path.join(self.dir, 'cache.zec')
        self.open = []

    def tearDown(self):
        for c in self.open:
            c.close()
        shutil.rmtree(self.dir)

    def make(self, path=None, size=None, boot_id=BOOT):
        c = FileCache(path or self.path, size or self.size, boot_id=boot_id)
        self.open.append(c)
        return c

    def fill(self, cache, n, start=5, size=200):
        for oid in range(1, n + 1):
            cache.invalidate(p64(oid), p64(start))
            cache.store(p64(oid), p64(start), None, data_for(oid, start,
                                                             size))

    def crash_copy(self, cache, name='crash.zec'):
        """Return the path of a copy of the file as a crash would leave
        it: taken while the cache is open, without close()."""
        path = os.path.join(self.dir, name)
        shutil.copyfile(cache.path, path)
        return path

    def offset_of(self, cache, oid, start):
        return cache._index.find(oid, start).offset

    def check_all(self, cache, n, start=5, size=200):
        """Every record that loads has the right data; return how many."""
        found = 0
        for oid in range(1, n + 1):
            got = cache.load(p64(oid))
            if got is not None:
                self.assertEqual(got, (data_for(oid, start, size),
                                       p64(start)))
                found += 1
        return found


class ReopenTests(FileCacheTestBase):

    def test_clean_reopen_keeps_records_and_last_tid(self):
        c = self.make()
        self.assertEqual(c.open_mode, 'created')
        self.fill(c, 300)
        c.store(p64(1000), p64(2), p64(4), b'old')
        c.invalidate(p64(7), p64(9))
        c.setLastTid(p64(9))
        c.close()
        c = self.make()
        self.assertEqual(c.open_mode, 'index')
        self.assertEqual(c.getLastTid(), p64(9))
        self.assertEqual(len(c), 301)
        self.assertIsNone(c.load(p64(7)))
        self.assertEqual(c.loadBefore(p64(7), p64(9)),
                         (data_for(7, 5), p64(5), p64(9)))
        self.assertEqual(c.loadBefore(p64(1000), p64(3)),
                         (b'old', p64(2), p64(4)))
        self.assertEqual(self.check_all(c, 300), 299)
        # Changes after a clean reopen survive the next one too.
        c.invalidate(p64(8), None)
        c.store(p64(8), p64(9), None, b'new8')
        c.close()
        c = self.make()
        self.assertEqual(c.open_mode, 'index')
        self.assertEqual(c.load(p64(8)), (b'new8', p64(9)))
        self.assertEqual(c.loadBefore(p64(8), p64(9)), None)

    def test_reopen_does_not_scan(self):
        c = self.make(size=4 << 20)
        self.fill(c, 5000, size=500)
        c.setLastTid(p64(6))
        c.close()
        reads = []
        real_pread = CacheFile.pread

        def counting_pread(self, size, offset):
            reads.append(size)
            return real_pread(self, size, offset)

        with mock.patch.object(CacheFile, 'pread', counting_pread), \
                mock.patch.object(file_cache, 'scan_ring',
                                  side_effect=AssertionError('scanned')):
            c = self.make(size=4 << 20)
        self.assertEqual(c.open_mode, 'index')
        # The fixed header and two slots; the index is read in one go.
        self.assertLessEqual(len(reads), 4)
        self.assertLess(sum(reads), 1024)
        self.assertEqual(len(c), 5000)
        self.assertEqual(self.check_all(c, 5000, size=500), 5000)

    def test_unchanged_session_leaves_the_file_clean(self):
        c = self.make()
        self.fill(c, 10)
        c.close()
        before = os.stat(self.path).st_mtime_ns
        c = self.make()
        c.load(p64(1))
        self.assertEqual(self.crash_and_reopen(c).open_mode, 'index')
        c.close()
        self.assertEqual(os.stat(self.path).st_mtime_ns, before)

    def crash_and_reopen(self, cache, boot_id=BOOT):
        return self.make(self.crash_copy(cache), boot_id=boot_id)

    def test_empty_file_is_initialised(self):
        open(self.path, 'wb').close()
        c = self.make()
        self.assertEqual(c.open_mode, 'created')
        self.assertFalse(os.path.exists(self.path + '.bad'))

    def test_size_too_small(self):
        with self.assertRaises(ValueError):
            FileCache(self.path, MIN_SIZE - 1)


class CrashTests(FileCacheTestBase):

    def reopen_copy(self, cache, boot_id=BOOT, name='crash.zec'):
        return self.make(self.crash_copy(cache, name), boot_id=boot_id)

    def test_process_crash_keeps_everything(self):
        c = self.make()
        self.fill(c, 200)
        c.store(p64(500), p64(1), p64(3), b'nc')
        c.invalidate(p64(3), p64(8))
        c.invalidate(p64(4), None)
        c.setLastTid(p64(8))
        r = self.reopen_copy(c)
        self.assertEqual(r.open_mode, 'recovered')
        self.assertEqual(r.getLastTid(), p64(8))
        self.assertEqual(len(r), 200)
        self.assertIsNone(r.load(p64(3)))
        self.assertIsNone(r.load(p64(4)))
        self.assertEqual(r.loadBefore(p64(3), p64(6)),
                         (data_for(3, 5), p64(5), p64(8)))
        self.assertEqual(r.loadBefore(p64(500), p64(2)), (b'nc', p64(1),
                                                          p64(3)))
        self.assertEqual(self.check_all(r, 200), 198)
        # The recovered file is a normal cache: it keeps working and
        # closes cleanly.
        r.store(p64(3), p64(8), None, b'three')
        r.close()
        r = self.make(r.path)
        self.assertEqual(r.open_mode, 'index')
        self.assertEqual(r.load(p64(3)), (b'three', p64(8)))

    def test_crash_after_clean_reopen(self):
        c = self.make()
        self.fill(c, 50)
        c.setLastTid(p64(6))
        c.close()
        c = self.make()
        c.invalidate(p64(1), p64(7))
        c.setLastTid(p64(7))
        r = self.reopen_copy(c)
        self.assertEqual(r.open_mode, 'recovered')
        self.assertIsNone(r.load(p64(1)))
        self.assertEqual(r.getLastTid(), p64(7))
        self.assertEqual(self.check_all(r, 50), 49)

    def test_machine_crash_drops_current_records(self):
        c = self.make()
        self.fill(c, 20)
        c.store(p64(100), p64(1), p64(3), b'nc')
        c.invalidate(p64(5), p64(7))
        c.setLastTid(p64(7))
        for boot in (b'\x02' * 16, b'\0' * 16):
            r = self.reopen_copy(c, boot_id=boot, name=boot.hex())
            self.assertEqual(r.open_mode, 'recovered')
            self.assertEqual(r.getLastTid(), p64(7))
            self.assertEqual(self.check_all(r, 20), 0)
            self.assertEqual(len(r), 2)
            self.assertEqual(r.loadBefore(p64(100), p64(2)),
                             (b'nc', p64(1), p64(3)))
            self.assertEqual(r.loadBefore(p64(5), p64(6)),
                             (data_for(5, 5), p64(5), p64(7)))
            # The dropped records are gone from the file for good: a
            # later process crash must not bring them back.
            self.assertEqual(intact_records(r.path, r._ring_end),
                             indexed_offsets(r))
            again = self.reopen_copy(r, boot_id=boot,
                                     name='again' + boot.hex())
            self.assertEqual(self.check_all(again, 20), 0)
            self.assertEqual(len(again), 2)

    def test_truncated_file(self):
        c = self.make(size=256 * 1024)
        self.fill(c, 800)
        c.setLastTid(p64(6))
        path = self.crash_copy(c)
        with open(path, 'r+b') as f:
            f.truncate(fmt.RING_OFFSET + 100_000)
        r = self.make(path, size=256 * 1024)
        self.assertEqual(r.open_mode, 'recovered')
        n = self.check_all(r, 800)
        self.assertGreater(n, 100)
        self.assertLess(n, 800)
        self.assertEqual(os.path.getsize(path), 256 * 1024)
        self.fill(r, 1000, start=7)      # the ring is usable again
        self.assertGreater(self.check_all(r, 1000, start=7), 100)

    def test_flipped_byte_in_a_record_after_crash(self):
        c = self.make()
        self.fill(c, 100)
        path = self.crash_copy(c)
        for oid, where in ((10, 70), (20, 30), (30, 50)):
            # data, header and end-tid field of three records
            offset = self.offset_of(c, oid, 5) + where
            flip(path, offset)
        r = self.make(path)
        self.assertEqual(r.open_mode, 'recovered')
        self.assertEqual(self.check_all(r, 100), 97)
        for oid in (10, 20, 30):
            self.assertIsNone(r.load(p64(oid)))

    def test_flipped_byte_in_a_record_after_clean_close(self):
        c = self.make()
        self.fill(c, 100)
        offset = self.offset_of(c, 10, 5) + 100
        c.close()
        flip(self.path, offset)
        with self.assertLogs('zeo.client.cache', logging.ERROR) as logs:
            c = self.make()
            self.assertEqual(c.open_mode, 'index')
            self.assertIsNone(c.load(p64(10)))
        self.assertIn('checksum', logs.output[0])
        self.assertEqual(c.stats()['corrupt'], 1)
        self.assertEqual(self.check_all(c, 100), 99)
        c.store(p64(10), p64(5), None, data_for(10, 5))
        self.assertEqual(self.check_all(c, 100), 100)

    def test_damaged_index_falls_back_to_a_scan(self):
        c = self.make()
        self.fill(c, 100)
        c.close()
        flip(self.path, self.size + 40)         # inside the index region
        c = self.make()
        self.assertEqual(c.open_mode, 'recovered')
        self.assertEqual(self.check_all(c, 100), 100)

    def test_torn_newest_slot_falls_back_to_the_other(self):
        c = self.make()
        self.fill(c, 30)
        c.setLastTid(p64(6))
        c.setLastTid(p64(7))
        generation = c._generation
        path = self.crash_copy(c)
        newest = fmt.SLOT_OFFSETS[generation % 2]
        flip(path, newest + 20)
        r = self.make(path)
        self.assertEqual(r.open_mode, 'recovered')
        self.assertEqual(r.getLastTid(), p64(6))
        self.assertEqual(self.check_all(r, 30), 30)

    def test_torn_clean_slot_after_close(self):
        c = self.make()
        self.fill(c, 30)
        c.setLastTid(p64(6))
        c.close()
        with open(self.path, 'rb') as f:
            f.seek(fmt.SLOT_OFFSETS[0])
            a = fmt.unpack_slot(f.read(fmt.SLOT_SIZE), 0)
        newest = fmt.SLOT_OFFSETS[a.generation % 2 if a.clean else 1]
        flip(self.path, newest + 9)
        c = self.make()
        self.assertEqual(c.open_mode, 'recovered')
        self.assertEqual(c.getLastTid(), p64(6))
        self.assertEqual(self.check_all(c, 30), 30)

    def test_clear_then_crash_does_not_resurrect(self):
        c = self.make()
        self.fill(c, 100)
        c.setLastTid(p64(6))
        c.clear()
        c.setLastTid(p64(9))
        c.store(p64(1), p64(9), None, b'fresh')
        r = self.reopen_copy(c)
        self.assertEqual(len(r), 1)
        self.assertEqual(r.load(p64(1)), (b'fresh', p64(9)))
        self.assertEqual(r.getLastTid(), p64(9))

    def test_evicted_records_never_come_back(self):
        # A small ring wraps many times; the copy must hold exactly what
        # the index held.
        c = self.make(size=MIN_SIZE + 8192)
        for start in range(5, 40):
            self.fill(c, 30, start=start, size=100)
            for oid in range(1, 31):
                c.invalidate(p64(oid), p64(start + 1))
        expected = {(oid, s) for oid, s, *_ in c._index}
        self.assertEqual(intact_records(c.path, c._ring_end),
                         indexed_offsets(c))
        r = self.reopen_copy(c)
        self.assertEqual({(oid, s) for oid, s, *_ in r._index}, expected)


class BadFileTests(FileCacheTestBase):

    def test_foreign_file_is_moved_aside(self):
        with open(self.path, 'wb') as f:
            f.write(b'this is not a cache file\n' * 100)
        with self.assertLogs('zeo.client.cache', logging.ERROR) as logs:
            c = self.make()
        self.assertEqual(c.open_mode, 'replaced')
        self.assertIn('not a zeo.client cache file', logs.output[0])
        self.assertIn('.bad', logs.output[0])
        with open(self.path + '.bad', 'rb') as f:
            self.assertTrue(f.read().startswith(b'this is not'))
        c.store(p64(1), p64(1), None, b'ok')
        self.assertEqual(c.load(p64(1)), (b'ok', p64(1)))

    def test_reference_zec_file_is_moved_aside(self):
        with open(self.path, 'wb') as f:
            f.write(b'ZEC3' + b'\0' * 8 + b'f' + b'\0' * 1000)
        with self.assertLogs('zeo.client.cache', logging.ERROR):
            c = self.make()
        self.assertEqual(c.open_mode, 'replaced')

    def set_versions(self, write_version, read_version):
        with open(self.path, 'r+b') as f:
            head = bytearray(f.read(fmt.FIXED_SIZE))
            struct.pack_into('>HH', head, 8, write_version, read_version)
            struct.pack_into('>I', head, 20, zlib.crc32(head[:20]))
            f.seek(0)
            f.write(head)

    def test_newer_read_version_is_moved_aside(self):
        self.make().close()
        self.set_versions(fmt.FORMAT_VERSION + 1, fmt.FORMAT_VERSION + 1)
        with self.assertLogs('zeo.client.cache', logging.ERROR) as logs:
            c = self.make()
        self.assertEqual(c.open_mode, 'replaced')
        self.assertIn('needs format version %d' % (fmt.FORMAT_VERSION + 1),
                      logs.output[0])
        self.assertTrue(os.path.exists(self.path + '.bad'))

    def test_newer_write_version_is_moved_aside(self):
        self.make().close()
        self.set_versions(fmt.FORMAT_VERSION + 1, fmt.FORMAT_VERSION)
        with self.assertLogs('zeo.client.cache', logging.ERROR) as logs:
            c = self.make()
        self.assertEqual(c.open_mode, 'replaced')
        self.assertIn('must not update it', logs.output[0])

    def test_both_slots_damaged(self):
        self.make().close()
        flip(self.path, fmt.SLOT_OFFSETS[0] + 10)
        flip(self.path, fmt.SLOT_OFFSETS[1] + 10)
        with self.assertLogs('zeo.client.cache', logging.ERROR) as logs:
            c = self.make()
        self.assertEqual(c.open_mode, 'replaced')
        self.assertIn('both header slots', logs.output[0])

    def test_an_older_bad_file_is_replaced(self):
        with open(self.path + '.bad', 'wb') as f:
            f.write(b'older')
        with open(self.path, 'wb') as f:
            f.write(b'junk' * 10000)
        with self.assertLogs('zeo.client.cache', logging.ERROR):
            self.make()
        with open(self.path + '.bad', 'rb') as f:
            self.assertEqual(f.read(4), b'junk')


class LockTests(FileCacheTestBase):

    def test_second_opener_is_refused(self):
        c = self.make()
        with self.assertRaises(CacheLockedError) as cm:
            FileCache(self.path, self.size)
        message = str(cm.exception)
        self.assertIn(self.path, message)
        self.assertIn('.lock', message)
        self.assertIn('own cache file', message)
        c.close()
        self.make().close()

    def test_lock_released_when_open_fails(self):
        with mock.patch.object(FileCache, '_open', side_effect=OSError):
            with self.assertRaises(OSError):
                FileCache(self.path, self.size)
        self.make()


class ResizeTests(FileCacheTestBase):

    def test_grow(self):
        c = self.make(size=128 * 1024)
        self.fill(c, 400)
        c.setLastTid(p64(6))
        kept = {oid for oid, *_ in c._index}
        c.close()
        c = self.make(size=512 * 1024)
        self.assertEqual(c.open_mode, 'recovered')
        self.assertEqual({oid for oid, *_ in c._index}, kept)
        self.assertEqual(c.getLastTid(), p64(6))
        self.assertEqual(os.path.getsize(self.path), 512 * 1024)
        self.fill(c, 2000, start=7)
        self.assertGreater(self.check_all(c, 2000, start=7), 1500)
        c.close()
        self.assertEqual(self.make(size=512 * 1024).open_mode, 'index')

    def test_shrink(self):
        c = self.make(size=512 * 1024)
        self.fill(c, 2000)
        c.close()
        c = self.make(size=128 * 1024)
        self.assertEqual(os.path.getsize(self.path), 128 * 1024)
        n = self.check_all(c, 2000)
        self.assertGreater(n, 100)
        self.assertLess(n, 2000)
        self.assertLessEqual(c.stats()['bytes'], 128 * 1024)
        self.fill(c, 3000, start=7)
        self.assertGreater(self.check_all(c, 3000, start=7), 100)


class EvictionTests(FileCacheTestBase):

    def test_referenced_records_get_a_second_chance(self):
        c = self.make(size=MIN_SIZE + 64 * 1024)
        c.store(p64(1), p64(1), None, b'hot' * 50)
        for round_ in range(10):
            for oid in range(2, 120):
                c.store(p64(oid * 100 + round_), p64(1), None, b'x' * 200)
            self.assertEqual(c.load(p64(1)), (b'hot' * 50, p64(1)))
        stats = c.stats()
        self.assertGreater(stats['copies'], 0)
        self.assertGreater(stats['evictions'], 500)

    def test_a_cold_record_is_evicted(self):
        c = self.make(size=MIN_SIZE + 64 * 1024)
        c.store(p64(1), p64(1), None, b'cold' * 50)
        for oid in range(2, 1000):
            c.store(p64(oid), p64(1), None, b'x' * 200)
        self.assertIsNone(c.load(p64(1)))

    def test_stores_share_their_reads_of_the_ring(self):
        # Filling: each store goes into the free block the previous one
        # left, without reading what it overwrites.  Once the ring wraps,
        # the blocks stores overwrite are read AHEAD_SIZE bytes at a time
        # (issue #21: a read per store before).
        c = self.make(size=MIN_SIZE + 512 * 1024)
        reads = []
        pread = c._file.pread

        def counting(size, offset):
            reads.append(offset)
            return pread(size, offset)

        c._file.pread = counting
        c.store(p64(1), p64(1), None, b'first')
        self.assertEqual(len(reads), 1)
        for oid in range(2, 1000):
            c.store(p64(oid), p64(1), None, b'x' * 200)
        self.assertEqual(len(reads), 1)
        stores = 6000                     # about three laps
        for oid in range(1000, 1000 + stores):
            c.store(p64(oid), p64(1), None, b'x' * 200)
        self.assertGreater(c.stats()['evictions'], 2 * 2000)
        self.assertGreater(len(reads), 1)
        self.assertLess(len(reads), stores / 100)
        for oid in range(1, 1000 + stores):
            got = c.load(p64(oid))
            if got is not None:
                self.assertEqual(got, (b'x' * 200 if oid > 1 else b'first',
                                       p64(1)))
        self.assertEqual(c.load(p64(999 + stores)), (b'x' * 200, p64(1)))
        self.assertEqual(c.stats()['corrupt'], 0)
        c.close()
        c = self.make()                   # the index saved by close agrees
        self.assertEqual(c.load(p64(999 + stores)), (b'x' * 200, p64(1)))
        self.assertEqual(intact_records(self.path, c._ring_end),
                         indexed_offsets(c))

    def test_read_ahead_follows_every_write(self):
        # Invalidations, frees of damaged records and copies forward write
        # into blocks the read-ahead may hold: it must see them.
        c = self.make(size=MIN_SIZE + 64 * 1024)
        for round_ in range(6):
            for oid in range(1, 150):
                o = p64(oid)
                c.store(o, p64(round_ + 1), None, b'%d' % round_ * 150)
                if oid % 3 == 0:
                    c.load(o)             # referenced: copied forward
                c.invalidate(o, p64(round_ + 2))
            if round_ == 3:
                c.clear()
        self.assertEqual(c.stats()['corrupt'], 0)
        self.assertGreater(c.stats()['copies'], 0)
        for oid in range(1, 150):
            got = c.loadBefore(p64(oid), p64(7))
            if got is not None:
                self.assertEqual(got, (b'5' * 150, p64(6), p64(7)))
        c.close()
        c = self.make(size=MIN_SIZE + 64 * 1024)
        self.assertEqual(intact_records(self.path, c._ring_end),
                         indexed_offsets(c))

def flip(path, offset):
    with open(path, 'r+b') as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x55]))
