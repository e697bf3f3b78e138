"""Shortcuts: a client storage, a database on one, a connection to one."""
from __future__ import annotations

from typing import Any

__all__ = ['client', 'DB', 'connection']


def client(*args: Any, **kw: Any) -> Any:
    """``ClientStorage(*args, **kw)``."""
    from zeo.client.storage import ClientStorage
    return ClientStorage(*args, **kw)


def DB(*args: Any, **kw: Any) -> Any:
    """A ``ZODB.DB`` on ``client(*args, **kw)``; the storage is closed if
    the database can't be opened."""
    import ZODB
    storage = client(*args, **kw)
    try:
        return ZODB.DB(storage)
    except BaseException:
        storage.close()
        raise


def connection(*args: Any, **kw: Any) -> Any:
    """A ZODB connection to ``DB(*args, **kw)``; closing it closes the
    database too."""
    db = DB(*args, **kw)
    try:
        return db.open_then_close_db_when_connection_closes()
    except BaseException:
        db.close()
        raise
