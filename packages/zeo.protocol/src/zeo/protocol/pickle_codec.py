"""Encoding ``Z``: pickle protocol 3, as the reference marshals it.

Output: a C ``pickle.Pickler`` at protocol 3 in *fast* mode (no memo
opcodes), each message pickled from scratch into a reused buffer.  That
reproduces the reference's bytes exactly: ``bytes`` become
``SHORT_BINBYTES``/``BINBYTES``, ``str`` ``BINUNICODE``, the 4-tuple
``MARK ... TUPLE``, booleans ``NEWTRUE``/``NEWFALSE``.

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
"""

from __future__ import annotations

import io
import pickle
from typing import Any
from typing import Optional

from zope.interface import implementer

from .errors import EncodeError
from .errors import LocalProtocolError
from .events import MESSAGE_TYPES
from .events import Message
from .events import message_from_wire
from .interfaces import ICodec
from .limits import DEFAULT_LIMITS
from .limits import ProtocolLimits
from .limits import WIRE_MAX_FRAME_SIZE
from .safe_unpickle import AllowedGlobals
from .safe_unpickle import make_loads


__all__ = ["PICKLE_PROTOCOL", "PickleCodec"]

#: The pickle protocol ZEO 5 speaks.
PICKLE_PROTOCOL = 3


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
        """See `ICodec`: always one piece."""
        return (self.encode(event),)

    def decode_chunk_message(self, payload: Any) -> Optional[Message]:
        """See `ICodec`: never (chunks are decoded with their message)."""
        return None

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
