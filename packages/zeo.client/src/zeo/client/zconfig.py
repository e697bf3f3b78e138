"""The ``<clientstorage>`` section for ZODB configuration files.

``%import zeo.client`` loads ``component.xml`` next to this module, which
declares two section types:

* ``<clientstorage>``, an implementation of ZODB's abstract ``ZODB.storage``
  type, so it can stand wherever ``<filestorage>`` can, e.g. inside
  ``<zodb>``.  Its keys are those of the reference ZEO's section of the same
  name, so a configuration written for ZEO works unchanged (plus ``client``
  and ``var`` from ZODB's older ``<zeoclient>``).
* ``<ssl>`` inside it, for TLS.  Unlike the reference, every key is
  optional: an empty ``<ssl></ssl>`` means TLS, the server verified against
  the system's CA certificates and its host name, no client certificate.

The work is split so it can be tested without a server:
:func:`client_ssl_context` builds an ``ssl.SSLContext`` from plain values;
:func:`storage_arguments` turns a parsed section into the positional
address list and keyword arguments of ``ClientStorage``; and
:meth:`ClientStorageConfig.open` only calls ``ClientStorage`` with them.
Bad values raise ``ValueError``, which ZConfig reports as a configuration
error.  A section type's ``ValueError`` carries no line number, so messages
name the section and key themselves.
"""
from __future__ import annotations

import importlib
import os
import ssl
from dataclasses import dataclass
from typing import Any
from typing import Callable
from typing import Union

from ZConfig.datatypes import SocketConnectionAddress
from ZODB.config import BaseConfig

__all__ = [
    'ClientStorageConfig', 'ClientSSL', 'client_ssl', 'client_ssl_context',
    'storage_arguments', 'server_address', 'percentage', 'existing_file',
    'non_negative_integer',
]

#: A server address as ``ClientStorage`` takes it: ``(host, port)`` or the
#: path of a Unix socket.
Address = Union[tuple[str, int], str]


# -- key datatypes -------------------------------------------------------------

def server_address(value: str) -> Address:
    """``server``: ``host:port``, ``[ipv6]:port``, a bare port (on
    127.0.0.1, as ZConfig's ``socket-connection-address`` reads it) or,
    if it contains a slash, a Unix socket path."""
    address = SocketConnectionAddress(value).address
    if isinstance(address, str):
        return address
    host, port = address
    if not host or any(c.isspace() for c in host):
        raise ValueError(f'server address {value!r}: {host!r} is not a '
                         f'host name')
    if port is None:
        raise ValueError(
            f'server address {value!r} has no port: write host:port, a '
            f'port number, or the path of a Unix socket')
    return (host, port)


def percentage(value: str) -> int:
    """``blob-cache-size-check``: a whole percentage from 1 to 99."""
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f'{value!r} is not a whole number') from None
    if not 0 < number < 100:
        raise ValueError(
            f'blob-cache-size-check is a percentage of blob-cache-size and '
            f'must be between 1 and 99, not {number}')
    return number


def non_negative_integer(value: str) -> int:
    """``wait-timeout``: whole seconds, zero or more."""
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f'{value!r} is not a whole number') from None
    if number < 0:
        raise ValueError(f'{number} is negative')
    return number


def existing_file(value: str) -> str:
    """A path that must name an existing regular file."""
    path = os.path.expanduser(value)
    if not os.path.isfile(path):
        raise ValueError(f'{value!r} is not an existing file')
    return path


# -- <ssl> ---------------------------------------------------------------------

def _resolve(dotted: str) -> Callable[..., Any]:
    module, _, name = dotted.rpartition('.')
    try:
        if not module:
            raise ImportError('not of the form package.module.function')
        function = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f'<ssl> password-function {dotted!r} cannot be imported: '
            f'{error}') from None
    if not callable(function):
        raise ValueError(
            f'<ssl> password-function {dotted!r} is not callable')
    return function


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    # Without a callback OpenSSL would prompt on the terminal, which a
    # server process must never do.
    raise _EncryptedKey()


def client_ssl_context(*, certificate: str | None = None,
                       key: str | None = None,
                       password: Callable[[], Any] | None = None,
                       authenticate: str | None = None,
                       check_hostname: bool = True) -> ssl.SSLContext:
    """A context for connecting to a ZEO server over TLS.

    The server's certificate is always verified (``CERT_REQUIRED``, strict
    X.509 checks): against the CA file or directory ``authenticate``, or
    the system's default CAs if it is None.  ``check_hostname`` also checks
    the name in it.  ``certificate`` (with ``key``, and ``password``
    returning the key's password) is the client certificate, for servers
    that require one (a reference ZEO server with TLS always does).
    """
    if certificate is None and (key is not None or password is not None):
        raise ValueError(
            '<ssl> key and password-function belong to a client '
            'certificate: give certificate too')
    cafile = capath = None
    if authenticate is not None:
        if os.path.isdir(authenticate):
            capath = authenticate
        else:
            cafile = authenticate
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=cafile, capath=capath)
    except (ssl.SSLError, OSError) as error:
        raise ValueError(
            f'<ssl> authenticate {authenticate!r}: cannot load CA '
            f'certificates: {error}') from None
    if certificate is not None:
        try:
            context.load_cert_chain(certificate, key,
                                    password or _no_password)
        except _EncryptedKey:
            raise ValueError(
                f'<ssl> the private key of {certificate!r} (key {key!r}) is '
                f'encrypted: set password-function') from None
        except (ssl.SSLError, OSError) as error:
            raise ValueError(
                f'<ssl> certificate {certificate!r} (key {key!r}): cannot '
                f'load the client certificate: {error}') from None
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    if context.cert_store_stats()['crl']:
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


@dataclass(frozen=True)
class ClientSSL:
    """A converted ``<ssl>`` section."""
    context: ssl.SSLContext
    #: The name to verify instead of the host of the server address.
    server_hostname: str | None
    check_hostname: bool


def client_ssl(section: Any) -> ClientSSL:
    """Datatype of the ``<ssl>`` section type."""
    password = None
    if section.password_function is not None:
        password = _resolve(section.password_function)
    context = client_ssl_context(
        certificate=section.certificate, key=section.key, password=password,
        authenticate=section.authenticate,
        check_hostname=section.check_hostname)
    return ClientSSL(context, section.server_hostname, section.check_hostname)


# -- <clientstorage> -----------------------------------------------------------

def storage_arguments(section: Any) -> tuple[list[Address], dict[str, Any]]:
    """``(addresses, keyword arguments)`` of ``ClientStorage`` for a parsed
    ``<clientstorage>`` section; raises ``ValueError`` for combinations
    that cannot work."""
    addresses = list(section.server)
    for key in ('cache_size', 'blob_cache_size'):
        value = getattr(section, key)
        if value is not None and value < 0:
            raise ValueError(
                f'<clientstorage> {key.replace("_", "-")} must not be '
                f'negative: {value}')
    if section.blob_dir is None:
        for key in ('shared_blob_dir', 'blob_cache_size'):
            if getattr(section, key):
                raise ValueError(
                    f'<clientstorage> {key.replace("_", "-")} needs blob-dir')
    tls: ClientSSL | None = section.ssl
    if (tls is not None and tls.check_hostname and tls.server_hostname is None
            and any(isinstance(a, str) for a in addresses)):
        raise ValueError(
            '<clientstorage> with <ssl> and a Unix socket server address: '
            'set server-hostname in <ssl> (the name in the server\'s '
            'certificate), or check-hostname off')
    kwargs: dict[str, Any] = {
        'storage': section.storage,
        'cache_size': section.cache_size,
        'cache': section.cache_path,
        'blob_dir': section.blob_dir,
        'shared_blob_dir': section.shared_blob_dir,
        'blob_cache_size': section.blob_cache_size,
        'blob_cache_size_check': section.blob_cache_size_check,
        'read_only': section.read_only,
        'read_only_fallback': section.read_only_fallback,
        'server_sync': section.server_sync,
        'wait_timeout': section.wait_timeout,
        'client_label': section.client_label,
        'name': section.name,
        'client': section.client,
        'var': section.var,
        'ssl': None if tls is None else tls.context,
        'ssl_server_hostname': None if tls is None else tls.server_hostname,
    }
    if section.event_loop is not None:
        # Ours only: left out unless set, so that the reference's
        # ClientStorage can be opened from the same section.
        kwargs['event_loop'] = section.event_loop
    if section.direct_calls is not None:
        kwargs['direct_calls'] = section.direct_calls
    if section.accept_pickle_servers is not None:
        kwargs['accept_pickle_servers'] = section.accept_pickle_servers
    if section.server_behind_wait is not None:
        kwargs['server_behind_wait'] = section.server_behind_wait
    if section.load_refs is not None:
        kwargs['load_refs'] = section.load_refs
    return addresses, kwargs


def _client_storage_class() -> Any:
    # Imported when a storage is opened, not when the file is parsed.
    import zeo.client
    cls = getattr(zeo.client, 'ClientStorage', None)
    if cls is None:
        from zeo.client.storage import ClientStorage as cls
    return cls


class ClientStorageConfig(BaseConfig):
    """Datatype of ``<clientstorage>``: ``open()`` returns the storage.

    The arguments are worked out (and checked) when the file is parsed;
    ``addresses`` and ``arguments`` show them.
    """

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.addresses, self.arguments = storage_arguments(config)

    def open(self, database_name: str = 'unnamed',
             databases: Any = None) -> Any:
        return _client_storage_class()(list(self.addresses),
                                       **self.arguments)
