"""Contracts of the server package (zope.interface).

The method docstrings here are the specification; implementations carry
``@implementer`` and a one-line "See IFoo" docstring so that each contract
is written exactly once.

Everything described here is *pure* server core: no sockets, no protocol
encoding, no threads and no clocks read behind the caller's back.  Time
and scheduling are always injected (``clock``, ``call_soon``,
``call_later``, ``now``) so that the asyncio adapter decides what they are
and the tests can drive them with a real event loop.
"""
from zope.interface import Attribute
from zope.interface import Interface

__all__ = [
    "IBudgetedConnection",
    "IClosed",
    "ICommitLock",
    "ICommitSource",
    "IInvalidationQueue",
    "IIteratorRegistry",
    "IServerBudgets",
    "IServing",
    "ISessionPeer",
    "ISlowCalls",
    "IStorageSession",
    "IStorageStats",
    "ITransactionSpool",
]


class IInvalidationQueue(Interface):
    """Bounded, newest-first history of committed transactions' oids.

    One queue per served storage.  It answers the ``getInvalidations(tid)``
    call that a reconnecting client makes to find out which of its cached
    objects changed while it was away ("quick verification").

    An *entry* is ``(tid, oids)`` where ``tid`` is an 8-byte transaction id
    and ``oids`` a tuple of 8-byte oids, or ``None`` for the pseudo-entry
    that only records "everything after this tid is in the queue".
    Entries are kept in strictly increasing tid order.
    """

    size = Attribute("Maximum number of entries kept (an int >= 1).")

    max_oids = Attribute(
        "Maximum total number of oids kept over all entries, or None. "
        "Older entries are dropped first; the newest entry is always kept.")

    newest_tid = Attribute("tid of the newest entry, or None when empty.")

    oldest_tid = Attribute("tid of the oldest entry, or None when empty.")

    def __len__():
        """Return the number of entries currently held."""

    def __iter__():
        """Iterate over ``(tid, oids)`` entries, newest first."""

    def seed_from(storage):
        """Replace the contents with the recent history of *storage*.

        If the storage has ``lastInvalidations(size)``, its result (oldest
        first, as the storage returns it) becomes the queue.  Otherwise,
        or if that history is empty, the queue holds the single
        pseudo-entry ``(storage.lastTransaction() or z64, None)``: nothing
        is known about earlier transactions but everything after that tid
        will be appended, so clients that were exactly up to date can
        still verify quickly after a server restart.
        """

    def append(tid, oids):
        """Record that transaction *tid* changed *oids* (an iterable).

        The queue is agnostic about why an oid changed: the caller passes
        stored, created, deleted, restored and undone oids alike.  Drops
        the oldest entries when ``size`` or ``max_oids`` would be
        exceeded.  Raises ValueError if *tid* is not newer than the
        newest entry (tids must be appended in commit order).
        """

    def since(tid):
        """Return what changed after *tid*, or None if the queue can't tell.

        If the queue is non-empty and its oldest tid is <= *tid*, return
        ``(newest_tid, oids)`` where *oids* is the sorted tuple of the
        union of the oids of all entries whose tid is > *tid* (possibly
        empty; the newest tid is returned even then).  Otherwise return
        None, meaning the client must drop its cache.
        """


class ICommitLock(Interface):
    """The per-storage commit lock with a FIFO queue and a timeout watchdog.

    For single-threaded asyncio use.  An *owner* is any hashable object
    other than None (in practice a connection's session).  At most one
    owner holds the lock; the others wait in request order.  Releasing
    hands the lock directly to the first waiter, so a newcomer can never
    overtake the queue; the waiter learns about it through its
    ``on_granted`` callback, which is scheduled with the injected
    ``call_soon`` and therefore runs after ``release`` has returned.

    When a timeout is configured, a timer (from the injected
    ``call_later``) runs while an owner holds the lock; on expiry the
    ``on_timeout(owner)`` callback given at construction is called.  The
    lock does not release itself: the callback is expected to abort the
    owner's transaction, which calls ``release``.  (Releasing behind the
    session's back would let the next voter begin a storage transaction
    while the previous one is still open.)  Before that callback, a
    timeout empties the queue: each waiter's ``on_dropped`` is scheduled
    instead of ever granting it, so silent voters queued together cost
    the others one timeout, not one each.
    """

    holder = Attribute("The owner holding the lock, or None.")

    waiting = Attribute("Number of owners waiting for the lock.")

    waiters = Attribute("Tuple of the waiting owners, first in line first.")

    locked_since = Attribute(
        "Clock value when the current holder got the lock, or None.")

    waiting_since = Attribute(
        "Clock value when the longest-waiting owner asked, or None.")

    def waiting_since_of(owner):
        """Clock value when *owner* asked, or None if it is not waiting."""

    timeout = Attribute("Seconds an owner may hold the lock, or None.")

    holder_timed_out = Attribute(
        "True if the current holder's timeout has fired and it has not "
        "released the lock yet.")

    def request(owner, on_granted, on_dropped=None):
        """Ask for the lock on behalf of *owner*.

        Return True if the lock was free and is now held by *owner*
        (*on_granted* is then not called).  Return False if another owner
        holds it: *owner* is queued, and ``on_granted()`` is called later,
        via ``call_soon``, once *owner* has been given the lock.  It is
        not called if *owner* releases (e.g. disconnects) before that.
        If the holder times out while *owner* waits, *owner* leaves the
        queue instead and ``on_dropped(waited)`` (seconds it waited) is
        called via ``call_soon``, unless *owner* has asked again by then.

        Raises StorageTransactionError if *owner* already holds or is
        already waiting for the lock, ValueError if *owner* is None.
        """

    def release(owner):
        """Give up the lock or leave the queue, whichever applies.

        If *owner* holds the lock, stop its timer and hand the lock to
        the first waiter (whose ``on_granted`` is scheduled).  If *owner*
        is waiting, remove it from the queue.  Otherwise do nothing.
        Return True if *owner* held or waited, False otherwise.  Safe to
        call on disconnect whatever the owner's state.
        """


class ITransactionSpool(Interface):
    """The per-connection log of a transaction's operations before vote.

    The session appends operations as the one-way calls arrive; nothing
    touches the storage until the vote replays them.  Small logs stay in
    memory, larger ones move to an anonymous temporary file, so memory use
    does not grow with the size of the transaction.  Iteration replays
    the operations in order, and can be repeated.

    Operations are the named tuples of ``zeo.server.spool``: ``Store``,
    ``Delete``, ``CheckCurrent``, ``Restore``, ``Undo``, ``StoreBlob``.
    oids, serials and tids are 8-byte ``bytes``.
    """

    size = Attribute("Number of bytes spooled so far (encoded form).")

    max_size = Attribute(
        "Limit on ``size`` plus ``blob_bytes``, in bytes, or None.")

    blob_bytes = Attribute(
        "Bytes of blob uploads counted with add_blob_bytes (and not removed).")

    in_memory = Attribute("True while the log is still held in memory.")

    closed = Attribute("True once close() has been called.")

    oids = Attribute(
        "frozenset of the oids this transaction modifies: stored, "
        "blob-stored, deleted and restored ones (not checked or undone).")

    blob_paths = Attribute(
        "Tuple of the blob files handed over with store_blob, in order.")

    def __len__():
        """Return the number of operations appended."""

    def __iter__():
        """Yield the operations appended so far, in order.

        Each call starts again from the first operation.  Operations
        appended while an iteration is in progress are not seen by it.
        """

    def counts():
        """Return a dict mapping operation name to how many were appended."""

    def store(oid, serial, data):
        """Append a store of *data* for *oid*, read at *serial*."""

    def delete(oid, serial):
        """Append a deletion of *oid*, read at *serial*."""

    def check_current(oid, serial):
        """Append a check that *serial* is still the current one of *oid*."""

    def restore(oid, serial, data, prev_txn):
        """Append a restore; *data* and *prev_txn* may be None."""

    def undo(undo_id):
        """Append an undo of the transaction identified by *undo_id*."""

    def store_blob(oid, serial, data, blob_path):
        """Append a blob store and take ownership of the file *blob_path*.

        The spool never reads the file.  ``close()`` deletes it if it
        still exists; a storage that committed it has moved it away.
        """

    def add_blob_bytes(nbytes):
        """Count *nbytes* of blob upload against ``max_size`` and the
        server's budget, before they are written.

        Raises TransactionTooLargeError, counting nothing, if either would
        be exceeded.
        """

    def remove_blob_bytes(nbytes):
        """Stop counting *nbytes* of blob upload (a discarded upload)."""

    def close():
        """Discard everything: temporary file, buffers and owned blob files.

        Idempotent, and works even after a failed write has made the
        spool unusable (appends and replays then raise
        StorageTransactionError).  Afterwards appending or iterating
        raises ValueError.
        """


class IStorageStats(Interface):
    """Counters and gauges of one served storage, for ``server_status``.

    Counters are plain attributes that the session increments.
    ``as_dict`` produces the reference server's status keys, with the
    same names and formats (so tools such as zeo-nagios can read them),
    plus a few extras for operators.
    """

    start_time = Attribute("Epoch seconds when the storage was opened.")
    loads = Attribute("Number of loadBefore calls.")
    stores = Attribute("Number of store-like calls spooled.")
    commits = Attribute("Number of committed transactions.")
    aborts = Attribute("Number of aborted transactions.")
    active_txns = Attribute("Number of open ZEO transactions.")
    conflicts = Attribute("Number of votes that failed with a conflict.")
    conflicts_resolved = Attribute("Number of conflicts resolved.")
    bytes_in = Attribute("Bytes received from this storage's clients.")
    bytes_out = Attribute("Bytes sent to this storage's clients.")
    timeouts = Attribute("Number of transactions aborted by the transaction timeout.")
    refusals = Attribute("collections.Counter of requests refused by a per-storage"
                         " limit, by the limit's <zeo> key (for the monitor).")
    lock_wait = Attribute("Timing of commit-lock waits (for the monitor).")
    lock_hold = Attribute("Timing of commit-lock holds (for the monitor).")
    vote_latency = Attribute("Timing of vote calls, received to answered.")
    finish_latency = Attribute("Timing of tpc_finish calls, received to answered.")
    slow_transactions = Attribute(
        "The most recent SlowTransaction records: transactions that held"
        " the commit lock at least slow_threshold seconds.")

    connections = Attribute("Number of registered connections.")

    connections_by_label = Attribute(
        "Copy of the mapping of connection label to count.")

    def connection_added(label):
        """Count a newly registered connection under *label* (a str)."""

    def connection_removed(label):
        """Forget one connection counted under *label*.

        Raises ValueError if no connection is counted under *label*.
        """

    def connection_relabelled(old_label, new_label):
        """Move one connection from *old_label* to *new_label*."""

    def as_dict(now, last_transaction, lock=None, describe_owner=str,
                invalidation_queue_length=0, max_labels=None):
        """Return a JSON-serializable status dict.

        *now* is the current epoch time, *last_transaction* the storage's
        last tid (8 bytes), *lock* its ICommitLock (or None), and
        *describe_owner* turns a lock owner into a label.  The reference
        keys are: ``connections``, ``loads``, ``stores``, ``commits``,
        ``aborts``, ``active_txns``, ``lock_time`` (epoch float or None),
        ``conflicts``, ``conflicts_resolved``, ``start`` (``time.ctime``
        text), ``waiting``, ``timeout-thread-is-alive`` (True, or
        ``"stub"`` when no timeout is configured) and
        ``last-transaction`` (16 lowercase hex digits).  Extras:
        ``uptime``, ``bytes_in``, ``bytes_out``,
        ``connections_by_label``, ``connections_by_label_omitted``,
        ``lock_holder``, ``lock_wait_max`` and
        ``invalidation_queue_length``.

        ``connections_by_label`` lists at most *max_labels* labels (None:
        all), those with the most connections (ties by label); the
        connections under the others are counted in
        ``connections_by_label_omitted``.  The anonymous ``ruok`` answer
        carries this dict: its size must not follow what clients send.
        """


class ISessionPeer(Interface):
    """What a session needs of its connection (the asyncio adapter)."""

    def notify(method, args):
        """Send the one-way message ``method(*args)`` to the client, in order
        after everything sent before."""

    def stream(messages):
        """Send an iterator of ``(method, args)`` one-way messages, pulling
        the next one only when the transport can take more (blob
        downloads). Whatever is sent after it waits until it is done."""

    label = Attribute(
        "The connection in log lines: the client's label and address once"
        " it has set a label, else its address (None: the session's label).")

    peer = Attribute("The client's address as text, for log fields (or None).")

    writing_paused_for = Attribute(
        "Seconds the connection's output has been backed up without a break"
        " (the client not reading what it is sent), 0.0 when it is not.")

    def run_in_thread(function, pack=False, commit=False):
        """Run the blocking *function* off the event loop; return a
        `zeo.server.results.Delayed` settled on the loop with its outcome.
        *pack*: on the pack threads (one per storage); *commit*: on the
        commit threads (one per storage, see zeo.server.commit_threads);
        else on the worker threads shared by every connection (see
        zeo.server.slow_calls). Raises if the server is closing."""

    def close(reason):
        """Close the connection, logging *reason* (a str) if given."""


class IStorageSession(Interface):
    """The server side of one client connection: the ZEO 5/6 RPC methods.

    Each RPC is a method of the same name taking the wire arguments. A
    synchronous one returns its reply value or a `Delayed`; an exception is
    the error reply. A one-way one returns nothing; an exception closes the
    connection.
    """

    label = Attribute("How log lines name this connection.")
    registered = Attribute("True once register() succeeded.")
    in_transaction = Attribute("True between tpc_begin and finish/abort.")

    def notify(method, args):
        """Send a one-way message to this session's client."""

    def transaction_timed_out(timeout):
        """The watchdog fired: abort the transaction, free the commit lock,
        close the connection."""

    def connection_lost():
        """The connection is gone: abort any open transaction (freeing the
        commit lock at once), drop iterators, leave the storage."""


# -- process-wide budgets (zeo.server.budgets) --------------------------------


class IBudgetedConnection(Interface):
    """What the server's budgets need of a connection (the asyncio adapter).
    The connection reports what it holds with ``IServerBudgets.input_held``
    and ``output_held``; these are the budgets' questions and orders."""

    label = Attribute("How log lines name this connection.")
    closed = Attribute("True once the connection is closing or closed.")

    def unsent_output():
        """Bytes of output waiting to be sent now (queued and in the
        transport's buffer), also while closing; 0 once aborted or lost."""

    def take_heard():
        """Whether anything was received since the last call; resets it."""

    def busy():
        """True if the connection must not be closed as idle however quiet
        its peer: in the handshake, in a transaction, waiting for a reply of
        ours, or with output waiting or reading paused."""

    def abort(reason):
        """Close at once, dropping unsent output, logging *reason*."""

    def close(reason):
        """Close the connection, logging *reason* (a str) if given."""


class IServerBudgets(Interface):
    """What all connections of one server hold together, bounded: partial
    input, unsent output, connections per address, idle connections. Loop
    thread only. See zeo.server.budgets."""

    input_total = Attribute("Bytes of partial input held by all connections.")
    output_total = Attribute("Bytes of unsent output, as last reported.")
    input_tallies = Attribute(
        "Read only: a mapping of the connections holding partial input to"
        " their bytes.")
    output_tallies = Attribute(
        "Read only: a mapping of the connections with unsent output to"
        " their bytes, as last reported.")

    def admit(connection, host):
        """Count a new connection from IP address *host* (None: a Unix
        socket, not counted); return the reason to refuse it, or None."""

    def forget(connection):
        """The connection is gone: drop everything counted for it."""

    def input_held(connection, held):
        """*connection* holds *held* bytes of partial input now; if the
        total is over the limit, abort the biggest holders until it is not."""

    def output_held(connection, unsent):
        """*connection* has *unsent* bytes of output waiting now; if the
        total is over the limit, refresh every tally and abort the biggest
        until it is not."""

    def start(loop, connections):
        """Sweep *connections* (a live collection of `IBudgetedConnection`)
        for idle ones on *loop*, if an idle timeout is configured."""

    def stop():
        """Stop sweeping."""


class IServing(Interface):
    """Event: a storage server is listening."""

    server = Attribute("The StorageServer.")
    addresses = Attribute("Every bound address: (host, port) pairs with the"
                          " real port (also for port 0), or socket paths.")
    address = Attribute("The first of addresses.")


class IClosed(Interface):
    """Event: a storage server stopped and closed its storages."""

    server = Attribute("The StorageServer.")


class ISlowCalls(Interface):
    """One connection's lane of storage calls whose cost grows with the
    database (see zeo.server.slow_calls for the thread rules)."""

    running = Attribute("True while one of the lane's calls runs in a thread.")
    closed = Attribute("True once close() was called.")
    max_waiting = Attribute("How many calls may wait behind the running one.")

    def submit(function):
        """Run *function* in a worker thread after the lane's earlier
        calls; return a `Delayed` settled on the loop. Raises
        TooManyWaitingCalls beyond ``max_waiting``, or if closed."""

    def close():
        """Drop the waiting calls; a running one finishes unobserved."""


class IIteratorRegistry(Interface):
    """One connection's server-side iterators, within its own limit and
    the server-wide `IteratorBudget` (see zeo.server.iterators)."""

    limit = Attribute("Iterators of both kinds this connection may hold.")
    budget = Attribute("The server-wide count of open transaction iterators.")

    def reserve():
        """An id and both slots for a transaction iterator still to be
        made (in a thread); raises TooManyIterators."""

    def adopt(iid, iterator):
        """Put *iterator* in place for *iid*, or close it if the registry
        is closed."""

    def release(iid):
        """Making *iid*'s iterator failed: give its slots back."""

    def start(storage, start, stop):
        """Reserve, make and adopt at once; the new id."""

    def next_transaction(iid):
        """The next transaction's header tuple, or None at the end."""

    def start_records(iid, tid):
        """A record iterator over the transaction *iid* last returned."""

    def next_record(rid):
        """The next record tuple, or None at the end."""

    def forget(ids):
        """Close and drop these iterators (``iterator_gc``)."""

    def close():
        """Close every iterator; those still being made close on adoption."""


class ICommitSource(Interface):
    """Where a served storage learns of commits that did not pass through
    this server (other fronts of a shared database, for example).

    The server starts the source on its event loop when it starts serving
    and stops it before closing the storage; see
    `zeo.server.commit_sources` for how the reported commits are merged
    with the server's own.  A source never blocks the loop for long: its
    synchronous methods are quick queries (the tail of a log, an indexed
    query), and anything slow happens in the source's own thread or
    connection, handed over to the loop before calling *report*.
    """

    def start(report, call_later):
        """Begin watching; called once, on the loop.

        Call ``report(tid, oids)`` on the loop for every commit found, in
        increasing tid order (a commit reported twice, or one the server
        made itself, is ignored by the server).  Having reported a tid, a
        source has found every older commit (reported it, or returned it
        from `commits_since`): the server then skips the look of
        `commits_since` at its own commits up to that tid.  *call_later* is
        ``loop.call_later``, for a source that polls.
        """

    def stop():
        """Stop watching; called once, on the loop.  No report follows."""

    def commits_since(tid):
        """The commits after *tid*, oldest first, as ``(tid, oids)`` pairs.

        Called on the loop, synchronously: at every commit made through
        this server (so that older commits made elsewhere are announced
        first) and when the server starts.  It must see every commit whose
        tid is below a tid the database has already handed out.
        """

    def recent(count):
        """The newest *count* commits at most, oldest first, as ``(tid,
        oids)`` pairs; seeds the invalidation queue when the server starts
        so that a client coming from another front verifies its cache
        quickly.  Empty if the source cannot tell."""
