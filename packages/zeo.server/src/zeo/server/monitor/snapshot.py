"""What the status page and ``/status.json`` show: plain, JSON-ready data.

`snapshot` reads the server's state on the event loop (see the package's
Rule 2) and returns dicts of str, int, float, bool and None only. Times
are epoch seconds (``*_since``, ``ended``) or durations in seconds
(``*_for``). `connection_state` is shared with the metrics collector, so
the page and the metrics count connections the same way.

A connection is in one state, the first that holds:

* ``handshake``: the protocol is not agreed yet;
* ``unregistered``: agreed, but no storage registered;
* ``committing``: it holds its storage's commit lock (voting or finishing);
* ``waiting``: its vote waits for the commit lock;
* ``transaction``: between ``tpc_begin`` and the vote;
* ``idle``: none of these (since its last request).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from ZODB.TimeStamp import TimeStamp

from zeo.server.monitor.stacks import task_stacks, thread_stacks
from zeo.server.peers import format_address

if TYPE_CHECKING:
    from zeo.server.adapter import ServerProtocol
    from zeo.server.served_storage import ServedStorage
    from zeo.server.storage_server import StorageServer

__all__ = ["MAX_LISTED_CONNECTIONS", "STATES", "Z64", "connection_state", "snapshot", "tid_time"]

#: Every connection state, busiest first (the order of the page's list).
STATES = ("committing", "waiting", "transaction", "idle", "unregistered", "handshake")

#: Connections listed one by one (the busiest first); the others are
#: only counted, so that the page stays small on a server with thousands.
MAX_LISTED_CONNECTIONS = 500

Z64 = b"\0" * 8


def connection_state(connection: ServerProtocol, now: float,
                     monotonic_now: float) -> tuple[str, float | None]:
    """The state of *connection* and since when (epoch seconds), if known.

    *now* is ``time.time()``, *monotonic_now* ``time.monotonic()``.
    """
    if not connection.protocol:
        return "handshake", connection.connected_at
    session = connection.session
    if session is None or session.served is None:
        return "unregistered", None
    served = session.served
    lock = served.lock
    if lock.holder is session:
        return "committing", lock.locked_since
    since = lock.waiting_since_of(session)
    if since is not None:
        return "waiting", since
    txn = session.txn
    if txn is not None:
        return "transaction", getattr(txn, "began", None)
    return "idle", now - max(0.0, monotonic_now - connection.last_read)


def _peer(connection: ServerProtocol) -> str:
    transport = connection.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return format_address((str(peer[0]), peer[1]))
    return "unix socket" if peer is not None or transport is not None else "?"


def tid_time(tid: bytes) -> float | None:
    if tid == Z64:
        return None
    return TimeStamp(tid).timeTime()


def _storage(served: ServedStorage, now: float) -> dict[str, Any]:
    storage, stats, lock = served.storage, served.stats, served.lock
    last = storage.lastTransaction() or Z64
    holder = lock.holder
    waiters = []
    for owner in lock.waiters:
        since = lock.waiting_since_of(owner)
        waiters.append({"label": getattr(owner, "label", str(owner)), "since": since,
                        "for": None if since is None else max(0.0, now - since)})
    spool = blob = 0
    for session in served.sessions:
        txn = session.txn
        if txn is not None:
            spool += txn.spool.size
            blob += txn.spool.blob_bytes
    return {
        "name": served.name,
        "storage": str(storage.getName()),
        "read_only": served.read_only,
        "last_tid": last.hex(),
        "last_commit": tid_time(last),
        "size": served.size_info()["size"],      # see zeo.server.size_info
        "objects": served.size_info()["length"],
        "invalidation_queue_length": len(served.queue),
        "connections": stats.connections,
        "active_transactions": stats.active_txns,
        "spool_bytes": spool,
        "spool_blob_bytes": blob,
        "counters": {
            "loads": stats.loads, "stores": stats.stores, "commits": stats.commits,
            "aborts": stats.aborts, "conflicts": stats.conflicts,
            "conflicts_resolved": stats.conflicts_resolved,
            "timeouts": stats.timeouts, "bytes_in": stats.bytes_in,
            "bytes_out": stats.bytes_out,
        },
        "refusals": dict(stats.refusals),
        "lock": {
            "holder": None if holder is None else getattr(holder, "label", str(holder)),
            "since": lock.locked_since,
            "for": None if lock.locked_since is None else max(0.0, now - lock.locked_since),
            "waiters": waiters,
        },
        "slow_transactions": [
            {"ended": slow.ended, "label": slow.label, "held": slow.held}
            for slow in reversed(stats.slow_transactions)],
        "slow_threshold": stats.slow_threshold,
    }


def _connection(connection: ServerProtocol, now: float, monotonic_now: float) -> dict[str, Any]:
    state, since = connection_state(connection, now, monotonic_now)
    session = connection.session
    served = session.served if session is not None else None
    return {
        "address": _peer(connection),
        "label": session.label if session is not None else connection.label,
        "storage": served.name if served is not None else None,
        "read_only": bool(session.read_only) if session is not None and served is not None else None,
        "protocol": connection.protocol or None,
        "connected_since": connection.connected_at,
        "last_request_ago": max(0.0, monotonic_now - connection.last_read),
        "state": state,
        "state_since": since,
        "state_for": None if since is None else max(0.0, now - since),
    }


def snapshot(server: StorageServer, *, stacks: bool = True) -> dict[str, Any]:
    """The server's state for people; see the module docstring."""
    now, monotonic_now = time.time(), time.monotonic()
    order = {state: index for index, state in enumerate(STATES)}
    connections = [_connection(c, now, monotonic_now) for c in list(server.connections)]
    connections.sort(key=lambda c: (order[c["state"]], c["connected_since"]))
    budgets = server.budgets
    refusals = dict(budgets.refusals + server.spool_budget.refusals
                    + server.iterator_budget.refusals)
    data: dict[str, Any] = {
        "server": {
            "pid": os.getpid(),
            "now": now,
            "addresses": [list(a) if isinstance(a, tuple) else a for a in server.addresses],
            "event_loop": server.config.event_loop,
            "connections": len(connections),
            "connections_listed": min(len(connections), MAX_LISTED_CONNECTIONS),
            "spool_bytes": server.spool_budget.used,
            "spool_limit": server.spool_budget.limit,
            "input_buffer_bytes": budgets.input_total,
            "output_buffer_bytes": budgets.output_total,
            "open_transaction_iterators": server.iterator_budget.used,
            "refusals": refusals,
        },
        "storages": [_storage(served, now) for served in server.storages.values()],
        "connections": connections[:MAX_LISTED_CONNECTIONS],
    }
    if stacks:
        data["threads"] = thread_stacks()
        data["tasks"] = task_stacks()
    return data
