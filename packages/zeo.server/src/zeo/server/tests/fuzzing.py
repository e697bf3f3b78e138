"""An in-process harness for fuzzing the server's dispatch, and hostile pickles.

`Harness` runs a real `StorageServer` over a real FileStorage (with a blob
directory) on a private event loop, started without any listening socket.
Its sessions are real `StorageSession` objects; `Harness.dispatch` hands a
call to one the way the network adapter does (see `zeo.server.session`):

- a name outside `EXPOSED_METHODS`, or anything but ``register`` before
  ``register``, closes the connection; any exposed method may come as a
  call or as a one-way message;
- an exception from a call is an error reply, from a one-way message
  (now or from its `Delayed`) it closes the connection;
- every reply, error reply and notification is encoded with both codecs,
  as the adapter would before writing it.

`Harness.serve_bytes` does the same for raw bytes from a client, through a
real `ServerConnection` (framing, both codecs, the restricted unpickler).

After each call `check_invariants` looks at the shared state (commit lock,
counters, the storage's open transaction, the marker file a hostile pickle
would create); `reset` checks that every call on an open connection is
answered once the commit lock's holders have gone, closes every connection
and proves that a normal commit still works; `close` stops the server and
checks the file with ``fstest`` and by reopening it without its index.
Used by ``test_fuzz`` and by `zeo.server.tests.fuzz_server`.
"""

from __future__ import annotations

import asyncio
import collections
import os
import struct
import time
from typing import Any, Iterator

from zope.interface import implementer

from zeo.protocol import (
    NEED_DATA, Call, ConnectionClosed, EncodeError, ErrorReply, Heartbeat, OneWayCall,
    ProtocolAgreed, RemoteProtocolError, Reply, ServerConnection, exception_text,
    exception_to_wire)
from zeo.protocol.msgpack_codec import MsgpackCodec
from zeo.protocol.pickle_codec import PickleCodec
from zeo.server.config import ServerConfig
from zeo.server.interfaces import ISessionPeer
from zeo.server.results import Delayed
from zeo.server.session import EXPOSED_METHODS, ONE_WAY_METHODS, SYNC_METHODS, StorageSession

Z64 = b"\0" * 8
MAXTID = b"\x7f" + b"\xff" * 7
METHODS = tuple(sorted(SYNC_METHODS | ONE_WAY_METHODS))

#: Errors that only a bug raises, whatever the input. (AssertionError only
#: from zeo's own code: FileStorage's index answers a non-bytes oid with one.)
INTERNAL_ERRORS = (NameError, SystemError, MemoryError)


def hypothesis_settings() -> Any:
    """The fuzz tests' hypothesis settings.  (hypothesis is a test extra,
    which `zeo.server.tests.fuzz_server` under ``bin/py`` does without.)"""
    from hypothesis import HealthCheck, settings

    # One failure at a time: zope.testrunner does not print exception groups.
    return settings(deadline=None, database=None, report_multiple_bugs=False,
                    suppress_health_check=list(HealthCheck))

#: Names that are no RPC, and must close the connection.
NOT_METHODS = ("", "nope", "connection_lost", "transaction_timed_out", "_storage",
               "__init__", "notify", "peer", ".reply", "tpc_vote", "store")
class InternalError(AssertionError):
    """The server broke one of its own rules; the fuzzer's finding."""


def hostile_pickles(marker: str) -> list[bytes]:
    """Pickles that create the file *marker* when a permissive unpickler
    loads them, through as many different doors as possible."""
    path = marker.encode()

    def text(value: bytes) -> bytes:          # BINUNICODE
        return b"X" + struct.pack("<I", len(value)) + value

    def global_(module: bytes, name: bytes) -> bytes:
        return b"c" + module + b"\n" + name + b"\n"

    touch = text(b"touch " + path)
    return [
        # REDUCE: os.system("touch ...")
        b"\x80\x03" + global_(b"os", b"system") + touch + b"\x85R.",
        # REDUCE: builtins.open(path, "w")
        b"\x80\x03" + global_(b"builtins", b"open") + text(path) + text(b"w") + b"\x86R.",
        # REDUCE: exec of source text
        b"\x80\x03" + global_(b"builtins", b"exec")
        + text(b"open(%r, 'w').close()" % path) + b"\x85R.",
        # STACK_GLOBAL (protocol 4) then REDUCE
        b"\x80\x04" + text(b"os") + text(b"system") + b"\x93" + touch + b"\x85R.",
        # INST: MARK args, then the class to call by name
        b"(" + text(path) + text(b"w") + b"ibuiltins\nopen\n.",
        # OBJ: MARK class args OBJ, a class whose constructor runs a program
        b"\x80\x02(" + global_(b"subprocess", b"Popen")
        + b"](" + text(b"touch") + text(path) + b"eo.",
        # The first pickle of a ZODB record: a (class, args) tuple whose
        # class is a call, as conflict resolution reads it.
        b"\x80\x03" + global_(b"os", b"system") + touch + b"\x85RN\x86.",
    ]


class Connection:
    """One simulated client connection: its session and whether it is open."""

    def __init__(self, harness: Harness, number: int) -> None:
        self.peer = _Peer(harness, self)
        self.session = StorageSession(harness.server.storages, self.peer, f"fuzz-{number}")
        self.closed = False
        self.close_reason: str | None = None


@implementer(ISessionPeer)
class _Peer:
    """The session's side of a connection: encodes what would be sent."""

    #: Everything is "sent" at once: output never backs up.
    writing_paused_for = 0.0
    #: Log lines name the session by its own label.
    label = peer = None

    def __init__(self, harness: Harness, connection: Connection) -> None:
        self.harness = harness
        self.connection = connection

    def notify(self, method: str, args: tuple[Any, ...]) -> None:
        if not self.connection.closed:
            self.harness.encode(OneWayCall(method, args), self.connection)

    def stream(self, messages: Iterator[tuple[str, tuple[Any, ...]]]) -> None:
        try:
            for method, args in messages:
                self.notify(method, args)
        except OSError as error:
            self.harness.close_connection(self.connection, f"blob read failed: {error}")

    def run_in_thread(self, function: Any, *, pack: bool = False,
                      commit: bool = False) -> Delayed:
        done = self.harness.server.run_in_thread(function, pack=pack, commit=commit)
        self.harness.threads.append(done)
        return done

    def close(self, reason: str | None) -> None:
        self.harness.close_connection(self.connection, reason or "closed by the session")


class Harness:
    """See the module docstring. *directory* must exist and be empty."""

    def __init__(self, directory: str) -> None:
        from ZODB.FileStorage import FileStorage

        from zeo.server.storage_server import StorageServer

        self.directory = directory
        self.path = os.path.join(directory, "Data.fs")
        self.marker = os.path.join(directory, "MARKER")
        self.hostile = hostile_pickles(self.marker)
        storage = FileStorage(self.path, blob_dir=os.path.join(directory, "blobs"))
        self.loop = asyncio.new_event_loop()
        # No transaction timeout: its timer would fire between examples.
        self.server = StorageServer({"1": storage}, ServerConfig(transaction_timeout=None))
        self.loop.run_until_complete(self.server.start([]))
        self.served = self.server.storages["1"]
        self.storage = storage
        self.codecs = (MsgpackCodec(), PickleCodec())
        self.connections: list[Connection] = []
        self.delayed: list[tuple[Connection, Delayed]] = []
        self.threads: list[Delayed] = []   # work handed to threads
        self.numbered = 0
        #: How many calls went through `dispatch`, and what came of them.
        self.calls = 0
        self.outcomes: collections.Counter[str] = collections.Counter()
        #: oid -> data of the harness's own commits, checked at the end.
        self.committed: dict[bytes, bytes] = {}
        self.last_reply: Any = None
        self.closed = False
        self.normal_commit(b"sentinel")

    # -- connections and calls ---------------------------------------------------

    def connect(self) -> Connection:
        self.numbered += 1
        connection = Connection(self, self.numbered)
        self.connections.append(connection)
        return connection

    def close_connection(self, connection: Connection, reason: str) -> None:
        if connection.closed:
            return
        connection.closed = True
        connection.close_reason = reason
        connection.session.connection_lost()

    def dispatch(self, connection: Connection, method: Any, args: Any,
                 one_way: bool | None = None) -> str:
        """Hand ``method(*args)`` to the session as the adapter does; return
        ``reply``, ``error``, ``pending``, ``sent`` (one-way) or ``closed``.
        *one_way* says how the call came (None: as its name says)."""
        self.calls += 1
        outcome = self._dispatch(connection, method, args, one_way)
        self.outcomes[outcome] += 1
        self.run_loop()
        # Work handed to threads (slow reads, packs) ends before the next
        # call: what hypothesis draws next must not depend on thread timing.
        if not self.run_loop(lambda: all(d.settled for d in self.threads), timeout=60):
            raise InternalError("work handed to a thread never finished")
        self.check_invariants()
        return outcome

    def _dispatch(self, connection: Connection, method: Any, args: Any,
                  one_way: bool | None) -> str:
        if connection.closed:
            return "closed"
        session = connection.session
        sync = method in SYNC_METHODS if one_way is None else not one_way
        if method not in EXPOSED_METHODS:
            self.close_connection(connection, f"unknown method {method!r:.200}")
            return "closed"
        if not session.registered and method != "register":
            self.close_connection(connection, f"{method!r} before register")
            return "closed"
        try:
            result = getattr(session, method)(*args)
        except Exception as error:
            _check_not_internal(method, error)
            if not sync:
                # Formatted as the adapter does: if str() fails, so would it.
                self.close_connection(connection,
                                      f"{method} failed: {exception_text(error)}")
                return "closed"
            self._error_reply(connection, error)
            return "error"
        if not sync:
            if type(result) is Delayed:
                def close_on_error(error: BaseException | None, value: Any) -> None:
                    if error is not None:
                        self.close_connection(
                            connection, f"{method} failed: {exception_text(error)}")
                result.add_callback(close_on_error)
            return "sent"
        if type(result) is Delayed:
            self.delayed.append((connection, result))
            result.add_callback(lambda error, value: self._settled(connection, error, value))
            return "pending"
        return self._reply(connection, result)

    def _settled(self, connection: Connection, error: BaseException | None, value: Any) -> None:
        if connection.closed:
            return
        if error is None:
            self._reply(connection, value)
        else:
            _check_not_internal("a delayed call", error)
            self._error_reply(connection, error)

    def _reply(self, connection: Connection, value: Any) -> str:
        self.last_reply = value
        for codec in self.codecs:
            try:
                codec.encode(Reply(1, value))
            except EncodeError:
                # The adapter answers with an error instead (as the reference).
                self._error_reply(connection, ValueError("the result cannot be encoded"))
                return "error"
        return "reply"

    def _error_reply(self, connection: Connection, error: BaseException) -> None:
        class_name, payload = exception_to_wire(error)
        if not self.encode(ErrorReply(1, class_name, payload), connection):
            raise InternalError(f"an error reply for {error!r:.200} cannot be encoded")

    def encode(self, message: Any, connection: Connection) -> bool:
        """Encode *message* with both codecs; an unencodable one closes
        the connection (the adapter's rule). False if it did."""
        for codec in self.codecs:
            try:
                codec.encode(message)
            except EncodeError as error:
                self.close_connection(connection, f"cannot encode: {error}")
                return False
        return True

    def run_loop(self, until: Any = None, timeout: float = 0.0) -> bool:
        """Run the loop's ready callbacks, then until *until()* is true or
        *timeout* seconds have passed; return what *until* said last."""
        async def turn() -> bool:
            deadline = time.monotonic() + timeout
            while True:
                await asyncio.sleep(0)
                done = until is None or until()
                if done or time.monotonic() >= deadline:
                    return bool(done)
                await asyncio.sleep(0.002)
        return self.loop.run_until_complete(turn())

    def serve_bytes(self, encoding: str, data: bytes) -> str:
        """*data*, what a client sends after the handshake, through a real
        `ServerConnection` (framing, decoding, the restricted unpickler),
        each event dispatched as the adapter does; then the client waits
        for its answers (`settle`) and closes. Return "closed" if the
        server closed the connection first."""
        wire = ServerConnection(encoding=encoding, native=False)
        wire.initiate()
        wire.receive_data(struct.pack(">I", 2) + encoding.encode() + b"5")
        if type(wire.next_event()) is not ProtocolAgreed:
            raise InternalError("the handshake failed")
        connection = self.connect()
        try:
            for chunk in (data, b""):   # b"": the client closes
                wire.receive_data(chunk)
                while not connection.closed:
                    event = wire.next_event()
                    if event is NEED_DATA or type(event) is ConnectionClosed:
                        break
                    self._event(connection, event)
                if connection.closed:
                    return "closed"
                if chunk:
                    self.settle()
        except RemoteProtocolError as error:
            self.outcomes["protocol error"] += 1
            self.close_connection(connection, f"protocol error: {error}")
            return "closed"
        finally:
            self.close_connection(connection, "end of input")
        return "open"

    def _event(self, connection: Connection, event: Any) -> None:
        kind = type(event)
        if kind is Call:
            self.dispatch(connection, event.method, event.args, one_way=False)
        elif kind is OneWayCall:
            self.dispatch(connection, event.method, event.args, one_way=True)
        elif kind is not Heartbeat:
            self.close_connection(connection, f"unexpected {kind.__name__} from a client")

    # -- the rules ---------------------------------------------------------------

    def check_invariants(self) -> None:
        if os.path.exists(self.marker):
            raise InternalError("a hostile pickle ran: the marker file exists")
        live = [c.session for c in self.connections if not c.closed]
        stats, lock = self.served.stats, self.served.lock
        in_txn = [s for s in live if s.txn is not None]
        registered = [s for s in live if s.registered]
        if stats.active_txns != len(in_txn):
            raise InternalError(f"active_txns is {stats.active_txns}, sessions in a"
                                f" transaction: {len(in_txn)}")
        if stats.connections != len(registered):
            raise InternalError(f"connections is {stats.connections}, registered"
                                f" sessions: {len(registered)}")
        holder = lock.holder
        if holder is not None and (holder not in in_txn):
            raise InternalError(f"the commit lock is held by {holder!r}, which has no"
                                " open transaction")
        if self.storage.tpc_transaction() is not None and holder is None:
            raise InternalError("the storage has a transaction open but nobody holds"
                                " the commit lock")

    def reset(self) -> None:
        """Close every connection; prove the server is as good as new."""
        self.settle()
        for connection in self.connections:
            self.close_connection(connection, "the example is over")
        self.connections.clear()
        self.delayed.clear()
        self.run_loop()
        self.check_invariants()
        lock = self.served.lock
        if lock.holder is not None or lock.waiting:
            raise InternalError("the commit lock is still taken after every connection closed")
        if self.storage.tpc_transaction() is not None:
            raise InternalError("the storage still has a transaction open")
        self.normal_commit(b"normal %d" % len(self.committed))

    def settle(self) -> None:
        """Every call on an open connection must be answered, at the latest
        once the connections holding the commit lock have gone: close the
        holder, one at a time, until nothing open waits."""
        def waiting() -> list[Connection]:
            return [c for c, d in self.delayed if not d.settled and not c.closed]
        while True:
            self.run_loop(lambda: not waiting(), timeout=10)
            left = waiting()
            if not left:
                return
            holder = self.served.lock.holder
            by_session = {c.session: c for c in self.connections if not c.closed}
            if holder not in by_session or by_session[holder] in left:
                raise InternalError(
                    f"{left[0].session.label} was never answered (the commit lock is"
                    f" held by {holder!r})")
            self.close_connection(by_session[holder], "to free the commit lock")

    def normal_commit(self, data: bytes) -> None:
        """A whole transaction by a well-behaved client, then a read back."""
        connection = self.connect()
        try:
            session = connection.session
            session.register("1", False)
            oid = session.new_oids(1)[0]
            session.tpc_begin("normal", b"fuzz", b"", {}, None, " ")
            session.storea(oid, Z64, data, "normal")
            vote = session.vote("normal")
            if type(vote) is Delayed:
                raise InternalError("a normal vote waits: somebody still holds the lock")
            tid = session.tpc_finish("normal")
            if session.loadBefore(oid, MAXTID) != (data, tid, None):
                raise InternalError("a normal commit does not read back")
            self.committed[oid] = data
        finally:
            self.close_connection(connection, "done")
            self.connections.remove(connection)

    def close(self) -> None:
        """Stop the server, then check the file: ``fstest``, and every
        harness commit readable from a reopened file without its index."""
        if self.closed:
            return
        self.closed = True
        for connection in self.connections:
            self.close_connection(connection, "closing")
        if not self.run_loop(lambda: all(d.settled for d in self.threads), timeout=60):
            raise InternalError("work handed to a thread never finished")
        self.loop.run_until_complete(self.server.close())
        self.loop.close()
        from ZODB.FileStorage import FileStorage
        from ZODB.scripts import fstest

        fstest.check(self.path)
        if os.path.exists(self.path + ".index"):
            os.remove(self.path + ".index")   # make FileStorage read every record
        reopened = FileStorage(self.path, read_only=True)
        try:
            for oid, data in self.committed.items():
                if reopened.load(oid)[0] != data:
                    raise InternalError(f"commit {oid.hex()} reads back differently")
        finally:
            reopened.close()
        if os.path.exists(self.marker):
            raise InternalError("a hostile pickle ran: the marker file exists")


def _check_not_internal(method: str, error: BaseException) -> None:
    if isinstance(error, INTERNAL_ERRORS) or (
            isinstance(error, AssertionError) and _raised_in_zeo(error)):
        raise InternalError(f"{method} raised {type(error).__name__}: {error}") from error
    if isinstance(error, RuntimeError) and "settled only once" in str(error):
        raise InternalError(f"{method}: a reply was settled twice") from error


def _raised_in_zeo(error: BaseException) -> bool:
    traceback = error.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    return traceback is not None and f"{os.sep}zeo{os.sep}" in traceback.tb_frame.f_code.co_filename


def seed_streams(oid: bytes = (1 << 48).to_bytes(8, "big")) -> list[tuple[str, bytes]]:
    """What real clients send after the handshake, per encoding: starting
    points for mutation (`zeo.server.tests.fuzz_server`)."""
    sessions: list[list[tuple[str, tuple[Any, ...]]]] = [
        [("register", ("1", False)), ("get_info", ()), ("lastTransaction", ())],
        [("register", ("1", False)), ("new_oids", (3,)),
         ("tpc_begin", (1, b"user", b"desc", {}, None, " ")),
         ("storea", (oid, Z64, b"data", 1)), ("vote", (1,)), ("tpc_finish", (1,)),
         ("loadBefore", (oid, MAXTID)), ("history", (oid, 5))],
        [("register", ("1", False)), ("tpc_begin", (1, b"", b"", {}, None, " ")),
         ("storeBlobStart", ()), ("storeBlobChunk", (b"blob",)),
         ("storeBlobEnd", (oid, Z64, b"data", 1)), ("vote", (1,)), ("tpc_abort", (1,))],
        [("register", ("1", True)), ("iterator_start", (None, None)), ("iterator_next", (1,)),
         ("iterator_record_start", (1, Z64)), ("undoLog", (0, 20)), ("getInvalidations", (Z64,)),
         ("sendBlob", (oid, Z64)), ("record_iternext", (None,)), ("server_status", ())],
        [("register", ("1", False)), ("tpc_begin", (1, b"", b"", {}, None, " ")),
         ("deleteObject", (oid, Z64, 1)), ("checkCurrentSerialInTransaction", (oid, Z64, 1)),
         ("restorea", (oid, Z64, b"data", None, 1)), ("undoa", (b"AAAAAAAAAAA=", 1)),
         ("vote", (1,)), ("pack", (0.0, 1)), ("set_client_label", ("label",))],
    ]
    streams = []
    for encoding, codec in (("M", MsgpackCodec()), ("Z", PickleCodec())):
        for calls in sessions:
            data = b""
            for msgid, (method, args) in enumerate(calls, 1):
                message = (OneWayCall(method, args) if method in ONE_WAY_METHODS
                           else Call(msgid, method, args))
                payload = codec.encode(message)
                data += struct.pack(">I", len(payload)) + payload
            streams.append((encoding, data))
    return streams
