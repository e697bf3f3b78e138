"""Direct calls: the application thread does the socket I/O of its own call.

Why
===

A call handed to the loop thread wakes two sleepers on the client per
round trip -- the loop, to send and again to read the reply, and then
the application thread -- and on an idle machine each wake-up costs
about as much as the server's work (docs/performance.rst).  A direct
call sends its request from the application thread and reads the reply
there, so a round trip wakes the server and the caller, nothing else.

How
===

The loop does not read the socket through its transport (reading is
paused for good); it watches a private ``epoll`` set holding only this
socket, whose own descriptor is registered with the loop.  The
application thread that reads for itself takes the *baton*: under the
connection's lock it removes the socket from that set (``epoll_ctl`` is
safe from any thread and wakes nobody), so the loop stops hearing about
input, and puts it back when it leaves.  Whoever holds the baton reads
with ``recv_into`` on a duplicate of the socket's descriptor.

What an application thread may do with the input is what needs no
loop: replies to application threads' calls (load replies are cached
first, and a waiter's hook runs, as on the loop) and the server's one-way
messages (invalidations, ``info``, blob chunks), which the connection
manager handles thread-safely.  Anything else -- a reply the loop's own
coroutines wait for, the handshake, the end of the connection -- is left
for the loop: the thread parks that event (``held``), asks the loop to go
on from there, and stops reading.  So every message is still handled in
arrival order, by one thread at a time, under the connection's lock
(Rule 2 of ``zeo.client.protocol``).  The locks taken on the way
(visibility, the cache's, the database's) are the ones the loop takes in
the same order, and ZODB never calls a storage while holding its own.

Output keeps the order in which calls were made.  A call is direct only
while the runner's outbox is empty (the loop drains it holding the
connection's lock), so it never overtakes a request handed to the loop
before it; it goes straight into the socket unless output is already
waiting there, behind which it queues.  An application thread's one-way
calls are queued on the connection (`DirectCalls.one_way_direct`) and
leave with the next thing sent by any thread, so a one-object commit
sends ``tpc_begin``, ``storea`` and ``vote`` with one system call.

Only plain TCP and Unix sockets on Linux (``epoll``) have direct calls;
TLS connections and other platforms use the loop for everything.
``direct_calls=False`` (``direct-calls false``) turns them off.
"""
from __future__ import annotations

import os
import select
import socket
import threading
from typing import Any, Callable

from zeo.protocol import NEED_DATA, Call, ErrorReply, OneWayCall, ProtocolError, Reply

from zeo.client.waiter import Waiter

__all__ = ['DirectCalls', 'SocketBaton', 'BATON_POLL_TIMEOUT', 'QUEUED_LIMIT', 'available']

#: Bytes of queued one-way calls (`DirectCalls.one_way_direct`) that are
#: sent without waiting for the next call.
QUEUED_LIMIT = 256 * 1024

#: How long (milliseconds) a reading application thread waits in one
#: ``poll`` before looking at the connection's state again.  It is also
#: woken at once when the connection closes; this only bounds a miss.
BATON_POLL_TIMEOUT = 1000

_EPOLLIN = getattr(select, 'EPOLLIN', 1)

# Held while the loop ends a connection a reading thread found broken.
_LEFT = object()


def available(transport: Any) -> bool:
    """Can a connection over *transport* have direct calls?"""
    if not hasattr(select, 'epoll') or transport is None:
        return False
    if transport.get_extra_info('ssl_object') is not None:
        return False
    sock = transport.get_extra_info('socket')
    return sock is not None and sock.type == socket.SOCK_STREAM


class SocketBaton:
    """Who reads one connection's socket: the loop, or one application thread.

    All methods but `wait` are called holding the connection's lock.
    """

    def __init__(self, loop: Any, transport: Any, on_readable: Callable[[], None]) -> None:
        original = transport.get_extra_info('socket')
        opened: list[Any] = []
        try:
            # A duplicate descriptor, ours to close: a thread blocked in
            # poll() on it never sees its number reused under it.
            self.socket = socket.socket(original.family, original.type,
                                        fileno=os.dup(original.fileno()))
            opened.append(self.socket)
            self.socket.setblocking(False)
            self._fd = self.socket.fileno()
            self._epoll = select.epoll(1)
            opened.append(self._epoll)
            self._epoll.register(self._fd, _EPOLLIN)
            self._wake_read, self._wake_write = os.pipe()
        except OSError:
            for thing in opened:
                thing.close()
            raise
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        self._poll.register(self._wake_read, select.POLLIN)
        self._loop = loop
        self._armed = True
        #: The application thread reading now (its ident), or None.
        self.reader: int | None = None
        self.closed = False
        loop.add_reader(self._epoll.fileno(), on_readable)

    def take(self, ident: int) -> None:
        """Let thread *ident* read: the loop hears nothing until `give_back`."""
        self.reader = ident
        if self._armed:
            self._armed = False
            self._epoll.modify(self._fd, 0)

    def give_back(self) -> None:
        """The loop reads again (and is woken if input is waiting)."""
        self.reader = None
        if not self._armed and not self.closed:
            self._armed = True
            self._epoll.modify(self._fd, _EPOLLIN)

    def wait(self, timeout: int = BATON_POLL_TIMEOUT) -> None:
        """Block the reading thread until input arrives, the connection
        closes, or *timeout* milliseconds pass.  Called without the lock."""
        self._poll.poll(timeout)

    def close(self) -> None:
        """Stop watching and wake the reader; the descriptors are closed
        by `release` once no thread can be polling them."""
        if self.closed:
            return
        self.closed = True
        try:
            self._loop.remove_reader(self._epoll.fileno())
        except Exception:  # the loop is closed already
            pass
        if self.reader is not None:
            try:
                os.write(self._wake_write, b'!')
            except OSError:
                pass
        else:
            self.release()

    def release(self) -> None:
        """Close the descriptors (closed, and no thread reading)."""
        if self._fd < 0:
            return
        self._fd = -1
        self._epoll.close()
        self.socket.close()
        os.close(self._wake_read)
        os.close(self._wake_write)


class DirectCalls:
    """The application thread's side of `zeo.client.protocol.ClientProtocol`.

    A mixin: it works on the protocol's state (``lock``, ``_baton``,
    ``_waiters``, ``_connection``, output queues), always holding
    ``lock`` but while blocked in `SocketBaton.wait`.
    """

    # Provided by ClientProtocol.
    lock: Any
    loop: Any
    active: bool
    closed: bool
    transport: Any
    _baton: SocketBaton | None
    _held: Any
    _queued: list[bytes]
    _queued_size: int
    _waiters: dict[Any, Any]
    _next_id: int
    _connection: Any
    load_method: str
    _corked: list[bytes] | None
    _pending: Any
    _paused: bool
    _abort: Callable[[Exception | None], None]
    _resume: Callable[[], None]
    _drain: Callable[[], None]
    _dispatch: Callable[[Any], None]
    _protocol_error: Callable[[ProtocolError], None]
    _read_once: Callable[[SocketBaton], int]
    close: Callable[[], None]

    def call_direct(self, method: str, args: tuple[Any, ...], waiter: Waiter,
                    outbox: Any) -> bool:
        """Send a call and read until *waiter* is settled, in this
        (application) thread; False, having done nothing, if this
        connection can't do that now (then use the loop)."""
        with self.lock:
            if not self._may_read_here(outbox):
                return False
            msgid = self._next_id
            self._next_id = msgid + 1
            self._waiters[msgid] = waiter
            self._send_here(self._connection.send(Call(msgid, method, args)))
        self._read_for(waiter)
        return True

    def load_direct(self, oid: bytes, tid: bytes, waiter: Waiter,
                    outbox: Any) -> bool:
        """`call_direct` for ``loadBefore(oid, tid)`` (see `load`)."""
        with self.lock:
            if not self._may_read_here(outbox):
                return False
            key = (oid, tid)
            waiters = self._waiters.get(key)
            if waiters is None:
                self._waiters[key] = [waiter]
                self._send_here(self._connection.send(Call(key, self.load_method, key)))
            else:
                waiters.append(waiter)
        self._read_for(waiter)
        return True

    def one_way_direct(self, method: str, args: tuple[Any, ...], outbox: Any) -> bool:
        """Queue a one-way call made by an application thread: it leaves
        with the next thing sent on this connection, by any thread (a
        transaction's ``storea`` calls leave with its ``vote``), or once
        `QUEUED_LIMIT` bytes are queued.  False, having done nothing, if
        it must go through the loop."""
        with self.lock:
            if self._baton is None or not self.active or self.closed or outbox:
                return False
            data = self._connection.send(OneWayCall(method, args))
            self._queued.append(data)
            self._queued_size += len(data)
            if self._queued_size >= QUEUED_LIMIT:
                self._send_here(self._take_queued())
        return True

    def _take_queued(self, data: bytes = b'') -> bytes:
        # The queued one-way calls, then *data*, as one piece.
        queued = self._queued
        if data:
            queued.append(data)
        joined = b''.join(queued)
        queued.clear()
        self._queued_size = 0
        return joined

    def _may_read_here(self, outbox: Any) -> bool:
        # Under the lock.  Not while requests wait in the runner's outbox:
        # they were made first and must leave first.
        baton = self._baton
        if (baton is None or not self.active or self.closed or outbox
                or baton.reader is not None or self._held is not None):
            return False
        baton.take(threading.get_ident())
        return True

    def _send_here(self, data: bytes) -> None:
        # An application thread's request, under the lock: straight into
        # the socket unless output is queued before it.
        if self._queued:
            data = self._take_queued(data)
        if self._corked is not None:
            self._corked.append(data)
            return
        if not (self._pending or self._paused
                or self.transport.get_write_buffer_size()):
            try:
                sent = self._baton.socket.send(data)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                self.loop.call_soon_threadsafe(self._abort, error)
                return
            if sent == len(data):
                return
            data = data[sent:]
        self._pending.append(data)
        self.loop.call_soon_threadsafe(self._drain_if_writing)

    def _drain_if_writing(self) -> None:
        # On the loop: write what an application thread queued behind
        # output already waiting (unless the transport is paused).
        with self.lock:
            if not self._paused:
                self._drain()

    def _read_for(self, waiter: Waiter) -> None:
        # The baton is ours (see _may_read_here).  Read and handle input
        # until the waiter is settled, or until something must be left
        # for the loop.
        baton: SocketBaton = self._baton  # type: ignore[assignment]
        lock = self.lock
        try:
            while not waiter.done():
                baton.wait()
                with lock:
                    if self.closed or not self._read_here(baton):
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

    def _read_here(self, baton: SocketBaton) -> bool:
        # Under the lock, in the reading application thread.  False when
        # the rest is left to the loop.
        try:
            n = self._read_once(baton)
        except ProtocolError as error:
            self._leave_to_loop(self._protocol_error, error)
            return False
        except OSError as error:
            self._leave_to_loop(self._abort, error)
            return False
        if n == 0:
            self._leave_to_loop(self.close)
            return False
        next_event = self._connection.next_event
        while True:
            try:
                event = next_event()
            except ProtocolError as error:
                self._leave_to_loop(self._protocol_error, error)
                return False
            if event is NEED_DATA:
                return True
            if not self._settles_here(event):
                self._held = event
                self._leave_to_loop(self._resume)
                return False
            self._dispatch(event)

    def _leave_to_loop(self, function: Callable[..., None], *args: Any) -> None:
        # The reading thread stops; nobody reads until the loop has run
        # *function* (which handles the held event, or ends the connection).
        if self._held is None:
            self._held = _LEFT
        self.loop.call_soon_threadsafe(function, *args)

    def _settles_here(self, event: Any) -> bool:
        # May an application thread handle *event*?  Replies to
        # application threads' waiters (hooks included: they need wire
        # order, not the loop) and the server's one-way messages (the
        # handler's invalidations, info and blob chunks are thread-safe).
        # Not the loop's own futures, nor the connection's life events.
        kind = type(event)
        if kind is OneWayCall:
            return True
        if kind is Reply:
            msgid = event[0]
        elif kind is ErrorReply:
            msgid = event.msgid
        else:
            return False
        waiter = self._waiters.get(msgid)
        if type(waiter) is list:
            for w in waiter:
                if type(w) is not Waiter:
                    return False
            return True
        return waiter is None or type(waiter) is Waiter
