"""Client processes for the crash and invariant stress tests, and their checks.

Run as ``python -m zeo.server.tests.crashworkers KIND HOST:PORT ...`` (or
by path).  Two kinds of worker, both through ``zeo.client``:

``committer``
    Bumps counters (``PersistentMapping({'value': n, 'pad': b''})``) it
    alone writes, and reads every other committer's counters.  After each
    ``commit()`` returns it appends ``{"k": "commit", oid, tid, value}`` to
    its journal and fsyncs it, so the journal holds only transactions the
    server confirmed.  Every value read is compared with the highest value
    this process saw (read or committed) for that object: a smaller one is
    a stale read, journaled as ``{"k": "stale", ...}``.
``transfer``
    Moves random amounts between a few shared accounts (so transactions
    conflict), retrying a transfer after a conflict or a disconnect, and
    every few transfers reads all accounts in one transaction and checks
    the total (``{"k": "total", ...}`` when it is wrong).

Both abort and retry on ``ConflictError`` and on ``TransientError``
(``ClientDisconnected`` among them); anything else is journaled as
``{"k": "error"}`` and also retried, so the test can show it.  A worker
journals ``ready`` once its database is open, and when its stop file
appears it stops and journals a ``summary`` line (its counts).
``faulthandler`` ends a worker whose iteration takes longer than
``--hang-timeout`` (exit status 1, tracebacks on stderr): a hang.

The data layout is made before the server starts (`create_counters`,
`create_accounts`, directly on the FileStorage); the checks after the
server has stopped read the FileStorage directly too (`verify_journals`,
`check_counter_history`, `check_total_history`).
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import json
import os
import random
import sys
import time
from typing import Any, Iterator

COUNTERS = "counters"
ACCOUNTS = "accounts"


# -- the journal -----------------------------------------------------------------------

class Journal:
    """Append-only JSON lines, each fsynced before `write` returns."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "a", encoding="ascii")

    def write(self, sync: bool = True, **entry: Any) -> None:
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()
        if sync:
            os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def read_journal(path: str) -> list[dict[str, Any]]:
    """The entries of a journal; a torn last line (a killed worker) is dropped."""
    entries = []
    with open(path, encoding="ascii") as f:
        lines = f.read().split("\n")
    for number, line in enumerate(lines):
        if not line:
            continue
        try:
            entries.append(json.loads(line))
        except ValueError:
            if number < len(lines) - 1:   # not the last, unterminated, line
                raise ValueError(f"{path}:{number + 1}: a damaged journal line")
    return entries


def summary_of(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    for entry in reversed(entries):
        if entry["k"] == "summary":
            return entry
    return None


# -- the data layout, made directly on the FileStorage before the server runs ----------

def create_counters(path: str, names: list[str], per_client: int) -> None:
    """``root['counters'][name]``: a list of counters for each committer."""
    def build(root: Any) -> None:
        from persistent.list import PersistentList
        from persistent.mapping import PersistentMapping
        counters = PersistentMapping()
        for name in names:
            counters[name] = PersistentList(
                PersistentMapping({"value": 0, "pad": b""}) for _ in range(per_client))
        root[COUNTERS] = counters
    _build(path, build)


def create_accounts(path: str, count: int, balance: int) -> int:
    """``root['accounts']``: *count* accounts; returns the total."""
    def build(root: Any) -> None:
        from persistent.list import PersistentList
        from persistent.mapping import PersistentMapping
        root[ACCOUNTS] = PersistentList(
            PersistentMapping({"balance": balance}) for _ in range(count))
    _build(path, build)
    return count * balance


def _build(path: str, build: Any) -> None:
    import transaction
    import ZODB
    from ZODB.FileStorage import FileStorage
    db = ZODB.DB(FileStorage(path))
    try:
        tm = transaction.TransactionManager()
        connection = db.open(tm)
        build(connection.root())
        tm.commit()
        connection.close()
    finally:
        db.close()


# -- reading the FileStorage after the run ----------------------------------------------

def state_of(data: bytes) -> dict[str, Any]:
    """The items of a PersistentMapping data record."""
    from zodbpickle.pickle import Unpickler
    unpickler = Unpickler(io.BytesIO(data))
    unpickler.persistent_load = lambda reference: reference
    unpickler.load()           # the class
    return unpickler.load()["data"]


def _records(storage: Any) -> Iterator[tuple[bytes, list[Any]]]:
    transactions = storage.iterator()
    try:
        for txn in transactions:
            yield txn.tid, list(txn)
    finally:
        transactions.close()   # also when a check stops early


def verify_journals(storage: Any, journals: list[str]) -> dict[bytes, int]:
    """Check that every journaled commit is in *storage* with its value.

    Returns ``{tid: records checked}``; raises AssertionError naming the
    first journal entry that is missing or different.
    """
    from ZODB.POSException import POSKeyError
    checked: dict[bytes, int] = {}
    for path in journals:
        for entry in read_journal(path):
            if entry["k"] != "commit":
                continue
            oid, tid = bytes.fromhex(entry["oid"]), bytes.fromhex(entry["tid"])
            try:
                data = storage.loadSerial(oid, tid)
            except POSKeyError:
                raise AssertionError(f"lost: {path}: {entry} is not in the storage")
            value = state_of(data)["value"]
            if value != entry["value"]:
                raise AssertionError(f"{path}: {entry} reads back as {value}")
            checked[tid] = checked.get(tid, 0) + 1
    return checked


def check_counter_history(storage: Any) -> int:
    """Every committed revision of a counter is its previous value plus one.

    A committer writes what it read plus one, so a revision that skips or
    repeats a value was written on a stale read that conflict detection
    missed (a lost update).  Returns the number of revisions checked.
    """
    last: dict[bytes, int] = {}
    checked = 0
    for tid, records in _records(storage):
        for record in records:
            if record.data is None:
                continue
            state = state_of(record.data)
            if "value" not in state:
                continue
            previous = last.get(record.oid)
            if previous is None:     # made by create_counters
                last[record.oid] = state["value"]
                continue
            if state["value"] != previous + 1:
                raise AssertionError(
                    f"counter {record.oid.hex()} went {previous} -> {state['value']} "
                    f"in transaction {tid.hex()}")
            last[record.oid] = state["value"]
            checked += 1
    return checked


def check_total_history(storage: Any, total: int) -> int:
    """After every committed transaction the accounts sum to *total*.

    All accounts are made in one transaction (`create_accounts`), so the
    sum is over all of them from the first.  Returns the number of
    transactions checked.
    """
    balances: dict[bytes, int] = {}
    checked = 0
    for tid, records in _records(storage):
        states = [(r.oid, state_of(r.data)) for r in records if r.data is not None]
        changed = {oid: state["balance"] for oid, state in states if "balance" in state}
        if not changed:
            continue
        balances.update(changed)
        checked += 1
        if sum(balances.values()) != total:
            raise AssertionError(
                f"the accounts sum to {sum(balances.values())}, not {total}, "
                f"after transaction {tid.hex()}")
    return checked


# -- the workers --------------------------------------------------------------------------

class Worker:
    """The loop shared by both kinds: retry, classify errors, stop, summarise."""

    def __init__(self, args: argparse.Namespace) -> None:
        import transaction
        self.args = args
        self.random = random.Random(args.seed)
        self.journal = Journal(args.journal)
        self.db = self.open_db()
        self.tm = transaction.TransactionManager()
        self.connection = self.db.open(self.tm)
        self.journal.write(k="ready")
        self.counts: dict[str, Any] = {
            "commits": 0, "conflicts": 0, "disconnects": 0,
            "transient": 0, "errors": 0, "violations": 0}
        self.longest = 0.0

    def open_db(self) -> Any:
        """A database, retried while a fault interrupts loading the root."""
        import zeo.client
        args = self.args
        cache = {"client": args.name, "var": args.var} if args.var else {}
        deadline = time.monotonic() + args.wait_timeout
        while True:
            try:
                # A server that went back in time is used at once: the
                # checker is there to catch what it lost (the client's own
                # wait for such a server would only hide it as a stall).
                return zeo.client.DB(
                    args.address, wait_timeout=args.wait_timeout, disconnect_poll=0.1,
                    max_disconnect_poll=0.5, server_behind_wait=0, **cache)
            except zeo.client.ClientDisconnected:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def run(self) -> int:
        from ZODB.POSException import ConflictError
        from transaction.interfaces import TransientError

        from zeo.client import ClientDisconnected
        deadline = time.monotonic() + self.args.max_seconds
        while not os.path.exists(self.args.stop_file) and time.monotonic() < deadline:
            faulthandler.dump_traceback_later(self.args.hang_timeout, exit=True)
            started = time.monotonic()
            try:
                self.step()
            except ConflictError as error:
                self.counts["conflicts"] += 1
                self.journal.write(k="conflict", error=str(error)[:300], sync=False)
                self.abort()
            except ClientDisconnected:
                self.counts["disconnects"] += 1
                self.abort()
            except TransientError:
                self.counts["transient"] += 1
                self.abort()
            except Exception as error:
                self.counts["errors"] += 1
                self.journal.write(k="error", error=repr(error))
                self.abort()
            self.longest = max(self.longest, time.monotonic() - started)
        faulthandler.dump_traceback_later(self.args.hang_timeout, exit=True)
        self.connection.close()
        self.db.close()
        faulthandler.cancel_dump_traceback_later()
        self.journal.write(k="summary", longest=round(self.longest, 3), **self.counts)
        self.journal.close()
        return 0

    def abort(self) -> None:
        try:
            self.tm.abort()
        except Exception as error:   # the next begin() starts clean anyway
            self.journal.write(k="error", error=f"abort: {error!r}")

    def step(self) -> None:
        raise NotImplementedError


class Committer(Worker):
    """See the module docstring."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.seen: dict[bytes, int] = {}

    def observe(self, counter: Any) -> None:
        value = counter["value"]
        oid = counter._p_oid
        if value < self.seen.get(oid, 0):
            self.counts["violations"] += 1
            self.journal.write(k="stale", oid=oid.hex(), seen=self.seen[oid], read=value)
        else:
            self.seen[oid] = value

    def step(self) -> None:
        self.tm.begin()
        counters = self.connection.root()[COUNTERS]
        for name in counters:
            for counter in counters[name]:
                self.observe(counter)
        mine = list(counters[self.args.name])
        changed = self.random.sample(mine, self.random.randint(1, len(mine)))
        values = []
        for counter in changed:
            counter["value"] += 1
            values.append(counter["value"])
        if self.args.pad:
            # A big record makes vote and finish long enough to be killed in.
            changed[0]["pad"] = os.urandom(self.args.pad)
        self.tm.get().note(f"{self.args.name} {self.counts['commits']}")
        self.tm.commit()
        self.counts["commits"] += 1
        # ``changed`` keeps the objects alive: one the cache dropped after
        # the commit would come back as a new ghost without its serial.
        # Nothing is loaded here, so a disconnect now can't hide a commit.
        for counter, value in zip(changed, values):
            self.journal.write(k="commit", oid=counter._p_oid.hex(),
                               tid=counter._p_serial.hex(), value=value)
            self.seen[counter._p_oid] = max(self.seen.get(counter._p_oid, 0), value)


class Transferrer(Worker):
    """See the module docstring."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.pending: tuple[int, int, int] | None = None
        self.since_check = 0
        self.counts["checks"] = 0

    def step(self) -> None:
        if self.since_check >= self.args.check_every:
            self.check_total()
        if self.pending is None:     # else retry the transfer that failed
            count = len(self.connection.root()[ACCOUNTS])
            source, target = self.random.sample(range(count), 2)
            self.pending = (source, target, self.random.randint(1, 100))
        source, target, amount = self.pending
        self.tm.begin()
        accounts = self.connection.root()[ACCOUNTS]
        debited = accounts[source]    # held: see Committer.step
        debited["balance"] -= amount
        accounts[target]["balance"] += amount
        self.tm.get().note(f"{self.args.name}: {amount} from {source} to {target}")
        self.tm.commit()
        self.pending = None
        self.counts["commits"] += 1
        self.since_check += 1
        self.journal.write(k="transfer", tid=debited._p_serial.hex())

    def check_total(self) -> None:
        self.tm.begin()
        total = sum(account["balance"] for account in self.connection.root()[ACCOUNTS])
        self.tm.abort()
        self.since_check = 0
        self.counts["checks"] += 1
        if total != self.args.total:
            self.counts["violations"] += 1
            self.journal.write(k="total", read=total, expected=self.args.total)


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return (host or "127.0.0.1", int(port))


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A crash-test client process.")
    parser.add_argument("kind", choices=("committer", "transfer"))
    parser.add_argument("address", type=parse_address, help="HOST:PORT of the server")
    parser.add_argument("--name", required=True, help="this worker's name")
    parser.add_argument("--journal", required=True, help="the journal file")
    parser.add_argument("--stop-file", required=True, help="stop when this exists")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--var", help="keep a persistent client cache in this directory")
    parser.add_argument("--pad", type=int, default=0,
                        help="committer: bytes of padding stored with each commit")
    parser.add_argument("--total", type=int, default=0, help="transfer: the accounts' sum")
    parser.add_argument("--check-every", type=int, default=5,
                        help="transfer: check the total after this many transfers")
    parser.add_argument("--wait-timeout", type=float, default=30.0)
    parser.add_argument("--hang-timeout", type=float, default=120.0)
    parser.add_argument("--max-seconds", type=float, default=3600.0,
                        help="stop anyway after this long (no orphans)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    worker = Committer(args) if args.kind == "committer" else Transferrer(args)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
