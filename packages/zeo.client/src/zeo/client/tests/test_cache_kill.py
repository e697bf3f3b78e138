"""A real crash: a child process works on a FileCache and is killed with
SIGKILL at a random moment; the parent then reopens the file and checks
every answer against the history the child was following."""
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from typing import Any

from zeo.client.cache.persistent import FileCache
from zeo.client.tests.support import indexed_offsets
from zeo.client.tests.support import intact_records

N_OIDS = 60
SIZE = 16384 + 48 * 1024       # small: the ring wraps many times a second

# The history both processes know: every object has a revision at tid 1,
# and transaction t >= 2 changes the two objects changed(t).
HISTORY = '''
N = %d


def p64(n):
    return n.to_bytes(8, 'big')


def changed(t):
    return sorted({t %% N + 1, (t * 7 + 3) %% N + 1})


def data(oid, start):
    return b'%%d/%%d.' %% (oid, start) * (1 + (oid * 31 + start) %% 40)


def starts_until(last):
    """oid -> sorted start tids of its revisions up to ``last``."""
    starts = {oid: [1] for oid in range(1, N + 1)}
    for t in range(2, last + 1):
        for oid in changed(t):
            starts[oid].append(t)
    return starts


def before(starts, tid):
    """(start, end or None) of the revision current just before tid."""
    for i, s in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else None
        if s < tid and (end is None or tid <= end):
            return s, end
    return None
''' % N_OIDS

CHILD = HISTORY + '''
import sys
from zeo.client.cache.persistent import FileCache
from zeo.client.tests.support import indexed_offsets
from zeo.client.tests.support import intact_records

cache = FileCache(sys.argv[1], int(sys.argv[2]))
last = cache.getLastTid()
if last is None:
    cache.setLastTid(p64(1))
    t = 1
else:
    t = int.from_bytes(last, 'big')
starts = starts_until(t)
print('ready', t, flush=True)
while True:
    t += 1
    for oid in changed(t):
        starts[oid].append(t)
        cache.invalidate(p64(oid), p64(t))
    cache.setLastTid(p64(t))
    for k in range(3):                      # current loads
        oid = (t * 13 + k * 17) % N + 1
        if cache.load(p64(oid)) is None:
            s = starts[oid][-1]
            cache.store(p64(oid), p64(s), None, data(oid, s))
    oid = (t * 5) % N + 1                   # a historical load
    tid = max(2, t - t % 11)
    if cache.loadBefore(p64(oid), p64(tid)) is None:
        s, end = before(starts[oid], tid)
        cache.store(p64(oid), p64(s), end and p64(end), data(oid, s))
'''

namespace: dict[str, Any] = {}
exec(HISTORY, namespace)
p64 = namespace['p64']
data = namespace['data']
starts_until = namespace['starts_until']
before = namespace['before']


class KillTests(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='zeocachekill')
        self.path = os.path.join(self.dir, 'cache.zec')

    def tearDown(self):
        shutil.rmtree(self.dir)

    def run_child_and_kill(self, delay):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in sys.path if p))
        child = subprocess.Popen(
            [sys.executable, '-c', CHILD, self.path, str(SIZE)],
            stdout=subprocess.PIPE, env=env)
        try:
            line = child.stdout.readline()
            self.assertTrue(line.startswith(b'ready'), line)
            time.sleep(delay)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
        self.assertEqual(child.returncode, -signal.SIGKILL)

    def check(self, cache):
        last = cache.getLastTid()
        self.assertIsNotNone(last)
        last = int.from_bytes(last, 'big')
        starts = starts_until(last)
        # The child may have died while applying the invalidations of
        # transaction last+1: a record may already know that it ended
        # there, which is true, even though the last tid is older.
        starts_next = starts_until(last + 1)
        served = 0
        for oid in range(1, N_OIDS + 1):
            got = cache.load(p64(oid))
            if got is not None:
                s = starts[oid][-1]
                self.assertEqual(got, (data(oid, s), p64(s)),
                                 f'oid {oid} at last tid {last}')
                served += 1
            for tid in range(max(2, last - 40), last + 2):
                got = cache.loadBefore(p64(oid), p64(tid))
                if got is not None:
                    s, end = before(starts[oid], tid)
                    gdata, gstart, gend = got
                    self.assertEqual((gdata, gstart), (data(oid, s), p64(s)))
                    if gend is None:
                        self.assertIsNone(end, f'oid {oid} before {tid}')
                    else:
                        ends = {end, before(starts_next[oid], tid)[1]}
                        self.assertIn(int.from_bytes(gend, 'big'), ends)
                    served += 1
        return last, served

    def test_sigkill_while_writing(self):
        rnd = random.Random()
        previous = 0
        for round_ in range(3):
            self.run_child_and_kill(rnd.uniform(0.05, 0.4))
            cache = FileCache(self.path, SIZE)
            try:
                self.assertEqual(cache.open_mode, 'recovered')
                self.assertEqual(intact_records(self.path, cache._ring_end),
                                 indexed_offsets(cache))
                last, served = self.check(cache)
                # The last tid only moves forward, also across crashes.
                self.assertGreaterEqual(last, previous)
                self.assertGreater(last, 1)
                self.assertGreater(len(cache), 0)
                previous = last
            finally:
                cache.close()
