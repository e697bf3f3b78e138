"""Unpickling peer data without letting the peer run code.

A pickle is a program for a small stack machine, and some of its
instructions call Python objects.  Everything dangerous goes through one
of three doors; each is locked here:

1. **Globals** (``GLOBAL``, ``STACK_GLOBAL``, ``INST``, ``OBJ``): the
   C unpickler asks ``find_class(module, name)``.  Ours looks the pair up
   in an explicit allow-list mapping ``(module, name) -> object`` and
   refuses everything else.  It never imports anything.  Without a
   global nothing callable ever reaches the stack, so ``REDUCE``,
   ``NEWOBJ`` and ``BUILD`` gadgets have nothing to call.  (The
   reference server admits every attribute of ``builtins``, which lets
   any client call ``eval``; its client imports any module the server
   names.)
2. **Persistent ids** (``PERSID``, ``BINPERSID``): ``persistent_load``
   refuses.
3. **Extension codes** (``EXT1``/``EXT2``/``EXT4``, the ``copyreg``
   extension registry): the C unpickler resolves a code through
   ``find_class`` -- *unless* the code was resolved before by any other
   unpickler in the process, in which case it serves the object from
   ``copyreg._extension_cache`` and never asks us.  So EXT opcodes are
   refused by the walk below, before the C unpickler sees them.

Resource bounds complete the picture.  The C unpickler trusts numbers in
the stream before it has the data they describe:

* ``PUT``/``LONG_BINPUT`` with index *i* grow the memo table to 2*i
  slots and clear them one by one: eight bytes of input can demand tens
  of gigabytes.  (The reference server has this hole too.)
* ``BINBYTES``/``BINBYTES8``/``BYTEARRAY8`` allocate the announced size
  before reading it.

So every payload is *walked* first -- opcodes and their argument sizes
only, in Python, nothing built -- and refused if a memo index exceeds the
payload's length (a real pickle can't memoize more objects than it has
bytes), a counted argument runs past the end, or an opcode is unknown,
an extension code or a persistent id.  Payloads are capped by the frame
limit, and tuple nesting by ``max_nesting_depth`` (see
``zeo.protocol.limits`` for the interpreter crash this prevents); since a
pickle nests at most one level per byte, the deeper scan that tracks
nesting runs only on payloads longer than that bound.  The walk is the
price of decoding pickles safely: about a microsecond for a small
message, more than the C unpickler itself needs.  So a small payload
that names no global and no persistent id (a ping, a load, most replies)
is walked by the compiled helper instead and decoded by the plain C
unpickler (`_plain_loads`): with nothing to look up, the restricted one
would decode it the same.

Speed trick: the C unpickler reads a file object one opcode at a time
unless the file has ``peek()``.  ``_Source`` answers the first
``peek()`` with the whole payload, so the unpickler works on it in
memory; the final ``read(n)`` it issues to "consume" what it used tells
us where the pickle ended, which is how trailing bytes are detected.
"""

from __future__ import annotations

import functools
import pickle
import pickletools
import types
from typing import Any
from typing import Callable
from typing import Dict
from typing import List
from typing import Mapping
from typing import Optional
from typing import Tuple

from .errors import RemoteProtocolError
from .limits import DEFAULT_MAX_NESTING_DEPTH


__all__ = [
    "AllowedGlobals",
    "client_pickle_globals",
    "make_loads",
    "safe_loads",
    "scan_pickle",
    "server_pickle_globals",
    "walk_pickle",
]

#: ``{(module, name): object}`` -- the only globals a pickle may name.
AllowedGlobals = Mapping[Tuple[str, str], Any]


#: Constructors of plain containers.  Python pickles a dict, list or tuple
#: *subclass* (say, an application's transaction extension) or a set with
#: a reference to one of these; calling them only copies an iterable that
#: is already decoded, so they run nothing and allocate no more than the
#: frame holds.
CONTAINER_GLOBALS: Dict[Tuple[str, str], Any] = {
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}


@functools.lru_cache(maxsize=None)
def server_pickle_globals() -> AllowedGlobals:
    """The default allow-list for a server decoding client pickles.

    The plain containers (`CONTAINER_GLOBALS`) and ``ZopeUndo.Prefix.Prefix``
    (Zope's undo filter, passed to ``undoInfo``) if that package is
    installed.  Read-only.
    """
    allowed: Dict[Tuple[str, str], Any] = dict(CONTAINER_GLOBALS)
    try:
        from ZopeUndo.Prefix import Prefix  # fixed name, never peer-chosen
    except ImportError:
        pass
    else:
        allowed[("ZopeUndo.Prefix", "Prefix")] = Prefix
    return types.MappingProxyType(allowed)


def client_pickle_globals() -> AllowedGlobals:
    """The default allow-list for a client decoding server pickles: the
    plain containers only (a transaction's extension may hold a set).

    Errors travel as ``(class_name, payload)`` of plain values, so a
    server never needs to send any other global.
    """
    return types.MappingProxyType(dict(CONTAINER_GLOBALS))


class _Source:
    """Just enough of a file for the C unpickler; see the module doc."""

    __slots__ = ("_data", "consumed")

    def __init__(self, data: Any) -> None:
        self._data = data
        self.consumed = 0

    def peek(self, size: int = 0) -> Any:
        data = self._data
        self._data = b""
        return data

    def read(self, size: int = -1) -> bytes:
        self.consumed += size
        return b""

    def readinto(self, buffer: Any) -> int:
        return 0

    def readline(self, size: int = -1) -> bytes:
        return b""


class RestrictedUnpickler(pickle.Unpickler):
    """A C unpickler that resolves globals only from ``allowed_globals``.

    Subclasses set ``allowed_globals`` (see ``make_loads``); the base
    class allows nothing.
    """

    allowed_globals: AllowedGlobals = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed_globals[(module, name)]
        except (KeyError, TypeError):
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


# -- the pre-scan -------------------------------------------------------
#
# A conservative model of the unpickler's stack that tracks one number per
# item: how deeply containers nest inside it.  Containers built from
# popped items nest one deeper than the deepest of them; in-place updates
# (APPEND, SETITEMS, BUILD, ...) deepen their target the same way.  The
# result can only over-estimate the real depth.  Arguments are skipped by
# their declared size, so big bytes payloads cost nothing.  The opcode
# table is derived from pickletools' description of the format.

_FIXED, _LEN1, _LEN4, _LEN4U, _LEN8, _LINE, _TWO_LINES = range(7)
(
    _GENERIC,
    _MARK,
    _STOP,
    _POP,
    _POP_MARK,
    _DUP,
    _PUT,
    _MEMOIZE,
    _GET,
    _NOOP,
    _REFUSE,
    _UPDATE_ONE,
    _UPDATE_TWO,
    _UPDATE_MARK,
) = range(14)

_ACTIONS = {
    "MARK": _MARK,
    "STOP": _STOP,
    "POP": _POP,
    "POP_MARK": _POP_MARK,
    "DUP": _DUP,
    "PUT": _PUT,
    "BINPUT": _PUT,
    "LONG_BINPUT": _PUT,
    "MEMOIZE": _MEMOIZE,
    "GET": _GET,
    "BINGET": _GET,
    "LONG_BINGET": _GET,
    "PROTO": _NOOP,
    "FRAME": _NOOP,
    "EXT1": _REFUSE,
    "EXT2": _REFUSE,
    "EXT4": _REFUSE,
    "PERSID": _REFUSE,
    "BINPERSID": _REFUSE,
    "APPEND": _UPDATE_ONE,
    "BUILD": _UPDATE_ONE,
    "SETITEM": _UPDATE_TWO,
    "APPENDS": _UPDATE_MARK,
    "SETITEMS": _UPDATE_MARK,
    "ADDITEMS": _UPDATE_MARK,
}

_Op = Tuple[str, int, int, int, int, bool, int]


def _build_op_table() -> List[Optional[_Op]]:
    table: List[Optional[_Op]] = [None] * 256
    for info in pickletools.opcodes:
        arg = info.arg
        if arg is None:
            kind, size = _FIXED, 0
        elif arg.n >= 0:
            kind, size = _FIXED, arg.n
        elif arg.n == pickletools.UP_TO_NEWLINE:
            kind = _TWO_LINES if arg.name == "stringnl_noescape_pair" else _LINE
            size = 0
        else:
            kind = {
                pickletools.TAKEN_FROM_ARGUMENT1: _LEN1,
                pickletools.TAKEN_FROM_ARGUMENT4: _LEN4,
                pickletools.TAKEN_FROM_ARGUMENT4U: _LEN4U,
                pickletools.TAKEN_FROM_ARGUMENT8U: _LEN8,
            }[arg.n]
            size = 0
        before = info.stack_before
        has_mark = pickletools.markobject in before
        below = before.index(pickletools.markobject) if has_mark else len(before)
        table[ord(info.code)] = (
            info.name,
            kind,
            size,
            _ACTIONS.get(info.name, _GENERIC),
            below,
            has_mark,
            len(info.stack_after),
        )
    return table


_OPS = _build_op_table()


class _Refused(Exception):
    pass


def scan_pickle(data: Any, max_depth: int = DEFAULT_MAX_NESTING_DEPTH) -> None:
    """Walk *data*'s opcodes without running them.

    Raises ``RemoteProtocolError`` if containers nest deeper than
    *max_depth*, if an extension-registry or persistent-id opcode
    occurs, or if the opcode stream is malformed.  Stops at ``STOP``.
    """
    try:
        _scan(data, max_depth)
    except _Refused as exc:
        raise RemoteProtocolError(f"refused pickle: {exc}") from None
    except (IndexError, ValueError, KeyError) as exc:
        raise RemoteProtocolError(f"malformed pickle: {exc}") from None


def _memo_key(data: Any, kind: int, start: int, end: int) -> Any:
    if kind == _LINE:
        return int(bytes(data[start:end - 1]))
    return int.from_bytes(data[start:end], "little")


def _scan(data: Any, max_depth: int) -> None:
    end = len(data)
    pos = 0
    stack: List[int] = []
    marks: List[int] = []
    memo: Dict[Any, int] = {}
    ops = _OPS
    while pos < end:
        code = data[pos]
        op = ops[code]
        if op is None:
            raise _Refused(f"unknown opcode {code:#04x} at offset {pos}")
        pos += 1
        name, kind, size, action, below, has_mark, npush = op
        start = pos
        if kind == _FIXED:
            pos += size
        elif kind == _LEN1:
            pos += 1 + data[pos]
        elif kind == _LEN4 or kind == _LEN4U:
            length = int.from_bytes(data[pos:pos + 4], "little", signed=kind == _LEN4)
            if length < 0:
                raise ValueError(f"negative length at offset {pos}")
            pos += 4 + length
        elif kind == _LEN8:
            pos += 8 + int.from_bytes(data[pos:pos + 8], "little")
        else:
            for _ in range(2 if kind == _TWO_LINES else 1):
                newline = data.find(b"\n", pos)
                if newline < 0:
                    raise ValueError(f"unterminated argument of {name}")
                pos = newline + 1
        if pos > end:
            raise ValueError(f"truncated argument of {name}")

        if action == _GENERIC:
            deepest = -1
            if has_mark:
                mark = marks.pop()
                if len(stack) > mark:
                    deepest = max(stack[mark:])
                del stack[mark:]
            for _ in range(below):
                item = stack.pop()
                if item > deepest:
                    deepest = item
            if npush:
                depth = deepest + 1 if deepest >= 0 else 0
                if depth > max_depth:
                    raise _Refused(f"nesting deeper than {max_depth}")
                stack.extend([depth] * npush)
        elif action == _MARK:
            marks.append(len(stack))
        elif action == _STOP:
            return
        elif action == _UPDATE_ONE or action == _UPDATE_TWO:
            item = stack.pop()
            if action == _UPDATE_TWO:
                item = max(item, stack.pop())
            if item + 1 > stack[-1]:
                if item + 1 > max_depth:
                    raise _Refused(f"nesting deeper than {max_depth}")
                stack[-1] = item + 1
        elif action == _UPDATE_MARK:
            mark = marks.pop()
            if len(stack) > mark:
                item = max(stack[mark:])
                del stack[mark:]
                if item + 1 > stack[-1]:
                    if item + 1 > max_depth:
                        raise _Refused(f"nesting deeper than {max_depth}")
                    stack[-1] = item + 1
        elif action == _PUT:
            key = _memo_key(data, kind, start, pos)
            if key > end:
                raise _Refused("memo index beyond the payload size")
            memo[key] = stack[-1]
        elif action == _MEMOIZE:
            memo[len(memo)] = stack[-1]
        elif action == _GET:
            stack.append(memo.get(_memo_key(data, kind, start, pos), 0))
        elif action == _POP:
            if marks and marks[-1] == len(stack):
                marks.pop()
            else:
                stack.pop()
        elif action == _POP_MARK:
            del stack[marks.pop():]
        elif action == _DUP:
            stack.append(stack[-1])
        elif action == _REFUSE:
            raise _Refused(f"opcode {name} is not allowed")
        # _NOOP: nothing to do


# -- the walk -------------------------------------------------------------
#
# The lean check every payload gets: a byte table gives each opcode's
# argument size (>= 0) or how to find it (< 0).  Common opcodes take the
# first branch only.

_W_LEN1, _W_LEN4, _W_LEN4_SIGNED, _W_LEN8, _W_LINE, _W_TWO_LINES = -1, -2, -3, -4, -5, -6
_W_STOP, _W_LONG_BINPUT, _W_PUT, _W_REFUSE = -7, -8, -9, -10


def _build_walk_table() -> List[int]:
    table = [_W_REFUSE] * 256
    kinds = {
        _LEN1: _W_LEN1, _LEN4: _W_LEN4_SIGNED, _LEN4U: _W_LEN4, _LEN8: _W_LEN8,
        _LINE: _W_LINE, _TWO_LINES: _W_TWO_LINES,
    }
    for code, op in enumerate(_OPS):
        if op is None:
            continue
        kind, size, action = op[1], op[2], op[3]
        if action == _REFUSE:
            continue
        table[code] = size if kind == _FIXED else kinds[kind]
    table[ord(".")] = _W_STOP
    table[ord("r")] = _W_LONG_BINPUT
    table[ord("p")] = _W_PUT
    return table


_WALK = _build_walk_table()


def walk_pickle(data: Any) -> None:
    """The lean check (see the module doc); ``RemoteProtocolError`` if
    *data* is refused.  Stops at ``STOP``."""
    table = _WALK
    end = len(data)
    pos = 0
    try:
        while pos < end:
            code = data[pos]
            size = table[code]
            if size >= 0:
                pos += 1 + size
                continue
            pos += 1
            if size == _W_LEN1:
                pos += 1 + data[pos]
            elif size == _W_LEN4 or size == _W_LEN4_SIGNED:
                length = int.from_bytes(
                    data[pos:pos + 4], "little", signed=size == _W_LEN4_SIGNED
                )
                if length < 0:
                    raise ValueError("negative length")
                pos += 4 + length
            elif size == _W_STOP:
                return
            elif size == _W_LONG_BINPUT:
                if int.from_bytes(data[pos:pos + 4], "little") > end:
                    raise _Refused("memo index beyond the payload size")
                pos += 4
            elif size == _W_LEN8:
                pos += 8 + int.from_bytes(data[pos:pos + 8], "little")
            elif size == _W_REFUSE:
                raise _Refused(f"opcode {code:#04x} is not allowed")
            else:  # newline-terminated arguments
                newline = data.find(b"\n", pos)
                if newline < 0:
                    raise ValueError("unterminated argument")
                if size == _W_PUT and int(bytes(data[pos:newline])) > end:
                    raise _Refused("memo index beyond the payload size")
                if size == _W_TWO_LINES:
                    newline = data.find(b"\n", newline + 1)
                    if newline < 0:
                        raise ValueError("unterminated argument")
                pos = newline + 1
            if pos > end:
                raise ValueError("argument runs past the end")
        if pos > end:
            raise ValueError("argument runs past the end")
    except _Refused as exc:
        raise RemoteProtocolError(f"refused pickle: {exc}") from None
    except (IndexError, ValueError) as exc:
        raise RemoteProtocolError(f"malformed pickle: {exc}") from None


# -- the compiled fast path ----------------------------------------------
#
# A small pickle with no global and no persistent id has nothing for
# ``find_class`` or ``persistent_load`` to refuse: walked in C by the same
# rules as `walk_pickle` and found to end exactly at its ``STOP``, it is
# decoded by the plain C unpickler, which is several times cheaper than
# the restricted one reading through ``_Source``.  Everything else, and
# every failure, takes the path below (which words the errors).

#: Opcodes the fast path leaves to the restricted unpickler: those that
#: name globals or persistent ids, build objects or take out-of-band
#: buffers (none of them occurs in a plain message).
_NOT_PLAIN = frozenset((
    "GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD",
    "PERSID", "BINPERSID", "NEXT_BUFFER", "READONLY_BUFFER",
))


def _build_plain_table() -> bytes:
    # See PLAIN_* in _speedups.c.
    special = {_LEN1: 0xF0, _LEN4U: 0xF1, _LEN4: 0xF2, _LEN8: 0xF3}
    table = bytearray([0xFF] * 256)
    for code, op in enumerate(_OPS):
        if op is None:
            continue
        name, kind, size, action = op[0], op[1], op[2], op[3]
        if action == _REFUSE or name in _NOT_PLAIN or name == "PUT":
            continue
        if name == "STOP":
            table[code] = 0xF4
        elif name == "LONG_BINPUT":
            table[code] = 0xF5
        elif kind == _FIXED and size <= 8:
            table[code] = size
        elif kind in special:
            table[code] = special[kind]
    return bytes(table)


_plain_loads: Optional[Callable[[Any], Any]] = None
try:
    from . import _speedups
except ImportError:  # pragma: no cover - built without a C compiler
    pass
else:
    # A helper built from older source lacks it (test_speedups says so).
    if hasattr(_speedups, "plain_loads"):
        _speedups.configure_plain_loads(_build_plain_table(), pickle.loads)
        _plain_loads = _speedups.plain_loads


# -- loading ------------------------------------------------------------


def make_loads(
    allowed_globals: Optional[AllowedGlobals] = None,
    max_nesting_depth: int = DEFAULT_MAX_NESTING_DEPTH,
) -> Callable[[Any], Any]:
    """Return ``loads(data) -> object`` for peer pickles.

    *allowed_globals* maps ``(module, name)`` to the object a pickle may
    refer to by that name; default: nothing.  The returned function raises
    ``RemoteProtocolError`` for every kind of bad input -- malformed or
    truncated data, trailing bytes, a refused global, persistent id or
    extension code, excessive nesting.
    """
    allowed = dict(allowed_globals or {})
    unpickler_class = type(
        "RestrictedUnpickler",
        (RestrictedUnpickler,),
        {"allowed_globals": allowed, "__slots__": ()},
    )

    plain = _plain_loads

    def loads(data: Any) -> Any:
        size = len(data)
        if size > max_nesting_depth:
            scan_pickle(data, max_nesting_depth)
        else:
            if plain is not None:
                obj = plain(data)
                if obj is not NotImplemented:
                    return obj
            walk_pickle(data)
        source = _Source(data)
        try:
            obj = unpickler_class(source).load()
        except Exception as exc:
            raise RemoteProtocolError(
                f"undecodable pickle: {type(exc).__name__}: {exc}"
            ) from None
        if source.consumed != size:
            raise RemoteProtocolError(
                f"{size - source.consumed} trailing bytes after the pickle"
            )
        return obj

    return loads


def safe_loads(
    data: Any,
    allowed_globals: Optional[AllowedGlobals] = None,
    max_nesting_depth: int = DEFAULT_MAX_NESTING_DEPTH,
) -> Any:
    """One-off restricted unpickling; see ``make_loads``."""
    return make_loads(allowed_globals, max_nesting_depth)(data)
