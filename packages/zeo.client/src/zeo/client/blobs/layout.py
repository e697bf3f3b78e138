"""The ``zeocache`` layout of a client blob cache directory.

This is the layout of the reference ZEO client, so one directory can be
used by both clients (even at the same time: the lock files are the same
and are locked the same way, see :mod:`zeo.client.lockfiles`)::

    <directory>/
        .layout                     the text "zeocache"
        tmp/                        downloads in progress, upload staging
        check_size.lock             held by whoever is pruning
        check_size.attempt          "someone wanted to prune meanwhile"
        .users.lock                 shared-locked by every zeo.client using it
        .unsynced-<boot id>         files of that boot may not be on disk yet
        <oid % 997>/                a *bucket*, one of 997
            .lock                   the bucket lock
            <oid // 997>.<tid>.blob one committed blob revision

``oid`` is the object id read as an unsigned 64-bit big-endian integer,
written in decimal; ``tid`` is the transaction id as 16 lower-case hex
digits.  For example oid 1000, tid 0x03 is ``3/1.0000000000000003.blob``.

A file at its final ``.blob`` path is always complete and never changes:
a revision of a blob is immutable, so there is nothing to invalidate; a
file only ever disappears (pruning) and may come back (download).
"""
from __future__ import annotations

import os
import re

__all__ = [
    'LAYOUT_NAME', 'LAYOUT_MARKER', 'BUCKETS', 'BLOB_SUFFIX', 'LOCK_NAME',
    'TMP_DIR', 'CHECK_SIZE_LOCK', 'CHECK_SIZE_ATTEMPT', 'USERS_LOCK',
    'UNSYNCED_PREFIX',
    'bucket_name', 'blob_relpath', 'parse_blob_relpath', 'is_bucket_name',
    'check_id',
]

#: The name written in ``.layout``; ZODB's ``FilesystemHelper`` writes and
#: checks the same marker for its own layouts (``bushy``, ``lawn``).
LAYOUT_NAME = 'zeocache'
LAYOUT_MARKER = '.layout'
#: Number of bucket directories.  997 is prime, so consecutive oids spread
#: evenly and no directory grows past about 1/997 of the cache.
BUCKETS = 997
BLOB_SUFFIX = '.blob'
LOCK_NAME = '.lock'
TMP_DIR = 'tmp'
CHECK_SIZE_LOCK = 'check_size.lock'
CHECK_SIZE_ATTEMPT = 'check_size.attempt'
#: See :mod:`zeo.client.blobs.unsynced`.
USERS_LOCK = '.users.lock'
UNSYNCED_PREFIX = '.unsynced-'

# ASCII digits only: ``\d`` would also accept other scripts' digits.
_BUCKET = re.compile(r'[0-9]+\Z')
_BLOB = re.compile(r'([0-9]+)\.([0-9a-f]{16})' + re.escape(BLOB_SUFFIX) + r'\Z')


def check_id(value: bytes, what: str) -> int:
    """Check an 8-byte oid or tid and return it as an integer."""
    if type(value) is not bytes or len(value) != 8:
        raise ValueError(f'{what} must be 8 bytes, not {value!r}')
    return int.from_bytes(value, 'big')


def is_bucket_name(name: str) -> bool:
    """Whether ``name`` looks like a bucket directory (as the reference
    pruner decides it: all digits)."""
    return _BUCKET.match(name) is not None


def bucket_name(oid: bytes) -> str:
    """The bucket directory name of ``oid``."""
    return str(check_id(oid, 'oid') % BUCKETS)


def blob_relpath(oid: bytes, tid: bytes) -> str:
    """The path of blob revision ``(oid, tid)`` relative to the directory."""
    base, bucket = divmod(check_id(oid, 'oid'), BUCKETS)
    return os.path.join(
        str(bucket), f'{base}.{check_id(tid, "tid"):016x}{BLOB_SUFFIX}')


def parse_blob_relpath(relpath: str) -> tuple[bytes, bytes] | None:
    """The ``(oid, tid)`` stored at ``relpath``, or None if it is not a
    blob path of this layout.  Inverse of :func:`blob_relpath`."""
    bucket, sep, name = relpath.replace(os.sep, '/').partition('/')
    if not sep or not is_bucket_name(bucket):
        return None
    match = _BLOB.match(name)
    if match is None:
        return None
    rem = int(bucket)
    if rem >= BUCKETS or (bucket != '0' and bucket.startswith('0')):
        return None
    base_text, tid_hex = match.groups()
    if base_text != '0' and base_text.startswith('0'):
        return None
    oid = int(base_text) * BUCKETS + rem
    if oid >= 1 << 64:
        return None
    return oid.to_bytes(8, 'big'), bytes.fromhex(tid_hex)
