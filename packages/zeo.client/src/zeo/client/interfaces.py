"""Contracts of the client package (zope.interface), and the one event
the client sends (`StaleCache`)."""
from typing import Any

from zope.interface import Attribute
from zope.interface import Interface
from zope.interface import implementer

__all__ = [
    'IClientCache', 'IClientStorage', 'IConnectionHandler',
    'IConnectionManager', 'IStaleCache', 'StaleCache',
]


class IClientCache(Interface):
    """A cache of object revisions kept by a ZEO client.

    A *record* is one revision of one object: ``(oid, start_tid, end_tid,
    data)``.  ``oid`` and the tids are 8-byte big-endian byte strings;
    ``start_tid`` is the transaction that wrote the revision and
    ``end_tid`` the transaction that wrote the next one, or ``None`` while
    the revision is believed *current*.  At most one record per object is
    current.  Records whose ``end_tid`` is known (*non-current* records)
    are immutable facts about the history and never become wrong.

    The cache also remembers a *last tid*: the newest transaction whose
    invalidations have all been applied to it.  Current records are only
    trusted up to that tid; callers never ask about later transactions.

    A cache may forget any record at any time (eviction), but it must
    never answer with data that is not the right revision.

    Threading: mutating methods are called from one thread (the client's
    I/O thread); ``load``, ``loadBefore`` and ``contains`` may also be
    called concurrently from application threads.  Implementations make
    that safe.
    """

    def load(oid):
        """Return ``(data, start_tid)`` of the current record of ``oid``.

        Return ``None`` if the cache holds no current record for it.
        """

    def loadBefore(oid, tid):
        """Return the revision of ``oid`` that was current just before
        ``tid``, as ``(data, start_tid, end_tid)``.

        A non-current record with ``start_tid < tid <= end_tid`` is
        returned with its ``end_tid``; otherwise the current record is
        returned (with ``end_tid`` ``None``) if its ``start_tid < tid``;
        otherwise ``None``.
        """

    def contains(oid, tid):
        """Tell whether a record of ``oid`` starting at ``tid`` is cached.

        Cheap: answers from the index without reading the data.
        """

    def store(oid, start_tid, end_tid, data):
        """Store a record.

        ``end_tid`` is ``None`` for a current record.  Storing a record
        that is already cached is a no-op.  Storing a current record while
        a *different* current record of the same object is cached raises
        :class:`~zeo.client.cache.errors.CacheConsistencyError`.  A
        current record that a cached revision or a recent invalidation
        already supersedes is not stored (a stale load reply must never
        become the cached current revision).  Storing a non-current
        record whose start matches the cached current record ends that
        record, like an invalidation.  Records too big for the cache are
        silently not stored.
        """

    def invalidate(oid, tid):
        """Apply an invalidation of ``oid`` committed by ``tid``.

        If a current record of ``oid`` is cached it becomes non-current
        with ``end_tid = tid``.  With ``tid=None`` the current record is
        forgotten entirely (non-current records are kept).  An
        invalidation that does not postdate the current record
        (``tid <= start_tid``) is ignored.
        """

    def committed(tid, changes):
        """Apply what transaction ``tid``, committed by this client,
        changed: ``changes`` yields ``(oid, data)``, where ``data`` is the
        revision of ``oid`` that ``tid`` wrote, or ``None`` when the
        client does not know it (the server resolved a conflict on it,
        an undo changed it, or the transaction was too big to keep it).

        The same as, for each pair, ``invalidate(oid, tid)`` and then, if
        ``data`` is not None, ``store(oid, tid, None, data)`` -- except
        that where that store would raise
        :class:`~zeo.client.cache.errors.CacheConsistencyError` the
        object's current record is forgotten instead (as by
        ``invalidate(oid, None)``).  Cheaper than those calls (one lock
        and one check of ``tid`` per transaction).  A bad oid raises
        ``ValueError`` with the pairs before it applied.  The last tid
        is not moved: that is the caller's next step.  (The client calls
        it through ``zeo.client.cache.update_after_commit``, which falls
        back on ``invalidate`` and ``store`` for an application's cache
        object that lacks it.)
        """

    def getLastTid():
        """Return the last tid (8 bytes), or ``None`` if none was set."""

    def setLastTid(tid):
        """Record that all invalidations up to ``tid`` have been applied.

        The last tid only moves forward: an older ``tid`` raises
        :class:`~zeo.client.cache.errors.LastTidError`; the same tid is
        accepted and does nothing.  A persistent cache records it so that
        after a crash it never reports a last tid newer than the
        invalidations it holds.
        """

    def clear():
        """Forget every record and the last tid."""

    def close():
        """Release the cache's resources; a persistent cache saves its
        state so that it can be reopened quickly.  Closing twice is
        harmless; any other call on a closed cache raises
        :class:`~zeo.client.cache.errors.CacheError`."""

    def __len__():
        """Return the number of cached records (current and not)."""

    def getsize():
        """Return the configured maximum size of the cache in bytes."""

    def stats():
        """Return a dict of counters for status displays.

        At least ``hits``, ``misses``, ``stores``, ``evictions``,
        ``records`` (same as ``len``) and ``bytes`` (space used by
        records).
        """

    persistent = Attribute(
        "True if the cache survives the process (a file cache).")


class IClientStorage(Interface):
    """A ZODB storage that is a client of a ZEO 5/6 server.

    Besides ``ZODB.interfaces.IStorage`` it provides, on each connection,
    the optional ZODB storage interfaces the server's storage advertises
    (undo, iteration, restore, blobs with a blob directory, external GC,
    record iteration) and these methods.
    """

    def is_connected(test=False):
        """Tell whether a connection to a server is in use."""

    def ping():
        """Make one round trip to the server."""

    def metrics():
        """This client's figures as plain data, without asking the server:
        cache hits, misses and size, connections and reconnects, load
        latency, how far behind the server (see zeo.client.metrics)."""

    def sync():
        """With ``server_sync``, a round trip (so that every invalidation
        committed before now has been seen); otherwise nothing."""

    def prefetch(oids, tid):
        """Start loading the revisions of *oids* current before *tid* into
        the cache, without waiting."""

    def new_addr(addr):
        """Use these server address(es) from now on."""

    def server_status(timeout=None):
        """Return the server's status dictionary for this storage."""


class IConnectionHandler(Interface):
    """What a ``zeo.client.connections.Channel`` tells its owner.

    Every method is called in the order things happen on the connection,
    holding the channel's lock.  `protocol_agreed` and `protocol_lost`
    run on the client's event loop thread; `load_reply` and
    `server_message` in whichever thread handles the message -- the loop,
    or an application thread reading for itself -- so they must be
    thread-safe and must not wait for the loop (the rules are in
    ``zeo.client.connections``).
    """

    def protocol_agreed(channel):
        """The handshake is done; calls may be made."""

    def protocol_lost(channel, exc):
        """The connection is gone (*exc* is why, or None).  Calls in
        flight have already failed with ``ClientDisconnected``."""

    def load_reply(channel, oid, tid, result):
        """A ``loadBefore(oid, tid)`` reply arrived: *result* is
        ``(data, start, end)`` or None -- or, for ``loadBeforeRefs``,
        ``(data, start, end, extras)`` (see ``zeo.client.load_refs``).
        Called before the callers hear of it and before the next message
        is handled."""

    def server_message(channel, method, args):
        """A one-way message from the server (``invalidateTransaction``,
        ``info``, ``receiveBlobStart/Chunk/Stop``)."""


class IConnectionManager(IConnectionHandler):
    """Chooses the connection, verifies the cache, applies invalidations."""

    channel = Attribute("The connection in use (a Channel), or None.")
    generation = Attribute(
        "Bumped each time a connection becomes the one in use.")
    connected = Attribute(
        "A threading.Event, set while a connection is in use, and once "
        "closed.")
    visibility = Attribute(
        "A lock held while the last tid moves; lastTransaction() reads "
        "the cache's last tid under it.")

    def start():
        """Start connecting (on the loop)."""

    def close():
        """Close every connection (on the loop); calls in flight fail."""

    def prefetch(oids, tid):
        """Start loading what the cache lacks of *oids* as of *tid*."""

    def transaction_finished(channel, tid, updates, callback):
        """``tpc_finish`` answered *tid* (a hook, in wire order): update
        the cache, then move the last tid and call *callback(tid)* under
        ``visibility``."""


class IStaleCache(Interface):
    """Event: a client storage found its cache could not be brought up to
    date with the server on connecting, and dropped it (and the database's
    object caches).  Applications may react, e.g. by warming caches again.

    Sent with ``zope.event.notify`` (through ``ZODB.event``, so only where
    zope.event is installed), on the client's I/O thread, just before the
    cache is emptied; a subscriber's exception is logged and ignored.  The
    reference ZEO sends its ``ZEO.interfaces.StaleCache`` in the first
    case below; zeo.client sends this one in both.
    """

    storage = Attribute("The ClientStorage whose cache is dropped.")
    reason = Attribute(
        "Why: 'cache too old' (the server can no longer list the changes "
        "since the cache's last transaction) or 'server behind cache' (the "
        "server's last transaction is older than the cache's: it was "
        "restored from a backup).")


@implementer(IStaleCache)
class StaleCache:
    """The `IStaleCache` event."""

    def __init__(self, storage: Any, reason: str = 'cache too old') -> None:
        self.storage = storage
        self.reason = reason

    def __repr__(self) -> str:
        name = getattr(self.storage, '__name__', self.storage)
        return f'<StaleCache {name!r:.200}: {self.reason}>'
