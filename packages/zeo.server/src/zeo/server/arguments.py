"""Checks of the arguments clients send, before they reach a storage.

Each returns the value to use, or raises the error the client gets
(``TypeError``/``ValueError``, answered as an error reply). Values are
shown with `zeo.protocol.peer_repr`, cut short.
"""

from __future__ import annotations

from typing import Any

from zeo.protocol import peer_repr

#: ZODB's largest transaction id (``ZODB.utils.maxtid``).
MAXTID = b"\x7f" + b"\xff" * 7

__all__ = [
    "MAXTID", "checked_count", "checked_id8", "checked_label", "checked_record", "checked_serial",
    "checked_tid",
]


def checked_record(data: Any) -> bytes:
    # An empty record is written without a back pointer and leaves a
    # FileStorage that no longer opens without its index.
    if type(data) is not bytes or not data:
        raise ValueError(f"a record is a non-empty pickle (bytes), not {peer_repr(data, 40)}")
    return data


def checked_id8(value: Any, what: str) -> bytes:
    """*value* if it is 8 bytes (an oid or a tid), else a TypeError."""
    if type(value) is not bytes or len(value) != 8:
        raise TypeError(f"{what} is 8 bytes, not {peer_repr(value, 40)}")
    return value


def checked_tid(value: Any, what: str) -> bytes:
    """*value* if it is 8 bytes, with a tid above ZODB's ``maxtid`` read as
    ``maxtid``.

    No transaction id has the top bit set (``maxtid`` is 2**63 - 1), so a
    larger tid means the same as ``maxtid`` to every storage call (clients
    and ZODB's own tests send ``b"\\xff" * 8`` for "after everything", and
    ZEO accepts it). But storages on a database keep tids as signed 64-bit
    integers: given a larger one, PostgreSQL fails the query, and
    RelStorage's load connection then failed every later load of every
    client. So it never reaches a storage.
    """
    if type(value) is not bytes or len(value) != 8:
        raise TypeError(f"{what} is 8 bytes, not {peer_repr(value, 40)}")
    return MAXTID if value[0] & 0x80 else value


def checked_serial(value: Any) -> Any:
    """A serial as sent: 8 bytes (one above ``maxtid`` read as ``maxtid``,
    see `checked_tid`), None (new object), or, from clients that pass
    ZODB's text z64 through (its own tests do), 8 characters."""
    if type(value) is str and len(value) == 8:
        value = value.encode("latin-1")
    if type(value) is bytes and len(value) == 8 and value[0] & 0x80:
        return MAXTID
    return value


def checked_count(value: Any, limit: int | None, what: str, minimum: int = 1) -> int:
    """*value* as an int of at least *minimum*, cut to *limit*."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} is an int, not {peer_repr(value, 40)}")
    value = max(value, minimum)
    return value if limit is None else min(value, limit)


def checked_label(label: Any, limit: int) -> tuple[str, int]:
    """A client label as shown in log lines and status: text of at most
    *limit* characters, unprintable ones replaced by ``?``; and the
    original length if it was cut, else 0."""
    if type(label) is not str:
        label = peer_repr(label)
    cut = 0
    if len(label) > limit:
        cut, label = len(label), label[:limit]
    if not label.isprintable():
        label = "".join(c if c.isprintable() else "?" for c in label)
    return label, cut

