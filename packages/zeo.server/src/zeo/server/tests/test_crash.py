"""Crash consistency: a FileStorage server killed with SIGKILL under load.

Several committer processes (`crashworkers`, through ``zeo.client``) bump
counters continuously while a real ``runzeo`` subprocess is killed with
SIGKILL and restarted on the same address and file, again and again.
Each kill comes either

- after a random delay of up to a second (anywhere in the commit cycle:
  between transactions, while stores are spooled, in ``vote``, between
  ``vote`` and ``tpc_finish``, after the finish but before its reply), or
- the moment ``Data.fs`` grows, i.e. inside a commit: FileStorage writes a
  transaction with its checkpoint flag set in ``vote`` and clears it in
  ``tpc_finish``.  One committer stores a big record with every commit so
  that the vote's write itself takes a while.

A kill that left an unfinished transaction at the end of the file is seen
at the restart, when FileStorage moves it aside into ``Data.fs.trN``; the
run counts those as mid-commit kills.

After the last restart the workers stop, the server stops, and:

- every value a committer journaled after ``commit()`` returned is in the
  file under that transaction id (nothing confirmed is lost);
- every revision of every counter is the previous one plus one (no update
  was made on a stale read and accepted);
- ``fstest`` finds the file sound;
- no committer read a value older than one it had seen before (its own
  or another process's counters), and none hung, failed or stopped.

The default run makes 4 kills; ``CrashSoakTests`` (level 3, ``bin/test -a
3``) makes 50, and ``bin/py -m zeo.server.tests.crash_consistency`` as
many as asked.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import unittest

from zeo.server.tests import crashworkers
from zeo.server.tests.crashing import (
    CrashResult, Workers, crash_run, verify_file, wait_for_growth)
from zeo.server.tests.support import ServerProcess


class CrashTests(unittest.TestCase):

    kills = 4
    clients = 3

    def test_sigkill_under_concurrent_committers(self):
        seed = random.randrange(1 << 32)
        directory = tempfile.mkdtemp(prefix="zeo-crash-")
        try:
            result = crash_run(directory, kills=self.kills, clients=self.clients, seed=seed)
        except Exception as error:
            raise AssertionError(
                f"seed {seed} (files kept in {directory}): {error}") from error
        shutil.rmtree(directory)
        self.assertEqual(result.kills, self.kills)
        self.assertGreater(result.transactions_verified, 0)
        # Every confirmed record is one revision; in-doubt commits add more.
        self.assertGreaterEqual(result.revisions_checked, result.records_verified)
        self.check_extra(result)

    def check_extra(self, result: CrashResult) -> None:
        pass


class CheckTests(unittest.TestCase):
    """The checks above can fail: they catch what they are meant to."""

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-crash-checks-")
        self.path = os.path.join(self.directory, "Data.fs")

    def tearDown(self):
        shutil.rmtree(self.directory)

    def test_a_server_gone_back_in_time_loses_commits_and_serves_stale_data(self):
        crashworkers.create_counters(self.path, ["c0"], 2)
        server = ServerProcess(self.directory, path=self.path, start=False)
        workers = Workers(self.directory, server.address)
        try:
            server.start()
            workers.start("committer", "c0", 1)
            wait_for_growth(self.path, check=workers.check_alive)
            server.kill()
            shutil.copy(self.path, self.path + ".backup")
            server.start()
            # One committer: a third growth means the first commit since
            # the backup returned and was journaled.
            for _ in range(3):
                wait_for_growth(self.path, check=workers.check_alive)
            server.kill()
            shutil.copy(self.path + ".backup", self.path)
            os.remove(self.path + ".index")
            server.start()
            wait_for_growth(self.path, check=workers.check_alive)
            summaries = workers.stop()
            server.stop(check=True)
        finally:
            workers.ensure_dead()
            server.ensure_dead()
        self.assertGreater(summaries["c0"]["violations"], 0)
        result = CrashResult()
        with self.assertRaisesRegex(AssertionError, "^lost: "):
            verify_file(self.path, [workers.journal("c0")], result)

    def test_only_a_torn_last_journal_line_is_forgiven(self):
        journal = os.path.join(self.directory, "j")
        with open(journal, "w") as f:
            f.write('{"k": "ready"}\n{"k": "commit", "oi')
        self.assertEqual(crashworkers.read_journal(journal), [{"k": "ready"}])
        with open(journal, "w") as f:
            f.write('{"k": "ready"}\n{"k": "commit", "oi\n{"k": "ready"}\n')
        with self.assertRaisesRegex(ValueError, "damaged journal line"):
            crashworkers.read_journal(journal)

    def test_a_skipped_counter_value_is_caught(self):
        import transaction
        import ZODB
        from ZODB.FileStorage import FileStorage
        crashworkers.create_counters(self.path, ["c0"], 1)
        db = ZODB.DB(FileStorage(self.path))
        with db.transaction() as connection:
            connection.root()[crashworkers.COUNTERS]["c0"][0]["value"] = 1
        with db.transaction() as connection:
            connection.root()[crashworkers.COUNTERS]["c0"][0]["value"] = 3
        db.close()
        transaction.abort()
        storage = FileStorage(self.path, read_only=True)
        try:
            with self.assertRaisesRegex(AssertionError, "went 1 -> 3"):
                crashworkers.check_counter_history(storage)
        finally:
            storage.close()


class CrashSoakTests(CrashTests):
    """The long run: 50 kills under 4 committers."""

    level = 3
    kills = 50
    clients = 4

    def check_extra(self, result: CrashResult) -> None:
        # With 50 kills, some land inside a commit; if none does, the test
        # no longer covers what it claims to.
        self.assertGreater(result.mid_commit_kills, 0)


if __name__ == "__main__":
    unittest.main()
