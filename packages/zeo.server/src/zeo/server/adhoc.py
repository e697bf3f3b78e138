"""``zeo.server.server()``: a server for a program, a test or an experiment.

By default it runs in a background thread of the calling process, on an
event loop of its own, so synchronous code starts it, uses it and stops it;
with ``threaded=False`` it runs in a child process (`zeo.server.adhocprocess`).
Either way the call returns once the server listens, with the bound address
and a function that stops it. With no *path* and no *storage_conf* it serves
a MappingStorage.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import io
import re
import threading
from typing import Any, Callable, Mapping, Union

from zeo.server.config import Address, ServerConfig
from zeo.server.loops import new_event_loop
from zeo.server.peers import format_address

__all__ = ["START_TIMEOUT", "ZeoConf", "open_storage", "server", "zeo_settings"]

#: How long `server` waits for the server to listen, and ``stop`` for it to end.
START_TIMEOUT = 60.0

#: What ``zeo_conf`` may be: see `zeo_settings`.
ZeoConf = Union[str, Mapping[str, Any], ServerConfig, None]

#: A schema holding only runzeo's ``<zeo>`` section (``server.xml``).
_ZEO_SCHEMA = """\
<schema>
  <import package="zeo.server" file="server.xml"/>
  <section type="zeo" name="*" required="yes" attribute="zeo"/>
</schema>
"""


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


def _value_text(key: str, value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, tuple)) and key != "address":
        text = " ".join(map(str, value))
    elif key == "address" and not isinstance(value, str):
        text = format_address(value if isinstance(value, tuple) else ("127.0.0.1", value))
    else:
        text = str(value)
    if "\n" in text or "<" in text:
        raise ValueError(f"zeo_conf[{key!r}] is not one line of text: {text!r:.200}")
    return text


def _section_text(keys: Mapping[str, Any]) -> str:
    """A ``<zeo>`` section from ``{key: value}`` (``_`` or ``-`` in names)."""
    lines = [f"  {key.replace('_', '-')} {_value_text(key.replace('-', '_'), value)}\n"
             for key, value in keys.items() if value is not None]
    return "<zeo>\n" + "".join(lines) + "</zeo>\n"


@functools.lru_cache(maxsize=1)
def _schema() -> Any:
    import ZConfig
    return ZConfig.loadSchemaFile(io.StringIO(_ZEO_SCHEMA))


def zeo_settings(zeo_conf: ZeoConf, port: int | Address = 0) -> tuple[ServerConfig, Address]:
    """The `ServerConfig` and the address a *zeo_conf* and a *port* mean.

    *zeo_conf* is, as for the reference's ``ZEO.server``, the text of a
    ``<zeo>`` section or a dict of its keys (``{'transaction_timeout': 60}``;
    values as written in a file, or Python numbers, booleans and lists);
    both are read by runzeo's schema, so names, values and defaults are
    those of a configuration file and a misspelled key is an error
    (``ZConfig.ConfigurationError``). A text may leave out the ``<zeo>``
    tags. *zeo_conf* may also be a `ServerConfig`. Its ``address``, if any,
    wins over *port*: a port number on 127.0.0.1 (0: a free one), a
    ``(host, port)`` pair or a Unix socket path. ``pid-filename`` is
    ignored: the process is the caller's.
    """
    address: Address = ("127.0.0.1", port) if isinstance(port, int) else port
    if zeo_conf is None:
        return ServerConfig(), address
    if isinstance(zeo_conf, ServerConfig):
        return zeo_conf, address
    if isinstance(zeo_conf, str):
        text = zeo_conf if re.search(r"<\s*zeo\b", zeo_conf, re.I) \
            else f"<zeo>\n{zeo_conf}\n</zeo>\n"
    elif isinstance(zeo_conf, Mapping):
        text = _section_text(zeo_conf)
    else:
        raise TypeError(f"zeo_conf must be a text, a dict or a ServerConfig,"
                        f" not {type(zeo_conf).__name__}")
    if not re.search(r"^\s*address\s", text, re.I | re.M):
        text = re.sub(r"<\s*zeo\b[^>]*>", lambda m: f"{m.group(0)}\n"
                      f"  address {format_address(address)}\n", text, count=1, flags=re.I)
    import ZConfig
    root, _ = ZConfig.loadConfigFile(_schema(), io.StringIO(text))
    return root.zeo.config, root.zeo.address


def server(path: str | None = None, blob_dir: str | None = None,
           storage_conf: str | None = None, zeo_conf: ZeoConf = None,
           port: int | Address = 0, threaded: bool = True,
           storages: dict[str, Any] | None = None,
           sources: dict[str, Any] | None = None,
           **kw: Any) -> tuple[Address, Callable[..., None]]:
    """Start a server; return ``(address, stop)`` once it listens.

    The storage is a FileStorage at *path* (with *blob_dir*), one a ZConfig
    *storage_conf* text describes, or a fresh MappingStorage (with blobs in
    *blob_dir* if given); it is served as ``'1'``. *storages* (name to an
    open storage) serves several instead; *sources* maps storage names to
    an `ICommitSource` (threaded only). *zeo_conf* and *port* are read by
    `zeo_settings`; further keyword arguments are `ServerConfig` fields and
    win over *zeo_conf*.

    *threaded* (the default): the server runs on its own event loop in a
    daemon thread of this process. ``threaded=False``: it runs in a child
    process (``python -m zeo.server.adhocprocess``) that ends when ``stop``
    is called or this process exits; its storages must then be described
    (*path*, *storage_conf*), not passed as objects.

    ``stop()`` closes every connection (aborting open transactions), closes
    the storages and waits for the thread or process to end (at most
    ``stop(timeout)`` seconds, default `START_TIMEOUT`; a child process
    still running then is killed); calling it again does nothing. Errors starting (a taken address, a bad setting)
    are raised here.
    """
    if not threaded:
        from zeo.server.adhocprocess import start_process
        if storages is not None or sources is not None:
            raise ValueError("threaded=False serves storages it opens itself:"
                             " give path, blob_dir or storage_conf, not storages"
                             " or sources")
        return start_process(dict(path=path, blob_dir=blob_dir, storage_conf=storage_conf,
                                  zeo_conf=zeo_conf, port=port, **kw), START_TIMEOUT)
    config, address = zeo_settings(zeo_conf, port)
    if kw:
        config = dataclasses.replace(config, **kw)
    if storages is None:
        storages = {"1": open_storage(path, blob_dir, storage_conf)}
    return _start_thread(storages, config, address, sources)


def _start_thread(storages: dict[str, Any], config: ServerConfig, address: Address,
                  sources: dict[str, Any] | None = None) -> tuple[Address, Callable[..., None]]:
    from zeo.server.storage_server import StorageServer

    started = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        storage_server = StorageServer(storages, config, sources)
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

    def stop(timeout: float = START_TIMEOUT) -> None:
        if not thread.is_alive():
            return
        loop.call_soon_threadsafe(state["stop"].set)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()

    return state["addresses"][0], stop
