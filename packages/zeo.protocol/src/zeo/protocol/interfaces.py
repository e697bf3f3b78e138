"""Contracts of the protocol package (zope.interface).

The method docstrings here are the specification; implementations say
``@implementer(IFoo)`` and point back here ("See `IFoo`").

Layering, bottom-up::

    IFrameReader      bytes  -> payloads          (framing)
    IHandshake        payload -> agreement         (first frame each way)
    ICodec            payload <-> message event     (after the handshake)
    IProtocolConnection  bytes in, events out, bytes out (all of the above)
"""

from zope.interface import Attribute
from zope.interface import Interface


__all__ = [
    "IClientConnection",
    "IClientHandshake",
    "ICodec",
    "IErrorTable",
    "IFrameReader",
    "IHandshake",
    "IProtocolConnection",
    "IServerConnection",
    "IServerHandshake",
]


class IFrameReader(Interface):
    """Splits a byte stream into the payloads of length-prefixed frames."""

    max_frame_size = Attribute(
        "Largest payload accepted, checked on the 4-byte header before the "
        "payload is waited for.  May be changed between frames (the "
        "connection raises it once the handshake is over)."
    )

    buffered = Attribute("Number of bytes held that are not yet returned.")

    def feed(data):
        """Append *data* (bytes-like, possibly empty) to the stream."""

    def receive_buffer():
        """Return a writable ``memoryview`` to read the next bytes into
        directly, or ``None`` (then ``feed`` what was read).

        Offered while a large frame is in progress (once its header has
        arrived); never empty, and never larger than what the frame
        still lacks.  Its size follows the bytes received, not the size
        the header announces: what the reader holds stays within a small
        constant factor of what arrived (see `zeo.protocol.framing`), so
        a frame may take several buffers.  Call ``received`` with the
        number of bytes written into it.
        """

    def pin():
        """The caller keeps a view of the unread buffer: the reader must
        not resize it (the next ``feed`` copies what it keeps instead)."""

    def received(nbytes):
        """Count *nbytes* written into the last ``receive_buffer()``, from
        its start.  ``LocalProtocolError`` if there was none, or if
        *nbytes* is larger than it."""

    def next_frame():
        """Return the next complete payload, or ``None`` if more is needed.

        The payload is a ``bytes`` or ``bytearray`` copy that later
        feeds don't touch: the caller may keep it.  Frames
        are returned in order; call repeatedly to drain coalesced frames.
        Raises ``RemoteProtocolError`` when the next header announces
        more than ``max_frame_size`` bytes.
        """


class ICodec(Interface):
    """Marshals message events to payloads and back, for one encoding.

    Payloads exclude the 4-byte frame header.  A codec object may keep
    reusable buffers and is not thread-safe: use one per connection.
    """

    encoding = Attribute("The encoding letter: 'M' (msgpack) or 'Z' (pickle).")

    name = Attribute("The encoding's name for messages: 'msgpack' or 'pickle'.")

    kept_buffer_size = Attribute(
        "After encoding a payload larger than this, call `shed_buffer` so"
        " that the codec does not keep the memory that message needed.")

    def shed_buffer():
        """Drop reusable encoding buffers grown by a large message."""

    def encode(event):
        """Return the payload bytes for a message event.

        Only ``Call``, ``OneWayCall``, ``Reply``, ``ErrorReply`` and
        ``Heartbeat`` can be encoded (``LocalProtocolError`` otherwise).
        Raises ``EncodeError`` (a ``LocalProtocolError``) if a value in
        the event can't be represented; the codec stays usable.
        """

    def encode_pieces(event):
        """Return the payload of `encode` as a tuple of ``bytes`` pieces.

        Joined, the pieces are exactly what ``encode`` returns.  A codec
        may return a large ``bytes`` argument (a blob chunk) as a piece
        of its own, so that it is written without being copied; the
        first piece is always the start of the payload.
        """

    def decode_chunk_message(payload):
        """Decode a blob chunk message without copying its chunk, or
        return ``None`` (then use ``decode_message``).

        *payload* is a ``memoryview``.  A codec may recognise a one-way
        ``receiveBlobChunk`` or ``storeBlobChunk`` whose chunk, last of
        its arguments, ends the payload, and return the event with the
        chunk as a ``memoryview`` of *payload*: the caller must then not
        change the buffer under it.  Anything else, valid or not, gives
        ``None``.
        """

    def decode(payload):
        """Return the message event for one payload (bytes-like).

        Raises ``RemoteProtocolError`` for anything that isn't exactly one
        well-formed message: undecodable bytes, trailing bytes, a wrong
        tuple shape, a forbidden pickle global.  Never runs peer-chosen
        code.
        """

    decode_message = Attribute(
        "A callable taking one payload and returning its message event:"
        " ``decode`` without the translation of errors, which the connection"
        " does itself (it calls this once per message).  Bad input raises"
        " ``RemoteProtocolError`` or any other exception.  Never runs"
        " peer-chosen code.  (An attribute, not a method, so that a codec can"
        " make it a plain or compiled function.)"
    )


class IHandshake(Interface):
    """Negotiates the encoding and version on the first frame each way.

    Works on payloads, not on the byte stream: the connection does the
    framing.  Any peer input that doesn't fit the state table raises
    ``RemoteProtocolError`` and moves the handshake to ``ERROR``.
    """

    state = Attribute("The current `HandshakeState`.")

    agreed = Attribute("The `ProtocolAgreed` event once agreed, else None.")

    def receive(payload):
        """Process one frame payload from the peer.

        Returns ``(event, reply)``: *event* is the event to report to the
        caller or ``None``; *reply* is a payload that must be sent back
        (framed) before anything else, or ``None``.
        """


class IServerHandshake(IHandshake):
    """The server's side: greet, then accept or refuse the answer."""

    def greeting():
        """Return the greeting payload (e.g. ``b'M5'``); call exactly once,
        before ``receive``."""

    def send_status(data):
        """After a ``StatusRequest``: return the status payload (*data*,
        bytes).  The server must close the connection after sending it."""


class IClientHandshake(IHandshake):
    """The client's side: read the greeting, answer it."""

    def request_status():
        """Instead of a normal handshake, probe the server: return the
        ``b'ruok'`` payload.  Only valid before the greeting was
        processed.  The greeting is then skipped and the next frame is
        reported as a ``Status`` event."""


class IProtocolConnection(Interface):
    """A sans-IO ZEO connection: bytes in, events out, bytes out.

    The driver loop::

        conn.receive_data(data)        # b'' means EOF
        for event in conn.events():    # or next_event() until NEED_DATA
            ...
        transport.write(conn.send(event))

    ``send`` returns everything that must be written now, including any
    bytes the connection produced on its own (the client's handshake
    answer); ``data_to_send`` returns those alone.
    """

    state = Attribute("The current `ConnectionState`.")

    agreed = Attribute("The `ProtocolAgreed` event, or None before agreement.")

    limits = Attribute("The `ProtocolLimits` in force.")

    buffered = Attribute(
        "Bytes received and held that are not yet returned as events (a"
        " partial frame): what the I/O layer counts against its input"
        " budget.")

    def receive_data(data):
        """Add bytes received from the peer; ``b''`` signals EOF.

        Raises ``LocalProtocolError`` if called after EOF with more data,
        or in the ERROR state.
        """

    def receive_buffer():
        """A buffer to read the next bytes into directly, or ``None``
        (then pass what was read to ``receive_data``).  See
        `IFrameReader.receive_buffer`: offered while a large frame (a blob
        chunk) arrives, so that it is read into buffers of its own rather
        than copied out of the caller's."""

    def received_into(nbytes):
        """Like ``receive_data`` for *nbytes* written into the last
        ``receive_buffer()``."""

    def next_event():
        """Return the next event, or ``NEED_DATA``.

        Raises ``RemoteProtocolError`` if the peer broke the protocol;
        the connection is then in the ERROR state.  Returns
        ``ConnectionClosed`` once EOF was seen and every frame before it
        was returned.  Any other exception is a bug.
        """

    def events():
        """Iterate over ``next_event()`` results until ``NEED_DATA``
        (exclusive) or ``ConnectionClosed`` (inclusive)."""

    def send(event):
        """Return the framed bytes to write for *event*.

        Raises ``LocalProtocolError`` if this role may not send this
        event in the current state, and ``EncodeError`` if it can't be
        marshalled; either way nothing changes.
        """

    def send_pieces(event):
        """Like ``send``, but return the framed bytes as a list of pieces
        to write in order (``transport.writelines``).

        A large ``bytes`` argument at the end of a call's arguments (a
        blob chunk) is one of the pieces, not a copy: streams of large
        messages are sent without copying them.
        """

    def data_to_send():
        """Return (and forget) bytes the connection produced by itself
        and that weren't yet returned by ``send``; ``b''`` if none."""


class IServerConnection(IProtocolConnection):
    """The server end of a connection."""

    def initiate():
        """Return the framed greeting; call once, right after accepting."""


class IClientConnection(IProtocolConnection):
    """The client end of a connection."""


class IErrorTable(Interface):
    """Rebuilds exceptions from error replies, by class name only.

    No module is ever imported by a name the peer chose: a name not in
    the table becomes a `RemoteError`.
    """

    def register(class_name, builder):
        """Map *class_name* (``'module.Class'``) to
        ``builder(class_name, payload) -> exception``."""

    def build(class_name, payload):
        """Return an exception instance; never raises.

        Falls back to ``RemoteError(class_name, payload)`` if the name is
        unknown or the builder fails on this payload.
        """

    def from_reply(reply):
        """``build(reply.class_name, reply.payload)`` for an `ErrorReply`."""
