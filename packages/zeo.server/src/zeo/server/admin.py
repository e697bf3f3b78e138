"""A small blocking protocol client for operator tools (zeopack, zeo-status).

It speaks through `zeo.protocol.ClientConnection` over a plain socket: no
event loop, no thread, no cache. Tools connect, make a few calls and leave.
"""

from __future__ import annotations

import collections
import json
import socket
import ssl as _ssl
import struct
from typing import Any

from zeo.protocol import (
    NEED_DATA, Call, ClientConnection, ConnectionClosed, ErrorReply, OneWayCall,
    ProtocolAgreed, Reply)

#: Seconds to wait for the server before giving up.
DEFAULT_TIMEOUT = 30.0
#: The largest status answer accepted from a server.
MAX_STATUS_SIZE = 1 << 20


class ServerError(Exception):
    """The server answered a call with an error: ``class_name``, ``payload``."""

    def __init__(self, class_name: str, payload: Any) -> None:
        super().__init__(class_name, payload)
        self.class_name = class_name
        self.payload = payload


def connect_socket(address: Any, timeout: float, ssl_context: _ssl.SSLContext | None = None,
                   server_hostname: str | None = None) -> socket.socket:
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address)
    else:
        sock = socket.create_connection(tuple(address), timeout=timeout)
    if ssl_context is not None:
        sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname)
    return sock


class AdminClient:
    """Connect, agree on the protocol and (unless *register* is None)
    register for a storage."""

    def __init__(self, address: Any, *, register: str | None = "1",
                 read_only: bool = False, native: bool = False,
                 timeout: float = DEFAULT_TIMEOUT, ssl_context: Any = None,
                 server_hostname: str | None = None) -> None:
        self.sock = connect_socket(address, timeout, ssl_context, server_hostname)
        self.connection = ClientConnection(native=native)
        self.next_id = 0
        self.replies: dict[Any, Any] = {}
        self.one_way: collections.deque[OneWayCall] = collections.deque()
        self.agreed: ProtocolAgreed | None = None
        try:
            while self.agreed is None:
                self._read()
            self.last_tid = self.call("register", register, read_only) \
                if register is not None else None
        except BaseException:
            self.sock.close()  # a refused registration must not leak the socket
            raise

    def _read(self) -> None:
        data = self.sock.recv(1 << 16)
        self.connection.receive_data(data)
        while True:
            event = self.connection.next_event()
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
                raise ConnectionError("the server closed the connection")

    def send_call(self, method: str, *args: Any) -> int:
        self.next_id += 1
        self.sock.sendall(self.connection.send(Call(self.next_id, method, args)))
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
        self.sock.sendall(self.connection.send(OneWayCall(method, args)))

    def close(self) -> None:
        self.sock.close()


def status(address: Any, *, timeout: float = DEFAULT_TIMEOUT, ssl_context: Any = None,
           server_hostname: str | None = None) -> dict[str, Any]:
    """Ask a server ``ruok``: its status dict per storage name."""
    sock = connect_socket(address, timeout, ssl_context, server_hostname)
    try:
        sock.sendall(struct.pack(">I", 4) + b"ruok")
        data = b""
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_STATUS_SIZE:
                raise ValueError("the status answer is too large")
    finally:
        sock.close()
    # The greeting frame comes first, then the JSON frame.
    frames = []
    while len(data) >= 4:
        (size,) = struct.unpack(">I", data[:4])
        frames.append(data[4:4 + size])
        data = data[4 + size:]
    if len(frames) < 2:
        raise ValueError("the server sent no status")
    return json.loads(frames[-1])
