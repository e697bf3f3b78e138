"""The commits other fronts make to a RelStorage database on PostgreSQL.

Several zeo servers ("fronts") can serve one RelStorage database. Each must
tell its clients about the others' commits: `PostgresCommitSource` is the
`ICommitSource` that finds them (see zeo.server.commit_sources for how the
server merges them with its own). Only this module (and other modules
named for RelStorage or PostgreSQL) may import relstorage or psycopg2; the
core finds it by name when ``commit-source postgresql`` is configured.

How it finds them:

1. A trigger tells.  The source installs, once per database and
   idempotently (under an advisory lock, only if missing), a trigger that
   calls ``pg_notify('zeo_commits', tid)`` after each insert into
   RelStorage's ``transaction`` table (history-preserving), or after each
   statement that writes ``object_state`` (history-free, which has no
   ``transaction`` table).  PostgreSQL delivers the notification when the
   committing transaction commits.
2. The loop listens.  The source's own connection (autocommit) runs
   ``LISTEN zeo_commits``; the event loop watches its socket
   (``add_reader``).  When readable, a non-blocking ``poll()`` collects the
   notifications; any notification means "look again".
3. A safety poll.  Every ``poll_interval`` seconds (1 s by default) the
   source looks again anyway, so a lost notification, a trigger that could
   not be installed or a dropped connection only delays a commit.  With
   ``notify=False`` this poll is the only mechanism.
4. Looking is one indexed query: the rows of ``object_state`` with
   ``tid`` above the newest tid seen (index ``object_state_tid``), grouped
   by tid, reported oldest first.  History-free, ``object_state`` holds only
   each object's newest revision: an object changed by two commits is
   listed under the newer one only, which the server announces in the same
   step (clients are told no later than the newer commit; history-free
   cannot serve the older revision anyway).
5. On the loop, bounded.  The query runs on the loop, synchronously,
   under a ``statement_timeout``: the server calls `commits_since` when it
   announces its own commit (older commits first), and the served
   RelStorage's loads run on the loop against the same database (its
   votes and finishes, which can wait on other fronts' locks, run in
   commit threads: zeo.server.commit_threads).  The query
   is an index range scan of the few rows committed since the last look
   (about half a millisecond here).  Connecting (at start, and after the
   connection broke) is bounded by ``connect_timeout``.
6. Failures are logged, not raised: a query that fails drops the
   connection, which the next tick makes again; the commits missed
   meanwhile are found then, since the source asks for everything after
   the newest tid it has seen.  While connecting fails, the polls try
   again at doubling intervals (up to ``MAX_RECONNECT_DELAY``), so an
   unreachable database does not hold the loop in ``connect`` at every
   tick; `commits_since` (the server's own commit just reached the
   database) always tries.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
import time
from collections.abc import Callable
from typing import Any

import psycopg2
from ZODB.POSException import StorageError
from zope.interface import implementer

from zeo.server.interfaces import ICommitSource
from zeo.server.relstorage_standby import PrimaryPosition, catch_up, read_only_size

__all__ = ["CHANNEL", "DEFAULT_CATCH_UP_TIMEOUT", "DEFAULT_POLL_INTERVAL",
           "DEFAULT_STATEMENT_TIMEOUT",
           "MAX_RECONNECT_DELAY", "PostgresCommitSource", "install_trigger",
           "source_for_storage"]

logger = logging.getLogger(__name__)

#: The notification channel the trigger sends on and the source listens to.
CHANNEL = "zeo_commits"
#: Seconds between safety polls (or between polls, without notifications).
DEFAULT_POLL_INTERVAL = 1.0
#: Seconds one query (or connecting) may take before it is given up.
DEFAULT_STATEMENT_TIMEOUT = 5.0
#: Most seconds a client registering with a front on a hot standby waits
#: for it to replay the primary's newest commit (zeo.server.relstorage_standby).
DEFAULT_CATCH_UP_TIMEOUT = 10.0
#: Most seconds between the polls' attempts to connect again while the
#: database cannot be reached (the delay doubles from poll_interval).
MAX_RECONNECT_DELAY = 30.0
#: The advisory lock serialising trigger installs of concurrent fronts
#: (RelStorage's own advisory locks are object ids and small negatives).
_INSTALL_LOCK = -0x5A454F5F54524947

Commit = tuple[bytes, tuple[bytes, ...]]
_MAX_TID = 2 ** 63 - 1   # a BIGINT column

_FUNCTION = f"""
CREATE OR REPLACE FUNCTION zeo_notify_commit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'ROW' THEN
        PERFORM pg_notify('{CHANNEL}', NEW.tid::text);
    ELSE
        PERFORM pg_notify('{CHANNEL}', '');
    END IF;
    RETURN NULL;
END $$
"""
_TRIGGERS = {
    True: ('"transaction"',
           'CREATE TRIGGER zeo_notify_commit AFTER INSERT ON "transaction"'
           ' FOR EACH ROW EXECUTE FUNCTION zeo_notify_commit()'),
    False: ("object_state",
            "CREATE TRIGGER zeo_notify_commit AFTER INSERT OR UPDATE ON object_state"
            " FOR EACH STATEMENT EXECUTE FUNCTION zeo_notify_commit()"),
}


def install_trigger(connection: Any, keep_history: bool) -> bool:
    """Install the notifying trigger if missing (see rule 1); True if this
    call created it. *connection* is a psycopg2 connection, not in a
    transaction; it is committed (or rolled back) here."""
    table, create = _TRIGGERS[keep_history]
    autocommit = connection.autocommit
    connection.autocommit = False
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_INSTALL_LOCK,))
            cursor.execute("SELECT 1 FROM pg_trigger WHERE tgname = 'zeo_notify_commit'"
                           f" AND tgrelid = '{table}'::regclass")
            if cursor.fetchone() is not None:
                connection.rollback()
                return False
            cursor.execute(_FUNCTION)
            cursor.execute(create)
        connection.commit()
        return True
    except BaseException:
        connection.rollback()
        raise
    finally:
        connection.autocommit = autocommit


@implementer(ICommitSource)
class PostgresCommitSource:
    """An `ICommitSource` for RelStorage on PostgreSQL at *dsn* (see the
    module rules). *keep_history*: the database's schema; *notify*: listen
    for the trigger's notifications (else poll alone; always, on a hot
    standby). *primary_dsn*: for a source on a hot standby, the primary,
    which registering clients wait for (see zeo.server.relstorage_standby)
    at most *catch_up_timeout* seconds."""

    def __init__(self, dsn: str, *, keep_history: bool = True, notify: bool = True,
                 poll_interval: float = DEFAULT_POLL_INTERVAL,
                 statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
                 primary_dsn: str | None = None,
                 catch_up_timeout: float = DEFAULT_CATCH_UP_TIMEOUT) -> None:
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval!r}")
        if not statement_timeout > 0:
            raise ValueError(f"statement_timeout must be > 0, got {statement_timeout!r}")
        self.dsn = dsn
        self.keep_history = keep_history
        self.notify = notify
        self.poll_interval = float(poll_interval)
        self.statement_timeout = float(statement_timeout)
        if not catch_up_timeout > 0:
            raise ValueError(f"catch_up_timeout must be > 0, got {catch_up_timeout!r}")
        self.catch_up_timeout = float(catch_up_timeout)
        self._primary = (PrimaryPosition(primary_dsn, self.statement_timeout)
                         if primary_dsn else None)
        #: True once connected to a server in recovery (a hot standby).
        self.standby = False
        self._connection: Any = None
        self._trigger_checked = False
        self._stopped = False
        self._look_due = False
        #: Polls do not connect again before this (time.monotonic()).
        self._next_connect = 0.0
        self._failures = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading: int | None = None   # the watched descriptor
        self._report: Callable[[bytes, tuple[bytes, ...]], None] | None = None
        self._call_later: Callable[..., Any] | None = None
        self._timer: Any = None
        #: The newest tid found or asked after (an int); None: not yet.
        self._seen: int | None = None
        #: Looks (queries) made, and notifications received: for tests.
        self.looks = 0
        self.notifications = 0
        self.connects = 0

    # -- ICommitSource ----------------------------------------------------------

    def start(self, report: Callable[[bytes, tuple[bytes, ...]], None],
              call_later: Callable[..., Any]) -> None:
        """See `ICommitSource`."""
        self._report = report
        self._call_later = call_later
        self._loop = asyncio.get_running_loop()
        if self._seen is None:
            self._seen = self._newest_tid()
        self._watch()
        self._notified_meanwhile()   # commits since the server's seeding
        self._timer = call_later(self.poll_interval, self._tick)
        logger.info("looking for other fronts' commits: %s every %g s",
                    "notifications, and a safety poll" if self.notify else "a poll",
                    self.poll_interval)

    def stop(self) -> None:
        """See `ICommitSource`."""
        self._stopped = True
        self._report = None
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._disconnect()
        if self._primary is not None:
            self._primary.close()

    def catch_up(self, last_tid: Callable[[], bytes], call_later: Callable[..., Any],
                 on_timeout: Callable[[], None]) -> Any:
        """The ``register`` answer: *last_tid()*, or with a primary a
        `Delayed` settled once this (standby) front has announced the
        primary's newest commit (zeo.server.relstorage_standby)."""
        if self._primary is None or self._report is None:
            return last_tid()
        return catch_up(self._primary, self._look, last_tid, call_later,
                        self.catch_up_timeout, on_timeout)

    def commits_since(self, tid: bytes) -> list[Commit]:
        """See `ICommitSource`; empty (and logged) if the database failed."""
        after = _u64(tid)
        if after >= _MAX_TID or self._stopped:
            return []
        try:
            commits = self._query(
                "SELECT tid, zoid FROM object_state WHERE tid > %s ORDER BY tid, zoid",
                (after,))
        except psycopg2.Error as error:
            self._broken(error)
            return []
        newest = _u64(commits[-1][0]) if commits else after
        if self._seen is None or newest > self._seen:
            self._seen = newest
        return commits

    def recent(self, count: int) -> list[Commit]:
        """See `ICommitSource`."""
        if count <= 0 or self._stopped:
            return []
        try:
            return self._query(
                "SELECT tid, zoid FROM object_state WHERE tid >= ("
                " SELECT min(tid) FROM (SELECT DISTINCT tid FROM object_state"
                " ORDER BY tid DESC LIMIT %s) AS newest) ORDER BY tid, zoid", (count,))
        except psycopg2.Error as error:
            self._broken(error)
            return []

    def guard_pack(self, pack: Callable[[], Any]) -> Any:
        """Run *pack* (the storage's, in the pack thread): one pack at a time
        over all fronts.  RelStorage holds its PostgreSQL advisory pack lock
        for the whole pack and refuses at once if another process (another
        front, or an undo) holds it; that refusal reaches clients as the
        one-server refusal, ``StorageError("Already packing ...")``."""
        try:
            return pack()
        except Exception as error:
            if type(error).__name__ != "UnableToAcquirePackUndoLockError":
                raise
            raise StorageError(
                "Already packing this database: another front (or an undo) holds"
                " its pack lock; this pack request is refused (try again when the"
                f" running pack has finished): {str(error)[:200]}") from None

    # -- looking ------------------------------------------------------------------

    def _tick(self) -> None:
        self._timer = None
        if self._report is None:
            return
        if self._connection is not None or time.monotonic() >= self._next_connect:
            self._look()
        call_later = self._call_later  # set by start(), with _report
        if self._report is not None and call_later is not None:
            self._timer = call_later(self.poll_interval, self._tick)

    def _look(self) -> None:
        """Report the commits after the newest seen (rule 4)."""
        self._look_due = False
        if self._report is None:
            return
        if self._seen is None:
            # Never seen the database (it was down at start): from now on,
            # not the whole history (the server asks for what it missed).
            self._seen = self._newest_tid()
            if self._seen is None:
                return
        for tid, oids in self.commits_since(_p64(self._seen)):
            if self._report is None:
                return
            self._report(tid, oids)
        if self._reading is None:
            self._watch()   # the connection broke: listen again when it is back

    def _notified_meanwhile(self) -> None:
        """Look again soon for the notifications read during a query (any
        query: the server's `commits_since` too): the socket will not wake
        the loop for them, and their commits may be newer than the query's
        snapshot.  Before `start`, they wait."""
        connection = self._connection
        if (connection is None or not connection.notifies or self._report is None
                or self._loop is None):
            return
        self.notifications += len(connection.notifies)
        del connection.notifies[:]
        if not self._look_due:
            self._look_due = True
            self._loop.call_soon(self._look)

    def _readable(self) -> None:
        connection = self._connection
        if connection is None:
            return
        try:
            connection.poll()   # reads what arrived; never waits
        except psycopg2.Error as error:
            self._broken(error)
            return
        if connection.notifies:
            self.notifications += len(connection.notifies)
            del connection.notifies[:]
            self._look()

    def _watch(self) -> None:
        """Listen on the connection's socket, if notifying (rule 2)."""
        if (not self.notify or self._reading is not None or self._loop is None
                or self._report is None):
            return
        if self._connection is None and time.monotonic() < self._next_connect:
            return   # the next tick
        try:
            connection = self._connect()
        except psycopg2.Error as error:
            self._broken(error)
            return
        self._reading = connection.fileno()
        self._loop.add_reader(self._reading, self._readable)

    # -- the connection -------------------------------------------------------------

    def _query(self, sql: str, parameters: tuple[Any, ...]) -> list[Commit]:
        connection = self._connect()
        self.looks += 1
        with connection.cursor() as cursor:
            cursor.execute(sql, parameters)
            rows = cursor.fetchall()
        self._notified_meanwhile()
        # Rows come ordered by tid: one commit per run of the same tid.
        return [(_p64(tid), tuple(_p64(zoid) for _tid, zoid in run))
                for tid, run in itertools.groupby(rows, key=lambda row: row[0])]

    def _newest_tid(self) -> int | None:
        try:
            connection = self._connect()
            with connection.cursor() as cursor:
                cursor.execute("SELECT max(tid) FROM object_state")
                row = cursor.fetchone()
        except psycopg2.Error as error:
            self._broken(error)
            return None
        return row[0] if row and row[0] is not None else 0

    def _connect(self) -> Any:
        if self._connection is not None:
            return self._connection
        timeout = max(1, round(self.statement_timeout))
        self.connects += 1
        try:
            connection = psycopg2.connect(self.dsn, connect_timeout=timeout,
                                          application_name="zeo.server commit source")
        except psycopg2.Error:
            self._failures = min(self._failures + 1, 16)
            self._next_connect = time.monotonic() + min(
                MAX_RECONNECT_DELAY, self.poll_interval * 2 ** self._failures)
            raise
        self._failures = 0
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("SET statement_timeout = %s",
                               (int(self.statement_timeout * 1000),))
                cursor.execute("SELECT pg_is_in_recovery()")
                in_recovery = bool(cursor.fetchone()[0])
            if in_recovery and self.notify:
                # PostgreSQL refuses LISTEN during recovery.
                logger.info("the database is a hot standby: no notifications there,"
                            " polling every %g s", self.poll_interval)
                self.notify = False
            self.standby = in_recovery
            if self.notify:
                self._install(connection)
                with connection.cursor() as cursor:
                    cursor.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        return connection

    def _install(self, connection: Any) -> None:
        if self._trigger_checked:
            return
        try:
            created = install_trigger(connection, self.keep_history)
        except psycopg2.Error as error:
            logger.error("could not install the commit trigger (%s); other fronts'"
                         " commits are found by polling every %g s",
                         str(error).strip()[:300], self.poll_interval)
        else:
            if created:
                logger.info("installed the trigger zeo_notify_commit (channel %s)", CHANNEL)
        self._trigger_checked = True

    def _broken(self, error: BaseException) -> None:
        logger.error("looking for other fronts' commits failed (%s); trying again"
                     " in %g s", str(error).strip()[:300], self.poll_interval)
        self._disconnect()

    def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._reading is not None and self._loop is not None:
            self._loop.remove_reader(self._reading)
        self._reading = None
        try:
            connection.close()
        except psycopg2.Error:
            pass


def source_for_storage(storage: Any, *, notify: bool = True,
                       poll_interval: float = DEFAULT_POLL_INTERVAL,
                       primary_dsn: str | None = None,
                       catch_up_timeout: float = DEFAULT_CATCH_UP_TIMEOUT
                       ) -> PostgresCommitSource:
    """The source for a RelStorage *storage* on PostgreSQL, with the DSN and
    schema kind of the storage's own options (so they are written once);
    *primary_dsn* and *catch_up_timeout*: see `PostgresCommitSource`."""
    adapter: Any = getattr(storage, "_adapter", None)
    if type(adapter).__name__ != "PostgreSQLAdapter" or not hasattr(adapter, "_dsn"):
        raise ValueError(
            f"commit-source postgresql needs a RelStorage on PostgreSQL, not"
            f" {type(storage).__name__} ({type(adapter).__name__})")
    if storage.isReadOnly():
        read_only_size(adapter)   # a hot standby refuses read-write transactions
    return PostgresCommitSource(adapter._dsn, keep_history=bool(adapter.keep_history),
                                notify=notify, poll_interval=poll_interval,
                                primary_dsn=primary_dsn, catch_up_timeout=catch_up_timeout)


def _p64(n: int) -> bytes:
    return struct.pack(">Q", n)


def _u64(b: bytes) -> int:
    n: int = struct.unpack(">Q", b)[0]
    return n
