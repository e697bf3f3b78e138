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
  object become their ``repr()`` (the server can always report an error);
* nesting is cut off (by ``repr``) below ``MAX_PAYLOAD_DEPTH`` levels.

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

from .events import ErrorReply
from .events import MsgId
from .interfaces import IErrorTable


__all__ = [
    "BUILTIN_EXCEPTIONS",
    "Builder",
    "ErrorTable",
    "MAX_PAYLOAD_DEPTH",
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

#: Longest repr() we put in a payload.
_MAX_REPR = 1000

_PASS_THROUGH = frozenset({type(None), bool, float, bytes})
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
        return self.args[0]  # type: ignore[no-any-return]

    @property
    def payload(self) -> Any:
        return self.args[1]

    def __str__(self) -> str:
        return f"{self.args[0]}: {_safe_repr(self.args[1])}"


def qualified_name(cls: type) -> str:
    """``'module.Class'`` as the reference spells it (``__name__``)."""
    return f"{cls.__module__}.{cls.__name__}"


def _safe_repr(value: object) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<unrepresentable {type(value).__name__} object>"
    if len(text) > _MAX_REPR:
        text = text[: _MAX_REPR - 3] + "..."
    return text


def _plain(value: Any, depth: int) -> Any:
    kind = type(value)
    if kind in _PASS_THROUGH:
        return value
    if kind is int:
        return value if value in _INT_RANGE else repr(value)
    if kind is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return ascii(value)
        return value
    if depth >= MAX_PAYLOAD_DEPTH:
        return _safe_repr(value)
    if kind is tuple:
        return tuple([_plain(item, depth + 1) for item in value])
    if kind is list:
        return [_plain(item, depth + 1) for item in value]
    if kind is dict:
        return {
            _plain_key(key): _plain(item, depth + 1) for key, item in value.items()
        }
    if isinstance(value, BaseException):
        return _exception_to_wire(value, depth + 1)
    if kind is bytearray or kind is memoryview:
        return bytes(value)
    return _safe_repr(value)


def _plain_key(key: Any) -> Any:
    # msgpack peers only accept str and bytes map keys.
    if type(key) is bytes:
        return key
    if type(key) is str:
        return _plain(key, 0)
    return _safe_repr(key)


def _exception_to_wire(exc: BaseException, depth: int) -> Tuple[str, Any]:
    try:
        state = vars(exc)
    except TypeError:  # __slots__-only exception class
        state = {}
    raw = state if state else exc.args
    return qualified_name(type(exc)), _plain(raw, depth)


def exception_to_wire(exc: BaseException) -> Tuple[str, Any]:
    """Return ``(class_name, payload)`` for *exc*, made encodable."""
    return _exception_to_wire(exc, 0)


def error_reply(msgid: MsgId, exc: BaseException) -> ErrorReply:
    """The ``ErrorReply`` a server sends when call *msgid* raised *exc*."""
    class_name, payload = _exception_to_wire(exc, 0)
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
