"""What one channel writes, in the order its calls were made.

Every method is called holding the channel's lock, from any thread (the
rules are in ``zeo.client.connections``, Output).  Bytes go straight out
when nothing waits before them: on the loop thread into the transport,
in an application thread into the socket itself (baton mode only).
Otherwise they wait in ``pending``, which the loop writes (`drain`) as
soon as it runs and the transport is not paused.  A blob upload is a lazy
stream of one-way messages in ``pending``, pulled only as fast as the
transport drains; whatever is sent after it waits behind it.

One-way calls of application threads are *queued* (`queue`) and leave
with the next bytes sent by any thread -- a one-object commit sends
``tpc_begin``, ``storea`` and ``vote`` with one system call -- or once
`QUEUED_LIMIT` bytes are queued.
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable, Iterator

__all__ = ['Output', 'QUEUED_LIMIT']

logger = logging.getLogger('zeo.client')

#: Bytes of queued one-way calls that are sent without waiting for the
#: next request.
QUEUED_LIMIT = 256 * 1024

_get_ident = threading.get_ident


class Output:
    """The write side of a channel (see the module docstring).

    *lock* is the channel's; *encode_pieces(method, args)* encodes a
    streamed one-way message in pieces; *fail(error)*, called on the loop,
    ends the channel when a write or a stream fails.
    """

    def __init__(self, loop: Any, lock: Any,
                 encode_pieces: Callable[[str, tuple[Any, ...]], list[Any]],
                 fail: Callable[[BaseException], None]) -> None:
        self._loop = loop
        self._lock = lock
        self._encode_pieces = encode_pieces
        self._fail = fail
        self.transport: Any = None
        #: The loop thread's ident (set once connected).
        self.loop_thread: int | None = None
        #: In baton mode, the socket application threads send into.
        self.socket: Any = None
        #: One-way calls of application threads, waiting for the next send.
        self.queued: list[bytes] = []
        self.queued_size = 0
        #: Bytes and streams the loop writes in order (`drain`).
        self.pending: collections.deque[Any] = collections.deque()
        self.paused = False
        self.closed = False
        self._scheduled = False

    def send(self, data: bytes) -> None:
        """Send *data* after everything sent before it."""
        if self.queued:
            data = self._take_queued(data)
        if self.pending or self.paused or self.closed:
            if not self.closed:
                self.pending.append(data)
                self._schedule()
        elif _get_ident() == self.loop_thread:
            self.transport.write(data)
        elif self.socket is not None and not self.transport.get_write_buffer_size():
            try:
                sent = self.socket.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                self._loop.call_soon_threadsafe(self._fail, error)
                return
            if sent < len(data):
                self.pending.append(data[sent:])
                self._schedule()
        else:
            self.pending.append(data)
            self._schedule()

    def queue(self, data: bytes) -> None:
        """A one-way call: leaves with the next `send` (see the module
        docstring); sent at once by the loop thread."""
        if _get_ident() == self.loop_thread:
            self.send(data)
            return
        self.queued.append(data)
        self.queued_size += len(data)
        if self.queued_size >= QUEUED_LIMIT:
            self.send(self._take_queued())

    def stream(self, messages: Iterator[tuple[str, tuple[Any, ...]]]) -> None:
        """Send the one-way ``(method, args)`` messages that *messages*
        yields, pulling the next one only while the transport takes it."""
        if self.closed:
            return
        if self.queued:
            self.pending.append(self._take_queued())
        self.pending.append(messages)
        self._schedule()

    def _take_queued(self, data: bytes = b'') -> bytes:
        queued = self.queued
        if data:
            queued.append(data)
        joined = b''.join(queued) if len(queued) > 1 else queued[0]
        queued.clear()
        self.queued_size = 0
        return joined

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            if _get_ident() == self.loop_thread:
                self._loop.call_soon(self._drain_soon)
            else:
                self._loop.call_soon_threadsafe(self._drain_soon)

    def _drain_soon(self) -> None:
        with self._lock:
            self.drain()

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.drain()

    def drain(self) -> None:
        """On the loop: write what is pending, as far as the transport
        takes it.  Consecutive bytes go in one write."""
        self._scheduled = False
        pending = self.pending
        transport = self.transport
        while pending and not self.paused and not self.closed:
            item = pending[0]
            if type(item) is bytes:
                pending.popleft()
                if pending and type(pending[0]) is bytes:
                    items = [item]
                    while pending and type(pending[0]) is bytes:
                        items.append(pending.popleft())
                    item = b''.join(items)
                transport.write(item)
                continue
            try:
                method, args = next(item)
            except StopIteration:
                pending.popleft()
                continue
            except Exception as error:
                pending.popleft()
                logger.exception('reading a blob to upload failed')
                # The server is in the middle of an upload; only closing
                # the connection resets it (and dooms the transaction).
                self._fail(error)
                return
            # In pieces: a blob chunk is written as read, not copied.
            transport.writelines(self._encode_pieces(method, args))

    def clear(self) -> None:
        """The channel is closed: drop everything not written."""
        self.closed = True
        self.pending.clear()
        self.queued.clear()
        self.queued_size = 0
