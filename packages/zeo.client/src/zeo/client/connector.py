"""Which connection the client uses, and keeping the cache true to it.

Rules
=====

Rule 1: everything here runs on the client's event loop thread, so the
cache sees loads, invalidations and commits in the order the server sent
them.  The only state application threads read directly is
``protocol``, ``connected`` (a ``threading.Event``) and, under
``visibility``, the cache's last tid.

Rule 2: the client uses one connection at a time, ``protocol``.  Only
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
* cache *newer* (the server was restored from a backup): one clear error
  line, the cache is dropped, and the client carries on.  The reference
  refuses to connect until someone deletes the cache file.
"""
from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from typing import Any, Callable

from ZODB.event import notify
from ZODB.POSException import ReadOnlyError, StorageTransactionError
from ZODB.utils import tid_repr
from zope.interface import implementer
from zeo.protocol import exception_text, peer_repr

from zeo.client.cache import CacheConsistencyError
from zeo.client.config import ClientConfig
from zeo.client.errors import ClientDisconnected, PickleServerRefused
from zeo.client.interfaces import IConnectionManager, StaleCache
from zeo.client.load_refs import cache_reply
from zeo.client.protocol import ClientProtocol, describe

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

    *client* receives ``notify_connected(protocol, info)``,
    ``notify_disconnected(protocol)``, ``info(dict)`` and the
    ``receiveBlobStart/Chunk/Stop`` callbacks, on the loop thread; but
    ``info`` and the blob callbacks (with ``load_reply`` and
    ``server_message`` here, and the hooks of ``tpc_finish`` and
    ``pack``) may also run in the application thread of a direct call
    (``zeo.client.direct``), holding the connection's lock.
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
        self.protocol: ClientProtocol | None = None
        #: Bumped each time a connection becomes the one in use.
        self.generation = 0
        #: Set while ``protocol`` is usable.
        self.connected = threading.Event()
        #: Held while the last tid moves (see Rule 3).
        self.visibility = threading.RLock()
        self.closed = False
        self.ever_connected = False
        #: How the last verification went (for tests and status).
        self.verify_result: str | None = None
        #: (tid, time.time()) of the last invalidation applied (metrics).
        self.last_invalidation: tuple[bytes, float] | None = None
        self._protocols: set[ClientProtocol] = set()
        self._closed_protocols: list[ClientProtocol] = []
        self._attempts: dict[Any, asyncio.Task[None]] = {}
        self._activation = asyncio.Lock()
        self._waiting: list[list[Any]] = []
        self._failures = 0
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
        protocol = self.protocol
        self._closed_protocols = list(self._protocols)
        if protocol is not None:
            self._closed_protocols.append(protocol)
            self._deactivate(protocol)
        for p in list(self._protocols):
            p.close()
        waiting, self._waiting = self._waiting, []
        for entry in waiting:
            entry[2].cancel()
            entry[1].set_exception(ClientDisconnected('the client storage is closed'))

    def abort_transports(self) -> None:
        """Drop the sockets that `close` left closing.

        A TLS transport's close waits for the server's answer to its
        close_notify; the loop is about to stop, and must not leave the
        socket open behind it."""
        for protocol in self._closed_protocols:
            if protocol.transport is not None:
                protocol.transport.abort()
        self._closed_protocols = []

    def new_addresses(self, addresses: tuple[Any, ...]) -> None:
        self.addresses = addresses
        for address, task in list(self._attempts.items()):
            if address not in addresses:
                task.cancel()
        protocol = self.protocol
        if protocol is not None and protocol.address not in addresses:
            protocol.close()   # protocol_lost starts new attempts
        else:
            self._start_attempts()

    # -- connecting -----------------------------------------------------------

    def _wanted(self, address: Any, protocol: ClientProtocol | None = None) -> bool:
        """Is a (new) connection to *address* still of use?"""
        if self.closed or address not in self.addresses:
            return False
        current = self.protocol
        if current is None:
            return True
        # Only an upgrade from a read-only fallback connection is wanted.
        return (self.config.read_only_fallback and current.read_only
                and current.address != address
                and (protocol is None or not protocol.read_only))

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
                protocol = None
                try:
                    protocol = await asyncio.wait_for(
                        self._open(address), CONNECT_TIMEOUT)
                    if self._wanted(address, protocol):
                        async with self._activation:
                            if self._wanted(address, protocol) and not protocol.closed:
                                await self._activate(protocol)
                    if protocol is self.protocol:
                        return
                    protocol.close()
                except asyncio.CancelledError:
                    if protocol is not None and protocol is not self.protocol:
                        protocol.close()
                    raise
                except Exception as error:
                    if protocol is not None:
                        protocol.close()
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

    async def _open(self, address: Any) -> ClientProtocol:
        """Connect, agree the protocol and register; return the protocol."""
        loop = self.loop
        config = self.config

        def factory() -> ClientProtocol:
            protocol = ClientProtocol(
                loop, address, self, limits=config.limits,
                heartbeat_interval=config.heartbeat_interval,
                direct_calls=config.direct_calls,
                accept_pickle=config.accept_pickle_servers,
                load_refs=config.load_refs)
            self._protocols.add(protocol)
            return protocol

        ssl = config.ssl
        if isinstance(address, str):
            _, protocol = await loop.create_unix_connection(
                factory, address, ssl=ssl,
                server_hostname=(config.ssl_server_hostname or '') if ssl else None)
        else:
            host, port = address
            _, protocol = await loop.create_connection(
                factory, host, port, ssl=ssl,
                server_hostname=config.ssl_server_hostname if ssl else None)
        try:
            await protocol.handshake_done
            await self._register(protocol)
        except BaseException:
            protocol.close()
            raise
        return protocol

    async def _register(self, protocol: ClientProtocol) -> None:
        config = self.config
        try:
            tid = await protocol.request('register', config.storage, config.read_only)
            protocol.read_only = config.read_only
        except ReadOnlyError:
            if not config.read_only_fallback:
                raise
            tid = await protocol.request('register', config.storage, True)
            protocol.read_only = True
        if tid is None:  # only very old servers
            tid = await protocol.request('lastTransaction')
        protocol.server_tid = tid
        protocol.registered = True
        if config.client_label:
            protocol.one_way('set_client_label', (config.client_label,))

    async def _activate(self, protocol: ClientProtocol) -> None:
        """Verify the cache against *protocol*'s server and make it the
        connection in use.  Called holding the activation lock."""
        old = self.protocol
        if old is not None:
            # An upgrade: leave the read-only server first, so that the
            # cache is verified against one server only.
            logger.info('%s: switching from read-only %s to writable %s',
                        self.config.display_name, describe(old.address),
                        describe(protocol.address))
            self._deactivate(old)
            old.close()
        cache = self.cache
        server_tid: bytes = protocol.server_tid  # type: ignore[assignment]  # registered
        cache_tid = cache.getLastTid()
        info_reply = protocol.request('get_info')
        invalidations = None
        if cache_tid is not None and cache_tid < server_tid:
            invalidations = protocol.request('getInvalidations', cache_tid)
        if invalidations is None:
            info, changes = await info_reply, None
        else:
            # Both, so that when the connection drops neither failure is
            # left unretrieved (asyncio would log it).
            info, changes = await asyncio.gather(info_reply, invalidations)
        if protocol.closed:
            raise ClientDisconnected('connection lost while verifying the cache')
        # From here to the end nothing awaits: no other message is handled
        # until the connection is in use (Rule 2).
        last = self._verify(protocol, cache_tid, server_tid,
                            invalidations is not None, changes)
        queued, protocol.queue = protocol.queue or [], None
        for args in queued:
            if args[0] > last:
                self._invalidate(*args)
        self.protocol = protocol
        with protocol.lock:
            protocol.active = not protocol.closed
        self.generation += 1
        self._failures = 0
        reconnected = self.ever_connected
        self.ever_connected = True
        logger.info('%s: %s to %s%s (%s)', self.config.display_name,
                    'reconnected' if reconnected else 'connected',
                    describe(protocol.address),
                    ' read-only' if protocol.read_only else '', self.verify_result)
        self.client.notify_connected(protocol, dict(info))
        self.connected.set()
        self._flush_waiting(protocol)
        if not (self.config.read_only_fallback and protocol.read_only):
            current = asyncio.current_task()
            for task in list(self._attempts.values()):
                if task is not current:
                    task.cancel()
            for other in list(self._protocols):
                if other is not protocol:
                    other.close()

    def _verify(self, protocol: ClientProtocol, cache_tid: bytes | None,
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
            self.verify_result = 'server behind cache'
            logger.error(
                '%s: the server at %s is at transaction %s, behind this '
                "client's cache (%s): it was probably restored from a backup. "
                'Dropping the cache and carrying on with the server\'s data.',
                name, describe(protocol.address), tid_repr(server_tid),
                tid_repr(cache_tid))
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

    def _deactivate(self, protocol: ClientProtocol) -> None:
        with protocol.lock:
            protocol.active = False
        self.protocol = None
        self.connected.clear()
        try:
            self.client.notify_disconnected(protocol)
        except Exception:
            logger.exception('%s: notify_disconnected failed', self.config.display_name)

    # -- the handler interface of ClientProtocol ------------------------------

    def protocol_agreed(self, protocol: ClientProtocol) -> None:
        pass  # the attempt awaits protocol.handshake_done

    def protocol_lost(self, protocol: ClientProtocol, exc: Exception | None) -> None:
        self._protocols.discard(protocol)
        if protocol is self.protocol:
            self._deactivate(protocol)
            logger.warning('%s: disconnected from %s%s', self.config.display_name,
                           describe(protocol.address),
                           f': {exception_text(exc)}' if exc else '')
            if not self.closed:
                self._start_attempts()
        elif self.protocol is not None and self.protocol.read_only \
                and self.config.read_only_fallback and not self.closed:
            self._start_attempts()

    def load_reply(self, protocol: ClientProtocol, oid: bytes, tid: bytes,
                   result: Any) -> None:
        if protocol is not self.protocol or result is None:
            return
        cache_reply(self.cache, oid, result, self.config.display_name)

    def server_message(self, protocol: ClientProtocol, method: str,
                       args: tuple[Any, ...]) -> None:
        if method == 'invalidateTransaction':
            if protocol is self.protocol:
                self._invalidate(*args)
            elif protocol.queue is not None:
                protocol.queue.append(args)
        elif method == 'info':
            if protocol is self.protocol:
                self.client.info(args[0])
        elif method in ('receiveBlobStart', 'receiveBlobChunk', 'receiveBlobStop'):
            getattr(self.client, method)(*args)
        else:
            logger.warning('%r: ignoring the unknown server message %s', protocol,
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

    def transaction_finished(self, protocol: ClientProtocol, tid: Any,
                             updates: Any, callback: Callable[[bytes], Any]) -> bytes:
        """Run on the loop when ``tpc_finish`` answered *tid*: update the
        cache with the transaction's records, then move the last tid and
        call *callback* (ZODB's) under ``visibility``."""
        if type(tid) is not bytes:
            raise StorageTransactionError(
                'the server does not know this transaction (tpc_finish)')
        if protocol is self.protocol:
            cache = self.cache
            for oid, data, resolved in updates:
                try:
                    cache.invalidate(oid, tid)
                    if data is not None and not resolved:
                        cache.store(oid, tid, None, data)
                except CacheConsistencyError:
                    cache.invalidate(oid, None)
        with self.visibility:
            if protocol is self.protocol:
                last = self.cache.getLastTid()
                if last is None or tid > last:
                    self.cache.setLastTid(tid)
            callback(tid)
        return tid

    # -- calls from application threads (via the runner) ------------------------

    def submit(self, method: str, args: tuple[Any, ...], waiter: Any,
               protocol: ClientProtocol | None, timeout: float | None) -> None:
        if protocol is None:
            current = self.protocol
            if current is None:
                self._wait_then(lambda p: p.call(method, args, waiter), waiter, timeout)
                return
            current.call(method, args, waiter)
        elif protocol is self.protocol:
            protocol.call(method, args, waiter)
        else:
            waiter.set_exception(ClientDisconnected(
                f'the connection to {describe(protocol.address)} is gone'))

    def submit_load(self, oid: bytes, tid: bytes, waiter: Any) -> None:
        current = self.protocol
        if current is None:
            self._wait_then(lambda p: p.load(oid, tid, waiter), waiter, None)
        else:
            current.load(oid, tid, waiter)

    def submit_one_way(self, protocol: ClientProtocol | None, method: str,
                       args: tuple[Any, ...]) -> None:
        target = self.protocol if protocol is None else protocol
        if target is not None and target is self.protocol:
            target.one_way(method, args)

    def submit_stream(self, protocol: ClientProtocol, messages: Any) -> None:
        if protocol is self.protocol:
            protocol.stream(messages)

    def prefetch(self, oids: list[bytes], tid: bytes) -> None:
        protocol = self.protocol
        if protocol is None:
            return
        load_before = self.cache.loadBefore
        for oid in oids:
            if not protocol.loading(oid, tid) and load_before(oid, tid) is None:
                protocol.load(oid, tid, None)

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
        """Drop the cached current record of *oid* (after a conflict)."""
        self.cache.invalidate(oid, None)

    def _wait_then(self, send: Callable[[ClientProtocol], None], waiter: Any,
                   timeout: float | None) -> None:
        """Send once connected, or fail after the wait timeout."""
        if self.closed:
            waiter.set_exception(ClientDisconnected('the client storage is closed'))
            return
        if not self.ever_connected and not self.config.wait:
            waiter.set_exception(ClientDisconnected('never connected'))
            return
        if timeout is None:
            timeout = self.config.wait_timeout
        if timeout <= 0:
            waiter.set_exception(ClientDisconnected('not connected'))
            return
        entry: list[Any] = [send, waiter, None]
        entry[2] = self.loop.call_later(timeout, self._expire, entry)
        self._waiting.append(entry)

    def _expire(self, entry: list[Any]) -> None:
        try:
            self._waiting.remove(entry)
        except ValueError:
            return
        entry[1].set_exception(ClientDisconnected('timed out waiting for connection'))

    def _flush_waiting(self, protocol: ClientProtocol) -> None:
        waiting, self._waiting = self._waiting, []
        for send, _, timer in waiting:
            timer.cancel()
            send(protocol)
