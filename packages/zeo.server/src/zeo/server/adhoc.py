"""``zeo.server.server()``: a server in a background thread, for tests and tools.

It runs its own event loop in one thread and returns the bound address and
a function that stops it. With no *path* and no *storage_conf* it serves a
MappingStorage.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any, Callable

from zeo.server.config import Address, ServerConfig
from zeo.server.loops import new_event_loop

#: How long `server` waits for the thread to start listening.
START_TIMEOUT = 60.0


def open_storage(path: str | None = None, blob_dir: str | None = None,
                 storage_conf: str | None = None) -> Any:
    """A storage from a FileStorage *path*, a ZConfig *storage_conf* text, or
    a fresh MappingStorage."""
    if storage_conf is not None:
        import ZODB.config
        return ZODB.config.storageFromString(storage_conf)
    if path is not None:
        from ZODB.FileStorage import FileStorage
        return FileStorage(path, blob_dir=blob_dir)
    from ZODB.MappingStorage import MappingStorage
    storage = MappingStorage()
    if blob_dir is not None:
        from ZODB.blob import BlobStorage
        storage = BlobStorage(blob_dir, storage)
    return storage


def server(path: str | None = None, blob_dir: str | None = None,
           storage_conf: str | None = None, zeo_conf: dict[str, Any] | ServerConfig | None = None,
           port: int | Address = 0, storages: dict[str, Any] | None = None,
           **kw: Any) -> tuple[Address, Callable[[], None]]:
    """Start a server in a thread; return ``(address, stop)``.

    *zeo_conf* is a `ServerConfig` or a dict of its fields; further keyword
    arguments are `ServerConfig` fields too. *port* is a port number on
    127.0.0.1, a ``(host, port)`` pair, or a Unix socket path. *storages*
    (name to storage) serves several storages instead of one named ``'1'``.
    """
    from zeo.server.storage_server import StorageServer

    if isinstance(zeo_conf, ServerConfig):
        config = dataclasses.replace(zeo_conf, **kw) if kw else zeo_conf
    else:
        config = ServerConfig(**{**(zeo_conf or {}), **kw})
    if storages is None:
        storages = {"1": open_storage(path, blob_dir, storage_conf)}
    address: Address = ("127.0.0.1", port) if isinstance(port, int) else port

    started = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        storage_server = StorageServer(storages, config)
        state["server"] = storage_server
        state["stop"] = asyncio.Event()
        try:
            state["addresses"] = await storage_server.start([address])
        except BaseException as error:
            state["error"] = error
            started.set()
            await storage_server.close()
            return
        started.set()
        await state["stop"].wait()
        await storage_server.close()

    loop = new_event_loop(config.event_loop)
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),),
                              name="zeo.server ad-hoc", daemon=True)
    thread.start()
    if not started.wait(START_TIMEOUT):
        raise RuntimeError(f"the server did not start within {START_TIMEOUT} seconds")
    if "error" in state:
        thread.join()
        loop.close()
        raise state["error"]

    def stop() -> None:
        if not thread.is_alive():
            return
        loop.call_soon_threadsafe(state["stop"].set)
        thread.join(START_TIMEOUT)
        if not thread.is_alive():
            loop.close()

    return state["addresses"][0], stop

