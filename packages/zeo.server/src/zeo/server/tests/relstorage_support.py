"""Helpers shared by the tests of zeo fronts over RelStorage on PostgreSQL
(``test_relstorage_*``): fronts as runzeo subprocesses, client databases,
reading and writing the root in a transaction of their own.

The database comes from `zeo.server.tests.postgres.POSTGRES_LAYER`.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any, Callable

import transaction
import ZODB
from persistent.mapping import PersistentMapping

import zeo.client
from zeo.server.testing_postgres import relstorage_section
from zeo.server.tests.support import ServerProcess, wait_until

__all__ = ["WAIT", "client_db", "fronts", "read", "wait_for", "write"]

#: The bound on "a client of the other front hears of it" (a correctness
#: check, not a speed assertion).
WAIT = 5.0


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> None:
    """`wait_until` with the fronts' bound, looking every 2 ms."""
    wait_until(condition, what, timeout=timeout, interval=0.002)


def fronts(test: Any, count: int, dsn: str, **zeo_options: str) -> list[ServerProcess]:
    """*count* runzeo fronts (``commit-source postgresql``) on *dsn*,
    stopped at the test's end."""
    options = {"commit-source": "postgresql", **zeo_options}
    servers = []
    for _ in range(count):
        directory = tempfile.mkdtemp(prefix="zeo-front-")
        test.addCleanup(shutil.rmtree, directory, True)
        server = ServerProcess(directory, zeo_options=options, storage=relstorage_section(dsn))
        test.addCleanup(server.stop)
        servers.append(server)
    return servers


def client_db(test: Any, address: Any) -> ZODB.DB:
    """A zeo.client DB on *address*, closed at the test's end."""
    db = ZODB.DB(zeo.client.ClientStorage(address, wait_timeout=30))
    test.addCleanup(db.close)
    return db


def read(db: ZODB.DB, key: str) -> Any:
    """``root[key]`` read in a transaction of its own (a mapping as a dict)."""
    manager = transaction.TransactionManager()
    connection = db.open(transaction_manager=manager)
    try:
        with manager:
            value = connection.root().get(key)
            return dict(value) if isinstance(value, PersistentMapping) else value
    finally:
        connection.close()


def write(db: ZODB.DB, **values: Any) -> bytes:
    """Set root keys in a transaction of its own; the storage's newest tid
    afterwards."""
    manager = transaction.TransactionManager()
    connection = db.open(transaction_manager=manager)
    try:
        with manager:
            connection.root().update(values)
    finally:
        connection.close()
    tid: bytes = db.storage.lastTransaction()
    return tid
