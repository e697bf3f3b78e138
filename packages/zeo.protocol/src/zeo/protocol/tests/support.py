"""Shared fixtures for the protocol tests: reference bytes, feeding
helpers, connected pairs and Hypothesis strategies."""

import gc
import tracemalloc

from hypothesis import strategies as st

from zeo.protocol import Call
from zeo.protocol import ClientConnection
from zeo.protocol import ErrorReply
from zeo.protocol import Heartbeat
from zeo.protocol import OneWayCall
from zeo.protocol import Reply
from zeo.protocol import ServerConnection


def unhex(text):
    """``'00 0a ff'`` (any whitespace) -> bytes."""
    return bytes.fromhex("".join(text.split()))


Z64 = b"\x00" * 8
OID = unhex("00 00 00 00 00 00 00 07")
TID1 = unhex("03 e8 00 00 00 00 00 01")
TID2 = unhex("03 e8 00 00 00 00 00 02")

# -- reference byte dumps ------------------------------------------------
#
# Framed messages (4-byte header included).  "notes" marks dumps copied
# from the shared protocol notes (sections 1.3-1.6, captured on the wire
# from ZEO 6.2); the others were captured from the reference ZEO 6.2
# encoder (ZEO.asyncio.marshal.encoder(b'Z'/b'M', server=True)) for the
# events given.

GREETING_Z5 = unhex("00 00 00 02 5a 35")  # notes 1.3
GREETING_M5 = unhex("00 00 00 02 4d 35")  # notes 1.3
RUOK = unhex("00 00 00 04 72 75 6f 6b")  # notes 4

CONFLICT_PAYLOAD = {
    "message": "database conflict error",
    "oid": OID,
    "class_name": None,
    "serials": (TID2, TID1),
}

#: name -> (event sent, event decoded by msgpack or None if identical,
#:          pickle frame, msgpack frame)
REFERENCE_MESSAGES = {
    "register": (
        Call(1, "register", ("1", 0)),
        None,
        # notes 1.5
        unhex(
            """00 00 00 1e 80 03 28 4b 01 89 58 08 00 00 00 72 65 67 69 73 74
            65 72 58 01 00 00 00 31 4b 00 86 74 2e"""
        ),
        # notes 1.6
        unhex("00 00 00 10 94 01 c2 a8 72 65 67 69 73 74 65 72 92 a1 31 00"),
    ),
    "register_reply": (
        Reply(1, Z64),
        None,
        # notes 1.5
        unhex(
            """00 00 00 1e 80 03 28 4b 01 4b 00 58 06 00 00 00 2e 72 65 70 6c
            79 43 08 00 00 00 00 00 00 00 00 74 2e"""
        ),
        unhex("00 00 00 14 94 01 00 a6 2e 72 65 70 6c 79 c4 08 00 00 00 00 00 00 00 00"),
    ),
    "heartbeat": (
        Heartbeat(),
        None,
        # notes 1.4
        unhex(
            """00 00 00 18 80 03 28 4a ff ff ff ff 4b 00 58 06 00 00 00 2e 72
            65 70 6c 79 4e 74 2e"""
        ),
        # notes 1.4
        unhex("00 00 00 0b 94 ff 00 a6 2e 72 65 70 6c 79 c0"),
    ),
    "loadBefore": (
        Call((OID, TID2), "loadBefore", (OID, TID2)),
        None,
        unhex(
            """00 00 00 3f 80 03 28 43 08 00 00 00 00 00 00 00 07 43 08 03 e8
            00 00 00 00 00 02 86 89 58 0a 00 00 00 6c 6f 61 64 42 65 66 6f 72
            65 43 08 00 00 00 00 00 00 00 07 43 08 03 e8 00 00 00 00 00 02 86
            74 2e"""
        ),
        unhex(
            """00 00 00 37 94 92 c4 08 00 00 00 00 00 00 00 07 c4 08 03 e8 00
            00 00 00 00 02 c2 aa 6c 6f 61 64 42 65 66 6f 72 65 92 c4 08 00 00
            00 00 00 00 00 07 c4 08 03 e8 00 00 00 00 00 02"""
        ),
    ),
    "loadBefore_reply": (
        Reply((OID, TID2), (b"record", TID1, None)),
        None,
        unhex(
            """00 00 00 3b 80 03 28 43 08 00 00 00 00 00 00 00 07 43 08 03 e8
            00 00 00 00 00 02 86 4b 00 58 06 00 00 00 2e 72 65 70 6c 79 43 06
            72 65 63 6f 72 64 43 08 03 e8 00 00 00 00 00 01 4e 87 74 2e"""
        ),
        unhex(
            """00 00 00 32 94 92 c4 08 00 00 00 00 00 00 00 07 c4 08 03 e8 00
            00 00 00 00 02 00 a6 2e 72 65 70 6c 79 93 c4 06 72 65 63 6f 72 64
            c4 08 03 e8 00 00 00 00 00 01 c0"""
        ),
    ),
    "invalidateTransaction": (
        OneWayCall("invalidateTransaction", (TID2, [OID])),
        # msgpack decodes every array as a tuple
        OneWayCall("invalidateTransaction", (TID2, (OID,))),
        unhex(
            """00 00 00 39 80 03 28 4b 00 88 58 15 00 00 00 69 6e 76 61 6c 69
            64 61 74 65 54 72 61 6e 73 61 63 74 69 6f 6e 43 08 03 e8 00 00 00
            00 00 02 5d 43 08 00 00 00 00 00 00 00 07 61 86 74 2e"""
        ),
        unhex(
            """00 00 00 2f 94 00 c3 b5 69 6e 76 61 6c 69 64 61 74 65 54 72 61
            6e 73 61 63 74 69 6f 6e 92 c4 08 03 e8 00 00 00 00 00 02 91 c4 08
            00 00 00 00 00 00 00 07"""
        ),
    ),
    "error_ValueError": (
        ErrorReply(2, "builtins.ValueError", ("unknown storage: nosuch",)),
        None,
        unhex(
            """00 00 00 4a 80 03 28 4b 02 4b 02 58 06 00 00 00 2e 72 65 70 6c
            79 58 13 00 00 00 62 75 69 6c 74 69 6e 73 2e 56 61 6c 75 65 45 72
            72 6f 72 58 17 00 00 00 75 6e 6b 6e 6f 77 6e 20 73 74 6f 72 61 67
            65 3a 20 6e 6f 73 75 63 68 85 86 74 2e"""
        ),
        unhex(
            """00 00 00 38 94 02 02 a6 2e 72 65 70 6c 79 92 b3 62 75 69 6c 74
            69 6e 73 2e 56 61 6c 75 65 45 72 72 6f 72 91 b7 75 6e 6b 6e 6f 77
            6e 20 73 74 6f 72 61 67 65 3a 20 6e 6f 73 75 63 68"""
        ),
    ),
    "error_POSKeyError": (
        ErrorReply(3, "ZODB.POSException.POSKeyError", (OID,)),
        None,
        unhex(
            """00 00 00 42 80 03 28 4b 03 4b 02 58 06 00 00 00 2e 72 65 70 6c
            79 58 1d 00 00 00 5a 4f 44 42 2e 50 4f 53 45 78 63 65 70 74 69 6f
            6e 2e 50 4f 53 4b 65 79 45 72 72 6f 72 43 08 00 00 00 00 00 00 00
            07 85 86 74 2e"""
        ),
        unhex(
            """00 00 00 34 94 03 02 a6 2e 72 65 70 6c 79 92 bd 5a 4f 44 42 2e
            50 4f 53 45 78 63 65 70 74 69 6f 6e 2e 50 4f 53 4b 65 79 45 72 72
            6f 72 91 c4 08 00 00 00 00 00 00 00 07"""
        ),
    ),
    "error_ConflictError": (
        ErrorReply(4, "ZODB.POSException.ConflictError", CONFLICT_PAYLOAD),
        None,
        unhex(
            """00 00 00 a7 80 03 28 4b 04 4b 02 58 06 00 00 00 2e 72 65 70 6c
            79 58 1f 00 00 00 5a 4f 44 42 2e 50 4f 53 45 78 63 65 70 74 69 6f
            6e 2e 43 6f 6e 66 6c 69 63 74 45 72 72 6f 72 7d 28 58 07 00 00 00
            6d 65 73 73 61 67 65 58 17 00 00 00 64 61 74 61 62 61 73 65 20 63
            6f 6e 66 6c 69 63 74 20 65 72 72 6f 72 58 03 00 00 00 6f 69 64 43
            08 00 00 00 00 00 00 00 07 58 0a 00 00 00 63 6c 61 73 73 5f 6e 61
            6d 65 4e 58 07 00 00 00 73 65 72 69 61 6c 73 43 08 03 e8 00 00 00
            00 00 02 43 08 03 e8 00 00 00 00 00 01 86 75 86 74 2e"""
        ),
        unhex(
            """00 00 00 83 94 04 02 a6 2e 72 65 70 6c 79 92 bf 5a 4f 44 42 2e
            50 4f 53 45 78 63 65 70 74 69 6f 6e 2e 43 6f 6e 66 6c 69 63 74 45
            72 72 6f 72 84 a7 6d 65 73 73 61 67 65 b7 64 61 74 61 62 61 73 65
            20 63 6f 6e 66 6c 69 63 74 20 65 72 72 6f 72 a3 6f 69 64 c4 08 00
            00 00 00 00 00 00 07 aa 63 6c 61 73 73 5f 6e 61 6d 65 c0 a7 73 65
            72 69 61 6c 73 92 c4 08 03 e8 00 00 00 00 00 02 c4 08 03 e8 00 00
            00 00 00 01"""
        ),
    ),
}


# -- feeding helpers -------------------------------------------------------


def chunkings(data, junk=b"\x00\x00\x00\x03abc"):
    """The three ways every reader is fed: whole, byte by byte, and whole
    followed by trailing junk.  Yields ``(label, chunks, junk_appended)``."""
    yield "whole", [data], False
    yield "bytewise", [data[i:i + 1] for i in range(len(data))], False
    yield "junk", [data + junk], True


def connected_pair(encoding="M", server_native=True, client_native=True,
                   server_caps=(), client_caps=(), **kw):
    """A server and a client connection that completed the handshake."""
    server = ServerConnection(
        encoding=encoding, native=server_native, capabilities=server_caps, **kw
    )
    client = ClientConnection(native=client_native, capabilities=client_caps, **kw)
    client.receive_data(server.initiate())
    client_events = list(client.events())
    server.receive_data(client.data_to_send())
    server_events = list(server.events())
    assert client_events == server_events, (client_events, server_events)
    return server, client


def drain(conn):
    """All events available now."""
    return list(conn.events())


class TracedMemory:
    """Memory allocated (and still held) since the ``with`` began, traced by
    tracemalloc.  Tracing that was already on (``PYTHONTRACEMALLOC``) stays
    on, so that later tests are still traced.  Collects garbage first."""

    def __enter__(self) -> "TracedMemory":
        gc.collect()
        self._started = not tracemalloc.is_tracing()
        if self._started:
            tracemalloc.start()
        tracemalloc.reset_peak()
        self._base = tracemalloc.get_traced_memory()[0]
        return self

    def held(self) -> int:
        """Bytes held now, beyond those held at the start."""
        return tracemalloc.get_traced_memory()[0] - self._base

    def peak(self) -> int:
        """The most held at once since the start, beyond those held then."""
        return tracemalloc.get_traced_memory()[1] - self._base

    def __exit__(self, *exc_info) -> None:
        if self._started:
            tracemalloc.stop()


# -- Hypothesis strategies ---------------------------------------------------

#: Values both codecs carry unchanged (msgpack turns lists into tuples,
#: so only tuples are generated here).
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=40),
)

plain_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)

msgids = st.one_of(
    st.integers(min_value=1, max_value=2**63),
    st.tuples(st.binary(min_size=8, max_size=8), st.binary(min_size=8, max_size=8)),
    st.lists(
        st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=4), st.binary(max_size=4)),
        min_size=1,
        max_size=3,
    ).map(tuple),
)

method_names = st.text(min_size=1, max_size=20).filter(lambda name: name != ".reply")

argument_tuples = st.lists(plain_values, max_size=4).map(tuple)

messages = st.one_of(
    st.builds(Call, msgids, method_names, argument_tuples),
    st.builds(OneWayCall, method_names, argument_tuples),
    st.builds(Reply, msgids, plain_values),
    st.builds(ErrorReply, msgids, st.text(min_size=1, max_size=30), plain_values),
    st.just(Heartbeat()),
)

client_messages = st.one_of(
    st.builds(Call, msgids, method_names, argument_tuples),
    st.builds(OneWayCall, method_names, argument_tuples),
    st.just(Heartbeat()),
)

server_messages = st.one_of(
    st.builds(OneWayCall, method_names, argument_tuples),
    st.builds(Reply, msgids, plain_values),
    st.builds(ErrorReply, msgids, st.text(min_size=1, max_size=30), plain_values),
)
