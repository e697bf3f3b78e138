"""Server-side conflict resolution that runs no code a client chose.

ZODB resolves a write conflict by unpickling three revisions of the
record -- the client's new one, the one it started from and the current
one -- with an unpickler that imports and calls whatever the pickles
name, then calling the class's ``_p_resolveConflict``. The record data
comes from clients, so as it stands any client can run any function in
the server (``os.system`` in a record, then a conflicting store). The
reference ZEO 6.2 server has that hole; undo meets the same code.

`guard_conflict_resolution` puts a check in front of the storage's
``tryToResolveConflict``: the pickles are walked (never run) and only
these names may appear in them:

* as the record's class: a ``persistent.Persistent`` subclass with a
  ``_p_resolveConflict`` method, from a package listed in
  ``ServerConfig.conflict_resolution_packages`` (``BTrees``,
  ``persistent`` and ``ZODB`` by default);
* inside the states: such classes, and the plain value types of
  `STATE_GLOBALS` (dates, decimals, sets).

Anything else -- another global, an extension code, a name computed on
the pickle stack -- is not resolved: the client gets the ``ConflictError``
it would get from a class without ``_p_resolveConflict``, and retries its
transaction as usual.

RelStorage resolves the conflicts it finds when it votes, through a
helper object of its own rather than the storage's method;
`guard_relstorage_vote` puts the same check in front of that helper, and
zeo.server.relstorage_conflicts makes that helper read the revision the
client started from by ``(oid, serial)``.

Building that error is a second door: ``ConflictError(data=...)`` names
the record's class with ``ZODB.utils.get_pickle_metadata``, which
unpickles the client's data with a full unpickler when it doesn't start
with a plain ``GLOBAL`` (MappingStorage raises such errors straight from
``store``). `guard_conflict_resolution` therefore also replaces that
function, for the whole server process, with `pickle_metadata` (from
``zeo.protocol.record_class``; the client installs it too), which reads
the names without running anything.
"""

from __future__ import annotations

import importlib
import io
import logging
import pickletools
from typing import Any, Callable, Iterable

import persistent
from ZODB.POSException import ConflictError
from zeo.protocol import exception_text, peer_repr

from zeo.protocol.record_class import pickle_metadata
from zeo.protocol.zodb_errors import neutralise_get_pickle_metadata
from zeo.server.relstorage_conflicts import (RELSTORAGE_RESOLVER,
                                             fix_relstorage_conflict_resolution)

__all__ = ["ConflictResolutionGuard", "RELSTORAGE_RESOLVER", "STATE_GLOBALS", "Unsafe",
           "guard_conflict_resolution", "guard_relstorage_vote",
           "pickle_globals", "pickle_metadata"]

logger = logging.getLogger("zeo.server")

#: Value types a state being resolved may contain besides containers.
STATE_GLOBALS = frozenset({
    ("datetime", "date"), ("datetime", "datetime"), ("datetime", "time"),
    ("datetime", "timedelta"), ("datetime", "timezone"),
    ("decimal", "Decimal"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"),
    ("__builtin__", "set"), ("__builtin__", "frozenset"),
})

#: Opcodes that fetch a global or call the extension registry.
_EXTENSION_OPS = frozenset({"EXT1", "EXT2", "EXT4"})


class Unsafe(Exception):
    """A pickle names something conflict resolution must not touch."""


def pickle_globals(data: bytes) -> list[tuple[str, str]]:
    """The ``(module, name)`` pairs every pickle in *data* refers to.

    Raises `Unsafe` for extension codes and for ``STACK_GLOBAL`` (the name
    is computed on the stack; ZODB's own protocol-3 records never use it)
    and for data that isn't a sequence of well-formed pickles.
    """
    found: list[tuple[str, str]] = []
    stream = io.BytesIO(data)
    try:
        while stream.tell() < len(data):
            for opcode, arg, _ in pickletools.genops(stream):
                name = opcode.name
                if name == "GLOBAL" or name == "INST":
                    module, _, attribute = str(arg).partition(" ")
                    found.append((module, attribute))
                elif name == "STACK_GLOBAL" or name in _EXTENSION_OPS:
                    raise Unsafe(f"opcode {name}")
    except Unsafe:
        raise
    except Exception as error:
        raise Unsafe(f"unreadable pickle: {exception_text(error)}") from None
    return found


def _make_conflict_errors_safe() -> None:
    neutralise_get_pickle_metadata()


#: Class names whose verdict a guard remembers before it starts afresh.
MAX_REMEMBERED_NAMES = 4096


class ConflictResolutionGuard:
    """Decides which classes and values conflict resolution may load."""

    def __init__(self, packages: Iterable[str]) -> None:
        self.packages = tuple(packages)
        self._resolvable: dict[tuple[str, str], bool] = {}

    def check(self, records: Iterable[bytes]) -> None:
        """Raise `Unsafe` unless every name in every record is allowed."""
        for data in records:
            # The record's class, also when spelled as a (module, name)
            # tuple of strings rather than as a global.
            self.check_class(pickle_metadata(data))
            for name in pickle_globals(data):
                if name not in STATE_GLOBALS:
                    self.check_class(name)

    def check_class(self, name: tuple[str, str]) -> None:
        allowed = self._resolvable.get(name)
        if allowed is None:
            allowed = self._is_resolvable(*name)
            # The names come from clients: remembering every one they
            # make up would grow without bound. Real classes are few.
            if len(self._resolvable) >= MAX_REMEMBERED_NAMES:
                self._resolvable.clear()
            self._resolvable[name] = allowed
        if not allowed:
            raise Unsafe(f"{peer_repr(name[0] + '.' + name[1])} may not take part"
                         " in conflict resolution")

    def _is_resolvable(self, module: str, name: str) -> bool:
        if module.split(".")[0] not in self.packages or not name.isidentifier():
            return False
        try:
            value = getattr(importlib.import_module(module), name)
        except Exception:
            return False
        return (isinstance(value, type) and issubclass(value, persistent.Persistent)
                and callable(getattr(value, "_p_resolveConflict", None)))


def guard_conflict_resolution(storage: Any, packages: Iterable[str]) -> None:
    """Check records before *storage* resolves a conflict (see the module
    docstring). Storages without conflict resolution are left alone."""
    _make_conflict_errors_safe()
    resolve: Callable[..., bytes] | None = getattr(storage, "tryToResolveConflict", None)
    if resolve is None:
        return
    guard = ConflictResolutionGuard(packages)
    untransform = getattr(storage, "_crs_untransform_record_data", lambda data: data)

    def try_to_resolve_conflict(oid: bytes, committed_serial: bytes, old_serial: bytes,
                                newpickle: bytes, committed_data: bytes = b"") -> bytes:
        _check(guard, storage, untransform, oid, committed_serial, old_serial, newpickle,
               committed_data)
        return resolve(oid, committed_serial, old_serial, newpickle, committed_data)

    # An instance attribute: the storage's own store and undo find it first.
    storage.tryToResolveConflict = try_to_resolve_conflict
    if type(storage).__module__.split(".")[0] == "relstorage":
        guard_relstorage_vote(guard)
        fix_relstorage_conflict_resolution()


def _check(guard: ConflictResolutionGuard, storage: Any, untransform: Callable[[bytes], bytes],
           oid: bytes, committed_serial: bytes, old_serial: bytes, newpickle: bytes,
           committed_data: bytes) -> None:
    """Raise the client's ConflictError unless *guard* passes the three records."""
    try:
        records = [newpickle, storage.loadSerial(oid, old_serial),
                   committed_data or storage.loadSerial(oid, committed_serial)]
        guard.check(untransform(record) for record in records)
    except Exception as reason:   # Unsafe, or a revision that isn't there
        logger.info("not resolving a conflict on oid %s: %s", oid.hex(),
                    exception_text(reason))
        raise ConflictError(oid=oid, serials=(committed_serial, old_serial),
                            data=newpickle) from None


def guard_relstorage_vote(guard: ConflictResolutionGuard) -> None:
    """Put *guard* in front of RelStorage's own conflict resolution.

    RelStorage resolves conflicts in ``tpc_vote``, through a throw-away
    ``_CachedConflictResolver`` (ZODB's ``tryToResolveConflict`` over the
    states it prefetched), never through the storage's method: the
    instance attribute `guard_conflict_resolution` sets is not seen there.
    So that class's method is guarded too -- process-wide, like
    ``conflict_resolution_packages``. A RelStorage without that class is
    refused rather than served unguarded.
    """
    module_name, class_name = RELSTORAGE_RESOLVER
    try:
        resolver = getattr(importlib.import_module(module_name), class_name)
        original = resolver.__dict__.get("_zeo_unguarded", resolver.tryToResolveConflict)
    except (ImportError, AttributeError):
        raise RuntimeError(f"cannot guard RelStorage's conflict resolution: no"
                           f" {module_name}.{class_name}.tryToResolveConflict") from None

    def try_to_resolve_conflict(self: Any, oid: bytes, committed_serial: bytes,
                                old_serial: bytes, newpickle: bytes,
                                committed_data: bytes = b"") -> bytes:
        _check(guard, self, self._crs_untransform_record_data, oid, committed_serial,
               old_serial, newpickle, committed_data)
        return original(self, oid, committed_serial, old_serial, newpickle, committed_data)

    resolver._zeo_unguarded = original
    resolver.tryToResolveConflict = try_to_resolve_conflict
