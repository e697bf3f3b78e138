"""A real ``runzeo`` subprocess for resource tests: start, stop, measure.

Used by ``test_idle``, ``test_soak`` and ``scripts/soak.py``. The server
serves a FileStorage in *directory* on a free 127.0.0.1 port; `rss_kib`
reads its resident memory from ``/proc/<pid>/status`` and `connections`
asks the server itself (``ruok``) how many registered connections it has.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from zeo.server.admin import status
from zeo.server.tests.rawclient import RawClient, connect_when_ready


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    """``python -m zeo.server.runzeo`` on a FileStorage in *directory*."""

    def __init__(self, directory: str, *args: str,
                 zeo_options: dict[str, str] | None = None,
                 storage: str | None = None,
                 zeo_text: str = "", log_file: bool = False,
                 log_formatter: str | None = None,
                 client_options: dict[str, object] | None = None,
                 read_only: bool = False) -> None:
        """*zeo_options*: ``<zeo>`` keys and values, given to runzeo in a
        configuration file, with *zeo_text* (sections such as ``<ssl>``);
        *storage*: the storage's section(s) for that file instead of a
        FileStorage (e.g. `postgres.relstorage_section`).
        *log_file*: an ``<eventlog>`` writing ``zeo.log`` in *directory*
        (`event_log_text`), with *log_formatter* (a ``<logfile>``
        ``formatter``). *client_options*: `RawClient` options for `client`
        and the readiness check (a TLS context); *read_only*: the readiness
        check registers read-only."""
        self.client_options = dict(client_options or {})
        self.directory = directory
        self.path = os.path.join(directory, "Data.fs")
        self.address = ("127.0.0.1", free_port())
        self.event_log = os.path.join(directory, "zeo.log")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        self.log = open(os.path.join(directory, "runzeo.log"), "wb")
        where = ["-a", "%s:%d" % self.address, "-f", self.path]
        if zeo_options or storage or zeo_text or log_file:
            eventlog = ""
            if log_file:
                formatter = f"    formatter {log_formatter}\n" if log_formatter else ""
                eventlog = (f"<eventlog>\n  level INFO\n  <logfile>\n    path {self.event_log}\n"
                            f"{formatter}  </logfile>\n</eventlog>\n")
            where = ["-C", self._write_configuration(zeo_options or {}, storage, zeo_text,
                                                     eventlog)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "zeo.server.runzeo", *where, *args],
            env=env, stdout=subprocess.DEVNULL, stderr=self.log, cwd=directory)
        self.pid = self.process.pid
        try:
            connect_when_ready(self.address, timeout=60, read_only=read_only,
                               **self.client_options).close()
        except BaseException:
            self.stop()
            raise

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

    def client(self, **options) -> RawClient:
        return RawClient(self.address, **{**self.client_options, **options})

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def descriptors(self) -> int:
        return open_descriptors(self.pid)

    def connections(self) -> int:
        """Registered connections, as the server counts them."""
        return status(self.address)["1"]["connections"]

    def wait_connections(self, expected: int, timeout: float = 30.0) -> int:
        """Until the server counts *expected* connections; the last count."""
        deadline = time.monotonic() + timeout
        while True:
            count = self.connections()
            if count == expected or time.monotonic() > deadline:
                return count
            time.sleep(0.05)

    def stop(self) -> int:
        """SIGTERM, then the exit status (killed after 30 s)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        self.log.close()
        return self.process.returncode

    def event_log_text(self) -> str:
        """The ``<eventlog>`` file's text (see *log_file*)."""
        with open(self.event_log, errors="replace") as f:
            return f.read()

    def log_text(self) -> str:
        with open(os.path.join(self.directory, "runzeo.log"), errors="replace") as f:
            return f.read()
