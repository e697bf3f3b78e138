"""Pruning the blob cache: LRU order, what is never deleted, two pruners."""
import json
import os
import random
import subprocess
import sys
import textwrap
import time
import unittest
from unittest import mock

from zeo.client.blobs import prune as blob_prune
from zeo.client.lockfiles import try_lock_file
from zeo.client.blobs.prune import prune_directory
from zeo.client.tests.support import BlobCacheTestBase
from zeo.client.tests.support import p64

try:
    import zc.lockfile
    from ZEO.ClientStorage import _check_blob_cache_size as reference_prune
except ImportError:  # pragma: no cover
    reference_prune = None

OLD = 1_000_000.0   # file times in 1970: long ago


class PruneTestBase(BlobCacheTestBase):

    def fill(self, cache, count, size=100, times=None, first_oid=0):
        """``count`` blobs of ``size`` bytes last used at ``times``."""
        paths = []
        for i in range(count):
            oid, tid = p64(first_oid + i), p64(1)
            with cache.begin_download(oid, tid) as f:
                f.write(b'x' * size)
            path = cache.path_for(oid, tid)
            when = OLD + i if times is None else times[i]
            os.utime(path, (when, when))
            paths.append(path)
        return paths

    def existing(self, paths):
        return [p for p in paths if os.path.exists(p)]


class LRUTests(PruneTestBase):

    def test_least_recently_used_go_first_down_to_target(self):
        cache = self.make(1000, 10)                 # target 900
        paths = self.fill(cache, 15)
        self.assertEqual(cache.prune(), 600)
        self.assertEqual(self.existing(paths), paths[6:])
        stats = cache.stats()
        self.assertEqual((stats['files'], stats['bytes']), (9, 900))
        self.assertEqual((stats['pruned_files'], stats['pruned_bytes']),
                         (6, 600))
        self.assertEqual(cache.prune(), 0)          # already under target

    def test_order_is_by_time_not_by_name(self):
        cache = self.make(1000, 10)
        order = list(range(15))
        random.Random(4).shuffle(order)
        times = [OLD + rank for rank in order]
        paths = self.fill(cache, 15, times=times)
        cache.prune()
        kept = {paths[i] for i in range(15) if order[i] >= 6}
        self.assertEqual(set(self.existing(paths)), kept)

    def test_mtime_counts_on_noatime_file_systems(self):
        cache = self.make(1000, 10)
        paths = self.fill(cache, 15)
        os.utime(paths[0], (OLD - 100, OLD + 100))  # written late, never read
        cache.prune()
        self.assertEqual(self.existing(paths), [paths[0]] + paths[7:])

    def test_target_is_size_minus_check(self):
        cache = self.make(1000, 50)                 # target 500
        paths = self.fill(cache, 15)
        cache.prune()
        self.assertEqual(len(self.existing(paths)), 5)


class NeverDeletedTests(PruneTestBase):

    def test_recently_used_files_stay(self):
        cache = self.make(0, 10)                    # target 0
        paths = self.fill(cache, 10)
        now = time.time()
        for path in paths[5:]:
            os.utime(path, (now - 30, now - 30))    # within 60 s
        cache.prune()
        self.assertEqual(self.existing(paths), paths[5:])
        self.assertEqual(cache.last_prune.skipped_recent, 5)
        cache.touch(paths[5])
        cache.recent = 10
        cache.prune()
        self.assertEqual(self.existing(paths), [paths[5]])

    def test_download_in_progress_is_untouched(self):
        cache = self.make(0, 10, recent=0)
        paths = self.fill(cache, 3)
        download = cache.begin_download(p64(99), p64(1))
        download.write(b'y' * 5000)
        download.file.flush()
        os.utime(download.temp_path, (OLD, OLD))
        cache.prune()
        self.assertEqual(self.existing(paths), [])
        self.assertTrue(os.path.exists(download.temp_path))
        download.write(b'y')
        with open(download.finish(), 'rb') as f:
            self.assertEqual(f.read(), b'y' * 5001)

    def test_only_blob_files_in_buckets(self):
        cache = self.make(0, 10, recent=0)
        blob = self.fill(cache, 1)[0]
        bucket = os.path.dirname(blob)
        keep = [
            os.path.join(bucket, 'notes.txt'),
            os.path.join(bucket, '1.0000000000000001.blob.dl'),
            os.path.join(self.dir, 'tmp', '1.0000000000000001.blob'),
            os.path.join(self.dir, 'other', '1.0000000000000001.blob'),
            os.path.join(self.dir, 'stray.blob'),
        ]
        for path in keep:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'wb') as f:
                f.write(b'z' * 100)
            os.utime(path, (OLD, OLD))
        outside = os.path.join(self.tmp, 'outside')
        with open(outside, 'wb') as f:
            f.write(b'z' * 100)
        os.symlink(outside, os.path.join(bucket, '2.0000000000000001.blob'))
        elsewhere = os.path.join(self.tmp, 'elsewhere')
        os.mkdir(elsewhere)
        with open(os.path.join(elsewhere, '0.0000000000000001.blob'), 'wb') as f:
            f.write(b'z' * 100)
        os.symlink(elsewhere, os.path.join(self.dir, '5'))
        keep.append(os.path.join(elsewhere, '0.0000000000000001.blob'))
        cache.prune()
        self.assertFalse(os.path.exists(blob))
        for path in keep + [outside, os.path.join(self.dir, '.layout')]:
            self.assertTrue(os.path.exists(path), path)

    def test_locked_bucket_is_skipped(self):
        cache = self.make(0, 10, recent=0)
        paths = self.fill(cache, 3)
        with cache.lock(p64(1), p64(1)):
            cache.prune()
        self.assertEqual(self.existing(paths), [paths[1]])
        self.assertEqual(cache.last_prune.skipped_locked, 1)

    def test_use_between_scan_and_delete_is_seen(self):
        # The loader touches the file after the pruner's scan; the check
        # under the bucket lock sees it.
        cache = self.make(0, 10)
        paths = self.fill(cache, 2)

        def touch_then_lock(path):
            if path == os.path.join(self.dir, '0', '.lock'):
                cache.touch(paths[0])
            return try_lock_file(path)
        with mock.patch.object(blob_prune, 'try_lock_file',
                               side_effect=touch_then_lock):
            cache.prune()
        self.assertEqual(self.existing(paths), [paths[0]])
        self.assertEqual(cache.last_prune.skipped_recent, 1)

    def test_vanished_file_is_not_an_error(self):
        cache = self.make(150, 10, recent=0)        # target 135
        paths = self.fill(cache, 3)

        def delete_then_lock(path):
            if os.path.exists(paths[0]):
                os.remove(paths[0])                 # someone else was faster
            return try_lock_file(path)
        with mock.patch.object(blob_prune, 'try_lock_file',
                               side_effect=delete_then_lock):
            removed = cache.prune()
        self.assertEqual(removed, 100)              # paths[1] only
        self.assertEqual(self.existing(paths), [paths[2]])

    @unittest.skipIf(reference_prune is None, 'reference ZEO not installed')
    def test_reference_pruner_respects_our_bucket_lock(self):
        cache = self.make(recent=0)
        paths = self.fill(cache, 3)
        with cache.lock(p64(1), p64(1)):
            # Target 100, not 0: the reference pruner rescans forever
            # while a locked file keeps the cache above its target.
            reference_prune(self.dir, 100)
        self.assertEqual(self.existing(paths), [paths[1]])

    @unittest.skipIf(reference_prune is None, 'reference ZEO not installed')
    def test_we_respect_reference_bucket_lock(self):
        cache = self.make(0, 10, recent=0)
        paths = self.fill(cache, 3)
        lock = zc.lockfile.LockFile(os.path.join(self.dir, '2', '.lock'))
        try:
            cache.prune()
        finally:
            lock.close()
        self.assertEqual(self.existing(paths), [paths[2]])


class OnePrunerTests(PruneTestBase):

    def test_busy_pruner_leaves_an_attempt_marker(self):
        cache = self.make(0, 10, recent=0)
        paths = self.fill(cache, 3)
        marker = os.path.join(self.dir, 'check_size.attempt')
        held = try_lock_file(os.path.join(self.dir, 'check_size.lock'))
        try:
            self.assertEqual(cache.prune(), 0)
        finally:
            held.release()
        self.assertFalse(cache.last_prune.ran)
        self.assertEqual(cache.stats()['prune_busy'], 1)
        self.assertTrue(os.path.exists(marker))
        self.assertEqual(len(self.existing(paths)), 3)
        cache.prune()
        self.assertFalse(os.path.exists(marker))
        self.assertEqual(self.existing(paths), [])

    def test_attempt_during_a_pass_asks_for_another(self):
        cache = self.make(0, 10, recent=0)
        self.fill(cache, 3)
        marker = os.path.join(self.dir, 'check_size.attempt')
        real_scan = blob_prune.scan
        calls = []

        def scan(directory):
            calls.append(1)
            if len(calls) == 1:
                open(marker, 'w').close()
            return real_scan(directory)
        with mock.patch.object(blob_prune, 'scan', side_effect=scan):
            result = prune_directory(self.dir, 0, recent=0)
        self.assertEqual(result.passes, 2)
        self.assertFalse(os.path.exists(marker))

    def test_passes_are_bounded(self):
        cache = self.make(0, 10, recent=0)
        self.fill(cache, 1)
        marker = os.path.join(self.dir, 'check_size.attempt')
        real_scan = blob_prune.scan

        def scan(directory):
            open(marker, 'w').close()
            return real_scan(directory)
        with mock.patch.object(blob_prune, 'scan', side_effect=scan):
            result = prune_directory(self.dir, 0, recent=0)
        self.assertEqual(result.passes, blob_prune.MAX_PASSES)


PRUNER_SCRIPT = textwrap.dedent('''
    import json, os, sys, time
    from zeo.client.blobs.cache import BlobCache
    directory, first_oid, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    cache = BlobCache(directory, 20_000, 10, recent=0, fsync=False)
    added = removed = 0
    while time.time() < start:
        time.sleep(0.001)
    for round in range(15):
        for i in range(10):
            oid = (first_oid + round * 10 + i).to_bytes(8, 'big')
            tid = (1).to_bytes(8, 'big')
            with cache.begin_download(oid, tid) as f:
                f.write(b'p' * 500)
            os.utime(cache.path_for(oid, tid), (1e6 + round, 1e6 + round))
            added += 500
        removed += cache.prune()
    print(json.dumps({'added': added, 'removed': removed,
                      'stats': cache.stats()}))
''')


class TwoProcessTests(PruneTestBase):

    def test_two_processes_pruning_at_once(self):
        cache = self.make()
        self.fill(cache, 100, size=500)             # 50 000 bytes, old
        initial = cache.stats()['bytes']
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        start = str(time.time() + 0.5)
        procs = [subprocess.Popen(
            [sys.executable, '-c', PRUNER_SCRIPT, self.dir, str(first), start],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for first in (10_000, 20_000)]
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            self.assertEqual(proc.returncode, 0, err)
            reports.append(json.loads(out))
        final = cache.stats()['bytes']
        added = sum(r['added'] for r in reports)
        removed = sum(r['removed'] for r in reports)
        # Every deletion counted exactly once, by exactly one process.
        self.assertEqual(initial + added - removed, final)
        self.assertGreater(removed, 0)
        # Pruning is approximate: the last additions of one process may
        # land while the other's final pass is already done.
        self.assertLessEqual(final, 20_000 + 2 * 5000)
        self.assertFalse(os.listdir(os.path.join(self.dir, 'tmp')))
