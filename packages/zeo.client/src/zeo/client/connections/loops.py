"""Which event loop a client runs its connections on.

uvloop (libuv) by default where it exists: a round trip through it takes
about half the time of one through asyncio's own loop (docs/performance.rst).
``asyncio`` is the fallback and is always available.
"""

from __future__ import annotations

import asyncio
import sys

__all__ = [
    "EVENT_LOOPS",
    "DEFAULT_EVENT_LOOP",
    "check_event_loop",
    "new_event_loop",
]

#: The loops a client can run on.
EVENT_LOOPS = ("uvloop", "asyncio")
#: uvloop is a dependency everywhere but Windows, where it does not exist.
DEFAULT_EVENT_LOOP = "asyncio" if sys.platform == "win32" else "uvloop"


def check_event_loop(name: object) -> str:
    """Return *name* if it names a loop we know, else raise ValueError."""
    if name not in EVENT_LOOPS:
        raise ValueError(f"event_loop must be one of {', '.join(EVENT_LOOPS)}, not {name!r}")
    return name


def new_event_loop(name: str) -> asyncio.AbstractEventLoop:
    """A new loop of the kind *name* (see `EVENT_LOOPS`)."""
    if check_event_loop(name) == "asyncio":
        return asyncio.new_event_loop()
    try:
        import uvloop
    except ImportError:
        raise RuntimeError(
            "the uvloop event loop is not installed: install uvloop, or"
            " configure the asyncio loop (event-loop asyncio)") from None
    return uvloop.new_event_loop()
