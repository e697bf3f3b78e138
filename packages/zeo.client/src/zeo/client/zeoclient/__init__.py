"""``%import zeo.client.zeoclient``: ZODB's ``<zeoclient>`` opens zeo.client.

``zope.conf`` as Zope and Plone deployment tools write it (for instance
plone.recipe.zope2instance with ``zeo-client = on``) uses ZODB's own
``<zeoclient>`` section, whose ``open()`` imports the reference ZEO's
``ClientStorage``.  ZConfig cannot define that section type a second time,
so this package does not: its ``component.xml`` is empty, and what the
``%import`` line does is import this package.  Importing it calls
`install`, which makes ``ZODB.config.ZEOClient.open`` open
``zeo.client.ClientStorage`` instead, with the section's keys mapped by
`client_arguments`.  Nothing else in the file changes, and no application
code.

The switch is per process, like everything a ZConfig ``%import`` does:
from the moment a configuration file imports this package, every
``<zeoclient>`` section opened in the process is a zeo.client storage,
whether or not the reference ZEO is installed too.  Remove the line (and
restart) to go back to the reference ZEO; `uninstall` undoes the switch in
a running process (tests).
"""
from __future__ import annotations

import logging
from typing import Any

__all__ = ['IGNORED_KEYS', 'client_arguments', 'install', 'installed',
           'uninstall']

logger = logging.getLogger('zeo.client')

#: ``<zeoclient>`` keys that have no effect, as in the reference ZEO 5 and
#: 6: its reconnect delays (zeo.client retries within about a second of a
#: server's return, see ``ClientConfig.max_disconnect_poll``), the cache
#: verification choice, and the authentication of ZEO 4 and older.
IGNORED_KEYS = ('min_disconnect_poll', 'max_disconnect_poll',
                'drop_cache_rather_verify', 'username', 'password', 'realm')

# The section keys passed on to ClientStorage under the same name.
_SAME_NAME = ('storage', 'cache_size', 'name', 'client', 'var', 'blob_dir',
              'shared_blob_dir', 'blob_cache_size', 'blob_cache_size_check',
              'read_only', 'read_only_fallback', 'wait', 'client_label')


def _address(value: Any) -> Any:
    """A ZConfig ``socket-connection-address`` as ClientStorage takes it."""
    address = value.address
    if isinstance(address, tuple):
        host, port = address
        if port is None:
            raise ValueError(
                f'<zeoclient> server {host!r:.200} has no port: write '
                f'host:port, a port number, or the path of a Unix socket')
    return address


def client_arguments(section: Any) -> tuple[list[Any], dict[str, Any]]:
    """``(addresses, keyword arguments)`` of ``ClientStorage`` for a parsed
    ``<zeoclient>`` section (its ``ZODB.config.ZEOClient.config``).

    Keys left unset (None) are left out, so that ClientStorage's defaults
    apply; the keys in `IGNORED_KEYS` are dropped; ``read-only-fallback``
    wins over ``read-only``, as in the reference.
    """
    addresses = [_address(server) for server in section.server]
    options = {}
    for key in _SAME_NAME:
        value = getattr(section, key, None)
        if value is not None:
            options[key] = value
    if options.get('read_only') and options.get('read_only_fallback'):
        # The reference lets read-only-fallback win; zeo.client's options
        # exclude each other.
        logger.warning('<zeoclient>: read-only and read-only-fallback are '
                       'both on; using read-only-fallback, as ZEO does')
        options['read_only'] = False
    ignored = [key for key in IGNORED_KEYS
               if key in ('username', 'password', 'realm')
               and getattr(section, key, None) is not None]
    if ignored:
        logger.info('<zeoclient>: ignoring %s (ZEO 5 and later servers '
                    'have no authentication)', ', '.join(ignored))
    return addresses, options


def _open(self: Any, database_name: str = 'unnamed',
          databases: Any = None) -> Any:
    """``ZODB.config.ZEOClient.open`` while installed."""
    from zeo.client import ClientStorage
    addresses, options = client_arguments(self.config)
    return ClientStorage(addresses, **options)


# Where the replaced method is kept: on the class, so that a second copy of
# this module (imported again after being dropped from sys.modules) finds it.
_ORIGINAL = '_zeo_client_original_open'


def installed() -> bool:
    """Whether ``<zeoclient>`` sections open zeo.client storages."""
    from ZODB.config import ZEOClient
    return _ORIGINAL in vars(ZEOClient)


def install() -> None:
    """Make ``<zeoclient>`` sections open zeo.client storages (idempotent;
    done when this package is imported)."""
    from ZODB.config import ZEOClient
    if _ORIGINAL not in vars(ZEOClient):
        setattr(ZEOClient, _ORIGINAL, vars(ZEOClient)['open'])
    ZEOClient.open = _open


def uninstall() -> None:
    """Give ``<zeoclient>`` back to the reference ZEO (idempotent)."""
    from ZODB.config import ZEOClient
    original = vars(ZEOClient).get(_ORIGINAL)
    if original is not None:
        ZEOClient.open = original
        delattr(ZEOClient, _ORIGINAL)


install()
