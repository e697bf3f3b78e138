#!/usr/bin/env python
"""Client-side workloads of ``bin/benchmark --scaleout``, one per process.

Everything ``scripts/bench_client.py`` runs (``commit``, ``cold``,
``watch``, ``commit_watched``, with ``--impl ours`` through a server or
``--impl relstorage`` on RelStorage itself), plus:

- ``copy``: the benchmark's FileStorage (``--path``) into the RelStorage
  database at ``--dsn`` (``copyTransactionsFrom``), the template every run
  copies;
- ``scale_commit``: one of several processes committing, for
  ``--duration`` seconds, changes to an object of its own
  (``root['objects'][--index]``) through a front; it lists the tid of
  every commit acknowledged to it and the value it wrote;
- ``verify``: reads each acknowledged commit of a ``--path`` JSON file
  back from the database, by (oid, tid): the lost commits.

Run with bin/py, whose path has RelStorage and psycopg2; the same JSON
line protocol as bench_client.py.
"""
import io
import json
import pickle
import sys
import time

import bench_client
from bench_client import barrier, emit, open_db


def copy(args):
    """Copy the FileStorage at ``--path`` into the database at ``--dsn``."""
    import ZODB.FileStorage
    from zeo.server.testing_postgres import open_relstorage
    source = ZODB.FileStorage.FileStorage(args.path, read_only=True)
    target = open_relstorage(args.dsn)
    started = time.perf_counter()
    try:
        target.copyTransactionsFrom(source)
    finally:
        target.close()
        source.close()
    emit(seconds=time.perf_counter() - started)


def scale_commit(args):
    """Commit changes to ``root['objects'][--index]`` until ``--duration``
    has passed; retry nothing (a conflict or an error is counted and the
    next change goes on)."""
    import transaction
    from ZODB.POSException import ConflictError
    db = open_db(args)
    conn = db.open()
    obj = conn.root()['objects'][args.index]
    obj._p_activate()
    barrier()
    clock = time.perf_counter
    started = clock()
    deadline = started + args.duration
    acknowledged, conflicts, errors = [], 0, []
    n = 0
    while clock() < deadline:
        n += 1
        obj['v'] = n
        try:
            transaction.commit()
        except ConflictError:
            transaction.abort()
            conflicts += 1
            continue
        except Exception as error:
            transaction.abort()
            errors.append(f'{error!r:.200}')
            continue
        acknowledged.append((obj._p_serial.hex(), n))
    elapsed = clock() - started
    oid = obj._p_oid.hex()
    db.close()
    emit(commits=len(acknowledged), conflicts=conflicts,
         errors=len(errors), error_samples=errors[:5], seconds=elapsed,
         oid=oid, acknowledged=acknowledged)


def _state(record):
    """The state pickle of a ZODB record (the second of its two pickles),
    persistent references left as they are."""
    unpickler = pickle.Unpickler(io.BytesIO(record))
    unpickler.persistent_load = lambda reference: reference
    unpickler.load()
    return unpickler.load()


def verify(args):
    """Is every acknowledged commit in the database?  ``--path`` holds
    ``{oid_hex: [[tid_hex, value], ...]}``; each is read back with
    ``loadSerial`` (the database keeps history) and its ``v`` compared."""
    from ZODB.POSException import POSKeyError
    from zeo.server.testing_postgres import open_relstorage
    with open(args.path) as f:
        claims = json.load(f)
    storage = open_relstorage(args.dsn)
    acknowledged = present = 0
    missing = []
    try:
        for oid_hex, entries in claims.items():
            oid = bytes.fromhex(oid_hex)
            for tid_hex, value in entries:
                acknowledged += 1
                try:
                    state = _state(storage.loadSerial(oid, bytes.fromhex(tid_hex)))
                except POSKeyError:
                    missing.append((oid_hex, tid_hex, 'absent'))
                    continue
                found = state.get('data', {}).get('v')
                if found == value:
                    present += 1
                else:
                    missing.append((oid_hex, tid_hex, f'v={found!r:.40}'))
    finally:
        storage.close()
    emit(acknowledged=acknowledged, present=present,
         lost=acknowledged - present, missing=missing[:10])


WORKLOADS = {**bench_client.WORKLOADS, 'copy': copy,
             'scale_commit': scale_commit, 'verify': verify}


def main(argv=None):
    parser = bench_client.make_parser(WORKLOADS)
    parser.add_argument('--index', type=int, default=0,
                        help='scale_commit: which object is this process\'s')
    args = parser.parse_args(argv)
    WORKLOADS[args.workload](args)


if __name__ == '__main__':
    sys.exit(main())
