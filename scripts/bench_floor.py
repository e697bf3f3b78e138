#!/usr/bin/env python
"""The floor: a length-prefixed echo over 127.0.0.1, microseconds per round trip.

No ZEO at all, only what any client-server pair on this machine must pay
per small request and reply:

* ``blocking``: a blocking-socket server in a thread, a blocking client
  in the main thread of the same process;
* ``blocking_server_cpu``: the CPU time (utime + stime) per round trip of
  the same blocking server run in a process of its own, against the same
  client: what serving one small request costs with no event loop at all;
* ``asyncio``: an asyncio server in another process, an asyncio client
  (a Protocol resolving one future per reply) in this one;
* ``asyncio_server_blocking_client``: the same asyncio server, a blocking
  client: the least a client can pay against an asyncio server;
* ``asyncio_server_cpu``: the asyncio server's CPU time (utime + stime)
  per round trip during that last run;
* ``asyncio_buffered`` and ``asyncio_buffered_server_cpu``: the same two
  asyncio measurements with ``asyncio.BufferedProtocol`` on both sides,
  reading into one reused buffer.  A plain ``asyncio.Protocol`` gets a new
  bytes object of 256 KiB per read (asyncio's read size), shrunk to what
  arrived; with glibc that maps and unmaps memory on every read until the
  process happens to raise its mmap threshold, which this echo never does.
  The buffered figures are the floor to aim at.
* ``uvloop_buffered`` and ``uvloop_buffered_server_cpu``: the same with
  uvloop's event loop on both sides (the loop zeo runs on by default);
  only when uvloop can be imported.

Each message is a 4-byte big-endian length and a 40-byte body (about a
msgpack ``ping`` call).  Prints one JSON line, median of ``--repeat``
batches.  Stdlib only (uvloop is used if it is there).

Usage: python scripts/bench_floor.py [--count N] [--repeat R]
"""
import argparse
import asyncio
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

BODY = b'x' * 40
MESSAGE = struct.pack('>I', len(BODY)) + BODY


def recv_exactly(sock, size):
    data = b''
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError('closed')
        data += chunk
    return data


def blocking_echo_server(listener):
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn:
        try:
            while True:
                (size,) = struct.unpack('>I', recv_exactly(conn, 4))
                body = recv_exactly(conn, size)
                conn.sendall(struct.pack('>I', size) + body)
        except ConnectionError:
            pass


def blocking_client(address, count, repeat):
    sock = socket.create_connection(address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    with sock:
        for _ in range(count // 10):               # warm up
            sock.sendall(MESSAGE)
            recv_exactly(sock, len(MESSAGE))
        for _ in range(repeat):
            started = time.perf_counter()
            for _ in range(count):
                sock.sendall(MESSAGE)
                (size,) = struct.unpack('>I', recv_exactly(sock, 4))
                recv_exactly(sock, size)
            times.append((time.perf_counter() - started) / count)
    return statistics.median(times) * 1e6


def blocking_floor(count, repeat):
    listener = socket.create_server(('127.0.0.1', 0))
    thread = threading.Thread(target=blocking_echo_server, args=(listener,),
                              daemon=True)
    thread.start()
    try:
        return blocking_client(listener.getsockname(), count, repeat)
    finally:
        listener.close()
        thread.join(5)


class EchoServer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b''
        transport.get_extra_info('socket').setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        buffer = self.buffer + data
        while len(buffer) >= 4:
            (size,) = struct.unpack_from('>I', buffer)
            if len(buffer) < 4 + size:
                break
            self.transport.write(buffer[:4 + size])
            buffer = buffer[4 + size:]
        self.buffer = buffer


class BufferedEchoServer(asyncio.BufferedProtocol):
    """The same echo, reading into one reused buffer (``recv_into``)
    instead of a new 256 KiB bytes object per read."""

    def connection_made(self, transport):
        self.transport = transport
        self.buffer = bytearray(1 << 16)       # the messages here are small
        self.filled = 0
        transport.get_extra_info('socket').setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get_buffer(self, sizehint):
        return memoryview(self.buffer)[self.filled:]

    def buffer_updated(self, nbytes):
        self.filled += nbytes
        for frame in take_frames(self):
            self.transport.write(frame)


def take_frames(protocol):
    """Complete frames (header included) out of a buffered protocol's
    bytearray; the rest moves to its start."""
    buffer, start, filled = protocol.buffer, 0, protocol.filled
    frames = []
    while filled - start >= 4:
        (size,) = struct.unpack_from('>I', buffer, start)
        if filled - start < 4 + size:
            break
        frames.append(bytes(buffer[start:start + 4 + size]))
        start += 4 + size
    if start:
        buffer[:filled - start] = buffer[start:filled]
        protocol.filled = filled - start
    return frames


def have_uvloop():
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run_loop(coroutine, kind):
    """asyncio.run(coroutine), on uvloop's loop for the ``uvloop`` kinds."""
    if kind.startswith('uvloop'):
        import uvloop
        return uvloop.run(coroutine)
    return asyncio.run(coroutine)


def serve_asyncio(kind):
    """Child process: serve on a free port, print it, run until stdin closes."""
    factory = EchoServer if kind == 'plain' else BufferedEchoServer

    async def run():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(factory, '127.0.0.1', 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
        server.close()
    run_loop(run(), kind)


class EchoClient(asyncio.Protocol):
    def __init__(self):
        self.buffer = b''
        self.waiting = None

    def connection_made(self, transport):
        self.transport = transport
        transport.get_extra_info('socket').setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        buffer = self.buffer + data
        while len(buffer) >= 4:
            (size,) = struct.unpack_from('>I', buffer)
            if len(buffer) < 4 + size:
                break
            body, buffer = buffer[4:4 + size], buffer[4 + size:]
            self.waiting.set_result(body)
        self.buffer = buffer

    def call(self):
        self.waiting = asyncio.get_running_loop().create_future()
        self.transport.write(MESSAGE)
        return self.waiting


class BufferedEchoClient(asyncio.BufferedProtocol):
    """EchoClient reading into one reused buffer."""

    connection_made = BufferedEchoServer.connection_made
    get_buffer = BufferedEchoServer.get_buffer
    call = EchoClient.call

    def buffer_updated(self, nbytes):
        self.filled += nbytes
        for frame in take_frames(self):
            self.waiting.set_result(frame[4:])


def asyncio_client(port, count, repeat, protocol=EchoClient, kind='plain'):
    async def run():
        loop = asyncio.get_running_loop()
        transport, client = await loop.create_connection(
            protocol, '127.0.0.1', port)
        for _ in range(count // 10):
            await client.call()
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            for _ in range(count):
                await client.call()
            times.append((time.perf_counter() - started) / count)
        transport.close()
        return statistics.median(times) * 1e6
    return run_loop(run(), kind)


def serve_blocking():
    """Child process: print a free port, echo one connection until it ends."""
    listener = socket.create_server(('127.0.0.1', 0))
    print(listener.getsockname()[1], flush=True)
    with listener:
        blocking_echo_server(listener)


def process_cpu_seconds(pid):
    """utime + stime of a process, from /proc/<pid>/stat (Linux)."""
    with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def asyncio_server(kind):
    # bin/py's eggs (uvloop) reach the child through its path.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), '--serve-asyncio', kind],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def blocking_server_cpu(count, repeat, round_trips):
    server = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), '--serve-blocking'],
        stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        cpu_before = process_cpu_seconds(server.pid)
        blocking_client(('127.0.0.1', port), count, repeat)
        cpu = process_cpu_seconds(server.pid) - cpu_before
    finally:
        server.wait(10)          # it ends when the client's socket closes
    return cpu / round_trips * 1e6


def measure(count=5000, repeat=5):
    results = {'blocking': blocking_floor(count, repeat)}
    round_trips = count // 10 + count * repeat     # warm-up included
    results['blocking_server_cpu'] = blocking_server_cpu(count, repeat, round_trips)
    server = asyncio_server('plain')
    try:
        port = int(server.stdout.readline())
        results['asyncio'] = asyncio_client(port, count, repeat)
        cpu_before = process_cpu_seconds(server.pid)
        results['asyncio_server_blocking_client'] = blocking_client(
            ('127.0.0.1', port), count, repeat)
        cpu = process_cpu_seconds(server.pid) - cpu_before
        results['asyncio_server_cpu'] = cpu / round_trips * 1e6
    finally:
        server.stdin.close()
        server.wait(10)
    kinds = ['buffered'] + (['uvloop'] if have_uvloop() else [])
    for kind in kinds:
        name = 'asyncio_buffered' if kind == 'buffered' else 'uvloop_buffered'
        server = asyncio_server(kind)
        try:
            port = int(server.stdout.readline())
            results[name] = asyncio_client(
                port, count, repeat, BufferedEchoClient, kind)
            cpu_before = process_cpu_seconds(server.pid)
            blocking_client(('127.0.0.1', port), count, repeat)
            cpu = process_cpu_seconds(server.pid) - cpu_before
            results[f'{name}_server_cpu'] = cpu / round_trips * 1e6
        finally:
            server.stdin.close()
            server.wait(10)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--count', type=int, default=5000,
                        help='round trips per batch')
    parser.add_argument('--repeat', type=int, default=5, help='batches')
    parser.add_argument('--serve-asyncio', choices=['plain', 'buffered', 'uvloop'],
                        help=argparse.SUPPRESS)
    parser.add_argument('--serve-blocking', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_blocking:
        serve_blocking()
        return
    if args.serve_asyncio:
        serve_asyncio(args.serve_asyncio)
        return
    print(json.dumps({'floor_us': measure(args.count, args.repeat)}), flush=True)


if __name__ == '__main__':
    main()
