"""The persistent references of a ZODB record, read without unpickling it.

A server that sends a client the records a loaded record references
(see ``loadBeforeRefs`` in docs/protocol.rst) must find those references
in data that clients stored -- hostile data.  ZODB's ``referencesf`` uses
zodbpickle's ``noload``, which imports nothing and calls nothing, but
does build the lists, dicts and numbers the pickle describes: a pickle
of a dict whose keys all hash alike costs quadratic time, on the
server's event loop.

`persistent_references` builds nothing.  It walks the opcodes once,
keeping a symbolic stack in which only two kinds of values are
distinguished: 8-byte byte strings (possible oids) and tuples whose first
item is one (``(oid, class)`` persistent ids); everything else is
``None``.  The memo is emulated, so a reference spelled with ``BINGET``
is seen too.  Like ``referencesf`` it reports the oid of each ``BINPERSID``
whose persistent id is an oid or a tuple starting with one, and skips
list-shaped ids (weak and cross-database references) and protocol-0
``PERSID`` strings.  The memo is shared by the pickles of one record, as
ZODB writes them with one pickler.

Malformed input ends the walk: what was found so far is returned, and
nothing is raised.  Work and memory are linear in the data's length.
The answer only chooses which records a server offers; a wrong oid costs
a wasted load, never a wrong cache entry.

That is why a record longer than `FAST_SCAN_SIZE` (a container listing
thousands of objects) is searched, six times faster, for the opcodes
ZODB writes for a reference -- an 8-byte string, maybe a class (a
``GLOBAL`` or a memo ``GET``) and ``TUPLE2``, ``BINPERSID``, memo
``PUT``s between --
rather than walked: the same answer for what ZODB writes, except that a
repeated reference spelled with a memo ``GET`` is not seen again, and
that such a sequence inside a string's bytes would be taken for one.
"""

from __future__ import annotations

import pickletools
import re
from typing import Any
from typing import Dict
from typing import List
from typing import Optional
from typing import Tuple


__all__ = ["FAST_SCAN_SIZE", "LOAD_REFS", "persistent_references"]

#: The handshake capability by which our client and server agree on
#: ``loadBeforeRefs`` (see docs/protocol.rst).
LOAD_REFS = "load-refs"

#: Records longer than this are searched rather than walked (most
#: objects and BTree buckets are shorter; a list of thousands, longer).
FAST_SCAN_SIZE = 4 * 1024

# A persistent id as ZODB writes it (protocols 1 to 3): SHORT_BINBYTES
# or SHORT_BINSTRING, then (for an ``(oid, class)`` id) a GLOBAL or memo
# GET and TUPLE2, then BINPERSID; memo PUTs allowed after each part.
# Every part has a bounded length, so the search is linear in the data.
_PUT_RE = rb"(?:q.|r.{4}|\x94)?"
_REFERENCE = re.compile(
    rb"[CU]\x08(.{8})" + _PUT_RE + rb"(?:(?:c[^\n]{1,256}\n[^\n]{1,256}\n|h.|j.{4})" + _PUT_RE
    + rb"\x86" + _PUT_RE + rb")?Q", re.S)

# Kinds of opcode (the first field of a _SPECS entry).
_GENERIC, _BYTES, _TUPLE_N, _TUPLE_MARK, _PUT, _MEMOIZE, _GET, _DUP, \
    _BINPERSID, _STOP, _MARK, _POP, _POP_MARK = range(13)

# How an opcode's argument is found (the second field).
_LINE, _TWO_LINES, _LEN1, _LEN4, _LEN4U, _LEN8U = -1, -6, -2, -3, -4, -5

_BYTES_OPS = frozenset({
    "SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "SHORT_BINSTRING", "BINSTRING"})
_SPECIAL = {
    "TUPLE1": (_TUPLE_N, 1), "TUPLE2": (_TUPLE_N, 2), "TUPLE3": (_TUPLE_N, 3),
    "TUPLE": (_TUPLE_MARK, 0), "PUT": (_PUT, 0), "BINPUT": (_PUT, 0),
    "LONG_BINPUT": (_PUT, 0), "MEMOIZE": (_MEMOIZE, 0), "GET": (_GET, 0),
    "BINGET": (_GET, 0), "LONG_BINGET": (_GET, 0), "DUP": (_DUP, 0),
    "BINPERSID": (_BINPERSID, 0), "STOP": (_STOP, 0), "MARK": (_MARK, 0),
    "POP": (_POP, 0), "POP_MARK": (_POP_MARK, 0),
}

#: (kind, argument, pops, pushes, pops_to_mark, n) per opcode byte; None
#: for bytes that are no opcode.
_Spec = Tuple[int, int, int, int, bool, int]


def _build_specs() -> List[Optional[_Spec]]:
    specs: List[Optional[_Spec]] = [None] * 256
    for op in pickletools.opcodes:
        code = ord(op.code)
        argument = 0
        if op.arg is not None:
            argument = op.arg.n
            if op.name in ("GLOBAL", "INST"):
                argument = _TWO_LINES
        names = [s.name for s in op.stack_before]
        to_mark = "mark" in names
        pops = names.index("mark") if to_mark else len(names)
        kind, n = _SPECIAL.get(op.name, (_GENERIC, 0))
        if op.name in _BYTES_OPS:
            kind = _BYTES
        specs[code] = (kind, argument, pops, len(op.stack_after), to_mark, n)
    return specs


_SPECS = _build_specs()
_MARK_SENTINEL = object()


def _memo_key(data: bytes, start: int, pos: int, argument: int) -> Optional[int]:
    # The memo index of a PUT/GET opcode (decimal line, 1 or 4 bytes).
    if argument != _LINE:
        return int.from_bytes(data[start:pos], "little")
    text = data[start:pos - 1]
    if not text.isdigit() or len(text) > 10:
        return None
    return int(text)


def persistent_references(data: Any, limit: Optional[int] = None) -> List[bytes]:
    """The oids a record references, in the order its pickles name them
    (repeats included), at most *limit* of them.  See the module's doc.
    """
    data = bytes(data)
    refs: List[bytes] = []
    if b"Q" not in data:       # no BINPERSID byte at all: no reference
        return refs
    if limit is not None and limit <= 0:
        return refs
    if len(data) > FAST_SCAN_SIZE:
        for match in _REFERENCE.finditer(data):
            refs.append(match.group(1))
            if limit is not None and len(refs) >= limit:
                break
        return refs
    specs = _SPECS
    end = len(data)
    pos = 0
    stack: List[Any] = []
    marks: List[int] = []
    memo: Dict[Any, Any] = {}
    while pos < end:
        spec = specs[data[pos]]
        if spec is None:
            break
        kind, argument, pops, pushes, to_mark, n = spec
        start = pos = pos + 1
        if argument > 0:
            pos += argument
        elif argument == 0:
            pass
        elif argument == _LINE:
            pos = data.find(b"\n", pos) + 1
            if not pos:
                break
        elif argument == _TWO_LINES:
            pos = data.find(b"\n", pos) + 1
            if not pos:
                break
            pos = data.find(b"\n", pos) + 1
            if not pos:
                break
        else:
            width = 1 if argument == _LEN1 else 8 if argument == _LEN8U else 4
            start = pos + width
            size = int.from_bytes(data[pos:start], "little",
                                  signed=argument == _LEN4)
            if size < 0:
                break
            pos = start + size
        if pos > end:
            break
        if kind == _GENERIC:
            if to_mark:
                if not marks:
                    break
                del stack[marks.pop():]
            if pops:
                if len(stack) - (marks[-1] if marks else 0) < pops:
                    break
                del stack[-pops:]
            if pushes:
                stack.extend([None] * pushes)
        elif kind == _BYTES:
            stack.append(data[start:pos] if pos - start == 8 else None)
        elif kind == _BINPERSID:
            if len(stack) <= (marks[-1] if marks else 0):
                break
            pid = stack[-1]
            stack[-1] = None
            if pid.__class__ is tuple:
                pid = pid[0]
            if pid.__class__ is bytes:
                refs.append(pid)
                if limit is not None and len(refs) >= limit:
                    break
        elif kind == _TUPLE_N:
            if len(stack) - (marks[-1] if marks else 0) < n:
                break
            first = stack[-n]
            del stack[-n:]
            stack.append((first,) if first.__class__ is bytes else None)
        elif kind == _PUT or kind == _MEMOIZE:
            if len(stack) <= (marks[-1] if marks else 0):
                break
            put = len(memo) if kind == _MEMOIZE else _memo_key(data, start, pos, argument)
            if put is None:
                break
            memo[put] = stack[-1]
        elif kind == _GET:
            get = _memo_key(data, start, pos, argument)
            if get is None or get not in memo:
                break
            stack.append(memo[get])
        elif kind == _TUPLE_MARK:
            if not marks:
                break
            mark = marks.pop()
            first = stack[mark] if len(stack) > mark else None
            del stack[mark:]
            stack.append((first,) if first.__class__ is bytes else None)
        elif kind == _MARK:
            marks.append(len(stack))
        elif kind == _DUP:
            if len(stack) <= (marks[-1] if marks else 0):
                break
            stack.append(stack[-1])
        elif kind == _STOP:
            del stack[:]
            del marks[:]
        elif kind == _POP:
            if len(stack) > (marks[-1] if marks else 0):
                stack.pop()
            elif marks:
                marks.pop()
            else:
                break
        else:  # _POP_MARK
            if not marks:
                break
            del stack[marks.pop():]
    return refs
