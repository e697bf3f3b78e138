"""Read-only fronts on a PostgreSQL hot standby: never older than seen.

A zeo server may serve a RelStorage opened ``read-only true`` (and
``create-schema false``) on a streaming-replication hot standby, for
read-mostly clients (``read_only`` or ``read_only_fallback``).  Its
`PostgresCommitSource` finds the commits the standby replays by polling:
PostgreSQL refuses ``LISTEN`` during recovery ("cannot execute LISTEN
during recovery"), so notifications are off there whatever the setting.

The rule: a front never serves a client a state older than one that client
has already seen.  ``register`` carries no tid of the client's (ZEO 5's
protocol), so the front cannot compare with the client's cache; instead it
compares with the primary, which every state any client has seen came
from:

1. When a client registers, the front asks the primary (``primary_dsn``)
   for its newest tid (one indexed query, under ``statement_timeout``).
2. If the front has announced that tid (or a newer one), the answer is
   immediate.  Otherwise the answer waits: every ``CATCH_UP_STEP`` seconds
   the source looks for replayed commits (announcing them as usual), and
   the answer is sent as soon as the front's ``lastTransaction`` reaches
   the primary's.  The client's cache is at most that tid, so it never
   sees the front behind it (a zeo.client would drop its cache; the
   reference client refuses the server).
3. Bounded: after ``catch_up_timeout`` seconds the ``register`` fails
   (``StorageError``) and the connection is closed; the client tries again,
   another address first if it has several.
4. The primary cannot be asked (down, or unreachable): the answer is the
   front's own ``lastTransaction`` (logged).  That is the read-only
   fallback case: nothing commits while the primary is down, and what the
   standby has not received was never acknowledged by a synchronous
   standby; with asynchronous replication a commit acknowledged just before
   the primary failed may be missing.  Asking again waits at doubling
   intervals (up to ``MAX_RECONNECT_DELAY``), as the source's own polls, so
   a dead primary does not hold the loop in ``connect`` at every register.
5. Sizes read read-only.  RelStorage reads the database size (``getSize``,
   asked by every client's ``get_info``) in a read-write transaction, which
   a standby refuses; `read_only_size` makes a read-only storage read it on
   a load (read-only) connection instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg2
from ZODB.POSException import StorageError

from zeo.server.results import Delayed

__all__ = ["CATCH_UP_STEP", "MAX_RECONNECT_DELAY", "PrimaryPosition", "catch_up",
           "read_only_size"]

logger = logging.getLogger(__name__)

#: Seconds between looks while a registering client waits (rule 2).
CATCH_UP_STEP = 0.02
#: Most seconds between attempts to reach a primary that failed (rule 4).
MAX_RECONNECT_DELAY = 30.0


class PrimaryPosition:
    """The newest tid of the primary at *dsn* (rules 1 and 4)."""

    def __init__(self, dsn: str, statement_timeout: float) -> None:
        self.dsn = dsn
        self.statement_timeout = statement_timeout
        self._connection: Any = None
        self._next_connect = 0.0
        self._failures = 0

    def newest_tid(self) -> int | None:
        """The primary's newest tid (0: none yet); None if it cannot be
        asked now (logged)."""
        if self._connection is None and time.monotonic() < self._next_connect:
            return None
        try:
            connection = self._connect()
            with connection.cursor() as cursor:
                cursor.execute("SELECT max(tid) FROM object_state")
                row = cursor.fetchone()
        except psycopg2.Error as error:
            self._failures = min(self._failures + 1, 16)
            delay = min(MAX_RECONNECT_DELAY, 0.5 * 2 ** self._failures)
            self._next_connect = time.monotonic() + delay
            logger.warning("could not ask the primary for its newest commit (%s);"
                           " clients registering in the next %g s get this standby's",
                           str(error).strip()[:300], delay)
            self.close()
            return None
        self._failures = 0
        return row[0] if row and row[0] is not None else 0

    def _connect(self) -> Any:
        if self._connection is None:
            connection = psycopg2.connect(
                self.dsn, connect_timeout=max(1, round(self.statement_timeout)),
                application_name="zeo.server standby front")
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("SET statement_timeout = %s",
                               (int(self.statement_timeout * 1000),))
            self._connection = connection
        return self._connection

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except psycopg2.Error:
                pass


def catch_up(primary: PrimaryPosition, look: Callable[[], None],
             last_tid: Callable[[], bytes], call_later: Callable[..., Any],
             timeout: float, on_timeout: Callable[[], None]) -> Any:
    """The ``register`` answer of a front on a standby (see the module
    rules): *last_tid* at once if it is the primary's newest tid or newer,
    else a `Delayed` settled when it is, after calls of *look* (which
    announces replayed commits), or failed after *timeout* seconds (then
    *on_timeout* is called: it closes the connection)."""
    target = primary.newest_tid()
    if target is None or _u64(last_tid()) >= target:
        return last_tid()
    answer = Delayed()
    deadline = time.monotonic() + timeout

    def step() -> None:
        if answer.settled:
            return
        look()
        if _u64(last_tid()) >= target:
            answer.resolve(last_tid())
        elif time.monotonic() >= deadline:
            logger.warning("a registering client waited %g s for this standby to replay"
                           " the primary's commit %016x (it has %s); refused", timeout,
                           target, last_tid().hex())
            answer.fail(StorageError(
                f"this read-only server (a standby) is behind the primary: it has not"
                f" replayed transaction {target:016x} within {timeout:g} s; try another"
                f" server"))
            on_timeout()
        else:
            call_later(CATCH_UP_STEP, step)

    call_later(0, step)
    return answer


def read_only_size(adapter: Any) -> None:
    """Make a RelStorage PostgreSQL *adapter* read the database size in a
    read-only transaction (rule 5): on this adapter's stats object only."""
    stats = adapter.stats
    connmanager = adapter.connmanager

    def get_db_size() -> int:
        connection, cursor = connmanager.open_for_load()
        try:
            cursor.execute("SELECT pg_database_size(current_database())")
            size: int = cursor.fetchone()[0]
            return size
        finally:
            connmanager.close(connection, cursor)

    stats.get_db_size = get_db_size


def _u64(tid: bytes) -> int:
    return int.from_bytes(tid, "big")
