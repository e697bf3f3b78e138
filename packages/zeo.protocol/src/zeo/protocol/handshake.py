"""Protocol negotiation: the first frame in each direction.

Rules
=====

Rule 1: this module knows payloads, not bytes on a stream.  The
connection frames and unframes; a handshake object sees one payload at a
time and returns the payload to answer with.

Rule 2: every step goes through a transition table, ``(state, step) ->
new state``.  A step missing from the table is a protocol violation --
the peer's (``RemoteProtocolError``) when the step is something we
received, ours (``LocalProtocolError``) when it is something we were
asked to send.  A ``RemoteProtocolError`` moves the object to ``ERROR``
for good.

Rule 3: what is agreed is enforced.  The server decodes with the letter
it announced and refuses an answer carrying another (the reference
server switches to whatever letter the client sends back, which lets a
client force pickle on a msgpack server).

Theory of operation
===================

Protocol ids are an encoding letter plus a version::

    protocol  = encoding version [ "+" extension ]
    encoding  = "M" / "Z"                   ; msgpack / pickle
    version   = 1*DIGIT                     ; "5" for every ZEO 5/6 peer
    extension = "zeo" revision [ ":" capability *( "," capability ) ]
    revision  = %x31-39 *DIGIT              ; 1, 2, ... no leading zero
    capability = 1*32( %x61-7A / DIGIT / "-" / "_" / "." )

1. The server greets at once: ``M5``/``Z5`` like the reference, or, in
   native mode, ``M5+zeo1:cap1,cap2`` (its newest native revision and
   the capabilities it offers).
2. A reference client answers with the server's letter and
   ``min(version, b'5')`` compared as *byte strings*, and gives up unless
   that is ``b'5'``.  ``b'5+zeo1...'`` starts with ``b'5'``, so such a
   client answers plain ``M5`` -- which every server accepts as the
   reference protocol.  Our client applies the same rule to the version
   digits (so ``M6``/``M99999`` get ``5`` but ``M200``/``Z4``/``Z3101``
   are refused, exactly like the reference), and if the greeting offers
   a native revision it answers ``M5+zeoN[:caps]`` with N the smaller of
   the two sides' newest revisions and the capabilities it wants among
   those offered.  Unknown extensions (``+something-else``) are ignored.
3. The server accepts exactly ``<its letter>5`` or, in native mode,
   ``<its letter>5+zeoN[:caps]`` with N a revision it supports, at most
   the one it offered, and caps a subset of those it offered.
4. ``ruok``: if the client's first frame is exactly ``b'ruok'``, the
   server reports ``StatusRequest``, sends one status frame and closes.
   A probing client sends ``ruok`` before reading anything, skips the
   greeting and reports the next frame as ``Status``.

The agreed protocol is reported as a ``ProtocolAgreed`` event whose
``version`` is ``b'5'`` or ``b'5+zeoN'``.
"""

from __future__ import annotations

import enum
import re
from typing import AbstractSet
from typing import Dict
from typing import FrozenSet
from typing import Iterable
from typing import Optional
from typing import Tuple
from typing import Union

from zope.interface import implementer

from .errors import LocalProtocolError
from .errors import RemoteProtocolError
from .events import Event
from .events import ProtocolAgreed
from .events import Status
from .events import StatusRequest
from .interfaces import IClientHandshake
from .interfaces import IServerHandshake
from .limits import DEFAULT_LIMITS
from .limits import ProtocolLimits


__all__ = [
    "ClientHandshake",
    "HandshakeState",
    "NATIVE_REVISION",
    "REFERENCE_VERSION",
    "STATUS_REQUEST",
    "SUPPORTED_NATIVE_REVISIONS",
    "ServerHandshake",
    "parse_capabilities",
]

#: The only reference protocol version (ZEO 5.0 to 6.2).
REFERENCE_VERSION = b"5"
#: Our newest zeo-native revision.
NATIVE_REVISION = 1
#: Native revisions a server of ours accepts.
SUPPORTED_NATIVE_REVISIONS: FrozenSet[int] = frozenset({1})
#: The status probe, sent instead of a handshake answer.
STATUS_REQUEST = b"ruok"

_ENCODINGS = (b"M", b"Z")
_CAPABILITY = re.compile(r"[a-z0-9._-]{1,32}\Z")
_NATIVE = re.compile(rb"zeo([1-9][0-9]{0,8})(?::([a-z0-9._,-]*))?\Z")
_TOKEN = re.compile(rb"[!-~]*\Z")  # printable ASCII, no spaces


class HandshakeState(enum.Enum):
    """Where a handshake stands."""

    #: Server: the greeting has not been produced yet.
    IDLE = "IDLE"
    #: Server: greeting sent, waiting for the client's answer.
    AWAITING_ANSWER = "AWAITING_ANSWER"
    #: Client: waiting for the server's greeting.
    AWAITING_GREETING = "AWAITING_GREETING"
    #: Both: a protocol was agreed; the handshake is over.
    AGREED = "AGREED"
    #: Server: got ``ruok``, must send the status.  Client: sent ``ruok``,
    #: waiting for the greeting (which is skipped).
    STATUS_REQUESTED = "STATUS_REQUESTED"
    #: Client: greeting skipped, waiting for the status frame.
    AWAITING_STATUS = "AWAITING_STATUS"
    #: Both: the status exchange is over; the connection must close.
    DONE = "DONE"
    #: The peer broke the protocol.
    ERROR = "ERROR"

    def __repr__(self) -> str:
        return self.value


class _Step(enum.Enum):
    SEND_GREETING = "send greeting"
    RECEIVE_ANSWER = "receive answer"
    RECEIVE_STATUS_REQUEST = "receive ruok"
    SEND_STATUS = "send status"
    SEND_STATUS_REQUEST = "send ruok"
    RECEIVE_GREETING = "receive greeting"
    RECEIVE_STATUS = "receive status"


_RECEIVING = frozenset(
    {
        _Step.RECEIVE_ANSWER,
        _Step.RECEIVE_STATUS_REQUEST,
        _Step.RECEIVE_GREETING,
        _Step.RECEIVE_STATUS,
    }
)

_S = HandshakeState

#: The server's table; anything not listed is a protocol violation.
SERVER_TRANSITIONS: Dict[Tuple[HandshakeState, _Step], HandshakeState] = {
    (_S.IDLE, _Step.SEND_GREETING): _S.AWAITING_ANSWER,
    (_S.AWAITING_ANSWER, _Step.RECEIVE_ANSWER): _S.AGREED,
    (_S.AWAITING_ANSWER, _Step.RECEIVE_STATUS_REQUEST): _S.STATUS_REQUESTED,
    (_S.STATUS_REQUESTED, _Step.SEND_STATUS): _S.DONE,
}

#: The client's table; anything not listed is a protocol violation.
CLIENT_TRANSITIONS: Dict[Tuple[HandshakeState, _Step], HandshakeState] = {
    (_S.AWAITING_GREETING, _Step.RECEIVE_GREETING): _S.AGREED,
    (_S.AWAITING_GREETING, _Step.SEND_STATUS_REQUEST): _S.STATUS_REQUESTED,
    (_S.STATUS_REQUESTED, _Step.RECEIVE_GREETING): _S.AWAITING_STATUS,
    (_S.AWAITING_STATUS, _Step.RECEIVE_STATUS): _S.DONE,
}


def parse_capabilities(capabilities: Iterable[str]) -> FrozenSet[str]:
    """Validate capability names (``[a-z0-9._-]{1,32}``); return a frozenset."""
    if isinstance(capabilities, (str, bytes)):
        raise TypeError("capabilities must be a collection of names, not a string")
    caps = frozenset(capabilities)
    for cap in caps:
        if type(cap) is not str or not _CAPABILITY.match(cap):
            raise ValueError(f"invalid capability name {cap!r}")
    return caps


def _native_id(revision: int, caps: AbstractSet[str]) -> bytes:
    text = f"5+zeo{revision}"
    if caps:
        text += ":" + ",".join(sorted(caps))
    return text.encode("ascii")


def _parse_native(ext: bytes) -> Optional[Tuple[int, FrozenSet[str]]]:
    """``zeoN[:caps]`` -> ``(N, caps)``; None if *ext* isn't native."""
    match = _NATIVE.match(ext)
    if match is None:
        return None
    revision = int(match.group(1))
    listed = match.group(2)
    names = listed.decode("ascii").split(",") if listed else []
    caps = frozenset(names)
    if len(caps) != len(names) or not all(_CAPABILITY.match(n) for n in names):
        return None
    return revision, caps


def _brief(payload: bytes) -> str:
    return repr(bytes(payload[:40])) + ("..." if len(payload) > 40 else "")


class _Handshake:
    __slots__ = ("_state", "_table", "agreed", "limits")

    _table: Dict[Tuple[HandshakeState, _Step], HandshakeState]

    def __init__(self, limits: ProtocolLimits, initial: HandshakeState) -> None:
        self._state = initial
        self.limits = limits
        self.agreed: Optional[ProtocolAgreed] = None

    @property
    def state(self) -> HandshakeState:
        return self._state

    def _step(self, step: _Step) -> None:
        """Apply *step* from the table, or raise (see Rule 2)."""
        new = self._table.get((self._state, step))
        if new is not None:
            self._state = new
            return
        if step in _RECEIVING:
            if self._state is _S.ERROR:
                raise LocalProtocolError("the handshake already failed")
            if self._state is _S.AGREED:
                raise LocalProtocolError(
                    "the handshake is over; frames go to the codec now"
                )
            self._fail(f"unexpected frame ({step.value}) in state {self._state.value}")
        raise LocalProtocolError(f"can't {step.value} in state {self._state.value}")

    def _fail(self, message: str) -> None:
        self._state = _S.ERROR
        raise RemoteProtocolError(message)

    def _check_size(self, payload: Union[bytes, bytearray]) -> None:
        if len(payload) > self.limits.max_handshake_size:
            self._fail(
                f"handshake frame of {len(payload)} bytes; the limit is"
                f" {self.limits.max_handshake_size}"
            )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._state.value}>"


@implementer(IServerHandshake)
class ServerHandshake(_Handshake):
    """The server's half of the negotiation.  See `IServerHandshake`.

    *encoding* is ``'M'`` or ``'Z'``.  With *native* the greeting offers
    our native revision and *capabilities*; reference clients still
    settle on plain protocol 5.
    """

    __slots__ = ("_letter", "_native", "_offered", "_greeting")

    _table = SERVER_TRANSITIONS

    def __init__(
        self,
        *,
        encoding: str,
        native: bool = True,
        capabilities: Iterable[str] = (),
        limits: ProtocolLimits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__(limits, _S.IDLE)
        if encoding not in ("M", "Z"):
            raise ValueError(f"encoding must be 'M' or 'Z', not {encoding!r}")
        self._letter = encoding.encode("ascii")
        self._native = bool(native)
        self._offered = parse_capabilities(capabilities)
        if self._offered and not self._native:
            raise ValueError("capabilities need native=True")
        version = _native_id(NATIVE_REVISION, self._offered) if native else REFERENCE_VERSION
        self._greeting = self._letter + version
        if len(self._greeting) > limits.max_handshake_size:
            raise ValueError(
                f"greeting {self._greeting!r} exceeds max_handshake_size"
            )

    @property
    def encoding(self) -> str:
        return self._letter.decode("ascii")

    @property
    def offered_capabilities(self) -> FrozenSet[str]:
        return self._offered

    def greeting(self) -> bytes:
        """See `IServerHandshake`."""
        self._step(_Step.SEND_GREETING)
        return self._greeting

    def receive(
        self, payload: Union[bytes, bytearray]
    ) -> Tuple[Optional[Event], Optional[bytes]]:
        """See `IHandshake`."""
        if self._state is _S.IDLE:
            raise LocalProtocolError("call greeting() before receiving the answer")
        if self._state is _S.AWAITING_ANSWER:
            self._check_size(payload)
            if payload == STATUS_REQUEST:
                self._step(_Step.RECEIVE_STATUS_REQUEST)
                return StatusRequest(), None
            agreed = self._check_answer(bytes(payload))
            self._step(_Step.RECEIVE_ANSWER)
            self.agreed = agreed
            return agreed, None
        self._step(_Step.RECEIVE_ANSWER)  # raises: not expecting frames now
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_answer(self, answer: bytes) -> ProtocolAgreed:
        letter, version = answer[:1], answer[1:]
        if letter not in _ENCODINGS:
            self._fail(f"bad handshake {_brief(answer)}: unknown encoding")
        if letter != self._letter:
            self._fail(
                f"client answered {_brief(answer)} but we announced"
                f" {self._greeting!r}; switching encodings is not allowed"
            )
        encoding = letter.decode("ascii")
        if version == REFERENCE_VERSION:
            return ProtocolAgreed(encoding, REFERENCE_VERSION, frozenset())
        if self._native and version.startswith(b"5+"):
            native = _parse_native(version[2:])
            if native is not None:
                revision, caps = native
                if revision not in SUPPORTED_NATIVE_REVISIONS or revision > NATIVE_REVISION:
                    self._fail(f"client chose native revision {revision}, not offered")
                if not caps <= self._offered:
                    extra = ", ".join(sorted(caps - self._offered))
                    self._fail(f"client chose capabilities we didn't offer: {extra}")
                return ProtocolAgreed(encoding, _native_id(revision, frozenset()), caps)
        self._fail(
            f"bad handshake {_brief(answer)}: unsupported protocol version"
            f" (we speak {self._greeting!r})"
        )
        raise AssertionError("unreachable")  # pragma: no cover

    def send_status(self, data: bytes) -> bytes:
        """See `IServerHandshake`."""
        if type(data) is not bytes:
            raise LocalProtocolError("status data must be bytes")
        self._step(_Step.SEND_STATUS)
        return data


@implementer(IClientHandshake)
class ClientHandshake(_Handshake):
    """The client's half of the negotiation.  See `IClientHandshake`.

    With *native* (the default) the client takes up a native offer,
    asking for the *capabilities* it wants among those offered; without
    it, or facing a reference server, it answers plain protocol 5.
    """

    __slots__ = ("_native", "_wanted")

    _table = CLIENT_TRANSITIONS

    def __init__(
        self,
        *,
        native: bool = True,
        capabilities: Iterable[str] = (),
        limits: ProtocolLimits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__(limits, _S.AWAITING_GREETING)
        self._native = bool(native)
        self._wanted = parse_capabilities(capabilities)

    @property
    def wanted_capabilities(self) -> FrozenSet[str]:
        return self._wanted

    def request_status(self) -> bytes:
        """See `IClientHandshake`."""
        self._step(_Step.SEND_STATUS_REQUEST)
        return STATUS_REQUEST

    def receive(
        self, payload: Union[bytes, bytearray]
    ) -> Tuple[Optional[Event], Optional[bytes]]:
        """See `IHandshake`."""
        state = self._state
        if state is _S.AWAITING_GREETING:
            self._check_size(payload)
            agreed, answer = self._answer(bytes(payload))
            self._step(_Step.RECEIVE_GREETING)
            self.agreed = agreed
            return agreed, answer
        if state is _S.STATUS_REQUESTED:
            self._check_size(payload)
            self._step(_Step.RECEIVE_GREETING)
            return None, None
        if state is _S.AWAITING_STATUS:
            self._step(_Step.RECEIVE_STATUS)
            return Status(bytes(payload)), None
        self._step(_Step.RECEIVE_GREETING)  # raises: not expecting frames now
        raise AssertionError("unreachable")  # pragma: no cover

    def _answer(self, greeting: bytes) -> Tuple[ProtocolAgreed, bytes]:
        letter, rest = greeting[:1], greeting[1:]
        if letter not in _ENCODINGS:
            self._fail(f"server greeting {_brief(greeting)}: unknown encoding")
        version, plus, extension = rest.partition(b"+")
        if not version.isdigit():
            self._fail(f"server greeting {_brief(greeting)}: malformed version")
        # The reference client's rule, byte-string ordering included.
        if min(version, REFERENCE_VERSION) != REFERENCE_VERSION:
            self._fail(
                f"server greeting {_brief(greeting)}: protocol version"
                f" {version.decode('ascii')} is not supported (we speak 5)"
            )
        offer = None
        if plus:
            if not _TOKEN.match(extension):
                self._fail(f"server greeting {_brief(greeting)}: malformed extension")
            offer = _parse_native(extension)
            if offer is None and extension.startswith(b"zeo"):
                self._fail(f"server greeting {_brief(greeting)}: malformed native offer")
        encoding = letter.decode("ascii")
        if self._native and offer is not None:
            revision = min(offer[0], NATIVE_REVISION)
            caps = self._wanted & offer[1]
            answer = letter + _native_id(revision, caps)
            return (
                ProtocolAgreed(encoding, _native_id(revision, frozenset()), caps),
                answer,
            )
        return (
            ProtocolAgreed(encoding, REFERENCE_VERSION, frozenset()),
            letter + REFERENCE_VERSION,
        )
