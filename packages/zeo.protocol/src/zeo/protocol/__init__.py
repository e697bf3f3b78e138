"""The ZEO 5/6 wire protocol, sans-IO: bytes in, events out, bytes out.

Everything in ``__all__`` is the public API, re-exported from the
modules that define it.  See ``docs/protocol.rst`` for a walk-through.
"""

from .codecs import make_codec
from .connection import NEED_DATA
from .connection import ClientConnection
from .connection import ConnectionState
from .connection import Role
from .connection import ServerConnection
from .display import PEER_REPR_LIMIT
from .display import exception_text
from .display import peer_repr
from .errors import EncodeError
from .errors import LocalProtocolError
from .errors import ProtocolError
from .errors import RemoteProtocolError
from .events import HEARTBEAT_ID
from .events import MESSAGE_TYPES
from .events import REPLY_NAME
from .events import Call
from .events import ConnectionClosed
from .events import ErrorReply
from .events import Event
from .events import Heartbeat
from .events import Message
from .events import MsgId
from .events import OneWayCall
from .events import ProtocolAgreed
from .events import Reply
from .events import Status
from .events import StatusRequest
from .events import message_from_wire
from .framing import HEADER_SIZE
from .framing import FrameReader
from .framing import frame
from .framing import frame_header
from .handshake import NATIVE_REVISION
from .handshake import REFERENCE_VERSION
from .handshake import STATUS_REQUEST
from .handshake import ClientHandshake
from .handshake import HandshakeState
from .handshake import ServerHandshake
from .limits import DEFAULT_LIMITS
from .limits import DEFAULT_MAX_FRAME_SIZE
from .limits import DEFAULT_MAX_HANDSHAKE_SIZE
from .limits import DEFAULT_MAX_NESTING_DEPTH
from .limits import WIRE_MAX_FRAME_SIZE
from .limits import ProtocolLimits
from .msgpack_codec import MsgpackCodec
from .pickle_codec import PICKLE_PROTOCOL
from .pickle_codec import PickleCodec
from .remote_errors import ErrorTable
from .remote_errors import RemoteError
from .remote_errors import args_builder
from .remote_errors import builtin_error_table
from .remote_errors import error_reply
from .remote_errors import exception_to_wire
from .safe_unpickle import client_pickle_globals
from .safe_unpickle import safe_loads
from .safe_unpickle import server_pickle_globals
from .zodb_errors import zodb_error_builders
from .zodb_errors import zodb_error_table


__all__ = [
    # connections (connection.py)
    "ClientConnection",
    "ConnectionState",
    "NEED_DATA",
    "Role",
    "ServerConnection",
    # showing peer-supplied values (display.py)
    "PEER_REPR_LIMIT",
    "exception_text",
    "peer_repr",
    # errors (errors.py)
    "EncodeError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    # events (events.py)
    "Call",
    "ConnectionClosed",
    "ErrorReply",
    "Event",
    "HEARTBEAT_ID",
    "Heartbeat",
    "MESSAGE_TYPES",
    "Message",
    "MsgId",
    "OneWayCall",
    "ProtocolAgreed",
    "REPLY_NAME",
    "Reply",
    "Status",
    "StatusRequest",
    "message_from_wire",
    # framing (framing.py)
    "FrameReader",
    "HEADER_SIZE",
    "frame",
    "frame_header",
    # handshake (handshake.py)
    "ClientHandshake",
    "HandshakeState",
    "NATIVE_REVISION",
    "REFERENCE_VERSION",
    "STATUS_REQUEST",
    "ServerHandshake",
    # limits (limits.py)
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_HANDSHAKE_SIZE",
    "DEFAULT_MAX_NESTING_DEPTH",
    "ProtocolLimits",
    "WIRE_MAX_FRAME_SIZE",
    # codecs (codecs.py, msgpack_codec.py, pickle_codec.py, safe_unpickle.py)
    "MsgpackCodec",
    "PICKLE_PROTOCOL",
    "PickleCodec",
    "client_pickle_globals",
    "make_codec",
    "safe_loads",
    "server_pickle_globals",
    # remote errors (remote_errors.py, zodb_errors.py)
    "ErrorTable",
    "RemoteError",
    "args_builder",
    "builtin_error_table",
    "error_reply",
    "exception_to_wire",
    "zodb_error_builders",
    "zodb_error_table",
]
