"""A minimal blocking protocol client for server tests.

It speaks through `zeo.protocol.ClientConnection` over a real socket, so a
test can send exactly the calls it wants (including wrong ones) and see
every message the server sends back, in order.
"""

from __future__ import annotations

import collections
import socket
from typing import Any

from zeo.protocol import (
    NEED_DATA, Call, ClientConnection, ConnectionClosed, ErrorReply, OneWayCall,
    ProtocolAgreed, Reply)

#: Seconds a test waits for the server before failing.
TIMEOUT = 10.0


class ServerError(Exception):
    """An error reply: ``class_name`` and ``payload`` as sent."""

    def __init__(self, class_name: str, payload: Any) -> None:
        super().__init__(class_name, payload)
        self.class_name = class_name
        self.payload = payload


class RawClient:
    def __init__(self, address: Any, *, native: bool = False, register: str | None = "1",
                 read_only: bool = False, timeout: float = TIMEOUT,
                 ssl_context: Any = None, server_hostname: str | None = None) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        if ssl_context is not None:
            self.sock = ssl_context.wrap_socket(self.sock, server_hostname=server_hostname)
        self.connection = ClientConnection(native=native)
        self.next_id = 0
        self.replies: dict[Any, Any] = {}
        self.one_way: collections.deque[OneWayCall] = collections.deque()
        self.agreed: ProtocolAgreed | None = None
        self.closed = False
        while self.agreed is None:
            self._read()
        if register is not None:
            self.last_tid = self.call("register", register, read_only)

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
            elif kind is Reply:
                self.replies[event.msgid] = event
            elif kind is ErrorReply:
                self.replies[event.msgid] = event
            elif kind is OneWayCall:
                self.one_way.append(event)
            elif kind is ConnectionClosed:
                self.closed = True
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

    def wait_one_way(self, method: str) -> OneWayCall:
        while True:
            for index, message in enumerate(self.one_way):
                if message.method == method:
                    del self.one_way[index]
                    return message
            self._read()

    def wait_closed(self) -> bool:
        """Read until the server closes; True if it did."""
        try:
            while True:
                self._read()
        except (ConnectionError, OSError):
            return True

    def commit(self, txn: Any, stores: list[tuple[bytes, bytes, bytes]]) -> bytes:
        """A whole transaction: ``stores`` of (oid, serial, data)."""
        self.send("tpc_begin", txn, b"", b"", {}, None, " ")
        for oid, serial, data in stores:
            self.send("storea", oid, serial, data, txn)
        self.call("vote", txn)
        return self.call("tpc_finish", txn)

    def close(self) -> None:
        self.sock.close()
