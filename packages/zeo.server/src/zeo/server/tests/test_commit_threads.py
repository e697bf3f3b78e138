"""Commits off the event loop (zeo.server.commit_threads), without a database.

A served MVCC storage (ZODB's ``MVCCMappingStorage``) whose instances can
be made to wait in ``tpc_vote`` stands for RelStorage waiting on another
front's lock: while one client's vote waits in its commit thread, the
server keeps answering the others; a transaction timeout meanwhile frees
the lock and the instance once the thread returns. FileStorage keeps
committing on the loop unless ``commit_threads`` says otherwise. The same
with a real PostgreSQL is in `test_relstorage_stalls`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import unittest
from typing import Any

from ZODB.FileStorage import FileStorage
from ZODB.MappingStorage import MappingStorage
from ZODB.POSException import ConflictError
from ZODB.tests.MVCCMappingStorage import MVCCMappingStorage
from ZODB.utils import p64, z64

import zeo.server
from zeo.server.commit_threads import OffLoopCommit, wants_commit_threads
from zeo.server.config import ServerConfig
from zeo.server.results import Delayed
from zeo.server.served_storage import MAX_IDLE_INSTANCES, LoopHooks, ServedStorage
from zeo.server.tests.rawclient import RawClient, ServerError
from zeo.server.tests.support import wait_until

__all__ = ["CommitThreadsTests", "GatedMVCCStorage", "InstancesTests", "OffLoopCommitTests",
           "RecordingFileStorage", "SettingTests"]

MAX_TID = p64(2 ** 63 - 1)
#: Bound on every wait for the server (a hang fails, never blocks).
WAIT = 10.0
#: A record any ZODB reader accepts: a pickled PersistentMapping state.
RECORD = (b"\x80\x03cpersistent.mapping\nPersistentMapping\nq\x00.\x80\x03}q\x01"
          b"X\x04\x00\x00\x00dataq\x02}q\x03s.")


def where() -> str:
    return threading.current_thread().name


class GatedInstance:
    """A transaction's instance of a `GatedMVCCStorage`: records what runs
    where, and waits in ``tpc_vote`` while its storage's gate is closed."""

    def __init__(self, storage: GatedMVCCStorage, instance: Any) -> None:
        self._storage = storage
        self._instance = instance

    def __getattr__(self, name: str) -> Any:
        return getattr(self._instance, name)

    def tryToResolveConflict(self, *args: Any) -> bytes:
        raise ConflictError()   # guarded by zeo.server.conflicts, once

    def tpc_vote(self, transaction: Any) -> Any:
        self._storage.log.append(("vote", where(), id(self)))
        if not self._storage.gate.wait(WAIT):
            raise RuntimeError("the test never opened the gate")
        return self._instance.tpc_vote(transaction)

    def tpc_finish(self, transaction: Any, func: Any = lambda tid: None) -> Any:
        self._storage.log.append(("finish", where(), id(self)))
        return self._instance.tpc_finish(transaction, func)

    def tpc_abort(self, transaction: Any) -> None:
        self._storage.log.append(("abort", where(), id(self)))
        self._instance.tpc_abort(transaction)

    def release(self) -> None:
        self._storage.log.append(("release", where(), id(self)))
        self._instance.release()


class GatedMVCCStorage(MVCCMappingStorage):
    """An MVCC storage with ``new_instance`` (as RelStorage) whose
    instances wait in ``tpc_vote`` until `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.log: list[tuple[str, str, int]] = []

    def new_instance(self) -> Any:
        instance = GatedInstance(self, super().new_instance())
        self.log.append(("new", where(), id(instance)))
        return instance

    def loadBefore(self, oid: bytes, tid: bytes) -> Any:
        self.log.append(("load", where(), id(self)))
        return super().loadBefore(oid, tid)

    def events(self, kind: str) -> list[tuple[str, int]]:
        return [(thread, instance) for event, thread, instance in list(self.log)
                if event == kind]


class RecordingFileStorage(FileStorage):
    """A FileStorage that records the threads its loads and votes run in."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.threads: dict[str, set[str]] = {"load": set(), "vote": set()}
        super().__init__(*args, **kw)

    def loadBefore(self, oid: bytes, tid: bytes) -> Any:
        self.threads["load"].add(where())
        return super().loadBefore(oid, tid)

    def tpc_vote(self, transaction: Any) -> Any:
        self.threads["vote"].add(where())
        return super().tpc_vote(transaction)


def begin_and_vote(client: RawClient, txn: int, oid: bytes, serial: bytes = z64) -> int:
    """Send a transaction storing *oid* and its vote; the vote's message id."""
    client.send("tpc_begin", txn, b"", b"", {}, None, " ")
    client.send("storea", oid, serial, RECORD, txn)
    return client.send_call("vote", txn)


class CommitThreadsTests(unittest.TestCase):

    def serve(self, storage: Any, **options: Any) -> Any:
        address, stop = zeo.server.server(storages={"1": storage}, **options)
        self.addCleanup(stop)
        return address

    def client(self, address: Any) -> RawClient:
        client = RawClient(address, timeout=WAIT)
        self.addCleanup(client.close)
        return client

    def test_a_waiting_vote_stalls_nobody_and_is_seen_before_it_is_told(self):
        storage = GatedMVCCStorage()
        address = self.serve(storage)
        committer, other = self.client(address), self.client(address)
        oid = committer.call("new_oids", 1)[0]
        first = committer.commit(1, [(oid, z64, RECORD)])
        other.wait_one_way("invalidateTransaction")
        del storage.log[:]
        storage.gate.clear()
        vote = begin_and_vote(committer, 2, oid, first)
        wait_until(lambda: storage.events("vote"), "the vote in its thread", timeout=WAIT)
        # The committer's vote waits in its thread; the loop answers.
        self.assertIsNone(other.call("ping"))
        self.assertEqual(other.call("loadBefore", oid, MAX_TID)[1], first)
        storage.gate.set()
        self.assertEqual(committer.wait_reply(vote), [])
        tid = committer.call("tpc_finish", 2)
        message = other.wait_one_way("invalidateTransaction")
        self.assertEqual(message.args, (tid, (oid,)))
        self.assertEqual(other.call("lastTransaction"), tid)
        self.assertEqual(other.call("loadBefore", oid, MAX_TID)[1], tid)
        # The vote and the finish ran in a commit thread, on an instance of
        # the transaction's own (kept for the next one); loads on the loop.
        [(vote_thread, instance)] = storage.events("vote")
        self.assertTrue(vote_thread.startswith("zeo.server worker commit"), vote_thread)
        self.assertEqual(storage.events("finish"), [(vote_thread, instance)])
        self.assertNotIn(instance, [i for _, i in storage.events("load")])
        self.assertFalse({t for t, _ in storage.events("load")} & {vote_thread})
        committer.commit(3, [(oid, tid, RECORD)])
        self.assertEqual([i for _, i in storage.events("vote")], [instance, instance])
        self.assertEqual(storage.events("new"), [])   # made before the log was cleared

    def test_a_timeout_while_the_vote_waits_frees_everything(self):
        storage = GatedMVCCStorage()
        address = self.serve(storage, transaction_timeout=0.5)
        committer, other = self.client(address), self.client(address)
        oid = committer.call("new_oids", 1)[0]
        storage.gate.clear()
        begin_and_vote(committer, 1, oid)
        # The timeout closes the committer's connection; the others are served.
        self.assertTrue(committer.wait_closed())
        self.assertIsNone(other.call("ping"))
        [(_, instance)] = storage.events("vote")
        self.assertEqual(storage.events("abort"), [])   # still in its vote
        storage.gate.set()
        # Once the thread returns, the vote it finished is aborted there,
        # the instance given back clean, and the commit lock released.
        wait_until(lambda: storage.events("abort"), "the abort", timeout=WAIT)
        [(abort_thread, aborted)] = storage.events("abort")
        self.assertEqual(aborted, instance)
        self.assertTrue(abort_thread.startswith("zeo.server worker commit"), abort_thread)
        tid = other.commit(2, [(oid, z64, RECORD)])
        self.assertEqual(other.call("loadBefore", oid, MAX_TID)[1], tid)
        self.assertEqual(other.call("lastTransaction"), tid)
        self.assertEqual([i for _, i in storage.events("vote")], [instance, instance])

    def test_an_abort_while_the_vote_runs_answers_the_vote(self):
        storage = GatedMVCCStorage()
        address = self.serve(storage)
        committer, other = self.client(address), self.client(address)
        oid = committer.call("new_oids", 1)[0]
        storage.gate.clear()
        vote = begin_and_vote(committer, 1, oid)
        wait_until(lambda: storage.events("vote"), "the vote in its thread", timeout=WAIT)
        abort = committer.send_call("tpc_abort", 1)
        self.assertIsNone(committer.wait_reply(abort))
        # The session holds the commit lock until its thread is done: its
        # next vote is refused with a ConflictError, which clients retry.
        with self.assertRaisesRegex(ServerError, "still being aborted") as caught:
            committer.wait_reply(begin_and_vote(committer, 2, oid))
        self.assertEqual(caught.exception.args[0], "ZODB.POSException.ConflictError")
        self.assertIsNone(committer.call("tpc_abort", 2))
        storage.gate.set()
        with self.assertRaisesRegex(Exception, "aborted while it voted"):
            committer.wait_reply(vote)
        wait_until(lambda: storage.events("abort"), "the abort", timeout=WAIT)
        tid = other.commit(2, [(oid, z64, RECORD)])
        self.assertEqual(committer.call("lastTransaction"), tid)

    def test_filestorage_commits_on_the_loop_by_default(self):
        directory = tempfile.mkdtemp(prefix="zeo-commit-threads-")
        self.addCleanup(shutil.rmtree, directory)
        storage = RecordingFileStorage(os.path.join(directory, "Data.fs"))
        address = self.serve(storage)
        client = self.client(address)
        oid = client.call("new_oids", 1)[0]
        client.commit(1, [(oid, z64, RECORD)])
        client.call("loadBefore", oid, MAX_TID)
        self.assertEqual(len(storage.threads["vote"]), 1)
        self.assertEqual(storage.threads["vote"], storage.threads["load"])   # the loop's

    def test_commit_threads_on_moves_filestorage_commits_to_a_thread(self):
        directory = tempfile.mkdtemp(prefix="zeo-commit-threads-")
        self.addCleanup(shutil.rmtree, directory)
        storage = RecordingFileStorage(os.path.join(directory, "Data.fs"))
        address = self.serve(storage, commit_threads="on")
        client, other = self.client(address), self.client(address)
        oid = client.call("new_oids", 1)[0]
        tid = client.commit(1, [(oid, z64, RECORD)])
        self.assertEqual(other.wait_one_way("invalidateTransaction").args, (tid, (oid,)))
        self.assertEqual(other.call("loadBefore", oid, MAX_TID)[1], tid)
        [thread] = storage.threads["vote"]
        self.assertTrue(thread.startswith("zeo.server worker commit"), thread)
        self.assertNotIn(thread, storage.threads["load"])


class InstancesTests(unittest.TestCase):
    """A served storage's instances for commit threads."""

    def test_a_few_clean_instances_are_kept_until_close(self):
        storage = GatedMVCCStorage()
        served = ServedStorage("1", storage, ServerConfig(),
                               LoopHooks(lambda function, *args: function(*args),
                                         lambda delay, function: None))
        first, second, third = (served.new_instance() for _ in range(3))
        self.assertEqual(len({id(first), id(second), id(third), id(storage)}), 4)
        guarded = second.tryToResolveConflict   # zeo.server.conflicts
        for instance in (first, second, third):
            served.release_instance(instance)
        released = [instance for _, instance in storage.events("release")]
        self.assertEqual(MAX_IDLE_INSTANCES, 2)
        self.assertEqual(released, [id(third)])   # two kept
        again = served.new_instance()
        self.assertIs(again, second)
        self.assertIs(again.tryToResolveConflict, guarded)   # guarded once, not again
        served.release_instance(again, reusable=False)   # a failed one: released
        served.close()
        released = [instance for _, instance in storage.events("release")]
        self.assertEqual(sorted(released), sorted([id(third), id(second), id(first)]))

    def test_a_storage_without_instances_commits_on_itself(self):
        storage = MappingStorage()
        served = ServedStorage("1", storage, ServerConfig(commit_threads="on"),
                               LoopHooks(lambda function, *args: function(*args),
                                         lambda delay, function: None))
        self.addCleanup(served.close)
        self.assertTrue(served.commit_threads)
        self.assertIs(served.new_instance(), storage)
        served.release_instance(storage)   # never closed by it
        self.assertEqual(len(storage), 0)


class OffLoopCommitTests(unittest.TestCase):
    """The lane's order, with threads run by hand."""

    def setUp(self):
        self.jobs: list[tuple[Any, Delayed]] = []
        self.released: list[tuple[Any, bool]] = []

    def release(self, instance: Any, reusable: bool) -> None:
        self.released.append((instance, reusable))

    def run_in_thread(self, function: Any) -> Delayed:
        done = Delayed()
        self.jobs.append((function, done))
        return done

    def run_job(self) -> None:
        function, done = self.jobs.pop(0)
        done.settle_with(function)

    def test_end_waits_for_the_running_call_then_aborts_in_a_thread(self):
        calls = []

        class Instance:
            def tpc_abort(self, metadata):
                calls.append("abort")

        class Txn:
            metadata = object()
            storage = None

            def storage_vote(self, on_conflict):
                calls.append("vote")
                return [], True

        instance = Instance()
        commit = OffLoopCommit(Txn(), lambda: instance, self.release, self.run_in_thread)
        voted = commit.vote(lambda error: None)
        ended = []
        commit.end(lambda: ended.append(True))
        self.assertEqual((calls, ended, len(self.jobs)), ([], [], 1))
        self.run_job()               # the vote
        self.assertEqual(voted.settled, True)
        self.assertEqual((calls, ended, len(self.jobs)), (["vote"], [], 1))
        self.run_job()               # the abort, in a thread too
        self.assertEqual(calls, ["vote", "abort"])
        self.assertEqual((self.released, ended), ([(instance, True)], [True]))
        with self.assertRaises(RuntimeError):
            commit.end(lambda: None)

    def test_an_abort_the_closing_server_never_ran_runs_on_the_loop(self):
        calls = []

        class Instance:
            def tpc_abort(self, metadata):
                calls.append("abort")

        class Txn:
            metadata = None
            storage = None

            def storage_vote(self, on_conflict):
                return [], True

        instance = Instance()
        commit = OffLoopCommit(Txn(), lambda: instance, self.release, self.run_in_thread)
        commit.vote(lambda error: None)
        self.run_job()
        ended = []
        commit.end(lambda: ended.append(True))
        _, done = self.jobs.pop(0)   # the server closes: the abort never runs
        done.fail(RuntimeError("the server closed before the call could run"))
        self.assertEqual((calls, self.released, ended), (["abort"], [(instance, False)], [True]))

    def test_a_closing_server_gets_the_call_run_on_the_loop(self):
        def refuse(function: Any) -> Delayed:
            raise RuntimeError("the server is closing")

        class Txn:
            metadata = None
            storage = None

            def storage_vote(self, on_conflict):
                return ["resolved"], False

        commit = OffLoopCommit(Txn(), object, self.release, refuse)
        outcome = commit.vote(lambda error: None)
        self.assertTrue(outcome.settled)
        self.assertEqual(len(self.released), 1)   # nothing voted: given back at once
        self.assertTrue(self.released[0][1])
        ended = []
        commit.end(lambda: ended.append(True))
        self.assertEqual(ended, [True])


class SettingTests(unittest.TestCase):

    def test_auto_is_on_for_mvcc_storages_with_new_instance(self):
        directory = tempfile.mkdtemp(prefix="zeo-commit-threads-")
        self.addCleanup(shutil.rmtree, directory)
        filestorage = FileStorage(os.path.join(directory, "Data.fs"))
        self.addCleanup(filestorage.close)
        for storage, auto in ((filestorage, False), (MappingStorage(), False),
                              (MVCCMappingStorage(), True)):
            self.assertEqual(wants_commit_threads(storage, "auto"), auto)
            self.assertTrue(wants_commit_threads(storage, "on"))
            self.assertFalse(wants_commit_threads(storage, "off"))
        with self.assertRaises(ValueError):
            wants_commit_threads(MappingStorage(), "sometimes")

    def test_config_field_and_zconfig_key(self):
        from zeo.server import zconfig
        self.assertEqual(ServerConfig().commit_threads, "auto")
        with self.assertRaisesRegex(ValueError, "commit_threads must be one of"):
            ServerConfig(commit_threads="sometimes")
        directory = tempfile.mkdtemp(prefix="zeo-commit-threads-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "zeo.conf")
        with open(path, "w") as f:
            f.write("<zeo>\n  address 127.0.0.1:0\n</zeo>\n"
                    f"<filestorage 1>\n  path {directory}/Data.fs\n</filestorage>\n")
        self.assertEqual(zconfig.load(path).config.commit_threads, "auto")
        self.assertEqual(zconfig.load(path, ["zeo/commit-threads=off"]).config.commit_threads,
                         "off")
