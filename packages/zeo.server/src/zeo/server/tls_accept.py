"""TLS connections whose failed handshakes are seen, and logged.

With ``create_server(ssl=...)`` the event loop wraps each accepted
connection in its TLS protocol and drops one whose handshake fails without
a word (asyncio and uvloop log it only in debug mode). A server with TLS
therefore listens plain and builds that same wrapping itself: the listening
factory returns the loop's own TLS protocol class (uvloop's or asyncio's)
around a `zeo.server.adapter.ServerProtocol`, and watches the handshake's
outcome. A failure (bad or missing certificate, plain TCP, no handshake
within ``handshake-timeout``) is logged as a refusal, rate-limited
(`StorageServer.refusals`); the `ServerProtocol` of a secured connection
sees what it always saw: ``connection_made`` with a TLS transport.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
from typing import TYPE_CHECKING, Any, Callable

from zeo.protocol import exception_text

from zeo.server.adapter import ServerProtocol, describe_peer

if TYPE_CHECKING:
    from zeo.server.storage_server import StorageServer

__all__ = ["tls_protocol_factory"]

#: Characters of a handshake failure put in the log.
MAX_TLS_REASON = 300

_classes: dict[type, type] = {}


def _tls_protocol_class(loop: asyncio.AbstractEventLoop) -> type:
    """The loop's TLS protocol, noting the peer's address on connection."""
    base: Any = asyncio.sslproto.SSLProtocol
    try:
        import uvloop
    except ImportError:   # pragma: no cover (no uvloop on Windows)
        pass
    else:
        if isinstance(loop, uvloop.Loop):
            # Not in uvloop's type stubs.
            base = getattr(uvloop.loop, "SSLProtocol")
    cls = _classes.get(base)
    if cls is None:
        def connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
            self.zeo_peer = describe_peer(transport)
            base.connection_made(self, transport)

        cls = _classes[base] = type("ZEOServerTLS", (base,), {
            "connection_made": connection_made, "zeo_peer": "unconnected"})
    return cls


def tls_protocol_factory(server: StorageServer,
                         loop: asyncio.AbstractEventLoop) -> Callable[[], Any]:
    """A listening factory: TLS around a `ServerProtocol`, as the loop
    would build for ``ssl=server.config.ssl``, whose failed handshakes are
    logged."""
    tls_class = _tls_protocol_class(loop)
    config = server.config

    def factory() -> Any:
        waiter = loop.create_future()
        protocol = tls_class(loop, ServerProtocol(server), config.ssl, waiter,
                             server_side=True,
                             ssl_handshake_timeout=config.handshake_timeout)
        waiter.add_done_callback(lambda waiter: _handshake_done(server, protocol, waiter))
        return protocol

    return factory


def _handshake_done(server: StorageServer, protocol: Any,
                    waiter: asyncio.Future[Any]) -> None:
    if waiter.cancelled() or server.closed:
        return
    error = waiter.exception()
    if error is None:
        return
    if isinstance(error, ConnectionAbortedError) and "longer than" in str(error):
        reason = (f"no TLS handshake within {server.config.handshake_timeout:g}"
                  " seconds")
    else:
        reason = f"TLS handshake failed: {exception_text(error)}"
        if len(reason) > MAX_TLS_REASON:   # the peer chose some of it
            reason = reason[:MAX_TLS_REASON] + "..."
    peer = protocol.zeo_peer
    server.refusals.warning("%s: refused: %s", peer, reason,
                            peer=peer, tls=True, reason=reason)
