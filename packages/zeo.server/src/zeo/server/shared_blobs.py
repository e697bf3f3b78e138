"""Blob files in a directory that clients can write too, handled safely.

With a shared blob directory (``storeBlobShared``) a client writes a blob
file into the server's blob directory itself and sends only its name. Such
a client can also put symlinks there, hard links to committed blobs, or
swap a directory for a symlink at any moment. The rules here:

1. Below the blob directory's root no path component may be a symlink.
   Paths are walked one component at a time through directory descriptors
   opened with ``O_NOFOLLOW``; nothing trusts ``realpath`` or a check made
   earlier on a path string. The root itself is the operator's and may be a
   symlink.
2. A shared upload is *claimed* at ``storeBlobShared``: checked (a regular
   file with one link, so not another name of a committed blob) and at once
   renamed, through those descriptors, into the server's own upload
   directory, then checked again there to be the very inode checked before.
   From then on the transaction only uses the server's copy: nothing is
   looked up again in the client-writable directory at vote or abort.
3. ``sendBlob`` opens the file it streams the same way, the file itself with
   ``O_NOFOLLOW``, so a planted symlink is refused instead of served
   (`open_blob`), and streams it with `BlobMessages`.

A refusal raises `UnsafeBlobPath` (a ValueError), whose message names the
path as the client gave it, truncated.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from typing import IO, Any, Callable, Iterator

from zeo.protocol import peer_repr

__all__ = [
    "BlobMessages",
    "UnsafeBlobPath",
    "check_shared_name",
    "claim_shared_blob",
    "open_blob",
    "relative_parts",
]

logger = logging.getLogger("zeo.server")

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
#: O_NONBLOCK: a FIFO put in a file's place must not block the server in
#: open(); it is then refused as not a regular file.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class UnsafeBlobPath(ValueError):
    """A blob path that is, or goes through, something other than plain
    directories and one regular file inside the blob directory."""


def check_shared_name(filename: Any) -> str:
    """*filename* if it is a bare temporary-file name, else `UnsafeBlobPath`.

    No path separator (on POSIX a backslash is an ordinary character, and
    reference clients put ``repr(serial)`` in the name), not starting with a
    dot, ending in ``.tmp`` plus at most one character.
    """
    separators = {os.sep, os.altsep or os.sep, "/"}
    if not isinstance(filename, str) or not filename or "\0" in filename \
            or any(sep in filename for sep in separators) or filename.startswith(".") \
            or not (filename.endswith(".tmp") or filename[:-1].endswith(".tmp")):
        raise UnsafeBlobPath(f"invalid shared blob file name {peer_repr(filename)}")
    return filename


def relative_parts(root: str, path: str) -> list[str]:
    """The components of *path* below *root*, compared as strings (no
    symlink is resolved); `UnsafeBlobPath` if *path* is not below it."""
    root = os.path.join(os.path.abspath(root), "")
    path = os.path.abspath(path)
    if not path.startswith(root):
        raise UnsafeBlobPath(
            f"{peer_repr(path)} is not inside the blob directory {peer_repr(root)}")
    parts = path[len(root):].split(os.sep)
    if not parts or any(part in ("", ".", "..") for part in parts):
        raise UnsafeBlobPath(f"{peer_repr(path)} is not a plain path below {peer_repr(root)}")
    return parts


def _open_directory(root: str, parts: list[str]) -> int:
    """A descriptor of ``root/parts...``, refusing symlinks below *root*."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for part in parts:
            try:
                child = os.open(part, _DIRECTORY_FLAGS, dir_fd=fd)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafeBlobPath(
                        f"{peer_repr(part)} below {peer_repr(root)} is not a plain directory"
                        " (a symlink?)") from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _plain_file(info: os.stat_result, name: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeBlobPath(f"{peer_repr(name)} is not a regular file (a symlink?)")
    if info.st_nlink != 1:
        raise UnsafeBlobPath(
            f"{peer_repr(name)} has {info.st_nlink} links; a blob upload has exactly one"
            " (another name of a committed blob is not an upload)")


def open_blob(blob_dir: str | None, path: str) -> IO[bytes]:
    """Open the committed blob *path* for reading (Rule 3).

    When the storage has a blob directory (*blob_dir*) and *path* is in it,
    no component below it may be a symlink; the file itself never is one.
    """
    if blob_dir is None:
        fd = os.open(path, _FILE_FLAGS)
    else:
        parts = relative_parts(blob_dir, path)
        parent = _open_directory(blob_dir, parts[:-1])
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=parent)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise UnsafeBlobPath(f"the blob file {peer_repr(path)} is a symlink") from None
            raise
        finally:
            os.close(parent)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeBlobPath(f"the blob file {peer_repr(path)} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def claim_shared_blob(blob_dir: str, oid_dir: str, filename: Any,
                      new_upload_name: Callable[[], tuple[str, str, int]]) -> str:
    """Take the client's upload *filename* in *oid_dir* (Rule 2).

    *new_upload_name* returns the server's upload directory, a fresh name
    in it and a descriptor of it (owned by the caller, not closed here).
    Returns the path of the claimed file in that directory.
    """
    name = check_shared_name(filename)
    source_fd = _open_directory(blob_dir, relative_parts(blob_dir, oid_dir))
    try:
        try:
            before = os.stat(name, dir_fd=source_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise UnsafeBlobPath(
                f"no uploaded blob file {peer_repr(name)} in the shared blob directory") from None
        _plain_file(before, name)
        directory, target, target_fd = new_upload_name()
        try:
            # os.replace: os.rename under another name (ZODB's tests break
            # os.rename to act out another file system).
            os.replace(name, target, src_dir_fd=source_fd, dst_dir_fd=target_fd)
        except OSError:
            # Another file system (EXDEV), or another reason: copy, as
            # ZODB's rename_or_copy_blob does; _copy checks what it reads.
            _copy(name, source_fd, before, target, target_fd)
            return os.path.join(directory, target)
        after = os.stat(target, dir_fd=target_fd, follow_symlinks=False)
        if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino) \
                or not stat.S_ISREG(after.st_mode) or after.st_nlink != 1:
            # Swapped between the check and the rename: put back what we
            # took (it was in the client's directory) and refuse.
            os.replace(target, name, src_dir_fd=target_fd, dst_dir_fd=source_fd)
            raise UnsafeBlobPath(f"the shared blob file {peer_repr(name)} changed while"
                                 " the server claimed it")
        return os.path.join(directory, target)
    finally:
        os.close(source_fd)


def _copy(name: str, source_fd: int, before: os.stat_result, target: str,
          target_fd: int) -> None:
    """Copy the checked file *name* into the upload directory, then remove
    the client's file if it is still the one checked."""
    fd = os.open(name, _FILE_FLAGS, dir_fd=source_fd)
    with os.fdopen(fd, "rb") as source:
        info = os.fstat(source.fileno())
        if (info.st_dev, info.st_ino) != (before.st_dev, before.st_ino):
            raise UnsafeBlobPath(f"the shared blob file {peer_repr(name)} changed while"
                                 " the server claimed it")
        _plain_file(info, name)
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                      dir_fd=target_fd)
        try:
            with os.fdopen(out, "wb") as copy:
                os.fchmod(copy.fileno(), stat.S_IMODE(info.st_mode) | stat.S_IRUSR)
                shutil.copyfileobj(source, copy)
        except BaseException:
            os.unlink(target, dir_fd=target_fd)
            raise
    now = os.stat(name, dir_fd=source_fd, follow_symlinks=False)
    if (now.st_dev, now.st_ino) == (before.st_dev, before.st_ino):
        os.unlink(name, dir_fd=source_fd)


class BlobMessages:
    """The one-way messages that stream the open *blob*, read lazily chunk
    by chunk. The file is closed at the end, or when the iterator is
    dropped unfinished (the connection closed)."""

    def __init__(self, oid: bytes, serial: bytes, blob: IO[bytes], chunk_size: int) -> None:
        self._ids = (oid, serial)
        self._blob: IO[bytes] | None = blob
        self._chunk_size = chunk_size
        self._started = False

    def __iter__(self) -> Iterator[tuple[str, tuple[Any, ...]]]:
        return self

    def __next__(self) -> tuple[str, tuple[Any, ...]]:
        if not self._started:
            self._started = True
            return "receiveBlobStart", self._ids
        if self._blob is None:
            raise StopIteration
        chunk = self._blob.read(self._chunk_size)
        if chunk:
            return "receiveBlobChunk", self._ids + (chunk,)
        self.close()
        return "receiveBlobStop", self._ids

    def close(self) -> None:
        blob, self._blob = self._blob, None
        if blob is not None:
            blob.close()

    __del__ = close
