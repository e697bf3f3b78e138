"""A ZEO 5/6 compatible storage server for ZODB.

``server(...)`` starts a server in a background thread (or, with
``threaded=False``, a child process) and returns ``(address, stop)``; it
takes the reference ``ZEO.server``'s arguments. `StorageServer` is the
server itself, for use on an asyncio event loop; `ServerConfig` is its
configuration.
"""

from zeo.server.adhoc import server
from zeo.server.config import ServerConfig

__all__ = ["server", "ServerConfig", "StorageServer"]


def __getattr__(name: str):
    # StorageServer pulls in asyncio and the protocol; import it on demand.
    if name == "StorageServer":
        from zeo.server.storage_server import StorageServer
        return StorageServer
    raise AttributeError(f"module 'zeo.server' has no attribute {name!r}")
