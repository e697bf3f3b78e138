"""The states of a connection, and what each side may send and receive in them.

The tables are the rules; `zeo.protocol.connection` enforces them.
"""

from __future__ import annotations

import enum
from typing import Dict
from typing import FrozenSet
from typing import Tuple
from typing import Type

from .events import Call
from .events import ErrorReply
from .events import Event
from .events import Heartbeat
from .events import OneWayCall
from .events import Reply
from .events import Status
from .events import StatusRequest


__all__ = ["ConnectionState", "NEED_DATA", "RECEIVE_TABLE", "Role", "SEND_TABLE"]


class ConnectionState(enum.Enum):
    """Where a connection stands."""

    #: Negotiating; only handshake frames are exchanged.
    HANDSHAKE = "HANDSHAKE"
    #: A protocol is agreed; messages flow.
    OPEN = "OPEN"
    #: The ``ruok`` exchange is under way (server: must send ``Status``;
    #: client: waiting for it).
    STATUS = "STATUS"
    #: EOF was reported (or the server sent its status): close the
    #: transport.  ``next_event()`` keeps returning ``ConnectionClosed``.
    CLOSED = "CLOSED"
    #: The peer broke the protocol; close the transport.
    ERROR = "ERROR"

    def __repr__(self) -> str:
        return self.value


class Role(enum.Enum):
    """Which end of the connection we are."""

    SERVER = "server"
    CLIENT = "client"

    def __repr__(self) -> str:
        return self.value


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by ``next_event()`` when it needs more bytes.
NEED_DATA = _NeedData.NEED_DATA

_S = ConnectionState
_SERVER, _CLIENT = Role.SERVER, Role.CLIENT

#: (role, state) -> event types that side may send.  Anything else is a
#: LocalProtocolError.  (The greeting and the answer aren't events: see
#: ``initiate()`` and ``data_to_send()``.)
SEND_TABLE: Dict[Tuple[Role, ConnectionState], FrozenSet[Type[Event]]] = {
    (_CLIENT, _S.HANDSHAKE): frozenset({StatusRequest}),
    (_CLIENT, _S.OPEN): frozenset({Call, OneWayCall, Heartbeat}),
    (_SERVER, _S.OPEN): frozenset({Reply, ErrorReply, OneWayCall}),
    (_SERVER, _S.STATUS): frozenset({Status}),
}

#: (role, state) -> message types that side accepts from its peer once a
#: protocol is agreed.  Anything else is a RemoteProtocolError.  (Every
#: server->client call is one-way in ZEO 5, and only clients send
#: heartbeats.)
RECEIVE_TABLE: Dict[Tuple[Role, ConnectionState], FrozenSet[Type[Event]]] = {
    (_SERVER, _S.OPEN): frozenset({Call, OneWayCall, Heartbeat}),
    (_CLIENT, _S.OPEN): frozenset({Reply, ErrorReply, OneWayCall}),
}
