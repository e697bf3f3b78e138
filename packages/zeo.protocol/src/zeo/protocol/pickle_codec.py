"""Encoding ``Z``: pickle protocol 3, as the reference marshals it.

Output: a C ``pickle.Pickler`` at protocol 3 in *fast* mode (no memo
opcodes), each message pickled from scratch into a reused buffer.  That
reproduces the reference's bytes exactly: ``bytes`` become
``SHORT_BINBYTES``/``BINBYTES``, ``str`` ``BINUNICODE``, the 4-tuple
``MARK ... TUPLE``, booleans ``NEWTRUE``/``NEWFALSE``.  ZEO's own
clients and servers pickle the same way (protocol 3, fast mode), and read
any protocol.

Input: the restricted unpickler of ``zeo.protocol.safe_unpickle``, with
an explicit allow-list of globals -- by default
``server_pickle_globals()`` on a server (``ZopeUndo.Prefix`` if
installed) and nothing on a client.  Unlike msgpack, pickle keeps lists
as lists, so a decoded reply may contain lists where msgpack would give
tuples.

Everything a server sends must pickle without globals, or our own
client (and anybody with a sane allow-list) will refuse it; exception
payloads are flattened to plain values for that reason (see
``remote_errors``).

Blob chunks, as with msgpack, are not copied on their way through (see
``msgpack_codec``).  In a fast-mode pickle of a call whose last argument
is ``bytes``, that argument is the ``BINBYTES`` opcode -- ``B``, its
length as 4 bytes little-endian, then the raw bytes -- followed by 3
closing opcodes: the args tuple's (``TUPLE1``..``TUPLE3`` or ``TUPLE``),
the message's ``TUPLE`` and ``STOP``.  ``encode_pieces`` pickles the call
with an empty last argument (``SHORT_BINBYTES`` ``C\\x00``, 5 bytes from
the end) and returns the head with a ``BINBYTES`` header in its place,
the chunk itself and the 3 closing bytes: the bytes of ``encode``, in
three pieces.  ``decode_chunk_message`` reverses that: it finds the
``BINBYTES`` header whose length runs to 3 bytes before the end, and
decodes the head and the closing bytes, with an empty chunk in between,
through the same restricted unpickler as any payload; the chunk's own
bytes are never read as opcodes.  If the result is a one-way chunk call
ending with that empty chunk, the event carries the chunk as a
``memoryview`` of the payload instead.  A peer that builds a payload for
which the full decode would disagree gains nothing: the result is a
well-formed chunk message it could have sent as such.
"""

from __future__ import annotations

import io
import pickle
import struct
from typing import Any
from typing import Optional

from zope.interface import implementer

from .errors import EncodeError
from .errors import LocalProtocolError
from .events import MESSAGE_TYPES
from .events import Call
from .events import Message
from .events import OneWayCall
from .events import message_from_wire
from .interfaces import ICodec
from .limits import DEFAULT_LIMITS
from .limits import ProtocolLimits
from .limits import WIRE_MAX_FRAME_SIZE
from .msgpack_codec import CHUNK_HEAD_LIMIT
from .msgpack_codec import CHUNK_METHODS
from .msgpack_codec import SEPARATE_ARGUMENT_SIZE
from .safe_unpickle import AllowedGlobals
from .safe_unpickle import make_loads


__all__ = ["PICKLE_PROTOCOL", "PickleCodec"]

#: The pickle protocol ZEO 5 speaks.
PICKLE_PROTOCOL = 3

#: ``BINBYTES``: the opcode and the length of the bytes that follow.
_BINBYTES_HEADER = struct.Struct("<cI")
#: ``SHORT_BINBYTES`` of ``b""``: the stand-in for a chunk.
_EMPTY_BYTES = b"C\x00"
#: What follows a chunk: the closing opcode of the args tuple (``TUPLE1``,
#: ``TUPLE2``, ``TUPLE3`` or ``TUPLE``), the message's ``TUPLE``, ``STOP``.
_CLOSING_SIZE = 3
_ARGS_CLOSERS = frozenset(b"\x85\x86\x87t")
_MESSAGE_CLOSER = b"t."
_tuple_new = tuple.__new__
_CALLS = (Call, OneWayCall)


@implementer(ICodec)
class PickleCodec:
    """The ``Z`` codec.  See `ICodec`.

    *allowed_globals* is the allow-list used when decoding (see
    ``safe_unpickle``); the default allows no globals at all.
    """

    __slots__ = ("_buffer", "_dump", "_loads")

    encoding = "Z"
    name = "pickle"

    def __init__(
        self,
        allowed_globals: Optional[AllowedGlobals] = None,
        limits: ProtocolLimits = DEFAULT_LIMITS,
    ) -> None:
        self._buffer = io.BytesIO()
        self._new_pickler()
        self._loads = make_loads(allowed_globals, limits.max_nesting_depth)

    def _new_pickler(self) -> None:
        pickler = pickle.Pickler(self._buffer, PICKLE_PROTOCOL)
        pickler.fast = True
        self._dump = pickler.dump

    def encode(self, event: Message) -> bytes:
        """See `ICodec`."""
        if type(event) not in MESSAGE_TYPES:
            raise LocalProtocolError(
                f"{type(event).__name__} is not a message and can't be encoded"
            )
        return self.encode_unchecked(event)

    def encode_unchecked(self, event: Message) -> bytes:
        """``encode`` minus the event type check, for callers that have
        already checked (the connection)."""
        buffer = self._buffer
        buffer.seek(0)
        buffer.truncate()
        try:
            # A plain tuple: pickling the event class itself would emit a
            # global reference.
            self._dump(tuple(event))
        except Exception as exc:
            # Don't trust a pickler that failed half-way.
            self._new_pickler()
            raise EncodeError(f"can't encode {type(event).__name__}: {exc}") from exc
        return buffer.getvalue()

    def encode_pieces(self, event: Message) -> tuple[bytes, ...]:
        """See `ICodec`: a call's last ``bytes`` argument of at least
        ``SEPARATE_ARGUMENT_SIZE`` is a piece of its own, between the head
        and the 3 closing bytes (see the module doc)."""
        if type(event) not in MESSAGE_TYPES:
            raise LocalProtocolError(
                f"{type(event).__name__} is not a message and can't be encoded"
            )
        args = event[3]
        if type(event) in _CALLS and type(args) is tuple and args:
            last = args[-1]
            if type(last) is bytes and len(last) >= SEPARATE_ARGUMENT_SIZE:
                payload = self.encode_unchecked(_tuple_new(type(event), (
                    event[0], event[1], event[2], args[:-1] + (b"",))))
                at = len(payload) - _CLOSING_SIZE - len(_EMPTY_BYTES)
                if payload[at:-_CLOSING_SIZE] == _EMPTY_BYTES:  # always, in fast mode
                    return (payload[:at] + _BINBYTES_HEADER.pack(b"B", len(last)),
                            last, payload[-_CLOSING_SIZE:])
        return (self.encode_unchecked(event),)

    def decode_chunk_message(self, payload: memoryview) -> Optional[Message]:
        """See `ICodec` and the module doc."""
        size = len(payload)
        if size < SEPARATE_ARGUMENT_SIZE:
            return None
        closing = payload[size - _CLOSING_SIZE:].tobytes()
        if closing[0] not in _ARGS_CLOSERS or closing[1:] != _MESSAGE_CLOSER:
            return None
        head = payload[:CHUNK_HEAD_LIMIT].tobytes()
        at = head.find(b"B")
        while 0 <= at <= len(head) - _BINBYTES_HEADER.size:
            end = at + _BINBYTES_HEADER.size
            if _BINBYTES_HEADER.unpack_from(head, at)[1] == size - end - _CLOSING_SIZE:
                event = self._chunk_message(head[:at] + _EMPTY_BYTES + closing)
                if event is not None:
                    args = event[3]
                    return _tuple_new(OneWayCall, (
                        0, True, event[2],
                        args[:-1] + (payload[end:size - _CLOSING_SIZE],)))
            at = head.find(b"B", at + 1)
        return None

    def _chunk_message(self, stand_in: bytes) -> Optional[Message]:
        # The message with an empty chunk, if it is a chunk message.
        try:
            event = message_from_wire(self._loads(stand_in))
        except Exception:
            return None  # the caller decodes the whole payload and says why
        args = event[3]
        if type(event) is not OneWayCall or event[2] not in CHUNK_METHODS:
            return None
        last = args[-1] if args else None
        if type(last) is not bytes or last:
            return None
        return event

    #: The pickler keeps nothing between messages (``truncate`` gives the
    #: buffer's memory back), so `shed_buffer` is never needed.
    kept_buffer_size = WIRE_MAX_FRAME_SIZE

    def shed_buffer(self) -> None:
        """See `ICodec`."""

    def decode(self, payload: Any) -> Message:
        """See `ICodec`."""
        return message_from_wire(self._loads(payload))

    #: See `ICodec`: the restricted unpickler and ``message_from_wire``
    #: raise nothing but ``RemoteProtocolError``, so there is nothing to
    #: translate.
    decode_message = decode

    def __repr__(self) -> str:
        return "<PickleCodec 'Z'>"
