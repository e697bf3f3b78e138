"""Choosing a codec for an agreed encoding letter."""

from __future__ import annotations

from typing import Optional
from typing import Union

from .errors import LocalProtocolError
from .limits import DEFAULT_LIMITS
from .limits import ProtocolLimits
from .msgpack_codec import MsgpackCodec
from .pickle_codec import PickleCodec
from .safe_unpickle import AllowedGlobals


__all__ = ["make_codec"]


def make_codec(
    encoding: str,
    *,
    pickle_globals: Optional[AllowedGlobals] = None,
    limits: ProtocolLimits = DEFAULT_LIMITS,
) -> Union[MsgpackCodec, PickleCodec]:
    """Return a fresh codec for *encoding* (``'M'`` or ``'Z'``).

    *pickle_globals* is the decoding allow-list for ``'Z'`` (ignored for
    ``'M'``).
    """
    if encoding == "M":
        return MsgpackCodec()
    if encoding == "Z":
        return PickleCodec(pickle_globals, limits)
    raise LocalProtocolError(f"unknown encoding {encoding!r}")
