"""The thin asyncio adapter between a socket and a `StorageSession`.

It feeds received bytes to the sans-IO `zeo.protocol.ServerConnection`,
dispatches the events to the session, and writes what comes back. It owns
the handshake timer and the ordered output queue: replies and one-way
messages leave in the order they were produced, and a blob stream is read
from disk only as fast as the transport drains (``pause_writing`` /
``resume_writing``), so a blob is never held in memory whole.

Input is read with ``asyncio.BufferedProtocol`` into one buffer that all
connections of a server share (they run on one loop, and each read is
handed to the frame reader before the next one starts). Plain
``asyncio.Protocol`` makes the loop allocate a fresh 256 KiB ``bytes`` per
read, which glibc serves with an ``mmap``/``munmap`` pair: two system calls
and fresh zeroed pages on every small request.

Output waiting behind a slow reader is bounded in two ways. While the
transport has more than it wants to hold (``pause_writing``), requests
already received wait unhandled and reading stops, so a client that sends
requests without reading the replies only stops being answered. What
comes unasked (invalidations) still queues; a connection whose unsent
output exceeds ``ServerConfig.output_buffer_limit`` is aborted (a client
that stops reading must not make the server grow).

What every connection holds together (partial input, unsent output), the
connections per address and idle connections are bounded by the server's
`zeo.server.budgets.Budgets`: a connection reports what it holds after
each read and write, and is aborted when the budget chooses it.

Bad input of any kind closes this connection with one log line; it never
touches the other connections.

A connection's life is logged in a few lines (see `zeo.server.eventlog`):
accepted (with the protocol agreed), labelled, closed (why, after how long,
bytes in and out); a connection refused before its handshake is agreed
gets one refusal line, rate-limited (`StorageServer.refusals`). Nothing is
logged per request.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from typing import TYPE_CHECKING, Any, Iterator, cast

from ZODB.POSException import ConflictError, POSKeyError
from zope.interface import implementer
from zeo.protocol import (
    NEED_DATA, Call, ConnectionClosed, EncodeError, ErrorReply, Heartbeat, OneWayCall,
    ProtocolAgreed, ProtocolError, ServerConnection, Status, StatusRequest,
    exception_text, exception_to_wire, peer_repr)

from zeo.server.client_errors import exception_for_clients
from zeo.server.connection_log import log_accepted, log_end
from zeo.server.eventlog import fields
from zeo.server.interfaces import IBudgetedConnection
from zeo.server.results import Delayed
from zeo.server.load_refs import LOAD_REFS, RefWalker
from zeo.server.peers import describe_peer, peer_host
from zeo.server.session import EXPOSED_METHODS, StorageSession

if TYPE_CHECKING:
    from zeo.server.stats import StorageStats
    from zeo.server.storage_server import StorageServer

__all__ = [
    "QUIET_ERRORS", "ServerProtocol", "describe_peer", "peer_host", "receive_buffer",
]

logger = logging.getLogger("zeo.server")

#: Errors that are part of normal operation: replied, never logged.
QUIET_ERRORS = (ConflictError, POSKeyError)


#: Bytes read from a socket at a time, into the server's shared buffer.
RECEIVE_BUFFER_SIZE = 256 * 1024
#: Replies to the requests of one read are written together, in pieces of
#: about this size: one system call for many small replies (a prefetch of
#: thousands of objects), while the client already reads the first ones.
WRITE_BATCH_SIZE = 64 * 1024
#: Replies a transport may hold before the connection stops handling
#: requests (``pause_writing``), and where it starts again. asyncio's 64 KiB
#: would pause a client's prefetch of a few hundred objects many times.
WRITE_BUFFER_HIGH = 1024 * 1024
WRITE_BUFFER_LOW = 256 * 1024


#: Characters of a reason for closing a connection put in the log.
MAX_REASON = 1000

#: Calls whose latency (received to answered) the monitor shows, and the
#: `zeo.server.stats.StorageStats` histogram each goes to.
TIMED_CALLS = {"vote": "vote_latency", "tpc_finish": "finish_latency"}


def receive_buffer() -> memoryview:
    """A buffer for all the connections served by one event loop."""
    return memoryview(bytearray(RECEIVE_BUFFER_SIZE))


@implementer(IBudgetedConnection)
class ServerProtocol(asyncio.BufferedProtocol):
    """One client connection."""

    def __init__(self, server: StorageServer) -> None:
        self.server = server
        self.config = server.config
        self.transport: asyncio.Transport | None = None
        self.session: StorageSession | None = None
        self.label = "unconnected"
        #: The client's address, for log lines.
        self.peer = "unconnected"
        self.closed = False
        #: Bytes received and sent on this connection (logged at its end).
        self.bytes_in = 0
        self.bytes_out = 0
        self.opened = 0.0           # time.monotonic() at connection_made
        self.agreed = False         # the handshake was agreed
        self._end_logged = False    # the line saying why it ended is out
        self._connection = ServerConnection(
            encoding=self.config.encoding, limits=self.config.limits,
            capabilities=(LOAD_REFS,) if self.config.load_refs else ())
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._paused_at = 0.0    # time.monotonic() at pause_writing
        self._reading_paused = False
        self._buffer = server.receive_buffer
        self._budgets = server.budgets
        # Read only: whether the budgets count anything for us.
        self._input_tallies = server.budgets.input_tallies
        self._output_tallies = server.budgets.output_tallies
        # Set by every read, taken by the idle sweep (see budgets).
        self._heard = True
        # Calls whose reply comes later (a Delayed).
        self._delayed = 0
        # The session has registered (it stays so): calls skip _allowed.
        self._registered = False
        # Aborted or lost: the transport holds nothing more of ours.
        self._gone = False
        # What get_buffer last returned, if not the shared buffer.
        self._direct: memoryview | None = None
        self._output_limit = self.config.output_buffer_limit
        # bytes, or an iterator of (method, args) one-way messages
        self._pending: collections.deque[Any] = collections.deque()
        self._pending_bytes = 0
        # Output produced while handling one read's requests (see _write).
        self._batching = False
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        # The served storage's counters, once the client has registered
        # (looked up once: bytes are counted on every read and write).
        self._stats: StorageStats | None = None
        # For the monitor's status page: since when (epoch), the protocol
        # agreed, and when the last bytes came (time.monotonic()).
        self.connected_at = time.time()
        self.protocol = ""
        self.last_read = time.monotonic()

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = stream = cast(asyncio.Transport, transport)  # uvloop's: no subclass
        # Pausing must come well before the output limit: what waits
        # beyond the transport's buffer is what the limit counts.
        high = min(WRITE_BUFFER_HIGH, self._output_limit // 4)
        stream.set_write_buffer_limits(
            high=high, low=min(WRITE_BUFFER_LOW, high // 4))
        self.label = self.peer = describe_peer(transport)
        self.opened = time.monotonic()
        if not self.server.connection_opened(self):
            return
        self.session = StorageSession(self.server.storages, self, self.label,
                                      self.config.max_label_length)
        loop = asyncio.get_running_loop()
        self._handshake_timer = loop.call_later(
            self.config.handshake_timeout, self._handshake_timed_out)
        self._write(self._connection.initiate())

    def get_buffer(self, sizehint: int) -> memoryview:
        # A large frame in progress (a blob chunk) is read into a buffer
        # of its own; everything else into the buffer shared by all.
        direct = self._direct = self._connection.receive_buffer()
        return self._buffer if direct is None else direct

    def buffer_updated(self, nbytes: int) -> None:
        self._heard = True
        self.last_read = _monotonic()
        self.bytes_in += nbytes
        stats = self._stats or self._registered_stats()
        if stats is not None:
            stats.bytes_in += nbytes
        try:
            if self._direct is None:
                # The frame reader copies what it keeps: the buffer is reused.
                self._connection.receive_data(self._buffer[:nbytes])
            else:
                self._direct = None
                self._connection.received_into(nbytes)
        except ProtocolError as error:
            self.close(f"protocol error: {exception_text(error)}")
            return
        self._handle_input()

    def _handle_input(self) -> None:
        """Handle received events until there are none or output backs up."""
        next_event = self._connection.next_event
        self._batching = True
        try:
            while not self.closed:
                if self._paused:
                    # Resumed by resume_writing, which handles the rest.
                    if not self._reading_paused:
                        self._reading_paused = True
                        assert self.transport is not None  # input came
                        self.transport.pause_reading()
                    return
                event = next_event()
                if event is NEED_DATA:
                    break
                if type(event) is Call:   # most of them: no detour
                    self._call(event)
                else:
                    self._handle(event)
                if self._batch_bytes >= WRITE_BATCH_SIZE:
                    self._flush()
        except ProtocolError as error:
            self.close(f"protocol error: {exception_text(error)}")
        finally:
            self._batching = False
            self._flush()
            held = self._connection.buffered
            if (held or self in self._input_tallies) and not self.closed:
                self._budgets.input_held(self, held)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone = self.closed = True
        self._pending.clear()
        self._pending_bytes = 0
        self._batch.clear()
        self._batch_bytes = 0
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        session, self.session = self.session, None
        aborting = session is not None and session.in_transaction
        try:
            if session is not None:
                session.connection_lost()
        finally:
            self.server.connection_closed(self)
            if self.agreed and not self._end_logged:
                if self.server.closed:
                    reason = "the server is stopping"
                elif exc is None:
                    reason = "by the client"
                else:
                    reason = exception_text(exc)
                if aborting:   # the session aborted it
                    reason += " during a transaction, which was aborted"
                self._end_logged = True
                log_end(self, reason, logging.WARNING if aborting else logging.INFO, session)

    def pause_writing(self) -> None:
        self._paused = True
        self._paused_at = time.monotonic()

    def resume_writing(self) -> None:
        self._paused = False
        self._drain()
        if self._reading_paused and not self._paused and not self.closed:
            self._reading_paused = False
            assert self.transport is not None  # reading was paused
            self.transport.resume_reading()
            self._handle_input()

    # -- events -----------------------------------------------------------------

    def _handle(self, event: Any) -> None:
        kind = type(event)
        if kind is Call:
            self._call(event)
        elif kind is OneWayCall:
            _, _, method, args = event  # an event is its wire tuple
            self._one_way(method, args)
        elif kind is Heartbeat or kind is ConnectionClosed:
            pass
        elif kind is ProtocolAgreed:
            self._handshake_done(event)
        elif kind is StatusRequest:
            self._status()
        else:
            self.close(f"unexpected {kind.__name__} from a client")

    def _handshake_done(self, event: Any) -> None:
        self.protocol = event.encoding + bytes(event.version).decode("ascii", "replace")
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self.agreed = True
        if LOAD_REFS in event.capabilities and self.session is not None:
            self.session.ref_walker = RefWalker(
                self.config.max_load_refs_records, self.config.max_load_refs_bytes)
        log_accepted(self)

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        self._budgets.refusals["handshake-timeout"] += 1
        self.close(f"no handshake within {self.config.handshake_timeout:g} seconds")

    def _status(self) -> None:
        status = json.dumps(self.server.status()).encode("ascii")
        self._write(self._connection.send(Status(status)))
        self.close(None)

    def _allowed(self, method: str) -> bool:
        session = self.session
        if method not in EXPOSED_METHODS:
            self.close(f"unknown method {peer_repr(method)}")
            return False
        if session is not None:
            if not session.registered:
                if method != "register":
                    self.close(f"{method!r} called before register")
                    return False
            else:
                self._registered = True   # for good: see _call
        return True

    def _call(self, call: Call) -> None:
        """Answer a call: every call on an open connection gets a reply or
        an error reply, whatever its method returns or raises."""
        _, _, method, args = call  # an event is its wire tuple
        if not (self._registered and method in EXPOSED_METHODS) and not self._allowed(method):
            return
        started = _monotonic() if method in TIMED_CALLS else None
        try:
            result = getattr(self.session, method)(*args)
        except Exception as error:
            self._reply_error(call.msgid, method, error)
            if started is not None:
                self._timed(method, started)
            return
        if method == "set_client_label":
            self._relabel()
        if type(result) is Delayed:
            self._delayed += 1
            result.add_callback(
                lambda error, value: self._settled(call, error, value, started))
        else:
            self._reply(call, result)
            if started is not None:
                self._timed(method, started)

    def _settled(self, call: Call, error: BaseException | None,
                 value: Any, started: float | None = None) -> None:
        self._delayed -= 1
        if self.closed:
            return
        if error is None:
            self._reply(call, value)
        else:
            self._reply_error(call.msgid, call.method, error)
        if started is not None:
            self._timed(call.method, started)

    def _timed(self, method: str, started: float) -> None:
        stats = self._stats or self._registered_stats()
        if stats is not None:
            getattr(stats, TIMED_CALLS[method]).observe(_monotonic() - started)

    def _reply(self, call: Call, result: Any) -> None:
        try:
            data = self._connection.send(call.reply(result))
        except EncodeError as error:
            # As the reference: the client learns that it has no answer.
            logger.error("%s: the result of %s cannot be sent: %s", self.label,
                         call.method, exception_text(error))
            self._reply_error(call.msgid, call.method,
                              ValueError(f"the result of {call.method} cannot be encoded"),
                              log=False)
            return
        self._write(data)

    def _reply_error(self, msgid: Any, method: str, error: BaseException,
                     log: bool = True) -> None:
        if log and not isinstance(error, QUIET_ERRORS):
            self.server.call_errors.warning(
                "%s: %s raised %s", self.label, method, exception_text(error))
        class_name, payload = exception_to_wire(exception_for_clients(error))
        try:
            data = self._connection.send(ErrorReply(msgid, class_name, payload))
        except EncodeError:
            # Only text left: that always encodes.
            data = self._connection.send(ErrorReply(
                msgid, "builtins.ValueError", (exception_text(error),)))
        self._write(data)

    def _one_way(self, method: str, args: tuple[Any, ...]) -> None:
        """Handle a one-way message: no answer, so an error (now, or from a
        call that answers later) closes the connection."""
        if not self._allowed(method):
            return
        try:
            result = getattr(self.session, method)(*args)
        except Exception as error:
            # The session aborts its transaction as the connection closes.
            self.close(f"{method} failed: {exception_text(error)}")
            return
        if type(result) is Delayed:
            result.add_callback(lambda error, value: self._one_way_settled(method, error))
        if method == "set_client_label":
            self._relabel()

    def _relabel(self) -> None:
        """Name this connection by its client's label; logged the first
        time only (a client may set it again and again)."""
        if self.session is not None:
            first = self.label == self.peer
            self.label = f"{self.session.label} ({self.peer})"
            if first:
                logger.info("%s: client label set", self.label,
                            extra=fields(peer=self.peer, label=self.session.label))

    def _one_way_settled(self, method: str, error: BaseException | None) -> None:
        if error is not None:
            self.close(f"{method} failed: {exception_text(error)}")

    # -- the session's peer (see ISessionPeer) ----------------------------------

    def notify(self, method: str, args: tuple[Any, ...]) -> None:
        if not self.closed:
            self._write(self._connection.send(OneWayCall(method, args)))

    def stream(self, messages: Iterator[tuple[str, tuple[Any, ...]]]) -> None:
        self._flush()  # what was sent before goes first
        self._pending.append(messages)
        self._drain()

    @property
    def writing_paused_for(self) -> float:
        if not self._paused:
            return 0.0
        return time.monotonic() - self._paused_at

    def run_in_thread(self, function: Any, *, pack: bool = False, commit: bool = False) -> Delayed:
        return self.server.run_in_thread(function, pack=pack, commit=commit)

    def close(self, reason: str | None) -> None:
        if self.closed:
            return
        if self.transport is not None:
            self._flush()  # e.g. the status answer, or replies before a bad request
        self.closed = True
        if reason:
            if len(reason) > MAX_REASON:   # callers cut peer data; this is a backstop
                reason = reason[:MAX_REASON] + "..."
            self._end_logged = True
            log_end(self, reason, logging.WARNING, self.session)
        if self.transport is not None:
            self.transport.close()

    def abort(self, reason: str) -> None:
        """See `IBudgetedConnection`. A client that does not read must not
        keep its output, nor memory, until it does; this also ends a
        connection that `close` left sending its output."""
        if self._gone:
            return
        self._gone = self.closed = True
        if not self._end_logged:
            self._end_logged = True
            log_end(self, reason, logging.WARNING, self.session)
        self._pending.clear()
        self._pending_bytes = 0
        self._batch.clear()
        self._batch_bytes = 0
        if self.transport is not None:
            self.transport.abort()

    # -- what the budgets ask (see IBudgetedConnection) -----------------------------

    def unsent_output(self) -> int:
        """See `IBudgetedConnection`."""
        if self._gone or self.transport is None:
            return 0
        return self._pending_bytes + self.transport.get_write_buffer_size()

    def take_heard(self) -> bool:
        """See `IBudgetedConnection`."""
        heard, self._heard = self._heard, False
        return heard

    def busy(self) -> bool:
        """See `IBudgetedConnection`."""
        session = self.session
        return (session is None or self._handshake_timer is not None
                or session.in_transaction or self._delayed > 0
                or bool(self._pending) or self._paused or self._reading_paused)

    # -- output ------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._batching:
            self._batch.append(data)
            self._batch_bytes += len(data)
            return
        self._send(data)

    def _send(self, data: bytes) -> None:
        """Write *data* now, or queue it behind output that waits."""
        if self._pending or self._paused:
            self._pending.append(data)
            self._pending_bytes += len(data)
            assert self.transport is not None  # output is held
            waiting = self._pending_bytes + self.transport.get_write_buffer_size()
            if waiting > self._output_limit:
                self._overflowed(waiting)
            elif not self._gone:
                self._budgets.output_held(self, waiting)
            return
        size = len(data)
        self.bytes_out += size   # _count_out, inline: once per read
        stats = self._stats or self._registered_stats()
        if stats is not None:
            stats.bytes_out += size
        transport: Any = self.transport
        transport.write(data)
        unsent = transport.get_write_buffer_size()
        if (unsent or self in self._output_tallies) and not self.closed:
            self._budgets.output_held(self, unsent)

    def _flush(self) -> None:
        """Write what `_handle_input` collected, as one piece."""
        batch = self._batch
        if not batch:
            return
        if self.closed:
            batch.clear()
            self._batch_bytes = 0
            return
        data = batch[0] if len(batch) == 1 else b"".join(batch)
        batch.clear()
        self._batch_bytes = 0
        self._send(data)

    def _registered_stats(self) -> StorageStats | None:
        session = self.session
        if session is not None and session.served is not None:
            self._stats = session.served.stats
        return self._stats

    def _count_out(self, count: int) -> None:
        self.bytes_out += count
        stats = self._stats or self._registered_stats()
        if stats is not None:
            stats.bytes_out += count

    def _overflowed(self, waiting: int) -> None:
        self._budgets.refusals["max-output-buffer"] += 1
        self.abort(f"the client left {waiting} bytes unread, over the limit"
                   f" of {self._output_limit} bytes (max-output-buffer)")

    def _drain(self) -> None:
        pending = self._pending
        transport = self.transport  # None only before connection_made: nothing pending
        while pending and transport is not None and not self._paused and not self.closed:
            item = pending[0]
            if type(item) is bytes:
                pending.popleft()
                self._pending_bytes -= len(item)
                self._count_out(len(item))
                transport.write(item)
                continue
            try:
                method, args = next(item)
            except StopIteration:
                pending.popleft()
                continue
            except OSError as error:
                pending.popleft()
                self.close(f"reading a blob to send failed: {exception_text(error)}")
                return
            # In pieces: a blob chunk is written as read, not copied.
            pieces = self._connection.send_pieces(OneWayCall(method, args))
            self._count_out(sum(map(len, pieces)))
            transport.writelines(pieces)
        if not self.closed:
            self._budgets.output_held(self, self.unsent_output())


_monotonic = time.monotonic
