"""The storage server: named storages, listening sockets, connections.

`StorageServer` runs on one asyncio event loop. Storage calls run on the
loop, in order, except the slow ones, which go to worker threads of the
server's own and come back as a `Delayed`: packs to one thread per storage
(a storage packs once at a time, see `ServedStorage.pack`), the calls whose
cost grows with the database to ``worker_threads`` threads shared by all
connections (see zeo.server.slow_calls). Closing the server drops the slow
calls not yet started, waits for the running ones (at most one pack per
storage) before it closes the storages, and ends the workers. `Serving`
and `Closed` events (zope.event) carry the bound addresses, so a server
started on port 0 can be found.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import stat
import time
from typing import Any, Callable, Iterable

import zope.event
from zope.interface import implementer

from zeo.server.adapter import ServerProtocol, peer_host, receive_buffer
from zeo.server.blob_uploads import SpoolBudget
from zeo.server.budgets import Budgets
from zeo.server.config import Address, ServerConfig
from zeo.server.eventlog import RefusalLog
from zeo.server.interfaces import IClosed, IServing
from zeo.server.iterators import IteratorBudget
from zeo.server.peers import format_address
from zeo.server.results import Delayed
from zeo.server.served_storage import LoopHooks, ServedStorage
from zeo.server.tls_accept import tls_protocol_factory

__all__ = [
    "Closed",
    "Serving",
    "StorageServer",
    "format_address",
]

logger = logging.getLogger("zeo.server")


@implementer(IServing)
class Serving:
    """The server listens on *addresses* (after binding: real ports)."""

    def __init__(self, server: StorageServer, addresses: list[Address]) -> None:
        self.server = server
        self.addresses = addresses
        self.address = addresses[0] if addresses else None


@implementer(IClosed)
class Closed:
    """The server stopped listening and closed its storages."""

    def __init__(self, server: StorageServer) -> None:
        self.server = server


class StorageServer:
    """Serve *storages* (a mapping of name to ZODB storage); *sources* maps
    some of those names to an `ICommitSource` (see zeo.server.commit_sources)."""

    #: Set by `start`: nothing runs in a thread before the server started.
    _loop: asyncio.AbstractEventLoop

    def __init__(self, storages: dict[str, Any], config: ServerConfig | None = None,
                 sources: dict[str, Any] | None = None) -> None:
        if not storages:
            raise ValueError("a storage server needs at least one storage")
        self.config = config or ServerConfig()
        self._raw_storages = dict(storages)
        self._sources = dict(sources or {})
        unknown = set(self._sources) - set(self._raw_storages)
        if unknown:
            raise ValueError(f"commit sources for unknown storages: {sorted(unknown)}")
        self.storages: dict[str, ServedStorage] = {}
        self.connections: set[ServerProtocol] = set()
        self.addresses: list[Address] = []
        self._listeners: list[asyncio.AbstractServer] = []
        self._unix_paths: list[str] = []
        self._workers: concurrent.futures.ThreadPoolExecutor | None = None
        #: The pack and commit threads, made when first needed.
        self._lanes: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        self._working: set[asyncio.Future[Any]] = set()
        #: Open transaction iterators over all connections and storages.
        self.iterator_budget = IteratorBudget(self.config.max_server_iterators)
        #: Where every connection's reads land (see zeo.server.adapter).
        self.receive_buffer = receive_buffer()
        #: What all connections hold together (see zeo.server.budgets).
        self.budgets = Budgets(self.config)
        #: Spooled and uploaded bytes of every open transaction, all storages.
        self.spool_budget = SpoolBudget(self.config.max_spool_total)
        #: The monitor endpoint (zeo.server.monitor), if monitor_address is set.
        self.monitor: Any = None
        self.closed = False
        #: Refused connections and failed handshakes, rate-limited.
        self.refusals = RefusalLog(
            logger, self.config.max_refusal_log_lines, time.monotonic,
            lambda delay, function: asyncio.get_running_loop().call_later(delay, function))
        #: Calls answered with an error, rate-limited likewise: a client
        #: sending bad calls must not fill the log.
        self.call_errors = RefusalLog(
            logger, self.config.max_refusal_log_lines, time.monotonic,
            lambda delay, function: asyncio.get_running_loop().call_later(delay, function),
            what="failed calls")

    # -- starting and stopping -------------------------------------------------

    async def start(self, addresses: Iterable[Address]) -> list[Address]:
        """Open the storages' shared state and listen; return bound addresses."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        hooks = LoopHooks(loop.call_soon, loop.call_later,
                          call_soon_threadsafe=loop.call_soon_threadsafe)
        for name, storage in self._raw_storages.items():
            self.storages[name] = ServedStorage(name, storage, self.config, hooks,
                                                spool_budget=self.spool_budget,
                                                iterator_budget=self.iterator_budget,
                                                source=self._sources.get(name))
        for served in self.storages.values():
            served.start()
            served.size_info(self.run_in_thread)   # a database's: read in a thread
        for address in addresses:
            await self._listen(loop, address)
        self.budgets.start(loop, self.connections)
        if self.config.monitor_address is not None:
            from zeo.server.monitor import start_monitor
            self.monitor = await start_monitor(self, self.config.monitor_address)
        zope.event.notify(Serving(self, list(self.addresses)))
        for name, served in self.storages.items():
            logger.info("serving storage %r (%s) on %s%s", name, served.storage.getName(),
                        ", ".join(map(format_address, self.addresses)),
                        " read-only" if served.read_only else "")
        return list(self.addresses)

    async def _listen(self, loop: asyncio.AbstractEventLoop, address: Address) -> None:
        # With TLS, the handshake is ours (see zeo.server.tls_accept).
        factory: Callable[[], Any] = (
            tls_protocol_factory(self, loop) if self.config.ssl is not None
            else (lambda: ServerProtocol(self)))
        if isinstance(address, str):
            _remove_stale_socket(address)
            listener = await loop.create_unix_server(factory, address)
            self._unix_paths.append(address)
            self.addresses.append(address)
        else:
            host, port = address
            listener = await loop.create_server(
                factory, host or None, port, reuse_address=True)
            for sock in listener.sockets:
                self.addresses.append(sock.getsockname()[:2])
        self._listeners.append(listener)

    async def close(self) -> None:
        """Stop listening, close every connection (aborting their
        transactions) and close the storages."""
        if self.closed:
            return
        self.closed = True
        self.budgets.stop()
        if self.monitor is not None:
            await self.monitor.close()
        for listener in self._listeners:
            listener.close()
        for connection in list(self.connections):
            connection.close(None)
        for listener in self._listeners:
            await listener.wait_closed()
        # Let connection_lost run for the connections just closed.
        await asyncio.sleep(0)
        await self._stop_workers()
        for path in self._unix_paths:
            _remove_stale_socket(path)
        for served in self.storages.values():
            served.close()
        self.refusals.close()
        self.call_errors.close()
        zope.event.notify(Closed(self))
        logger.info("server closed")

    # -- connections (called by ServerProtocol) ----------------------------------

    def connection_opened(self, connection: ServerProtocol) -> bool:
        refused: str | None
        if self.closed or len(self.connections) >= self.config.max_connections:
            self.budgets.refusals["max-connections"] += 1
            refused = (f"the server already has {len(self.connections)} connections"
                       " (max-connections)")
        else:
            refused = self.budgets.admit(connection, peer_host(connection.transport))
        if refused is not None:
            self.refusals.warning("%s: refused: %s", connection.label, refused,
                                  peer=connection.label, reason=refused)
            connection.close(None)
            return False
        self.connections.add(connection)
        return True

    def connection_closed(self, connection: ServerProtocol) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            self.budgets.forget(connection)

    def status(self) -> dict[str, Any]:
        return {name: served.status() for name, served in self.storages.items()}

    def run_in_thread(self, function: Callable[[], Any], *, pack: bool = False,
                      commit: bool = False) -> Delayed:
        """Run *function* in a worker thread; its outcome settles the
        returned `Delayed` on the loop. *pack*: on the pack threads (one
        per storage); *commit*: on the commit threads (one per storage: its
        commit lock lets one transaction's storage calls run at a time, see
        zeo.server.commit_threads); else on the ``worker_threads`` shared
        by all."""
        if self.closed:
            raise RuntimeError("the server is closing")
        if pack or commit:
            name = "pack" if pack else "commit"
            executor = self._lanes.get(name)
            if executor is None:
                executor = self._lanes[name] = concurrent.futures.ThreadPoolExecutor(
                    max_workers=len(self.storages),
                    thread_name_prefix=f"zeo.server worker {name}")
        else:
            if self._workers is None:
                self._workers = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.config.worker_threads,
                    thread_name_prefix="zeo.server worker")
            executor = self._workers
        delayed = Delayed()
        future = self._loop.run_in_executor(executor, function)
        self._working.add(future)
        future.add_done_callback(self._working.discard)

        def done(future: asyncio.Future[Any]) -> None:
            if future.cancelled():
                delayed.fail(RuntimeError("the server closed before the call could run"))
                return
            error = future.exception()
            if error is None:
                delayed.resolve(future.result())
            else:
                delayed.fail(error)

        future.add_done_callback(done)
        return delayed

    async def _stop_workers(self) -> None:
        # Calls not started yet never will be; a running pack must not find
        # its storage closed under it.
        executors = [self._workers, *self._lanes.values()]
        for executor in executors:
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
        if self._working:
            logger.info("waiting for %d storage call(s) (packs, history reads) to"
                        " finish before closing the storages", len(self._working))
            await asyncio.wait(set(self._working))
        for executor in executors:
            if executor is not None:
                executor.shutdown(wait=True)  # idle by now: ends the threads
        self._workers = None
        self._lanes.clear()


def _remove_stale_socket(path: str) -> None:
    """Remove a Unix socket left by a server that died; never a regular file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
    except OSError:
        os.remove(path)   # nobody listens: stale
    else:
        raise OSError(f"another server is listening on {path}")
    finally:
        probe.close()
