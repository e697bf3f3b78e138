"""Shared-blob-dir mode: the client reads the server's own blob directory.

With ``shared_blob_dir=True`` the client and the server see the same
directory (a shared disk or a network file system).  Nothing is downloaded
and nothing is pruned: the directory has the *server's* layout (``bushy``,
or ``lawn`` for old ones, as recorded in its ``.layout``), a missing file
means the server has no such blob (``POSKeyError``), and a committed blob is
uploaded by moving it into the object's directory and sending the server
only its base name (``storeBlobShared``).

:class:`SharedBlobDir` offers the reading and staging part of
:class:`~zeo.client.blobs.cache.BlobCache`'s interface, so a client can hold
either one; ``fetch`` arguments are accepted and ignored.
"""
from __future__ import annotations

import os
from typing import Any
from typing import BinaryIO
from typing import Callable
from typing import TypeVar

import ZODB.blob
from ZODB.POSException import POSKeyError

from zeo.client.blobs.errors import BlobCacheLayoutError
from zeo.client.blobs.layout import LAYOUT_NAME
from zeo.client.blobs.layout import check_id

__all__ = ['SharedBlobDir']

F = TypeVar('F')


def _open_rb(path: str) -> BinaryIO:
    return open(path, 'rb')


class SharedBlobDir:
    """The server's blob directory ``directory``, seen by a client."""

    #: Never true: a shared directory belongs to the server.
    needs_pruning = False

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        layout = ZODB.blob.auto_layout_select(self.directory)
        # 'zeocache' may be registered in ZODB.blob.LAYOUTS (the reference
        # client does that), but a client cache is never a server's store.
        if layout == LAYOUT_NAME or layout not in ZODB.blob.LAYOUTS:
            raise BlobCacheLayoutError(self.directory, layout, 'bushy')
        self._helper = ZODB.blob.FilesystemHelper(self.directory, layout)
        self.layout = layout

    def __repr__(self) -> str:
        return f'<SharedBlobDir {self.directory!r} layout={self.layout!r}>'

    def path_for(self, oid: bytes, tid: bytes) -> str:
        """Where the server keeps blob revision ``(oid, tid)``."""
        check_id(oid, 'oid')
        check_id(tid, 'tid')
        return str(self._helper.getBlobFilename(oid, tid))

    def exists(self, oid: bytes, tid: bytes) -> bool:
        return os.path.isfile(self.path_for(oid, tid))

    def load(self, oid: bytes, tid: bytes, fetch: Any = None) -> str:
        """The path of ``(oid, tid)``; ``POSKeyError`` if there is none."""
        path = self.path_for(oid, tid)
        if not os.path.isfile(path):
            raise POSKeyError(f'No blob file at {path}', oid, tid)
        return path

    def open_committed(self, oid: bytes, tid: bytes, fetch: Any = None,
                       opener: Callable[[str], F] = _open_rb) -> F:  # type: ignore[assignment]
        """``opener(path)`` for ``(oid, tid)``; ``POSKeyError`` if none."""
        path = self.path_for(oid, tid)
        try:
            return opener(path)
        except FileNotFoundError:
            raise POSKeyError(f'No blob file at {path}', oid, tid) from None

    def temporary_directory(self) -> str:
        """The server directory's ``tmp`` (where ZODB puts new blobs)."""
        os.makedirs(self._helper.temp_dir, exist_ok=True)
        return str(self._helper.temp_dir)

    def stage(self, oid: bytes, tid: bytes,
              source_path: str | os.PathLike[str]) -> str:
        """Move the file to upload into the object's directory under a
        fresh ``*.tmp`` name and return that base name, the argument of
        ``storeBlobShared``."""
        check_id(tid, 'tid')
        self._helper.getPathForOID(oid, create=True)
        fd, target = self._helper.blob_mkstemp(oid, tid)
        os.close(fd)
        ZODB.blob.rename_or_copy_blob(os.fspath(source_path), target)
        return os.path.basename(target)

    def note_added(self, nbytes: int, files: int = 1) -> None:
        """Nothing to count: the server owns the directory."""

    def prune(self) -> int:
        """Nothing to prune: the server owns the directory."""
        return 0

    def stats(self) -> dict[str, int]:
        """All zero: nothing is cached or pruned by the client."""
        return dict.fromkeys(('files', 'bytes', 'pruned_files',
                              'pruned_bytes'), 0)

    def close(self) -> None:
        pass

