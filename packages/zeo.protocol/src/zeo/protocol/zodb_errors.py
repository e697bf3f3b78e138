"""Builders for ``ZODB.POSException`` error replies.

zeo.protocol doesn't depend on ZODB: ``ZODB.POSException`` is imported
inside the functions below, by that fixed name, when a client asks for
the table.  The shapes are what the reference server sends:

* ``ConflictError``, ``ReadConflictError``: payload is the ``__dict__``
  with ``message``, ``oid``, ``serials`` and ``class_name``;
* ``BTreesConflictError``: ``p1``, ``p2``, ``p3``, ``reason``;
* ``MultipleUndoErrors``: ``_errs``, a list of ``(oid, error)``, where a
  flattened ``UndoError`` is rebuilt too;
* ``UndoError``: ``_reason`` and ``_oid``;
* the others (``POSKeyError``, ``ReadOnlyError``,
  ``StorageTransactionError``, ...): their ``args``.
"""

from __future__ import annotations

from typing import Any
from typing import Callable
from typing import Dict

from .record_class import pickle_metadata
from .remote_errors import Builder
from .remote_errors import ErrorTable
from .remote_errors import args_builder
from .remote_errors import builtin_error_table


__all__ = ["neutralise_get_pickle_metadata", "zodb_error_builders", "zodb_error_table"]

_PREFIX = "ZODB.POSException."

# Exceptions whose payload is their args.
_ARGS_STYLE = (
    "POSError",
    "POSKeyError",
    "ReadOnlyError",
    "ReadOnlyHistoryError",
    "StorageError",
    "StorageSystemError",
    "StorageTransactionError",
    "TransactionError",
    "TransactionFailedError",
    "TransactionTooLargeError",
    "Unsupported",
)


def zodb_error_builders() -> Dict[str, Builder]:
    """``{'ZODB.POSException.X': builder}`` for the ZODB exceptions."""
    from ZODB import POSException  # fixed module name, never peer-chosen

    def conflict(cls: Callable[..., POSException.ConflictError]) -> Builder:
        def build(class_name: str, payload: Any) -> BaseException:
            exc = cls(
                message=payload["message"],
                oid=payload["oid"],
                serials=payload["serials"],
            )
            exc.class_name = payload.get("class_name")
            return exc

        return build

    def btrees_conflict(class_name: str, payload: Any) -> BaseException:
        return POSException.BTreesConflictError(
            p1=payload["p1"],
            p2=payload["p2"],
            p3=payload["p3"],
            reason=payload["reason"],
        )

    def undo_error(class_name: str, payload: Any) -> BaseException:
        if type(payload) is dict:
            return POSException.UndoError(payload.get("_reason"), payload.get("_oid"))
        return args_builder(POSException.UndoError)(class_name, payload)

    def multiple_undo_errors(class_name: str, payload: Any) -> BaseException:
        errors = []
        for item in payload["_errs"]:
            if (
                type(item) in (tuple, list)
                and len(item) == 2
                and type(item[1]) in (tuple, list)
                and len(item[1]) == 2
                and item[1][0] == _PREFIX + "UndoError"
            ):
                item = (item[0], undo_error(item[1][0], item[1][1]))
            errors.append(item)
        return POSException.MultipleUndoErrors(errors)

    builders: Dict[str, Builder] = {
        _PREFIX + "ConflictError": conflict(POSException.ConflictError),
        _PREFIX + "ReadConflictError": conflict(POSException.ReadConflictError),
        _PREFIX + "BTreesConflictError": btrees_conflict,
        _PREFIX + "UndoError": undo_error,
        _PREFIX + "MultipleUndoErrors": multiple_undo_errors,
    }
    for name in _ARGS_STYLE:
        builders[_PREFIX + name] = args_builder(getattr(POSException, name))
    return builders


def zodb_error_table() -> ErrorTable:
    """``builtin_error_table()`` plus ``zodb_error_builders()``."""
    table = builtin_error_table()
    table.update(zodb_error_builders())
    return table


def neutralise_get_pickle_metadata() -> None:
    """Replace ``ZODB.utils.get_pickle_metadata`` with
    ``record_class.pickle_metadata`` in this process (idempotent).

    ``ConflictError(data=...)`` looks the function up in ``ZODB.utils``
    each time and, as ZODB has it, unpickles *data* with a full unpickler
    (see ``record_class``): whoever builds a ``ConflictError`` from a
    peer's record would run the peer's code.
    """
    import ZODB.utils  # fixed module name, never peer-chosen

    if ZODB.utils.get_pickle_metadata is not pickle_metadata:
        ZODB.utils.get_pickle_metadata = pickle_metadata
