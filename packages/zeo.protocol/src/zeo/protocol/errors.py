"""The error taxonomy of the protocol library.

There are two directions in which things go wrong:

* ``LocalProtocolError``: *we* misused the library -- sent an event the
  current state or role doesn't allow, built an invalid event, or asked
  for something that can't be marshalled.  Fix the calling code.
* ``RemoteProtocolError``: the *peer* broke the protocol -- garbage
  bytes, an unknown handshake, an oversize frame, a hostile pickle.  The
  caller should close the connection.

The promise (as in h11): apart from ``RemoteProtocolError``, anything
that escapes ``receive_data()``/``next_event()`` while processing peer
input is a bug in this library.  Configuration mistakes (a negative
limit, say) raise the ordinary ``ValueError``/``TypeError``.
"""

from __future__ import annotations


__all__ = [
    "EncodeError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
]


class ProtocolError(Exception):
    """Abstract base of the protocol errors; never raised itself.

    Catch it when you don't care which side was at fault.
    """

    def __init__(self, msg: str) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract; raise a subclass")
        super().__init__(msg)


class LocalProtocolError(ProtocolError):
    """We used the library wrongly; the connection state is unchanged.

    Nothing was written and nothing was consumed, so the caller may carry
    on (unless the error says the connection is already in ERROR state).
    """


class EncodeError(LocalProtocolError):
    """An event cannot be marshalled with the agreed encoding.

    Typical causes: a value msgpack can't represent (a ``set``, an int
    of 2**64 or more, an arbitrary object) or one pickle can't.  Nothing
    was sent and the connection is still usable, so a server can answer
    with an error reply instead (the reference sends
    ``builtins.ValueError("Couldn't pickle response")``).
    """


class RemoteProtocolError(ProtocolError):
    """The peer violated the protocol; close the connection.

    After this error a connection object is in the ERROR state and any
    further use raises ``LocalProtocolError``.
    """
