"""Exceptions raised by the client storage.

``ClientDisconnected`` is a ``TransientError``: the ``transaction`` package
retries a transaction that failed with it, which is what an application
wants when the server went away for a moment.  Errors the server reports
are rebuilt as the ZODB exceptions they were (``zeo.protocol``'s error
table); anything the table doesn't know arrives as ``ServerException``.
"""
from __future__ import annotations

import transaction.interfaces
from ZODB.POSException import StorageError

from zeo.protocol import RemoteError

__all__ = [
    'ClientDisconnected',
    'ClientStorageError',
    'PickleServerRefused',
    'ProtocolError',
    'ServerBehind',
    'ServerException',
]


class ClientStorageError(StorageError):
    """Base class of the errors the client storage raises itself."""


class ClientDisconnected(ClientStorageError,
                         transaction.interfaces.TransientError):
    """No usable connection to a server.

    Raised by calls made while disconnected once ``wait_timeout`` has
    passed, by calls in flight when the connection is lost, and by any
    call of a transaction that began on a connection that is gone (a
    transaction never commits half on one connection and half on the
    next).
    """


class ProtocolError(ClientStorageError):
    """The server broke the protocol or can't speak ours."""


class PickleServerRefused(ProtocolError):
    """The server speaks pickle (``Z5``), which the client was configured
    to refuse (``accept_pickle_servers=False``)."""


class ServerBehind(ClientStorageError):
    """The server is at an older transaction than this client has seen:
    not used until it catches up, for at most ``server_behind_wait``."""


#: An exception the server raised that we don't rebuild: its class name
#: and payload (``class_name``, ``payload`` attributes).
ServerException = RemoteError
