"""A ZEO 5/6 compatible ClientStorage for ZODB.

``ClientStorage(addr, **options)`` is the storage; ``client``, ``DB`` and
``connection`` are shortcuts for it; ``ClientDisconnected`` (a
``TransientError``) is what calls raise when no server can be reached.
The persistent and in-memory caches are in ``zeo.client.cache``.
"""
from zeo.client.config import ClientConfig
from zeo.client.errors import ClientDisconnected
from zeo.client.errors import ClientStorageError
from zeo.client.errors import ProtocolError
from zeo.client.errors import ServerException
from zeo.client.shortcuts import DB
from zeo.client.shortcuts import client
from zeo.client.shortcuts import connection

__all__ = [
    'ClientConfig',
    'ClientDisconnected',
    'ClientStorage',
    'ClientStorageError',
    'DB',
    'ProtocolError',
    'ServerException',
    'client',
    'connection',
]


def __getattr__(name: str):
    # ClientStorage pulls in asyncio and ZODB's storage machinery; import
    # it when first asked for, so that ``import zeo.client.cache`` stays light.
    if name == 'ClientStorage':
        from zeo.client.storage import ClientStorage
        return ClientStorage
    raise AttributeError(f"module 'zeo.client' has no attribute {name!r}")
