"""The client's connections to its server: one path for every request.

This docstring is the one place for the thread and lock rules; the
modules below point here.  (The subpackage is not called ``connection``:
``zeo.client.connection()`` is the shortcut that opens a ZODB connection.)

Parts
=====

- `Channel` (``channel.py``): one connection to one server.  It owns the
  sans-IO ``zeo.protocol.ClientConnection``, the calls in flight
  (`PendingReplies`, ``replies.py``), the output (`Output`,
  ``output.py``) and the input, and it is the only way a request travels:
  ``call`` and ``load`` (an application thread: send, then wait for the
  result), ``request`` (the loop's own coroutines: a future),
  ``prefetch``, ``one_way`` and ``stream``.
- `ClientAdapter` (``adapter.py``): the asyncio protocol, forwarding
  asyncio's events to its channel -- the role ``zeo.server.adapter``
  plays for the server's connections.
- `SocketBaton` (``baton.py``): who reads the socket now.
- `ConnectionManager` (``manager.py``): which channel is in use;
  connecting, the handshake, registration, cache verification and
  invalidations.
- `Runner` (``runner.py``): the loop thread, and what the storage calls
  (it picks the channel; the channel does the rest).
- `Waiter` (``waiter.py``), the event loops (``loops.py``) and the
  checked locks (``locks.py``).

A request's path
================

Every request, whoever makes it, takes the same path: under the channel's
lock it gets a message id and a waiter among the calls in flight, is
encoded, and is handed to the output; then its caller waits.

- *Whoever waits reads.*  An application thread that finds the socket
  free (a baton exists, no other thread holds it, nothing is left for
  the loop) takes the baton in the same hold of the lock, before it
  sends (a reply that comes back before ``send`` returns must not wake
  the loop), and reads and handles input itself until its own reply is
  handled; otherwise it blocks on its `Waiter` until whoever reads
  settles it.
- The loop reads only while no application thread does.  The loop's
  coroutines await a future that the reader settles.

So a synchronous call on an idle client sends its request and reads its
reply in its own thread: a round trip wakes the server and the caller,
not the loop (what makes ping and cold reads fast, docs/performance.rst).

*Baton mode* is for plain TCP and Unix sockets where ``select.epoll``
exists (Linux), unless ``direct_calls`` (``direct-calls``) is false.  On
TLS connections and elsewhere the loop reads through its transport and
writes for everyone: a request's bytes wait in the output and one
``call_soon_threadsafe`` lets the loop write them; the path is the same.

Threads
=======

T1. The loop thread runs the connection manager's coroutines, the
    adapter's events and the timers.  It never waits for a reply (the
    runner refuses a synchronous call from it).
T2. Application threads come in through the `Runner` (and the
    manager's ``prefetch`` and ``forget_current``); of a channel they
    call ``call``, ``load``, ``prefetch``, ``one_way`` and ``stream``,
    and take its lock for nothing else.
T3. One reader at a time: in baton mode the holder of the baton (an
    application thread, or else the loop), otherwise the loop through
    the transport.  Reading is taking bytes from the socket *and*
    handling the messages they complete.
T4. Messages are handled strictly in arrival order, each completely --
    including the cache update a load reply implies -- before the next,
    holding the channel's lock.  That keeps the cache consistent with
    invalidations (the reference's bugs #155, #166 and #209 broke it).
T5. An application thread handles only the server's one-way messages and
    replies that only application threads wait for (with their hooks).
    Anything else -- a loop future's reply, the handshake, the end of
    the connection, a broken socket -- is *held* for the loop: the
    thread stops reading, and nobody reads until the loop has handled it
    and gives the socket back.  So what a handler and a hook do must be
    thread-safe and must not wait for the loop.
T6. Output leaves in the order the calls were made, whichever thread
    made them: bytes go straight out only when nothing is waiting to be
    written before them (``output.py``).
T7. When a connection is lost, every call in flight on it fails with
    ``ClientDisconnected``: no call hangs, none completes on another
    connection.

Locks
=====

Taken only in this order, never the reverse:

L1. ``Channel.lock`` (an ``RLock``, one per connection): the channel's
    state -- calls in flight, output, the baton, the sans-IO connection.
    Never two channels' locks at once.
L2. ``ConnectionManager.visibility`` (an ``RLock``): held while the last
    tid moves (``lastTransaction`` takes it alone).
L3. Leaves that call nothing of ours: the cache's own lock, the
    database's (``db.invalidate``, the ``tpc_finish`` callback), the blob
    cache's.

L4. Nobody waits -- for a reply, for input, for a connection -- holding
    L1 or L2: the thread that would wake it may need them.
L5. The manager's activation lock is an ``asyncio.Lock``, on the loop only.

``locks.CHECK`` (zeo.client's tests set it) makes L1 and L2
`locks.CheckedRLock` objects that raise `locks.LockOrderError` when taken
out of order, and makes every wait check L4.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ['Channel', 'ClientAdapter', 'ConnectionManager', 'PendingReplies', 'Runner',
           'Waiter']

_HOMES = {'Channel': 'channel', 'ClientAdapter': 'adapter', 'ConnectionManager': 'manager',
          'PendingReplies': 'replies', 'Runner': 'runner', 'Waiter': 'waiter'}


def __getattr__(name: str) -> Any:
    # Imported when first asked for: zeo.client.config needs only
    # ``loops``, and ``import zeo.client`` stays light.
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'zeo.client.connections' has no attribute {name!r}")
    return getattr(importlib.import_module(f'zeo.client.connections.{home}'), name)
