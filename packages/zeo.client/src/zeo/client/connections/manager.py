"""Which connection the client uses, and keeping the cache true to it.

Rules
=====

Rule 1: connecting, verifying and switching connections run on the
client's event loop thread.  What a channel hands its handler
(``load_reply``, ``server_message``, and the hooks ``transaction_finished``
and ``forget_history``) runs in whichever thread handles that message --
the loop, or an application thread reading for itself -- holding the
channel's lock, so the cache sees loads, invalidations and commits in the
order the server sent them (the thread and lock rules are in
``zeo.client.connections``).  Application threads read ``channel``,
``connected`` (a ``threading.Event``) and, under ``visibility``, the
cache's last tid.

Rule 2: the client uses one connection at a time, ``channel``.  Only
that connection's messages change the cache.  A connection that has
registered but is not (yet) the one queues the invalidations it receives;
if it becomes the one, its queue is applied right after its cache
verification, in order, with no loop turn in between -- so nothing is
applied from a connection that lost the race and nothing is missed by the
one that won (the reference's issue #191).  Activations are serialised by
an ``asyncio.Lock``.

Rule 3: the last tid moves only after the database heard of everything
up to it: invalidations are applied to the cache, then ``db.invalidate``
is called, then the last tid is set -- the last two under ``visibility``,
which ``lastTransaction()`` takes too, so no thread sees a last tid whose
invalidations it could still miss (ZODB >= 5.6; the reference's #166).
A commit does the same: cache updates, then ``setLastTid`` and the
committer's callback under ``visibility``.

Rule 4: a successful cache verification tells the database exactly which
objects changed (``db.invalidate``); only a cache that can't be verified
is dropped along with the database's object caches
(``db.invalidateCache``).  The reference drops the object caches on every
reconnect (its issue #20).

Theory of operation
===================

Each address gets an *attempt* task: connect, agree the protocol,
``register`` (with the read-only fallback), then -- holding the
activation lock -- verify the cache and become the connection.  A failed
attempt is retried after ``disconnect_poll`` seconds, doubling up to
``max_disconnect_poll`` (2 s by default; the reference retries every 1 to
2 s), each wait drawn between half that and that.  Attempts stop once
there is a connection, except that a client in read-only fallback mode
connected to a read-only server keeps trying the other addresses, and
switches ("upgrades") to the first writable server it finds.

Verification, given the server's last tid at registration and the cache's:

* no cache tid (a new cache): nothing to check;
* equal: up to date;
* cache older: ``getInvalidations(cache_tid)``; a reply drops the
  listed objects' current records and tells the database; ``None`` (the
  server's queue doesn't reach back that far) drops the cache;
* cache *newer*: the server is behind what this client has seen.  It may
  be catching up (another front of the same database, a standby): it is
  refused (`ServerBehind`, a WARNING line) and tried again, with the
  usual backoff, for up to ``server_behind_wait`` seconds from the first
  refusal, so the client never goes back in time.  If it is still behind
  then (it was restored from a backup), one clear error line, the cache
  is dropped, and the client carries on with the server's data.  The
  reference refuses such a server until someone deletes the cache file.
"""
from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, cast

from ZODB.event import notify
from ZODB.POSException import ReadOnlyError, StorageTransactionError
from ZODB.utils import tid_repr
from zope.interface import implementer
from zeo.protocol import exception_text, peer_repr

from zeo.client.cache import update_after_commit
from zeo.client.errors import ClientDisconnected, PickleServerRefused, ServerBehind
from zeo.client.interfaces import IConnectionManager, StaleCache
from zeo.client.connections import locks
from zeo.client.connections.adapter import ClientAdapter
from zeo.client.connections.channel import Channel, describe
from zeo.client.load_refs import cache_reply

if TYPE_CHECKING:
    from zeo.client.config import ClientConfig

__all__ = ['ConnectionManager', 'CONNECT_TIMEOUT']

logger = logging.getLogger('zeo.client')

#: Longest time from starting a connection to a registered one.
CONNECT_TIMEOUT = 30.0

_rng = random.Random()


def _jitter(delay: float) -> float:
    """The wait before the next attempt: at random between half *delay*
    and *delay*, so that clients cut off together do not come back in step,
    and ``max_disconnect_poll`` is the longest wait."""
    return delay * (0.5 + 0.5 * _rng.random())


@implementer(IConnectionManager)
class ConnectionManager:
    """The loop side of a client: connections, verification, consistency.

    *client* receives ``notify_connected(channel, info)`` and
    ``notify_disconnected(channel)`` on the loop thread; ``info(dict)``
    and the ``receiveBlobStart/Chunk/Stop`` callbacks (like
    ``load_reply`` and ``server_message`` here) in the thread that
    handles the message, holding the channel's lock (Rule 1).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, config: ClientConfig,
                 cache: Any, client: Any) -> None:
        self.loop = loop
        self.config = config
        self.addresses = config.addresses
        self.cache = cache
        self.client = client
        #: The database (``registerDB``); told about invalidations.
        self.db: Any = None
        #: The connection in use, or None.
        self.channel: Channel | None = None
        #: Bumped each time a connection becomes the one in use.
        self.generation = 0
        #: Set while ``channel`` is usable, and once closed (so that no
        #: thread waits for a connection that can't come).
        self.connected = threading.Event()
        #: Held while the last tid moves (see Rule 3).
        self.visibility = locks.new_lock(locks.VISIBILITY, 'visibility')
        self.closed = False
        self.ever_connected = False
        #: How the last verification went (for tests and status).
        self.verify_result: str | None = None
        #: (tid, time.time()) of the last invalidation applied (metrics).
        self.last_invalidation: tuple[bytes, float] | None = None
        self._channels: set[Channel] = set()
        self._closed_channels: list[Channel] = []
        self._attempts: dict[Any, asyncio.Task[None]] = {}
        self._activation = asyncio.Lock()
        self._failures = 0
        #: When a server behind the cache was first refused (Rule: never
        #: back in time, for up to server_behind_wait).
        self._behind_since: float | None = None
        # Addresses of pickle servers we refused (see _attempt).
        self._refused: set[Any] = set()

    def __repr__(self) -> str:
        return f'<ConnectionManager {self.config.display_name}>'

    # -- life cycle -----------------------------------------------------------

    def start(self) -> None:
        self._start_attempts()

    def close(self) -> None:
        """Close every connection; waiting calls fail."""
        if self.closed:
            return
        self.closed = True
        for task in self._attempts.values():
            task.cancel()
        self._attempts.clear()
        channel = self.channel
        self._closed_channels = list(self._channels)
        if channel is not None:
            self._closed_channels.append(channel)
            self._deactivate(channel)
        for p in list(self._channels):
            p.close()
        # Threads waiting for a connection wake up, and find us closed.
        self.connected.set()

    def abort_transports(self) -> None:
        """Drop the sockets that `close` left closing.

        A TLS transport's close waits for the server's answer to its
        close_notify; the loop is about to stop, and must not leave the
        socket open behind it."""
        for channel in self._closed_channels:
            if channel.transport is not None:
                channel.transport.abort()
        self._closed_channels = []

    def new_addresses(self, addresses: tuple[Any, ...]) -> None:
        self.addresses = addresses
        for address, task in list(self._attempts.items()):
            if address not in addresses:
                task.cancel()
        channel = self.channel
        if channel is not None and channel.address not in addresses:
            channel.close()   # protocol_lost starts new attempts
        else:
            self._start_attempts()

    # -- connecting -----------------------------------------------------------

    def _wanted(self, address: Any, channel: Channel | None = None) -> bool:
        """Is a (new) connection to *address* still of use?"""
        if self.closed or address not in self.addresses:
            return False
        current = self.channel
        if current is None:
            return True
        # Only an upgrade from a read-only fallback connection is wanted.
        return (self.config.read_only_fallback and current.read_only
                and current.address != address
                and (channel is None or not channel.read_only))

    def _start_attempts(self) -> None:
        for address in self.addresses:
            task = self._attempts.get(address)
            if (task is None or task.done()) and self._wanted(address):
                self._attempts[address] = self.loop.create_task(
                    self._attempt(address))

    async def _attempt(self, address: Any) -> None:
        delay = self.config.disconnect_poll
        try:
            while self._wanted(address):
                channel = None
                try:
                    channel = await asyncio.wait_for(
                        self._open(address), CONNECT_TIMEOUT)
                    if self._wanted(address, channel):
                        async with self._activation:
                            if self._wanted(address, channel) and not channel.closed:
                                await self._activate(channel)
                    if channel is self.channel:
                        return
                    channel.close()
                except asyncio.CancelledError:
                    if channel is not None and channel is not self.channel:
                        channel.close()
                    raise
                except Exception as error:
                    if channel is not None:
                        channel.close()
                    self._failures += 1
                    log = logger.info if self._failures <= len(self.addresses) \
                        else logger.debug
                    if isinstance(error, PickleServerRefused) \
                            and address not in self._refused:
                        self._refused.add(address)  # said once per address
                        log = logger.error
                    log('%s: no connection to %s: %s: %s', self.config.display_name,
                        describe(address), type(error).__name__, error)
                await asyncio.sleep(_jitter(delay))
                delay = min(delay * 2, self.config.max_disconnect_poll)
        finally:
            if self._attempts.get(address) is asyncio.current_task():
                del self._attempts[address]

    async def _open(self, address: Any) -> Channel:
        """Connect, agree the protocol and register; return the channel."""
        loop = self.loop
        config = self.config

        def factory() -> ClientAdapter:
            channel = Channel(
                loop, address, self, limits=config.limits,
                heartbeat_interval=config.heartbeat_interval,
                direct_calls=config.direct_calls,
                accept_pickle=config.accept_pickle_servers,
                load_refs=config.load_refs)
            self._channels.add(channel)
            return ClientAdapter(channel)

        ssl = config.ssl
        if isinstance(address, str):
            _, adapter = await loop.create_unix_connection(
                factory, address, ssl=ssl,
                server_hostname=(config.ssl_server_hostname or '') if ssl else None)
        else:
            host, port = address
            _, adapter = await loop.create_connection(
                factory, host, port, ssl=ssl,
                server_hostname=config.ssl_server_hostname if ssl else None)
        channel = adapter.channel
        try:
            await channel.handshake_done
            await self._register(channel)
        except BaseException:
            channel.close()
            raise
        return channel

    async def _register(self, channel: Channel) -> None:
        config = self.config
        try:
            tid = await channel.request('register', config.storage, config.read_only)
            channel.read_only = config.read_only
        except ReadOnlyError:
            if not config.read_only_fallback:
                raise
            tid = await channel.request('register', config.storage, True)
            channel.read_only = True
        if tid is None:  # only very old servers
            tid = await channel.request('lastTransaction')
        channel.server_tid = tid
        channel.registered = True
        if config.client_label:
            channel.one_way('set_client_label', (config.client_label,))

    async def _activate(self, channel: Channel) -> None:
        """Verify the cache against *channel*'s server and make it the
        connection in use.  Called holding the activation lock."""
        old = self.channel
        if old is not None:
            # An upgrade: leave the read-only server first, so that the
            # cache is verified against one server only.
            logger.info('%s: switching from read-only %s to writable %s',
                        self.config.display_name, describe(old.address),
                        describe(channel.address))
            self._deactivate(old)
            old.close()
        cache = self.cache
        server_tid = cast(bytes, channel.server_tid)  # set: _open registered it
        cache_tid = cache.getLastTid()
        info_reply = channel.request('get_info')
        invalidations = None
        if cache_tid is not None and cache_tid < server_tid:
            invalidations = channel.request('getInvalidations', cache_tid)
        if invalidations is None:
            info, changes = await info_reply, None
        else:
            # Both, so that when the connection drops neither failure is
            # left unretrieved (asyncio would log it).
            info, changes = await asyncio.gather(info_reply, invalidations)
        if channel.closed:
            raise ClientDisconnected('connection lost while verifying the cache')
        # From here to the end nothing awaits: no other message is handled
        # until the connection is in use (Rule 2).
        last = self._verify(channel, cache_tid, server_tid,
                            invalidations is not None, changes)
        queued, channel.queue = channel.queue or [], None
        for args in queued:
            if args[0] > last:
                self._invalidate(*args)
        self.channel = channel
        self.generation += 1
        self._failures = 0
        self._behind_since = None
        reconnected = self.ever_connected
        self.ever_connected = True
        logger.info('%s: %s to %s%s (%s)', self.config.display_name,
                    'reconnected' if reconnected else 'connected',
                    describe(channel.address),
                    ' read-only' if channel.read_only else '', self.verify_result)
        self.client.notify_connected(channel, dict(info))
        self.connected.set()
        if not (self.config.read_only_fallback and channel.read_only):
            current = asyncio.current_task()
            for task in list(self._attempts.values()):
                if task is not current:
                    task.cancel()
            for other in list(self._channels):
                if other is not channel:
                    other.close()

    def _verify(self, channel: Channel, cache_tid: bytes | None,
                server_tid: bytes, asked: bool, changes: Any) -> bytes:
        """Bring the cache in line with the server; return the last tid."""
        cache = self.cache
        name = self.config.display_name
        drop = False
        changed: Any = None
        last = server_tid
        if cache_tid is None:
            self.verify_result = 'new cache'
            if len(cache):
                cache.clear()
        elif cache_tid == server_tid:
            self.verify_result = 'cache up to date'
        elif cache_tid > server_tid:
            now = time.monotonic()
            if self._behind_since is None:
                self._behind_since = now
            waited = now - self._behind_since
            if waited < self.config.server_behind_wait:
                logger.warning(
                    '%s: the server at %s is at transaction %s, behind this '
                    "client's cache (%s): not using it yet (it may be catching "
                    'up); after %.0f s more it is used all the same, dropping '
                    'the cache (server_behind_wait)', name,
                    describe(channel.address), tid_repr(server_tid), tid_repr(cache_tid),
                    self.config.server_behind_wait - waited)
                raise ServerBehind(f'the server is at {tid_repr(server_tid)}, behind '
                                   f"this client's cache ({tid_repr(cache_tid)})")
            self.verify_result = 'server behind cache'
            logger.error(
                '%s: the server at %s is at transaction %s, behind this '
                "client's cache (%s) for %.0f s: it was probably restored from a "
                "backup. Dropping the cache and carrying on with the server's data.",
                name, describe(channel.address), tid_repr(server_tid),
                tid_repr(cache_tid), waited)
            drop = True
        elif not asked or changes is None or changes[0] < server_tid:
            self.verify_result = 'cache too old'
            logger.warning(
                '%s: the server can no longer list the changes since '
                'transaction %s (its invalidation queue is shorter); dropping '
                'the cache', name, tid_repr(cache_tid))
            drop = True
        else:
            self.verify_result = 'quick verification'
            last, oids = changes
            for oid in oids:
                cache.invalidate(oid, None)
            changed = oids
        if drop:
            try:
                notify(StaleCache(self.client, self.verify_result))
            except Exception:
                logger.exception('%s: a StaleCache subscriber failed', name)
            cache.clear()
        with self.visibility:
            db = self.db
            if db is not None:
                try:
                    if drop:
                        db.invalidateCache()
                    elif changed:
                        db.invalidate(last, changed)
                except Exception:
                    logger.exception('%s: the database failed to take '
                                     'invalidations', name)
            cache.setLastTid(last)
        return last

    def _deactivate(self, channel: Channel) -> None:
        self.channel = None
        self.connected.clear()
        try:
            self.client.notify_disconnected(channel)
        except Exception:
            logger.exception('%s: notify_disconnected failed', self.config.display_name)

    # -- the handler interface of Channel ------------------------------

    def protocol_agreed(self, channel: Channel) -> None:
        pass  # the attempt awaits channel.handshake_done

    def protocol_lost(self, channel: Channel, exc: BaseException | None) -> None:
        self._channels.discard(channel)
        if channel is self.channel:
            self._deactivate(channel)
            logger.warning('%s: disconnected from %s%s', self.config.display_name,
                           describe(channel.address),
                           f': {exception_text(exc)}' if exc else '')
            if not self.closed:
                self._start_attempts()
        elif self.channel is not None and self.channel.read_only \
                and self.config.read_only_fallback and not self.closed:
            self._start_attempts()

    def load_reply(self, channel: Channel, oid: bytes, tid: bytes,
                   result: Any) -> None:
        if channel is not self.channel or result is None:
            return
        cache_reply(self.cache, oid, result, self.config.display_name)

    def server_message(self, channel: Channel, method: str,
                       args: tuple[Any, ...]) -> None:
        if method == 'invalidateTransaction':
            if channel is self.channel:
                self._invalidate(*args)
            elif channel.queue is not None:
                channel.queue.append(args)
        elif method == 'info':
            if channel is self.channel:
                self.client.info(args[0])
        elif method in ('receiveBlobStart', 'receiveBlobChunk', 'receiveBlobStop'):
            getattr(self.client, method)(*args)
        else:
            logger.warning('%r: ignoring the unknown server message %s', channel,
                           peer_repr(method))

    # -- consistency ------------------------------------------------------------

    def _invalidate(self, tid: bytes, oids: Any) -> None:
        cache = self.cache
        last = cache.getLastTid()
        if last is not None and tid <= last:
            # Already covered (a verification reached past it).
            return
        invalidate = cache.invalidate
        for oid in oids:
            invalidate(oid, tid)
        with self.visibility:
            db = self.db
            if db is not None:
                try:
                    db.invalidate(tid, oids)
                except Exception:
                    logger.exception('%s: the database failed to take '
                                     'invalidations', self.config.display_name)
            cache.setLastTid(tid)
        self.last_invalidation = (tid, time.time())

    def transaction_finished(self, channel: Channel, tid: Any,
                             updates: Any, callback: Callable[[bytes], Any]) -> bytes:
        """Run on the loop when ``tpc_finish`` answered *tid*: update the
        cache with the transaction's records, then move the last tid and
        call *callback* (ZODB's) under ``visibility``."""
        if type(tid) is not bytes:
            raise StorageTransactionError(
                'the server does not know this transaction (tpc_finish)')
        if channel is self.channel:
            update_after_commit(self.cache, tid, updates)
        with self.visibility:
            if channel is self.channel:
                last = self.cache.getLastTid()
                if last is None or tid > last:
                    self.cache.setLastTid(tid)
            callback(tid)
        return tid

    # -- called by application threads ------------------------------------------------

    def prefetch(self, oids: list[bytes], tid: bytes) -> None:
        """Start loading what the cache lacks of *oids* as of *tid*."""
        channel = self.channel
        if channel is None:
            return
        load_before = self.cache.loadBefore
        for oid in oids:
            if not channel.loading(oid, tid) and load_before(oid, tid) is None:
                channel.prefetch(oid, tid)

    def forget_history(self, result: Any = None) -> Any:
        """Empty the cache but keep its last tid (after a pack)."""
        cache = self.cache
        with self.visibility:
            last = cache.getLastTid()
            cache.clear()
            if last is not None:
                cache.setLastTid(last)
        return result

    def forget_current(self, oid: bytes) -> None:
        """Drop the cached current record of *oid* (after a conflict):
        under the channel's lock, so in order with the messages handled."""
        channel = self.channel
        if channel is None:
            self.cache.invalidate(oid, None)
            return
        with channel.lock:
            self.cache.invalidate(oid, None)
