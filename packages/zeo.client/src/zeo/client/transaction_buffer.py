"""What a transaction changed, kept until ``tpc_finish`` updates the cache.

After a commit the client knows the new current revision of every object
it stored -- unless the server resolved a conflict on it, in which case
the committed data is not what the client sent.  The buffer remembers the
data of each stored object (the last store of an object wins; a
client-side resolution replaces it), the objects the server resolved or
an undo touched, and the blob files to move into the blob cache.

Memory is bounded: once the buffered data would exceed *limit* bytes
(the client cache's size: more can't be cached anyway) further objects
are remembered without their data and only invalidated at the end.
"""
from __future__ import annotations

from typing import Any, Iterator

__all__ = ['TransactionBuffer', 'blob_upload']


class TransactionBuffer:
    """The client side of one transaction on one connection."""

    def __init__(self, transaction: Any, channel: Any, limit: int) -> None:
        self.transaction = transaction
        #: The connection the transaction runs on; it can't move to another.
        self.channel = channel
        self._limit = limit
        self._size = 0
        self._data: dict[bytes, bytes | None] = {}
        self._server_resolved: set[bytes] = set()
        self._client_resolved: set[bytes] = set()
        #: ``(oid, path)`` of blob files uploaded in this transaction.
        self.blobs: list[tuple[bytes, str]] = []

    def store(self, oid: bytes, data: bytes | None) -> None:
        """Remember that *oid* gets *data* (None: deleted or unknown)."""
        if data is not None:
            size = len(data)
            if self._size + size > self._limit:
                data = None
            else:
                self._size += size
        self._data[oid] = data

    def resolved_by_server(self, oid: bytes) -> None:
        """The server resolved a conflict on *oid* (or an undo changed it):
        our data, if any, is not what was committed."""
        self._server_resolved.add(oid)

    def resolved_by_client(self, oid: bytes, data: bytes) -> None:
        """We resolved a conflict on *oid*: *data* is what gets committed."""
        self._client_resolved.add(oid)
        self._server_resolved.discard(oid)
        self._data[oid] = data

    def resolved(self) -> list[bytes]:
        """The oids ``tpc_vote`` reports as resolved (ZODB reloads them)."""
        return sorted(self._server_resolved | self._client_resolved)

    def updates(self) -> Iterator[tuple[bytes, bytes | None, bool]]:
        """``(oid, data or None, resolved_by_server)`` for the cache."""
        resolved = self._server_resolved
        for oid, data in self._data.items():
            yield oid, data, oid in resolved
        for oid in resolved:
            if oid not in self._data:
                yield oid, None, True

    def __len__(self) -> int:
        return len(self._data)


def blob_upload(path: str, oid: bytes, serial: bytes, data: bytes, txn_id: int,
                chunk_size: int) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """The one-way messages that upload the blob file *path*, read lazily
    (by the event loop, as fast as the connection takes them)."""
    yield 'storeBlobStart', ()
    with open(path, 'rb') as file:
        while True:
            chunk = file.read(chunk_size)
            if not chunk:
                break
            yield 'storeBlobChunk', (chunk,)
    yield 'storeBlobEnd', (oid, serial, data, txn_id)
