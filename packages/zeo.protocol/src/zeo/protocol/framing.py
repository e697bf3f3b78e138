"""Sized-message framing: a 4-byte big-endian length, then the payload.

The length counts payload bytes only.  There is no checksum, padding or
keep-alive at this layer.  TCP delivers the stream in arbitrary pieces,
so ``FrameReader`` accepts bytes in any split -- one frame over many
``feed()`` calls, many frames in one -- and hands back whole payloads.

Buffering strategy (the hot path is one small frame per read):

* incoming bytes are appended to one ``bytearray`` (amortised O(1));
* a complete frame is cut out with one slice -- the only copy the
  reader makes -- and the consumed prefix is deleted from the front,
  which CPython does by moving the buffer's start pointer, not by
  copying what follows; coalesced frames are drained by calling
  ``next_frame()`` in a loop.

The length is checked against ``max_frame_size`` as soon as the 4 header
bytes are there, so an oversize frame is refused before we wait for (or
keep) its body.  Between two ``next_frame()`` calls the buffer holds at
most what the caller fed in between, which the I/O layer bounds by its
read size.
"""

from __future__ import annotations

import struct
from typing import Optional

from zope.interface import implementer

from .errors import LocalProtocolError
from .errors import RemoteProtocolError
from .interfaces import IFrameReader
from .limits import DEFAULT_MAX_FRAME_SIZE
from .limits import WIRE_MAX_FRAME_SIZE


__all__ = [
    "FrameReader",
    "HEADER_SIZE",
    "frame",
    "frame_header",
]

#: Size of the length prefix.
HEADER_SIZE = 4

_HEADER = struct.Struct(">I")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from


def frame_header(size: int) -> bytes:
    """Return the 4-byte prefix announcing a payload of *size* bytes.

    Useful to write header and payload separately (``writelines``)
    without concatenating a big payload.
    """
    if not 0 <= size <= WIRE_MAX_FRAME_SIZE:
        raise LocalProtocolError(
            f"a frame can carry 0 to {WIRE_MAX_FRAME_SIZE} bytes, not {size}"
        )
    return _pack_header(size)


def frame(payload: bytes) -> bytes:
    """Return *payload* with its length prefix, ready to write."""
    size = len(payload)
    if size > WIRE_MAX_FRAME_SIZE:
        raise LocalProtocolError(
            f"a frame can carry at most {WIRE_MAX_FRAME_SIZE} bytes, not {size}"
        )
    return _pack_header(size) + payload


@implementer(IFrameReader)
class FrameReader:
    """Incremental frame splitter.  See `IFrameReader`."""

    __slots__ = ("buffer", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        #: The bytes received and not yet cut into frames.  The connection's
        #: hot path appends to it and cuts frames from it in place (one
        #: Python call less per message than ``feed``/``next_frame``).
        self.buffer = bytearray()
        self.max_frame_size = max_frame_size

    def feed(self, data: bytes) -> None:
        """See `IFrameReader`."""
        self.buffer += data

    def next_frame(self) -> Optional[bytearray]:
        """See `IFrameReader`."""
        buf = self.buffer
        have = len(buf)
        if have < HEADER_SIZE:
            return None
        size = _unpack_header(buf)[0]
        if size > self.max_frame_size:
            raise RemoteProtocolError(
                f"peer announced a {size}-byte frame; the limit is"
                f" {self.max_frame_size} bytes"
            )
        end = size + HEADER_SIZE
        if have < end:
            return None
        payload = buf[HEADER_SIZE:end]
        del buf[:end]
        return payload

    @property
    def buffered(self) -> int:
        """See `IFrameReader`."""
        return len(self.buffer)

    def __repr__(self) -> str:
        return (
            f"<FrameReader buffered={len(self.buffer)}"
            f" max_frame_size={self.max_frame_size}>"
        )
