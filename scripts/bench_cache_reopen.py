#!/usr/bin/env python
"""Benchmark: how long does reopening a big persistent client cache take?

Fills a cache of ``--size`` bytes with ``--records`` records of about
``--record-size`` bytes, once with zeo.client's FileCache and once with
the reference implementation's ``ZEO.cache.ClientCache`` (a benchmark
peer only: it is imported here and nowhere in the packages), closes both
and times reopening each (median of ``--runs``).  Both files are in the
page cache, as they are when a client restarts.  Also reports how long
FileCache takes to recover after an unclean shutdown (a copy of the file
taken while it was open), which is the case where it must scan.

Usage: python scripts/bench_cache_reopen.py [--records N] [--size BYTES]
"""
import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# zeo.client imports zeo.protocol: both sources, for interpreters (such as
# bin/reference-py) that have neither installed.
for _package in ('zeo.protocol', 'zeo.client'):
    sys.path.insert(0, os.path.join(HERE, '..', 'packages', _package, 'src'))

from zeo.client.cache.persistent import FileCache  # noqa: E402


def p64(n):
    return n.to_bytes(8, 'big')


def payloads(count, mean, seed=42):
    """Realistic-ish pickles: sizes spread around the mean, mildly
    compressible content."""
    rnd = random.Random(seed)
    pool = bytes(rnd.getrandbits(8) for _ in range(1 << 16))
    for i in range(count):
        size = max(16, int(rnd.gauss(mean, mean / 4)))
        at = rnd.randrange(0, len(pool) - size)
        yield pool[at:at + size]


def fill(cache, records, mean):
    for i, data in enumerate(payloads(records, mean), 1):
        cache.store(p64(i), p64(1000 + i % 7), None, data)
    cache.setLastTid(p64(5000))


def time_reopen(factory, runs):
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        cache = factory()
        times.append(time.perf_counter() - started)
        count = len(cache)
        cache.close()
    return statistics.median(times), min(times), count


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--records', type=int, default=200_000)
    parser.add_argument('--record-size', type=int, default=1000)
    parser.add_argument('--size', type=int, default=200 * 1024 * 1024)
    parser.add_argument('--runs', type=int, default=7)
    parser.add_argument('--dir', default=None,
                        help='where to put the caches (default: a temp dir)')
    parser.add_argument('--no-reference', action='store_true',
                        help='skip ZEO.cache.ClientCache')
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix='zeocachebench', dir=args.dir)
    try:
        ours = os.path.join(workdir, 'ours.zec')
        theirs = os.path.join(workdir, 'reference.zec')

        started = time.perf_counter()
        cache = FileCache(ours, args.size)
        fill(cache, args.records, args.record_size)
        filled = time.perf_counter()
        crashed = os.path.join(workdir, 'crashed.zec')
        shutil.copyfile(ours, crashed)       # what a kill -9 would leave
        before_close = time.perf_counter()
        cache.close()
        closed = time.perf_counter()
        print(f'zeo.client FileCache: filled {args.records} records in '
              f'{filled - started:.1f} s, close took '
              f'{closed - before_close:.3f} s, file '
              f'{os.path.getsize(ours) / 2**20:.1f} MiB')
        ours_median, ours_min, ours_count = time_reopen(
            lambda: FileCache(ours, args.size), args.runs)
        print(f'zeo.client FileCache reopen: median {ours_median * 1e3:.2f} '
              f'ms (min {ours_min * 1e3:.2f} ms), {ours_count} records')

        cache = FileCache(ours, args.size)
        started = time.perf_counter()
        cache.setLastTid(p64(5001))
        print(f'zeo.client FileCache first change after reopen (marks the '
              f'file dirty: one fsync, drops the saved index): '
              f'{(time.perf_counter() - started) * 1e3:.2f} ms')
        started = time.perf_counter()
        cache.close()
        print(f'zeo.client FileCache close after a session (saves the '
              f'index): {time.perf_counter() - started:.3f} s')

        started = time.perf_counter()
        recovered = FileCache(crashed, args.size)
        print(f'zeo.client FileCache recovery after a crash: '
              f'{time.perf_counter() - started:.2f} s, '
              f'{len(recovered)} records')
        recovered.close()
        os.remove(crashed)

        if args.no_reference:
            return
        from ZEO.cache import ClientCache
        started = time.perf_counter()
        cache = ClientCache(theirs, args.size)
        fill(cache, args.records, args.record_size)
        cache.close()
        print(f'ZEO.cache.ClientCache: filled in '
              f'{time.perf_counter() - started:.1f} s, file '
              f'{os.path.getsize(theirs) / 2**20:.1f} MiB')
        ref_median, ref_min, ref_count = time_reopen(
            lambda: ClientCache(theirs, args.size), args.runs)
        print(f'ZEO.cache.ClientCache reopen: median {ref_median * 1e3:.2f} '
              f'ms (min {ref_min * 1e3:.2f} ms), {ref_count} records')
        print(f'ratio ours/ZEO (median reopen): '
              f'{ours_median / ref_median:.3f} '
              f'({ref_median / ours_median:.0f}x faster)')
    finally:
        shutil.rmtree(workdir)


if __name__ == '__main__':
    main()
