"""A fault-injecting TCP proxy for tests, in the style of asyncpg's.

It sits between real clients and a real server on 127.0.0.1 and forwards
bytes both ways on its own event loop thread. Tests then inject faults into
every connection it carries:

- ``delay(seconds)``: hold each chunk that long before forwarding it;
- ``stall()`` / ``resume()``: stop forwarding (bytes queue up), then go on;
- ``cut_after(nbytes, direction)``: close both sides once that many more
  bytes went through in that direction ('up' client→server, 'down'
  server→client), typically in the middle of a frame;
- ``reset()``: abort every connection now (an RST, not a clean close);
- ``hold_after(frames, direction)`` / ``release()``: let each connection
  send its first *frames* whole ZEO frames in that direction, then hold
  what follows until released -- to stop a conversation at a known
  message rather than after some time.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from typing import Any, cast


class _Pipe:
    """One proxied connection: the two transports and the fault state."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.client: asyncio.Transport | None = None
        self.server: asyncio.Transport | None = None
        self.pending_to_server: list[bytes] = []
        #: Per direction: frames seen so far, and bytes held back.
        self.frames = {"up": _FrameCounter(), "down": _FrameCounter()}
        self.held: dict[str, list[bytes]] = {"up": [], "down": []}

    def close(self, abort: bool = False) -> None:
        for transport in (self.client, self.server):
            if transport is not None and not transport.is_closing():
                if abort:
                    sock = transport.get_extra_info("socket")
                    if sock is not None:
                        # Linger 0: the close sends an RST.
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                    transport.abort()
                else:
                    transport.close()
        self.proxy.pipes.discard(self)


class _FrameCounter:
    """Counts whole frames (a 4-byte big-endian length, then the payload)
    in a byte stream that arrives in arbitrary pieces."""

    def __init__(self) -> None:
        self.count = 0
        self._header = b""
        self._remaining = 0

    def passable(self, data: bytes, limit: int) -> int:
        """How many leading bytes of *data* belong to the first *limit*
        frames (counting them as seen)."""
        position, size = 0, len(data)
        while position < size and self.count < limit:
            if self._remaining == 0 and len(self._header) < 4:
                take = min(4 - len(self._header), size - position)
                self._header += data[position:position + take]
                position += take
                if len(self._header) == 4:
                    self._remaining = int.from_bytes(self._header, "big")
                    if self._remaining == 0:
                        self._frame_done()
                continue
            take = min(self._remaining, size - position)
            position += take
            self._remaining -= take
            if self._remaining == 0:
                self._frame_done()
        return position

    def _frame_done(self) -> None:
        self.count += 1
        self._header = b""


class _Side(asyncio.Protocol):
    def __init__(self, pipe: _Pipe, direction: str) -> None:
        self.pipe = pipe
        self.direction = direction   # where received bytes go: 'up' or 'down'

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)  # a TCP connection's
        if self.direction == "up":
            self.pipe.client = stream
        else:
            self.pipe.server = stream

    def data_received(self, data: bytes) -> None:
        self.pipe.proxy._forward(self.pipe, self.direction, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.close()


class FaultProxy:
    """Proxy 127.0.0.1:<port> to *target*; start with `start`, end with `stop`."""

    #: The listener, set by `start`.
    _server: asyncio.Server

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.pipes: set[_Pipe] = set()
        self.address: tuple[str, int] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="fault proxy")
        self._delay = 0.0
        self._stalled = False
        self._stalled_chunks: list[tuple[_Pipe, str, bytes]] = []
        self._cut: dict[str, int | None] = {"up": None, "down": None}
        self._hold: dict[str, int | None] = {"up": None, "down": None}

    # -- life cycle (called from the test thread) ---------------------------------

    def start(self) -> tuple[str, int]:
        self._thread.start()
        self._server = self._run(self._loop.create_server(self._accept, "127.0.0.1", 0))
        self.address = self._server.sockets[0].getsockname()[:2]
        return self.address

    def stop(self) -> None:
        self._call(self._close_all, False)
        self._server.close()
        self._run(self._server.wait_closed())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    def _call(self, function: Any, *args: Any) -> None:
        async def call() -> None:
            function(*args)
        self._run(call())

    # -- faults --------------------------------------------------------------------

    def delay(self, seconds: float) -> None:
        self._delay = seconds

    def stall(self) -> None:
        self._call(setattr, self, "_stalled", True)

    def resume(self) -> None:
        self._call(self._resume)

    def cut_after(self, nbytes: int, direction: str = "up") -> None:
        if direction not in self._cut:
            raise ValueError("direction is 'up' (to the server) or 'down' (to the client)")
        self._call(self._cut.__setitem__, direction, nbytes)

    def reset(self) -> None:
        self._call(self._close_all, True)

    def hold_after(self, frames: int, direction: str = "up") -> None:
        """Hold each connection's bytes in *direction* after its first
        *frames* frames that way (counted from the connection's start: set
        this before the connections it is meant for are made)."""
        if direction not in self._hold:
            raise ValueError("direction is 'up' (to the server) or 'down' (to the client)")
        self._call(self._hold.__setitem__, direction, frames)

    def release(self) -> None:
        """Stop holding (see `hold_after`); deliver what was held, in order."""
        self._call(self._release)

    @property
    def connections(self) -> int:
        return len(self.pipes)

    # -- the loop side ----------------------------------------------------------------

    def _accept(self) -> _Side:
        pipe = _Pipe(self)
        self.pipes.add(pipe)
        side = _Side(pipe, "up")

        async def connect_upstream() -> None:
            try:
                server, _ = await self._loop.create_connection(
                    lambda: _Side(pipe, "down"), *self.target)
            except OSError:
                pipe.close()
                return
            for chunk in pipe.pending_to_server:
                server.write(chunk)   # pipe.server
            pipe.pending_to_server.clear()

        self._loop.create_task(connect_upstream())
        return side

    def _forward(self, pipe: _Pipe, direction: str, data: bytes) -> None:
        limit = self._hold[direction]
        if limit is not None:
            held = pipe.held[direction]
            if not held:
                passing = pipe.frames[direction].passable(data, limit)
                data, rest = data[:passing], data[passing:]
                if rest:
                    held.append(rest)
            else:
                held.append(data)
                return
            if not data:
                return
        if self._stalled:
            self._stalled_chunks.append((pipe, direction, data))
            return
        if self._delay:
            self._loop.call_later(self._delay, self._deliver, pipe, direction, data)
        else:
            self._deliver(pipe, direction, data)

    def _deliver(self, pipe: _Pipe, direction: str, data: bytes) -> None:
        budget = self._cut[direction]
        cut = budget is not None and len(data) >= budget
        if budget is not None:
            data = data[:budget]
            self._cut[direction] = None if cut else budget - len(data)
        target = pipe.server if direction == "up" else pipe.client
        if target is None and direction == "up":
            pipe.pending_to_server.append(data)
        elif target is not None and not target.is_closing():
            target.write(data)
        if cut:
            pipe.close()

    def _resume(self) -> None:
        self._stalled = False
        chunks, self._stalled_chunks = self._stalled_chunks, []
        for pipe, direction, data in chunks:
            self._forward(pipe, direction, data)

    def _release(self) -> None:
        self._hold = {"up": None, "down": None}
        for pipe in list(self.pipes):
            for direction, held in pipe.held.items():
                chunks, held[:] = list(held), []
                for data in chunks:
                    self._forward(pipe, direction, data)

    def _close_all(self, abort: bool) -> None:
        for pipe in list(self.pipes):
            pipe.close(abort)
