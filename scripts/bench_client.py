#!/usr/bin/env python
"""Client-side workloads of ``scripts/benchmark.py``, one per process.

Run by the benchmark runner, never by hand (though you can)::

    bin/py scripts/bench_client.py ping --impl ours --addr 127.0.0.1:8100
    bin/reference-py scripts/bench_client.py ping --impl zeo --addr ...

``--impl ours`` uses ``zeo.client.ClientStorage`` (run it with bin/py),
``--impl zeo`` the reference ``ZEO.ClientStorage.ClientStorage`` (run it
with bin/reference-py), ``--impl relstorage`` no server at all but
RelStorage on the PostgreSQL at ``--dsn`` (bin/py; the scale-out set).  Everything else is the same code: the same ZODB,
the same objects, the same timing.  Each workload prints its measurement
as one JSON line on stdout (the last line).  Workloads run by several
processes at once synchronise through stdin/stdout: they print ``READY``
when connected, and wait for a line on stdin before they start.

Only the standard library is imported at module level; ZODB and the
client storage are imported by the workloads.
"""
import argparse
import json
import os
import random
import socket
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

#: Bytes of payload per benchmark object (zodbshootout's default size).
PAYLOAD_SIZE = 300


# -- helpers -----------------------------------------------------------------

def emit(**values):
    """The measurement: one JSON line."""
    print(json.dumps(values), flush=True)


def barrier():
    """Tell the runner we are ready, wait for its go."""
    print('READY', flush=True)
    line = sys.stdin.readline()
    if not line:
        sys.exit('the runner went away')
    return line.strip()


def parse_addr(text):
    host, _, port = text.rpartition(':')
    return (host or '127.0.0.1', int(port))


def client_storage(args, **options):
    if args.impl == 'ours':
        from zeo.client import ClientStorage
    elif args.impl == 'zeo':
        from ZEO.ClientStorage import ClientStorage
    elif args.impl == 'relstorage':
        # Not a client: RelStorage used directly, on PostgreSQL at --dsn.
        from zeo.server.testing_postgres import open_relstorage
        return open_relstorage(args.dsn)
    else:
        raise SystemExit(f'unknown --impl {args.impl!r}')
    options.setdefault('wait_timeout', 60)
    return ClientStorage(parse_addr(args.addr), **options)


def open_db(args, **options):
    import ZODB
    storage = client_storage(args, **options)
    # A pickle cache big enough that nothing is evicted while we time.
    return ZODB.DB(storage, cache_size=args.objects + 1000,
                   large_record_size=1 << 30)


def greeting(args):
    """The protocol the server announces (its first frame, e.g. ``Z5``),
    read over a connection of its own that answers nothing."""
    with socket.create_connection(parse_addr(args.addr), timeout=60) as sock:
        data = b''
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], 'big'):
            chunk = sock.recv(256)
            if not chunk:
                break
            data += chunk
    return data[4:4 + int.from_bytes(data[:4], 'big')].decode('ascii', 'replace')


def proc_cpu_seconds(pid):
    """utime + stime of a process, from /proc/<pid>/stat."""
    with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def proc_rss_kb(pid):
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise RuntimeError(f'no VmRSS for {pid}')


def make_payload(i):
    rnd = random.Random(i)
    return ''.join(rnd.choice('abcdefghijklmnopqrstuvwxyz0123456789')
                   for _ in range(PAYLOAD_SIZE))


# -- populate: the FileStorage every server run starts from ------------------

def populate(args):
    """Write ``--objects`` small PersistentMappings, listed in
    ``root['objects']`` (a PersistentList, one record referencing them
    all) and indexed by number in ``root['tree']`` (an OOBTree, as an
    application keeps many objects), straight to a FileStorage."""
    import transaction
    import ZODB
    import ZODB.FileStorage
    from BTrees.OOBTree import OOBTree
    from persistent.list import PersistentList
    from persistent.mapping import PersistentMapping
    db = ZODB.DB(ZODB.FileStorage.FileStorage(args.path))
    conn = db.open()
    objects = PersistentList()
    conn.root()['objects'] = objects
    tree = conn.root()['tree'] = OOBTree()
    for i in range(args.objects):
        objects.append(PersistentMapping({'payload': make_payload(i), 'v': 0}))
        tree[i] = objects[-1]
        if i % 1000 == 999:
            transaction.commit()
    transaction.commit()
    conn.close()
    db.close()
    emit(objects=args.objects, size=os.path.getsize(args.path))


# -- workloads ---------------------------------------------------------------

def ping(args):
    """Round trips of ``ping``; the server's CPU time per call; the
    protocol the server announced."""
    announced = greeting(args)
    storage = client_storage(args)
    for _ in range(200):
        storage.ping()
    batch = 250
    batches = max(1, args.count // batch)
    cpu_before = proc_cpu_seconds(args.server_pid)
    latencies = []
    clock = time.perf_counter
    for _ in range(batches):
        started = clock()
        for _ in range(batch):
            storage.ping()
        latencies.append((clock() - started) / batch)
    cpu_after = proc_cpu_seconds(args.server_pid)
    storage.close()
    emit(ping_us=statistics.median(latencies) * 1e6,
         server_cpu_us=(cpu_after - cpu_before) / (batches * batch) * 1e6,
         calls=batches * batch, greeting=announced)


def commit(args):
    """Transactions that each modify ``--per-txn`` already loaded objects."""
    import transaction
    db = open_db(args)
    conn = db.open()
    objects = conn.root()['objects']
    per_txn = args.per_txn
    pool = [objects[i] for i in range(min(len(objects), max(per_txn, 100)))]
    for obj in pool:
        obj._p_activate()              # load them now, not while timing

    def one(n):
        start = (n * per_txn) % len(pool)
        for j in range(per_txn):
            pool[(start + j) % len(pool)]['v'] = n
        transaction.commit()

    for n in range(5):                  # warm up
        one(n)
    clock = time.perf_counter
    started = clock()
    for n in range(args.count):
        one(n)
    elapsed = clock() - started
    db.close()
    emit(txn_per_s=args.count / elapsed,
         objects_per_s=args.count * per_txn / elapsed,
         transactions=args.count, per_txn=per_txn)


def _read_all(conn):
    objects = list(conn.root()['objects'])
    for obj in objects:
        obj._p_activate()
    return objects


def cold(args):
    """Read every object once from a fresh client: empty client cache,
    empty pickle cache; with ``--prefetch``, ``Connection.prefetch`` them
    all first; with ``--tree``, through ``root['tree'].values()``."""
    db = open_db(args)
    conn = db.open()
    clock = time.perf_counter
    started = clock()
    if args.tree:
        # The application's way through a BTree: buckets and values as
        # the iteration reaches them.
        objects = []
        for obj in conn.root()['tree'].values():
            obj._p_activate()
            objects.append(obj)
    else:
        objects = list(conn.root()['objects'])
        if args.prefetch:
            conn.prefetch(objects)
        for obj in objects:
            obj._p_activate()
    elapsed = clock() - started
    count = len(objects)
    assert all(obj['payload'] for obj in objects)
    db.close()
    emit(objects_per_s=count / elapsed, objects=count, seconds=elapsed)


def warm(args):
    """Read every object with the client cache full and the pickle cache
    empty (``cacheMinimize``): the storage answers from its cache."""
    db = open_db(args)
    conn = db.open()
    count = len(_read_all(conn))       # fills the client cache
    clock = time.perf_counter
    rates = []
    for _ in range(args.passes):
        conn.cacheMinimize()
        started = clock()
        _read_all(conn)
        rates.append(count / (clock() - started))
    db.close()
    emit(objects_per_s=statistics.median(rates), objects=count,
         passes=args.passes)


def mixed(args):
    """One of many processes: transactions that load ``--reads`` random
    objects and, one time in ``--write-every``, change one and commit."""
    import transaction
    import ZODB.POSException
    db = open_db(args)
    db.setCacheSize(400)              # ZODB's default: most loads miss it
    conn = db.open()
    objects = list(conn.root()['objects'])
    rnd = random.Random(os.getpid())
    barrier()
    clock = time.perf_counter
    started = clock()
    deadline = started + args.duration
    txns = commits = conflicts = loads = 0
    while clock() < deadline:
        transaction.begin()
        for _ in range(args.reads):
            obj = rnd.choice(objects)
            if obj._p_changed is None:
                loads += 1
            obj['payload']
        txns += 1
        if txns % args.write_every == 0:
            rnd.choice(objects)['v'] = txns
            try:
                transaction.commit()
                commits += 1
            except ZODB.POSException.ConflictError:
                transaction.abort()
                conflicts += 1
        else:
            transaction.abort()
    elapsed = clock() - started
    db.close()
    emit(txns=txns, commits=commits, conflicts=conflicts, loads=loads,
         seconds=elapsed)


def _record_invalidations():
    """Patch ZODB's MVCC adapter (what a ClientStorage's DB is) so every
    ``invalidate(tid, oids)`` notes when it arrived: time.monotonic() is
    CLOCK_MONOTONIC, the same clock in every process on Linux."""
    from ZODB import mvccadapter
    seen = {}
    original = mvccadapter.MVCCAdapter.invalidate

    def invalidate(self, tid, oids):
        seen.setdefault(tid.hex(), time.monotonic())
        return original(self, tid, oids)

    mvccadapter.MVCCAdapter.invalidate = invalidate
    return seen


def watch(args):
    """A fan-out watcher: a DB on a ClientStorage that notes when each
    invalidation arrives; prints them when the runner says stop."""
    seen = _record_invalidations()
    db = open_db(args)
    db.open().root()                   # connected and registered
    barrier()                         # returns when told to stop
    emit(seen=seen)
    db.close()


def commit_watched(args):
    """The fan-out committer: ``--count`` one-object commits, ``--pause``
    seconds apart; for each, the tid and time.monotonic() just before
    ``transaction.commit()`` was called and just after it returned."""
    import transaction
    db = open_db(args)
    conn = db.open()
    obj = conn.root()['objects'][0]
    obj._p_activate()
    barrier()
    commits = []
    for n in range(args.count):
        time.sleep(args.pause)
        obj['v'] = n
        started = time.monotonic()
        transaction.commit()
        commits.append((obj._p_serial.hex(), started, time.monotonic()))
    time.sleep(args.pause)
    db.close()
    emit(commits=commits)


def cache_reopen(args):
    """Reopen a persistent client cache of ``--size`` bytes: our FileCache
    or the reference's ClientCache, filled and timed by
    scripts/bench_cache_reopen.py's own functions."""
    if args.impl == 'zeo':
        # bench_cache_reopen imports zeo.client.cache.persistent at module level
        # and zeo.client needs zeo.protocol; neither is on the reference
        # interpreter's path.  Only that import uses them.
        sys.path.insert(0, os.path.join(REPO, 'packages', 'zeo.protocol', 'src'))
    sys.path.insert(0, HERE)
    import bench_cache_reopen as reopen
    if args.impl == 'ours':
        from zeo.client.cache.persistent import FileCache as Cache
    else:
        from ZEO.cache import ClientCache as Cache
    import tempfile
    workdir = tempfile.mkdtemp(prefix='zeo-bench-cache-', dir=args.dir)
    path = os.path.join(workdir, f'{args.impl}.zec')
    try:
        started = time.perf_counter()
        cache = Cache(path, args.size)
        reopen.fill(cache, args.records, args.record_size)
        cache.close()
        filled = time.perf_counter() - started
        median, best, count = reopen.time_reopen(
            lambda: Cache(path, args.size), args.runs)
        emit(reopen_ms=median * 1e3, best_ms=best * 1e3, records=count,
             file_mb=os.path.getsize(path) / 1e6, fill_s=filled)
    finally:
        import shutil
        shutil.rmtree(workdir)


def blob_upload(args):
    """Commit ``--count`` blobs of ``--size`` bytes, one per transaction;
    MB/s over the time spent in ``transaction.commit()``."""
    import transaction
    import ZODB.blob
    db = open_db(args, blob_dir=args.blob_dir)
    conn = db.open()
    root = conn.root()
    data = os.urandom(args.size)
    seconds = []
    for n in range(args.count):
        blob = ZODB.blob.Blob()
        with blob.open('w') as f:
            f.write(data)
        root[f'blob{n}'] = blob
        started = time.perf_counter()
        transaction.commit()
        seconds.append(time.perf_counter() - started)
    db.close()
    emit(mb_per_s=args.count * args.size / 1e6 / sum(seconds),
         blobs=args.count, size=args.size)


def blob_download(args):
    """From a fresh client with an empty blob cache, load each blob (ZODB
    asks the storage for the file then) and read it all; MB/s."""
    db = open_db(args, blob_dir=args.blob_dir)
    conn = db.open()
    root = conn.root()
    blobs = [root[f'blob{n}'] for n in range(args.count)]
    total = 0
    started = time.perf_counter()
    for blob in blobs:
        blob._p_activate()            # ZODB fetches the blob file here
        with blob.open('r') as f:
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                total += len(chunk)
    elapsed = time.perf_counter() - started
    db.close()
    if total != args.count * args.size:
        raise SystemExit(f'read {total} bytes, expected '
                         f'{args.count * args.size}')
    emit(mb_per_s=total / 1e6 / elapsed, blobs=args.count, size=args.size)


def idle(args):
    """Hold ``--count`` idle registered connections (zeo.server.admin's
    blocking protocol-5 client, whatever the server); the growth of the
    server's VmRSS per connection, in KB."""
    import resource
    from zeo.server.admin import AdminClient
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.count + 100
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            raise SystemExit(f'RLIMIT_NOFILE hard limit {hard} < {wanted}')
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    address = parse_addr(args.addr)
    # A few first connections, so one-time costs (lazy imports, buffers)
    # are paid before the baseline.
    held = [AdminClient(address) for _ in range(10)]
    time.sleep(0.5)
    before = proc_rss_kb(args.server_pid)
    started = time.perf_counter()
    for _ in range(args.count):
        held.append(AdminClient(address))
    opened = time.perf_counter() - started
    time.sleep(1.0)
    for client in held[-5:]:          # they all still answer
        client.call('lastTransaction')
    after = proc_rss_kb(args.server_pid)
    for client in held:
        client.close()
    emit(kb_per_connection=(after - before) / args.count,
         rss_before_kb=before, rss_after_kb=after, connections=args.count,
         open_seconds=opened)


WORKLOADS = {
    'populate': populate, 'ping': ping, 'commit': commit, 'cold': cold,
    'warm': warm, 'mixed': mixed, 'watch': watch,
    'commit_watched': commit_watched, 'cache_reopen': cache_reopen,
    'blob_upload': blob_upload, 'blob_download': blob_download, 'idle': idle,
}


def make_parser(workloads):
    """The command line of a client process running one of *workloads*."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('workload', choices=sorted(workloads))
    parser.add_argument('--impl', choices=['ours', 'zeo', 'relstorage'],
                        default='ours')
    parser.add_argument('--addr', help='HOST:PORT of the server')
    parser.add_argument('--dsn', help='PostgreSQL DSN (--impl relstorage)')
    parser.add_argument('--server-pid', type=int)
    parser.add_argument('--objects', type=int, default=10_000,
                        help='objects in the database')
    parser.add_argument('--count', type=int, default=1000)
    parser.add_argument('--per-txn', type=int, default=1)
    parser.add_argument('--prefetch', action='store_true')
    parser.add_argument('--tree', action='store_true')
    parser.add_argument('--passes', type=int, default=3)
    parser.add_argument('--duration', type=float, default=10.0)
    parser.add_argument('--reads', type=int, default=10)
    parser.add_argument('--write-every', type=int, default=5)
    parser.add_argument('--pause', type=float, default=0.1)
    parser.add_argument('--size', type=int, default=10_000_000)
    parser.add_argument('--records', type=int, default=200_000)
    parser.add_argument('--record-size', type=int, default=1000)
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--blob-dir')
    parser.add_argument('--path')
    parser.add_argument('--dir')
    return parser


def main(argv=None):
    args = make_parser(WORKLOADS).parse_args(argv)
    WORKLOADS[args.workload](args)


if __name__ == '__main__':
    main()
