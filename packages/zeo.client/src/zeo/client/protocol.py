"""One connection to one server: an ``asyncio.Protocol`` over the sans-IO
``zeo.protocol.ClientConnection``.

Rules
=====

Rule 1: everything here runs on the client's event loop thread, but for
a direct call, where an application thread sends its request and reads
the reply itself (``zeo.client.direct``).  Either holds ``lock`` while
touching the connection's state.  Nothing blocks, nothing sleeps; timers
are loop timers.

Rule 2: messages are handled strictly in arrival order, and each one is
handled completely -- including the cache update a load reply implies
(``handler.load_reply``) -- before the next one is looked at.  That is
what keeps the cache consistent with invalidations (the reference's
data-corruption bugs #155, #166 and #209 were all breaches of it).

Rule 3: the protocol doesn't decide anything about the storage.  What a
server sends unasked (invalidations, info, blob chunks) goes to the
*handler*, which also hears when the protocol was agreed and when the
connection is gone.  See `IConnectionHandler` in ``zeo.client.interfaces``.

Theory of operation
===================

A *waiter* is anything with ``set_result(value)`` and
``set_exception(error)``: an ``asyncio.Future`` for the loop's own
coroutines (registration, verification), or the runner's thread waiter
for calls made by application threads.  A call gets the next integer
message id; ``loadBefore`` uses ``(oid, tid)`` as its id, as the
reference does, so identical loads in flight share one request and all
their waiters get the one reply.

When the connection is lost, every waiter gets ``ClientDisconnected``:
a call in flight never hangs and never completes on another connection.

Input is read with ``asyncio.BufferedProtocol`` into a buffer allocated
once per connection: with plain ``asyncio.Protocol`` the loop allocates a
256 KiB ``bytes`` per read, and glibc serves that with ``mmap``/``munmap``
on every reply.

Output normally goes straight to the transport.  Between ``cork()`` and
``uncork()`` (the runner does that around a batch of requests from
application threads) it is collected and written once.  A blob upload is
a lazy stream of one-way messages, read from disk only as fast as the
transport drains; anything written after it waits behind it, so the
order on the wire is the order of the calls.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
from typing import Any, Callable, Iterator

from ZODB.POSException import ConflictError, POSKeyError

from zeo.protocol import (
    NEED_DATA, Call, ClientConnection, ConnectionClosed, ErrorReply,
    Heartbeat, OneWayCall, ProtocolAgreed, ProtocolError, ProtocolLimits,
    Reply, exception_text, peer_repr, zodb_error_table)
from zeo.protocol.zodb_errors import neutralise_get_pickle_metadata

from zeo.client import direct
from zeo.client import load_refs as load_refs_
from zeo.client.errors import ClientDisconnected, PickleServerRefused
from zeo.client.server_pickles import allowed_server_globals

__all__ = ['ClientProtocol', 'QUIET_ERRORS']

logger = logging.getLogger('zeo.client')

#: Errors that are part of normal operation: raised, never logged.
QUIET_ERRORS = (POSKeyError, ConflictError)

_ERRORS = zodb_error_table()
_InvalidStateError = asyncio.InvalidStateError

#: Bytes read from the socket at a time.
RECEIVE_BUFFER_SIZE = 256 * 1024


#: What a pickle (Z5) server's messages may name; see server_pickles.
_PICKLE_GLOBALS = allowed_server_globals()


def _settle(waiter: Any, value: Any) -> None:
    try:
        waiter.set_result(value)
    except _InvalidStateError:  # a loop future that was cancelled
        pass


def _fail(waiter: Any, error: BaseException) -> None:
    try:
        waiter.set_exception(error)
    except _InvalidStateError:
        pass


class ClientProtocol(direct.DirectCalls, asyncio.BufferedProtocol):
    """The client end of one connection to *address*."""

    def __init__(self, loop: asyncio.AbstractEventLoop, address: Any,
                 handler: Any, *, limits: ProtocolLimits,
                 heartbeat_interval: float = 60.0,
                 direct_calls: bool = False,
                 accept_pickle: bool = True, load_refs: bool = False) -> None:
        # No ConflictError built from server data may unpickle it.
        neutralise_get_pickle_metadata()
        self.loop = loop
        #: Whether a server that speaks pickle (Z5) is acceptable.
        self.accept_pickle = accept_pickle
        #: Held by whichever thread touches the connection's state.
        self.lock = threading.RLock()
        #: Set (under the lock, by the connection manager) while this is
        #: the connection in use: only then may calls be direct.
        self.active = False
        self._direct_calls = direct_calls
        self._baton: direct.SocketBaton | None = None
        # An event a reading application thread left for the loop.
        self._held: Any = None
        # One-way calls application threads queued (see one_way_direct).
        self._queued: list[bytes] = []
        self._queued_size = 0
        self.address = address
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        #: Set once the connection is gone (or being closed).
        self.closed = False
        #: What registration made of this connection.
        self.read_only = False
        self.registered = False
        #: Invalidations received before this became the client's
        #: connection (see the connection manager); None once they are
        #: applied directly.  It exists from the start: the first
        #: invalidation can arrive in the same read as the reply to
        #: ``register``, before the coroutine that awaits that reply runs.
        self.queue: list[tuple[Any, ...]] | None = []
        self.agreed: ProtocolAgreed | None = None
        #: Resolved when the protocol is agreed (failed if the connection
        #: is lost first).
        self.handshake_done: asyncio.Future[None] = loop.create_future()
        #: The server's last tid, as ``register`` answered it.
        self.server_tid: bytes | None = None
        self._connection = ClientConnection(
            limits=limits, pickle_globals=_PICKLE_GLOBALS,
            capabilities=load_refs_.capabilities(load_refs))
        #: ``loadBefore``, or ``loadBeforeRefs`` once agreed (load_refs).
        self.load_method = load_refs_.LOAD_METHOD
        self._waiters: dict[Any, Any] = {}
        self._next_id = 1
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat: asyncio.TimerHandle | None = None
        self._paused = False
        self._pending: collections.deque[Any] = collections.deque()
        self._corked: list[bytes] | None = None
        self._buffer = memoryview(bytearray(RECEIVE_BUFFER_SIZE))
        # What get_buffer last returned, if not _buffer.
        self._direct: memoryview | None = None

    def __repr__(self) -> str:
        state = 'closed' if self.closed else (
            'registered' if self.registered else 'connecting')
        return f'<ClientProtocol {self.address!r} {state}>'

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self._direct_calls and direct.available(transport):
            # uvloop starts reading after connection_made returns, paused
            # or not: take over on the next turn of the loop.
            self.loop.call_soon(self._read_for_ourselves)
        self._heartbeat = self.loop.call_later(
            self._heartbeat_interval, self._send_heartbeat)

    def get_buffer(self, sizehint: int) -> memoryview:
        # A large frame in progress (a blob chunk) is read into a buffer
        # of its own.
        direct = self._direct = self._connection.receive_buffer()
        return self._buffer if direct is None else direct

    def buffer_updated(self, nbytes: int) -> None:
        if self._direct is None:
            # The frame reader copies what it keeps: the buffer is reused.
            self.data_received(self._buffer[:nbytes])
        else:
            self._direct = None
            self._receive(self._connection.received_into, nbytes)

    def data_received(self, data: bytes | memoryview) -> None:
        """Handle *data* read from the connection, in arrival order."""
        self._receive(self._connection.receive_data, data)

    def _receive(self, receive: Callable[[Any], None], data: Any) -> None:
        with self.lock:
            try:
                receive(data)
            except ProtocolError as error:
                self._protocol_error(error)
            else:
                self._handle_events()

    def _handle_events(self) -> None:
        next_event = self._connection.next_event
        try:
            while not self.closed:
                event = next_event()
                if event is NEED_DATA:
                    break
                self._dispatch(event)
        except ProtocolError as error:
            self._protocol_error(error)

    def _protocol_error(self, error: ProtocolError) -> None:
        logger.error('%r: protocol error: %s', self, exception_text(error))
        self.close()

    def eof_received(self) -> bool:
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        with self.lock:
            self._shut(exc)

    def pause_writing(self) -> None:
        with self.lock:
            self._paused = True

    def resume_writing(self) -> None:
        with self.lock:
            self._paused = False
            self._drain()

    # -- reading the socket ourselves (see zeo.client.direct) -----------------

    def _read_for_ourselves(self) -> None:
        # From now on we read the socket, on the loop or in the thread
        # holding the baton; the transport only writes.
        with self.lock:
            if self.closed:
                return
            try:
                baton = direct.SocketBaton(self.loop, self.transport, self._readable)
            except OSError as error:  # out of descriptors: the loop reads
                logger.warning('%r: no direct calls: %s', self, error)
                return
            self.transport.pause_reading()  # type: ignore[union-attr]
            self._baton = baton

    def _read_once(self, baton: direct.SocketBaton) -> int:
        """One ``recv_into``; its size, 0 at the end of input, -1 for
        nothing yet.  Raises OSError.  Called holding the lock."""
        connection = self._connection
        frame = connection.receive_buffer()
        buffer = self._buffer if frame is None else frame
        try:
            n = baton.socket.recv_into(buffer)
        except (BlockingIOError, InterruptedError):
            return -1
        if n:
            if frame is None:
                connection.receive_data(buffer[:n])
            else:
                connection.received_into(n)
        return n

    def _readable(self) -> None:
        # The loop heard of input, while no application thread reads.
        with self.lock:
            baton = self._baton
            if (self.closed or baton is None or baton.reader is not None
                    or self._held is not None):
                return
            try:
                n = self._read_once(baton)
            except ProtocolError as error:
                self._protocol_error(error)
                return
            except OSError as error:
                self._abort(error)
                return
            if n > 0:
                self._handle_events()
            elif n == 0:
                self.close()

    def _abort(self, error: Exception | None) -> None:
        with self.lock:
            if self.transport is not None:
                self.transport.abort()
            self._shut(error)

    def _resume(self) -> None:
        # Posted by a reading application thread that left an event for
        # the loop: handle it, then the rest, then read again.
        with self.lock:
            event, self._held = self._held, None
            if self.closed or event is None:
                return
            self._dispatch(event)
            self._handle_events()
            baton = self._baton
            if not self.closed and baton is not None and baton.reader is None \
                    and self._held is None:
                baton.give_back()

    # -- input ----------------------------------------------------------------

    def _dispatch(self, event: Any) -> None:
        kind = type(event)
        if kind is Reply:
            msgid = event[0]
            waiter = self._waiters.pop(msgid, None)
            if type(msgid) is tuple:
                self._load_replied(msgid, event[3], waiter)
            elif waiter is not None:
                _settle(waiter, event[3])
            else:
                logger.warning('%r: reply to an unknown call %s', self, peer_repr(msgid))
        elif kind is OneWayCall:
            try:
                self.handler.server_message(self, event.method, event.args)
            except Exception:
                logger.exception('%r: handling %s failed', self, peer_repr(event.method))
        elif kind is ErrorReply:
            self._error_replied(event)
        elif kind is ProtocolAgreed:
            if event.encoding == 'Z' and not self.accept_pickle:
                self._refuse_pickle()
                return
            self.agreed = event
            self.load_method = load_refs_.load_method(event)
            answer = self._connection.data_to_send()
            if answer:
                self._write(answer)
            if not self.handshake_done.done():
                self.handshake_done.set_result(None)
            self.handler.protocol_agreed(self)
        elif kind is ConnectionClosed:
            self.close()

    def _refuse_pickle(self) -> None:
        # Closed before we answer the greeting; the connection manager
        # logs the error and retries with its usual backoff.
        if not self.handshake_done.done():
            self.handshake_done.set_exception(PickleServerRefused(
                f'{describe(self.address)} speaks pickle (Z5), and this client '
                'refuses pickle servers (accept_pickle_servers is false, '
                '<clientstorage> key accept-pickle-servers): configure that '
                'server for msgpack (<zeo> key msgpack true), or set '
                'accept_pickle_servers to true to use it anyway'))
            self.handshake_done.exception()  # retrieved: no warning if unawaited
        self.close()

    def _load_replied(self, msgid: tuple[Any, ...], result: Any,
                      waiters: Any) -> None:
        # The cache learns of the reply before anyone else, and before the
        # next message (Rule 2).
        try:
            self.handler.load_reply(self, msgid[0], msgid[1], result)
        except Exception:
            logger.exception('%r: caching a load reply failed', self)
        if self.load_method is not load_refs_.LOAD_METHOD:
            result = load_refs_.waiter_result(result)
        for waiter in waiters or ():
            _settle(waiter, result)

    def _error_replied(self, event: ErrorReply) -> None:
        waiter = self._waiters.pop(event.msgid, None)
        error = _ERRORS.from_reply(event)
        if not isinstance(error, QUIET_ERRORS):
            logger.info('%r: the server raised %s', self, error.__class__.__name__)
        if waiter is None:
            logger.warning('%r: error reply to an unknown call %s: %s',
                           self, peer_repr(event.msgid), exception_text(error))
        elif type(waiter) is list:
            for w in waiter:
                _fail(w, _ERRORS.from_reply(event))
        else:
            _fail(waiter, error)

    # -- output -----------------------------------------------------------------

    def call(self, method: str, args: tuple[Any, ...], waiter: Any) -> None:
        """Send a request; *waiter* gets the result or the error."""
        with self.lock:
            if self.closed:
                _fail(waiter, ClientDisconnected(f'connection to {self.address!r} lost'))
                return
            msgid = self._next_id
            self._next_id = msgid + 1
            self._waiters[msgid] = waiter
            self._write(self._connection.send(Call(msgid, method, args)))

    def request(self, method: str, *args: Any) -> asyncio.Future[Any]:
        """`call` for the loop's own coroutines: returns a future."""
        future = self.loop.create_future()
        self.call(method, args, future)
        return future

    def load(self, oid: bytes, tid: bytes, waiter: Any) -> None:
        """``loadBefore(oid, tid)`` (or ``loadBeforeRefs``, see
        zeo.client.load_refs); identical loads in flight share one
        request.  *waiter* may be None (a prefetch nobody waits for)."""
        with self.lock:
            if self.closed:
                if waiter is not None:
                    _fail(waiter, ClientDisconnected(
                        f'connection to {self.address!r} lost'))
                return
            key = (oid, tid)
            waiters = self._waiters.get(key)
            if waiters is not None:
                if waiter is not None:
                    waiters.append(waiter)
                return
            self._waiters[key] = [waiter] if waiter is not None else []
            self._write(self._connection.send(Call(key, self.load_method, key)))

    def loading(self, oid: bytes, tid: bytes) -> bool:
        """Tell whether ``loadBefore(oid, tid)`` is in flight."""
        return (oid, tid) in self._waiters

    def one_way(self, method: str, args: tuple[Any, ...]) -> None:
        """Send a one-way call (nothing comes back).  Dropped silently if
        the connection is gone: the next synchronous call on it fails."""
        with self.lock:
            if not self.closed:
                self._write(self._connection.send(OneWayCall(method, args)))

    def stream(self, messages: Iterator[tuple[str, tuple[Any, ...]]]) -> None:
        """Send the one-way ``(method, args)`` messages that *messages*
        yields, pulling the next one only while the transport can take it."""
        with self.lock:
            if not self.closed:
                if self._queued:
                    self._write(self._take_queued())
                self._flush_cork()
                self._pending.append(messages)
                self._drain()

    def cork(self) -> None:
        """Collect output until `uncork` (see the module docstring)."""
        with self.lock:
            if self._corked is None:
                self._corked = []

    def uncork(self) -> None:
        with self.lock:
            corked, self._corked = self._corked, None
            if corked:
                self._write(b''.join(corked) if len(corked) > 1 else corked[0])

    def _flush_cork(self) -> None:
        # Write what is corked now (ahead of a stream), and stay corked.
        corked = self._corked
        if corked:
            self._corked = None
            self._write(b''.join(corked))
            self._corked = []

    def _send_heartbeat(self) -> None:
        with self.lock:
            if not self.closed and self.agreed is not None:
                self._write(self._connection.send(Heartbeat()))
            if not self.closed:
                self._heartbeat = self.loop.call_later(
                    self._heartbeat_interval, self._send_heartbeat)

    def _write(self, data: bytes) -> None:
        if self._queued:  # application threads' one-way calls came first
            data = self._take_queued(data)
        if self._corked is not None:
            self._corked.append(data)
        elif self._pending or self._paused:
            self._pending.append(data)
        elif not self.closed:
            self.transport.write(data)  # type: ignore[union-attr]

    def _drain(self) -> None:
        pending = self._pending
        while pending and not self._paused and not self.closed:
            item = pending[0]
            if type(item) is bytes:
                pending.popleft()
                self.transport.write(item)  # type: ignore[union-attr]
                continue
            try:
                method, args = next(item)
            except StopIteration:
                pending.popleft()
                continue
            except Exception:
                pending.popleft()
                logger.exception('%r: reading a blob to upload failed', self)
                # The server is in the middle of an upload; only closing
                # the connection resets it (and dooms the transaction).
                self.close()
                return
            # In pieces: a blob chunk is written as read, not copied.
            self.transport.writelines(  # type: ignore[union-attr]
                self._connection.send_pieces(OneWayCall(method, args)))

    # -- the end ------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; calls in flight fail at once."""
        with self.lock:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()
            self._shut(None)

    def _shut(self, exc: Exception | None) -> None:
        # Under the lock, on the loop.
        first = not self.closed
        self.closed = True
        self.active = False
        if self._baton is not None:
            self._baton.close()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        self._pending.clear()
        self._corked = None
        self._queued.clear()
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            for w in (waiter if type(waiter) is list else (waiter,)):
                _fail(w, ClientDisconnected(
                    f'connection to {self.address!r} lost'))
        if first:
            if not self.handshake_done.done():
                self.handshake_done.set_exception(ClientDisconnected(
                    f'connection to {self.address!r} closed during the handshake'))
                self.handshake_done.exception()  # retrieved: no warning if unawaited
            self.handler.protocol_lost(self, exc)


def describe(address: Any) -> str:
    """``host:port`` or the socket path, for log lines."""
    if isinstance(address, str):
        return address
    host, port = address[:2]
    return f'[{host}]:{port}' if ':' in host else f'{host}:{port}'

