"""Errors as clients can take them: ZODB's own classes, not a storage's.

A client rebuilds an error reply from its class name: ours from a table of
ZODB's and the builtin exceptions (``zeo.protocol.zodb_error_table``), the
reference ZEO client by importing the class. Storages raise subclasses of
their own -- RelStorage's ``relstorage.interfaces.POSKeyError`` for a
missing object, its ``CacheConsistencyError`` (a ``TransientError``) when
a commit should be retried -- which our client can only show as a
``RemoteError`` and a reference client only rebuild if it has the
storage's package installed. ZODB then misses what they mean: a missing
root is not created, a transient failure is not retried.

`exception_for_clients` turns such an error into the nearest class every
client knows, keeping its state:

* a ``transaction.interfaces.TransientError`` of a class clients don't
  know becomes a ``ConflictError`` naming the original, which ZODB's
  transaction managers retry; so do the few storage errors that are
  transient in nature though not declared so (`TRANSIENT_STORAGE_ERRORS`:
  RelStorage's commit-lock timeout, raised when another front held the
  database's commit lock too long);
* another ``ZODB.POSException.POSError`` becomes its nearest base class
  that clients know (``POSKeyError``, ``StorageError``, ...);
* anything else is left alone.
"""

from __future__ import annotations

from typing import Any

from transaction.interfaces import TransientError
from ZODB.POSException import ConflictError, POSError

from zeo.protocol import peer_repr, zodb_error_table
from zeo.protocol.remote_errors import qualified_name

__all__ = ["KNOWN_ERRORS", "TRANSIENT_STORAGE_ERRORS", "exception_for_clients"]

#: The class names every client rebuilds as themselves.
KNOWN_ERRORS = frozenset(zodb_error_table())

#: Storage errors (by qualified name: the core imports no storage package)
#: that a retry of the transaction may well get past.
TRANSIENT_STORAGE_ERRORS = frozenset({
    "relstorage.adapters.interfaces.UnableToAcquireCommitLockError",
})


def exception_for_clients(error: BaseException) -> BaseException:
    """*error*, or the nearest error every client rebuilds (see above)."""
    cls = type(error)
    if qualified_name(cls) in KNOWN_ERRORS:
        return error
    if isinstance(error, TransientError) or qualified_name(cls) in TRANSIENT_STORAGE_ERRORS:
        return ConflictError(
            f"{qualified_name(cls)}: {peer_repr(str(error), 500)}; retry the transaction")
    if isinstance(error, POSError):
        base: Any  # a POSError class: its __new__ takes the class
        for base in cls.__mro__[1:]:
            if issubclass(base, POSError) and qualified_name(base) in KNOWN_ERRORS:
                known = base.__new__(base)
                known.args = error.args
                known.__dict__.update(vars(error))
                return known
    return error
