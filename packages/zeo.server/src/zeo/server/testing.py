"""zope.testrunner layers for applications that use zeo.

``ServerLayer`` runs a real zeo server on a free 127.0.0.1 port, serving a
FileStorage (and blob directory) in a temporary directory. Every test
starts with an empty storage: the server is restarted on the same port
with a fresh file in ``testSetUp``. ``DBLayer`` stacks on it and opens a
``zeo.client`` DB per test, closed after the test (it needs zeo.client:
install ``zeo.server[testing]``)::

    from zeo.server.testing import DB_LAYER

    class MyTests(unittest.TestCase):
        layer = DB_LAYER

        def test_it(self):
            with DB_LAYER.db.transaction() as connection:
                connection.root.answer = 42

Use ``ServerLayer(name, blobs=False, **server_options)`` for other
settings; ``SERVER_LAYER`` and ``DB_LAYER`` are ready-made instances.

`free_port` gives a free TCP port on 127.0.0.1 for a server a test starts
itself (e.g. one it stops and restarts on the same address).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import tempfile
from typing import Any, Callable

__all__ = ["DBLayer", "DB_LAYER", "SERVER_LAYER", "ServerLayer", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on *host* just now (the OS picks it; another process
    may take it before the caller binds it, which tests accept)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class ServerLayer:
    """A zeo server for a test layer. See the module docstring."""

    __bases__: tuple[Any, ...] = ()

    def __init__(self, name: str = "ZEOServerLayer", *, blobs: bool = True,
                 **server_options: Any) -> None:
        self.__name__ = name
        self.__module__ = __name__
        self.blobs = blobs
        self.server_options = server_options
        self.directory: str | None = None
        self.address: Any = None
        self._stop: Callable[[], None] | None = None
        self._generation = 0
        self._fresh = False   # the storage has not been used by a test yet

    def _start(self) -> None:
        from ZODB.FileStorage import FileStorage

        import zeo.server

        if self.directory is None:
            raise RuntimeError(f"{self.__name__} is not set up")
        self._generation += 1
        base = os.path.join(self.directory, f"test-{self._generation}")
        os.mkdir(base)
        storage = FileStorage(os.path.join(base, "Data.fs"),
                              blob_dir=os.path.join(base, "blobs") if self.blobs else None)
        port = self.address if self.address is not None else 0
        self.address, self._stop = zeo.server.server(
            storages={"1": storage}, port=port, **self.server_options)

    def _halt(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="zeo-layer-")
        self._start()
        self._fresh = True

    def tearDown(self) -> None:
        self._halt()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = self.address = None

    def testSetUp(self) -> None:
        """A fresh, empty storage on the same address for every test."""
        if not self._fresh:
            self._halt()
            self._start()
        self._fresh = False


class DBLayer:
    """A ``zeo.client`` DB on a `ServerLayer`, opened for each test."""

    def __init__(self, server_layer: ServerLayer, name: str = "ZEODBLayer",
                 **client_options: Any) -> None:
        self.__name__ = name
        self.__module__ = __name__
        self.__bases__ = (server_layer,)
        self.server_layer = server_layer
        self.client_options = client_options
        self.db: Any = None
        self._blob_dir: str | None = None

    def setUp(self) -> None:
        # zeo.server does not depend on zeo.client: say what to install
        # instead of failing in every test, and leave no server running and
        # no temporary directory behind (the base layer is already set up).
        if importlib.util.find_spec("zeo.client") is None:
            self.server_layer.tearDown()
            raise ImportError(
                f"{self.__name__} opens zeo.client databases, and zeo.client is"
                " not installed: install zeo.server[testing] (or zeo.client)")

    def tearDown(self) -> None:
        pass

    def testSetUp(self) -> None:
        import zeo.client

        options = dict(self.client_options)
        if self.server_layer.blobs and "blob_dir" not in options:
            self._blob_dir = tempfile.mkdtemp(prefix="zeo-layer-blobs-")
            options["blob_dir"] = self._blob_dir
        self.db = zeo.client.DB(self.server_layer.address, **options)

    def testTearDown(self) -> None:
        import transaction

        transaction.abort()
        if self.db is not None:
            self.db.close()
            self.db = None
        if self._blob_dir is not None:
            shutil.rmtree(self._blob_dir, ignore_errors=True)
            self._blob_dir = None


SERVER_LAYER = ServerLayer("SERVER_LAYER")
DB_LAYER = DBLayer(SERVER_LAYER, "DB_LAYER")
