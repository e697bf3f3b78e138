#!/usr/bin/env python
"""Benchmark zeo against the reference ZEO 6.2, in one run, on this machine.

For each workload the runner starts a server as a separate process --
ours (``bin/runzeo``) or the reference (``bin/reference-runzeo``), both on
a FileStorage copied from the same template in the same temporary
directory, both speaking msgpack (M5) -- drives it with client processes
(``scripts/bench_client.py``: ``bin/py`` with ``zeo.client`` for ours,
``bin/reference-py`` with ``ZEO.ClientStorage`` for the reference), stops
it, and does the same for the other kind; the order alternates from one
repeat to the next so machine noise hits both.  It prints, per workload,
the medians, the ratio ours/ZEO and whether the goal is met, plus the
floor (``scripts/bench_floor.py``: a length-prefixed echo over loopback),
and can write everything as JSON and draw a PNG of the ratios.

Usage::

    bin/py scripts/benchmark.py [--quick] [--only NAME ...] [--repeat N]
                                [--json out.json] [--plot out.png]

Only the standard library is used here; the workloads are in
bench_client.py.  Absolute times on a shared machine are noisy: trust
the ratios of one run.
"""
import argparse
import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
BIN = REPO / 'bin'
BENCH_CLIENT = SCRIPTS / 'bench_client.py'
BENCH_FLOOR = SCRIPTS / 'bench_floor.py'
KINDS = ('ours', 'zeo')
LABELS = {'ours': 'ours', 'zeo': 'ZEO 6.2'}


class BenchError(Exception):
    """One run of one workload failed; the others go on."""


# -- what is measured ----------------------------------------------------------

@dataclass
class Metric:
    name: str
    title: str
    unit: str
    higher_is_better: bool
    #: ('ratio_max', g): ours/ZEO <= g; ('ratio_min', g): ours/ZEO >= g;
    #: ('ours_max', g): ours < g (an absolute budget, in `unit`).
    goal: tuple

    def goal_text(self):
        kind, value = self.goal
        if kind == 'ratio_max':
            return f'<= {value:g}x'
        if kind == 'ratio_min':
            return f'>= {value:g}x'
        return f'< {value:g} {self.unit}'

    def met(self, ours, zeo):
        if ours is None:
            return None
        kind, value = self.goal
        if kind == 'ours_max':
            return ours < value
        if not zeo:
            return None
        ratio = ours / zeo
        return ratio <= value if kind == 'ratio_max' else ratio >= value

    def better(self, ours, zeo):
        """How many times better ours is (>1: better), for the plot."""
        ratio = ours / zeo
        return ratio if self.higher_is_better else 1 / ratio

    def goal_better(self, zeo):
        kind, value = self.goal
        if kind == 'ratio_min':
            return value
        if kind == 'ratio_max':
            return 1 / value
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


# -- processes -----------------------------------------------------------------

def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def tail(path, lines=15):
    try:
        text = Path(path).read_text(errors='replace')
    except OSError:
        return ''
    return '\n'.join(text.splitlines()[-lines:])


def last_json(text):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith('{'):
            return json.loads(line)
    raise ValueError('no JSON line')


def listening(port):
    """Is something listening on 127.0.0.1:*port*?  Read from
    /proc/net/tcp, without connecting, so that the connections a server
    has seen are only the workload's (the idle-memory workload counts
    them).  Elsewhere than Linux, connect."""
    try:
        with open('/proc/net/tcp') as f:
            lines = f.readlines()[1:]
    except OSError:
        try:
            socket.create_connection(('127.0.0.1', port), 0.5).close()
            return True
        except OSError:
            return False
    for line in lines:
        fields = line.split()
        address, state = fields[1], fields[3]
        if state == '0A' and int(address.rsplit(':', 1)[1], 16) == port:
            return True                 # 0A: TCP_LISTEN
    return False


def reference_env():
    """The environment for the reference's processes.  ZEO imports
    msgpack only when a connection turns out to be M5, and its msgpack
    extra names a long-gone distribution: if the reference interpreter
    cannot import msgpack (a buildout whose [reference] part lacks it),
    add the msgpack egg."""
    env = dict(os.environ)
    probe = subprocess.run([str(BIN / 'reference-py'), '-c', 'import msgpack'],
                           capture_output=True)
    if probe.returncode == 0:
        return env
    eggs = sorted(REPO.glob('eggs/**/msgpack-*.egg'))
    if not eggs:
        raise SystemExit('the reference interpreter cannot import msgpack '
                         'and no msgpack egg was found under eggs/')
    env['PYTHONPATH'] = os.pathsep.join(
        [str(eggs[-1])] + [p for p in [env.get('PYTHONPATH')] if p])
    return env


class Worker:
    """A client process that talks lines with the runner (READY / go)."""

    def __init__(self, command, env, stderr_path):
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, 'w')
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, env=env, text=True)
        self.lines = queue.Queue()
        self.output = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(f'no READY within {timeout} s') from None
            if line is None:
                self.process.wait()
                raise BenchError(f'client exited ({self.process.returncode}) '
                                 f'before it was ready:\n{tail(self.stderr_path)}')
            if line.strip() == 'READY':
                return

    def send(self, line):
        self.process.stdin.write(line + '\n')
        self.process.stdin.flush()

    def result(self, timeout):
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f'client did not finish within {timeout} s') from None
        if self.process.returncode != 0:
            raise BenchError(f'client failed ({self.process.returncode}):\n'
                             f'{tail(self.stderr_path)}')
        self.reader.join(10)           # everything it printed is read
        try:
            return last_json(''.join(self.output))
        except ValueError:
            raise BenchError(f'client printed no result:\n'
                             f'{tail(self.stderr_path)}') from None

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for f in (self.process.stdin, self._stderr):
            with contextlib.suppress(OSError):
                f.close()


class Server:
    """One server process on a copy of the template FileStorage."""

    def __init__(self, bench, kind, directory):
        self.bench = bench
        self.kind = kind
        self.directory = directory
        self.port = free_port()
        self.addr = f'127.0.0.1:{self.port}'
        self.log = directory / 'server.log'
        self.process = None

    def start(self):
        data = self.directory / 'Data.fs'
        blobs = self.directory / 'blobs'
        template = self.bench.template
        shutil.copyfile(template, data)
        if Path(f'{template}.index').exists():
            shutil.copyfile(f'{template}.index', f'{data}.index')
        if self.kind == 'ours':
            command = [str(BIN / 'runzeo'), '-a', self.addr, '-f', str(data),
                       '--blob-dir', str(blobs)]
            env = None
        else:
            conf = self.directory / 'zeo.conf'
            conf.write_text(textwrap.dedent(f"""\
                <zeo>
                  address {self.addr}
                  msgpack true
                </zeo>
                <filestorage 1>
                  path {data}
                  blob-dir {blobs}
                </filestorage>
                """))
            command = [str(BIN / 'reference-runzeo'), '-C', str(conf)]
            env = self.bench.ref_env
        with open(self.log, 'w') as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=self.directory)
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise BenchError(f'{self.kind} server exited '
                                 f'({self.process.returncode}):\n{tail(self.log)}')
            if listening(self.port):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(f'{self.kind} server not listening after '
                                 f'60 s:\n{tail(self.log)}')
            time.sleep(0.05)

    @property
    def pid(self):
        return self.process.pid

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Bench:
    """The state of one benchmark invocation."""

    def __init__(self, sizes, workdir, verbose=True):
        self.sizes = sizes
        self.workdir = workdir
        self.verbose = verbose
        self.template = workdir / 'template' / 'Data.fs'
        self.ref_env = reference_env()
        self.runs = 0

    def say(self, message):
        if self.verbose:
            print(message, file=sys.stderr, flush=True)

    def python(self, kind):
        return [str(BIN / ('py' if kind == 'ours' else 'reference-py'))]

    def env(self, kind):
        return None if kind == 'ours' else self.ref_env

    def command(self, kind, workload, *args):
        return [*self.python(kind), str(BENCH_CLIENT), workload,
                '--impl', kind, '--objects', str(self.sizes['objects']),
                *map(str, args)]

    def make_template(self):
        self.template.parent.mkdir()
        self.client('ours', 'populate', '--path', self.template,
                    directory=self.template.parent)

    @contextlib.contextmanager
    def server(self, kind):
        self.runs += 1
        directory = self.workdir / f'run{self.runs:03d}-{kind}'
        directory.mkdir()
        server = Server(self, kind, directory)
        try:
            yield server.start()
        finally:
            server.stop()
            shutil.rmtree(directory, ignore_errors=True)

    def client(self, kind, workload, *args, directory, interpreter=None):
        """Run one client process to the end; its JSON result."""
        command = self.command(kind, workload, *args)
        if interpreter is not None:
            command[:1] = self.python(interpreter)
        stderr_path = directory / f'{workload}-{kind}.err'
        with open(stderr_path, 'w') as stderr:
            try:
                done = subprocess.run(
                    command, stdout=subprocess.PIPE, stderr=stderr, text=True,
                    env=self.env(interpreter or kind),
                    timeout=self.sizes['timeout'])
            except subprocess.TimeoutExpired:
                raise BenchError(f'{workload} timed out') from None
        if done.returncode != 0:
            raise BenchError(f'{workload} client failed ({done.returncode}):\n'
                             f'{tail(stderr_path)}')
        try:
            return last_json(done.stdout)
        except ValueError:
            raise BenchError(f'{workload} client printed no result:\n'
                             f'{tail(stderr_path)}') from None

    def workers(self, kind, workload, count, *args, directory):
        return [Worker(self.command(kind, workload, *args), self.env(kind),
                       directory / f'{workload}-{kind}-{n}.err')
                for n in range(count)]


# -- the workloads, as the runner drives them ----------------------------------

def run_ping(bench, kind):
    with bench.server(kind) as server:
        out = bench.client(kind, 'ping', '--addr', server.addr,
                           '--server-pid', server.pid,
                           '--count', bench.sizes['pings'],
                           directory=server.directory)
    return {'ping': out['ping_us'], 'server_cpu': out['server_cpu_us']}, out


def run_commit(per_txn, size_key, metric, result_key):
    def run(bench, kind):
        with bench.server(kind) as server:
            out = bench.client(kind, 'commit', '--addr', server.addr,
                               '--per-txn', per_txn,
                               '--count', bench.sizes[size_key],
                               directory=server.directory)
        return {metric: out[result_key]}, out
    return run


def run_cold(prefetch, metric):
    def run(bench, kind):
        with bench.server(kind) as server:
            extra = ['--prefetch'] if prefetch else []
            out = bench.client(kind, 'cold', '--addr', server.addr, *extra,
                               directory=server.directory)
        return {metric: out['objects_per_s']}, out
    return run


def run_warm(bench, kind):
    with bench.server(kind) as server:
        out = bench.client(kind, 'warm', '--addr', server.addr,
                           '--passes', bench.sizes['warm_passes'],
                           directory=server.directory)
    return {'warm_read': out['objects_per_s']}, out


def run_mixed(bench, kind):
    sizes = bench.sizes
    with bench.server(kind) as server:
        workers = bench.workers(kind, 'mixed', sizes['clients'],
                                '--addr', server.addr,
                                '--duration', sizes['mixed_seconds'],
                                directory=server.directory)
        try:
            for worker in workers:
                worker.wait_ready(sizes['timeout'])
            for worker in workers:
                worker.send('go')
            results = [w.result(sizes['mixed_seconds'] + sizes['timeout'])
                       for w in workers]
        finally:
            for worker in workers:
                worker.close()
    return {'clients': sum(r['txns'] / r['seconds'] for r in results)}, results


def run_fanout(bench, kind):
    sizes = bench.sizes
    with bench.server(kind) as server:
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
    for tid, started in commits:
        arrivals = [s.get(tid) for s in seen]
        if None in arrivals:
            raise BenchError(f'a watcher never saw the invalidation of {tid}')
        latencies.append(max(arrivals) - started)
        firsts.append(min(arrivals) - started)
    return ({'fanout': statistics.median(latencies) * 1e3},
            {'latencies_ms': [t * 1e3 for t in latencies],
             # When the first watcher saw it: the commit's share.
             'first_arrival_ms': [t * 1e3 for t in firsts]})


def run_cache_reopen(bench, kind):
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


def run_blobs(bench, kind):
    sizes = bench.sizes
    with bench.server(kind) as server:
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


def run_idle(bench, kind):
    with bench.server(kind) as server:
        # The same raw protocol client (bin/py, zeo.server.admin) for both.
        out = bench.client(kind, 'idle', '--addr', server.addr,
                           '--server-pid', server.pid,
                           '--count', bench.sizes['idle'],
                           directory=server.directory, interpreter='ours')
    return {'idle': out['kb_per_connection']}, out


SCENARIOS = [
    Scenario('ping', 'round trip of ping; server CPU per call', [
        Metric('ping', 'ping latency', 'µs', False, ('ratio_max', 0.33)),
        Metric('server_cpu', 'server CPU per ping', 'µs', False,
               ('ratio_max', 0.4))], run_ping),
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
        'warm_read': f"warm read {s['objects']:,} objects",
        'clients': f"{s['clients']} clients, aggregate",
        'fanout': f"fan-out to {s['watchers']} clients",
        'cache_reopen': f"reopen {cache_mb} MB cache",
        'blob_upload': f"blob upload {s['blob_size'] // 1_000_000} MB",
        'blob_download': f"blob download {s['blob_size'] // 1_000_000} MB",
        'idle': f"server memory / idle conn ({s['idle']:,})",
    }


# -- running -------------------------------------------------------------------

def run_floor(bench):
    command = [*bench.python('ours'), str(BENCH_FLOOR),
               '--count', str(bench.sizes['floor_count']), '--repeat', '5']
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise BenchError(f'floor failed:\n{done.stderr[-2000:]}')
    return last_json(done.stdout)['floor_us']


def raise_nofile_limit(wanted):
    """Servers inherit our RLIMIT_NOFILE: let them hold the idle
    connections."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY:
            wanted = min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def median_or_none(values):
    return statistics.median(values) if values else None


def run(args):
    sizes = dict(QUICK if args.quick else FULL)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    selected = [s for s in SCENARIOS if not args.only or s.name in args.only]
    workdir = Path(tempfile.mkdtemp(prefix='zeo-benchmark-', dir=args.tmpdir))
    started = time.time()
    load_before = os.getloadavg()
    bench = Bench(sizes, workdir, verbose=not args.silent)
    runs = {m.name: {k: [] for k in KINDS} for s in selected for m in s.metrics}
    errors = {m.name: {k: [] for k in KINDS} for s in selected for m in s.metrics}
    details = {s.name: {k: [] for k in KINDS} for s in selected}
    floors = []
    raise_nofile_limit(sizes['idle'] + 200)
    try:
        if any(s.needs_server for s in selected):
            bench.say(f'populating a FileStorage with {sizes["objects"]:,} objects')
            bench.make_template()
        for scenario in selected:
            for number in range(repeat):
                order = KINDS if number % 2 == 0 else KINDS[::-1]
                for kind in order:
                    began = time.perf_counter()
                    try:
                        values, raw = scenario.run(bench, kind)
                    except BenchError as error:
                        bench.say(f'[{scenario.name}] {kind} run {number + 1}: '
                                  f'FAILED: {error}')
                        for metric in scenario.metrics:
                            errors[metric.name][kind].append(str(error))
                        continue
                    for name, value in values.items():
                        runs[name][kind].append(value)
                    details[scenario.name][kind].append(raw)
                    shown = ', '.join(f'{k}={v:.4g}' for k, v in values.items())
                    bench.say(f'[{scenario.name}] {kind} run {number + 1}/'
                              f'{repeat}: {shown} '
                              f'({time.perf_counter() - began:.1f} s)')
        if not args.no_floor:
            for number in range(repeat):
                try:
                    floors.append(run_floor(bench))
                except BenchError as error:
                    bench.say(str(error))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    names = titles(sizes)
    results = []
    for scenario in selected:
        for metric in scenario.metrics:
            ours = median_or_none(runs[metric.name]['ours'])
            zeo = median_or_none(runs[metric.name]['zeo'])
            ratio = ours / zeo if ours is not None and zeo else None
            results.append({
                'name': metric.name, 'scenario': scenario.name,
                'title': names.get(metric.name, metric.title),
                'unit': metric.unit, 'higher_is_better': metric.higher_is_better,
                'ours': ours, 'zeo': zeo, 'ratio': ratio,
                'goal': list(metric.goal), 'goal_text': metric.goal_text(),
                'met': metric.met(ours, zeo),
                'runs': runs[metric.name],
                'errors': {k: v for k, v in errors[metric.name].items() if v},
            })
    floor = {key: statistics.median(f[key] for f in floors)
             for key in (floors[0] if floors else {})}
    return {
        'benchmark': 'zeo vs ZEO 6.2 (both msgpack M5, FileStorage)',
        'quick': args.quick, 'repeat': repeat, 'sizes': sizes,
        'started': time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(started)),
        'seconds': round(time.time() - started, 1),
        'machine': {'cpus': os.cpu_count(), 'python': sys.version.split()[0],
                    'loadavg_before': load_before,
                    'loadavg_after': os.getloadavg()},
        'results': results, 'floor_us': floor, 'floor_runs': floors,
        'details': details,
    }


# -- output --------------------------------------------------------------------

def fmt(value):
    if value is None:
        return '-'
    if abs(value) >= 1000:
        return f'{value:,.0f}'
    if abs(value) >= 100:
        return f'{value:.0f}'
    if abs(value) >= 10:
        return f'{value:.1f}'
    return f'{value:.2f}'


def table(report):
    rows = [('workload', 'unit', 'ours', 'ZEO 6.2', 'ours/ZEO', 'goal', 'met?')]
    for r in report['results']:
        met = {True: 'yes', False: 'NO', None: '?'}[r['met']]
        if r['errors']:
            met += ' (errors: ' + ', '.join(r['errors']) + ')'
        ratio = f"{r['ratio']:.2f}x" if r['ratio'] is not None else '-'
        rows.append((r['title'], r['unit'], fmt(r['ours']), fmt(r['zeo']),
                     ratio, r['goal_text'], met))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [cell.ljust(w) if i < 2 or i == 6 else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append('  '.join(cells).rstrip())
        if n == 0:
            lines.append('  '.join('-' * w for w in widths))
    floor = report['floor_us']
    if floor:
        lines.append('')
        lines.append('floor, length-prefixed echo over 127.0.0.1 (µs per round trip):')
        for key, label in (('blocking', 'blocking sockets (thread server)'),
                           ('blocking_server_cpu',
                            'blocking server CPU per round trip'),
                           ('asyncio', 'asyncio server and asyncio client'),
                           ('asyncio_server_blocking_client',
                            'asyncio server, blocking client'),
                           ('asyncio_server_cpu',
                            'asyncio server CPU per round trip'),
                           ('asyncio_buffered',
                            'asyncio, BufferedProtocol both sides'),
                           ('asyncio_buffered_server_cpu',
                            'same, server CPU per round trip'),
                           ('uvloop_buffered',
                            'uvloop, BufferedProtocol both sides'),
                           ('uvloop_buffered_server_cpu',
                            'same, server CPU per round trip')):
            if key in floor:
                lines.append(f'  {label:36} {floor[key]:8.1f}')
    mode = 'quick' if report['quick'] else 'full'
    lines.append('')
    lines.append(f"{mode} run, medians of {report['repeat']} run(s) each, "
                 f"{report['seconds']:.0f} s, load average before "
                 f"{report['machine']['loadavg_before'][0]:.2f}")
    return '\n'.join(lines)


# -- a tiny PNG plot (no matplotlib) ---------------------------------------------

# 5x7 glyphs, one 5-bit row each, top to bottom.
FONT = {
    ' ': (0, 0, 0, 0, 0, 0, 0),
    '0': (14, 17, 19, 21, 25, 17, 14), '1': (4, 12, 4, 4, 4, 4, 14),
    '2': (14, 17, 1, 2, 4, 8, 31), '3': (31, 2, 4, 2, 1, 17, 14),
    '4': (2, 6, 10, 18, 31, 2, 2), '5': (31, 16, 30, 1, 1, 17, 14),
    '6': (6, 8, 16, 30, 17, 17, 14), '7': (31, 1, 2, 4, 8, 8, 8),
    '8': (14, 17, 17, 14, 17, 17, 14), '9': (14, 17, 17, 15, 1, 2, 12),
    'A': (14, 17, 17, 17, 31, 17, 17), 'B': (30, 17, 17, 30, 17, 17, 30),
    'C': (14, 17, 16, 16, 16, 17, 14), 'D': (28, 18, 17, 17, 17, 18, 28),
    'E': (31, 16, 16, 30, 16, 16, 31), 'F': (31, 16, 16, 30, 16, 16, 16),
    'G': (14, 17, 16, 23, 17, 17, 15), 'H': (17, 17, 17, 31, 17, 17, 17),
    'I': (14, 4, 4, 4, 4, 4, 14), 'J': (7, 2, 2, 2, 2, 18, 12),
    'K': (17, 18, 20, 24, 20, 18, 17), 'L': (16, 16, 16, 16, 16, 16, 31),
    'M': (17, 27, 21, 21, 17, 17, 17), 'N': (17, 17, 25, 21, 19, 17, 17),
    'O': (14, 17, 17, 17, 17, 17, 14), 'P': (30, 17, 17, 30, 16, 16, 16),
    'Q': (14, 17, 17, 17, 21, 18, 13), 'R': (30, 17, 17, 30, 20, 18, 17),
    'S': (15, 16, 16, 14, 1, 1, 30), 'T': (31, 4, 4, 4, 4, 4, 4),
    'U': (17, 17, 17, 17, 17, 17, 14), 'V': (17, 17, 17, 17, 17, 10, 4),
    'W': (17, 17, 17, 21, 21, 21, 10), 'X': (17, 17, 10, 4, 10, 17, 17),
    'Y': (17, 17, 17, 10, 4, 4, 4), 'Z': (31, 1, 2, 4, 8, 16, 31),
    'x': (0, 0, 17, 10, 4, 10, 17),
    '.': (0, 0, 0, 0, 0, 12, 12), ',': (0, 0, 0, 0, 12, 4, 8),
    ':': (0, 12, 12, 0, 12, 12, 0), '/': (0, 1, 2, 4, 8, 16, 0),
    '-': (0, 0, 0, 31, 0, 0, 0), '+': (0, 4, 4, 31, 4, 4, 0),
    '(': (2, 4, 8, 8, 8, 4, 2), ')': (8, 4, 2, 2, 2, 4, 8),
    '%': (24, 25, 2, 4, 8, 19, 3), '<': (2, 4, 8, 16, 8, 4, 2),
    '>': (8, 4, 2, 1, 2, 4, 8), '=': (0, 0, 31, 0, 31, 0, 0),
    '_': (0, 0, 0, 0, 0, 0, 31), "'": (4, 4, 8, 0, 0, 0, 0),
    '?': (14, 17, 1, 2, 4, 0, 4),
}


class Canvas:
    def __init__(self, width, height, color=(255, 255, 255)):
        self.width, self.height = width, height
        self.rows = [bytearray(bytes(color) * width) for _ in range(height)]

    def rect(self, x0, y0, x1, y1, color):
        x0, x1 = max(0, min(x0, x1)), min(self.width, max(x0, x1))
        y0, y1 = max(0, min(y0, y1)), min(self.height, max(y0, y1))
        if x1 <= x0:
            return
        span = bytes(color) * (x1 - x0)
        for y in range(y0, y1):
            self.rows[y][x0 * 3:x1 * 3] = span

    def text(self, x, y, text, color=(0, 0, 0), scale=2):
        """Draw *text* (upper-cased, except a small x) at top-left x, y."""
        for char in text.replace('µ', 'u'):
            glyph = FONT.get(char if char == 'x' else char.upper(), FONT['?'])
            for row, bits in enumerate(glyph):
                for col in range(5):
                    if bits & (16 >> col):
                        self.rect(x + col * scale, y + row * scale,
                                  x + (col + 1) * scale, y + (row + 1) * scale,
                                  color)
            x += 6 * scale
        return x

    def png(self):
        raw = b''.join(b'\0' + bytes(row) for row in self.rows)

        def chunk(kind, data):
            return (struct.pack('>I', len(data)) + kind + data
                    + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))
        header = struct.pack('>IIBBBBB', self.width, self.height, 8, 2, 0, 0, 0)
        return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header)
                + chunk(b'IDAT', zlib.compress(raw, 9)) + chunk(b'IEND', b''))


def plot(report, path):
    """Horizontal bars: how many times better ours is than ZEO 6.2 (log2
    scale, right is better), with each goal as a black tick."""
    import math
    metrics = {m.name: m for s in SCENARIOS for m in s.metrics}
    results = report['results']
    row, top, left, width = 36, 70, 420, 480
    extra = 2 if report['floor_us'] else 0
    canvas = Canvas(1180, top + row * len(results) + 70 + 22 * extra)
    green, red, grey = (46, 160, 67), (214, 39, 40), (150, 150, 150)
    span = 4                                   # 1/16 .. 16

    def x_of(factor):
        value = max(-span, min(span, math.log2(factor)))
        return int(left + (value + span) / (2 * span) * width)

    mode = 'QUICK RUN' if report['quick'] else 'FULL RUN'
    canvas.text(10, 10, f'ZEO (OURS) VS ZEO 6.2, SAME MACHINE, {mode}: '
                        f'HOW MANY TIMES BETTER (LOG SCALE)')
    canvas.text(10, 34, 'BAR: MEASURED, BLACK TICK: GOAL, '
                        'GREEN: MET, RED: NOT MET', color=(80, 80, 80))
    bottom = top + row * len(results)
    for power in range(-span, span + 1):
        x = x_of(2 ** power)
        canvas.rect(x, top - 4, x + 1, bottom, (225, 225, 225)
                    if power else (0, 0, 0))
        label = f'{2 ** power:g}' if power >= 0 else f'1/{2 ** -power}'
        canvas.text(x - len(label) * 6, bottom + 8, label)
    canvas.text(left + width // 2 - 150, bottom + 32,
                '<- WORSE      x BETTER ->', color=(80, 80, 80))
    for n, r in enumerate(results):
        y = top + n * row
        canvas.text(10, y + 10, r['title'][:33])
        metric = metrics[r['name']]
        if r['ours'] is None or not r['zeo']:
            canvas.text(left + 10, y + 10, 'NO DATA', color=grey)
            continue
        better = metric.better(r['ours'], r['zeo'])
        goal = metric.goal_better(r['zeo'])
        color = green if r['met'] else red
        canvas.rect(x_of(1), y + 9, x_of(better), y + 27, color)
        if goal:
            gx = x_of(goal)
            canvas.rect(gx - 1, y + 3, gx + 2, y + 33, (0, 0, 0))
        if metric.goal[0] == 'ours_max':
            label = (f"{r['ours']:.3g} {metric.unit} "
                     f"(GOAL < {metric.goal[1]:g} {metric.unit})")
        else:
            shown = f'{better:.2f}' if better < 10 else f'{better:.0f}'
            label = f'{shown}x (GOAL {goal:.2g}x)'
        canvas.text(left + width + 14, y + 10, label)
    floor = report['floor_us']
    if floor:
        y = bottom + 60
        canvas.text(10, y, 'FLOOR, ECHO OVER LOOPBACK: BLOCKING '
                           f"{floor.get('blocking', 0):.1f} US, ASYNCIO "
                           f"{floor.get('asyncio', 0):.1f} US, BUFFERED "
                           f"{floor.get('asyncio_buffered', 0):.1f} US",
                    color=(80, 80, 80))
        ping = next((r for r in results if r['name'] == 'ping'), None)
        if ping and ping['ours'] and ping['zeo']:
            canvas.text(10, y + 22, f"PING: OURS {ping['ours']:.1f} US, "
                                    f"ZEO 6.2 {ping['zeo']:.1f} US",
                        color=(80, 80, 80))
    Path(path).write_bytes(canvas.png())


# -- main ----------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        epilog='workloads: ' + '; '.join(f'{s.name}: {s.doc}' for s in SCENARIOS))
    parser.add_argument('--quick', action='store_true',
                        help='smaller sizes, fewer processes, 1 repeat')
    parser.add_argument('--only', nargs='+', metavar='NAME',
                        choices=list(BY_NAME), help='run only these workloads')
    parser.add_argument('--repeat', type=int, default=None,
                        help='runs per server kind (default 3, --quick 1)')
    parser.add_argument('--json', metavar='PATH', help='write the report here')
    parser.add_argument('--plot', metavar='PATH', help='draw the ratios (PNG)')
    parser.add_argument('--no-floor', action='store_true',
                        help='skip the loopback echo floor')
    parser.add_argument('--tmpdir', help='where the temporary directory goes')
    parser.add_argument('--silent', action='store_true',
                        help='no progress on stderr')
    args = parser.parse_args(argv)
    for name in ('runzeo', 'reference-runzeo', 'py', 'reference-py'):
        if not (BIN / name).exists():
            parser.error(f'{BIN / name} is missing: run from a buildout checkout')
    report = run(args)
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + '\n')
    if args.plot:
        plot(report, args.plot)
    return 0


if __name__ == '__main__':
    sys.exit(main())
