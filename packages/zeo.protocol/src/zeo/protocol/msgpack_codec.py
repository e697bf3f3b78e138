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
"""

from __future__ import annotations

from typing import Any
from typing import NoReturn

import msgpack
from zope.interface import implementer

from .errors import EncodeError
from .errors import LocalProtocolError
from .errors import RemoteProtocolError
from .events import MESSAGE_TYPES
from .events import Message
from .events import message_from_wire
from .interfaces import ICodec


__all__ = ["MsgpackCodec"]

_unpackb = msgpack.unpackb

#: The Packer's initial buffer; messages up to this size never make it grow.
PACKER_BUFFER_SIZE = 64 * 1024


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
        if type(event) not in MESSAGE_TYPES:
            raise LocalProtocolError(
                f"{type(event).__name__} is not a message and can't be encoded"
            )
        try:
            payload = self._pack(event)
        except Exception as exc:
            # The Packer resets its buffer on failure, so it stays usable.
            raise EncodeError(f"can't encode {type(event).__name__}: {exc}") from exc
        if len(payload) > PACKER_BUFFER_SIZE:
            self.shed_buffer()
        return payload  # type: ignore[no-any-return]

    #: See `ICodec`.  (A plain function: the connection calls it per
    #: message, and a bound method would cost one more call.)
    decode_message = staticmethod(decode_message)

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
