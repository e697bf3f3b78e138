#!/usr/bin/env python
"""Micro-benchmark: the client caches' hot paths, in µs per operation.

What a client does to its cache, on a real MemoryCache and a real
FileCache (in a temporary directory):

- ``cold``: a cold read, i.e. a ``loadBefore`` miss, then ``store`` of
  the loaded current record (what a load reply does);
- ``store``: the ``store`` of a cold record alone;
- ``hit``: a ``loadBefore`` answered from the cache (the current record);
- ``load``: ``load`` of the current record;
- ``commit``, ``commit100``: what ``tpc_finish`` does per object a
  transaction of 1 (100) objects changed: ``invalidate(oid, tid)`` then
  ``store(oid, tid, None, data)`` per object, or one ``committed(tid,
  changes)`` where the cache has it (``--no-fused``: never);
- ``invalidate``: an invalidation from another client's commit.

Each figure is the best of ``--runs`` passes over ``--objects`` records,
in CPU time of the thread (best, not mean, and not wall time: the
machine may be shared).  Run it with bin/py:
``bin/py scripts/bench_cache_ops.py [--objects N] [--runs R]``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from zeo.client.cache import FileCache
from zeo.client.cache import MemoryCache

__all__ = ['main']


def p64(n: int) -> bytes:
    return n.to_bytes(8, 'big')


def measure(make: Callable[[], Any], objects: int, runs: int,
            fused: bool) -> dict[str, float]:
    """Return µs per operation of each workload on caches from *make*."""
    oids = [p64(i) for i in range(1, objects + 1)]
    data = [b'%08d' % i * 15 for i in range(objects)]     # 120 bytes
    start, snap = p64(0x100), p64(0x200)
    best: dict[str, float] = {}

    def note(name: str, seconds: float, count: int) -> None:
        us = seconds / count * 1e6
        best[name] = min(best.get(name, us), us)

    # CPU time of this thread: the time a busy machine gives to other
    # processes is not counted.
    clock = time.thread_time
    for run in range(runs):
        cache = make()
        try:
            cache.setLastTid(snap)
            load_before, store = cache.loadBefore, cache.store
            t0 = clock()
            for oid, d in zip(oids, data):
                if load_before(oid, snap) is None:
                    store(oid, start, None, d)
            note('cold', clock() - t0, objects)

            t0 = clock()
            for oid in oids:
                load_before(oid, snap)
            note('hit', clock() - t0, objects)

            load = cache.load
            t0 = clock()
            for oid in oids:
                load(oid)
            note('load', clock() - t0, objects)

            invalidate = cache.invalidate
            committed = getattr(cache, 'committed', None) if fused else None
            tid = 0x10000 * (run + 1)
            for name, per in (('commit', 1), ('commit100', 100)):
                batches = [list(zip(oids[i:i + per], data[i:i + per]))
                           for i in range(0, objects, per)]
                t0 = clock()
                for changes in batches:
                    tid += 1
                    t = p64(tid)
                    if committed is not None:
                        committed(t, changes)
                    else:
                        for oid, d in changes:
                            invalidate(oid, t)
                            store(oid, t, None, d)
                note(name, clock() - t0, objects)

            tid = p64(0x10000 * (run + 2))
            t0 = clock()
            for oid in oids:
                invalidate(oid, tid)
            note('invalidate', clock() - t0, objects)
        finally:
            cache.close()
        cache = make()
        try:
            t0 = clock()
            for oid, d in zip(oids, data):
                cache.store(oid, start, None, d)
            note('store', clock() - t0, objects)
        finally:
            cache.close()
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--objects', type=int, default=20000)
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--no-fused', dest='fused', action='store_false',
                        help='commit with invalidate + store even where the '
                        'cache has committed()')
    parser.add_argument('--only', choices=('memory', 'file'), default=None)
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix='zeo-bench-cache-ops-')
    count = [0]

    def file_cache() -> FileCache:
        count[0] += 1
        return FileCache(os.path.join(workdir, f'c{count[0]}.zec'),
                         64 << 20)

    kinds: dict[str, Callable[[], Any]] = {
        'memory': lambda: MemoryCache(64 << 20), 'file': file_cache}
    try:
        for name, make in kinds.items():
            if args.only not in (None, name):
                continue
            best = measure(make, args.objects, args.runs, args.fused)
            print(f'{name:7}' + ''.join(f' {k}={v:6.2f}'
                                        for k, v in best.items()))
    finally:
        shutil.rmtree(workdir)


if __name__ == '__main__':
    main()
