"""The thread boundary: application threads on one side, the loop on the other.

A `Runner` owns one event loop, run by one daemon thread, and the
`ConnectionManager` that lives on it.  Application threads talk to it
only through the methods below; nothing else crosses threads (the cache
has its own lock, and ``lastTransaction`` reads under the manager's
``visibility`` lock).

Theory of operation (designed for latency)
==========================================

A synchronous call costs one hand-off each way and nothing more:

* the application thread creates a `Waiter` -- a pre-acquired
  ``_thread`` lock, the cheapest thing a thread can block on -- appends
  ``(function, args)`` to an outbox (a ``deque``: appends are atomic)
  and, unless a drain of the outbox is already scheduled, schedules one
  with ``loop.call_soon_threadsafe`` (one wake-up of the loop);
* the loop thread drains the outbox in order, each item being a plain
  function call on the manager that encodes the request and writes it.
  Output of one drain is corked and written with one ``send``;
* the reply is handled on the loop (cache first), then the waiter's lock
  is released, which wakes the application thread.

No coroutine, no ``Task``, no ``concurrent.futures.Future`` per call.
Because everything an application thread asks for goes through the one
outbox, requests (one-way or not) leave in the order they were made.

A *direct* call skips both hand-offs: when the connection allows it
(plain socket, connected, nobody else reading, and the outbox empty --
so that it can't overtake a request made before it), the application
thread sends the request and reads the reply itself (see
``zeo.client.direct``).  The loop drains the outbox holding the
connection's lock, so "the outbox is empty" means "everything posted
before has been sent".
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from typing import Any, Callable, Iterable

from zeo.client.config import ClientConfig
from zeo.client.connector import ConnectionManager
from zeo.client.errors import ClientDisconnected
from zeo.client.loops import new_event_loop
from zeo.client.protocol import ClientProtocol
from zeo.client.waiter import Waiter

__all__ = ['Runner', 'Waiter', 'CLOSE_TIMEOUT']

logger = logging.getLogger('zeo.client')

#: How long `Runner.close` waits for the loop thread to end.
CLOSE_TIMEOUT = 10.0

class Runner:
    """The synchronous facade over one client's event loop."""

    def __init__(self, config: ClientConfig, cache: Any, client: Any) -> None:
        self.config = config
        loop = self.loop = new_event_loop(config.event_loop)
        self.manager = ConnectionManager(loop, config, cache, client)
        self._outbox: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = \
            collections.deque()
        self._scheduled = False
        self._call_soon_threadsafe = loop.call_soon_threadsafe
        self.closed = False
        self._thread = threading.Thread(
            target=self._run, name=f'zeo.client {config.display_name} I/O',
            daemon=True)
        self._loop_thread_id: int | None = None
        started = threading.Event()
        self._started = started
        self._thread.start()
        started.wait()
        self._post(self.manager.start)

    # -- the loop thread --------------------------------------------------------

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        self._loop_thread_id = threading.get_ident()
        self._started.set()
        try:
            loop.run_forever()
        finally:
            try:
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                loop.run_until_complete(
                    asyncio.gather(*tasks, return_exceptions=True))
                self.manager.abort_transports()
                # One more turn lets closed transports release their sockets.
                loop.run_until_complete(asyncio.sleep(0))
            finally:
                loop.close()
                # Requests posted after the last turn: the manager is
                # closed, so they fail at once, here.
                self._drain()

    def _drain(self) -> None:
        # Runs on the loop: the outbox, in order, with output corked and
        # the connection locked (see the module docstring).
        self._scheduled = False
        protocol = self.manager.protocol
        if protocol is None:
            self._run_outbox()
            return
        with protocol.lock:
            protocol.cork()
            try:
                self._run_outbox()
            finally:
                protocol.uncork()

    def _run_outbox(self) -> None:
        outbox = self._outbox
        popleft = outbox.popleft
        while outbox:
            function, args = popleft()
            try:
                function(*args)
            except Exception:
                logger.exception('%s: %s failed', self.config.display_name,
                                 getattr(function, '__name__', function))

    def _post(self, function: Callable[..., Any], *args: Any) -> None:
        self._outbox.append((function, args))
        if not self._scheduled:
            self._scheduled = True
            try:
                self._call_soon_threadsafe(self._drain)
            except RuntimeError:
                # The loop is closed, and so is the manager: whatever was
                # posted fails at once (waiters get ClientDisconnected).
                self._drain()

    def _check_thread(self) -> None:
        if threading.get_ident() == self._loop_thread_id:
            raise RuntimeError('a synchronous call from the client I/O thread '
                               'would wait for itself')

    # -- synchronous calls --------------------------------------------------------

    def call(self, method: str, *args: Any, protocol: ClientProtocol | None = None,
             timeout: float | None = None) -> Any:
        """Call *method* on the server and return its result.

        With *protocol*, only on that connection (a transaction's):
        ``ClientDisconnected`` if it is gone.  Without, on the current
        connection, waiting for one up to *timeout* (default:
        ``wait_timeout``).
        """
        if threading.get_ident() == self._loop_thread_id:
            self._check_thread()
        waiter = Waiter()
        current = self.manager.protocol
        if current is None or (protocol is not None and protocol is not current) \
                or not current.call_direct(method, args, waiter, self._outbox):
            self._post(self.manager.submit, method, args, waiter, protocol, timeout)
        return waiter.wait()

    def call_hooked(self, method: str, args: tuple[Any, ...],
                    protocol: ClientProtocol | None,
                    hook: Callable[[Any], Any]) -> Any:
        """`call`, running *hook(result)* first, in wire order (on the
        loop, or in this thread if it reads the reply itself)."""
        self._check_thread()
        waiter = Waiter(hook)
        current = self.manager.protocol
        if current is None or (protocol is not None and protocol is not current) \
                or not current.call_direct(method, args, waiter, self._outbox):
            self._post(self.manager.submit, method, args, waiter, protocol, None)
        return waiter.wait()

    def load(self, oid: bytes, tid: bytes) -> Any:
        """``loadBefore(oid, tid)`` from the server (the cache is updated
        on the loop before this returns)."""
        if threading.get_ident() == self._loop_thread_id:
            self._check_thread()
        waiter = Waiter()
        current = self.manager.protocol
        if current is None or not current.load_direct(oid, tid, waiter, self._outbox):
            self._post(self.manager.submit_load, oid, tid, waiter)
        return waiter.wait()

    def wait_connected(self, timeout: float | None = None) -> ClientProtocol:
        """Return the connection in use, waiting up to *timeout*
        (default: ``wait_timeout``) for one."""
        manager = self.manager
        protocol = manager.protocol
        if protocol is not None and not protocol.closed:
            return protocol
        if timeout is None:
            timeout = self.config.wait_timeout
        deadline = time.monotonic() + timeout
        while not self.closed:
            if not manager.ever_connected and not self.config.wait:
                raise ClientDisconnected('never connected')
            manager.connected.wait(max(deadline - time.monotonic(), 0))
            protocol = manager.protocol
            if protocol is not None and not protocol.closed:
                return protocol
            if time.monotonic() >= deadline:
                break
        if self.closed:
            raise ClientDisconnected('the client storage is closed')
        raise ClientDisconnected('timed out waiting for connection')

    # -- asynchronous requests ------------------------------------------------------

    def one_way(self, protocol: ClientProtocol | None, method: str,
                args: tuple[Any, ...]) -> None:
        """Send a one-way call on *protocol* (None: the current one)."""
        current = self.manager.protocol
        if current is None or (protocol is not None and protocol is not current) \
                or not current.one_way_direct(method, args, self._outbox):
            self._post(self.manager.submit_one_way, protocol, method, args)

    def stream(self, protocol: ClientProtocol,
               messages: Iterable[tuple[str, tuple[Any, ...]]]) -> None:
        """Send a lazy stream of one-way messages on *protocol*."""
        self._post(self.manager.submit_stream, protocol, iter(messages))

    def prefetch(self, oids: Iterable[bytes], tid: bytes) -> None:
        self._post(self.manager.prefetch, list(oids), tid)

    def run_on_loop(self, function: Callable[..., Any], *args: Any) -> None:
        """Run *function(*args)* on the loop thread, in order with calls."""
        self._post(function, *args)

    def new_addresses(self, addresses: tuple[Any, ...]) -> None:
        self._post(self.manager.new_addresses, addresses)

    # -- the end ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connections (waiting calls fail) and stop the loop."""
        if self.closed:
            return
        self._check_thread()
        self.closed = True

        def shut() -> None:
            self.manager.close()
            self.loop.stop()

        try:
            self._post(shut)
        except ClientDisconnected:
            return
        self._thread.join(CLOSE_TIMEOUT)
        if self._thread.is_alive():
            logger.error('%s: the I/O thread did not stop within %s seconds',
                         self.config.display_name, CLOSE_TIMEOUT)
