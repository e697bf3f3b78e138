"""The asyncio protocol of one client connection: asyncio's events, handed
to the `Channel` (the server's ``zeo.server.adapter`` plays this role for
each of its connections).

Input arrives through ``asyncio.BufferedProtocol`` into a buffer the
channel allocated once: with plain ``asyncio.Protocol`` the loop
allocates a 256 KiB ``bytes`` per read, and glibc serves that with
``mmap``/``munmap`` on every reply.  In baton mode (see
``zeo.client.connections``) the transport stops reading after the first
turn of the loop and only writes.
"""
from __future__ import annotations

import asyncio
from typing import Any

from zeo.client.connections.channel import Channel

__all__ = ['ClientAdapter']


class ClientAdapter(asyncio.BufferedProtocol):
    """asyncio's side of *channel*; nothing here but forwarding."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def __repr__(self) -> str:
        return f'<ClientAdapter {self.channel!r}>'

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.channel.attach(transport)

    def get_buffer(self, sizehint: int) -> Any:
        return self.channel.input_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.channel.received(nbytes)

    def eof_received(self) -> bool:
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.channel.connection_lost(exc)

    def pause_writing(self) -> None:
        self.channel.pause_writing()

    def resume_writing(self) -> None:
        self.channel.resume_writing()
