"""Sized-message framing: a 4-byte big-endian length, then the payload.

The length counts payload bytes only.  There is no checksum, padding or
keep-alive at this layer.  TCP delivers the stream in arbitrary pieces,
so ``FrameReader`` accepts bytes in any split -- one frame over many
``feed()`` calls, many frames in one -- and hands back whole payloads.

Buffering strategy (the hot path is one small frame per read):

* the unread input is ``chunk[pos:]``.  When everything before has been
  read, a fed ``bytes`` object becomes the chunk as it is (it can't
  change under us) and anything else is copied once into a new
  ``bytes``;
* a frame is cut out of the chunk with one slice -- the only copy
  between the caller's buffer and the decoder -- and ``pos`` moves past
  it, so coalesced frames cost one slice each;
* only when a frame is split across feeds does the rest go into a
  ``bytearray`` that later feeds extend (amortised O(1)); consumed bytes
  are dropped from its front when more arrives;
* a large frame (``DIRECT_FRAME_SIZE`` and up: blob chunks) in progress
  gets a ``bytearray`` of its full size, which ``receive_buffer`` offers
  to the I/O layer to read the rest into directly (``received`` counts
  what arrived).  It is allocated only once a sixteenth of the frame is
  there (``DIRECT_FRAME_SHARE``), so a peer that announces a big frame
  and stops can't make the reader allocate more than 16 times what it
  sent.

The length is checked against ``max_frame_size`` as soon as the 4 header
bytes are there, so an oversize frame is refused before we wait for (or
keep) its body.  Between two ``next_frame()`` calls the buffer holds at
most what the caller fed in between, which the I/O layer bounds by its
read size.
"""

from __future__ import annotations

import struct
from typing import Any
from typing import Callable
from typing import Optional
from typing import Union

from zope.interface import implementer

from .errors import LocalProtocolError
from .errors import RemoteProtocolError
from .interfaces import IFrameReader
from .limits import DEFAULT_MAX_FRAME_SIZE
from .limits import WIRE_MAX_FRAME_SIZE


__all__ = [
    "DIRECT_FRAME_SIZE",
    "FrameReader",
    "HEADER_SIZE",
    "frame",
    "frame_header",
]

#: Size of the length prefix.
HEADER_SIZE = 4

#: Frames of at least this many payload bytes may be read into a buffer
#: of their own (see ``FrameReader.receive_buffer``).
DIRECT_FRAME_SIZE = 64 * 1024
#: ... once 1/DIRECT_FRAME_SHARE of the frame has arrived.
DIRECT_FRAME_SHARE = 16

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


def _frame_bytes_py(payload: bytes) -> bytes:
    return _pack_header(len(payload)) + payload


#: ``frame`` for callers that have checked the size, and only for
#: ``bytes``: the connection's hot path.  Compiled when the helper is
#: built (one allocation instead of two).
frame_bytes = _frame_bytes_py


def _next_message_py(
    reader: "FrameReader", unusual_size: int, decode: Callable[[bytes], Any]
) -> Any:
    """Cut the next frame out of *reader* and return ``decode(payload)``.

    Returns ``None`` when the next frame isn't complete yet, and
    ``NotImplemented`` (leaving the reader as it was) when its header
    announces *unusual_size* bytes or more: frames to refuse or to decode
    in place, which the connection handles itself.  The connection's hot
    path; compiled when the helper is built.
    """
    chunk = reader.chunk
    pos = reader.pos
    if len(chunk) - pos < HEADER_SIZE:
        return None
    size = _unpack_header(chunk, pos)[0]
    if size >= unusual_size:
        return NotImplemented
    end = pos + HEADER_SIZE + size
    if len(chunk) < end:
        return None
    reader.pos = end
    return decode(chunk[pos + HEADER_SIZE:end])


next_message = _next_message_py

try:
    from ._speedups import frame as frame_bytes  # noqa: F811
    from ._speedups import next_message  # noqa: F811
except ImportError:  # pragma: no cover - built by every install we test
    pass


@implementer(IFrameReader)
class FrameReader:
    """Incremental frame splitter.  See `IFrameReader`."""

    __slots__ = ("chunk", "pos", "max_frame_size", "_owned", "_frame", "_filled")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        #: The unread input is ``chunk[pos:]``.  ``next_message`` (the
        #: connection's hot path) reads frames from them in place; see the
        #: module docstring.
        self.chunk: Union[bytes, bytearray] = b""
        self.pos = 0
        self.max_frame_size = max_frame_size
        #: Whether chunk is a bytearray that only feed() has seen, so
        #: that it may grow and shrink (nobody holds a view of it).
        self._owned = False
        #: A large frame being read in place (see receive_buffer), and
        #: how much of it has arrived.
        self._frame: Optional[bytearray] = None
        self._filled = 0

    def feed(self, data: bytes) -> None:
        """See `IFrameReader`."""
        if self._frame is not None:
            self._feed_frame(data)
            return
        chunk = self.chunk
        pos = self.pos
        if pos == len(chunk):
            # Everything was read: start afresh with data itself.
            kind = data.__class__
            if kind is bytes:
                self.chunk = data  # immutable: no copy needed
            elif kind is memoryview:
                self.chunk = data.tobytes()  # type: ignore[attr-defined]
            else:
                self.chunk = bytes(data)
            self.pos = 0
            self._owned = False
        elif not self._owned:
            # A frame continues: keep its start in a growable buffer.
            rest = bytearray(memoryview(chunk)[pos:])
            rest += data
            self.chunk = rest
            self.pos = 0
            self._owned = True
        else:
            if pos:
                del chunk[:pos]  # type: ignore[union-attr]
                self.pos = 0
            chunk += data  # type: ignore[operator]

    def receive_buffer(self) -> Optional[memoryview]:
        """See `IFrameReader`."""
        frame = self._frame
        if frame is None:
            chunk = self.chunk
            pos = self.pos
            held = len(chunk) - pos
            if held < HEADER_SIZE:
                return None
            total = HEADER_SIZE + _unpack_header(chunk, pos)[0]
            if (total < HEADER_SIZE + DIRECT_FRAME_SIZE or held >= total
                    or held * DIRECT_FRAME_SHARE < total
                    or total - HEADER_SIZE > self.max_frame_size):
                return None
            # chunk[pos:] is the start of this frame and nothing else.
            frame = self._frame = bytearray(total)
            frame[:held] = memoryview(chunk)[pos:]
            self._filled = held
            self.chunk = b""
            self.pos = 0
            self._owned = False
        return memoryview(frame)[self._filled:]

    def pin(self) -> None:
        """See `IFrameReader`."""
        self._owned = False

    def received(self, nbytes: int) -> None:
        """See `IFrameReader`."""
        frame = self._frame
        if frame is None or not 0 <= nbytes <= len(frame) - self._filled:
            raise LocalProtocolError(
                f"received({nbytes}) without a receive_buffer() that large")
        self._filled += nbytes
        if self._filled == len(frame):
            # Complete: the frame is the chunk, never resized (the I/O
            # layer may still hold a view of it).
            self._frame = None
            self.chunk = frame
            self.pos = 0

    def _feed_frame(self, data: Any) -> None:
        # Fed the ordinary way while a frame is read in place.
        frame = self._frame
        filled = self._filled
        size = len(data)
        if size <= len(frame) - filled:  # type: ignore[arg-type]
            frame[filled:filled + size] = data  # type: ignore[index]
            self.received(size)
            return
        # More than the frame: back to one growable buffer.
        rest = bytearray(memoryview(frame)[:filled])  # type: ignore[arg-type]
        rest += data
        self._frame = None
        self.chunk = rest
        self.pos = 0
        self._owned = True

    def next_frame(self) -> Optional[Union[bytes, bytearray]]:
        """See `IFrameReader`."""
        chunk = self.chunk
        pos = self.pos
        if len(chunk) - pos < HEADER_SIZE:
            return None
        size = _unpack_header(chunk, pos)[0]
        if size > self.max_frame_size:
            raise RemoteProtocolError(
                f"peer announced a {size}-byte frame; the limit is"
                f" {self.max_frame_size} bytes"
            )
        end = pos + HEADER_SIZE + size
        if len(chunk) < end:
            return None
        self.pos = end
        return chunk[pos + HEADER_SIZE:end]

    @property
    def buffered(self) -> int:
        """See `IFrameReader`."""
        return len(self.chunk) - self.pos + (self._filled if self._frame is not None else 0)

    def __repr__(self) -> str:
        return (
            f"<FrameReader buffered={self.buffered}"
            f" max_frame_size={self.max_frame_size}>"
        )
