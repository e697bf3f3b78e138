"""``ClientStorage``'s positional arguments, in the reference's order.

The reference ZEO's ``ClientStorage(addr, storage, cache_size, name,
wait_timeout, ...)`` can be called with its options by position, and some
applications do.  `POSITIONAL` lists the options after ``addr`` and
``storage`` in that order; `options_from_positional` turns the extra
positional arguments of a call into keyword options, which then mean
exactly what they mean by keyword (see `ClientConfig.from_options`).
"""
from __future__ import annotations

from typing import Any

__all__ = ['POSITIONAL', 'options_from_positional']

#: The options of the reference's ``ClientStorage.__init__`` after ``addr``
#: and ``storage``, in its order (ZEO 5 and 6; its test-only
#: ``_client_factory`` is left out).
POSITIONAL = (
    'cache_size', 'name', 'wait_timeout', 'disconnect_poll', 'read_only',
    'read_only_fallback', 'blob_dir', 'shared_blob_dir', 'blob_cache_size',
    'blob_cache_size_check', 'client_label', 'cache', 'ssl',
    'ssl_server_hostname', 'client', 'var', 'min_disconnect_poll',
    'max_disconnect_poll', 'wait', 'drop_cache_rather_verify', 'credentials',
    'server_sync', 'username', 'password', 'realm',
)


def options_from_positional(args: tuple[Any, ...],
                            options: dict[str, Any]) -> dict[str, Any]:
    """*options* with the positional *args* (those after ``storage``)
    added under their names; TypeError, as for any Python call, for too
    many of them or for an option given both ways."""
    if len(args) > len(POSITIONAL):
        raise TypeError(
            f'ClientStorage takes at most {len(POSITIONAL) + 2} positional '
            f'arguments after self ({len(args) + 2} given)')
    merged = dict(options)
    for name, value in zip(POSITIONAL, args):
        if name in merged:
            raise TypeError(
                f'ClientStorage got multiple values for argument {name!r}')
        merged[name] = value
    return merged
