"""Scenarios over real sockets: runzeo fronts on one RelStorage database.

Each front is a ``runzeo -C`` subprocess with ``commit-source postgresql``
(see `test_relstorage_fronts`, whose helpers are reused). The scenarios of
issue #18 beyond the money transfers:

- `CounterTests`: a ``BTrees.Length.Length`` incremented by clients of
  three fronts; its conflicts are resolved in the server (RelStorage's vote
  through our conflict-resolution guard), none fails for a front's
  snapshot being ahead of its client, and nothing is lost. A subclass
  from outside the allowed packages is not resolved: its clients retry.
- `FailoverTests`: clients given both fronts' addresses; one front is
  killed (SIGKILL) while they commit; they carry on through the other and
  every commit they saw acknowledged is in the database.
- `ReferenceClientTests`: ZEO 6.2's own ``ClientStorage`` on a front
  commits, and hears of another front's commit.

Counts are small; every wait is bounded; the figures (commits, conflicts
resolved and retried, failover errors) are printed, never asserted on
speed.
"""

from __future__ import annotations

import threading
import time
import unittest
from typing import Any

import BTrees.Length
import transaction
import ZODB
from persistent.mapping import PersistentMapping
from ZODB.POSException import ConflictError

import zeo.client
from zeo.server.tests.postgres import POSTGRES_LAYER, create_root, open_relstorage
from zeo.server.tests.relstorage_support import fronts, read, wait_for, write

__all__ = ["CounterTests", "CountingClientStorage", "FailoverTests", "OutsiderLength",
           "ReferenceClientTests", "count_concurrently", "commit_through_failover"]

#: Bound on a whole scenario's client threads (a hang fails, never blocks).
JOIN = 120.0


class CountingClientStorage(zeo.client.ClientStorage):
    """A zeo.client storage that counts the oids the server resolved
    (``tpc_vote``'s answer) in ``resolved``."""

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self.resolved = 0

    def tpc_vote(self, txn: Any) -> Any:
        result = super().tpc_vote(txn)
        self.resolved += len(result or ())
        return result


class OutsiderLength(BTrees.Length.Length):
    """A Length from a package the server does not resolve conflicts for."""


def count_concurrently(addresses: list[Any], *, factory: type = BTrees.Length.Length,
                       clients_per_front: int = 3, increments: int = 10,
                       attempts: int = 100) -> dict[str, Any]:
    """On each front, *clients_per_front* clients (threads, a zeo.client DB
    each) add 1 to ``root['length']`` (a new *factory* instance) *increments*
    times, retrying on ConflictError.

    Returns ``landed`` (acknowledged increments), ``resolved`` (conflicts
    the server resolved), ``retries`` (ConflictErrors retried), ``errors``
    (other exceptions' reprs) and ``final`` (the counter, read afterwards
    through the first front).
    """
    db = ZODB.DB(zeo.client.ClientStorage(addresses[0], wait_timeout=30))
    try:
        with db.transaction() as connection:
            connection.root()["length"] = factory()
    finally:
        db.close()
    result: dict[str, Any] = {"landed": 0, "resolved": 0, "retries": 0, "retried": {},
                              "errors": []}
    lock = threading.Lock()
    start = threading.Barrier(len(addresses) * clients_per_front, timeout=JOIN)

    def client(address: Any) -> None:
        manager = transaction.TransactionManager()
        storage = CountingClientStorage(address, wait_timeout=30)
        db = ZODB.DB(storage)
        try:
            connection = db.open(manager)
            start.wait()
            for _ in range(increments):
                for _ in range(attempts):
                    manager.begin()
                    try:
                        connection.root()["length"].change(1)
                        manager.commit()
                    except ConflictError as error:
                        manager.abort()
                        with lock:
                            result["retries"] += 1
                            # RelStorage's CacheConsistencyError reaches
                            # clients as a ConflictError: say which it was.
                            kind = ("CacheConsistencyError" if "CacheConsistencyError"
                                    in str(error) else type(error).__name__)
                            result["retried"][kind] = result["retried"].get(kind, 0) + 1
                        continue
                    with lock:
                        result["landed"] += 1
                    break
            connection.close()
        except Exception as error:
            with lock:
                result["errors"].append(f"{error!r:.300}")
        finally:
            with lock:
                result["resolved"] += storage.resolved
            db.close()

    threads = [threading.Thread(target=client, args=(address,), daemon=True)
               for address in addresses for _ in range(clients_per_front)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + JOIN
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    result["hung"] = sum(thread.is_alive() for thread in threads)
    db = ZODB.DB(zeo.client.ClientStorage(addresses[0], wait_timeout=30))
    try:
        with db.transaction() as connection:
            result["final"] = connection.root()["length"]()
    finally:
        db.close()
    return result


def report(label: str, figures: dict[str, Any]) -> None:
    text = ", ".join(f"{key} {value}" for key, value in figures.items())
    print(f"\n  {label}: {text}", end="")


class CounterTests(unittest.TestCase):
    """Three fronts, three clients each, one BTrees.Length counter."""

    layer = POSTGRES_LAYER

    def count(self, factory: type) -> dict[str, Any]:
        dsn = POSTGRES_LAYER.new_database()
        create_root(dsn)
        servers = fronts(self, 3, dsn)
        result = count_concurrently([server.address for server in servers], factory=factory)
        self.assertEqual(result["errors"], [])
        self.assertEqual(result["hung"], 0)
        # Nothing lost, nothing counted twice.
        self.assertEqual(result["landed"], 3 * 3 * 10)
        self.assertEqual(result["final"], result["landed"])
        # The revision a client started from is read by (oid, serial)
        # (zeo.server.relstorage_conflicts): a front's snapshot being ahead
        # of a client is no longer a CacheConsistencyError to retry.
        self.assertNotIn("CacheConsistencyError", result["retried"])
        for server in servers:
            self.assertEqual(server.stop(), 0)
            self.assertNotIn("Traceback", server.log_text())
        return result

    def test_length_conflicts_are_resolved_in_the_server(self):
        result = self.count(BTrees.Length.Length)
        report("BTrees.Length, 3 fronts x 3 clients x 10",
               {k: result[k] for k in ("landed", "final", "resolved", "retries", "retried")})
        # Clients of three fronts racing on one record: some conflicts
        # happen, and the server resolves them (RelStorage's vote, through
        # the guard, which allows BTrees classes), from the revision each
        # client started from.
        self.assertGreater(result["resolved"], 0)

    def test_a_class_outside_the_allowed_packages_is_retried_not_resolved(self):
        result = self.count(OutsiderLength)
        report("OutsiderLength, 3 fronts x 3 clients x 10",
               {k: result[k] for k in ("landed", "final", "resolved", "retries", "retried")})
        self.assertEqual(result["resolved"], 0)
        # Every conflict was retried by its client instead: the guard
        # stands in front of RelStorage's own resolution too.
        self.assertGreater(result["retries"], 0)


def commit_through_failover(addresses: list[Any], kill: Any, *, clients: int = 4,
                            commits: int = 30, kill_after: int = 8,
                            deadline: float = 60.0) -> dict[str, Any]:
    """*clients* zeo.client DBs given all *addresses* each write ``n`` into
    a mapping of their own (``root[label][n]``: idempotent, so a retry of a
    commit whose outcome was unknown is harmless) for n in ``range(commits)``,
    retrying any error until it is acknowledged. Once every client has
    *kill_after* commits acknowledged, ``kill()`` is called (it kills a
    front); the clients carry on.

    Returns ``acknowledged`` (label -> the n whose commit returned),
    ``attempted`` (label -> every n tried), ``failures`` (errors retried, by
    type name) and ``hung`` (threads still running at *deadline*).
    """
    labels = [f"client{c}" for c in range(clients)]
    db = ZODB.DB(zeo.client.ClientStorage(addresses, wait_timeout=30))
    try:
        with db.transaction() as connection:
            for label in labels:
                connection.root()[label] = PersistentMapping()
    finally:
        db.close()
    result: dict[str, Any] = {"acknowledged": {label: [] for label in labels},
                              "attempted": {label: set() for label in labels},
                              "failures": {}}
    lock = threading.Lock()
    far_enough = threading.Barrier(clients + 1, timeout=JOIN)
    stop_at = time.monotonic() + deadline

    def client(label: str) -> None:
        manager = transaction.TransactionManager()
        db = ZODB.DB(zeo.client.ClientStorage(addresses, wait_timeout=10))
        try:
            connection = db.open(manager)
            for n in range(commits):
                if n == kill_after:
                    far_enough.wait()
                while time.monotonic() < stop_at:
                    result["attempted"][label].add(n)
                    manager.begin()
                    try:
                        connection.root()[label][n] = label
                        manager.commit()
                    except Exception as error:
                        manager.abort()
                        with lock:
                            name = type(error).__name__
                            result["failures"][name] = result["failures"].get(name, 0) + 1
                        time.sleep(0.05)
                        continue
                    result["acknowledged"][label].append(n)
                    break
            connection.close()
        finally:
            db.close()

    threads = [threading.Thread(target=client, args=(label,), daemon=True) for label in labels]
    for thread in threads:
        thread.start()
    far_enough.wait()
    kill()
    for thread in threads:
        thread.join(max(0.0, stop_at + 30 - time.monotonic()))
    result["hung"] = sum(thread.is_alive() for thread in threads)
    return result


def stored_mappings(db: Any, labels: list[str]) -> dict[str, set[int]]:
    manager = transaction.TransactionManager()
    connection = db.open(transaction_manager=manager)
    try:
        with manager:
            return {label: set(connection.root()[label]) for label in labels}
    finally:
        connection.close()


class FailoverTests(unittest.TestCase):
    """Two fronts; one is killed while clients given both commit."""

    layer = POSTGRES_LAYER

    def test_nothing_acknowledged_is_lost_when_a_front_dies(self):
        dsn = POSTGRES_LAYER.new_database()
        create_root(dsn)
        servers = fronts(self, 2, dsn)
        addresses = [server.address for server in servers]
        killed = []

        def kill() -> None:
            # The front most clients are on (the one that has the most
            # connections), killed as they commit.
            victim = max(servers, key=lambda server: server.connections())
            killed.append((victim, victim.connections()))
            victim.process.kill()
            victim.process.wait(30)

        result = commit_through_failover(addresses, kill)
        victim, connected = killed[0]
        survivor = next(server for server in servers if server is not victim)
        self.assertEqual(result["hung"], 0)
        acknowledged = result["acknowledged"]
        labels = sorted(acknowledged)
        # Every client finished: after the kill it went on through the other front.
        for label in labels:
            self.assertEqual(acknowledged[label], list(range(30)), label)
        # Every acknowledged commit is there, read through the surviving
        # front and with RelStorage directly; nothing that wasn't tried.
        through_front = ZODB.DB(zeo.client.ClientStorage(survivor.address, wait_timeout=30))
        self.addCleanup(through_front.close)
        direct = ZODB.DB(open_relstorage(dsn))
        self.addCleanup(direct.close)
        for db in (through_front, direct):
            stored = stored_mappings(db, labels)
            for label in labels:
                self.assertLessEqual(set(acknowledged[label]), stored[label], label)
                self.assertLessEqual(stored[label], result["attempted"][label], label)
        report("failover, 2 fronts, 4 clients x 30 commits",
               {"clients on the killed front": connected,
                "errors retried": result["failures"] or 0})
        self.assertEqual(survivor.stop(), 0)
        self.assertNotIn("Traceback", survivor.log_text())


class ReferenceClientTests(unittest.TestCase):
    """ZEO 6.2's ClientStorage on a front."""

    layer = POSTGRES_LAYER

    def test_the_reference_client_commits_and_hears_of_the_other_front(self):
        from ZEO.ClientStorage import ClientStorage

        dsn = POSTGRES_LAYER.new_database()
        create_root(dsn)
        a, b = fronts(self, 2, dsn)
        reference = ZODB.DB(ClientStorage(a.address, wait=1, wait_timeout=30))
        self.addCleanup(reference.close)
        ours = ZODB.DB(zeo.client.ClientStorage(b.address, wait_timeout=30))
        self.addCleanup(ours.close)
        # The reference client commits on A; B's client reads it.
        tid = write(reference, n=1, thing=PersistentMapping(by="reference"))
        wait_for(lambda: ours.storage.lastTransaction() >= tid, f"front B to hear of {tid.hex()}")
        self.assertEqual(read(ours, "thing"), {"by": "reference"})
        # Both have the root cached; each commit reaches the other by an
        # invalidation within the bound.
        for n in range(2, 5):
            tid = write(ours, n=n)
            wait_for(lambda: reference.storage.lastTransaction() >= tid,
                     f"the reference client on front A to hear of {tid.hex()}")
            self.assertEqual(read(reference, "n"), n)
            tid = write(reference, n=-n)
            wait_for(lambda: ours.storage.lastTransaction() >= tid,
                     f"front B's client to hear of {tid.hex()}")
            self.assertEqual(read(ours, "n"), -n)
        for server in (a, b):
            self.assertEqual(server.stop(), 0)
            self.assertNotIn("Traceback", server.log_text())
