"""BlobCache: directory set-up, downloads, commits, loading, locking."""
import errno
import os
import stat
import tempfile
import threading
import time
import unittest
from unittest import mock

from ZODB.POSException import POSKeyError

from zeo.client.blobs import cache as blob_cache
from zeo.client.blobs.cache import BlobCache
from zeo.client.blobs.errors import BlobCacheError
from zeo.client.blobs.errors import BlobCacheLayoutError
from zeo.client.blobs.errors import BlobCacheLockTimeout
from zeo.client.tests.support import BlobCacheTestBase, content, p64

try:
    import ZODB.blob
    import zc.lockfile
    from ZEO.ClientStorage import BlobCacheLayout as ReferenceLayout
except ImportError:  # pragma: no cover
    ReferenceLayout = None


class DirectoryTests(BlobCacheTestBase):

    def test_creates_private_directory_marker_and_tmp(self):
        cache = self.make()
        self.assertEqual(stat.S_IMODE(os.stat(self.dir).st_mode) & 0o077, 0)
        with open(os.path.join(self.dir, '.layout'), 'rb') as f:
            self.assertEqual(f.read(), b'zeocache')
        self.assertEqual(cache.temporary_directory(),
                         os.path.join(self.dir, 'tmp'))
        self.assertTrue(os.path.isdir(os.path.join(self.dir, 'tmp')))
        self.assertEqual(sorted(os.listdir(self.dir)), ['.layout', 'tmp'])

    def test_existing_directory_keeps_its_mode(self):
        os.mkdir(self.dir, 0o750)
        os.chmod(self.dir, 0o750)
        self.make()
        self.assertEqual(stat.S_IMODE(os.stat(self.dir).st_mode), 0o750)

    def test_reopen(self):
        self.make()
        self.make()

    def test_other_layout_refused(self):
        os.mkdir(self.dir)
        with open(os.path.join(self.dir, '.layout'), 'w') as f:
            f.write('bushy\n')
        with self.assertRaises(BlobCacheLayoutError) as caught:
            self.make()
        self.assertIsInstance(caught.exception, ValueError)
        self.assertEqual(caught.exception.found, 'bushy')
        message = str(caught.exception)
        self.assertIn("'bushy'", message)
        self.assertIn('zeocache', message)
        self.assertIn('shared-blob-dir', message)

    def test_bad_arguments(self):
        for kw in ({'size': -1}, {'size': 1.5}, {'size': True},
                   {'size': 100, 'size_check': 0},
                   {'size': 100, 'size_check': 100},
                   {'size_check': 10.0}, {'recent': -1}):
            with self.subTest(**kw):
                with self.assertRaises(ValueError):
                    self.make(**kw)

    @unittest.skipIf(ReferenceLayout is None, 'reference ZEO not installed')
    def test_shared_with_reference_layout(self):
        # A directory made by the reference client is accepted, and ours
        # is accepted by ZODB's helper with the reference's layout.
        ZODB.blob.LAYOUTS.setdefault('zeocache', ReferenceLayout())
        ref_dir = os.path.join(self.tmp, 'ref')
        ZODB.blob.FilesystemHelper(ref_dir, 'zeocache').create()
        BlobCache(ref_dir).close()
        cache = self.make()
        helper = ZODB.blob.FilesystemHelper(self.dir, 'zeocache')
        helper.create()
        self.assertEqual(helper.getBlobFilename(p64(123456), p64(99)),
                         cache.path_for(p64(123456), p64(99)))

    def test_path_for_and_exists(self):
        cache = self.make()
        path = cache.path_for(p64(1000), p64(3))
        self.assertEqual(path, os.path.join(self.dir, '3',
                                            '1.0000000000000003.blob'))
        self.assertFalse(os.path.exists(os.path.dirname(path)))
        self.assertFalse(cache.exists(p64(1000), p64(3)))
        with self.assertRaises(ValueError):
            cache.path_for(1000, p64(3))


class DownloadTests(BlobCacheTestBase):

    def test_download_is_installed_read_only(self):
        cache = self.make()
        oid, tid = p64(1), p64(2)
        with cache.begin_download(oid, tid) as f:
            f.write(b'abc')
            f.write(b'def')
        path = cache.path_for(oid, tid)
        with open(path, 'rb') as f:
            self.assertEqual(f.read(), b'abcdef')
        mode = stat.S_IMODE(os.stat(path).st_mode)
        self.assertEqual(mode, 0o400)
        self.assertEqual(self.tmp_files(cache), [])
        self.assertTrue(cache.exists(oid, tid))
        stats = cache.stats()
        self.assertEqual((stats['files'], stats['bytes']), (1, 6))
        self.assertEqual((stats['added_files'], stats['added_bytes']), (1, 6))

    def test_written_to_tmp_then_renamed(self):
        cache = self.make()
        oid, tid = p64(1), p64(2)
        download = cache.begin_download(oid, tid)
        download.write(b'x' * 1000)
        self.assertFalse(cache.exists(oid, tid))
        self.assertEqual(os.path.dirname(download.temp_path),
                         cache.temporary_directory())
        self.assertTrue(os.path.isfile(download.temp_path))
        self.assertEqual(download.finish(), cache.path_for(oid, tid))
        self.assertFalse(os.path.exists(download.temp_path))
        self.assertTrue(cache.exists(oid, tid))
        with self.assertRaises(BlobCacheError):
            download.finish()

    def test_exception_leaves_nothing(self):
        cache = self.make()
        oid, tid = p64(1), p64(2)
        with self.assertRaises(ZeroDivisionError):
            with cache.begin_download(oid, tid) as f:
                f.write(b'partial')
                1 / 0
        self.assertFalse(os.path.exists(cache.path_for(oid, tid)))
        self.assertEqual(self.tmp_files(cache), [])
        self.assertEqual(cache.stats()['added_bytes'], 0)

    def test_abort(self):
        cache = self.make()
        download = cache.begin_download(p64(1), p64(2))
        download.write(b'partial')
        download.abort()
        self.assertFalse(cache.exists(p64(1), p64(2)))
        self.assertEqual(self.tmp_files(cache), [])

    def test_failure_while_installing_leaves_nothing(self):
        # Flushing each file (see test_blob_unsynced for the crash marker).
        cache = self.make(fsync=True, boot_id=lambda: None)
        download = cache.begin_download(p64(1), p64(2))
        download.write(b'data')
        with mock.patch('os.fsync', side_effect=OSError(errno.EIO, 'boom')):
            with self.assertRaises(OSError):
                download.finish()
        self.assertFalse(cache.exists(p64(1), p64(2)))
        self.assertEqual(self.tmp_files(cache), [])

    def test_fsync_before_the_final_name(self):
        cache = self.make(fsync=True, boot_id=lambda: None)
        oid, tid = p64(1), p64(2)
        seen = []

        def fsync(fd):
            seen.append(cache.exists(oid, tid))
        with mock.patch('os.fsync', side_effect=fsync):
            with cache.begin_download(oid, tid) as f:
                f.write(b'data')
        self.assertEqual(seen, [False])

    def test_second_copy_is_discarded(self):
        # Two processes downloading the same revision: the first one wins,
        # the file a reader may hold is never replaced.
        cache = self.make()
        oid, tid = p64(1), p64(2)
        first = cache.begin_download(oid, tid)
        second = cache.begin_download(oid, tid)
        first.write(b'same')
        second.write(b'same')
        first.finish()
        inode = os.stat(cache.path_for(oid, tid)).st_ino
        second.finish()
        self.assertEqual(os.stat(cache.path_for(oid, tid)).st_ino, inode)
        self.assertEqual(self.tmp_files(cache), [])
        self.assertEqual(cache.stats()['added_files'], 1)

    def test_closed_file_still_finishes(self):
        cache = self.make()
        download = cache.begin_download(p64(1), p64(2))
        download.write(b'data')
        download.file.close()
        download.finish()
        with open(cache.path_for(p64(1), p64(2)), 'rb') as f:
            self.assertEqual(f.read(), b'data')


class CommitTests(BlobCacheTestBase):

    def upload_file(self, cache, data=b'committed'):
        fd, path = tempfile.mkstemp(dir=cache.temporary_directory())
        os.write(fd, data)
        os.close(fd)
        return path

    def test_moved_in(self):
        cache = self.make()
        source = self.upload_file(cache)
        inode = os.stat(source).st_ino
        final = cache.add_committed(p64(5), p64(6), source)
        self.assertEqual(final, cache.path_for(p64(5), p64(6)))
        self.assertFalse(os.path.exists(source))
        self.assertEqual(os.stat(final).st_ino, inode)   # renamed, not copied
        self.assertEqual(stat.S_IMODE(os.stat(final).st_mode), 0o400)
        with open(final, 'rb') as f:
            self.assertEqual(f.read(), b'committed')
        self.assertEqual(cache.stats()['added_bytes'], 9)

    def test_copied_across_file_systems(self):
        cache = self.make()
        source = os.path.join(self.tmp, 'elsewhere')
        with open(source, 'wb') as f:
            f.write(b'from afar')
        real_link = os.link

        def link(src, dst):
            if src == source:
                raise OSError(errno.EXDEV, 'cross-device link')
            return real_link(src, dst)
        with mock.patch('os.link', side_effect=link):
            final = cache.add_committed(p64(5), p64(6), source)
        self.assertFalse(os.path.exists(source))
        with open(final, 'rb') as f:
            self.assertEqual(f.read(), b'from afar')
        self.assertEqual(stat.S_IMODE(os.stat(final).st_mode), 0o400)
        self.assertEqual(self.tmp_files(cache), [])

    def test_without_hard_links(self):
        cache = self.make()
        source = self.upload_file(cache)
        with mock.patch('os.link', side_effect=OSError(errno.EPERM, 'no')):
            final = cache.add_committed(p64(5), p64(6), source)
        self.assertTrue(os.path.isfile(final))
        self.assertFalse(os.path.exists(source))

    def test_new_file_is_recent(self):
        cache = self.make()
        source = self.upload_file(cache)
        os.utime(source, (1000, 1000))
        final = cache.add_committed(p64(5), p64(6), source)
        self.assertGreater(os.stat(final).st_mtime, time.time() - 60)


class LoadTests(BlobCacheTestBase):

    def test_miss_fetches_hit_does_not(self):
        cache = self.make()
        fetch = self.fetcher(cache)
        oid, tid = p64(7), p64(8)
        path = cache.load(oid, tid, fetch)
        self.assertEqual(path, cache.path_for(oid, tid))
        self.assertEqual(self.fetched, [(oid, tid)])
        os.utime(path, (1000, 1000))
        self.assertEqual(cache.load(oid, tid, fetch), path)
        self.assertEqual(len(self.fetched), 1)
        st = os.stat(path)
        self.assertGreater(st.st_atime, time.time() - 60)
        self.assertGreater(st.st_mtime, time.time() - 60)

    def test_missing_on_server(self):
        cache = self.make()
        with self.assertRaises(POSKeyError):
            cache.load(p64(7), p64(8), lambda oid, tid: None)
        with self.assertRaises(POSKeyError):
            cache.open_committed(p64(7), p64(8), lambda oid, tid: None)

    def test_fetch_errors_pass_through_and_release_the_lock(self):
        cache = self.make(lock_timeout=1)

        def fetch(oid, tid):
            raise POSKeyError(oid)
        with self.assertRaises(POSKeyError):
            cache.load(p64(7), p64(8), fetch)
        with cache.lock(p64(7), p64(8)):
            pass

    def test_concurrent_misses_fetch_once(self):
        cache = self.make()
        oid, tid = p64(7), p64(8)
        started = threading.Event()

        def slow_fetch(oid, tid):
            self.fetched.append((oid, tid))
            started.set()
            time.sleep(0.2)
            with cache.begin_download(oid, tid) as f:
                f.write(content(oid, tid))
        results = []

        def load():
            results.append(cache.load(oid, tid, slow_fetch))
        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        self.assertEqual(len(self.fetched), 1)
        self.assertEqual(results, [cache.path_for(oid, tid)] * 4)

    def test_open_committed(self):
        cache = self.make()
        fetch = self.fetcher(cache)
        oid, tid = p64(7), p64(8)
        with cache.open_committed(oid, tid, fetch) as f:
            self.assertEqual(f.read(), content(oid, tid))
        with cache.open_committed(oid, tid, fetch) as f:
            self.assertEqual(f.read(), content(oid, tid))
        self.assertEqual(len(self.fetched), 1)
        opened = []

        def opener(path):
            opened.append(path)
            return open(path, 'rb')
        with cache.open_committed(oid, tid, fetch, opener) as f:
            self.assertEqual(f.read(), content(oid, tid))
        self.assertEqual(opened, [cache.path_for(oid, tid)])

    def test_open_committed_survives_deletion_after_open(self):
        cache = self.make()
        fetch = self.fetcher(cache)
        oid, tid = p64(7), p64(8)
        f = cache.open_committed(oid, tid, fetch)
        os.remove(cache.path_for(oid, tid))
        with f:
            self.assertEqual(f.read(), content(oid, tid))

    def test_open_committed_retries_a_vanishing_file(self):
        cache = self.make()
        fetch = self.fetcher(cache)
        oid, tid = p64(7), p64(8)
        calls = []

        def opener(path):
            calls.append(path)
            if len(calls) == 2:   # deleted between fetch and open
                raise FileNotFoundError(path)
            return open(path, 'rb')
        with cache.open_committed(oid, tid, fetch, opener) as f:
            self.assertEqual(f.read(), content(oid, tid))
        self.assertEqual(len(calls), 3)

        def never(path):
            raise FileNotFoundError(path)
        with self.assertRaises(BlobCacheError):
            cache.open_committed(oid, tid, fetch, never)

    def test_touch(self):
        cache = self.make()
        self.assertFalse(cache.touch(cache.path_for(p64(1), p64(1))))


class LockTests(BlobCacheTestBase):

    def test_other_thread_times_out(self):
        cache = self.make(lock_timeout=0.2)
        oid, tid = p64(1), p64(2)
        errors = []

        def other():
            try:
                with cache.lock(oid, tid):
                    pass
            except BlobCacheLockTimeout as error:
                errors.append(error)
        with cache.lock(oid, tid):
            thread = threading.Thread(target=other)
            thread.start()
            thread.join(10)
        self.assertEqual(len(errors), 1)
        self.assertIn('.lock', str(errors[0]))
        self.assertIsInstance(errors[0], TimeoutError)
        # Same bucket, other revision and oid: the same lock.
        with cache.lock(p64(1 + 997), p64(9)):
            pass

    def test_waiting_thread_gets_it(self):
        cache = self.make(lock_timeout=10)
        oid, tid = p64(1), p64(2)
        order = []
        lock = cache.lock(oid, tid)

        def other():
            with cache.lock(oid, tid):
                order.append('other')
        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.05)
        order.append('first')
        lock.release()
        thread.join(10)
        self.assertEqual(order, ['first', 'other'])

    def test_reentrant(self):
        cache = self.make(lock_timeout=0.1)
        with cache.lock(p64(1), p64(2)):
            with cache.lock(p64(1), p64(3)):
                pass
            # Still held after the inner release.
            result = []
            thread = threading.Thread(target=lambda: result.append(
                _try(cache.lock, p64(1), p64(2))))
            thread.start()
            thread.join(10)
            self.assertIsInstance(result[0], BlobCacheLockTimeout)
        self.assertIsNone(_try(cache.lock, p64(1), p64(2)))

    @unittest.skipIf(ReferenceLayout is None, 'reference ZEO not installed')
    def test_excludes_reference_clients(self):
        # The reference locks the same file with zc.lockfile.
        cache = self.make(lock_timeout=0.1)
        oid, tid = p64(1), p64(2)
        lock_path = os.path.join(self.dir, '1', '.lock')
        with cache.lock(oid, tid):
            with self.assertRaises(zc.lockfile.LockError):
                zc.lockfile.LockFile(lock_path)
        reference = zc.lockfile.LockFile(lock_path)
        try:
            with self.assertRaises(BlobCacheLockTimeout):
                cache.lock(oid, tid)
        finally:
            reference.close()
        with cache.lock(oid, tid):
            pass


    @unittest.skipUnless(hasattr(os, 'fork'), 'needs fork')
    def test_forked_child_competes_for_the_parents_locks(self):
        cache = self.make(lock_timeout=10)
        lock = cache.lock(p64(1), p64(2))
        pid = os.fork()
        if pid == 0:   # child
            code = 1
            try:
                started = time.monotonic()
                with cache.lock(p64(1), p64(2)):
                    # Only once the parent let go.
                    code = 0 if time.monotonic() - started > 0.1 else 2
            finally:
                os._exit(code)
        time.sleep(0.3)
        lock.release()
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)


def _try(function, *args):
    try:
        with function(*args):
            return None
    except Exception as error:
        return error


class PruningFlagTests(BlobCacheTestBase):

    def test_unbounded_never_prunes(self):
        cache = self.make()
        self.assertFalse(cache.needs_pruning)
        cache.note_added(10 ** 12)
        self.assertFalse(cache.needs_pruning)
        self.assertEqual(cache.prune(), 0)

    def test_flag_and_callback(self):
        calls = []
        cache = self.make(1000, 10, on_needs_pruning=lambda: calls.append(1))
        self.assertEqual((cache.check, cache.target), (100, 900))
        self.assertTrue(cache.needs_pruning)    # once at start-up
        self.assertEqual(calls, [1])
        cache.note_added(500)                   # already raised: no repeat
        self.assertEqual(calls, [1])
        cache.prune()
        self.assertFalse(cache.needs_pruning)
        cache.note_added(60)
        self.assertFalse(cache.needs_pruning)
        cache.note_added(40)
        self.assertTrue(cache.needs_pruning)
        self.assertEqual(calls, [1, 1])

    def test_downloads_count(self):
        cache = self.make(1000, 50)
        cache.prune()
        with cache.begin_download(p64(1), p64(1)) as f:
            f.write(b'x' * 499)
        self.assertFalse(cache.needs_pruning)
        with cache.begin_download(p64(2), p64(1)) as f:
            f.write(b'x')
        self.assertTrue(cache.needs_pruning)

    def test_close_stops_pruning(self):
        cache = self.make(0, 10, recent=0)
        with cache.begin_download(p64(1), p64(1)) as f:
            f.write(b'x')
        cache.close()
        self.assertFalse(cache.needs_pruning)
        self.assertEqual(cache.prune(), 0)
        self.assertTrue(cache.exists(p64(1), p64(1)))

    def test_file_system_errors_are_logged(self):
        cache = self.make(0, 10)
        with mock.patch.object(blob_cache, 'prune_directory',
                               side_effect=PermissionError('no')):
            with self.assertLogs('zeo.client.blob_cache', 'WARNING'):
                self.assertEqual(cache.prune(), 0)

    def test_stats_keys(self):
        stats = self.make(1000).stats()
        for key in ('files', 'bytes', 'pruned_files', 'pruned_bytes'):
            self.assertEqual(stats[key], 0)
