"""The monitor's HTTP endpoint: a few lines of HTTP/1.0 on the server's loop.

Requests are read with ``asyncio.start_server`` streams on the loop that
serves the clients, so collecting metrics and the snapshot read the
server's state on its own thread (the package's Rule 2). Each request
gets one response and the connection is closed. It is bounded:

* at most `MAX_CONNECTIONS` requests at a time (more are closed at once);
* a request line and headers of at most `MAX_LINE` bytes each and
  `MAX_HEADERS` lines, read within `REQUEST_TIMEOUT` seconds;
* ``GET`` and ``HEAD`` only.

Paths: ``/metrics`` (Prometheus), ``/`` (the status page) and
``/status.json`` (the same data as JSON).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from zeo.server.monitor.metrics import exposition, registry_for
from zeo.server.monitor.page import render
from zeo.server.monitor.snapshot import snapshot
from zeo.server.peers import format_address

if TYPE_CHECKING:
    from zeo.server.storage_server import StorageServer

__all__ = ["MAX_CONNECTIONS", "MAX_HEADERS", "MAX_LINE", "MonitorEndpoint",
           "REQUEST_TIMEOUT"]

logger = logging.getLogger("zeo.server.monitor")

#: Monitor requests served at the same time; more are closed at once.
MAX_CONNECTIONS = 16
#: Bytes of the request line or of one header line.
MAX_LINE = 8192
#: Header lines read before the request is refused.
MAX_HEADERS = 100
#: Seconds a client has to send its request.
REQUEST_TIMEOUT = 10.0

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found",
            405: "Method Not Allowed", 500: "Internal Server Error"}


class MonitorEndpoint:
    """The monitor of one `StorageServer`; see the module docstring."""

    def __init__(self, server: StorageServer) -> None:
        self.server = server
        self.registry = registry_for(server)
        self.address: tuple[str, int] | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._active = 0

    async def start(self, address: tuple[str, int]) -> tuple[str, int]:
        host, port = address
        self._listener = await asyncio.start_server(
            self._serve, host, port, limit=MAX_LINE, reuse_address=True)
        self.address = self._listener.sockets[0].getsockname()[:2]
        logger.info("monitor endpoint on http://%s/ (metrics at /metrics)",
                    format_address(self.address))
        return self.address

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
            self._listener = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._active >= MAX_CONNECTIONS:
            writer.close()
            return
        self._active += 1
        try:
            try:
                request = await asyncio.wait_for(_read_request(reader), REQUEST_TIMEOUT)
            except (asyncio.TimeoutError, ValueError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError, ConnectionError):
                request = None
            if request is None:
                status, content_type, body, head = 400, "text/plain", b"bad request\n", False
            else:
                method, path, headers = request
                head = method == "HEAD"
                status, content_type, body = self._respond(method, path, headers)
            writer.write(
                (f"HTTP/1.0 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                 f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                 "Connection: close\r\n\r\n").encode("ascii") + (b"" if head else body))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._active -= 1
            writer.close()

    def _respond(self, method: str, path: str,
                 headers: dict[str, str]) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET and HEAD\n"
        path = path.split("?", 1)[0]
        try:
            if path == "/metrics":
                body, content_type = exposition(self.registry, headers.get("accept"))
                return 200, content_type, body
            if path in ("/", "/status", "/index.html"):
                page = render(snapshot(self.server))
                return 200, "text/html; charset=utf-8", page.encode("utf-8")
            if path == "/status.json":
                data = json.dumps(snapshot(self.server), indent=1, ensure_ascii=True)
                return 200, "application/json", data.encode("ascii")
        except Exception:
            logger.exception("the monitor failed to answer %.100r", path)
            return 500, "text/plain", b"internal error; see the server's log\n"
        return 404, "text/plain", b"not found: try /, /metrics or /status.json\n"


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]] | None:
    line = (await reader.readline()).decode("latin-1").strip()
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS):
        raw = await reader.readline()
        if not raw.endswith(b"\n"):
            return None
        text = raw.decode("latin-1").strip()
        if not text:
            return parts[0], parts[1], headers
        name, sep, value = text.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return None
