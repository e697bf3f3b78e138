"""The log lines about one connection, built here so the adapter and the
session only say when (see `zeo.server.eventlog` for fields and formats).

- accepted: once the handshake is agreed (peer, TCP/Unix socket, TLS,
  protocol); a connection refused before that gets one rate-limited
  refusal line instead, so a port scan cannot flood the log;
- closed: why, after how long, bytes in and out (INFO when the client
  left, WARNING when the server closed it for a reason or a transaction
  was aborted);
- slow commit: a transaction that waited for or held its storage's commit
  lock longer than ``slow-commit-threshold`` (`CommitTimer`).

Lines name the connection by its label: the client's label and address
once it has set one, else its address.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from zeo.server.eventlog import fields, lock_times

__all__ = ["CommitTimer", "log_accepted", "log_end", "session_fields", "transport_kind"]

logger = logging.getLogger("zeo.server")


def transport_kind(transport: Any) -> tuple[str, bool]:
    """How a client reached us, for log lines, and whether over TLS."""
    tls = transport is not None and transport.get_extra_info("sslcontext") is not None
    peer = transport.get_extra_info("peername") if transport is not None else None
    kind = "TCP" if isinstance(peer, tuple) else "Unix socket"
    return (kind + " over TLS" if tls else kind), tls


def log_accepted(connection: Any) -> None:
    """*connection* (a ServerProtocol) agreed on its protocol."""
    kind, tls = transport_kind(connection.transport)
    logger.info("%s: connection accepted (%s), protocol %s", connection.label, kind,
                connection.protocol, extra=fields(peer=connection.peer, tls=tls,
                                                  protocol=connection.protocol))


def log_end(connection: Any, reason: str, level: int, session: Any = None) -> None:
    """The one line that says why and how *connection* ended; before its
    handshake was agreed, a refusal (rate-limited by the server)."""
    duration = time.monotonic() - connection.opened
    extra = dict(peer=connection.peer, reason=reason, duration=round(duration, 3),
                 bytes_in=connection.bytes_in, bytes_out=connection.bytes_out)
    if session is not None and session.label != connection.peer:
        extra["label"] = session.label
    if not connection.agreed:
        connection.server.refusals.warning("%s: refused: %s", connection.label, reason,
                                           **extra)
        return
    logger.log(level, "%s: connection closed: %s (after %.1f s, %d bytes in, %d bytes out)",
               connection.label, reason, duration, connection.bytes_in,
               connection.bytes_out, extra=fields(**extra))


def session_fields(session: Any, **values: Any) -> dict[str, Any]:
    """Log fields naming *session*'s connection (peer, label, storage),
    and *values*."""
    peer = getattr(session.peer, "peer", None)
    if isinstance(peer, str):
        values["peer"] = peer
        if session.label != peer:
            values["label"] = session.label
    if session.served is not None and "storage" not in values:
        values["storage"] = session.served.name
    return fields(**values)


class CommitTimer:
    """When a transaction asked for its commit lock and got it (a served
    storage's clock); `end` logs a slow commit."""

    __slots__ = ("asked", "granted")

    def __init__(self) -> None:
        self.asked: float | None = None
        self.granted: float | None = None

    def ask(self, now: float, granted: bool) -> None:
        self.asked = now
        self.granted = now if granted else None

    def grant(self, now: float) -> None:
        self.granted = now

    def forget(self) -> None:
        self.asked = self.granted = None

    def end(self, session: Any, outcome: str) -> None:
        """One WARNING if *session*'s transaction, ending now (*outcome*),
        waited for or held the lock past ``slow_commit_threshold``."""
        asked, granted = self.asked, self.granted
        self.forget()
        served = session.served
        threshold = served.config.slow_commit_threshold
        if asked is None or threshold is None:
            return
        waited, held = lock_times(asked, granted, served.hooks.clock())
        if waited > threshold or held > threshold:
            logger.warning(
                "%s: slow commit (%s): waited %.1f s for the commit lock of storage %r,"
                " held it %.1f s (slow-commit-threshold %g s)", session.name, outcome,
                waited, served.name, held, threshold,
                extra=session_fields(session, waited=round(waited, 3), held=round(held, 3),
                                     reason=outcome))
