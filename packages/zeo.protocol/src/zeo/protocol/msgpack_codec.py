"""Encoding ``M``: msgpack, exactly as the reference marshals it.

* Packing uses ``use_bin_type=True``: ``bytes`` become msgpack *bin*,
  ``str`` become msgpack *str*.  Tuples and lists both become arrays.
* Unpacking uses ``raw=False, use_list=False``: *str* decodes to
  ``str``, *bin* to ``bytes`` and **every array to a tuple** (so a
  ``vote`` result of ``[]`` arrives as ``()``).  Map keys must be str or
  bytes (msgpack's default ``strict_map_key``, as in the reference).
* msgpack can't represent sets, arbitrary objects or ints >= 2**64;
  encoding those raises ``EncodeError``.

Two deliberate differences from the reference, both on input we never
see from real peers: trailing bytes after the message are refused (the
reference does too, by accident of ``unpackb``), and msgpack *ext* types
are refused instead of being turned into ``ExtType`` objects.  The
timestamp extension (type -1) is decoded by msgpack itself into a
``msgpack.Timestamp`` before any hook runs; it is harmless and left as
is.

One ``Packer`` is reused for all messages (``packb`` builds a new one per
call, which is more than half of its cost for small messages).  A Packer
never shrinks its buffer: after one 50 MB record it would hold 50 MB for
the life of the connection.  So it starts small (``PACKER_BUFFER_SIZE``)
and ``shed_buffer()`` replaces it after a message that made it grow.

Blob chunks are the large messages, and their chunk is the last argument
of a call.  ``encode_pieces`` encodes such a call with an empty last
argument (msgpack writes it as a 2-byte empty *bin*, at the very end) and
swaps that for the *bin* header of the real chunk, which follows as a
piece of its own: the chunk is never copied into the Packer, out of it,
or into a frame.  ``decode_chunk_message`` is the way back: a blob chunk
message is decoded without its chunk, which the event then carries as a
``memoryview`` of the received payload instead of a copy.
"""

from __future__ import annotations

from typing import Any
from typing import NoReturn

import struct

import msgpack
from zope.interface import implementer

from .errors import EncodeError
from .errors import LocalProtocolError
from .errors import RemoteProtocolError
from .events import MESSAGE_TYPES
from .events import Call
from .events import OneWayCall
from .events import Message
from .events import message_from_wire
from .interfaces import ICodec


__all__ = ["MsgpackCodec"]

_unpackb = msgpack.unpackb

#: The Packer's initial buffer; messages up to this size never make it grow.
PACKER_BUFFER_SIZE = 64 * 1024

#: A ``bytes`` argument of at least this size, last in a call, is not
#: copied by ``encode_pieces``.  At least 64 KiB, so that msgpack's own
#: encoding of it would use the *bin 32* header that takes its place.
SEPARATE_ARGUMENT_SIZE = 64 * 1024

_BIN32_HEADER = struct.Struct(">BI")
_tuple_new = tuple.__new__
_CALLS = (Call, OneWayCall)

#: The one-way calls whose last argument, a blob chunk, is handed over as
#: a view of the received payload (see ``decode_chunk_message``).
CHUNK_METHODS = frozenset({"receiveBlobChunk", "storeBlobChunk"})
#: Where ``decode_chunk_message`` looks for the chunk's header: the head
#: of a chunk message (id, flag, name, oid, serial) is about 50 bytes.
CHUNK_HEAD_LIMIT = 256


def _check_message(event: Any) -> None:
    if type(event) not in MESSAGE_TYPES:
        raise LocalProtocolError(
            f"{type(event).__name__} is not a message and can't be encoded"
        )


def _refuse_ext(code: int, data: bytes) -> NoReturn:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def _unpack_wire(payload: Any) -> Any:
    return _unpackb(payload, raw=False, use_list=False, ext_hook=_refuse_ext)


def _decode_message_py(payload: Any) -> Message:
    return message_from_wire(_unpack_wire(payload))


#: ``decode`` without the translation of errors (see `ICodec`); compiled
#: when the helper is built: the same two calls without their Python frames.
decode_message = _decode_message_py

try:
    from . import _speedups
except ImportError:  # pragma: no cover - built by every install we test
    pass
else:
    _speedups.configure_msgpack(_unpackb, _refuse_ext)
    decode_message = _speedups.decode_msgpack  # noqa: F811


def _chunk_message(head: bytes, chunk: memoryview) -> Message | None:
    # The payload is head, a bin 32 header and chunk, up to its end.  Decode
    # head with an empty bin in the chunk's place: msgpack reads left to
    # right, so if that is a chunk message ending with the empty bin, the
    # payload is the same message with the chunk.
    try:
        event = message_from_wire(_unpack_wire(head + b"\xc4\x00"))
    except Exception:
        return None  # the caller decodes the whole payload and says why
    args = event[3]
    if type(event) is not OneWayCall or event[2] not in CHUNK_METHODS or args[-1:] != (b"",):
        return None
    return _tuple_new(OneWayCall, (event[0], event[1], event[2], args[:-1] + (chunk,)))


@implementer(ICodec)
class MsgpackCodec:
    """The ``M`` codec.  See `ICodec`."""

    __slots__ = ("_pack", "encode_unchecked")

    encoding = "M"
    name = "msgpack"

    #: A message larger than this grew the buffer (see `shed_buffer`).
    kept_buffer_size = PACKER_BUFFER_SIZE

    def __init__(self) -> None:
        self.shed_buffer()

    def shed_buffer(self) -> None:
        """See `ICodec`."""
        self._pack = msgpack.Packer(
            use_bin_type=True, buf_size=PACKER_BUFFER_SIZE).pack
        #: ``encode`` minus the event type check, for callers that have
        #: already checked (the connection); may raise any exception.
        self.encode_unchecked = self._pack

    def encode(self, event: Message) -> bytes:
        """See `ICodec`."""
        _check_message(event)
        try:
            payload = self._pack(event)
        except Exception as exc:
            # The Packer resets its buffer on failure, so it stays usable.
            raise EncodeError(f"can't encode {type(event).__name__}: {exc}") from exc
        if len(payload) > PACKER_BUFFER_SIZE:
            self.shed_buffer()
        return payload

    def encode_pieces(self, event: Message) -> tuple[bytes, ...]:
        """See `ICodec`.  (The caller sheds the buffer: see
        ``kept_buffer_size``.)"""
        _check_message(event)
        try:
            args = event[3]
            if type(event) in _CALLS and type(args) is tuple and args:
                last = args[-1]
                if type(last) is bytes and len(last) >= SEPARATE_ARGUMENT_SIZE:
                    head = self._pack(_tuple_new(type(event), (
                        event[0], event[1], event[2], args[:-1] + (b"",))))
                    # The empty bin is the payload's last 2 bytes.
                    return (head[:-2] + _BIN32_HEADER.pack(0xC6, len(last)), last)
            return (self._pack(event),)
        except Exception as exc:
            raise EncodeError(f"can't encode {type(event).__name__}: {exc}") from exc

    #: See `ICodec`.  (A plain function: the connection calls it per
    #: message, and a bound method would cost one more call.)
    decode_message = staticmethod(decode_message)

    def decode_chunk_message(self, payload: memoryview) -> Message | None:
        """See `ICodec`."""
        size = len(payload)
        if size < SEPARATE_ARGUMENT_SIZE:
            return None
        head = payload[:CHUNK_HEAD_LIMIT].tobytes()
        at = head.find(b"\xc6")
        while 0 <= at <= len(head) - 5:
            if _BIN32_HEADER.unpack_from(head, at)[1] == size - at - 5:
                return _chunk_message(head[:at], payload[at + 5:])
            at = head.find(b"\xc6", at + 1)
        return None

    def decode(self, payload: Any) -> Message:
        """See `ICodec`."""
        try:
            msg = _unpack_wire(payload)
        except Exception as exc:
            raise RemoteProtocolError(
                f"undecodable msgpack message: {type(exc).__name__}: {exc}"
            ) from None
        return message_from_wire(msg)

    def __repr__(self) -> str:
        return "<MsgpackCodec 'M'>"
