"""A client's memory grows with the bytes its server sends, never with the
sizes the server's frame headers announce.

A fake server on a loopback socket greets a real `ClientStorage`, waits
for its ``register`` call, then announces a 64 MiB frame and sends 4.5 MiB
of it.  The client's frame reader used to allocate the whole frame once a
sixteenth of it was there; now what it holds follows what arrived.
Measured with tracemalloc in this process, where the client's loop
thread does the reading.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
import unittest

from zeo.client.storage import ClientStorage
from zeo.client.tests.support import wait_until
from zeo.protocol.framing import frame, frame_header
from zeo.protocol.tests.support import TracedMemory

#: What the fake server announces (the default maximum frame size) ...
ANNOUNCED = 64 << 20
#: ... and what it sends: a sixteenth of it, and more.
SENT = (4 << 20) + (512 << 10)


def read_frame(sock: socket.socket) -> bytes:
    """One frame's payload from *sock*."""
    def read(size: int) -> bytes:
        data = b''
        while len(data) < size:
            piece = sock.recv(size - len(data))
            if not piece:
                raise ConnectionError('the client went away')
            data += piece
        return data
    return read(struct.unpack('>I', read(4))[0])


class FakeServer:
    """Greets one client, takes its handshake and ``register`` call, then
    sends `ANNOUNCED`'s header and `SENT` bytes once `send` is set."""

    def __init__(self) -> None:
        self.listener = socket.create_server(('127.0.0.1', 0))
        self.address = self.listener.getsockname()
        self.registered = threading.Event()
        self.send = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        try:
            self.listener.settimeout(30)
            sock, _ = self.listener.accept()
            with sock:
                sock.settimeout(30)
                sock.sendall(frame(b'M5'))
                read_frame(sock)  # the client's protocol
                read_frame(sock)  # its register call
                self.registered.set()
                self.send.wait(30)
                sock.sendall(frame_header(ANNOUNCED) + b'b' * SENT)
                self.done.wait(30)
        except BaseException as error:  # reported by the test
            self.error = error
            self.registered.set()

    def close(self) -> None:
        self.send.set()
        self.done.set()
        self.thread.join(30)
        self.listener.close()


class AnnouncedFrameTests(unittest.TestCase):

    def test_a_frame_announced_at_64_mib_costs_what_was_sent(self):
        server = FakeServer()
        self.addCleanup(server.close)
        storage = ClientStorage(server.address, wait=False)
        self.addCleanup(storage.close)
        self.assertTrue(server.registered.wait(30))
        self.assertIsNone(server.error)
        [channel] = storage._manager._channels
        reader = channel._connection._reader
        with TracedMemory() as memory:
            server.send.set()
            wait_until(lambda: reader.buffered >= 4 + SENT, message='all sent read')
            time.sleep(0.1)  # the loop asks for its next buffer
            peak = memory.peak()
        self.assertIsNone(server.error)
        self.assertLess(peak, 3 * SENT + (1 << 20),
                        f'{peak >> 20} MiB for {SENT >> 10} KiB received')


if __name__ == '__main__':
    unittest.main()
