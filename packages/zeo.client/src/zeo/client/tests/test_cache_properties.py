"""Property tests: a cache may forget, but never answers wrongly.

A hypothesis state machine plays a database history (commits of random
objects) and drives a cache the way a client does: invalidate, then
advance the last tid; store what the "server" returns after a miss.
Every answer the cache gives is checked against the true history.  The
file cache variant also reopens the file, and simulates crashes by
opening a copy of the file taken while it was open -- once as a process
crash and once as a machine crash (another kernel boot id).
"""
import os
import shutil
import tempfile

from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import initialize
from hypothesis.stateful import invariant
from hypothesis.stateful import precondition
from hypothesis.stateful import rule

from zeo.client.cache import FileCache
from zeo.client.cache import MemoryCache
from zeo.client.cache.memory import RECORD_OVERHEAD
from zeo.client.cache.errors import CacheConsistencyError
from zeo.client.tests.support import indexed_offsets
from zeo.client.tests.support import intact_records


def p64(n):
    return n.to_bytes(8, 'big')


OIDS = st.integers(min_value=1, max_value=6)
SETTINGS = settings(max_examples=30, stateful_step_count=40, deadline=None,
                    database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def payload(oid, start, length):
    return (b'%d@%d|' % (oid, start) * (length // 4 + 1))[:length] or b''


class History:
    """The truth: every revision of every object."""

    def __init__(self):
        self.tid = 1
        self.revisions = {}         # oid -> [(start, data)] oldest first

    def commit(self, oids, length):
        self.tid += 1
        for oid in oids:
            self.revisions.setdefault(oid, []).append(
                (self.tid, payload(oid, self.tid, length)))
        return self.tid

    def current(self, oid):
        revs = self.revisions.get(oid)
        return revs[-1] if revs else None

    def before(self, oid, tid):
        """(data, start, end) of the revision current just before tid."""
        revs = self.revisions.get(oid, [])
        for i, (start, data) in enumerate(revs):
            end = revs[i + 1][0] if i + 1 < len(revs) else None
            if start < tid and (end is None or tid <= end):
                return data, start, end
        return None


class CacheMachine(RuleBasedStateMachine):
    """Compare a cache with the true history."""

    def make_cache(self):
        raise NotImplementedError

    @initialize()
    def setup(self):
        self.history = History()
        self.opened_at = self.history.tid
        self.cache = self.make_cache()
        self.cache.setLastTid(p64(self.history.tid))

    def teardown(self):
        self.cache.close()

    # -- what the client does ------------------------------------------

    @rule(oids=st.sets(OIDS, min_size=1, max_size=3),
          length=st.integers(min_value=0, max_value=700))
    def commit(self, oids, length):
        tid = self.history.commit(sorted(oids), length)
        for oid in sorted(oids):
            self.cache.invalidate(p64(oid), p64(tid))
        self.cache.setLastTid(p64(tid))

    @rule(oids=st.sets(OIDS, min_size=1, max_size=3),
          length=st.integers(min_value=0, max_value=700),
          known=st.lists(st.booleans(), min_size=3, max_size=3))
    def commit_own(self, oids, length, known):
        # This client's commit: the cache learns the new data, except
        # where the server resolved a conflict (None).
        tid = self.history.commit(sorted(oids), length)
        self.cache.committed(p64(tid), [
            (p64(oid), self.history.current(oid)[1] if k else None)
            for oid, k in zip(sorted(oids), known)])
        self.cache.setLastTid(p64(tid))

    @rule(oid=OIDS)
    def load(self, oid):
        got = self.cache.load(p64(oid))
        truth = self.history.current(oid)
        if got is not None:
            self.check(truth is not None, 'cached an object never written')
            self.check(got == (truth[1], p64(truth[0])),
                       f'load({oid}) = {got!r}, truth {truth!r}')
        elif truth is not None:
            self.cache.store(p64(oid), p64(truth[0]), None, truth[1])

    @rule(oid=OIDS, data=st.data())
    def load_before(self, oid, data):
        tid = data.draw(st.integers(min_value=1,
                                    max_value=self.history.tid + 1))
        got = self.cache.loadBefore(p64(oid), p64(tid))
        truth = self.history.before(oid, tid)
        if got is not None:
            self.check(truth is not None,
                       f'loadBefore({oid}, {tid}) = {got!r}, truth None')
            tdata, tstart, tend = truth
            gdata, gstart, gend = got
            self.check(gdata == tdata and gstart == p64(tstart),
                       f'loadBefore({oid}, {tid}) = {got!r}, truth {truth}')
            self.check(gend is None or gend == p64(tend),
                       f'wrong end tid {got!r}, truth {truth}')
            if gend is None:
                self.check(tend is None,
                           'a superseded record was served as current')
        elif truth is not None:
            tdata, tstart, tend = truth
            self.cache.store(p64(oid), p64(tstart),
                             None if tend is None else p64(tend), tdata)

    @rule(oid=OIDS, data=st.data())
    def stale_reply(self, oid, data):
        # A load reply computed before a commit that has since been
        # applied (a client ordering bug): the cache must not believe it.
        # Only replies to requests made since the cache was opened can
        # exist.
        revs = self.history.revisions.get(oid, [])
        stale = [(start, data_) for i, (start, data_) in enumerate(revs[:-1])
                 if revs[i + 1][0] > self.opened_at]
        if not stale:
            return
        start, old = data.draw(st.sampled_from(stale))
        try:
            self.cache.store(p64(oid), p64(start), None, old)
        except CacheConsistencyError:
            pass          # a different current record is cached: refused

    @rule(oid=OIDS)
    def forget(self, oid):
        self.cache.invalidate(p64(oid), None)

    @rule()
    def clear(self):
        self.cache.clear()
        self.cache.setLastTid(p64(self.history.tid))

    @invariant()
    def agrees(self):
        cache = getattr(self, 'cache', None)
        if cache is None:
            return
        self.check(cache.getLastTid() == p64(self.history.tid),
                   'last tid differs')
        for oid in range(1, 7):
            got = cache.load(p64(oid))
            if got is not None:
                truth = self.history.current(oid)
                self.check(got == (truth[1], p64(truth[0])),
                           f'load({oid}) = {got!r}, truth {truth!r}')

    def check(self, condition, message):
        if not condition:
            raise AssertionError(message)


class MemoryCacheMachine(CacheMachine):

    def make_cache(self):
        return MemoryCache(4000)

    @invariant()
    def bookkeeping(self):
        # The byte count and the map of non-current records agree with
        # the records themselves.
        cache = getattr(self, 'cache', None)
        if cache is None:
            return
        records = cache._records
        self.check(cache._bytes == sum(len(d) + RECORD_OVERHEAD
                                       for _, d in records.values()),
                   'byte count is wrong')
        self.check(cache._bytes <= cache.getsize(), 'cache too big')
        old = {}
        for key, (tid, _) in records.items():
            if type(key) is tuple:
                old.setdefault(key[0], {})[key[1]] = tid
                self.check(key[1] < tid, 'a revision ends before it starts')
        self.check(old == cache._old, 'non-current map differs')
        for oid, starts in old.items():
            current = records.get(oid)
            self.check(current is None or max(starts) < current[0],
                       'an old revision starts after the current one')


class FileCacheMachine(CacheMachine):

    size = 16384 + 4096          # a tiny ring: lots of wrapping

    def make_cache(self):
        self.dir = tempfile.mkdtemp(prefix='zeocacheprop')
        self.count = 0
        return self._open(self._path(), b'A' * 16)

    def _path(self):
        self.count += 1
        return os.path.join(self.dir, 'c%d.zec' % self.count)

    def _open(self, path, boot_id):
        self.boot_id = boot_id
        return FileCache(path, self.size, boot_id=boot_id)

    def teardown(self):
        super().teardown()
        shutil.rmtree(self.dir)

    @rule(grow=st.booleans())
    def reopen(self, grow):
        self.cache.close()
        if grow:
            self.size += 1024
        self.cache = self._open(self.cache.path, self.boot_id)
        self.opened_at = self.history.tid

    @precondition(lambda self: hasattr(self, 'cache'))
    @rule(machine_crash=st.booleans())
    def crash(self, machine_crash):
        # The copy is what the kernel would have after the process died
        # here.  With another boot id, what a machine crash could leave.
        old = self.cache
        path = self._path()
        shutil.copyfile(old.path, path)
        old.close()
        boot = b'B' * 16 if machine_crash else self.boot_id
        self.cache = self._open(path, boot)
        self.opened_at = self.history.tid
        # Recovery leaves no record on disk that the index does not know.
        self.check(intact_records(path, self.cache._ring_end)
                   == indexed_offsets(self.cache), 'dead record on disk')


class MemoryCacheProperties(MemoryCacheMachine.TestCase):
    settings = SETTINGS


class FileCacheProperties(FileCacheMachine.TestCase):
    settings = SETTINGS
