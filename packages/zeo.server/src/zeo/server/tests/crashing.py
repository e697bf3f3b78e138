"""The machinery of the crash-consistency and invariant runs (internal:
``test_crash``, ``test_invariant`` and `zeo.server.tests.crash_consistency`).

`crash_run`: committer processes (`crashworkers`, through ``zeo.client``)
bump counters while a real ``runzeo`` is killed with SIGKILL and restarted
on the same address and file, *kills* times; then `verify_file` checks that
every journaled commit is in the file, every revision is the previous one
plus one, and ``fstest`` passes.

`transfer_run`: transfer processes move money between shared accounts
through a `FaultProxy` while the server is killed, stopped and restarted
and connections are reset or cut; then `verify_transfers` checks that the
total holds after every transaction in the file.

See ``test_crash`` and ``test_invariant`` for what each run proves.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any, Callable

from zeo.server.tests import crashworkers
from zeo.server.tests.faultproxy import FaultProxy
from zeo.server.tests.support import ServerProcess, child_env, tail

__all__ = ["CrashResult", "FAULTS", "HANG_TIMEOUT", "PROGRESS_TIMEOUT", "TransferResult",
           "Workers", "crash_run", "transfer_run", "verify_file", "verify_transfers",
           "wait_for_growth"]

#: How long the clients may take to commit again after a restart.
PROGRESS_TIMEOUT = 60.0
#: How long a worker may take for one transaction (then it is hung).
HANG_TIMEOUT = 90.0


class Workers:
    """Worker subprocesses of `crashworkers`, stopped together by a stop file."""

    def __init__(self, directory: str, address: tuple[str, int]) -> None:
        self.directory = directory
        self.address = address
        self.stop_file = os.path.join(directory, "stop")
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def journal(self, name: str) -> str:
        return os.path.join(self.directory, f"{name}.journal")

    def stderr(self, name: str) -> str:
        return os.path.join(self.directory, f"{name}.stderr")

    def start(self, kind: str, name: str, seed: int, *options: str) -> None:
        with open(self.stderr(name), "wb") as err:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "zeo.server.tests.crashworkers", kind,
                 "%s:%d" % self.address, "--name", name, "--seed", str(seed),
                 "--journal", self.journal(name), "--stop-file", self.stop_file,
                 "--hang-timeout", str(HANG_TIMEOUT), *options],
                env=child_env(), cwd=self.directory, stdout=subprocess.DEVNULL,
                stderr=err)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every worker has opened its database (its journal
        begins with a ``ready`` line), so faults hit running clients."""
        deadline = time.monotonic() + timeout
        for name in self.processes:
            journal = self.journal(name)
            while not (os.path.exists(journal) and os.path.getsize(journal)):
                self.check_alive()
                if time.monotonic() > deadline:
                    raise AssertionError(f"worker {name} not ready within {timeout:.0f} s")
                time.sleep(0.05)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(f"worker {name} exited early with {process.returncode}:"
                                     f"\n{tail(self.stderr(name))}")

    def stop(self, timeout: float = HANG_TIMEOUT + 30) -> dict[str, dict[str, Any]]:
        """Stop every worker; return their summaries, or raise if one failed."""
        with open(self.stop_file, "w"):
            pass
        deadline = time.monotonic() + timeout
        problems = []
        for name, process in self.processes.items():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                problems.append(f"worker {name} did not stop within {timeout:.0f} s")
                continue
            if process.returncode != 0:
                problems.append(f"worker {name} exited with {process.returncode}:\n"
                                f"{tail(self.stderr(name))}")
        if problems:
            raise AssertionError("\n".join(problems))
        summaries = {}
        for name in self.processes:
            entries = crashworkers.read_journal(self.journal(name))
            summary = crashworkers.summary_of(entries)
            if summary is None:
                raise AssertionError(f"worker {name} wrote no summary")
            errors = [e["error"] for e in entries if e["k"] == "error"]
            if errors:
                raise AssertionError(f"worker {name} had unexpected errors: {errors[:5]}")
            summaries[name] = summary
        return summaries

    def ensure_dead(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def wait_for_growth(path: str, timeout: float = PROGRESS_TIMEOUT, poll: float = 0.05,
                    check: Callable[[], None] | None = None) -> None:
    """Return once *path* grows: some transaction is being committed."""
    size = os.path.getsize(path)
    deadline = time.monotonic() + timeout
    while os.path.getsize(path) <= size:
        if time.monotonic() > deadline:
            raise AssertionError(f"no commit within {timeout:.0f} s")
        if check is not None:
            check()
        time.sleep(poll)


@dataclasses.dataclass
class CrashResult:
    kills: int = 0
    growth_kills: int = 0
    mid_commit_kills: int = 0
    transactions_verified: int = 0
    records_verified: int = 0
    revisions_checked: int = 0
    commits: int = 0
    conflicts: int = 0
    disconnects: int = 0
    longest_step: float = 0.0
    seconds: float = 0.0


def crash_run(directory: str, *, kills: int, clients: int = 3, seed: int,
              per_client: int = 4, pad: int = 256 * 1024,
              report: Callable[[str], None] | None = None) -> CrashResult:
    """Kill and restart the server *kills* times under *clients* committers."""
    started = time.monotonic()
    rnd = random.Random(seed)
    path = os.path.join(directory, "Data.fs")
    names = [f"c{i}" for i in range(clients)]
    crashworkers.create_counters(path, names, per_client)
    server = ServerProcess(directory, path=path, start=False)
    workers = Workers(directory, server.address)
    result = CrashResult()
    try:
        server.start()
        for index, name in enumerate(names):
            options = ["--pad", str(pad)] if index == 0 and pad else []
            if index % 2:    # half the clients keep a persistent cache
                options += ["--var", directory]
            workers.start("committer", name, rnd.randrange(1 << 30), *options)
        workers.wait_ready()
        for number in range(kills):
            wait_for_growth(path, check=workers.check_alive)
            if rnd.random() < 0.5:
                time.sleep(rnd.uniform(0, 1.0))
            else:
                wait_for_growth(path, poll=0.0005)
                result.growth_kills += 1
            server.kill()
            server.start()
            result.kills += 1
            if report is not None:
                report(f"kill {number + 1}/{kills}")
        wait_for_growth(path, check=workers.check_alive)
        summaries = workers.stop()
        server.stop(check=True)
    finally:
        workers.ensure_dead()
        server.ensure_dead()
    result.mid_commit_kills = len(glob.glob(path + ".tr*"))
    for summary in summaries.values():
        result.commits += summary["commits"]
        result.conflicts += summary["conflicts"]
        result.disconnects += summary["disconnects"]
        result.longest_step = max(result.longest_step, summary["longest"])
    stale = {name: s["violations"] for name, s in summaries.items() if s["violations"]}
    if stale:
        raise AssertionError(f"stale reads (see the journals' 'stale' lines): {stale}")
    idle = [name for name, s in summaries.items() if not s["commits"]]
    if idle:
        raise AssertionError(f"committers that never committed: {idle}")
    verify_file(path, [workers.journal(name) for name in names], result)
    result.seconds = time.monotonic() - started
    return result


def verify_file(path: str, journals: list[str], result: CrashResult) -> None:
    from ZODB.FileStorage import FileStorage
    from ZODB.scripts import fstest
    fstest.check(path)   # raises FormatError
    storage = FileStorage(path, read_only=True)
    try:
        checked = crashworkers.verify_journals(storage, journals)
        result.transactions_verified = len(checked)
        result.records_verified = sum(checked.values())
        result.revisions_checked = crashworkers.check_counter_history(storage)
    finally:
        storage.close()


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
