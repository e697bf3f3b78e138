"""The workloads as the runner drives them, each with its metrics and
their goals (ours against ZEO 6.2), the sizes of a full and a quick run,
and the encodings each workload runs under (`plan`)."""
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass

from .processes import BENCH_FLOOR, BenchError, last_json, run_together

KINDS = ('ours', 'zeo')

#: The encodings a server can announce: pickle (the default of both
#: servers, what a ZEO client gets out of the box) and msgpack.
ENCODINGS = ('Z5', 'M5')
#: With ``--encoding both`` (the default) every workload runs under Z5 and
#: these, where the codec's cost shows most, under M5 too: the run grows by
#: a few workloads, not twice.
ALSO_M5 = ('ping', 'commit1', 'commit100', 'cold')


def plan(selected, encoding='both'):
    """``(scenario, encoding)`` pairs in the order they run: *encoding* is
    ``'Z5'``, ``'M5'`` (every selected workload in that one), or ``'both'``
    (all under Z5, then those of `ALSO_M5` under M5)."""
    if encoding in ENCODINGS:
        return [(s, encoding) for s in selected]
    if encoding != 'both':
        raise ValueError(f'encoding must be Z5, M5 or both, not {encoding!r}')
    return ([(s, 'Z5') for s in selected]
            + [(s, 'M5') for s in selected if s.name in ALSO_M5])


# -- what is measured ----------------------------------------------------------

@dataclass
class Metric:
    name: str
    title: str
    unit: str
    higher_is_better: bool
    #: ('ratio_max', g): ours/ZEO <= g; ('ratio_min', g): ours/ZEO >= g;
    #: ('ours_max', g): ours < g (an absolute budget, in `unit`);
    #: ('floor_max', g, key): ours <= g times the floor measured in the
    #: same run under *key* (``bench_floor.py``'s figures, in µs).
    goal: tuple

    @property
    def floor_key(self):
        """The floor this metric is measured against, or None."""
        return self.goal[2] if self.goal[0] == 'floor_max' else None

    def goal_text(self):
        kind, value = self.goal[:2]
        if kind == 'ratio_max':
            return f'<= {value:g}x'
        if kind == 'ratio_min':
            return f'>= {value:g}x'
        if kind == 'floor_max':
            return f'<= {value:g}x floor'
        return f'< {value:g} {self.unit}'

    def met(self, ours, zeo, floor=None):
        """Is the goal met? None when what it needs was not measured;
        *floor* is the run's floor figures (``{key: µs}``)."""
        if ours is None:
            return None
        kind, value = self.goal[:2]
        if kind == 'ours_max':
            return ours < value
        if kind == 'floor_max':
            base = (floor or {}).get(self.floor_key)
            return ours / base <= value if base else None
        if not zeo:
            return None
        ratio = ours / zeo
        return ratio <= value if kind == 'ratio_max' else ratio >= value

    def better(self, ours, zeo):
        """How many times better ours is (>1: better), for the plot."""
        ratio = ours / zeo
        return ratio if self.higher_is_better else 1 / ratio

    def goal_better(self, zeo, floor=None):
        """The goal as "times better than ZEO" for the plot, or None."""
        kind, value = self.goal[:2]
        if kind == 'ratio_min':
            return value
        if kind == 'ratio_max':
            return 1 / value
        if kind == 'floor_max':
            base = (floor or {}).get(self.floor_key)
            return zeo / (value * base) if zeo and base else None
        return zeo / value if zeo else None


@dataclass
class Scenario:
    name: str
    doc: str
    metrics: list
    run: object = None
    needs_server: bool = True


# -- sizes ---------------------------------------------------------------------

FULL = dict(
    objects=10_000, pings=20_000, commit1=2000, commit100=200, warm_passes=7,
    clients=16, mixed_seconds=10.0, watchers=16, fanout_commits=20,
    fanout_pause=0.2, cache_bytes=200 * 1024 * 1024, cache_records=200_000,
    cache_runs=5, blob_size=10_000_000, blobs=10, idle=1000,
    floor_count=20_000, timeout=900)
QUICK = dict(
    objects=2000, pings=5000, commit1=500, commit100=50, warm_passes=10,
    clients=4, mixed_seconds=4.0, watchers=4, fanout_commits=10,
    fanout_pause=0.1, cache_bytes=20 * 1024 * 1024, cache_records=20_000,
    cache_runs=3, blob_size=10_000_000, blobs=4, idle=300,
    floor_count=5000, timeout=300)


# -- the workloads, as the runner drives them ----------------------------------

def run_ping(bench, kind, encoding):
    with bench.server(kind, encoding) as server:
        out = bench.client(kind, 'ping', '--addr', server.addr,
                           '--server-pid', server.pid,
                           '--count', bench.sizes['pings'],
                           directory=server.directory)
    if not out.get('greeting', '').startswith(encoding):
        raise BenchError(f"the {kind} server announced {out.get('greeting')!r:.50},"
                         f" not {encoding}")
    return {'ping': out['ping_us'], 'server_cpu': out['server_cpu_us']}, out


def run_commit(per_txn, size_key, metric, result_key):
    def run(bench, kind, encoding):
        with bench.server(kind, encoding) as server:
            out = bench.client(kind, 'commit', '--addr', server.addr,
                               '--per-txn', per_txn,
                               '--count', bench.sizes[size_key],
                               directory=server.directory)
        return {metric: out[result_key]}, out
    return run


def run_cold(prefetch, metric, tree=False):
    def run(bench, kind, encoding):
        with bench.server(kind, encoding) as server:
            extra = ['--prefetch'] if prefetch else []
            extra += ['--tree'] if tree else []
            out = bench.client(kind, 'cold', '--addr', server.addr, *extra,
                               directory=server.directory)
        return {metric: out['objects_per_s']}, out
    return run


def run_warm(bench, kind, encoding):
    with bench.server(kind, encoding) as server:
        out = bench.client(kind, 'warm', '--addr', server.addr,
                           '--passes', bench.sizes['warm_passes'],
                           directory=server.directory)
    return {'warm_read': out['objects_per_s']}, out


def run_mixed(bench, kind, encoding):
    sizes = bench.sizes
    with bench.server(kind, encoding) as server:
        workers = bench.workers(kind, 'mixed', sizes['clients'],
                                '--addr', server.addr,
                                '--duration', sizes['mixed_seconds'],
                                directory=server.directory)
        results = run_together(workers, sizes['timeout'],
                               sizes['mixed_seconds'] + sizes['timeout'])
    return {'clients': sum(r['txns'] / r['seconds'] for r in results)}, results


def run_fanout(bench, kind, encoding):
    sizes = bench.sizes
    with bench.server(kind, encoding) as server:
        watchers = bench.workers(kind, 'watch', sizes['watchers'],
                                 '--addr', server.addr,
                                 directory=server.directory)
        committer, = bench.workers(kind, 'commit_watched', 1,
                                   '--addr', server.addr,
                                   '--count', sizes['fanout_commits'],
                                   '--pause', sizes['fanout_pause'],
                                   directory=server.directory)
        try:
            for worker in watchers + [committer]:
                worker.wait_ready(sizes['timeout'])
            committer.send('go')
            commits = committer.result(sizes['timeout'])['commits']
            time.sleep(0.5)
            for worker in watchers:
                worker.send('stop')
            seen = [w.result(sizes['timeout'])['seen'] for w in watchers]
        finally:
            for worker in watchers + [committer]:
                worker.close()
    latencies = []
    firsts = []
    for tid, started, _ in commits:
        arrivals = [s.get(tid) for s in seen]
        if None in arrivals:
            raise BenchError(f'a watcher never saw the invalidation of {tid}')
        latencies.append(max(arrivals) - started)
        firsts.append(min(arrivals) - started)
    return ({'fanout': statistics.median(latencies) * 1e3},
            {'latencies_ms': [t * 1e3 for t in latencies],
             # When the first watcher saw it: the commit's share.
             'first_arrival_ms': [t * 1e3 for t in firsts]})


def run_cache_reopen(bench, kind, encoding):
    """No server: *encoding* does not matter."""
    sizes = bench.sizes
    directory = bench.workdir / f'cache-{kind}'
    directory.mkdir(exist_ok=True)
    try:
        out = bench.client(kind, 'cache_reopen',
                           '--size', sizes['cache_bytes'],
                           '--records', sizes['cache_records'],
                           '--runs', sizes['cache_runs'],
                           '--dir', directory, directory=directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {'cache_reopen': out['reopen_ms']}, out


def run_blobs(bench, kind, encoding):
    sizes = bench.sizes
    with bench.server(kind, encoding) as server:
        common = ['--addr', server.addr, '--size', sizes['blob_size'],
                  '--count', sizes['blobs']]
        up = bench.client(kind, 'blob_upload', *common,
                          '--blob-dir', server.directory / 'client-blobs-up',
                          directory=server.directory)
        down = bench.client(kind, 'blob_download', *common,
                            '--blob-dir', server.directory / 'client-blobs-down',
                            directory=server.directory)
    return ({'blob_upload': up['mb_per_s'], 'blob_download': down['mb_per_s']},
            {'upload': up, 'download': down})


def run_idle(bench, kind, encoding):
    # Ours holds at most max-connections-per-address (1,000) from one IP
    # address by default: raised here as an operator would for so many.
    keys = {'max-connections-per-address': bench.sizes['idle'] + 100}
    with bench.server(kind, encoding, zeo_keys=keys) as server:
        # The same raw protocol client (bin/py, zeo.server.admin) for both.
        out = bench.client(kind, 'idle', '--addr', server.addr,
                           '--server-pid', server.pid,
                           '--count', bench.sizes['idle'],
                           directory=server.directory, interpreter='ours')
    return {'idle': out['kb_per_connection']}, out


SCENARIOS = [
    Scenario('ping', 'round trip of ping; server CPU per call', [
        # Against the floor of the same run: a blocking echo's round trip,
        # the uvloop echo server's CPU per round trip.
        Metric('ping', 'ping latency', 'µs', False,
               ('floor_max', 1.15, 'blocking')),
        Metric('server_cpu', 'server CPU per ping', 'µs', False,
               ('floor_max', 1.1, 'uvloop_buffered_server_cpu'))], run_ping),
    Scenario('commit1', 'commits of 1 object per transaction', [
        Metric('commit1', 'commit 1 object', 'txn/s', True, ('ratio_min', 2))],
        run_commit(1, 'commit1', 'commit1', 'txn_per_s')),
    Scenario('commit100', 'commits of 100 objects per transaction', [
        Metric('commit100', 'commit 100 objects', 'obj/s', True,
               ('ratio_min', 1.5))],
        run_commit(100, 'commit100', 'commit100', 'objects_per_s')),
    Scenario('cold', 'cold reads through ZODB, no prefetch', [
        Metric('cold_read', 'cold read', 'obj/s', True, ('ratio_min', 3))],
        run_cold(False, 'cold_read')),
    Scenario('cold_tree', 'cold reads through an OOBTree, no prefetch', [
        Metric('cold_tree', 'cold read, BTree', 'obj/s', True, ('ratio_min', 3))],
        run_cold(False, 'cold_tree', tree=True)),
    Scenario('prefetch', 'cold reads with Connection.prefetch', [
        Metric('cold_prefetch', 'cold read, prefetch', 'obj/s', True,
               ('ratio_min', 2))], run_cold(True, 'cold_prefetch')),
    Scenario('warm', 'warm reads: client cache full, pickle cache empty', [
        Metric('warm_read', 'warm read', 'obj/s', True, ('ratio_min', 1))],
        run_warm),
    Scenario('clients', 'many client processes: random loads, small commits', [
        Metric('clients', 'N clients, aggregate', 'txn/s', True,
               ('ratio_min', 2))], run_mixed),
    Scenario('fanout', 'invalidation fan-out to N watchers', [
        Metric('fanout', 'invalidation fan-out', 'ms', False,
               ('ratio_max', 0.5))], run_fanout),
    Scenario('cache_reopen', 'reopening a persistent client cache', [
        Metric('cache_reopen', 'persistent cache reopen', 'ms', False,
               ('ratio_max', 0.1))], run_cache_reopen, needs_server=False),
    Scenario('blobs', 'blob upload and download', [
        Metric('blob_upload', 'blob upload', 'MB/s', True, ('ratio_min', 1.5)),
        Metric('blob_download', 'blob download', 'MB/s', True,
               ('ratio_min', 1.5))], run_blobs),
    Scenario('idle', 'server memory per idle connection', [
        Metric('idle', 'server memory / idle conn', 'KB', False,
               ('ours_max', 50))], run_idle),
]
BY_NAME = {s.name: s for s in SCENARIOS}


def titles(sizes):
    """Metric titles with this run's sizes in them."""
    s = sizes
    cache_mb = s['cache_bytes'] // (1024 * 1024)
    return {
        'cold_read': f"cold read {s['objects']:,} objects",
        'cold_prefetch': f"cold read {s['objects']:,}, prefetch",
        'cold_tree': f"cold read {s['objects']:,}, BTree",
        'warm_read': f"warm read {s['objects']:,} objects",
        'clients': f"{s['clients']} clients, aggregate",
        'fanout': f"fan-out to {s['watchers']} clients",
        'cache_reopen': f"reopen {cache_mb} MB cache",
        'blob_upload': f"blob upload {s['blob_size'] // 1_000_000} MB",
        'blob_download': f"blob download {s['blob_size'] // 1_000_000} MB",
        'idle': f"server memory / idle conn ({s['idle']:,})",
    }


def run_floor(bench):
    command = [*bench.python('ours'), str(BENCH_FLOOR),
               '--count', str(bench.sizes['floor_count']), '--repeat', '5']
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise BenchError(f'floor failed:\n{done.stderr[-2000:]}')
    return last_json(done.stdout)['floor_us']
