"""Crash safety of the blob cache without an fsync per file (zeo.client.blobs.unsynced).

A crash of the machine can't be staged here; a crash of a process can,
and a reboot is a different boot id passed to the cache.  Other users of
the directory are real processes holding the real ``flock``.
"""
import os
import subprocess
import sys
from unittest import mock

from zeo.client.blobs.cache import BlobCache
from zeo.client.blobs.unsynced import UnsyncedFiles
from zeo.client.blobs.unsynced import system_boot_id
from zeo.client.boot_id import BOOT_ID_PATH
from zeo.client.blobs.layout import UNSYNCED_PREFIX
from zeo.client.blobs.layout import USERS_LOCK
from zeo.client.tests.support import BlobCacheTestBase
from zeo.client.tests.support import child_env
from zeo.client.tests.support import p64

#: Opens the cache as boot argv[2], adds blob argv[3] unless "-", says
#: "ready", and then exits without closing when stdin says "crash", or
#: closes first when it says "close".
USER_SCRIPT = '''
import os, sys
from zeo.client.blobs.cache import BlobCache
directory, boot, oid = sys.argv[1:4]
cache = BlobCache(directory, boot_id=lambda: boot)
if oid != "-":
    with cache.begin_download(int(oid).to_bytes(8, "big"), bytes(8)) as f:
        f.write(b"blob " + oid.encode())
print("ready", flush=True)
if sys.stdin.readline().strip() == "close":
    cache.close()
os._exit(0)
'''


def recording(paths):
    """An ``os.fsync`` stand-in that notes the path of each descriptor."""
    return lambda fd: paths.append(os.readlink(f'/proc/self/fd/{fd}'))


class UnsyncedFilesTests(BlobCacheTestBase):

    def make(self, *args, boot='boot-1', **kw):
        kw.setdefault('fsync', True)
        return super().make(*args, boot_id=lambda: boot, **kw)

    def start_user(self, boot, oid='-'):
        env = child_env()
        process = subprocess.Popen(
            [sys.executable, '-c', USER_SCRIPT, self.dir, boot, oid], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.addCleanup(process.wait, 30)
        self.addCleanup(process.stdout.close)
        self.addCleanup(process.stdin.close)
        self.assertEqual(process.stdout.readline().strip(), 'ready')
        return process

    def stop_user(self, process, how):
        process.stdin.write(how + '\n')
        process.stdin.flush()
        self.assertEqual(process.wait(30), 0)

    def markers(self):
        return sorted(name[len(UNSYNCED_PREFIX):] for name in os.listdir(self.dir)
                      if name.startswith(UNSYNCED_PREFIX))

    def add(self, cache, n):
        with cache.begin_download(p64(n), p64(0)) as f:
            f.write(b'blob %d' % n)

    # -- one process -----------------------------------------------------------

    def test_files_are_not_flushed_one_by_one_but_the_marker_is(self):
        cache = self.make()
        self.assertFalse(cache.fsync)
        final = cache.path_for(p64(1), p64(0))
        seen = []
        with mock.patch('os.fsync', side_effect=recording(seen)):
            self.add(cache, 1)
            self.add(cache, 2)
        marker = os.path.join(self.dir, UNSYNCED_PREFIX + 'boot-1')
        # The marker and the directory holding it, once, and no blob file.
        self.assertEqual(seen, [marker, self.dir])
        self.assertTrue(os.path.exists(final))
        self.assertEqual(self.markers(), ['boot-1'])

    def test_a_failing_marker_installs_nothing(self):
        cache = self.make()
        with mock.patch('os.fsync', side_effect=OSError(5, 'I/O error')):
            with self.assertRaises(OSError):
                self.add(cache, 1)
        self.assertFalse(cache.exists(p64(1), p64(0)))
        self.assertEqual(self.tmp_files(cache), [])

    def test_the_last_user_flushes_and_removes_the_marker(self):
        cache = self.make()
        self.add(cache, 1)
        self.add(cache, 2)
        seen = []
        with mock.patch('os.fsync', side_effect=recording(seen)):
            cache.close()
        flushed = seen
        self.assertEqual(sorted(flushed[:2]), sorted(
            [cache.path_for(p64(1), p64(0)), cache.path_for(p64(2), p64(0))]))
        self.assertEqual(flushed[2:], [self.dir])
        self.assertEqual(self.markers(), [])
        cache.close()  # twice is fine
        # After a clean close and a reboot, everything is still there.
        again = self.make(boot='boot-2')
        self.assertTrue(again.exists(p64(1), p64(0)))
        self.assertEqual(again._unsynced.dropped, 0)

    def test_a_cache_that_added_nothing_leaves_no_marker(self):
        cache = self.make()
        cache.close()
        self.assertEqual(self.markers(), [])

    def test_without_a_boot_id_each_file_is_flushed(self):
        cache = self.make(boot=None)
        self.assertTrue(cache.fsync)
        seen = []
        with mock.patch('os.fsync', side_effect=recording(seen)):
            self.add(cache, 1)
        self.assertEqual(len(seen), 1)
        self.assertEqual(self.markers(), [])
        self.assertFalse(os.path.exists(os.path.join(self.dir, USERS_LOCK)))

    def test_without_file_locks_each_file_is_flushed(self):
        # As on a network file system without a lock daemon.
        refused = OSError(37, 'No locks available')
        with mock.patch('fcntl.flock', side_effect=refused):
            cache = self.make()
        self.assertIsNone(cache._unsynced)
        self.assertTrue(cache.fsync)

    def test_boot_ids_are_checked(self):
        with self.assertRaises(ValueError):
            self.make(boot='../../etc')
        self.assertIsNone(UnsyncedFiles.open(self.tmp, None))

    def test_the_system_boot_id(self):
        if not os.path.exists(BOOT_ID_PATH):    # not Linux: test_no_system_boot_id
            self.assertIsNone(system_boot_id())
            return
        with open(BOOT_ID_PATH) as f:
            self.assertEqual(system_boot_id(), f.read().strip())
        # ... which a cache uses by default.
        cache = BlobCache(self.dir)
        self.caches.append(cache)
        self.assertEqual(cache._unsynced.boot_id, system_boot_id())
        self.assertFalse(cache.fsync)

    def test_no_system_boot_id(self):
        missing = os.path.join(self.tmp, 'no-boot-id')
        with mock.patch('zeo.client.boot_id.BOOT_ID_PATH', missing):
            self.assertIsNone(system_boot_id())
            cache = BlobCache(self.dir)
        self.caches.append(cache)
        self.assertIsNone(cache._unsynced)
        self.assertTrue(cache.fsync)

    # -- crashes and other users -------------------------------------------------

    def test_a_reboot_after_a_crash_drops_the_files(self):
        self.make().close()  # the directory's layout
        self.stop_user(self.start_user('boot-1', '7'), 'crash')
        self.assertEqual(self.markers(), ['boot-1'])
        with self.assertLogs('zeo.client.blob_cache', 'WARNING') as logged:
            cache = self.make(boot='boot-2')
        self.assertIn('1 blob files were deleted', logged.output[0])
        self.assertEqual(cache._unsynced.dropped, 1)
        self.assertFalse(cache.exists(p64(7), p64(0)))
        self.assertEqual(self.markers(), [])

    def test_a_crash_of_the_process_alone_drops_nothing(self):
        self.make().close()
        self.stop_user(self.start_user('boot-1', '7'), 'crash')
        cache = self.make(boot='boot-1')
        self.assertTrue(cache.exists(p64(7), p64(0)))
        self.assertEqual(self.markers(), ['boot-1'])
        cache.close()  # the last user: flushes, and the marker goes
        self.assertEqual(self.markers(), [])

    def test_nothing_is_dropped_while_others_use_the_directory(self):
        # Only whoever opens the directory alone judges the markers.  (A
        # user of another boot still at work: a directory on a network
        # file system, shared by two machines.)
        other = self.start_user('boot-1', '7')
        cache = self.make(boot='boot-2')
        self.assertEqual(cache._unsynced.dropped, 0)
        self.assertTrue(cache.exists(p64(7), p64(0)))
        cache.close()
        self.assertEqual(self.markers(), ['boot-1'])
        self.stop_user(other, 'close')
        self.assertEqual(self.markers(), [])

    def test_only_the_last_user_removes_the_marker(self):
        cache = self.make()
        other = self.start_user('boot-1', '8')
        self.add(cache, 1)
        cache.close()
        self.assertEqual(self.markers(), ['boot-1'])  # the other still writes
        self.stop_user(other, 'close')
        self.assertEqual(self.markers(), [])
