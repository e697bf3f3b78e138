"""The blob half of ``ClientStorage`` (see ``zeo.client.storage``).

Blobs live either in a client-side blob cache (`BlobCache`: downloaded on
demand, uploaded in chunks when committed) or, with ``shared_blob_dir``,
in the server's own blob directory, which the client reads directly and
writes into before telling the server the file's name.

Downloads: ``sendBlob`` makes the server send ``receiveBlobStart``, any
number of ``receiveBlobChunk`` and ``receiveBlobStop`` one-way messages,
then reply; the messages are handled in wire order by whichever thread
reads the connection (the asking thread itself, usually; see
``zeo.client.connections``) and written into the download the asking
thread registered.
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Any
from typing import Callable

from ZODB.POSException import POSKeyError, Unsupported
from zeo.protocol import peer_repr

from zeo.client.config import ClientConfig
from zeo.client.transaction_buffer import TransactionBuffer
from zeo.client.transaction_buffer import blob_upload

__all__ = ['BLOB_CHUNK_SIZE', 'ClientBlobs']

logger = logging.getLogger('zeo.client')

#: Bytes per ``storeBlobChunk``.
BLOB_CHUNK_SIZE = 1 << 20


def _as_bytes(value: Any, encoding: str = 'utf-8') -> bytes:
    return value.encode(encoding) if isinstance(value, str) else value


class _Download:
    """A blob being received (see ``receiveBlobChunk``)."""

    __slots__ = ('file', 'size', 'started', 'error')

    def __init__(self, file: Any) -> None:
        self.file = file
        self.size = 0
        self.started = False
        self.error: BaseException | None = None


class ClientBlobs:
    """``IBlobStorage`` for `ClientStorage`, and the server's blob
    callbacks.  A mixin: it uses the storage's runner and transactions."""

    __name__: str
    blob_dir: str | None
    shared_blob_dir: bool
    fshelper: Any
    #: A BlobCache, or a SharedBlobDir (the server's directory).
    _blobs: Any
    _pruner: Any
    _downloads: dict[tuple[bytes, bytes], _Download]
    _runner: Any
    _server_call: Any
    #: ClientStorage's: the transaction's buffer, if *txn* commits here.
    _check_trans: Callable[[Any, str], TransactionBuffer]

    def _open_blobs(self, config: ClientConfig) -> None:
        self.blob_dir = config.blob_dir
        self.shared_blob_dir = config.shared_blob_dir
        self._blobs = self.fshelper = self._pruner = None
        self._downloads = {}
        if not config.blob_dir:
            return
        if config.shared_blob_dir:
            import ZODB.blob
            from zeo.client.blobs.shared import SharedBlobDir
            self._blobs = SharedBlobDir(config.blob_dir)
            # As the reference has it (ZODB's blob tests use it).
            self.fshelper = ZODB.blob.FilesystemHelper(config.blob_dir)
            return
        from zeo.client.blobs.cache import BlobCache
        on_needs_pruning = None
        if config.blob_cache_size is not None:
            # Pruning scans the directory: one long-lived worker thread
            # does it, never the event loop or the committing thread.
            from concurrent.futures import ThreadPoolExecutor
            self._pruner = ThreadPoolExecutor(
                1, thread_name_prefix=f'zeo.client {self.__name__} blob pruner')
            on_needs_pruning = self._prune_soon
        self._blobs = BlobCache(
            config.blob_dir, size=config.blob_cache_size,
            size_check=config.blob_cache_size_check,
            on_needs_pruning=on_needs_pruning)
        if self._blobs.needs_pruning:  # raised while constructing
            self._prune_soon()

    def _prune_soon(self) -> None:
        cache = self._blobs
        if cache is None:
            return
        try:
            self._pruner.submit(cache.prune)
        except RuntimeError:  # shut down: closing
            pass

    def _close_blobs(self) -> None:
        try:
            if self._blobs is not None:
                self._blobs.close()
        finally:
            if self._pruner is not None:
                self._pruner.shutdown(wait=False)

    def _blob_store(self) -> Any:
        if self._blobs is None:
            raise Unsupported('No blob cache directory is configured.')
        return self._blobs

    # -- IBlobStorage -----------------------------------------------------------------

    def temporaryDirectory(self) -> str:
        return self._blob_store().temporary_directory()

    def loadBlob(self, oid: bytes, serial: bytes) -> str:
        return self._blob_store().load(oid, serial, self._fetch_blob)

    def openCommittedBlobFile(self, oid: bytes, serial: bytes, blob: Any = None) -> Any:
        blobs = self._blob_store()
        if blob is None:
            return blobs.open_committed(oid, serial, self._fetch_blob)
        import ZODB.blob
        return blobs.open_committed(
            oid, serial, self._fetch_blob,
            lambda path: ZODB.blob.BlobFile(path, 'r', blob))

    def _fetch_blob(self, oid: bytes, serial: bytes) -> None:
        """Download a blob into the blob cache (which holds its lock).

        The chunks arrive as ``receiveBlob*`` messages, written by the
        reading thread into the download registered here; the reply to
        ``sendBlob`` comes after the last of them."""
        key = (oid, serial)
        with self._blobs.begin_download(oid, serial) as file:
            download = self._downloads[key] = _Download(file)
            try:
                self._server_call('sendBlob', oid, serial)
            finally:
                del self._downloads[key]
            if download.error is not None:
                raise download.error
            if not download.started:
                raise POSKeyError('No blob file', oid, serial)

    def storeBlob(self, oid: bytes, serial: bytes, data: bytes, blobfilename: str,
                  version: str, txn: Any) -> None:
        if version:
            raise Unsupported('versions are not supported')
        tbuf = self._check_trans(txn, 'storeBlob')
        blobs = self._blob_store()
        if self.shared_blob_dir:
            # The server takes the file from its own directory.
            # (The serial only names the file; old callers pass a str.)
            name = blobs.stage(oid, _as_bytes(serial, 'latin-1'), blobfilename)
            self._runner.one_way(tbuf.channel, 'storeBlobShared',
                                 (oid, serial, data, name, id(txn)))
        else:
            import ZODB.blob
            fd, target = tempfile.mkstemp(prefix='upload-', suffix='.tmp',
                                          dir=blobs.temporary_directory())
            os.close(fd)
            ZODB.blob.rename_or_copy_blob(blobfilename, target, chmod=False)
            tbuf.blobs.append((oid, target))
            self._runner.stream(tbuf.channel,
                                blob_upload(target, oid, serial, data, id(txn), BLOB_CHUNK_SIZE))
        tbuf.store(oid, data)

    def _blobs_committed(self, blobs: list[tuple[bytes, str]], tid: bytes | None) -> None:
        """Move the uploaded files into the blob cache (or drop them)."""
        for oid, path in blobs:
            try:
                if tid is None:
                    os.remove(path)
                else:
                    self._blobs.add_committed(oid, tid, path)
            except OSError as error:
                logger.warning('%s: could not keep the committed blob %s: %s',
                               self.__name__, path, error)

    # -- server callbacks, in wire order (see the module docstring) ---------------------

    def receiveBlobStart(self, oid: bytes, serial: bytes) -> None:
        download = self._downloads.get((oid, serial))
        if download is None:
            logger.warning('%s: unexpected blob %s/%s from the server',
                           self.__name__, peer_repr(oid), peer_repr(serial))
        else:
            download.started = True

    def receiveBlobChunk(self, oid: bytes, serial: bytes, chunk: bytes) -> None:
        download = self._downloads.get((oid, serial))
        if download is None or download.error is not None:
            return
        try:
            download.file.write(chunk)
            download.size += len(chunk)
        except Exception as error:  # handed to the downloading thread
            download.error = error

    def receiveBlobStop(self, oid: bytes, serial: bytes) -> None:
        download = self._downloads.get((oid, serial))
        if download is not None and download.error is None:
            try:
                download.file.flush()
            except Exception as error:
                download.error = error
