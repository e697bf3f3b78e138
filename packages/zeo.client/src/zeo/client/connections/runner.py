"""The client's loop thread, and what the storage calls.

A `Runner` owns one event loop, run by one daemon thread, and the
`ConnectionManager` that lives on it.  The storage's requests don't go
through the loop: a `Runner` method picks the channel (the connection in
use, or the one a transaction is bound to, waiting for a connection if
there is none yet) and calls it; the `Channel` sends and waits (see
``zeo.client.connections`` for the path and the rules).  The loop is
asked only to start, to change addresses, to close a channel, and to stop.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

from zeo.client.connections import locks
from zeo.client.connections.channel import Channel, describe
from zeo.client.connections.loops import new_event_loop
from zeo.client.connections.manager import ConnectionManager
from zeo.client.errors import ClientDisconnected

if TYPE_CHECKING:
    from zeo.client.config import ClientConfig

__all__ = ['Runner', 'CLOSE_TIMEOUT']

logger = logging.getLogger('zeo.client')

#: How long `Runner.close` waits for the loop thread to end.
CLOSE_TIMEOUT = 10.0

_get_ident = threading.get_ident


class Runner:
    """The synchronous facade over one client's loop and channels."""

    def __init__(self, config: ClientConfig, cache: Any, client: Any) -> None:
        self.config = config
        loop = self.loop = new_event_loop(config.event_loop)
        self.manager = ConnectionManager(loop, config, cache, client)
        self.closed = False
        self._thread = threading.Thread(
            target=self._run, name=f'zeo.client {config.display_name} I/O',
            daemon=True)
        self._loop_thread_id: int | None = None
        started = threading.Event()
        self._started = started
        self._thread.start()
        started.wait()
        loop.call_soon_threadsafe(self.manager.start)

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        self._loop_thread_id = _get_ident()
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

    def _channel(self, channel: Channel | None, timeout: float | None) -> Channel:
        # The channel to call: *channel* if it is still the one in use,
        # else the one in use (waiting for one up to *timeout*).
        if _get_ident() == self._loop_thread_id:
            raise RuntimeError('a synchronous call from the client I/O thread '
                               'would wait for itself')
        current = self.manager.channel
        if channel is None:
            if current is not None and not current.closed:
                return current
            return self.wait_connected(timeout)
        if channel is not current:
            raise ClientDisconnected(f'the connection to {describe(channel.address)} is gone')
        return channel

    # -- what the storage calls (application threads) -----------------------------------

    def call(self, method: str, *args: Any, channel: Channel | None = None,
             timeout: float | None = None, hook: Callable[[Any], Any] | None = None) -> Any:
        """Call *method* on the server and return its result.

        With *channel*, only on that connection (a transaction's):
        ``ClientDisconnected`` if it is gone.  Without, on the current
        connection, waiting for one up to *timeout* (default:
        ``wait_timeout``).  *hook(result)* runs first, in wire order
        (``tpc_finish`` updates the cache with it); `call` returns what it
        returns.
        """
        return self._channel(channel, timeout).call(method, args, hook)

    def load(self, oid: bytes, tid: bytes) -> Any:
        """``loadBefore(oid, tid)`` from the server (the cache is updated
        before this returns)."""
        return self._channel(None, None).load(oid, tid)

    def one_way(self, channel: Channel | None, method: str, args: tuple[Any, ...]) -> None:
        """A one-way call on *channel* (None: the current one), dropped if
        that is not the connection in use."""
        current = self.manager.channel
        if current is not None and (channel is None or channel is current):
            current.one_way(method, args)

    def stream(self, channel: Channel, messages: Iterable[tuple[str, tuple[Any, ...]]]) -> None:
        """Send a lazy stream of one-way messages on *channel*."""
        if channel is self.manager.channel:
            channel.stream(iter(messages))

    def prefetch(self, oids: Iterable[bytes], tid: bytes) -> None:
        self.manager.prefetch(list(oids), tid)

    def wait_connected(self, timeout: float | None = None) -> Channel:
        """Return the connection in use, waiting up to *timeout*
        (default: ``wait_timeout``) for one."""
        manager = self.manager
        channel = manager.channel
        if channel is not None and not channel.closed:
            return channel
        locks.check_free('a connection')
        if timeout is None:
            timeout = self.config.wait_timeout
        deadline = time.monotonic() + timeout
        while not self.closed and not manager.closed:
            if not manager.ever_connected and not self.config.wait:
                raise ClientDisconnected('never connected')
            if channel is not None:
                # Closed but still in use: the loop is ending it, and
                # stops using it before it lets go of its lock.
                with channel.lock:
                    pass
            manager.connected.wait(max(deadline - time.monotonic(), 0))
            channel = manager.channel
            if channel is not None and not channel.closed:
                return channel
            if time.monotonic() >= deadline:
                raise ClientDisconnected('timed out waiting for connection')
        raise ClientDisconnected('the client storage is closed')

    # -- the loop's own work --------------------------------------------------------------

    def run_on_loop(self, function: Callable[..., Any], *args: Any) -> None:
        """Run *function(*args)* on the loop thread (e.g. ``channel.close``)."""
        try:
            self.loop.call_soon_threadsafe(function, *args)
        except RuntimeError:  # the loop is closed: so is every channel
            pass

    def new_addresses(self, addresses: tuple[Any, ...]) -> None:
        self.run_on_loop(self.manager.new_addresses, addresses)

    def close(self) -> None:
        """Close the connections (waiting calls fail) and stop the loop."""
        if self.closed:
            return
        if _get_ident() == self._loop_thread_id:
            raise RuntimeError('the client I/O thread cannot close its own client')
        self.closed = True

        def shut() -> None:
            self.manager.close()
            self.loop.stop()

        self.run_on_loop(shut)
        self._thread.join(CLOSE_TIMEOUT)
        if self._thread.is_alive():
            logger.error('%s: the I/O thread did not stop within %s seconds',
                         self.config.display_name, CLOSE_TIMEOUT)
