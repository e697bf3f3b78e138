"""The class a ZODB record names, read without unpickling the record.

``ZODB.POSException.ConflictError(data=...)`` names the record's class
with ``ZODB.utils.get_pickle_metadata(data)``, and that function unpickles
*data* with a full unpickler -- one that imports and calls whatever the
pickle names -- unless the data starts with a plain ``GLOBAL``.  Record
data comes from peers: on a server from clients, on a client from the
server.  So whoever builds a ``ConflictError`` from a peer's record runs
the peer's code.

`pickle_metadata` answers the same question from the opcodes alone,
running nothing.  ``zeo.protocol.zodb_errors.neutralise_get_pickle_metadata``
installs it over ZODB's function, for the whole process; both the server
and the client call that.
"""

from __future__ import annotations

import io
import pickletools
from typing import Any
from typing import List
from typing import Tuple


__all__ = ["pickle_metadata"]

_STRING_OPS = frozenset({
    "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE",
    "SHORT_BINSTRING", "BINSTRING", "STRING",
})


def pickle_metadata(data: Any) -> Tuple[str, str]:
    """``ZODB.utils.get_pickle_metadata`` without unpickling: the module
    and class name of a record's first pickle, or ``('', '')``.

    The names are those of the first ``GLOBAL``/``INST`` opcode, or the
    first two strings (a class spelled as a ``(module, name)`` tuple).
    """
    strings: List[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            name = opcode.name
            if name == "GLOBAL" or name == "INST":
                module, _, attribute = str(arg).partition(" ")
                return module, attribute
            if name in _STRING_OPS:
                strings.append(str(arg))
                if len(strings) == 2:
                    return strings[0], strings[1]
    except Exception:
        pass
    return "", ""
