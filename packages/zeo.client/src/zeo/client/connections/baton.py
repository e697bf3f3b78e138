"""Who reads a connection's socket: the loop, or one application thread.

The loop does not read a socket in baton mode through its transport
(reading is paused for good); it watches a private ``epoll`` set holding
only this socket, whose own descriptor is registered with the loop.  An
application thread that reads for itself takes the *baton*: under the
channel's lock it removes the socket from that set (``epoll_ctl`` is safe
from any thread and wakes nobody), so the loop stops hearing about input,
and puts it back when it gives the baton back.  Whoever holds the baton
reads with ``recv_into`` on a duplicate of the socket's descriptor, and
any thread may ``send`` on it (under the channel's lock).

Only plain TCP and Unix sockets where ``select.epoll`` exists (Linux) have
a baton (`available`); on TLS connections and elsewhere the loop reads
through its transport and writes for everyone.  See ``zeo.client.connections``.
"""
from __future__ import annotations

import os
import select
import socket
from typing import Any, Callable

__all__ = ['SocketBaton', 'BATON_POLL_TIMEOUT', 'available']

#: How long (milliseconds) a reading application thread waits in one
#: ``poll`` before looking at the connection's state again.  It is also
#: woken at once when the connection closes; this only bounds a miss.
BATON_POLL_TIMEOUT = 1000

_EPOLLIN = getattr(select, 'EPOLLIN', 1)


def available(transport: Any) -> bool:
    """Can a connection over *transport* have a baton (a socket that
    application threads may read and write)?"""
    if not hasattr(select, 'epoll') or transport is None:
        return False
    if transport.get_extra_info('ssl_object') is not None:
        return False
    sock = transport.get_extra_info('socket')
    return sock is not None and sock.type == socket.SOCK_STREAM


class SocketBaton:
    """Who reads one connection's socket: the loop, or one application thread.

    All methods but `wait` are called holding the channel's lock.
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
