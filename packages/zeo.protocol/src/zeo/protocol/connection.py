"""The sans-IO connection: bytes in, events out, bytes out.

Rules
=====

Rule 1: a connection owns a ``FrameReader``, a handshake object and --
once a protocol is agreed -- a codec.  Until then every frame goes to the
handshake; afterwards every frame goes to the codec.  The frame limit is
``max_handshake_size`` for handshake frames and ``max_frame_size`` after.

Rule 2: what a side may send or receive depends only on its role and the
connection state, and is spelled out in ``SEND_TABLE`` and
``RECEIVE_TABLE`` (:mod:`zeo.protocol.states`).  Sending anything else raises
``LocalProtocolError`` and changes nothing; receiving anything else
raises ``RemoteProtocolError``.

Rule 3: after a ``RemoteProtocolError`` the connection is in ``ERROR``
and every further call raises ``LocalProtocolError``.  The caller
closes the transport.

Theory of operation
===================

Output comes from two places.  ``send(event)`` returns the bytes for an
event the caller chose to send.  Some bytes the connection produces by
itself: the client's handshake answer, made when the greeting is
processed.  Those wait in an outbox; ``data_to_send()`` empties it, and
``send()`` always prepends it, so bytes can't be written out of order
even if the caller forgets ``data_to_send()``.  ``send_pieces(event)``
is ``send`` for streams of blob chunks: the same bytes, as a list whose
last piece is the chunk itself, not a copy.  The server's greeting is
returned by ``initiate()``, called once on accept.

A server::

    conn = ServerConnection(encoding="M")
    write(conn.initiate())
    ...on data:  conn.receive_data(data)
                 for event in conn.events(): ...handle, write(conn.send(reply))

A client::

    conn = ClientConnection()
    ...on data:  conn.receive_data(data)
                 for event in conn.events(): ...
                 write(conn.data_to_send())     # the handshake answer
    write(conn.send(Call(1, "register", ("1", False))))

Message ids are the caller's business: the connection doesn't track
which calls are outstanding.  A connection is not thread-safe; it
belongs to the one loop that does its I/O.
"""

from __future__ import annotations

import struct
from typing import Any
from typing import FrozenSet
from typing import Generic
from typing import Iterable
from typing import Iterator
from typing import List
from typing import Optional
from typing import Tuple
from typing import Type
from typing import TypeVar
from typing import Union

from zope.interface import implementer

from .codecs import make_codec
from .errors import EncodeError
from .errors import LocalProtocolError
from .errors import RemoteProtocolError
from .events import ConnectionClosed
from .events import Event
from .events import Message
from .events import ProtocolAgreed
from .events import _brief
from .events import Status
from .events import StatusRequest
from .framing import HEADER_SIZE
from .framing import BytesLike
from .framing import FrameReader
from .framing import frame
from .framing import frame_bytes
from .framing import next_message
from .handshake import ClientHandshake
from .handshake import HandshakeState
from .handshake import ServerHandshake
from .interfaces import IClientConnection
from .interfaces import IServerConnection
from .limits import DEFAULT_LIMITS
from .limits import WIRE_MAX_FRAME_SIZE
from .limits import ProtocolLimits
from .msgpack_codec import MsgpackCodec
from .pickle_codec import PickleCodec
from .safe_unpickle import AllowedGlobals
from .safe_unpickle import client_pickle_globals
from .safe_unpickle import server_pickle_globals
from .states import NEED_DATA
from .states import _NeedData
from .states import RECEIVE_TABLE
from .states import SEND_TABLE
from .states import ConnectionState
from .states import Role


__all__ = ["ClientConnection", "ConnectionState", "NEED_DATA", "RECEIVE_TABLE", "Role",
           "SEND_TABLE", "ServerConnection"]


_S = ConnectionState
_SERVER = Role.SERVER
# Module constants for the hot paths: enum member lookup costs ~100 ns.
_OPEN = _S.OPEN
_ERROR = _S.ERROR
_CLOSED = _S.CLOSED
_NOTHING: FrozenSet[Type[Message]] = frozenset()

#: After sending a message of at most this size, the codec keeps the
#: buffer the message made it grow until the next small message (see
#: ``_after_large_message``).
KEEP_GROWN_BUFFER_SIZE = 4 * 1024 * 1024

#: Payloads of at least this size are decoded in place (see
#: ``_next_large_event``); below it, slicing them out is cheaper.
LARGE_PAYLOAD_SIZE = 64 * 1024

_HEADER = struct.Struct(">I")
_unpack_header = _HEADER.unpack_from
_pack_header = _HEADER.pack

NextEvent = Union[Event, _NeedData]

_Handshake = TypeVar("_Handshake", ServerHandshake, ClientHandshake)


class _Connection(Generic[_Handshake]):
    """Shared machinery; see `IProtocolConnection`."""

    _role: Role

    def __init__(
        self,
        handshake: _Handshake,
        limits: ProtocolLimits,
        pickle_globals: Optional[AllowedGlobals],
    ) -> None:
        self.limits = limits
        self.agreed: Optional[ProtocolAgreed] = None
        self._handshake: _Handshake = handshake
        self._pickle_globals = pickle_globals
        self._reader = FrameReader(limits.max_handshake_size)
        self._next_frame = self._reader.next_frame
        self._feed = self._reader.feed
        self._set_max_frame_size(limits.max_handshake_size)
        self._codec: Optional[Union[MsgpackCodec, PickleCodec]] = None
        # The codec's bound methods once agreed (the hot path calls them
        # without a lookup); None before.
        self._encode: Any = None
        self._decode: Any = None
        self._decode_chunk: Any = None
        self._kept_buffer_size = 0
        self._outbox: List[bytes] = []
        self._eof = False
        self._error = ""
        self._set_state(_S.HANDSHAKE)

    # -- state ----------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """See `IProtocolConnection`."""
        return self._state

    @property
    def role(self) -> Role:
        return self._role

    @property
    def handshake(self) -> _Handshake:
        """The handshake object (for inspection)."""
        return self._handshake

    @property
    def codec(self) -> Optional[Union[MsgpackCodec, PickleCodec]]:
        """The agreed codec, or None during the handshake."""
        return self._codec

    def _set_state(self, state: ConnectionState) -> None:
        # Everything the hot paths test is derived here, once per state
        # change, so that each of them is gated by a single check.
        self._state = state
        self._can_send = SEND_TABLE.get((self._role, state), frozenset())
        self._can_receive = RECEIVE_TABLE.get((self._role, state), frozenset())
        # In OPEN, what may be sent are messages (see SEND_TABLE).
        self._fast_send = frozenset(
            kind for kind in self._can_send if issubclass(kind, Message)
        ) if state is _OPEN else _NOTHING
        self._accepting = state is not _ERROR and state is not _CLOSED and not self._eof

    def _enter_error(self, exc: RemoteProtocolError) -> None:
        self._error = str(exc)
        self._set_state(_S.ERROR)

    def _check_not_failed(self) -> None:
        if self._state is _S.ERROR:
            raise self._failed()

    def _failed(self) -> LocalProtocolError:
        return LocalProtocolError(f"connection is in ERROR state after: {self._error}")

    # -- input ----------------------------------------------------------

    def receive_data(self, data: BytesLike) -> None:
        """See `IProtocolConnection`."""
        if data and self._accepting:
            self._feed(data)
            return
        self._check_not_failed()
        if data:
            if self._eof:
                raise LocalProtocolError("received data after EOF")
            # CLOSED (a server that sent its status): input is discarded.
        else:
            self._eof = True
            self._accepting = False

    def receive_buffer(self) -> Optional[memoryview]:
        """See `IProtocolConnection`."""
        return self._reader.receive_buffer() if self._accepting else None

    def received_into(self, nbytes: int) -> None:
        """See `IProtocolConnection`."""
        self._check_not_failed()
        self._reader.received(nbytes)

    @property
    def buffered(self) -> int:
        """See `IProtocolConnection`."""
        return self._reader.buffered

    def next_event(self) -> NextEvent:
        """See `IProtocolConnection`."""
        if self._state is _OPEN:
            # The hot path: framing.next_message cuts the frame and decodes
            # it in one (compiled) call; frames of unusual size, missing
            # data and errors take the methods below.
            try:
                event = next_message(self._reader, self._unusual_size, self._decode)
            except Exception as exc:
                raise self._undecodable(exc) from None
            if event.__class__ in self._can_receive:
                return event
            if event is None and not self._eof:
                return NEED_DATA  # the next frame isn't complete (once per read)
            return self._next_event_other(event)
        return self._next_event_slow()

    def _next_event_other(self, result: object) -> NextEvent:
        if result is None:  # the next frame isn't complete
            return self._end_of_input()
        if result is NotImplemented:
            return self._next_unusual_frame()
        raise self._unexpected(result)

    def _next_unusual_frame(self) -> NextEvent:
        # A frame of _unusual_size bytes or more: refused if over the
        # limit, else decoded in place once complete.
        reader = self._reader
        chunk = reader.chunk
        pos = reader.pos
        size = _unpack_header(chunk, pos)[0]
        if size > self._max_frame_size:
            try:
                self._next_frame()  # the frame reader words the refusal
            except RemoteProtocolError as exc:
                self._enter_error(exc)
                raise
        end = pos + HEADER_SIZE + size
        if len(chunk) < end:
            return self._end_of_input()
        reader.pos = end
        return self._next_large_event(chunk, pos + HEADER_SIZE, end)

    def _next_large_event(
        self, chunk: Union[bytes, bytearray], start: int, end: int
    ) -> Event:
        # A large payload (blob chunks, big records) is decoded from a view
        # of the reader's buffer: slicing it out would copy it once more,
        # into freshly allocated memory.  The view is released before the
        # buffer can change again.
        with memoryview(chunk) as view:
            with view[start:end] as payload:
                event = self._decode_chunk(payload)
                if event is not None:
                    # It carries a view of the buffer: no resizing it.
                    self._reader.pin()
                else:
                    try:
                        event = self._decode(payload)
                    except Exception as exc:
                        raise self._undecodable(exc) from None
        if event.__class__ in self._can_receive:
            return event
        raise self._unexpected(event)

    def _undecodable(self, exc: Exception) -> RemoteProtocolError:
        if not isinstance(exc, RemoteProtocolError):
            codec = self._codec
            assert codec is not None  # only agreed connections decode
            exc = RemoteProtocolError(
                f"undecodable {codec.name} message:"
                f" {type(exc).__name__}: {exc}"
            )
        self._enter_error(exc)
        return exc

    def _unexpected(self, event: object) -> RemoteProtocolError:
        exc = RemoteProtocolError(
            f"a {self._role.value} must not receive"
            f" {type(event).__name__}: {_brief(event)}"
        )
        self._enter_error(exc)
        return exc

    def _set_max_frame_size(self, size: int) -> None:
        self._max_frame_size = size
        # One test on the hot path catches both frames to refuse and
        # frames to decode in place.
        self._unusual_size = min(LARGE_PAYLOAD_SIZE, size + 1)

    def _end_of_input(self) -> NextEvent:
        if not self._eof:
            return NEED_DATA
        if self._reader.buffered:
            exc = RemoteProtocolError(
                f"peer closed the connection in the middle of a frame"
                f" ({self._reader.buffered} bytes pending)"
            )
            self._enter_error(exc)
            raise exc
        self._set_state(_S.CLOSED)
        return ConnectionClosed()

    def _next_event_slow(self) -> NextEvent:
        state = self._state
        self._check_not_failed()
        if state is _S.CLOSED:
            return ConnectionClosed()
        if state is _S.STATUS and self._role is _SERVER:
            # Waiting for the caller to send the Status; ignore input.
            if self._eof:
                self._set_state(_S.CLOSED)
                return ConnectionClosed()
            return NEED_DATA
        if self._handshake.state is HandshakeState.IDLE:
            raise LocalProtocolError("call initiate() before reading")
        try:
            while True:
                payload = self._next_frame()
                if payload is None:
                    return self._end_of_input()
                event, reply = self._handshake.receive(payload)
                if reply is not None:
                    self._outbox.append(frame(reply))
                if event is None:
                    # A probing client skipped the greeting; the status
                    # frame that follows may be as big as any frame.
                    self._reader.max_frame_size = self.limits.max_frame_size
                    continue
                if type(event) is ProtocolAgreed:
                    self._agree(event)
                elif type(event) is StatusRequest:
                    self._set_state(_S.STATUS)
                return event
        except RemoteProtocolError as exc:
            self._enter_error(exc)
            raise

    def _agree(self, agreed: ProtocolAgreed) -> None:
        self.agreed = agreed
        globals_ = self._pickle_globals
        if globals_ is None and agreed.encoding == "Z":
            globals_ = (
                server_pickle_globals()
                if self._role is _SERVER
                else client_pickle_globals()
            )
        codec = make_codec(agreed.encoding, pickle_globals=globals_, limits=self.limits)
        self._codec = codec
        self._encode = codec.encode_unchecked
        self._kept_buffer_size = codec.kept_buffer_size
        self._decode = codec.decode_message
        self._decode_chunk = codec.decode_chunk_message
        self._reader.max_frame_size = self.limits.max_frame_size
        self._set_max_frame_size(self.limits.max_frame_size)
        self._set_state(_OPEN)

    def events(self) -> Iterator[Event]:
        """See `IProtocolConnection`."""
        next_event = self.next_event
        while True:
            event = next_event()
            if event is NEED_DATA:
                return
            yield event
            if type(event) is ConnectionClosed:
                return

    # -- output ---------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """See `IProtocolConnection`."""
        if event.__class__ in self._fast_send:
            # A message in the OPEN state: the hot path.
            try:
                payload = self._encode(event)
            except EncodeError:
                raise
            except Exception as exc:
                raise EncodeError(
                    f"can't encode {type(event).__name__}: {exc}"
                ) from exc
            size = len(payload)
            if size > self._kept_buffer_size:
                # A large message, or any message while the buffer is grown.
                self._after_large_message(size)
            if self._outbox:
                return self.data_to_send() + frame_bytes(payload)
            return frame_bytes(payload)
        if type(event) in self._can_send:
            data = self._send_other(event)
            if self._outbox:
                data = self.data_to_send() + data
            return data
        raise self._refusal(event)

    def send_pieces(self, event: Event) -> List[bytes]:
        """See `IProtocolConnection`."""
        codec = self._codec
        if codec is None or event.__class__ not in self._fast_send:
            return [self.send(event)]  # refused, or not a message
        encoded: Tuple[bytes, ...] = codec.encode_pieces(event)
        head = encoded[0]
        if len(head) > self._kept_buffer_size:
            self._after_large_message(len(head))
        size = sum(map(len, encoded))
        if size > WIRE_MAX_FRAME_SIZE:
            raise EncodeError(f"a {size}-byte message can't be framed")
        pieces = [_pack_header(size) + head, *encoded[1:]]
        if self._outbox:
            pieces.insert(0, self.data_to_send())
        return pieces

    def _after_large_message(self, size: int) -> None:
        # The codec's buffer grew.  A message up to KEEP_GROWN_BUFFER_SIZE
        # is often one of a stream (blob chunks): the next one reuses the
        # buffer, which is given back at the next small message.  Growing
        # a fresh buffer for each 1 MiB chunk cost more than copying it.
        # While it is kept, _kept_buffer_size is -1, so that send() calls
        # this for every message and the hot path has one test, not two.
        codec = self._codec
        assert codec is not None  # only agreed connections send messages
        if size > KEEP_GROWN_BUFFER_SIZE or size <= codec.kept_buffer_size:
            self._shed_buffer()
        else:
            self._kept_buffer_size = -1
        if size > WIRE_MAX_FRAME_SIZE:
            raise EncodeError(f"a {size}-byte message can't be framed")

    def _shed_buffer(self) -> None:
        codec = self._codec
        assert codec is not None  # only agreed connections send messages
        codec.shed_buffer()
        self._encode = codec.encode_unchecked
        self._kept_buffer_size = codec.kept_buffer_size

    def _send_other(self, event: Event) -> bytes:
        raise NotImplementedError  # pragma: no cover

    def _refusal(self, event: object) -> LocalProtocolError:
        if self._state is _S.ERROR:
            return self._failed()
        if not isinstance(event, Event):
            return LocalProtocolError(
                f"send() takes an event, not {type(event).__name__}"
            )
        name = type(event).__name__
        if self._state is _S.HANDSHAKE:
            return LocalProtocolError(f"can't send {name} before the handshake is done")
        for (role, _state), kinds in SEND_TABLE.items():
            if role is self._role and type(event) in kinds:
                return LocalProtocolError(
                    f"can't send {name} in state {self._state.value}"
                )
        return LocalProtocolError(f"a {self._role.value} never sends {name}")

    def data_to_send(self) -> bytes:
        """See `IProtocolConnection`."""
        if not self._outbox:
            return b""
        data = b"".join(self._outbox)
        self._outbox.clear()
        return data

    def __repr__(self) -> str:
        agreed = self.agreed.protocol if self.agreed is not None else None
        return f"<{type(self).__name__} {self._state.value} agreed={agreed!r}>"


@implementer(IServerConnection)
class ServerConnection(_Connection[ServerHandshake]):
    """The server end.  See `IServerConnection`.

    *encoding* (``'M'`` or ``'Z'``), *native* and *capabilities* shape
    the greeting (see `ServerHandshake`).  *pickle_globals* is the allow-
    list for decoding pickles; default: ``server_pickle_globals()``.
    """

    _role = Role.SERVER

    def __init__(
        self,
        *,
        encoding: str,
        native: bool = True,
        capabilities: Iterable[str] = (),
        limits: ProtocolLimits = DEFAULT_LIMITS,
        pickle_globals: Optional[AllowedGlobals] = None,
    ) -> None:
        handshake = ServerHandshake(
            encoding=encoding, native=native, capabilities=capabilities, limits=limits
        )
        super().__init__(handshake, limits, pickle_globals)

    def initiate(self) -> bytes:
        """See `IServerConnection`."""
        self._check_not_failed()
        return frame(self._handshake.greeting())

    def _send_other(self, event: Event) -> bytes:
        # Only Status gets here (see SEND_TABLE).
        assert isinstance(event, Status)
        data = self._handshake.send_status(event.data)
        self._set_state(_S.CLOSED)
        return frame(data)


@implementer(IClientConnection)
class ClientConnection(_Connection[ClientHandshake]):
    """The client end.  See `IClientConnection`.

    With *native* the client takes up a server's native offer, asking for
    the *capabilities* it wants.  *pickle_globals* is the allow-list for
    decoding pickles; default: none.
    """

    _role = Role.CLIENT

    def __init__(
        self,
        *,
        native: bool = True,
        capabilities: Iterable[str] = (),
        limits: ProtocolLimits = DEFAULT_LIMITS,
        pickle_globals: Optional[AllowedGlobals] = None,
    ) -> None:
        handshake = ClientHandshake(
            native=native, capabilities=capabilities, limits=limits
        )
        super().__init__(handshake, limits, pickle_globals)

    def _send_other(self, event: Event) -> bytes:
        # Only StatusRequest gets here (see SEND_TABLE).
        data = self._handshake.request_status()
        self._set_state(_S.STATUS)
        return frame(data)
