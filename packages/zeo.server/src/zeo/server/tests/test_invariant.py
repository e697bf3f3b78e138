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

import os
import random
import shutil
import tempfile
import unittest

from zeo.server.tests import crashworkers
from zeo.server.tests.crashing import TransferResult, transfer_run


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
