"""Long crash-consistency and invariant runs, outside the test runner.

Runs the machinery of ``zeo.server.tests.crashing`` that ``test_crash``
and ``test_invariant`` run: `crash_run` (SIGKILL of a FileStorage server
under concurrent committers; every confirmed commit must survive,
``fstest`` must pass, no client may read a value older than one it saw)
and `transfer_run` (money transfers through server restarts and cut
connections; the total never changes), then prints a summary.  With ``--minutes`` each part repeats rounds of
``--kills``/``--faults`` until its share of the time is used up.

Usage: bin/py -m zeo.server.tests.crash_consistency -- [--kills 50]
       [--faults 40] [--clients 4] [--workers 4] [--seed N] [--minutes M]
       [--only crash|invariant] [--keep]

A test tool, not installed as a script.
"""
import argparse
import random
import shutil
import sys
import tempfile
import time

from zeo.server.tests.crashing import CrashResult, TransferResult, crash_run, transfer_run

__all__ = ["main"]


def rounds(seconds, run, seed, keep, prefix):
    """Call *run(directory, seed)* once, or repeatedly for *seconds*."""
    deadline = time.monotonic() + seconds
    rnd = random.Random(seed)
    results = []
    while True:
        round_seed = rnd.randrange(1 << 32)
        directory = tempfile.mkdtemp(prefix=prefix)
        print(f'  round {len(results) + 1}: seed {round_seed}, files in {directory}',
              flush=True)
        try:
            results.append(run(directory, round_seed))
        except BaseException:
            print(f'  FAILED: seed {round_seed}; files kept in {directory}', flush=True)
            raise
        if not keep:
            shutil.rmtree(directory)
        if time.monotonic() >= deadline:
            return results


def add_up(results, cls):
    total = cls()
    for result in results:
        for name, value in vars(result).items():
            if isinstance(value, dict):
                for key, count in value.items():
                    getattr(total, name)[key] = getattr(total, name).get(key, 0) + count
            elif name == 'longest_step':
                total.longest_step = max(total.longest_step, value)
            else:
                setattr(total, name, getattr(total, name) + value)
    return total


def progress(line):
    print('   ', line, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--kills', type=int, default=50, help='SIGKILLs per crash round')
    parser.add_argument('--clients', type=int, default=4, help='committer processes')
    parser.add_argument('--pad', type=int, default=256 * 1024,
                        help="bytes stored with each of one committer's commits")
    parser.add_argument('--faults', type=int, default=40, help='faults per invariant round')
    parser.add_argument('--workers', type=int, default=4, help='transfer processes')
    parser.add_argument('--accounts', type=int, default=4)
    parser.add_argument('--seed', type=int, default=None)
    parser.add_argument('--minutes', type=float, default=0,
                        help='repeat rounds for this long (split between the parts)')
    parser.add_argument('--only', choices=('crash', 'invariant'))
    parser.add_argument('--keep', action='store_true', help='keep the files of good rounds')
    parser.add_argument('--verbose', action='store_true', help='print every kill and fault')
    args = parser.parse_args()
    seed = random.randrange(1 << 32) if args.seed is None else args.seed
    parts = [p for p in ('crash', 'invariant') if args.only in (None, p)]
    share = args.minutes * 60 / len(parts)
    report = progress if args.verbose else None
    print(f'seed {seed}', flush=True)
    started = time.monotonic()

    if 'crash' in parts:
        print(f'crash consistency: {args.clients} committers, {args.kills} kills a round',
              flush=True)
        crash = add_up(rounds(
            share, lambda d, s: crash_run(d, kills=args.kills, clients=args.clients, seed=s,
                                          pad=args.pad, report=report),
            seed, args.keep, 'zeo-crash-'), CrashResult)
        print(f'  kills survived:               {crash.kills} '
              f'({crash.growth_kills} aimed at a growing file, '
              f'{crash.mid_commit_kills} left an unfinished transaction)')
        print(f'  confirmed transactions found: {crash.transactions_verified} '
              f'({crash.records_verified} records)')
        print(f'  counter revisions checked:    {crash.revisions_checked} '
              f'({crash.revisions_checked - crash.records_verified} records from commits whose '
              f'client saw no reply)')
        print(f'  commits {crash.commits}, conflicts retried {crash.conflicts}, '
              f'disconnects retried {crash.disconnects}, stale reads 0')
        print(f'  longest client transaction:   {crash.longest_step:.1f} s')
        print(f'  time:                         {crash.seconds:.0f} s', flush=True)

    if 'invariant' in parts:
        print(f'invariant: {args.workers} transfer workers on {args.accounts} accounts, '
              f'{args.faults} faults a round', flush=True)
        results = rounds(
            share, lambda d, s: transfer_run(d, faults=args.faults, workers=args.workers,
                                             accounts=args.accounts, seed=s, report=report),
            seed + 1, args.keep, 'zeo-invariant-')
        rounds_run = len(results)
        money = add_up(results, TransferResult)
        faults = ', '.join(f'{n} {name}' for name, n in money.faults.items())
        print(f'  faults survived:              {sum(money.faults.values())} ({faults})')
        print(f'  transfers committed:          {money.transfers}')
        print(f'  conflicts retried:            {money.conflicts}')
        print(f'  disconnects retried:          {money.disconnects}')
        print(f'  totals checked by clients:    {money.total_checks} (all right)')
        # One transaction made the accounts; the rest are transfers, some
        # of them committed although their client saw no reply.
        print(f'  transactions checked in file: {money.transactions_checked} '
              f'({money.transactions_checked - money.transfers - rounds_run} whose '
              f'client saw no reply)')
        print(f'  longest client transaction:   {money.longest_step:.1f} s')
        print(f'  time:                         {money.seconds:.0f} s', flush=True)

    print(f'all checks passed in {time.monotonic() - started:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
