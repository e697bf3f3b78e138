"""The invariant stress test: money moves, the total never changes.

Transfer processes (`crashworkers`, through ``zeo.client``) move random
amounts between a few shared accounts, so their transactions conflict and
are retried.  They reach a real ``runzeo`` subprocess through the fault
proxy, and meanwhile, at random moments (a seeded ``random``), the server
is killed (SIGKILL) or stopped (SIGTERM) and restarted, every proxied
connection is reset, or the next connection to pass some bytes is cut,
often mid-frame.  Each worker checks the total in one read transaction
every few transfers.

Afterwards: every worker stopped within its timeout (no iteration hung:
see ``--hang-timeout``), none failed, none read a wrong total; together
they committed transfers and retried conflicts; the file passes
``fstest``, every transfer a worker saw committed is in it, and the
accounts sum to the initial total after *every* transaction in it.

The default run injects 6 faults; ``InvariantSoakTests`` (level 3) 40.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import signal
import tempfile
import time
import unittest
from typing import Callable

from zeo.server.tests import crashworkers
from zeo.server.tests.faultproxy import FaultProxy
from zeo.server.tests.support import ServerProcess
from zeo.server.tests.test_crash import Workers, wait_for_growth

FAULTS = ("sigkill", "sigterm", "reset", "cut")


@dataclasses.dataclass
class TransferResult:
    faults: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(FAULTS, 0))
    transfers: int = 0
    conflicts: int = 0
    disconnects: int = 0
    total_checks: int = 0
    transactions_checked: int = 0
    longest_step: float = 0.0
    seconds: float = 0.0


def transfer_run(directory: str, *, faults: int, workers: int = 3, accounts: int = 4,
                 seed: int, report: Callable[[str], None] | None = None) -> TransferResult:
    """Run *workers* transfer processes through *faults* random faults."""
    started = time.monotonic()
    rnd = random.Random(seed)
    path = os.path.join(directory, "Data.fs")
    total = crashworkers.create_accounts(path, accounts, 1000)
    server = ServerProcess(directory, path=path, start=False)
    proxy = FaultProxy(server.address)
    pool = Workers(directory, proxy.start())
    names = [f"t{i}" for i in range(workers)]
    result = TransferResult()
    try:
        server.start()
        for index, name in enumerate(names):
            options = ["--total", str(total)]
            if index % 2:    # half the workers keep a persistent cache
                options += ["--var", directory]
            pool.start("transfer", name, rnd.randrange(1 << 30), *options)
        pool.wait_ready()
        for number in range(faults):
            wait_for_growth(path, check=pool.check_alive)
            time.sleep(rnd.uniform(0, 0.8))
            fault = rnd.choice(FAULTS)
            if fault in ("sigkill", "sigterm"):
                server.kill(signal.SIGKILL if fault == "sigkill" else signal.SIGTERM)
                server.start()
            elif fault == "reset":
                proxy.reset()
            else:
                proxy.cut_after(rnd.randrange(1, 4000), rnd.choice(("up", "down")))
            result.faults[fault] += 1
            if report is not None:
                report(f"fault {number + 1}/{faults}: {fault}")
        wait_for_growth(path, check=pool.check_alive)
        summaries = pool.stop()
        server.stop(check=True)
    finally:
        pool.ensure_dead()
        server.ensure_dead()
        proxy.stop()
    for summary in summaries.values():
        result.transfers += summary["commits"]
        result.conflicts += summary["conflicts"]
        result.disconnects += summary["disconnects"]
        result.total_checks += summary["checks"]
        result.longest_step = max(result.longest_step, summary["longest"])
    wrong = {name: s["violations"] for name, s in summaries.items() if s["violations"]}
    if wrong:
        raise AssertionError(f"wrong totals read (see the journals' 'total' lines): {wrong}")
    idle = [name for name, s in summaries.items() if not s["commits"]]
    if idle:
        raise AssertionError(f"workers that never committed a transfer: {idle}")
    result.transactions_checked = verify_transfers(
        path, [pool.journal(name) for name in names], total)
    result.seconds = time.monotonic() - started
    return result


def verify_transfers(path: str, journals: list[str], total: int) -> int:
    """fstest, every journaled transfer present, the total after each
    transaction; returns the number of transactions checked."""
    from ZODB.FileStorage import FileStorage
    from ZODB.scripts import fstest
    fstest.check(path)
    storage = FileStorage(path, read_only=True)
    try:
        tids = {txn.tid for txn in storage.iterator()}
        for journal in journals:
            for entry in crashworkers.read_journal(journal):
                if entry["k"] == "transfer" and bytes.fromhex(entry["tid"]) not in tids:
                    raise AssertionError(f"lost: {journal}: {entry} is not in the storage")
        return crashworkers.check_total_history(storage, total)
    finally:
        storage.close()


class InvariantTests(unittest.TestCase):

    faults = 6
    workers = 3

    def test_transfers_keep_the_total_through_restarts_and_cuts(self):
        seed = random.randrange(1 << 32)
        directory = tempfile.mkdtemp(prefix="zeo-invariant-")
        try:
            result = transfer_run(directory, faults=self.faults, workers=self.workers,
                                  seed=seed)
            self.assertGreater(result.transfers, 0)
            self.assertGreater(result.total_checks, 0)
            # Every committed transfer is a transaction in the file (the
            # in-doubt ones too, when they made it).
            self.assertGreaterEqual(result.transactions_checked, result.transfers)
            self.check_extra(result)
        except Exception as error:
            raise AssertionError(
                f"seed {seed} (files kept in {directory}): {error}") from error
        shutil.rmtree(directory)

    def check_extra(self, result: TransferResult) -> None:
        pass


class TotalCheckTests(unittest.TestCase):
    """The history check catches a transaction that changes the total."""

    def test_money_made_from_nothing_is_caught(self):
        import ZODB
        from ZODB.FileStorage import FileStorage
        directory = tempfile.mkdtemp(prefix="zeo-invariant-check-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "Data.fs")
        total = crashworkers.create_accounts(path, 3, 100)
        db = ZODB.DB(FileStorage(path))
        with db.transaction() as connection:
            accounts = connection.root()[crashworkers.ACCOUNTS]
            accounts[0]["balance"] -= 10
            accounts[1]["balance"] += 10
        with db.transaction() as connection:
            connection.root()[crashworkers.ACCOUNTS][2]["balance"] += 1
        db.close()
        storage = FileStorage(path, read_only=True)
        try:
            with self.assertRaisesRegex(AssertionError, "sum to 301, not 300"):
                crashworkers.check_total_history(storage, total)
        finally:
            storage.close()


class InvariantSoakTests(InvariantTests):
    """The long run: 40 faults under 4 transfer workers."""

    level = 3
    faults = 40
    workers = 4

    def check_extra(self, result: TransferResult) -> None:
        # Four workers on four accounts for this long always collide.
        self.assertGreater(result.conflicts, 0)
        self.assertGreater(min(result.faults.values()), 0)


if __name__ == "__main__":
    unittest.main()
