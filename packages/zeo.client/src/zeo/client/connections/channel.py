"""One connection to one server: the one path every request travels.

The rules (threads, locks, who reads) are in ``zeo.client.connections``;
this module follows them.  A `Channel` is made by the connection manager
for each connection attempt; its `ClientAdapter` (``adapter.py``) hands
it asyncio's events.  Its parts: the sans-IO
``zeo.protocol.ClientConnection`` (framing, codecs), `PendingReplies`
(who waits for what), `Output` (what is written, in call order) and, in
baton mode, a `SocketBaton` (who reads).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import threading
from typing import Any, Callable, Iterator, cast

from zeo.protocol import (
    NEED_DATA, Call, ClientConnection, ConnectionClosed, ErrorReply,
    Heartbeat, OneWayCall, ProtocolAgreed, ProtocolError, ProtocolLimits,
    Reply, exception_text, peer_repr)
from zeo.protocol.zodb_errors import neutralise_get_pickle_metadata

from zeo.client.connections import locks
from zeo.client.connections.baton import SocketBaton, available
from zeo.client.connections.output import Output
from zeo.client.connections.replies import PendingReplies
from zeo.client.connections.waiter import Waiter
from zeo.client import load_refs as load_refs_
from zeo.client.errors import ClientDisconnected, PickleServerRefused
from zeo.client.server_pickles import allowed_server_globals

__all__ = ['Channel', 'RECEIVE_BUFFER_SIZE', 'describe']

logger = logging.getLogger('zeo.client')

#: Bytes read from the socket at a time.
RECEIVE_BUFFER_SIZE = 256 * 1024

#: What a pickle (Z5) server's messages may name; see server_pickles.
_PICKLE_GLOBALS = allowed_server_globals()

# Held while the loop ends a connection a reading thread found broken.
_LEFT = object()

_get_ident = threading.get_ident


def describe(address: Any) -> str:
    """``host:port`` or the socket path, for log lines."""
    if isinstance(address, str):
        return address
    host, port = address[:2]
    return f'[{host}]:{port}' if ':' in host else f'{host}:{port}'


class Channel:
    """The client end of one connection to *address*.

    *handler* (`zeo.client.interfaces.IConnectionHandler`, the connection
    manager) hears what the server sends unasked, load replies, and when
    the protocol is agreed or the connection gone.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, address: Any,
                 handler: Any, *, limits: ProtocolLimits,
                 heartbeat_interval: float = 60.0,
                 direct_calls: bool = True,
                 accept_pickle: bool = True, load_refs: bool = False) -> None:
        # No ConflictError built from server data may unpickle it.
        neutralise_get_pickle_metadata()
        self.loop = loop
        self.address = address
        self.handler = handler
        #: Whether a server that speaks pickle (Z5) is acceptable.
        self.accept_pickle = accept_pickle
        #: Held by whichever thread touches this channel's state.
        self.lock = locks.new_lock(locks.CHANNEL, f'channel {describe(address)}')
        #: Set once the connection is gone (or being closed).
        self.closed = False
        #: What registration made of this connection.
        self.read_only = False
        self.registered = False
        #: The server's last tid, as ``register`` answered it.
        self.server_tid: bytes | None = None
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
        self.transport: asyncio.Transport | None = None
        self._direct_calls = direct_calls
        self._connection = ClientConnection(
            limits=limits, pickle_globals=_PICKLE_GLOBALS,
            capabilities=load_refs_.capabilities(load_refs))
        #: ``loadBefore``, or ``loadBeforeRefs`` once agreed (zeo.client.load_refs).
        self.load_method = load_refs_.LOAD_METHOD
        # The handler (the cache) hears of a load's result before its waiters.
        self._replies = PendingReplies(self, functools.partial(handler.load_reply, self))
        self._output = Output(loop, self.lock, self._encode_pieces, self._abort)
        self._baton: SocketBaton | None = None
        # An event a reading application thread left for the loop.
        self._held: Any = None
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat: asyncio.TimerHandle | None = None
        self._buffer = memoryview(bytearray(RECEIVE_BUFFER_SIZE))
        # What input_buffer last returned, if not _buffer.
        self._frame: memoryview | None = None

    def __repr__(self) -> str:
        state = 'closed' if self.closed else (
            'registered' if self.registered else 'connecting')
        return f'<Channel {describe(self.address)} {state}>'

    # -- requests -----------------------------------------------------------------

    def call(self, method: str, args: tuple[Any, ...],
             hook: Callable[[Any], Any] | None = None) -> Any:
        """Call *method* on the server and return its result (application
        threads).  *hook(result)* runs first, in wire order, in whichever
        thread handles the reply; what it returns is returned."""
        if locks.CHECK:
            locks.check_free('a reply')
        waiter = Waiter(hook)
        with self.lock:
            if self.closed:
                raise self._lost()
            # The baton first: the reply may come before send returns,
            # and the loop must not be woken by it.
            reading = self._take_baton()
            msgid = self._replies.add(waiter)
            self._output.send(self._connection.send(Call(msgid, method, args)))
        return self._wait(waiter, reading)

    def load(self, oid: bytes, tid: bytes) -> Any:
        """``loadBefore(oid, tid)`` (application threads): identical
        loads in flight share one request; the cache hears of the result
        (``handler.load_reply``) before this returns."""
        if locks.CHECK:
            locks.check_free('a reply')
        waiter = Waiter()
        key = (oid, tid)
        with self.lock:
            if self.closed:
                raise self._lost()
            reading = self._take_baton()  # first (see call)
            if self._replies.add_load(key, waiter):
                self._output.send(self._connection.send(Call(key, self.load_method, key)))
        return self._wait(waiter, reading)

    def prefetch(self, oid: bytes, tid: bytes) -> None:
        """Start ``loadBefore(oid, tid)`` unless it is in flight; nobody
        waits (the reply only fills the cache). Always the plain call: the
        caller names every object it wants, and extra records
        (``loadBeforeRefs``) would bring each of them many times over."""
        key = (oid, tid)
        with self.lock:
            if not self.closed and self._replies.add_load(key, None):
                self._output.send(self._connection.send(Call(key, 'loadBefore', key)))

    def loading(self, oid: bytes, tid: bytes) -> bool:
        """Tell whether ``loadBefore(oid, tid)`` is in flight."""
        return self._replies.loading((oid, tid))

    def request(self, method: str, *args: Any) -> asyncio.Future[Any]:
        """`call` for the loop's own coroutines: a future."""
        future = self.loop.create_future()
        with self.lock:
            if self.closed:
                future.set_exception(self._lost())
            else:
                msgid = self._replies.add(future)
                self._output.send(self._connection.send(Call(msgid, method, args)))
        return future

    def one_way(self, method: str, args: tuple[Any, ...]) -> None:
        """A one-way call (nothing comes back).  From an application
        thread it leaves with the next request (see ``output.py``).
        Dropped if the connection is gone: the next call on it fails."""
        with self.lock:
            if not self.closed:
                self._output.queue(self._connection.send(OneWayCall(method, args)))

    def stream(self, messages: Iterator[tuple[str, tuple[Any, ...]]]) -> None:
        """Send the one-way ``(method, args)`` messages *messages* yields,
        pulled only as fast as the transport drains (a blob upload)."""
        with self.lock:
            self._output.stream(messages)

    def _encode_pieces(self, method: str, args: tuple[Any, ...]) -> list[Any]:
        return self._connection.send_pieces(OneWayCall(method, args))

    def _lost(self) -> ClientDisconnected:
        return ClientDisconnected(f'connection to {describe(self.address)} lost')

    # -- waiting: whoever waits reads -------------------------------------------------

    def _take_baton(self) -> bool:
        # Under the lock: may this application thread read for itself?
        baton = self._baton
        if baton is None or baton.reader is not None or self._held is not None:
            return False
        baton.take(_get_ident())
        return True

    def _wait(self, waiter: Waiter, reading: bool) -> Any:
        # Not holding the lock (L4; checked on the way in).
        if reading:
            self._read_for(waiter)
        return waiter.wait()

    def _read_for(self, waiter: Waiter) -> None:
        # This thread holds the baton: read and handle input until the
        # waiter is settled, or until something must be left to the loop.
        baton = cast(SocketBaton, self._baton)  # set: _take_baton gave it to us
        lock = self.lock
        try:
            while not waiter.done():
                baton.wait()
                with lock:
                    if self.closed or not self._read(baton, False):
                        return
        finally:
            with lock:
                if self.closed:
                    baton.reader = None
                    baton.release()
                elif self._held is None:
                    baton.give_back()
                else:
                    baton.reader = None

    def _read_soon(self) -> None:
        # On the loop: the baton's epoll set heard of input while no
        # application thread reads.
        with self.lock:
            baton = self._baton
            if (not self.closed and baton is not None and baton.reader is None
                    and self._held is None):
                self._read(baton, True)

    def _read(self, baton: SocketBaton, on_loop: bool) -> bool:
        """One ``recv_into`` and the messages it completes.  Called holding
        the lock and the baton (the loop holds it while no thread does).
        False once this reader must stop."""
        if locks.CHECK and baton.reader != (None if on_loop else _get_ident()):
            raise locks.LockOrderError(f'{self!r}: a second reader (T3)')
        connection: Any = self._connection  # takes memoryviews too
        frame = connection.receive_buffer()
        buffer = self._buffer if frame is None else frame
        try:
            try:
                n = baton.socket.recv_into(buffer)
            except (BlockingIOError, InterruptedError):
                return True
            if n and frame is None:
                connection.receive_data(buffer[:n])
            elif n:
                connection.received_into(n)
        except ProtocolError as error:
            self._end(on_loop, self._protocol_error, error)
            return False
        except OSError as error:
            self._end(on_loop, self._abort, error)
            return False
        if n == 0:
            self._end(on_loop, self.close)
            return False
        return self._handle(on_loop)

    def _end(self, on_loop: bool, function: Callable[..., None], *args: Any) -> None:
        # End the connection: at once on the loop; a reading thread stops,
        # and nobody reads until the loop has run *function*.
        if on_loop:
            function(*args)
            return
        if self._held is None:
            self._held = _LEFT
        self.loop.call_soon_threadsafe(function, *args)

    # -- input (the transport reads, when there is no baton) -------------------------

    def input_buffer(self) -> memoryview:
        """Where the transport reads to: a large frame in progress (a blob
        chunk) is read into a buffer of its own."""
        frame = self._frame = self._connection.receive_buffer()
        return self._buffer if frame is None else frame

    def received(self, nbytes: int) -> None:
        """The transport read *nbytes* into `input_buffer`."""
        connection: Any = self._connection  # takes memoryviews too
        with self.lock:
            try:
                if self._frame is None:
                    # The frame reader copies what it keeps: the buffer is reused.
                    connection.receive_data(self._buffer[:nbytes])
                else:
                    self._frame = None
                    connection.received_into(nbytes)
            except ProtocolError as error:
                self._protocol_error(error)
            else:
                self._handle(True)

    # -- handling messages, in arrival order -------------------------------------------

    def _handle(self, on_loop: bool) -> bool:
        """Handle every complete message, in order, under the lock.  An
        application thread stops at one it may not handle and leaves it
        (and all after it) to the loop; False then, or once closed."""
        next_event = self._connection.next_event
        try:
            while not self.closed:
                event = next_event()
                if event is NEED_DATA:
                    return True
                if not on_loop and type(event) is Reply:
                    if self._replies.replied_in_thread(event):
                        continue   # most replies: the rest as below, in one call
                if not on_loop and not self._for_threads(event):
                    self._held = event
                    self.loop.call_soon_threadsafe(self._resume)
                    return False
                self._dispatch(event)
        except ProtocolError as error:
            self._end(on_loop, self._protocol_error, error)
        return False

    def _for_threads(self, event: Any) -> bool:
        # The server's one-way messages (the handler's invalidations, info
        # and blob chunks are thread-safe), and replies only application
        # threads wait for (hooks included: they need wire order, not the
        # loop).  Not the loop's futures, nor the connection's life events.
        kind = type(event)
        if kind is OneWayCall:
            return True
        if kind is Reply:
            return self._replies.for_threads(event[0])
        if kind is ErrorReply:
            return self._replies.for_threads(event.msgid)
        return False

    def _resume(self) -> None:
        # On the loop, posted by a reading thread that left an event for
        # it: handle it, then the rest, then let anyone read again.
        with self.lock:
            event, self._held = self._held, None
            if self.closed or event is None:
                return
            self._dispatch(event)
            self._handle(True)
            baton = self._baton
            if (not self.closed and baton is not None and baton.reader is None
                    and self._held is None):
                baton.give_back()

    def _dispatch(self, event: Any) -> None:
        kind = type(event)
        if kind is Reply:
            self._replies.replied(event)
        elif kind is OneWayCall:
            try:
                self.handler.server_message(self, event.method, event.args)
            except Exception:
                logger.exception('%r: handling %s failed', self, peer_repr(event.method))
        elif kind is ErrorReply:
            self._replies.failed(event)
        elif kind is ProtocolAgreed:
            if event.encoding == 'Z' and not self.accept_pickle:
                self._refuse_pickle()
                return
            self.agreed = event
            self.load_method = load_refs_.load_method(event)
            answer = self._connection.data_to_send()
            if answer:
                self._output.send(answer)
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

    def _protocol_error(self, error: ProtocolError) -> None:
        logger.error('%r: protocol error: %s', self, exception_text(error))
        self.close()

    # -- the adapter's events (on the loop) ---------------------------------------------

    def attach(self, transport: asyncio.BaseTransport) -> None:
        """The connection is made."""
        # asyncio types every protocol's transport as a BaseTransport; a
        # stream connection's is a Transport.
        stream = cast(asyncio.Transport, transport)
        self.transport = self._output.transport = stream
        self._output.loop_thread = _get_ident()
        if self._direct_calls and available(transport):
            # uvloop starts reading after connection_made returns, paused
            # or not: take the socket over on the next turn of the loop.
            self.loop.call_soon(self._take_socket, stream)
        self._heartbeat = self.loop.call_later(self._heartbeat_interval, self._send_heartbeat)

    def _take_socket(self, transport: asyncio.Transport) -> None:
        # From now on the baton's holder reads the socket: the loop, or
        # an application thread; the transport only writes.
        with self.lock:
            if self.closed:
                return
            try:
                baton = SocketBaton(self.loop, transport, self._read_soon)
            except OSError as error:  # out of descriptors: the loop reads
                logger.warning('%r: no baton, the loop reads: %s', self, error)
                return
            transport.pause_reading()
            self._baton = baton
            self._output.socket = baton.socket

    def pause_writing(self) -> None:
        with self.lock:
            self._output.pause()

    def resume_writing(self) -> None:
        with self.lock:
            self._output.resume()

    def connection_lost(self, exc: Exception | None) -> None:
        with self.lock:
            self._shut(exc)

    def _send_heartbeat(self) -> None:
        with self.lock:
            if not self.closed and self.agreed is not None:
                self._output.send(self._connection.send(Heartbeat()))
            if not self.closed:
                self._heartbeat = self.loop.call_later(
                    self._heartbeat_interval, self._send_heartbeat)

    # -- the end --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (on the loop); calls in flight fail at once."""
        with self.lock:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()
            self._shut(None)

    def _abort(self, error: BaseException | None) -> None:
        with self.lock:
            if self.transport is not None:
                self.transport.abort()
            self._shut(error)

    def _shut(self, exc: BaseException | None) -> None:
        # Under the lock, on the loop.
        first = not self.closed
        self.closed = True
        if self._baton is not None:
            self._baton.close()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        self._output.clear()
        self._replies.fail_all(self._lost)
        if first:
            if not self.handshake_done.done():
                self.handshake_done.set_exception(ClientDisconnected(
                    f'connection to {describe(self.address)} closed during the handshake'))
                self.handshake_done.exception()  # retrieved: no warning if unawaited
            self.handler.protocol_lost(self, exc)
