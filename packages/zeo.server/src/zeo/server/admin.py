"""A small blocking protocol client for operator tools (zeopack, zeo-status).

It speaks through `zeo.protocol.ClientConnection` over a plain or TLS
socket: no event loop, no thread, no cache. Tools connect, make a few
calls and leave.

Whatever goes wrong between the tool and the server is raised as
`ServerUnreachable`, whose message says what happened (refused, timed out,
TLS handshake failed, not a ZEO server, closed early) so that operators
and monitoring read the cause, not a symptom.
"""

from __future__ import annotations

import collections
import json
import re
import socket
import ssl as _ssl
import struct
from typing import Any

from zeo.protocol import (
    NEED_DATA, Call, ClientConnection, ConnectionClosed, ErrorReply, OneWayCall,
    ProtocolAgreed, ProtocolError, Reply)

from zeo.server.peers import format_address

__all__ = ["DEFAULT_TIMEOUT", "GREETING_TIMEOUT", "MAX_STATUS_SIZE", "KINDS", "ServerError", "ServerUnreachable", "ServerTimeout",
           "AdminClient", "connect_socket", "status", "describe_address"]

#: Seconds to wait for the server before giving up.
DEFAULT_TIMEOUT = 30.0
#: Seconds zeopack waits for the greeting that ZEO servers send at once (a
#: TLS server waits for our TLS handshake instead, in silence).
GREETING_TIMEOUT = 10.0
#: The largest status answer accepted from a server.
MAX_STATUS_SIZE = 1 << 20
#: A ZEO greeting: an encoding letter and a protocol version.
_GREETING = re.compile(rb"[A-Z][0-9][\x21-\x7e]{0,62}\Z")
#: The kinds of `ServerUnreachable`.
KINDS = ("refused", "timeout", "tls", "not-zeo", "closed", "network")


class ServerError(Exception):
    """The server answered a call with an error: ``class_name``, ``payload``."""

    def __init__(self, class_name: str, payload: Any) -> None:
        super().__init__(class_name, payload)
        self.class_name = class_name
        self.payload = payload


class ServerUnreachable(ConnectionError):
    """The tool could not get an answer from ``where`` (an address, as
    text); ``reason`` says why and ``kind`` is one of `KINDS`: ``refused``,
    ``timeout``, ``tls``, ``not-zeo``, ``closed`` or ``network``."""

    def __init__(self, kind: str, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.kind, self.where, self.reason = kind, where, reason

    def __str__(self) -> str:
        return str(self.args[0])


class ServerTimeout(ServerUnreachable, TimeoutError):
    """A `ServerUnreachable` of kind ``timeout``; also a `TimeoutError`
    (``socket.timeout``), so a caller may wait again on the same client."""


def _unreachable(kind: str, where: str, reason: str) -> ServerUnreachable:
    cls = ServerTimeout if kind == "timeout" else ServerUnreachable
    return cls(kind, where, reason)


def describe_address(address: Any) -> str:
    if isinstance(address, str):
        return f"unix socket {address!r:.200}"
    return format_address(address)


def _translate(error: BaseException, where: str, timeout: float, tls: bool,
               during: str) -> ServerUnreachable:
    """The `ServerUnreachable` saying what *error*, raised *during*
    ``connect``, (TLS) ``handshake``, ``greeting`` or ``answer``, means."""
    if isinstance(error, ServerUnreachable):
        return error
    if isinstance(error, _ssl.SSLCertVerificationError):
        return ServerUnreachable(
            "tls", where, f"TLS handshake failed: the server's certificate"
                          f" is not trusted: {error.verify_message or error.reason}")
    if isinstance(error, (_ssl.SSLEOFError, _ssl.SSLZeroReturnError)) or (
            isinstance(error, (ConnectionResetError, BrokenPipeError)) and during == "handshake"):
        return ServerUnreachable(
            "tls", where, "TLS handshake failed: the server closed the connection"
                          " (it may not speak TLS, or it refused our certificate)")
    if isinstance(error, _ssl.SSLError):
        reason = error.reason or str(error)
        hint = ""
        if during == "handshake" and reason in (
                "WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                "UNKNOWN_PROTOCOL", "HTTP_REQUEST"):
            hint = " (the server does not seem to speak TLS)"
        elif "CERTIFICATE" in reason.upper():
            hint = " (the server did not accept our client certificate)"
        what = "TLS handshake" if during == "handshake" else "TLS connection"
        return ServerUnreachable("tls", where, f"{what} failed: {reason}{hint}")
    if isinstance(error, (socket.timeout, TimeoutError)):
        if during == "connect":
            text = f"no connection within {timeout:g} seconds"
        elif during == "handshake":
            text = (f"TLS handshake timed out after {timeout:g} seconds"
                    f" (the server may not speak TLS)")
        else:
            text = f"no answer within {timeout:g} seconds"
        return _unreachable("timeout", where, text)
    if isinstance(error, ConnectionRefusedError):
        return ServerUnreachable("refused", where, "connection refused"
                                                   " (is the server running?)")
    if isinstance(error, FileNotFoundError):
        return ServerUnreachable("refused", where, "no such socket")
    if isinstance(error, ConnectionResetError):
        hint = "" if tls else " (a TLS server resets plain connections)"
        return ServerUnreachable("closed", where, f"connection reset{hint}")
    if isinstance(error, ProtocolError):
        if during == "greeting":
            return ServerUnreachable("not-zeo", where, f"not a ZEO server: {error!s:.200}")
        return ServerUnreachable("not-zeo", where, f"protocol error: {error!s:.200}")
    if isinstance(error, OSError):
        return ServerUnreachable("network", where, f"{error.strerror or error}")
    raise error


def connect_socket(address: Any, timeout: float, ssl_context: _ssl.SSLContext | None = None,
                   server_hostname: str | None = None) -> socket.socket:
    """A connected socket, TLS if *ssl_context* is given (handshake done);
    failures raise `ServerUnreachable`."""
    where = describe_address(address)
    tls = ssl_context is not None
    try:
        if isinstance(address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(address)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection(tuple(address), timeout=timeout)
    except OSError as error:
        raise _translate(error, where, timeout, tls, "connect") from None
    if ssl_context is not None:
        try:
            sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname)
        except (OSError, ValueError) as error:
            sock.close()
            if not isinstance(error, OSError):  # e.g. check_hostname without a name
                raise ServerUnreachable("tls", where, f"cannot start TLS: {error}") from None
            raise _translate(error, where, timeout, tls, "handshake") from None
    return sock


class AdminClient:
    """Connect, agree on the protocol and (unless *register* is None)
    register for a storage (a *native* one asks for the *capabilities*
    offered among these). *timeout* bounds each wait for the server,
    *greeting_timeout* (if smaller) the wait for its greeting."""

    def __init__(self, address: Any, *, register: str | None = "1",
                 read_only: bool = False, native: bool = False,
                 timeout: float = DEFAULT_TIMEOUT, ssl_context: Any = None,
                 server_hostname: str | None = None,
                 greeting_timeout: float | None = None,
                 capabilities: tuple[str, ...] = ()) -> None:
        self.where = describe_address(address)
        self.timeout = timeout
        self.tls = ssl_context is not None
        self.sock = connect_socket(address, timeout, ssl_context, server_hostname)
        self.connection = ClientConnection(native=native, capabilities=capabilities)
        self.next_id = 0
        self.replies: dict[Any, Any] = {}
        self.one_way: collections.deque[OneWayCall] = collections.deque()
        self.agreed: ProtocolAgreed | None = None
        greeting_timeout = min(timeout, greeting_timeout or timeout)
        try:
            self.sock.settimeout(greeting_timeout)
            while self.agreed is None:
                try:
                    self._read()
                except ServerUnreachable as error:
                    if error.kind != "timeout":
                        raise
                    hint = "" if self.tls else " (it may expect TLS)"
                    raise _unreachable(
                        "timeout", self.where, f"no ZEO greeting within"
                        f" {greeting_timeout:g} seconds{hint}") from None
            self.sock.settimeout(timeout)
            self.last_tid = self.call("register", register, read_only) \
                if register is not None else None
        except BaseException:
            self.sock.close()  # a refused registration must not leak the socket
            raise

    def _read(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
            self.connection.receive_data(data)
            self._events()
        except (OSError, ProtocolError) as error:
            during = "greeting" if self.agreed is None else "answer"
            raise _translate(error, self.where, self.timeout, self.tls, during) from None
        if not data:
            raise self._closed()

    def _closed(self) -> ServerUnreachable:
        if self.agreed is None:
            hint = (" (over TLS: it may have refused our client certificate)" if self.tls
                    else " (it may expect TLS)")
            return ServerUnreachable(
                "closed", self.where, f"closed the connection before the ZEO handshake{hint}")
        return ServerUnreachable("closed", self.where, "closed the connection")

    def _events(self) -> None:
        while True:
            event: Any = self.connection.next_event()
            if event is NEED_DATA:
                break
            kind = type(event)
            if kind is ProtocolAgreed:
                self.agreed = event
                self.sock.sendall(self.connection.data_to_send())
            elif kind is Reply or kind is ErrorReply:
                self.replies[event.msgid] = event
            elif kind is OneWayCall:
                self.one_way.append(event)
            elif kind is ConnectionClosed:
                raise self._closed()

    def _sendall(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as error:
            raise _translate(error, self.where, self.timeout, self.tls, "answer") from None

    def send_call(self, method: str, *args: Any) -> int:
        self.next_id += 1
        self._sendall(self.connection.send(Call(self.next_id, method, args)))
        return self.next_id

    def wait_reply(self, msgid: Any) -> Any:
        while msgid not in self.replies:
            self._read()
        reply = self.replies.pop(msgid)
        if type(reply) is ErrorReply:
            raise ServerError(reply.class_name, reply.payload)
        return reply.result

    def call(self, method: str, *args: Any) -> Any:
        return self.wait_reply(self.send_call(method, *args))

    def send(self, method: str, *args: Any) -> None:
        """A one-way call."""
        self._sendall(self.connection.send(OneWayCall(method, args)))

    def close(self) -> None:
        self.sock.close()


def _frames(data: bytes) -> tuple[list[bytes], bytes]:
    frames = []
    while len(data) >= 4:
        (size,) = struct.unpack(">I", data[:4])
        if len(data) < 4 + size:
            break
        frames.append(data[4:4 + size])
        data = data[4 + size:]
    return frames, data


def status(address: Any, *, timeout: float = DEFAULT_TIMEOUT, ssl_context: Any = None,
           server_hostname: str | None = None) -> dict[str, Any]:
    """Ask a server ``ruok``: its status dict per storage name.

    The server sends its greeting frame, then one JSON frame, then closes.
    Anything else raises `ServerUnreachable` saying what came instead.
    """
    where = describe_address(address)
    tls = ssl_context is not None
    sock = connect_socket(address, timeout, ssl_context, server_hostname)
    data = b""
    try:
        sock.sendall(struct.pack(">I", 4) + b"ruok")
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_STATUS_SIZE:
                raise ServerUnreachable(
                    "not-zeo", where, f"sent more than {MAX_STATUS_SIZE} bytes:"
                                      f" not a ZEO status answer")
    except OSError as error:
        if not (data and isinstance(error, ConnectionResetError)):
            raise _translate(error, where, timeout, tls, "answer") from None
    finally:
        sock.close()
    if not data:
        hint = (" (over TLS: it may have refused our client certificate)" if tls
                else " (it may expect TLS: see the --ssl options)")
        raise ServerUnreachable(
            "closed", where, f"closed the connection without sending anything{hint}")
    frames, rest = _frames(data)
    if not frames or not _GREETING.match(frames[0]):
        raise ServerUnreachable(
            "not-zeo", where, f"not a ZEO server: it answered {data[:40]!r}")
    if len(frames) < 2:
        if rest:
            raise ServerUnreachable("closed", where, "status answer cut short")
        raise ServerUnreachable(
            "not-zeo", where, f"greeting {frames[0]!r:.20} but no status:"
                              f" not a ZEO 5 or later server")
    try:
        answer = json.loads(frames[1])
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not all(isinstance(v, dict) for v in answer.values()):
        raise ServerUnreachable(
            "not-zeo", where, f"the status is not a JSON object of storages:"
                              f" {frames[1][:60]!r}")
    return answer
