"""Showing a value the peer sent in a log line or an error message.

``exception_text(error)`` does the same for an exception, whose message
may quote such values: ``'KeyError: <int of 16610 bits>'``.

``peer_repr(value)`` is the one way to do it: a ``repr``-like text of at
most about ``PEER_REPR_LIMIT`` characters, with the original size added
when something was cut (``'aaaa'... (62914560 characters)``). It never
raises and its cost does not grow with the value: strings and bytes are
sliced before they are represented, containers show their first items
and nest at most a few levels (so recursive ones end), ints too large for
``repr`` (or merely long) are shown by their size in bits, and anything
whose ``repr`` fails is shown by its type name. Line breaks and other
unprintable characters come out escaped, as ``repr`` escapes them, so a
value cannot forge a log line.
"""

from __future__ import annotations

import builtins
import reprlib
from typing import Any

__all__ = ["PEER_REPR_LIMIT", "exception_text", "peer_repr"]

#: Characters of a peer-supplied value shown in a log line or error message.
PEER_REPR_LIMIT = 200

#: Items shown of a container, and levels of nesting.
_ITEMS = 8
_LEVELS = 3


class _BoundedRepr(reprlib.Repr):
    """`reprlib.Repr` whose every piece costs at most about *limit*."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.maxstring = self.maxother = self.maxlong = limit
        self.maxlevel = _LEVELS
        self.maxtuple = self.maxlist = self.maxarray = self.maxdict = _ITEMS
        self.maxset = self.maxfrozenset = self.maxdeque = _ITEMS

    def repr_str(self, x: str, level: int) -> str:
        return _head(builtins.repr(x[:self.maxstring]), self.maxstring, len(x) > self.maxstring)

    def repr_bytes(self, x: bytes, level: int) -> str:
        return _head(builtins.repr(x[:self.maxstring]), self.maxstring, len(x) > self.maxstring)

    def repr_bytearray(self, x: bytearray, level: int) -> str:
        return _head(builtins.repr(x[:self.maxstring]), self.maxstring, len(x) > self.maxstring)

    def repr_memoryview(self, x: memoryview, level: int) -> str:
        return f"<memoryview of {x.nbytes} bytes>"

    def repr_int(self, x: int, level: int) -> str:
        # str(int) is quadratic and refuses more than 4300 digits.
        bits = x.bit_length()
        if bits > 3 * self.maxlong:
            return f"<int of {bits} bits>"
        return _head(builtins.repr(x), self.maxlong, False)

    def repr_bool(self, x: bool, level: int) -> str:
        return builtins.repr(x)

    def repr_instance(self, x: Any, level: int) -> str:
        try:
            text = builtins.repr(x)
        except Exception:
            return f"<{_type_name(x)} object>"
        return _head(text, self.maxother, False)


def _head(text: str, limit: int, cut: bool) -> str:
    if cut or len(text) > limit:
        return text[:limit] + "..."
    return text


def _type_name(value: Any) -> str:
    try:
        name = type(value).__name__
    except Exception:
        return "?"
    return name[:60] if type(name) is str else "?"


def _size(value: Any) -> str:
    """The original size of *value*, for the end of a cut text."""
    kind = type(value)
    if issubclass(kind, str):
        return f" ({len(value)} characters)"
    if issubclass(kind, (bytes, bytearray)):
        return f" ({len(value)} bytes)"
    if issubclass(kind, memoryview):
        return f" ({value.nbytes} bytes)"
    if issubclass(kind, (tuple, list, dict, set, frozenset)):
        return f" ({len(value)} items)"
    return ""


_DEFAULT = _BoundedRepr(PEER_REPR_LIMIT)


def _is_cut(value: Any, limit: int) -> bool:
    kind = type(value)
    if issubclass(kind, (str, bytes, bytearray)):
        return len(value) > limit
    if issubclass(kind, (tuple, list, dict, set, frozenset)):
        return len(value) > _ITEMS
    return False


def peer_repr(value: Any, limit: int = PEER_REPR_LIMIT) -> str:
    """A short ``repr`` of *value* for a log line or an error message.

    At most about *limit* characters (plus the original size if cut); see
    the module docstring. Never raises.
    """
    try:
        bounded = _DEFAULT if limit == PEER_REPR_LIMIT else _BoundedRepr(max(int(limit), 8))
        text = bounded.repr(value)
        cut = len(text) > limit or _is_cut(value, limit)
        if len(text) > limit:
            text = text[:limit] + "..."
        if cut:
            text += _size(value)
        return text
    except Exception:
        return f"<{_type_name(value)} object>"


#: Exception classes whose ``str()`` is made from their args, by ``repr``
#: (KeyError) or ``str`` of each: shown from the args, without building
#: the whole text first.
_ARGS_STR = frozenset({BaseException.__str__, KeyError.__str__})


def exception_text(error: BaseException, limit: int = PEER_REPR_LIMIT) -> str:
    """``'ClassName: message'`` of *error*, at most about *limit*
    characters of message, unprintable characters escaped. Never raises."""
    name = _type_name(error)
    try:
        args = error.args
        if type(error).__str__ in _ARGS_STR and type(args) is tuple \
                and not (len(args) == 1 and type(args[0]) is str
                         and type(error).__str__ is BaseException.__str__):
            # Already short and escaped.
            text = peer_repr(args[0] if len(args) == 1 else args, limit) if args else ""
        else:
            text = str(error)
            if type(text) is not str:
                raise TypeError("__str__ returned a non-str")
            cut = len(text) > limit
            text = text[:limit]
            if not text.isprintable():
                text = text.encode("unicode_escape").decode("ascii")[:limit]
            if cut:
                text += "..."
    except Exception:
        text = "<unprintable>"
    return f"{name}: {text}" if text else name
