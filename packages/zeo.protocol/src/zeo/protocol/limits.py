"""Named, configurable bounds on what we accept from a peer.

Every buffer that a peer can make us grow has a limit here, checked as
early as possible:

* ``max_frame_size`` is checked against the 4-byte length prefix as soon
  as that prefix has arrived, before any of the payload is waited for.
  The reference implementation has no limit at all: it trusts any length
  up to 2**32 - 1 and will buffer 4 GiB for one hostile header.

  The default is 64 MiB.  Why that number: the largest frames real ZODB
  traffic produces are ``storea``/``loadBefore`` records (object pickles,
  typically well under 1 MiB; a multi-megabyte record is already a
  design smell in ZODB) and blob chunks, which the reference streams in
  59,000-byte pieces.  64 MiB is three orders of magnitude above a blob
  chunk and fits any sane record, while a stream of hostile headers can
  make us hold at most that much per connection, not 4 GiB.  If you do
  store bigger records, raise it on *both* sides: the limit applies to
  what a side receives; what it sends is only bounded by the wire format.

* ``max_handshake_size`` bounds the first frame in each direction
  (greeting, answer, ``ruok``).  Real ones are 2 to ~100 bytes.

* ``max_nesting_depth`` bounds how deeply tuples may nest in a decoded
  pickle.  CPython hashes nested tuples recursively in C without a
  recursion guard, so a ~150 KB pickle of nested tuples used as a dict
  key crashes the interpreter (segfault) while it is being unpickled;
  the reference server has this hole too.  A pickle can't nest deeper
  than it has bytes, so payloads shorter than this limit are never
  scanned; longer ones get a quick opcode scan first (see
  ``safe_unpickle``).  msgpack needs no such bound: its C decoder has a
  fixed depth limit and only accepts str/bytes map keys.
"""

from __future__ import annotations

import dataclasses


__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_HANDSHAKE_SIZE",
    "DEFAULT_MAX_NESTING_DEPTH",
    "ProtocolLimits",
    "WIRE_MAX_FRAME_SIZE",
]

#: The most a 4-byte unsigned length prefix can express.
WIRE_MAX_FRAME_SIZE = 2**32 - 1

#: See the module docstring for why 64 MiB.
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024

#: Handshake frames are tiny; 256 leaves room for a capability list.
DEFAULT_MAX_HANDSHAKE_SIZE = 256

#: Real ZEO messages nest a handful of levels; 10,000 nested tuples use
#: well under 1 MiB of C stack when hashed, safe on any thread.
DEFAULT_MAX_NESTING_DEPTH = 10_000


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")


@dataclasses.dataclass(frozen=True)
class ProtocolLimits:
    """Bounds on what a connection accepts from its peer (immutable)."""

    #: Largest payload (excluding the 4-byte prefix) accepted after the
    #: handshake.
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    #: Largest payload accepted as a handshake frame.
    max_handshake_size: int = DEFAULT_MAX_HANDSHAKE_SIZE
    #: Deepest tuple nesting accepted in a pickled message.
    max_nesting_depth: int = DEFAULT_MAX_NESTING_DEPTH

    def __post_init__(self) -> None:
        _check_int("max_frame_size", self.max_frame_size, 1, WIRE_MAX_FRAME_SIZE)
        _check_int(
            "max_handshake_size", self.max_handshake_size, 4, self.max_frame_size
        )
        _check_int("max_nesting_depth", self.max_nesting_depth, 16, 1_000_000)


#: The limits used when none are given.
DEFAULT_LIMITS = ProtocolLimits()
