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
  is read straight into buffers of its own, which ``receive_buffer``
  offers to the I/O layer (``received`` counts what arrived).

Memory grows with the bytes received, never with the bytes a header
announces: a peer that announces 64 MiB and sends 4 must not cost more
than a few.  So a large frame's buffers come in pieces: the bytes that
arrived before it went direct are the first, and each next piece is as
large as all that has arrived (``MIN_PIECE_SIZE`` at least), or the rest
of the frame if that is at most ``MIN_PIECE_SIZE`` more.  What the reader
holds for a frame is thus at most twice what arrived plus twice
``MIN_PIECE_SIZE``, at every moment.  A complete frame in several pieces
is joined once, the only copy of its bytes (the pieces and the frame
are held together for that moment, when all has arrived); a frame whose
rest fits in one piece gets one buffer and no copy.

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
    "BytesLike",
    "DIRECT_FRAME_SIZE",
    "FrameReader",
    "HEADER_SIZE",
    "MIN_PIECE_SIZE",
    "frame",
    "frame_header",
]

#: Size of the length prefix.
HEADER_SIZE = 4

#: Frames of at least this many payload bytes are read into buffers of
#: their own (see ``FrameReader.receive_buffer``).
DIRECT_FRAME_SIZE = 64 * 1024
#: Such a frame is read into pieces as large as what has arrived, and at
#: least this large; a smaller remainder joins the piece before it.
MIN_PIECE_SIZE = 64 * 1024

#: What ``feed`` accepts.
BytesLike = Union[bytes, bytearray, memoryview]

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
frame_bytes: Callable[[bytes], bytes] = _frame_bytes_py


def _piece_size(filled: int, rest: int) -> int:
    """The size of the next piece of a large frame of which *filled* bytes
    have arrived and *rest* are to come: at most ``2 * MIN_PIECE_SIZE``
    more than *filled* (see the module docstring)."""
    size = filled if filled > MIN_PIECE_SIZE else MIN_PIECE_SIZE
    return rest if rest <= size + MIN_PIECE_SIZE else size


def _next_message_py(
    reader: "FrameReader", unusual_size: int, decode: Callable[[Any], Any]
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


next_message: Callable[["FrameReader", int, Callable[[Any], Any]], Any] = _next_message_py

try:
    from ._speedups import frame as _frame_bytes_c
    from ._speedups import next_message as _next_message_c
except ImportError:  # pragma: no cover - built by every install we test
    pass
else:
    frame_bytes = _frame_bytes_c
    next_message = _next_message_c


@implementer(IFrameReader)
class FrameReader:
    """Incremental frame splitter.  See `IFrameReader`."""

    __slots__ = ("chunk", "pos", "max_frame_size", "_owned",
                 "_pieces", "_piece_filled", "_filled", "_total")

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
        #: A large frame being read in place (see receive_buffer): its
        #: pieces, all full but the last, of which _piece_filled bytes
        #: are filled; _filled of its _total bytes (header included)
        #: have arrived.
        self._pieces: Optional[list[Union[bytes, bytearray]]] = None
        self._piece_filled = 0
        self._filled = 0
        self._total = 0

    def feed(self, data: BytesLike) -> None:
        """See `IFrameReader`."""
        pieces = self._pieces
        if pieces is not None:
            self._feed_frame(pieces, data)
            return
        chunk = self.chunk
        pos = self.pos
        if pos == len(chunk):
            # Everything was read: start afresh with data itself.
            if data.__class__ is bytes:
                self.chunk = data  # immutable: no copy needed
            elif data.__class__ is memoryview:
                self.chunk = data.tobytes()
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
            assert isinstance(chunk, bytearray)  # _owned says so
            if pos:
                del chunk[:pos]
                self.pos = 0
            chunk += data

    def receive_buffer(self) -> Optional[memoryview]:
        """See `IFrameReader`."""
        pieces = self._pieces
        if pieces is None:
            if len(self.chunk) - self.pos < HEADER_SIZE:
                return None  # nothing held (every read of small messages)
            pieces = self._start_frame()
            if pieces is None:
                return None
        return self._free_space(pieces)

    def _free_space(self, pieces: list[Union[bytes, bytearray]]) -> memoryview:
        # The unfilled part of the last piece, or a new piece if it is full.
        last = pieces[-1]
        if self._piece_filled == len(last):
            last = bytearray(_piece_size(self._filled, self._total - self._filled))
            pieces.append(last)
            self._piece_filled = 0
        return memoryview(last)[self._piece_filled:]

    def _start_frame(self) -> Optional[list[Union[bytes, bytearray]]]:
        # Start reading the frame at chunk[pos:] in place, if it is large;
        # return its pieces, or None if it isn't.
        chunk = self.chunk
        pos = self.pos
        held = len(chunk) - pos
        if held < HEADER_SIZE:
            return None
        total = HEADER_SIZE + _unpack_header(chunk, pos)[0]
        if (total < HEADER_SIZE + DIRECT_FRAME_SIZE or held >= total
                or total - HEADER_SIZE > self.max_frame_size):
            return None
        # chunk[pos:] is the start of this frame and nothing else.
        pieces: list[Union[bytes, bytearray]]
        if _piece_size(held, total - held) == total - held:
            # The rest comes in one piece: one buffer for it all.
            whole = bytearray(total)
            whole[:held] = memoryview(chunk)[pos:]
            pieces = [whole]
        else:
            # What came is the first piece (as it is, or cut out of the
            # chunk); the next ones double the frame each time.
            pieces = [chunk[pos:] if pos else chunk]
        self._pieces = pieces
        self._piece_filled = self._filled = held
        self._total = total
        self.chunk = b""
        self.pos = 0
        self._owned = False
        return pieces

    def pin(self) -> None:
        """See `IFrameReader`."""
        self._owned = False

    def received(self, nbytes: int) -> None:
        """See `IFrameReader`."""
        pieces = self._pieces
        if pieces is None or not 0 <= nbytes <= len(pieces[-1]) - self._piece_filled:
            raise LocalProtocolError(
                f"received({nbytes}) without a receive_buffer() that large")
        self._piece_filled += nbytes
        self._filled += nbytes
        if self._filled == self._total:
            # Complete: the frame becomes the chunk.  A single buffer is
            # never resized (the I/O layer may still hold a view of it);
            # pieces are joined, the frame's only copy.
            self._pieces = None
            self.chunk = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            self.pos = 0

    def _feed_frame(self, pieces: list[Union[bytes, bytearray]], data: Any) -> None:
        # Fed the ordinary way while a frame is read in place (*pieces*).
        view = memoryview(data).cast("B")
        if len(view) <= self._total - self._filled:
            while view:
                target = self._free_space(pieces)
                size = min(len(target), len(view))
                target[:size] = view[:size]
                self.received(size)
                view = view[size:]
            return
        # More than the frame: back to one growable buffer.
        last = memoryview(pieces[-1])[:self._piece_filled]
        self.chunk = bytearray().join([*pieces[:-1], last, view])
        self._pieces = None
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
        return len(self.chunk) - self.pos + (self._filled if self._pieces is not None else 0)

    def __repr__(self) -> str:
        return (
            f"<FrameReader buffered={self.buffered}"
            f" max_frame_size={self.max_frame_size}>"
        )
