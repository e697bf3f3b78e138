"""Readers against an aggressive pruner, in threads and in another process.

The cache is tiny and ``recent`` is 0, so every file not protected by a
lock or an open descriptor is fair game for the pruner: the worst case.
Downloads go through an "I/O thread" in small chunks, as in the client.
Each reader must either read exactly the right bytes, or (for a path from
``load()``) get ``FileNotFoundError`` at open and then succeed by loading
again.  ``open_committed()`` must never fail.
"""
import json
import os
import queue
import random
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

from zeo.client.tests.support import BlobCacheTestBase
from zeo.client.tests.support import content
from zeo.client.tests.support import p64

#: How long the readers run, in seconds.
DURATION = 1.5
OIDS = 40
SIZE = 6000          # bytes of cache; blobs are 100..1000 bytes
CHUNK = 64


def read_revision(cache, oid, tid, fetch, use_open_committed, counts):
    """One read, the way a client's user would do it."""
    if use_open_committed:
        with cache.open_committed(oid, tid, fetch) as f:
            return f.read()
    for _ in range(20):
        path = cache.load(oid, tid, fetch)
        try:
            with open(path, 'rb') as f:
                return f.read()
        except FileNotFoundError:
            counts['reloads'] += 1   # pruned after load(): ask again
    raise AssertionError('a path from load() vanished 20 times in a row')


READER_SCRIPT = textwrap.dedent('''
    import json, random, sys, time
    from zeo.client.blobs.cache import BlobCache
    from zeo.client.tests.test_blob_concurrency import (
        read_revision, OIDS, SIZE, CHUNK)
    from zeo.client.tests.support import content, p64
    directory = sys.argv[1]
    cache = BlobCache(directory, SIZE, 10, recent=0, fsync=False)
    # Both processes read for the same span, which starts once this one
    # has imported everything (slow on a loaded machine).
    print('READY', flush=True)
    stop = float(sys.stdin.readline())
    counts = {'reads': 0, 'reloads': 0, 'bad': 0, 'errors': []}

    def fetch(oid, tid):
        download = cache.begin_download(oid, tid)
        data = content(oid, tid)
        for i in range(0, len(data), CHUNK):
            download.write(data[i:i + CHUNK])
        download.finish()

    rng = random.Random(7)
    while time.time() < stop:
        oid, tid = p64(rng.randrange(OIDS)), p64(1)
        try:
            data = read_revision(cache, oid, tid, fetch, rng.random() < 0.5,
                                 counts)
        except Exception as error:
            counts['errors'].append(repr(error))
            continue
        counts['reads'] += 1
        if data != content(oid, tid):
            counts['bad'] += 1
        if cache.needs_pruning:
            cache.prune()
    print(json.dumps(counts))
''')


class ConcurrencyTests(BlobCacheTestBase):

    def test_readers_never_see_partial_or_missing_blobs(self):
        wakeup = threading.Event()
        cache = self.make(SIZE, 10, recent=0, on_needs_pruning=wakeup.set)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        proc = subprocess.Popen(
            [sys.executable, '-c', READER_SCRIPT, self.dir],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        if proc.stdout.readline() != 'READY\n':
            self.fail(f'the reader process did not start: {proc.communicate()[1]}')
        stop = time.time() + DURATION
        proc.stdin.write(f'{stop!r}\n')
        proc.stdin.flush()
        errors = []
        done = threading.Event()

        # The client's I/O thread: receives blobs chunk by chunk.
        requests = queue.Queue()

        def io_thread():
            while True:
                item = requests.get()
                if item is None:
                    return
                oid, tid, finished = item
                download = cache.begin_download(oid, tid)
                data = content(oid, tid)
                for i in range(0, len(data), CHUNK):
                    download.write(data[i:i + CHUNK])
                    time.sleep(0)
                download.finish()
                finished.set()

        def fetch(oid, tid):
            finished = threading.Event()
            requests.put((oid, tid, finished))
            if not finished.wait(10):
                raise AssertionError('download did not finish')

        # One long-lived pruning worker, woken by on_needs_pruning.
        def pruner():
            while not done.is_set():
                if wakeup.wait(0.05):
                    wakeup.clear()
                    cache.prune()

        # Commits: new revisions moved into the cache.
        def committer():
            rng = random.Random(3)
            tid = 2
            while not done.is_set():
                oid = p64(rng.randrange(OIDS))
                fd, path = tempfile.mkstemp(dir=cache.temporary_directory())
                os.write(fd, content(oid, p64(tid)))
                os.close(fd)
                cache.add_committed(oid, p64(tid), path)
                tid += 1
                time.sleep(0.002)

        counts = {'reads': 0, 'reloads': 0, 'bad': 0}
        counts_lock = threading.Lock()

        def reader(seed):
            rng = random.Random(seed)
            mine = {'reads': 0, 'reloads': 0, 'bad': 0}
            while time.time() < stop:
                oid, tid = p64(rng.randrange(OIDS)), p64(1)
                try:
                    data = read_revision(cache, oid, tid, fetch,
                                         rng.random() < 0.5, mine)
                except Exception as error:
                    errors.append(error)
                    continue
                mine['reads'] += 1
                if data != content(oid, tid):
                    mine['bad'] += 1
            with counts_lock:
                for key in counts:
                    counts[key] += mine[key]

        helpers = [threading.Thread(target=io_thread),
                   threading.Thread(target=pruner),
                   threading.Thread(target=committer)]
        readers = [threading.Thread(target=reader, args=(seed,))
                   for seed in range(3)]
        for thread in helpers + readers:
            thread.start()
        for thread in readers:
            thread.join(DURATION + 30)
        done.set()
        requests.put(None)
        for thread in helpers:
            thread.join(30)
        out, err = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 0, err)
        other = json.loads(out)

        self.assertEqual(errors, [])
        self.assertEqual(other['errors'], [])
        self.assertEqual(counts['bad'], 0)
        self.assertEqual(other['bad'], 0)
        self.assertGreater(counts['reads'], 50)
        self.assertGreater(other['reads'], 50)
        stats = cache.stats()
        self.assertGreater(stats['pruned_files'], 0)
        self.assertEqual(os.listdir(cache.temporary_directory()), [])

