"""The client's configuration: one immutable, validated object.

``ClientStorage(addr, **options)`` turns its keyword arguments into a
`ClientConfig` with `ClientConfig.from_options`; every layer below gets
that one object instead of a long list of parameters.  Nothing here reads
the environment.

Addresses, as the reference accepts them:

* ``(host, port)``: TCP; an empty host means ``127.0.0.1``;
* an ``int``: a port on ``127.0.0.1``;
* a ``str``: a Unix socket path;
* a list (or tuple) of the above: several servers of the same data.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import ssl as _ssl
from typing import Any, Iterable, Tuple, Union

from zeo.protocol import DEFAULT_LIMITS, ProtocolLimits

from zeo.client.connections.loops import DEFAULT_EVENT_LOOP, check_event_loop

__all__ = [
    'Address',
    'ClientConfig',
    'DEFAULT_CACHE_SIZE',
    'IGNORED_OPTIONS',
    'normalize_address',
    'normalize_addresses',
]

logger = logging.getLogger('zeo.client')

#: A TCP ``(host, port)`` pair or a Unix socket path.
Address = Union[Tuple[str, int], str]

#: The reference's default cache size: 20 MB.
DEFAULT_CACHE_SIZE = 20 * 1024 * 1024

#: Options the reference accepts and ignores; so do we (with a debug log),
#: so that existing configurations keep working.
IGNORED_OPTIONS = frozenset({
    'drop_cache_rather_verify', 'credentials', 'username', 'password',
    'realm',
})

# Options for which None means the default (configuration files and the
# reference's signature pass None for "not set").
_NONE_IS_DEFAULT = frozenset({
    'wait_timeout', 'disconnect_poll', 'max_disconnect_poll', 'cache_size',
    'blob_cache_size_check', 'name', 'storage', 'heartbeat_interval',
    'limits', 'event_loop', 'direct_calls', 'accept_pickle_servers',
    'server_behind_wait', 'load_refs'})

# Options with another name in older configurations.
_ALIASES = {'min_disconnect_poll': 'disconnect_poll'}


def normalize_address(addr: Any) -> Address:
    """One address in its canonical form (see the module docstring)."""
    if isinstance(addr, bool):
        raise TypeError(f'not a server address: {addr!r}')
    if isinstance(addr, int):
        addr = ('127.0.0.1', addr)
    if isinstance(addr, (str, os.PathLike)):
        path = os.fspath(addr)
        if not path:
            raise ValueError('an empty string is not a Unix socket path')
        return path
    if (isinstance(addr, (tuple, list)) and len(addr) == 2
            and isinstance(addr[0], str) and isinstance(addr[1], int)
            and not isinstance(addr[1], bool)):
        host, port = addr
        if not 0 < port < 65536:
            raise ValueError(f'port out of range in {addr!r}')
        return (host or '127.0.0.1', port)
    raise TypeError(f'not a server address: {addr!r}')


def _is_single(addr: Any) -> bool:
    return (isinstance(addr, (int, str, os.PathLike))
            or (isinstance(addr, tuple) and len(addr) == 2
                and isinstance(addr[0], str) and isinstance(addr[1], int)))


def normalize_addresses(addr: Any) -> tuple[Address, ...]:
    """A tuple of canonical addresses from one address or a list of them."""
    if _is_single(addr):
        return (normalize_address(addr),)
    if isinstance(addr, Iterable):
        addresses = tuple(normalize_address(a) for a in addr)
        if addresses:
            return addresses
        raise ValueError('no server address given')
    raise TypeError(f'not a server address: {addr!r}')


def _seconds(name: str, value: Any, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ValueError(f'{name} must be a positive number of seconds, '
                         f'not {value!r}')
    return float(value)


def _size(name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f'{name} must be a number of bytes, not {value!r}')


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """How a client storage connects and behaves.

    The option names (and defaults) are the reference ``ClientStorage``'s;
    ``disconnect_poll``/``max_disconnect_poll`` bound the reconnect
    backoff and ``heartbeat_interval`` is the keep-alive period;
    ``event_loop``, ``direct_calls``, ``accept_pickle_servers`` and
    ``server_behind_wait`` and ``load_refs`` are ours: which loop runs the
    connections, whether application threads read and write the socket
    for their own calls, whether a server that speaks pickle (``Z5``) is
    acceptable, how long a server behind the client's cache is refused,
    and whether loads bring referenced records from a server of ours.
    """

    addresses: tuple[Address, ...]
    storage: str = '1'
    name: str = ''
    cache_size: int = DEFAULT_CACHE_SIZE
    #: A cache file path, an ``IClientCache`` object, or None (see
    #: `cache_path`).
    cache: Any = None
    client: str | None = None
    var: str | None = None
    blob_dir: str | None = None
    shared_blob_dir: bool = False
    blob_cache_size: int | None = None
    blob_cache_size_check: int = 10
    read_only: bool = False
    read_only_fallback: bool = False
    server_sync: bool = False
    wait: bool = True
    wait_timeout: float = 30.0
    client_label: str | None = None
    ssl: _ssl.SSLContext | None = None
    ssl_server_hostname: str | None = None
    #: Delay after the first failed connection attempt; it doubles after
    #: each further failure up to `max_disconnect_poll`.  Each wait is
    #: drawn at random between half the delay and the delay (see
    #: zeo.client.connections.manager), so a client retries about every 1.5 s during
    #: an outage and reconnects within 2 s of the server's return.
    disconnect_poll: float = 0.5
    max_disconnect_poll: float = 2.0
    heartbeat_interval: float = 60.0
    limits: ProtocolLimits = DEFAULT_LIMITS
    #: ``'uvloop'`` or ``'asyncio'`` (see zeo.client.connections.loops).
    event_loop: str = DEFAULT_EVENT_LOOP
    #: Let application threads do the socket I/O of their own calls
    #: (plain TCP and Unix sockets on Linux; see zeo.client.connections).
    direct_calls: bool = True
    #: Connect to servers that speak pickle (``Z5``, the reference
    #: server's default).  False refuses them: a pickle server can offer
    #: the client more to decode than a msgpack one (see
    #: zeo.client.server_pickles), and a man in the middle of a
    #: connection without TLS can pose as one.
    accept_pickle_servers: bool = True
    #: How long a server at an older transaction than this client has
    #: seen is refused (and retried) before the client drops its cache and
    #: carries on with that server's data (seconds; 0: at once). A front
    #: or a standby catching up is used as soon as it has; a server
    #: restored from a backup, after this wait (see
    #: zeo.client.connections.manager).
    server_behind_wait: float = 60.0
    #: Ask a server of ours to send, with each load, records the loaded
    #: one references (its ``load-refs`` capability; see
    #: zeo.client.load_refs).  ZEO servers never offer it.
    load_refs: bool = True

    def __post_init__(self) -> None:
        check_event_loop(self.event_loop)
        for key in ('direct_calls', 'accept_pickle_servers', 'load_refs'):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f'{key} must be true or false, not {getattr(self, key)!r}')
        if not self.addresses:
            raise ValueError('no server address given')
        if not isinstance(self.storage, str) or not self.storage:
            raise ValueError(f'storage must be a name, not {self.storage!r}')
        _size('cache_size', self.cache_size)
        _size('blob_cache_size', self.blob_cache_size, optional=True)
        check = self.blob_cache_size_check
        if isinstance(check, bool) or not isinstance(check, int) \
                or not 0 < check < 100:
            raise ValueError('blob_cache_size_check must be a percentage '
                             f'between 1 and 99, not {check!r}')
        _seconds('wait_timeout', self.wait_timeout, zero=True)
        _seconds('disconnect_poll', self.disconnect_poll)
        _seconds('max_disconnect_poll', self.max_disconnect_poll)
        _seconds('heartbeat_interval', self.heartbeat_interval)
        _seconds('server_behind_wait', self.server_behind_wait, zero=True)
        if self.max_disconnect_poll < self.disconnect_poll:
            raise ValueError('max_disconnect_poll must not be less than '
                             'disconnect_poll')
        if self.read_only and self.read_only_fallback:
            raise ValueError('read_only and read_only_fallback exclude each '
                             'other')
        if self.shared_blob_dir and not self.blob_dir:
            raise ValueError('shared_blob_dir needs a blob_dir')
        if self.ssl is not None and not isinstance(self.ssl, _ssl.SSLContext):
            raise TypeError('ssl must be an ssl.SSLContext')
        if self.ssl_server_hostname is not None and self.ssl is None:
            raise ValueError('ssl_server_hostname needs ssl')

    @classmethod
    def from_options(cls, addr: Any, **options: Any) -> 'ClientConfig':
        """Build a config from ``ClientStorage``-style keyword arguments.

        Unknown option names raise TypeError; the reference's obsolete
        options (`IGNORED_OPTIONS`) are accepted and ignored.
        """
        known = {f.name for f in dataclasses.fields(cls)} - {'addresses'}
        values: dict[str, Any] = {}
        for key, value in options.items():
            key = _ALIASES.get(key, key)
            if key in IGNORED_OPTIONS:
                if value not in (None, False, True):
                    logger.debug('ignoring the obsolete option %s', key)
                continue
            if key not in known:
                raise TypeError(f'unknown client option {key!r}')
            if value is None and key in _NONE_IS_DEFAULT:
                continue  # None means "the default", as in the reference
            values[key] = value
        for key in ('read_only', 'read_only_fallback', 'shared_blob_dir',
                    'server_sync', 'wait'):
            if key in values:
                values[key] = bool(values[key])
        for key in ('direct_calls', 'accept_pickle_servers', 'load_refs'):
            if type(values.get(key)) is int:  # 0 or 1, not 'no'
                values[key] = bool(values[key])
        for key in ('storage',):
            if key in values and isinstance(values[key], int):
                values[key] = str(values[key])
        if 'disconnect_poll' in values and 'max_disconnect_poll' not in values:
            values['max_disconnect_poll'] = max(
                values['disconnect_poll'], cls.max_disconnect_poll)
        return cls(addresses=normalize_addresses(addr), **values)

    @property
    def display_name(self) -> str:
        """The storage's name: ``name`` or the address(es)."""
        if self.name:
            return self.name
        addresses = self.addresses
        return str(addresses[0] if len(addresses) == 1 else list(addresses))

    def cache_path(self) -> str | None:
        """The persistent cache file, or None for a cache in memory.

        ``cache`` as a path wins; else ``client`` names the file
        ``<var or cwd>/<client>-<storage>.zec``, as in the reference.
        """
        cache = self.cache
        if isinstance(cache, (str, os.PathLike)):
            return os.fspath(cache)
        if cache is None and self.client:
            return os.path.join(self.var or os.getcwd(),
                                f'{self.client}-{self.storage}.zec')
        return None
