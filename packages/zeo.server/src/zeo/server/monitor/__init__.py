"""The monitor endpoint: Prometheus metrics and a status page for people.

Off by default. With ``monitor-address`` in ``<zeo>`` (or
``ServerConfig.monitor_address``) the server also answers HTTP on that
address, on its own event loop:

* ``/metrics``: the server's figures in the Prometheus text format (or
  OpenMetrics, when the scraper asks for it), written by
  ``prometheus_client`` (`zeo.server.monitor.metrics`);
* ``/``: a status page (`zeo.server.monitor.page`) that refreshes itself;
* ``/status.json``: the same data as JSON (`zeo.server.monitor.snapshot`).

The rules:

1. It needs ``prometheus_client``: install ``zeo.server[monitor]``. Asking
   for the endpoint without it fails at configuration time, saying so;
   nothing here imports it until the endpoint starts.
2. Everything runs on the server's event loop: the HTTP handler, the
   collection of metrics and the snapshot read the server's state where it
   is changed, so no lock is needed and nothing is read half-updated. Only
   the thread dump looks at other threads, through ``sys._current_frames``.
3. The endpoint binds to localhost unless an address names another host:
   it shows client labels and addresses, and has no authentication.
4. Every value a peer supplied (labels, addresses) is escaped in HTML.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zeo.server.monitor.endpoint import MonitorEndpoint
    from zeo.server.storage_server import StorageServer

__all__ = ["DEFAULT_HOST", "MISSING_LIBRARY", "check_library", "monitor_address",
           "start_monitor"]

#: Where the endpoint listens when the address names only a port.
DEFAULT_HOST = "127.0.0.1"

MISSING_LIBRARY = (
    "the monitor endpoint (monitor-address) needs prometheus_client, which is"
    " not installed: install zeo.server[monitor]")


def check_library() -> None:
    """Raise ImportError with `MISSING_LIBRARY` unless prometheus_client
    can be imported."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError as error:
        raise ImportError(MISSING_LIBRARY) from error


def monitor_address(value: str) -> tuple[str, int]:
    """The ZConfig datatype of ``monitor-address``: ``PORT``, ``:PORT``,
    ``HOST:PORT`` or ``[IPv6]:PORT``; without a host, `DEFAULT_HOST`.
    Port 0 picks a free port. Fails (ValueError) if prometheus_client is
    missing, so a configuration asking for the endpoint is refused at once."""
    text = value.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"monitor-address {value!r} is not HOST:PORT or PORT") from None
    if not 0 <= number < 65536:
        raise ValueError(f"monitor-address {value!r}: the port must be 0 to 65535")
    try:
        check_library()
    except ImportError as error:
        raise ValueError(str(error)) from None
    return (host or DEFAULT_HOST, number)


async def start_monitor(server: StorageServer, address: tuple[str, int]) -> MonitorEndpoint:
    """Start the endpoint for *server* on *address*; see the module docstring."""
    check_library()
    from zeo.server.monitor.endpoint import MonitorEndpoint

    endpoint = MonitorEndpoint(server)
    await endpoint.start(address)
    return endpoint
