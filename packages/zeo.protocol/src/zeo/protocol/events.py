"""Events: what ``next_event()`` returns and what ``send()`` accepts.

Every frame after the handshake carries one 4-tuple::

    (message_id, flag, name, args)

and each shape gets its own event class:

=============  ===============================  ====================
event          wire tuple                       direction
=============  ===============================  ====================
``Call``       ``(msgid, False, method, args)``  client -> server
``OneWayCall`` ``(0, True, method, args)``      either way
``Reply``      ``(msgid, 0, '.reply', result)``  server -> client
``ErrorReply`` ``(msgid, 2, '.reply',           server -> client
               (class_name, payload))``
``Heartbeat``  ``(-1, 0, '.reply', None)``      client -> server
=============  ===============================  ====================

``msgid`` is a positive int, or -- for ``loadBefore``, so that identical
loads collapse into one request -- a flat tuple such as ``(oid, tid)``.

Design note (speed): message events *are* their wire tuple.  Each class
is a ``tuple`` subclass with ``__slots__ = ()`` whose items are exactly
the four wire fields, with read-only named properties on top.  Encoding
hands the event to msgpack unchanged, and decoding validates the decoded
tuple and re-types it with a single ``tuple.__new__`` -- no field is
copied in either direction.  The public constructors validate their
arguments (``LocalProtocolError``); the decoder validates peer input
(``RemoteProtocolError``) and builds events without re-validating.
Equality takes the class into account, so ``Reply(1, None)`` is never
equal to a plain tuple or to another event type.

The remaining events belong to the handshake and connection life cycle:
``ProtocolAgreed``, ``StatusRequest``, ``Status`` and
``ConnectionClosed``.
"""

from __future__ import annotations

import reprlib
from typing import Any
from typing import ClassVar
from typing import FrozenSet
from typing import Iterable
from typing import Optional
from typing import Tuple
from typing import Union

from .errors import LocalProtocolError
from .errors import RemoteProtocolError


__all__ = [
    "Call",
    "ConnectionClosed",
    "ErrorReply",
    "Event",
    "HEARTBEAT_ID",
    "Heartbeat",
    "MESSAGE_TYPES",
    "Message",
    "MsgId",
    "OneWayCall",
    "ProtocolAgreed",
    "REPLY_NAME",
    "Reply",
    "Status",
    "StatusRequest",
    "message_from_wire",
]

#: A message id: a positive int, or a flat tuple (``(oid, tid)``).
MsgId = Union[int, Tuple[Union[bytes, str, int, None], ...]]

#: The method name every reply carries.
REPLY_NAME = ".reply"

#: Message id of the keep-alive message; any message with it is dropped.
HEARTBEAT_ID = -1

_tuple_new = tuple.__new__
_ID_ITEM_TYPES = frozenset({bytes, str, int, type(None)})

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlevel = 3


def _brief(value: object) -> str:
    """A short, failure-proof repr for error messages."""
    try:
        return _short.repr(value)
    except Exception:  # a hostile __repr__ must not escape
        return f"<{type(value).__name__} object>"


def _valid_msgid(msgid: object) -> bool:
    """Positive int, or non-empty flat tuple of bytes/str/int/None.

    Tuples must be flat: CPython hashes nested tuples recursively without
    a recursion guard, and callers use message ids as dict keys.
    """
    if type(msgid) is int:
        return msgid > 0
    if type(msgid) is tuple:
        if not msgid:
            return False
        for item in msgid:
            if type(item) not in _ID_ITEM_TYPES:
                return False
        return True
    return False


def _check_msgid(msgid: object) -> None:
    if not _valid_msgid(msgid):
        raise LocalProtocolError(
            "msgid must be a positive int or a non-empty flat tuple of"
            f" bytes/str/int/None, not {_brief(msgid)}"
        )


def _check_method(method: object) -> None:
    if type(method) is not str or not method or method == REPLY_NAME:
        raise LocalProtocolError(
            f"method must be a non-empty str other than {REPLY_NAME!r},"
            f" not {_brief(method)}"
        )


def _check_args(args: object) -> None:
    if type(args) is not tuple:
        raise LocalProtocolError(
            f"args must be a tuple, not {type(args).__name__}"
        )


class Event(tuple):
    """Base class of all events.  Immutable; compared by class and fields."""

    __slots__ = ()
    #: Names of the constructor arguments, in order (for repr and copy).
    _fields: ClassVar[Tuple[str, ...]] = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> "Event":
        raise TypeError(f"{cls.__name__} is abstract")

    def _values(self) -> Tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return tuple.__hash__(self)

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={value!r}" for name, value in zip(self._fields, self._values())
        )
        return f"{type(self).__name__}({fields})"

    def __getnewargs__(self) -> Tuple[Any, ...]:
        # Lets copy.copy()/pickle rebuild the event through __new__.
        return self._values()


class Message(Event):
    """Base class of the events that travel as one wire 4-tuple."""

    __slots__ = ()


class Call(Message):
    """A request expecting a ``Reply`` or ``ErrorReply`` with its msgid."""

    __slots__ = ()
    _fields = ("msgid", "method", "args")

    def __new__(cls, msgid: MsgId, method: str, args: Tuple[Any, ...] = ()) -> "Call":
        # The common case checked inline (a client makes one per request);
        # the checks below word the refusals.
        if not (type(msgid) is int and msgid > 0 and type(method) is str and method
                and method != REPLY_NAME and type(args) is tuple):
            _check_msgid(msgid)
            _check_method(method)
            _check_args(args)
        return _tuple_new(cls, (msgid, False, method, args))

    @property
    def msgid(self) -> MsgId:
        return self[0]

    @property
    def method(self) -> str:
        return self[2]

    @property
    def args(self) -> Tuple[Any, ...]:
        return self[3]

    def reply(self, result: Any = None) -> "Reply":
        """The `Reply` to this call: ``Reply(self.msgid, result)``.

        Cheaper than that spelling: the msgid was checked when this call
        was made (or decoded), so it isn't checked again.
        """
        return _tuple_new(Reply, (self[0], 0, REPLY_NAME, result))


class OneWayCall(Message):
    """A call nobody answers (wire id 0): stores, invalidations, info."""

    __slots__ = ()
    _fields = ("method", "args")

    def __new__(cls, method: str, args: Tuple[Any, ...] = ()) -> "OneWayCall":
        _check_method(method)
        _check_args(args)
        return _tuple_new(cls, (0, True, method, args))

    @property
    def msgid(self) -> int:
        return 0

    @property
    def method(self) -> str:
        return self[2]

    @property
    def args(self) -> Tuple[Any, ...]:
        return self[3]


class Reply(Message):
    """The result of the call with the same msgid (the value itself)."""

    __slots__ = ()
    _fields = ("msgid", "result")

    def __new__(cls, msgid: MsgId, result: Any = None) -> "Reply":
        _check_msgid(msgid)
        return _tuple_new(cls, (msgid, 0, REPLY_NAME, result))

    @property
    def msgid(self) -> MsgId:
        return self[0]

    @property
    def result(self) -> Any:
        return self[3]


class ErrorReply(Message):
    """The call with the same msgid raised.

    *class_name* is ``"module.Class"`` of the exception; *payload* is its
    ``__dict__`` if that is non-empty, else its ``args`` (see
    `zeo.protocol.remote_errors`).
    """

    __slots__ = ()
    _fields = ("msgid", "class_name", "payload")

    def __new__(cls, msgid: MsgId, class_name: str, payload: Any = ()) -> "ErrorReply":
        _check_msgid(msgid)
        if type(class_name) is not str or not class_name:
            raise LocalProtocolError(
                f"class_name must be a non-empty str, not {_brief(class_name)}"
            )
        return _tuple_new(cls, (msgid, 2, REPLY_NAME, (class_name, payload)))

    @property
    def msgid(self) -> MsgId:
        return self[0]

    @property
    def class_name(self) -> str:
        return self[3][0]

    @property
    def payload(self) -> Any:
        return self[3][1]


_HEARTBEAT_WIRE = (HEARTBEAT_ID, 0, REPLY_NAME, None)


class Heartbeat(Message):
    """Keep-alive sent by clients; servers discard it unanswered."""

    __slots__ = ()

    def __new__(cls) -> "Heartbeat":
        return _tuple_new(cls, _HEARTBEAT_WIRE)

    @property
    def msgid(self) -> int:
        return HEARTBEAT_ID


#: The event classes that are marshalled as wire messages.
MESSAGE_TYPES: FrozenSet[type] = frozenset(
    {Call, OneWayCall, Reply, ErrorReply, Heartbeat}
)


class ProtocolAgreed(Event):
    """The handshake is done; from now on messages use this protocol.

    *encoding* is ``'M'`` (msgpack) or ``'Z'`` (pickle).  *version* is
    ``b'5'`` for the reference protocol or ``b'5+zeoN'`` for the
    zeo-native revision N.  *capabilities* is the set of capability names
    both sides agreed on (always empty for the reference protocol).
    """

    __slots__ = ()
    _fields = ("encoding", "version", "capabilities")

    def __new__(
        cls,
        encoding: str,
        version: bytes = b"5",
        capabilities: Iterable[str] = frozenset(),
    ) -> "ProtocolAgreed":
        if encoding not in ("M", "Z"):
            raise LocalProtocolError(
                f"encoding must be 'M' or 'Z', not {_brief(encoding)}"
            )
        if type(version) is not bytes or not version:
            raise LocalProtocolError(
                f"version must be non-empty bytes, not {_brief(version)}"
            )
        caps = frozenset(capabilities)
        for cap in caps:
            if type(cap) is not str:
                raise LocalProtocolError(
                    f"capabilities must be str, not {_brief(cap)}"
                )
        return _tuple_new(cls, (encoding, version, caps))

    @property
    def encoding(self) -> str:
        return self[0]

    @property
    def version(self) -> bytes:
        return self[1]

    @property
    def capabilities(self) -> FrozenSet[str]:
        return self[2]

    @property
    def protocol(self) -> bytes:
        """The full protocol id, as on the wire (``b'M5'``, ``b'Z5+zeo1'``)."""
        return self[0].encode("ascii") + self[1]

    @property
    def native_version(self) -> Optional[int]:
        """N for a zeo-native agreement, ``None`` for the reference one."""
        version = self[1]
        if version.startswith(b"5+zeo"):
            return int(version[5:])
        return None


class StatusRequest(Event):
    """The client's first frame was ``b'ruok'``: send a ``Status``, close."""

    __slots__ = ()

    def __new__(cls) -> "StatusRequest":
        return _tuple_new(cls, ())


class Status(Event):
    """The server's answer to ``ruok``: opaque bytes (JSON by convention)."""

    __slots__ = ()
    _fields = ("data",)

    def __new__(cls, data: bytes) -> "Status":
        if type(data) is not bytes:
            raise LocalProtocolError(
                f"status data must be bytes, not {type(data).__name__}"
            )
        return _tuple_new(cls, (data,))

    @property
    def data(self) -> bytes:
        return self[0]


class ConnectionClosed(Event):
    """The peer closed its end cleanly (EOF between frames)."""

    __slots__ = ()

    def __new__(cls) -> "ConnectionClosed":
        return _tuple_new(cls, ())


def _bad(reason: str, msg: object) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed message ({reason}): {_brief(msg)}")


def _message_from_wire_py(msg: object) -> Message:
    """Turn one decoded wire tuple into its event.

    Raises ``RemoteProtocolError`` for anything that isn't one of the
    shapes in the table above.  Following the reference: any message
    with id -1 is a heartbeat whatever its other fields, and any truthy
    flag on a reply means "error reply".  Int/bool spellings of the flag
    are accepted and normalised.
    """
    # Fast paths for the canonical shapes real peers send; everything
    # else -- odd spellings and errors -- goes through _from_wire_checked.
    # (``x.__class__`` is a little cheaper than ``type(x)`` here, and this
    # function is most of the per-message validation cost.)
    if msg.__class__ is tuple:
        try:
            msgid, flag, name, args = msg
        except ValueError:
            return _from_wire_checked(msg)
        if flag is False:
            if (
                name.__class__ is str
                and args.__class__ is tuple
                and name
                and name != ".reply"
            ):
                kind = msgid.__class__
                if kind is tuple:
                    if (
                        len(msgid) == 2
                        and msgid[0].__class__ is bytes
                        and msgid[1].__class__ is bytes
                    ):
                        return _tuple_new(Call, msg)
                elif kind is int and msgid > 0:
                    return _tuple_new(Call, msg)
        elif (
            flag.__class__ is int
            and flag == 0
            and name.__class__ is str
            and name == ".reply"
        ):
            kind = msgid.__class__
            if kind is tuple:
                if (
                    len(msgid) == 2
                    and msgid[0].__class__ is bytes
                    and msgid[1].__class__ is bytes
                ):
                    return _tuple_new(Reply, msg)
            elif kind is int and msgid > 0:
                return _tuple_new(Reply, msg)
    return _from_wire_checked(msg)


def _from_wire_checked(msg: object) -> Message:
    if type(msg) is not tuple or len(msg) != 4:
        raise _bad("not a 4-tuple", msg)
    msgid, flag, name, args = msg
    if type(name) is not str:
        raise _bad("name is not a str", msg)
    flag_type = type(flag)
    if flag_type is not bool and flag_type is not int:
        raise _bad("flag is not a bool or int", msg)
    if type(msgid) is int and msgid == HEARTBEAT_ID:
        return _tuple_new(Heartbeat, _HEARTBEAT_WIRE)

    if name == REPLY_NAME:
        if not _valid_msgid(msgid):
            raise _bad("bad message id", msg)
        if flag:
            if type(args) is not tuple or len(args) != 2 or type(args[0]) is not str:
                raise _bad("error payload is not (class_name, payload)", msg)
            if flag_type is int and flag == 2:
                return _tuple_new(ErrorReply, msg)
            return _tuple_new(ErrorReply, (msgid, 2, REPLY_NAME, args))
        if flag_type is int:
            return _tuple_new(Reply, msg)
        return _tuple_new(Reply, (msgid, 0, REPLY_NAME, args))

    if type(args) is not tuple:
        raise _bad("args is not a tuple", msg)
    if not name:
        raise _bad("empty method name", msg)
    if flag:
        if type(msgid) is not int or msgid != 0:
            raise _bad("one-way call with a message id other than 0", msg)
        if flag is True:
            return _tuple_new(OneWayCall, msg)
        return _tuple_new(OneWayCall, (0, True, name, args))
    if not _valid_msgid(msgid):
        raise _bad("bad message id", msg)
    if flag is False:
        return _tuple_new(Call, msg)
    return _tuple_new(Call, (msgid, False, name, args))


#: The pure-Python implementation, also used where the compiled helper
#: isn't built.  Both give the same result for every input (tested).
message_from_wire = _message_from_wire_py

try:
    from . import _speedups
except ImportError:  # pragma: no cover - built by every install we test
    _speedups = None
else:
    # The compiled fast path handles the canonical Call and Reply shapes
    # and hands everything else to _from_wire_checked.
    _speedups.configure(Call, Reply, _from_wire_checked)
    message_from_wire = _speedups.message_from_wire  # noqa: F811
