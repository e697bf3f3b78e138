"""Test support: a scripted (hostile) server, and pickles that run code.

`FakeServer` listens on 127.0.0.1, greets each connection (``Z5`` by
default), reads the client's handshake answer, decodes the client's
requests and writes whatever the test's ``respond`` function returns.
It records what it saw, so a test can wait for it.

`DrivenClient` is a real ``Channel`` fed frames by hand (no
socket, a loop that never runs): the client's decoding and error building
with nothing in between.

`gadget_values` are pickle fragments (one value each) that create a
marker file when a permissive client decodes them, through the doors a
ZODB client's allow-list could open; `reply` and `one_way` wrap a
fragment into a whole message.
"""
from __future__ import annotations

import asyncio
import functools
import importlib.util
import os
import shlex
import socket
import struct
import threading
import time
from typing import Any, Callable

import msgpack

from zeo.protocol import ProtocolLimits, safe_loads
from zeo.protocol.safe_unpickle import CONTAINER_GLOBALS

from zeo.client.connections import ClientAdapter, Channel
from zeo.client.tests.support import Handler, Transport, feed

__all__ = ['DrivenClient', 'FakeServer', 'binbytes', 'genuine_get_pickle_metadata', 'error', 'gadget_values', 'global_', 'marker_in',
           'one_way', 'record_gadget', 'reply', 'text', 'wait_until']

#: ``respond(msgid, method, args)`` -> message payloads to send, or None.
Responder = Callable[[Any, str, Any], 'list[bytes] | None']


def wait_until(condition: Callable[[], Any], timeout: float = 10.0) -> bool:
    """Poll *condition* until true or *timeout*; return its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return bool(condition())
        time.sleep(0.01)
    return True


# -- pickle fragments ----------------------------------------------------------

def text(value: bytes) -> bytes:
    """``BINUNICODE``"""
    return b'X' + struct.pack('<I', len(value)) + value


def binbytes(value: bytes) -> bytes:
    """``BINBYTES``"""
    return b'B' + struct.pack('<I', len(value)) + value


def global_(module: bytes, name: bytes) -> bytes:
    """``GLOBAL``"""
    return b'c' + module + b'\n' + name + b'\n'


def reply(msgid: int, value: bytes, flag: int = 0) -> bytes:
    """A protocol-3 ``(msgid, flag, '.reply', <value>)`` message."""
    return (b'\x80\x03(' + b'J' + struct.pack('<i', msgid) + b'K' + bytes([flag])
            + text(b'.reply') + value + b't.')


def one_way(method: bytes, args: bytes) -> bytes:
    """A protocol-3 one-way call ``(0, True, method, <args>)``."""
    return b'\x80\x03(K\x00\x88' + text(method) + args + b't.'


def error(class_name: bytes, payload: bytes) -> bytes:
    """The value of an error reply: ``(class_name, <payload>)``."""
    return b'(' + text(class_name) + payload + b't'


def record_gadget(marker: str) -> bytes:
    """A pickle that runs ``posix.system('touch <marker>')`` when fully
    unpickled, and that ``ZODB.utils.get_pickle_metadata`` unpickles
    (it does not start with a plain ``GLOBAL``: a ``None`` is pushed and
    popped first)."""
    command = ('touch ' + shlex.quote(marker)).encode()
    return (b'\x80\x02N0' + global_(b'posix', b'system')
            + text(command) + b'\x85R.')


@functools.lru_cache(maxsize=None)
def genuine_get_pickle_metadata() -> Callable[[bytes], tuple[str, str]]:
    """ZODB's own ``get_pickle_metadata``, from a private copy of
    ``ZODB.utils`` (the one in ``sys.modules`` may be neutralised)."""
    spec = importlib.util.find_spec('ZODB.utils')
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_pickle_metadata


def gadget_values(marker: str) -> dict[str, bytes]:
    """``{name: pickle fragment}``: each value, decoded by a client that
    may call ZODB's error classes, creates *marker*."""
    data = binbytes(record_gadget(marker))
    conflict = global_(b'ZODB.POSException', b'ConflictError')
    stack_conflict = text(b'ZODB.POSException') + text(b'ConflictError') + b'\x93'
    five = b'NNNN' + data
    return {
        # The report: REDUCE ConflictError(None, None, None, None, data).
        'reduce': conflict + b'(' + five + b'tR',
        # The class from STACK_GLOBAL (protocol 4), then REDUCE.
        'stack_global': stack_conflict + b'(' + five + b'tR',
        # OBJ: MARK class args OBJ.
        'obj': b'(' + conflict + five + b'o',
        # INST: MARK args INST module name.
        'inst': b'(' + five + b'iZODB.POSException\nConflictError\n',
        # A subclass: the same __init__.
        'subclass': global_(b'ZODB.POSException', b'BTreesConflictError')
        + b'(' + b'NNNN' + b'tR' + b'0' + conflict + b'(' + five + b'tR',
    }


# -- the server ----------------------------------------------------------------

class FakeServer:
    """A scripted server; see the module docstring.

    ``respond(msgid, method, args)`` runs in the connection's thread.
    ``connections`` counts accepted connections, ``answers`` holds the
    handshake answers, ``requests`` the ``(method, args)`` decoded, and
    ``ended`` counts connections that have ended (either side closed).
    """

    def __init__(self, respond: Responder | None = None, *, greeting: bytes = b'Z5') -> None:
        self.respond = respond or (lambda msgid, method, args: None)
        self.greeting = greeting
        self.connections = 0
        self.ended = 0
        self.answers: list[bytes] = []
        self.requests: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket()
        self._listener.bind(('127.0.0.1', 0))
        self._listener.listen(16)
        self._listener.settimeout(0.05)  # accept() notices close()
        self.address = self._listener.getsockname()[:2]
        self._closed = False
        self._start(self._accept)

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.settimeout(None)
            with self._lock:
                if self._closed:
                    sock.close()
                    return
                self.connections += 1
                self._sockets.append(sock)
            self._start(self._serve, sock)

    def _serve(self, sock: socket.socket) -> None:
        try:
            self._send(sock, self.greeting)
            self.answers.append(self._read(sock))
            while True:
                message = self._read(sock)
                if self.greeting.startswith(b'M'):
                    msgid, _, method, args = msgpack.unpackb(message, use_list=False)
                else:
                    msgid, _, method, args = safe_loads(message, CONTAINER_GLOBALS)
                self.requests.append((method, args))
                for payload in self.respond(msgid, method, args) or ():
                    self._send(sock, payload)
        except (OSError, EOFError):
            pass
        finally:
            sock.close()
            with self._lock:
                self.ended += 1

    @staticmethod
    def _send(sock: socket.socket, payload: bytes) -> None:
        sock.sendall(struct.pack('>I', len(payload)) + payload)

    @staticmethod
    def _read(sock: socket.socket) -> bytes:
        def exactly(n: int) -> bytes:
            data = b''
            while len(data) < n:
                chunk = sock.recv(n - len(data))
                if not chunk:
                    raise EOFError
                data += chunk
            return data
        size, = struct.unpack('>I', exactly(4))
        return exactly(size)

    def methods(self) -> list[str]:
        return [method for method, _ in self.requests]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
        for thread in self._threads[:1]:
            thread.join(10)
        self._listener.close()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(10)


class DrivenClient:
    """A `Channel` greeted with *greeting*, fed frames by hand.

    ``call()`` sends a request and returns its message id; what the
    waiters got is in ``log`` as ``(msgid, 'result'|'error', value)``,
    what the handler heard in ``handler.events``.
    """

    def __init__(self, greeting: bytes = b'Z5', **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.handler = Handler()
        self.channel = Channel(self.loop, ('127.0.0.1', 1), self.handler,
                               limits=ProtocolLimits(), **options)
        self.adapter = ClientAdapter(self.channel)
        self.transport = Transport()
        self.adapter.connection_made(self.transport)
        self.log: list[tuple[Any, str, Any]] = []
        self._next = 1
        self.feed(greeting)

    def call(self, method: str = 'register', args: tuple[Any, ...] = ('1', False)) -> int:
        msgid = self._next
        self._next += 1
        future = self.channel.request(method, *args)
        future.add_done_callback(lambda f: self.log.append(
            (msgid, 'error', f.exception()) if f.exception() else (msgid, 'result', f.result())))
        return msgid

    def feed(self, payload: bytes) -> None:
        """Deliver one frame."""
        self.feed_bytes(struct.pack('>I', len(payload)) + payload)

    def feed_bytes(self, data: bytes) -> None:
        """Deliver *data*; then the loop turns once (settled futures call back)."""
        feed(self.adapter, data)
        self.loop.run_until_complete(asyncio.sleep(0))

    def outcome(self, msgid: int) -> tuple[str, Any] | None:
        for name, kind, value in self.log:
            if name == msgid:
                return kind, value
        return None

    def close(self) -> None:
        self.channel.close()
        self.loop.close()


def marker_in(directory: str) -> str:
    """The marker file's path in *directory* (not created)."""
    return os.path.join(directory, 'MARKER')
