"""The per-connection transaction spool (the reference's "commit log").

Between ``tpc_begin`` and ``vote`` a client streams one-way calls
(``storea``, ``deleteObject``, ``checkCurrentSerialInTransaction``,
``restorea``, ``undoa``, ``storeBlobEnd``/``storeBlobShared``).  The
session appends each to a `TransactionSpool`; nothing touches the storage
and no lock is held, so slow uploads don't block other committers.  At
``vote`` the session takes the commit lock and replays the spool into the
storage by iterating over it.  In client-conflict-resolution mode a
transaction may be voted several times, so iteration can be repeated.

Memory
------

Operations are encoded as they arrive into an in-memory buffer.  Once
the buffer exceeds ``memory_limit`` (default 1 MiB) it is copied to an
anonymous temporary file in the directory given at construction and all
later operations are appended there, so memory use does not grow with the
size of the transaction.  The file is created with
`tempfile.TemporaryFile`, which on POSIX unlinks it immediately: nothing
is left behind even if the server is killed.  Replay reads the log in
chunks of `READ_CHUNK` bytes (or one record, if larger).

``max_size`` (default `DEFAULT_MAX_SIZE`, 1 GiB; None for no limit)
bounds the encoded size plus the bytes of the transaction's blob uploads
(`TransactionSpool.add_blob_bytes`; the upload files themselves are kept
by the session).  It exists because any client may stream stores and
blob chunks without ever voting; each spool is then a way to fill the
server's temp disk.  1 GiB is far above what ZODB applications commit in
one transaction while still bounding the damage per connection.
Exceeding it raises `ZODB.POSException.TransactionTooLargeError`, which a
ZODB client understands; the operation is then not recorded.  A shared
*budget* (`zeo.server.blob_uploads.SpoolBudget`), if given, bounds the
same bytes summed over every open transaction of the server: the spool
charges it as it grows and gives everything back at ``close``.

Errors
------

Bad arguments raise TypeError or ValueError and record nothing.  The
calls that append are one-way on the wire, so a session that wants the
client to see an error (rather than a closed connection) has to keep it
and report it at ``vote``.  If writing the temporary file fails half-way
(disk full), the log may end in a partial record: the spool is then
poisoned, and every later append or replay raises
`ZODB.POSException.StorageTransactionError` saying so; only ``close``
still works.

Blob files
----------

`TransactionSpool.store_blob` takes *ownership* of the blob file: the
spool records its path (also in memory, in `blob_paths`) and
`TransactionSpool.close` deletes it if it still exists.  A storage that
committed the blob has moved the file into its blob directory, so after a
successful commit there is nothing to delete; after an abort the leftover
upload is removed.  The spool never opens blob files.  Note that a
storage's ``storeBlob`` moves the file even if the vote later fails, so a
session that votes the same spool twice (client conflict resolution) must
hand the storage a copy or a hard link of the file on each vote.

Replay order is exactly the arrival order.  (The reference server
replays blob stores after all other operations; its client always sends
the plain ``storea`` for a blob's oid before the blob itself, so arrival
order gives the same result: the blob store comes last and wins.)

File format
-----------

The log is written and read only by this module, in one process, so it
is trusted; the format favours speed and simplicity.  It is a sequence
of records::

    offset  size  field
    0       1     operation code (`OP_STORE` ... `OP_STORE_BLOB`)
    1       4     payload length P, unsigned big-endian
    5       P     payload: the operation's fields, in order, each as
                  a 4-byte unsigned big-endian length L followed by L
                  bytes; L = 0xFFFFFFFF (`NONE_LENGTH`) encodes None
                  and is followed by nothing

The fields per operation are those of the named tuples below.  Paths are
encoded with `os.fsencode` and decoded with `os.fsdecode`.  A record that
does not parse raises `SpoolCorruptedError`: it means a bug or a damaged
temp directory, never bad client input.
"""
from __future__ import annotations

import io
import os
import struct
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING
from typing import Any
from typing import NamedTuple
from typing import Optional
from typing import Union

from ZODB.POSException import StorageTransactionError
from ZODB.POSException import TransactionTooLargeError
from zope.interface import implementer

from zeo.server.interfaces import ITransactionSpool

if TYPE_CHECKING:
    from zeo.server.blob_uploads import SpoolBudget


__all__ = [
    'DEFAULT_MEMORY_LIMIT',
    'DEFAULT_MAX_SIZE',
    'TransactionSpool',
    'SpoolCorruptedError',
    'Store',
    'Delete',
    'CheckCurrent',
    'Restore',
    'Undo',
    'StoreBlob',
    'Operation',
]

#: Encoded bytes kept in memory before moving to a temporary file.
DEFAULT_MEMORY_LIMIT = 1 << 20
#: Default bound on a transaction's encoded size (see module docstring).
DEFAULT_MAX_SIZE = 1 << 30
#: Bytes read from the temporary file at a time during replay.
READ_CHUNK = 1 << 16

_HEADER = struct.Struct('>BI')
_LENGTH = struct.Struct('>I')
#: Field length that stands for None.
NONE_LENGTH = 0xFFFFFFFF
#: The largest field (and record payload) the format can describe.
MAX_FIELD_LENGTH = NONE_LENGTH - 1

OP_STORE = 1
OP_DELETE = 2
OP_CHECK_CURRENT = 3
OP_RESTORE = 4
OP_UNDO = 5
OP_STORE_BLOB = 6


class Store(NamedTuple):
    """``storea``: store *data* for *oid*, read by the client at *serial*."""
    oid: bytes
    serial: bytes
    data: bytes


class Delete(NamedTuple):
    """``deleteObject``: delete *oid*, read at *serial*."""
    oid: bytes
    serial: bytes


class CheckCurrent(NamedTuple):
    """``checkCurrentSerialInTransaction``."""
    oid: bytes
    serial: bytes


class Restore(NamedTuple):
    """``restorea``: *data* and *prev_txn* may be None."""
    oid: bytes
    serial: bytes
    data: Optional[bytes]
    prev_txn: Optional[bytes]


class Undo(NamedTuple):
    """``undoa``: undo the transaction with this undo log id."""
    undo_id: bytes


class StoreBlob(NamedTuple):
    """``storeBlobEnd``/``storeBlobShared``: *blob_path* is owned by the spool.
    """
    oid: bytes
    serial: bytes
    data: bytes
    blob_path: str


Operation = Union[Store, Delete, CheckCurrent, Restore, Undo, StoreBlob]

# Operation code -> (class, name in counts(), field kinds).  Kinds:
# 'b' bytes, 'n' bytes or None, 'p' filesystem path (str).
_OPS: dict[int, tuple[type, str, str]] = {
    OP_STORE: (Store, 'store', 'bnb'),
    OP_DELETE: (Delete, 'delete', 'bb'),
    OP_CHECK_CURRENT: (CheckCurrent, 'check_current', 'bb'),
    OP_RESTORE: (Restore, 'restore', 'bbnn'),
    OP_UNDO: (Undo, 'undo', 'b'),
    OP_STORE_BLOB: (StoreBlob, 'store_blob', 'bnbp'),
}


class SpoolCorruptedError(Exception):
    """The spool's temporary file does not hold what we wrote (a bug)."""


def _check_8(value: Any, what: str) -> bytes:
    # oids, serials and tids come from the network; a wrong type or length
    # would otherwise only blow up later, inside the storage, at vote.
    if not isinstance(value, bytes):
        raise TypeError(
            f"{what} must be 8 bytes, got {type(value).__name__}")
    if len(value) != 8:
        raise ValueError(f"{what} must be 8 bytes long, got {len(value)}")
    return value


def _check_bytes(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"{what} must be bytes, got {type(value).__name__}")
    return value


@implementer(ITransactionSpool)
class TransactionSpool:
    """See `ITransactionSpool`.

    *directory* is where the temporary file goes once the log outgrows
    *memory_limit* bytes, e.g. the storage's ``temporaryDirectory()``.
    """

    def __init__(self, directory: str, *,
                 memory_limit: int = DEFAULT_MEMORY_LIMIT,
                 max_size: Optional[int] = DEFAULT_MAX_SIZE,
                 budget: Optional[SpoolBudget] = None) -> None:
        if (isinstance(memory_limit, bool) or not isinstance(memory_limit, int)
                or memory_limit < 0):
            raise ValueError(
                f"memory_limit must be an int >= 0, got {memory_limit!r}")
        if max_size is not None and (
                isinstance(max_size, bool) or not isinstance(max_size, int)
                or max_size < 1):
            raise ValueError(
                f"max_size must be an int >= 1 or None, got {max_size!r}")
        self._directory = directory
        self.memory_limit = memory_limit
        self.max_size = max_size
        self._file: Any = io.BytesIO()
        self._in_memory = True
        self._at_end = True   # False after a replay moved the position
        self._size = 0
        self._blob_bytes = 0
        self._budget = budget
        self._charged = 0     # bytes charged to the budget, given back at close
        self._count = 0
        self._counts: dict[str, int] = dict.fromkeys(
            (name for _, name, _ in _OPS.values()), 0)
        self._oids: set[bytes] = set()
        self._blob_paths: list[str] = []
        self._closed = False
        # Set when a write failed half-way (disk full, ...): the log may end
        # in a partial record, so it must not be replayed or extended.
        self._failure: Optional[BaseException] = None

    def __repr__(self) -> str:
        where = 'memory' if self._in_memory else 'file'
        state = ' closed' if self._closed else ''
        return (f'<{type(self).__name__} ops={self._count}'
                f' bytes={self._size} in {where}{state}>')

    # -- state ----------------------------------------------------------

    @property
    def size(self) -> int:
        """See `ITransactionSpool`."""
        return self._size

    @property
    def blob_bytes(self) -> int:
        """See `ITransactionSpool`."""
        return self._blob_bytes

    @property
    def in_memory(self) -> bool:
        """See `ITransactionSpool`."""
        return self._in_memory

    @property
    def closed(self) -> bool:
        """See `ITransactionSpool`."""
        return self._closed

    @property
    def oids(self) -> frozenset[bytes]:
        """See `ITransactionSpool`."""
        return frozenset(self._oids)

    @property
    def blob_paths(self) -> tuple[str, ...]:
        """See `ITransactionSpool`."""
        return tuple(self._blob_paths)

    def __len__(self) -> int:
        """See `ITransactionSpool`."""
        return self._count

    def counts(self) -> dict[str, int]:
        """See `ITransactionSpool`."""
        return dict(self._counts)

    # -- appending ------------------------------------------------------

    def store(self, oid: bytes, serial: Optional[bytes], data: bytes) -> None:
        """See `ITransactionSpool`."""
        _check_8(oid, 'oid')
        if serial is not None:   # None: a new object, as some clients say
            _check_8(serial, 'serial')
        _check_bytes(data, 'data')
        self._append(OP_STORE, (oid, serial, data))
        self._oids.add(oid)

    def delete(self, oid: bytes, serial: bytes) -> None:
        """See `ITransactionSpool`."""
        _check_8(oid, 'oid')
        _check_8(serial, 'serial')
        self._append(OP_DELETE, (oid, serial))
        self._oids.add(oid)

    def check_current(self, oid: bytes, serial: bytes) -> None:
        """See `ITransactionSpool`."""
        _check_8(oid, 'oid')
        _check_8(serial, 'serial')
        self._append(OP_CHECK_CURRENT, (oid, serial))

    def restore(self, oid: bytes, serial: bytes, data: Optional[bytes],
                prev_txn: Optional[bytes]) -> None:
        """See `ITransactionSpool`."""
        _check_8(oid, 'oid')
        _check_8(serial, 'serial')
        if data is not None:
            _check_bytes(data, 'data')
        if prev_txn is not None:
            _check_8(prev_txn, 'prev_txn')
        self._append(OP_RESTORE, (oid, serial, data, prev_txn))
        self._oids.add(oid)

    def undo(self, undo_id: bytes) -> None:
        """See `ITransactionSpool`."""
        _check_bytes(undo_id, 'undo_id')
        self._append(OP_UNDO, (undo_id,))

    def store_blob(self, oid: bytes, serial: bytes, data: bytes,
                   blob_path: str) -> None:
        """See `ITransactionSpool`."""
        _check_8(oid, 'oid')
        if serial is not None:
            _check_8(serial, 'serial')
        _check_bytes(data, 'data')
        if not isinstance(blob_path, str) or not blob_path:
            raise TypeError(
                f"blob_path must be a non-empty str, got {blob_path!r}")
        self._append(OP_STORE_BLOB,
                     (oid, serial, data, os.fsencode(blob_path)))
        self._oids.add(oid)
        self._blob_paths.append(blob_path)

    def add_blob_bytes(self, nbytes: int) -> None:
        """See `ITransactionSpool`."""
        self._check_usable('count blob bytes in')
        self._charge(self._size + self._blob_bytes + nbytes, nbytes,
                     'this blob data')
        self._blob_bytes += nbytes

    def remove_blob_bytes(self, nbytes: int) -> None:
        """See `ITransactionSpool`."""
        nbytes = min(nbytes, self._blob_bytes)
        self._blob_bytes -= nbytes
        if self._budget is not None:
            self._budget.release(nbytes)
            self._charged -= nbytes

    def _charge(self, total: int, nbytes: int, what: str) -> None:
        """Check *total* (this transaction's bytes with *nbytes* more)
        against max_size, then charge *nbytes* to the budget."""
        if self.max_size is not None and total > self.max_size:
            if self._budget is not None:
                self._budget.refusals["max-spool-size"] += 1
            raise TransactionTooLargeError(
                f"transaction too large: spooling {what} would bring it to"
                f" {total} bytes (blob uploads included), over the server's"
                f" limit of {self.max_size} bytes; commit smaller transactions"
                f" or ask the operator to raise the limit")
        if self._budget is not None:
            self._budget.charge(nbytes)
            self._charged += nbytes

    def _check_usable(self, doing: str) -> None:
        if self._closed:
            raise ValueError(f"cannot {doing} a closed transaction spool")
        if self._failure is not None:
            raise StorageTransactionError(
                f"cannot {doing} this transaction's spool: writing it failed"
                f" earlier ({self._failure!r}); abort the transaction and"
                f" check the server's temporary directory"
                f" ({self._directory})")

    def _append(self, op: int, fields: tuple[Optional[bytes], ...]) -> None:
        self._check_usable('append to')
        parts: list[bytes] = []
        payload_length = 0
        for field in fields:
            if field is None:
                parts.append(_LENGTH.pack(NONE_LENGTH))
                payload_length += _LENGTH.size
                continue
            if len(field) > MAX_FIELD_LENGTH:
                raise TransactionTooLargeError(
                    f"a single spooled field of {len(field)} bytes is"
                    f" larger than the spool format allows"
                    f" ({MAX_FIELD_LENGTH} bytes)")
            parts.append(_LENGTH.pack(len(field)))
            parts.append(field)
            payload_length += _LENGTH.size + len(field)
        if payload_length > MAX_FIELD_LENGTH:
            raise TransactionTooLargeError(
                f"a spooled operation of {payload_length} bytes is larger"
                f" than the spool format allows ({MAX_FIELD_LENGTH} bytes)")
        record_length = _HEADER.size + payload_length
        new_size = self._size + record_length
        self._charge(new_size + self._blob_bytes, record_length,
                     'this operation')
        if self._in_memory and new_size > self.memory_limit:
            self._spill()
        f = self._file
        try:
            if not self._at_end:
                f.seek(0, io.SEEK_END)
                self._at_end = True
            # writelines: no concatenation copy of possibly large data.
            f.writelines([_HEADER.pack(op, payload_length)] + parts)
        except BaseException as err:
            self._failure = err
            raise
        self._size = new_size
        self._count += 1
        self._counts[_OPS[op][1]] += 1

    def _spill(self) -> None:
        memory = self._file
        spill = tempfile.TemporaryFile(
            prefix='zeo-spool-', dir=self._directory)
        try:
            spill.write(memory.getbuffer())
        except BaseException:
            spill.close()
            raise
        self._file = spill
        self._in_memory = False
        self._at_end = True
        memory.close()

    # -- replay ---------------------------------------------------------

    def __iter__(self) -> Iterator[Operation]:
        """See `ITransactionSpool`."""
        self._check_usable('replay')
        return self._replay(self._size)

    def _replay(self, end: int) -> Iterator[Operation]:
        # Reads with explicit seeks, so that appends (which seek to the end
        # first, see _at_end) may happen between two steps of a replay.
        # `end` is fixed now: later appends are not part of this replay.
        # self._file is looked up on every read because an append may have
        # moved the log from memory to a file (same bytes, same offsets).
        buf = b''       # unparsed bytes read from the file
        start = 0       # offset in buf of the next record
        read_pos = 0    # file offset just after buf
        consumed = 0    # file offset of the next record

        while consumed < end:
            if self._closed:
                raise ValueError(
                    "the transaction spool was closed during replay")
            need = _HEADER.size
            for _ in range(2):   # header, then the whole record
                missing = need - (len(buf) - start)
                if missing > 0:
                    f = self._file
                    want = min(max(missing, READ_CHUNK), end - read_pos)
                    f.seek(read_pos)
                    self._at_end = False
                    data = f.read(want)
                    if len(data) < missing:
                        raise SpoolCorruptedError(
                            f"spool truncated at offset {read_pos}:"
                            f" needed {missing} bytes, got {len(data)}")
                    buf = buf[start:] + data
                    start = 0
                    read_pos += len(data)
                op, payload_length = _HEADER.unpack_from(buf, start)
                need = _HEADER.size + payload_length
            yield self._decode(op, buf, start + _HEADER.size,
                               start + need, consumed)
            start += need
            consumed += need

    @staticmethod
    def _decode(op: int, buf: bytes, pos: int, stop: int,
                offset: int) -> Operation:
        try:
            cls, _, kinds = _OPS[op]
        except KeyError:
            raise SpoolCorruptedError(
                f"unknown operation code {op} at spool offset {offset}"
            ) from None
        values: list[Any] = []
        for kind in kinds:
            if pos + _LENGTH.size > stop:
                raise SpoolCorruptedError(
                    f"record at spool offset {offset} is too short")
            (length,) = _LENGTH.unpack_from(buf, pos)
            pos += _LENGTH.size
            if length == NONE_LENGTH:
                if kind != 'n':
                    raise SpoolCorruptedError(
                        f"unexpected None in record at spool offset"
                        f" {offset}")
                values.append(None)
                continue
            if pos + length > stop:
                raise SpoolCorruptedError(
                    f"field overruns record at spool offset {offset}")
            value = buf[pos:pos + length]
            pos += length
            values.append(os.fsdecode(value) if kind == 'p' else value)
        if pos != stop:
            raise SpoolCorruptedError(
                f"trailing bytes in record at spool offset {offset}")
        return cls(*values)

    # -- cleanup --------------------------------------------------------

    def close(self) -> None:
        """See `ITransactionSpool`."""
        if self._closed:
            return
        self._closed = True
        if self._budget is not None:
            self._budget.release(self._charged)
            self._charged = 0
        blob_paths, self._blob_paths = self._blob_paths, []
        self._oids = set()
        f, self._file = self._file, None
        try:
            f.close()
        finally:
            # Leftover uploads are ours to remove; a committed blob has
            # been moved away by the storage, so most are already gone.
            errors: list[OSError] = []
            for path in blob_paths:
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    errors.append(err)
            if errors:
                raise errors[0]
