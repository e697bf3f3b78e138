"""The client side of ``loadBeforeRefs`` (see zeo.server.load_refs).

When our server offers the ``load-refs`` capability and ``load_refs`` is
on, the client's loads are ``loadBeforeRefs(oid, tid)`` calls: the reply
is ``(data, start, end, extras)``, where each extra is ``(oid, data,
start, end)``, what ``loadBefore(oid, tid)`` answered on the server at
the same moment, for the same *tid*.

Rule 1: an extra record goes into the cache exactly as a load reply
does -- ``cache.store(oid, start, end, data)``, at the place of the
reply in the message stream -- so the cache's rules for load replies
apply unchanged: a record is refused as current if an invalidation of
that oid newer than its start was seen (``RecentInvalidations``), and an
invalidation that arrives later ends it like any cached current record.

Rule 2: an extra nobody asked for must never cost a cached record: one
that contradicts the cache (a current revision other than the cached
current one: the server read a commit whose invalidation is still on
its way) is skipped, not reported; and a malformed list of extras is
ignored whole, with one log line.

Callers (waiters) get ``(data, start, end)`` as from ``loadBefore``.
"""
from __future__ import annotations

import logging
from typing import Any

from zeo.protocol import peer_repr
from zeo.protocol.record_refs import LOAD_REFS

from zeo.client.cache.errors import CacheConsistencyError

__all__ = ['LOAD_REFS', 'LOAD_METHOD', 'REFS_METHOD', 'cache_reply',
           'capabilities', 'load_method', 'store_extras', 'waiter_result']

logger = logging.getLogger('zeo.client')

#: The load call of a plain ZEO 5/6 connection, and of one with the
#: capability agreed.
LOAD_METHOD = 'loadBefore'
REFS_METHOD = 'loadBeforeRefs'


def capabilities(load_refs: bool) -> tuple[str, ...]:
    """What the client asks for in the handshake."""
    return (LOAD_REFS,) if load_refs else ()


def load_method(agreed: Any) -> str:
    """The load call to use once *agreed* (a ``ProtocolAgreed``)."""
    return REFS_METHOD if LOAD_REFS in agreed.capabilities else LOAD_METHOD


def waiter_result(result: Any) -> Any:
    """What the callers of a ``loadBeforeRefs`` get: its first three."""
    if type(result) in (tuple, list) and len(result) == 4:
        return tuple(result[:3])
    return result


def _valid(extra: Any) -> bool:
    if type(extra) not in (tuple, list) or len(extra) != 4:
        return False
    oid, data, start, end = extra
    return (type(oid) is bytes and len(oid) == 8 and type(data) is bytes
            and type(start) is bytes and len(start) == 8
            and (end is None or (type(end) is bytes and len(end) == 8 and end > start)))


def store_extras(cache: Any, extras: Any, name: str) -> int:
    """Store the extra records of a reply (Rules 1 and 2); return how
    many were offered to the cache."""
    if type(extras) not in (tuple, list) or not all(_valid(e) for e in extras):
        logger.warning('%s: ignoring malformed extra records of a load: %s',
                       name, peer_repr(extras))
        return 0
    store = cache.store
    for oid, data, start, end in extras:
        try:
            store(oid, start, end, data)
        except CacheConsistencyError:
            pass
    return len(extras)


def cache_reply(cache: Any, oid: bytes, result: Any, name: str) -> None:
    """Cache the reply to a load of *oid* (not None): the record, then
    the extras of a ``loadBeforeRefs`` reply.  A record the cache finds
    inconsistent with what it holds is logged, and the object forgotten."""
    data, start, end = result[:3]
    try:
        cache.store(oid, start, end, data)
    except CacheConsistencyError as error:
        logger.error('%s: %s; forgetting the object', name, error)
        cache.invalidate(oid, None)
    if len(result) == 4:
        store_extras(cache, result[3], name)
