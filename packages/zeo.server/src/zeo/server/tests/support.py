"""Test support for zeo.server's own tests (internal: scripts and other
packages use the public ``zeo.server.testing``).

- `free_port`: a free 127.0.0.1 port (``zeo.server.testing.free_port``);
- `child_env`: the environment for a Python subprocess that must import
  what this process imports (``PYTHONPATH`` = our ``sys.path``);
- `CHECKOUT`: the monorepo checkout, or None outside one;
- `wait_until`: poll a condition, an AssertionError after a bounded wait;
- `run`: a command-line ``main`` run in process, its output captured;
- `WriteRecorder`: a transport wrapper counting a connection's writes;
- `SlowPackStorage`: a MappingStorage whose pack waits for the test;
- `commit_directly`: transactions through the storage API, no server;
- `ServerProcess`: a real ``runzeo`` subprocess serving a FileStorage in a
  directory (or the storage sections given), which tests stop, kill and
  restart on the same address, and measure (``/proc``, ``ruok``).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path
from typing import Any, Callable

from ZODB.Connection import TransactionMetaData
from ZODB.MappingStorage import MappingStorage

import zeo.server
from zeo.server.admin import status
from zeo.server.testing import free_port
from zeo.server.tests.rawclient import RawClient, connect_when_ready
from zeo.server.zconfig import server_ssl_context

__all__ = ["CHECKOUT", "ServerProcess", "SlowPackStorage", "TLSServer", "WriteRecorder",
           "child_env", "commit_directly", "find_checkout", "free_port", "open_descriptors", "rss_kib",
           "run", "tail", "wait_until"]


def find_checkout() -> Path | None:
    for parent in Path(__file__).resolve().parents:
        if (parent / "buildout.cfg").is_file() and (parent / "packages").is_dir():
            return parent
    return None


#: The checkout (a Path), or None outside one: the tests that need it skip.
CHECKOUT: Any = find_checkout()


def child_env(*before: str, **variables: str) -> dict[str, str]:
    """``os.environ`` with ``PYTHONPATH`` = *before* + our ``sys.path``, and
    *variables* set, for a subprocess that imports what we import."""
    path = os.pathsep.join(p for p in (*before, *sys.path) if p)
    return dict(os.environ, PYTHONPATH=path, **variables)


def wait_until(condition: Callable[[], Any], message: str = "condition", *,
               timeout: float = 30.0, interval: float = 0.02) -> None:
    """Poll *condition* until true; an AssertionError naming *message*
    after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def run(main: Callable[[list[str]], int], *args: str) -> tuple[int, str, str]:
    """``main(list(args))`` with stdout and stderr captured: (code, out, err)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def tail(path: str, lines: int = 30) -> str:
    """The last *lines* lines of the file at *path* ('' if unreadable)."""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


class WriteRecorder:
    """Wraps a server connection's real transport and counts its writes."""

    def __init__(self, transport):
        self.transport = transport
        self.writes = 0

        self.pieces = []

    def write(self, data):
        self.writes += 1
        self.transport.write(data)

    def writelines(self, pieces):
        self.writes += 1
        self.pieces.extend(pieces)
        self.transport.writelines(pieces)

    def __getattr__(self, name):
        return getattr(self.transport, name)


class SlowPackStorage(MappingStorage):
    """A MappingStorage whose pack waits for the test to let it go."""

    def __init__(self):
        super().__init__()
        self.packing = threading.Event()
        self.may_finish = threading.Event()
        self.events = []

    def pack(self, t, referencesf, gc=True):
        self.packing.set()
        self.may_finish.wait(30)
        self.events.append("packed")

    def close(self):
        self.events.append("closed")
        super().close()


def commit_directly(storage, count, oid=b"\0" * 8):
    """*count* tiny transactions on *oid*, through the storage API."""
    # ZODB's test helpers need the test extras (zope.testing), which the
    # scripts' interpreter (bin/py) has not.
    from ZODB.tests.MinPO import MinPO
    from ZODB.tests.StorageTestBase import zodb_pickle
    tid = b"\0" * 8
    for i in range(count):
        txn = TransactionMetaData(description=f"txn {i}")
        storage.tpc_begin(txn)
        storage.store(oid, tid, zodb_pickle(MinPO(i)), "", txn)
        storage.tpc_vote(txn)
        tid = storage.tpc_finish(txn)
    return tid


def rss_kib(pid: int) -> int:
    """Resident memory of process *pid*, in KiB (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class ServerProcess:
    """``python -m zeo.server.runzeo`` on a FileStorage in *directory*.

    Started at once unless *start* is false; `kill` then `start` restarts it
    on the same address and file. Its output goes to ``runzeo.log`` in
    *directory* (appended to by every start)."""

    def __init__(self, directory: str, *args: str,
                 zeo_options: dict[str, str] | None = None,
                 storage: str | None = None, path: str | None = None,
                 start: bool = True, zeo_text: str = "", log_file: bool = False,
                 log_formatter: str | None = None,
                 client_options: dict[str, object] | None = None,
                 read_only: bool = False) -> None:
        """*args*: more runzeo options; *zeo_options*: ``<zeo>`` keys and
        values, given to runzeo in a configuration file, with *zeo_text*
        (sections such as ``<ssl>``); *storage*: the storage's section(s)
        for that file instead of a FileStorage (e.g.
        `postgres.relstorage_section`); *path*: the FileStorage's file
        (default ``Data.fs`` in *directory*). *log_file*: an ``<eventlog>``
        writing ``zeo.log`` in *directory* (`event_log_text`), with
        *log_formatter* (a ``<logfile>`` ``formatter``). *client_options*:
        `RawClient` options for `client` and the readiness check (a TLS
        context); *read_only*: the readiness check registers read-only."""
        self.client_options = dict(client_options or {})
        self.read_only = read_only
        self.directory = directory
        self.path = path or os.path.join(directory, "Data.fs")
        self.address = ("127.0.0.1", free_port())
        self.log_path = os.path.join(directory, "runzeo.log")
        self.event_log = os.path.join(directory, "zeo.log")
        self.args = args
        self.where = ["-a", "%s:%d" % self.address, "-f", self.path]
        if zeo_options or storage or zeo_text or log_file:
            eventlog = ""
            if log_file:
                formatter = f"    formatter {log_formatter}\n" if log_formatter else ""
                eventlog = (f"<eventlog>\n  level INFO\n  <logfile>\n    path {self.event_log}\n"
                            f"{formatter}  </logfile>\n</eventlog>\n")
            self.where = ["-C", self._write_configuration(zeo_options or {}, storage,
                                                          zeo_text, eventlog)]
        self.process: subprocess.Popen[bytes] | None = None
        self.pid = 0
        #: How many times the server was started.
        self.starts = 0
        if start:
            self.start()

    def _write_configuration(self, zeo_options: dict[str, str],
                             storage: str | None = None, zeo_text: str = "",
                             eventlog: str = "") -> str:
        path = os.path.join(self.directory, "zeo.conf")
        keys = "".join(f"  {key} {value}\n" for key, value in zeo_options.items())
        with open(path, "w") as f:
            f.write(f"<zeo>\n  address %s:%d\n{keys}{zeo_text}</zeo>\n" % self.address)
            f.write(storage or f"<filestorage 1>\n  path {self.path}\n</filestorage>\n")
            f.write(eventlog)
        return path

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "zeo.server.runzeo", *self.where, *self.args],
                env=child_env(), stdout=log, stderr=log, cwd=self.directory)
        self.pid = self.process.pid
        try:
            connect_when_ready(self.address, timeout=60, read_only=self.read_only,
                               **self.client_options).close()
        except BaseException as error:
            self.ensure_dead()
            if isinstance(error, OSError):
                raise AssertionError(
                    f"the server did not start:\n{tail(self.log_path)}") from error
            raise
        self.starts += 1

    def client(self, **options: Any) -> RawClient:
        return RawClient(self.address, **{**self.client_options, **options})

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def descriptors(self) -> int:
        return open_descriptors(self.pid)

    def connections(self) -> int:
        """Registered connections, as the server counts them."""
        count: int = status(self.address)["1"]["connections"]
        return count

    def wait_connections(self, expected: int, timeout: float = 30.0) -> int:
        """Until the server counts *expected* connections; the last count."""
        deadline = time.monotonic() + timeout
        while True:
            count = self.connections()
            if count == expected or time.monotonic() > deadline:
                return count
            time.sleep(0.05)

    def kill(self, signum: int = signal.SIGKILL) -> int:
        """Send *signum* and wait (60 s at most): the exit status."""
        assert self.process is not None
        self.process.send_signal(signum)
        return self.process.wait(60)

    def stop(self, check: bool = False) -> int | None:
        """SIGTERM, then the exit status (killed after 30 s); with *check*,
        an AssertionError unless the server exited cleanly (status 0)."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)
        if check and process.returncode != 0:
            raise AssertionError(f"the server exited with {process.returncode} on"
                                 f" SIGTERM:\n{tail(self.log_path)}")
        return process.returncode

    def ensure_dead(self) -> None:
        """SIGKILL if still running (for cleanups)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(60)

    def event_log_text(self) -> str:
        """The ``<eventlog>`` file's text (see *log_file*)."""
        with open(self.event_log, errors="replace") as f:
            return f.read()

    def log_text(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


class TLSServer(unittest.TestCase):
    """A server that wants TLS with a client certificate signed by ``self.ca``."""

    def setUp(self):
        import trustme   # a test dependency: bin/py, which runs scripts, has none
        self.directory = tempfile.mkdtemp(prefix="zeo-tools-tls-")
        self.ca = trustme.CA()
        certificate = self.file("server.pem")
        self.ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem \
            .write_to_path(certificate)
        self.ca_file = self.file("ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        client = self.ca.issue_cert("ops@example.com")
        self.client_cert, self.client_key = self.file("client.pem"), self.file("client.key")
        client.cert_chain_pems[0].write_to_path(self.client_cert)
        client.private_key_pem.write_to_path(self.client_key)
        self.path = self.file("Data.fs")
        self.address, self.stop = zeo.server.server(
            path=self.path, ssl=server_ssl_context(certificate, authenticate=self.ca_file))
        self.target = f"127.0.0.1:{self.address[1]}"

    def tearDown(self):
        self.stop()
        shutil.rmtree(self.directory)

    def file(self, name):
        return os.path.join(self.directory, name)

    def tls(self, ca=None, hostname="localhost"):
        return ["--ssl-certificate", self.client_cert, "--ssl-key", self.client_key,
                "--ssl-ca", ca or self.ca_file, "--ssl-server-hostname", hostname]

    def assert_critical(self, argv, *expected):
        from zeo.server.tools import CRITICAL, status_main
        code, out, err = run(status_main, *argv, "--timeout", "5")
        self.assertEqual(code, CRITICAL, out + err)
        self.assertTrue(out.startswith("CRITICAL: no status from 127.0.0.1:"), out)
        self.assertNotIn("sent no status", out)
        for text in expected:
            self.assertIn(text, out)
        return out
