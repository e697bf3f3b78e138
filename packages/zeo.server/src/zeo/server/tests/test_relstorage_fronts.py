"""Several real runzeo fronts over one RelStorage database on PostgreSQL.

Each front is a ``runzeo -C`` subprocess with ``commit-source postgresql``
and a ``<relstorage>`` section on the same database
(`zeo.server.tests.postgres.POSTGRES_LAYER`). `visibility` measures how
long a commit on one front takes to reach the clients of another; run this
module directly to print the figures quoted in docs/scaling.rst::

    bin/test -s zeo.server -m test_relstorage_fronts -t measure   (quick)
"""

from __future__ import annotations

import shutil
import socket
import statistics
import tempfile
import threading
import time
import unittest

import transaction
import ZODB
from persistent.mapping import PersistentMapping

import zeo.client
from zeo.server.runzeo import UsageError, build, parser
from zeo.server.tests.postgres import POSTGRES_LAYER, create_root
from zeo.server.tests.rawclient import RawClient
from zeo.server.tests.relstorage_support import WAIT, client_db, fronts, read, wait_for, write

__all__ = ["ConfigurationTests", "TransferTests", "TwoFrontsTests", "transfer_concurrently",
           "visibility"]


def visibility(a_address, b_address, commits=50):
    """Seconds from a commit returning on front A to the invalidation
    arriving at a client of front B, for *commits* commits (negative: B's
    client heard before A's committer had its reply)."""
    db = ZODB.DB(zeo.client.ClientStorage(a_address, wait_timeout=30))
    listener = RawClient(b_address)
    listener.sock.settimeout(None)
    arrived = {}
    lock = threading.Condition()

    def listen():
        try:
            while True:
                message = listener.wait_one_way("invalidateTransaction")
                with lock:
                    arrived[message.args[0]] = time.monotonic()
                    lock.notify_all()
        except (ConnectionError, OSError):
            pass

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    latencies = []
    try:
        for n in range(commits):
            tid = write(db, n=n)
            returned = time.monotonic()
            with lock:
                if not lock.wait_for(lambda: tid in arrived, WAIT):
                    raise AssertionError(f"front B never announced {tid.hex()}")
                latencies.append(arrived[tid] - returned)
    finally:
        listener.sock.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(10)
        db.close()
    return latencies


class TwoFrontsTests(unittest.TestCase):
    layer = POSTGRES_LAYER

    def check_a_commit_reaches_the_other_front(self, **zeo_options):
        dsn = POSTGRES_LAYER.new_database()
        create_root(dsn)
        a, b = fronts(self, 2, dsn, **zeo_options)
        on_a, on_b = client_db(self, a.address), client_db(self, b.address)
        write(on_a, n=0)
        wait_for(lambda: read(on_b, "n") == 0, "front B's client to read n == 0")
        # B's client has the root cached: only an invalidation moves it on.
        for n in range(1, 4):
            tid = write(on_a, n=n, thing=PersistentMapping(n=n))
            wait_for(lambda: on_b.storage.lastTransaction() >= tid,
                     f"front B's client to hear of {tid.hex()}")
            self.assertEqual(read(on_b, "n"), n)
        # A brand-new client of B sees the new object.
        fresh = client_db(self, b.address)
        self.assertEqual(read(fresh, "thing"), {"n": 3})
        # And the other way round.
        tid = write(on_b, n=10)
        wait_for(lambda: on_a.storage.lastTransaction() >= tid,
                 f"front A's client to hear of {tid.hex()}")
        self.assertEqual(read(on_a, "n"), 10)
        latencies = visibility(a.address, b.address, commits=5)
        self.assertLess(max(latencies), 2.0)
        for server in (a, b):
            self.assertEqual(server.stop(), 0)
            self.assertNotIn("Traceback", server.log_text())

    def test_notify(self):
        self.check_a_commit_reaches_the_other_front()

    def test_polling_alone(self):
        self.check_a_commit_reaches_the_other_front(
            **{"commit-source-notify": "false", "commit-source-poll-interval": "0.1"})

    def test_measure_visibility(self):
        """Not a speed assertion: prints the figures (50 commits each)."""
        dsn = POSTGRES_LAYER.new_database()
        create_root(dsn)
        figures = {}
        for label, options in (
                ("notify", {}),
                ("poll 0.05 s", {"commit-source-notify": "false",
                                 "commit-source-poll-interval": "0.05"})):
            a, b = fronts(self, 2, dsn, **options)
            latencies = visibility(a.address, b.address, commits=50)
            a.stop()
            b.stop()
            figures[label] = latencies
            self.assertLess(max(latencies), 2.0)
        for label, latencies in figures.items():
            latencies = sorted(latencies)
            print(f"\n  {label}: {len(latencies)} commits, median"
                  f" {statistics.median(latencies) * 1000:.1f} ms, p90"
                  f" {latencies[int(len(latencies) * 0.9) - 1] * 1000:.1f} ms,"
                  f" max {latencies[-1] * 1000:.1f} ms", end="")


def transfer_concurrently(addresses, *, clients_per_front=2, transfers=15, accounts=5,
                          balance=1000, attempts=100, seed=0):
    """On each front, *clients_per_front* clients (threads, a zeo.client DB
    each) make *transfers* transfers between *accounts* accounts (one
    persistent object each), retrying on ConflictError. Each client also
    appends its transfers to a log object of its own.

    Returns ``done`` (the acknowledged transfers per client, as
    ``(source, target, amount)``), ``retries``, ``errors`` (other
    exceptions' reprs) and, read afterwards through the first front,
    ``balances`` and ``logs``.
    """
    import random

    from persistent.list import PersistentList
    from ZODB.POSException import ConflictError

    names = [f"account{n}" for n in range(accounts)]
    clients = [(f"client{f}.{c}", address) for f, address in enumerate(addresses)
               for c in range(clients_per_front)]
    db = ZODB.DB(zeo.client.ClientStorage(addresses[0], wait_timeout=30))
    try:
        with db.transaction() as connection:
            for name in names:
                connection.root()[name] = PersistentMapping(balance=balance)
            for label, _ in clients:
                connection.root()[f"log-{label}"] = PersistentList()
    finally:
        db.close()
    result = {"done": {label: [] for label, _ in clients}, "retries": 0, "errors": []}
    lock = threading.Lock()

    def client(label, address, rng):
        manager = transaction.TransactionManager()
        db = ZODB.DB(zeo.client.ClientStorage(address, wait_timeout=30))
        try:
            connection = db.open(manager)
            for _ in range(transfers):
                source, target = rng.sample(names, 2)
                amount = rng.randint(1, 50)
                for _ in range(attempts):
                    manager.begin()
                    try:
                        root = connection.root()
                        root[source]["balance"] -= amount
                        root[target]["balance"] += amount
                        root[f"log-{label}"].append((source, target, amount))
                        manager.commit()
                    except ConflictError:
                        manager.abort()
                        with lock:
                            result["retries"] += 1
                        continue
                    except Exception as error:
                        manager.abort()
                        with lock:
                            result["errors"].append(f"{error!r:.300}")
                        break
                    result["done"][label].append((source, target, amount))
                    break
            connection.close()
        except Exception as error:
            with lock:
                result["errors"].append(f"{label}: {error!r:.300}")
        finally:
            db.close()

    rng = random.Random(seed)
    threads = [threading.Thread(target=client, args=(label, address, random.Random(rng.random())))
               for label, address in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    db = ZODB.DB(zeo.client.ClientStorage(addresses[0], wait_timeout=30))
    try:
        with db.transaction() as connection:
            root = connection.root()
            result["balances"] = {name: root[name]["balance"] for name in names}
            result["logs"] = {label: list(root[f"log-{label}"]) for label, _ in clients}
    finally:
        db.close()
    return result


class TransferTests(unittest.TestCase):
    """Three fronts, two clients each, moving money between accounts."""

    layer = POSTGRES_LAYER

    def test_the_total_never_changes_and_every_acknowledged_transfer_is_there(self):
        dsn = POSTGRES_LAYER.new_database()
        create_root(dsn)
        servers = fronts(self, 3, dsn)
        result = transfer_concurrently([server.address for server in servers])
        self.assertEqual(result["errors"], [])
        done = result["done"]
        self.assertEqual(sum(map(len, done.values())), 6 * 15)
        # Every acknowledged transfer is in the database, and nothing else.
        self.assertEqual(result["logs"], done)
        expected = dict.fromkeys(result["balances"], 1000)
        for transfers in done.values():
            for source, target, amount in transfers:
                expected[source] -= amount
                expected[target] += amount
        self.assertEqual(result["balances"], expected)
        self.assertEqual(sum(result["balances"].values()), 5 * 1000)
        for server in servers:
            self.assertEqual(server.stop(), 0)
            self.assertNotIn("Traceback", server.log_text())


class ConfigurationTests(unittest.TestCase):

    def test_commit_source_on_a_file_storage_is_a_usage_error(self):
        directory = tempfile.mkdtemp(prefix="zeo-front-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = f"{directory}/zeo.conf"
        with open(path, "w") as f:
            f.write("<zeo>\n  address 127.0.0.1:0\n  commit-source postgresql\n</zeo>\n"
                    f"<filestorage 1>\n  path {directory}/Data.fs\n</filestorage>\n")
        with self.assertRaisesRegex(UsageError, "needs a RelStorage on PostgreSQL"):
            build(parser().parse_args(["-C", path]))

    def test_an_unknown_commit_source_is_refused(self):
        directory = tempfile.mkdtemp(prefix="zeo-front-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = f"{directory}/zeo.conf"
        with open(path, "w") as f:
            f.write("<zeo>\n  address 127.0.0.1:0\n  commit-source mysql\n</zeo>\n"
                    f"<filestorage 1>\n  path {directory}/Data.fs\n</filestorage>\n")
        with self.assertRaisesRegex(UsageError, "commit_source must be one of"):
            build(parser().parse_args(["-C", path]))

    def test_keys_and_defaults(self):
        from zeo.server import zconfig
        directory = tempfile.mkdtemp(prefix="zeo-front-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = f"{directory}/zeo.conf"
        with open(path, "w") as f:
            f.write("<zeo>\n  address 127.0.0.1:0\n</zeo>\n"
                    f"<filestorage 1>\n  path {directory}/Data.fs\n</filestorage>\n")
        config = zconfig.load(path).config
        self.assertEqual((config.commit_source, config.commit_source_notify,
                          config.commit_source_poll_interval), (None, True, 1.0))
        config = zconfig.load(path, [
            "zeo/commit-source=postgresql", "zeo/commit-source-notify=false",
            "zeo/commit-source-poll-interval=0.25"]).config
        self.assertEqual((config.commit_source, config.commit_source_notify,
                          config.commit_source_poll_interval), ("postgresql", False, 0.25))
