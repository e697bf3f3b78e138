"""What a pickle (``Z5``) server may put in its messages: values only.

Rule: decoding a server's pickle rebuilds values and never calls
anything with arguments the server chose -- no class, no constructor, no
``__setstate__``.  A server can be hostile (or a man in the middle of a
connection without TLS), and whatever it can make us call, it can make us
call with ``os.system``-grade consequences: ``ConflictError(None, None,
None, None, data)`` alone used to unpickle *data* with a full unpickler
(see ``zeo.protocol.record_class``).

Besides the plain containers of ``zeo.protocol.client_pickle_globals()``
(copying an already decoded iterable runs nothing), a reference server
(ZEO 5/6 over ``Z5``) pickles some ZODB errors whole, as
``ZODB.POSException._recon(cls, state)`` -- the ``UndoError`` instances
inside ``MultipleUndoErrors``, for instance.  So the allow-list maps:

* each ``ZODB.POSException`` error class to an inert `ErrorClass` token:
  not callable, not a type (``NEWOBJ``/``NEWOBJ_EX`` refuse it), refusing
  ``BUILD`` (its ``__setstate__`` raises) and attribute assignment;
* ``ZODB.POSException._recon`` to `rebuild_error`, a slot-less object
  that accepts only such a token and a dict of plain attributes, makes
  the instance with ``BaseException.__new__`` (no ``__init__``, checked
  when the list is built) and stores the attributes in its ``__dict__``
  without calling anything the state names.  It too refuses ``BUILD``
  and attribute assignment, so a pickle can't change it for the next
  message.

What ``REDUCE``, ``INST``/``OBJ``, ``NEWOBJ``/``NEWOBJ_EX`` and ``BUILD``
can still reach: the container types (calling or ``__new__`` of a builtin
container only copies decoded values; a builtin type refuses attribute
assignment) and `rebuild_error`; ``BUILD`` on an error rebuilt by the same
message sets attributes of that fresh instance, which is no more than its
state could say.
"""
from __future__ import annotations

import pickle
import types
from typing import Any, NoReturn

from zeo.protocol import client_pickle_globals

__all__ = ['ErrorClass', 'allowed_server_globals', 'rebuild_error']

_MODULE = 'ZODB.POSException'


def _refuse(*args: Any) -> NoReturn:
    raise pickle.UnpicklingError('a server pickle may not change this object')


class ErrorClass:
    """An inert stand-in for a ZODB error class in a server pickle."""

    __slots__ = ('_cls',)
    _cls: type[BaseException]

    def __init__(self, cls: type[BaseException]) -> None:
        object.__setattr__(self, '_cls', cls)

    __setattr__ = __delattr__ = __setstate__ = _refuse

    def __repr__(self) -> str:
        return f'<ErrorClass {_MODULE}.{self._cls.__name__}>'


class _Rebuild:
    """``ZODB.POSException._recon`` as a server pickle may use it."""

    __slots__ = ()

    __setattr__ = __delattr__ = __setstate__ = _refuse

    def __call__(self, token: Any, state: Any) -> BaseException:
        if type(token) is not ErrorClass:
            raise pickle.UnpicklingError(
                f'_recon of {type(token).__name__!r:.100}, not a ZODB error class')
        if type(state) is not dict:
            raise pickle.UnpicklingError(
                f'_recon with a {type(state).__name__!r:.100} state, not a dict')
        args = state.get('args', ())
        if type(args) is not tuple and type(args) is not list:
            raise pickle.UnpicklingError('_recon: args must be a tuple')
        attributes = {}
        for key, value in state.items():
            if type(key) is not str or key.startswith('__'):
                raise pickle.UnpicklingError(
                    f'_recon: attribute name {key!r:.100} refused')
            if key != 'args':
                attributes[key] = value
        cls = token._cls
        error = cls.__new__(cls)  # a builtin __new__: runs nothing of ours
        error.args = tuple(args)
        error.__dict__.update(attributes)
        return error

    def __repr__(self) -> str:
        return '<rebuild_error>'


#: What ``ZODB.POSException._recon`` means in a server pickle.
rebuild_error = _Rebuild()


def _rebuildable(cls: Any, base: type) -> bool:
    # A ZODB error class whose instances BaseException.__new__ makes.
    return (isinstance(cls, type) and issubclass(cls, base)
            and cls.__module__ == _MODULE
            and not any('__new__' in vars(c) for c in cls.__mro__
                        if c.__module__ != 'builtins'))


def allowed_server_globals() -> types.MappingProxyType[tuple[str, str], Any]:
    """The client's allow-list for server pickles (see the module doc)."""
    from ZODB import POSException  # fixed module name, never peer-chosen
    allowed = dict(client_pickle_globals())
    allowed[(_MODULE, '_recon')] = rebuild_error
    for name, value in sorted(vars(POSException).items()):
        if _rebuildable(value, POSException.POSError):
            allowed[(_MODULE, name)] = ErrorClass(value)
    return types.MappingProxyType(allowed)
