"""Exceptions across the wire, in both directions.

Server side: ``exception_to_wire(exc)`` gives the reference's error
shape, ``("module.Class", payload)`` where *payload* is ``exc.__dict__``
if that is non-empty, else ``exc.args``.  Unlike the reference, the
payload is first flattened to plain values -- None, bool, int, float,
str, bytes, tuple, list, dict with str/bytes keys -- so that it always
encodes with msgpack *and* unpickles without globals at the other end:

* a nested exception becomes its own ``(class_name, payload)`` pair
  (what the reference's msgpack hook does);
* ``bytearray``/``memoryview`` become ``bytes``;
* ints msgpack can't carry, strs that aren't valid UTF-8, and any other
  object become their ``repr()``, cut short (see `peer_repr`);
* nesting is cut off (by ``repr``) below ``MAX_PAYLOAD_DEPTH`` levels;
* strings, and containers, are cut to a bounded total size, so an error
  quoting a huge value the client sent is small.

The server can always report an error: ``exception_to_wire`` never raises.

Client side: an ``ErrorTable`` maps class names to *builders*,
``builder(class_name, payload) -> exception``.  Nothing is ever imported
by a name the peer sent; a name not in the table, or a payload its
builder can't digest, becomes ``RemoteError(class_name, payload)`` (the
reference calls it ``ServerException``).  ``builtin_error_table()``
knows the builtin exceptions; ``zeo.protocol.zodb_errors`` adds
``ZODB.POSException``.
"""

from __future__ import annotations

from typing import Any
from typing import Callable
from typing import Dict
from typing import Iterable
from typing import Iterator
from typing import Mapping
from typing import Optional
from typing import Tuple

from zope.interface import implementer

from .display import peer_repr
from .events import ErrorReply
from .events import MsgId
from .interfaces import IErrorTable


__all__ = [
    "BUILTIN_EXCEPTIONS",
    "Builder",
    "ErrorTable",
    "MAX_PAYLOAD_DEPTH",
    "MAX_PAYLOAD_ITEMS",
    "MAX_PAYLOAD_SIZE",
    "MAX_PAYLOAD_TEXT",
    "RemoteError",
    "args_builder",
    "builtin_error_table",
    "error_reply",
    "exception_to_wire",
    "qualified_name",
]

#: ``builder(class_name, payload) -> exception instance``
Builder = Callable[[str, Any], BaseException]

#: Containers deeper than this in an error payload are sent as repr().
MAX_PAYLOAD_DEPTH = 16

#: Characters (or bytes) of one string in an error payload; longer ones are
#: cut, and a cut string says how long it was.
MAX_PAYLOAD_TEXT = 2000

#: Characters of all the strings of one error payload together, and items
#: of all its containers together; beyond these, what is left is cut.
MAX_PAYLOAD_SIZE = 16 * 1024
MAX_PAYLOAD_ITEMS = 256

#: Longest repr() we put in a payload.
_MAX_REPR = 1000
#: Longest class name shown as it is.
_MAX_NAME = 200

_PASS_THROUGH = frozenset({type(None), bool, float})
_INT_RANGE = range(-(2**63), 2**64)


class RemoteError(Exception):
    """The peer raised an exception we don't rebuild.

    ``class_name`` is what the peer called it, ``payload`` its
    ``__dict__`` or ``args``.
    """

    def __init__(self, class_name: str, payload: Any = ()) -> None:
        super().__init__(class_name, payload)

    @property
    def class_name(self) -> str:
        return self.args[0]

    @property
    def payload(self) -> Any:
        return self.args[1]

    def __str__(self) -> str:
        name = self.args[0]
        if type(name) is not str or not name.isprintable() or len(name) > _MAX_NAME:
            name = peer_repr(name)
        return f"{name}: {_safe_repr(self.args[1])}"


def qualified_name(cls: type) -> str:
    """``'module.Class'`` as the reference spells it (``__name__``)."""
    return f"{cls.__module__}.{cls.__name__}"


def _safe_repr(value: object) -> str:
    return peer_repr(value, _MAX_REPR)


class _Budget:
    """What is left of one payload's `MAX_PAYLOAD_SIZE` / `MAX_PAYLOAD_ITEMS`."""

    __slots__ = ("chars", "items")

    def __init__(self) -> None:
        self.chars = MAX_PAYLOAD_SIZE
        self.items = MAX_PAYLOAD_ITEMS

    def text(self, value: Any, marker: Any, size: Optional[int] = None) -> Any:
        """*value* (str or bytes, *size* long), cut to what is left of the budget."""
        if size is None:
            size = len(value)
        room = max(0, min(MAX_PAYLOAD_TEXT, self.chars))
        if size <= room:
            self.chars -= size
            return value
        self.chars -= room
        return value[:room] + marker(size)

    def take(self, count: int) -> int:
        """How many of *count* container items may be sent."""
        allowed = max(0, min(count, self.items))
        self.items -= allowed
        return allowed


def _cut_str(size: int) -> str:
    return f"... ({size} characters)"


def _cut_bytes(size: int) -> bytes:
    return b"... (%d bytes)" % size


def _plain(value: Any, depth: int, budget: _Budget) -> Any:
    kind = type(value)
    if kind in _PASS_THROUGH:
        return value
    if kind is int:
        return value if value in _INT_RANGE else _safe_repr(value)
    if kind is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = _safe_repr(value)
        return budget.text(value, _cut_str)
    if kind is bytes:
        return budget.text(value, _cut_bytes)
    if kind is bytearray or kind is memoryview:
        size = len(value) if kind is bytearray else value.nbytes
        return budget.text(bytes(value[:MAX_PAYLOAD_TEXT]), _cut_bytes, size)
    if depth >= MAX_PAYLOAD_DEPTH:
        return _safe_repr(value)
    if kind is tuple or kind is list:
        items = [_plain(item, depth + 1, budget)
                 for item in value[:budget.take(len(value))]]
        return tuple(items) if kind is tuple else items
    if kind is dict:
        keep = budget.take(len(value))
        plain: dict[Any, Any] = {}
        for key, item in value.items():
            if len(plain) >= keep:
                break
            plain[_plain_key(key, budget)] = _plain(item, depth + 1, budget)
        return plain
    if isinstance(value, BaseException):
        return _exception_to_wire(value, depth + 1, budget)
    return _safe_repr(value)


def _plain_key(key: Any, budget: _Budget) -> Any:
    # msgpack peers only accept str and bytes map keys.
    if type(key) is bytes or type(key) is str:
        return _plain(key, 0, budget)
    return _safe_repr(key)


def _exception_to_wire(exc: BaseException, depth: int, budget: _Budget) -> Tuple[str, Any]:
    try:
        state = vars(exc)
    except TypeError:  # __slots__-only exception class
        state = {}
    raw = state if state else exc.args
    return qualified_name(type(exc)), _plain(raw, depth, budget)


def exception_to_wire(exc: BaseException) -> Tuple[str, Any]:
    """Return ``(class_name, payload)`` for *exc*, made encodable.

    Never raises: the payload's strings are cut to `MAX_PAYLOAD_TEXT`, all
    of them to `MAX_PAYLOAD_SIZE`, its items to `MAX_PAYLOAD_ITEMS`; and an
    exception whose state can't be flattened at all is sent with its
    ``repr`` (cut) as its only argument.
    """
    try:
        return _exception_to_wire(exc, 0, _Budget())
    except Exception:
        pass
    try:
        name = qualified_name(type(exc))
        if type(name) is not str or not name:
            raise TypeError(name)
    except Exception:
        name = "builtins.Exception"
    return name, (_safe_repr(exc),)


def error_reply(msgid: MsgId, exc: BaseException) -> ErrorReply:
    """The ``ErrorReply`` a server sends when call *msgid* raised *exc*."""
    class_name, payload = exception_to_wire(exc)
    return ErrorReply(msgid, class_name, payload)


def args_builder(cls: Callable[..., BaseException]) -> Builder:
    """A builder calling ``cls(*payload)`` for a tuple/list payload and
    ``cls(payload)`` for anything else (e.g. a dict)."""

    def build(class_name: str, payload: Any) -> BaseException:
        if type(payload) is tuple or type(payload) is list:
            return cls(*payload)
        return cls(payload)

    return build


#: Builtin exceptions rebuilt by ``builtin_error_table()``.
BUILTIN_EXCEPTIONS: Tuple[type, ...] = (
    ArithmeticError,
    AssertionError,
    AttributeError,
    EOFError,
    Exception,
    FileExistsError,
    FileNotFoundError,
    IndexError,
    KeyError,
    LookupError,
    NotImplementedError,
    OSError,
    OverflowError,
    PermissionError,
    RuntimeError,
    TypeError,
    ValueError,
    ZeroDivisionError,
)

# Python 2 spellings the reference client still accepts.
_LEGACY_ALIASES = {
    "exceptions.KeyError": KeyError,
    "exceptions.TypeError": TypeError,
}


@implementer(IErrorTable)
class ErrorTable:
    """Class name -> builder.  See `IErrorTable`."""

    __slots__ = ("_builders",)

    def __init__(self, builders: Optional[Mapping[str, Builder]] = None) -> None:
        self._builders: Dict[str, Builder] = dict(builders or {})

    def register(self, class_name: str, builder: Builder) -> None:
        """See `IErrorTable`."""
        if type(class_name) is not str or not callable(builder):
            raise TypeError("register(class_name: str, builder: callable)")
        self._builders[class_name] = builder

    def register_classes(self, classes: Iterable[type]) -> None:
        """Register ``args_builder(cls)`` under each class's qualified name."""
        for cls in classes:
            self.register(qualified_name(cls), args_builder(cls))

    def update(self, builders: Mapping[str, Builder]) -> None:
        """Register every ``name: builder`` pair of *builders*."""
        for class_name, builder in builders.items():
            self.register(class_name, builder)

    def copy(self) -> "ErrorTable":
        return ErrorTable(self._builders)

    def build(self, class_name: str, payload: Any) -> BaseException:
        """See `IErrorTable`."""
        builder = self._builders.get(class_name) if type(class_name) is str else None
        if builder is not None:
            try:
                exc = builder(class_name, payload)
            except Exception:
                exc = None
            if isinstance(exc, BaseException):
                return exc
        return RemoteError(class_name, payload)

    def from_reply(self, reply: ErrorReply) -> BaseException:
        """See `IErrorTable`."""
        return self.build(reply.class_name, reply.payload)

    def __contains__(self, class_name: object) -> bool:
        return class_name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._builders))

    def __len__(self) -> int:
        return len(self._builders)

    def __repr__(self) -> str:
        return f"<ErrorTable with {len(self._builders)} classes>"


def builtin_error_table() -> ErrorTable:
    """A new table knowing ``BUILTIN_EXCEPTIONS`` (and the reference's
    ``exceptions.KeyError``/``exceptions.TypeError`` aliases)."""
    table = ErrorTable()
    table.register_classes(BUILTIN_EXCEPTIONS)
    for name, cls in _LEGACY_ALIASES.items():
        table.register(name, args_builder(cls))
    return table
