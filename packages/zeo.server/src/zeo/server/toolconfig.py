"""Where and how the operator tools connect: address, storage and TLS.

Both ``zeo-status`` and ``zeopack`` take the same connection options:
``--ssl-certificate``/``--ssl-key`` (the client certificate, for servers
that authenticate clients), ``--ssl-ca`` (the authority that signed the
server's certificate; without it the system's), ``--ssl-server-hostname``
(the name in the server's certificate; by default the host connected
to), ``--ssl-no-check-hostname`` and ``--ssl`` (TLS with none of these).
Any of them turns TLS on.

``-C FILE`` reads them from a client configuration file instead: the first
``<clientstorage>`` (or ``<zeoclient>``) section anywhere in it, as in a
``zope.conf`` or ``zodb.conf`` (``%define``, ``%include`` and ``%import``
work; other sections are ignored). Its first ``server``, its ``storage``
and its ``<ssl>`` section (``certificate``, ``key``, ``password-function``,
``authenticate``, ``check-hostname``, ``server-hostname``) are used;
options given on the command line win.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import ssl
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable

import ZConfig
import ZConfig.cfgparser
import ZConfig.url

__all__ = ["ClientSettings", "add_connection_options", "read_client_config",
           "settings_from_options", "ssl_context", "ToolConfigError"]

#: The section types whose ``server``/``storage``/``<ssl>`` the tools read.
CLIENT_SECTIONS = ("clientstorage", "zeoclient")
#: Deepest ``%include`` nesting followed (a loop stops here).
MAX_INCLUDE_DEPTH = 20


class ToolConfigError(Exception):
    """The options or configuration file cannot work; the message says why."""


@dataclass(frozen=True)
class ClientSettings:
    """What a client section or the command line says."""

    server: str | None = None
    storage: str | None = None
    certificate: str | None = None
    key: str | None = None
    password_function: str | None = None
    authenticate: str | None = None
    check_hostname: bool = True
    server_hostname: str | None = None
    tls: bool = False


# -- the configuration file ------------------------------------------------------

class _Section(dict):
    def __init__(self, type_: str = "") -> None:
        super().__init__()
        self.type = type_
        self.sections: list[_Section] = []

    def addValue(self, key: str, value: str, position: Any = None) -> None:
        self.setdefault(key.lower(), []).append(value)


class _Context:
    """Builds a tree of `_Section` without a schema; follows includes."""

    def __init__(self, depth: int = 0) -> None:
        self.depth = depth

    def startSection(self, container: _Section, type_: str, name: str | None) -> _Section:
        section = _Section(type_)
        container.sections.append(section)
        return section

    def endSection(self, *args: Any) -> None:
        pass

    def importSchemaComponent(self, name: str) -> None:
        pass

    def includeConfiguration(self, section: _Section, url: str, defines: dict) -> None:
        if self.depth >= MAX_INCLUDE_DEPTH:
            raise ZConfig.ConfigurationError(f"%include nested deeper than {MAX_INCLUDE_DEPTH}")
        _parse(ZConfig.url.urldefrag(url)[0], section, defines, self.depth + 1)


class _Resource:
    def __init__(self, file: Any, url: str) -> None:
        self.file, self.url = file, url


def _parse(url: str, section: _Section, defines: dict, depth: int = 0) -> None:
    path = urllib.request.url2pathname(urllib.parse.urlparse(url).path)
    with open(path, encoding="utf-8") as file:
        text = file.read()
    ZConfig.cfgparser.ZConfigParser(
        _Resource(io.StringIO(text), url), _Context(depth), defines).parse(section)


def _find(section: _Section) -> _Section | None:
    for child in section.sections:
        if child.type in CLIENT_SECTIONS:
            return child
        found = _find(child)
        if found is not None:
            return found
    return None


def _boolean(text: str, key: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise ToolConfigError(f"<ssl> {key} must be true or false, not {text!r:.60}")


def read_client_config(path: str) -> ClientSettings:
    """The settings of the first client section of the file at *path*."""
    top = _Section()
    try:
        _parse("file://" + urllib.request.pathname2url(os.path.abspath(path)), top, {})
    except OSError as error:
        raise ToolConfigError(f"cannot read {path!r}: {error.strerror or error}") from None
    except ZConfig.ConfigurationError as error:
        raise ToolConfigError(f"{path}: {error}") from None
    client = _find(top)
    if client is None:
        raise ToolConfigError(f"{path} has no <clientstorage> or <zeoclient> section")
    first = lambda section, key: (section.get(key) or [None])[0]  # noqa: E731
    settings: dict[str, Any] = {"server": first(client, "server"),
                                "storage": first(client, "storage")}
    tls = [child for child in client.sections if child.type == "ssl"]
    if tls:
        section = tls[0]
        settings.update(
            tls=True, certificate=first(section, "certificate"), key=first(section, "key"),
            password_function=first(section, "password-function"),
            authenticate=first(section, "authenticate"),
            server_hostname=first(section, "server-hostname"))
        check = first(section, "check-hostname")
        if check is not None:
            settings["check_hostname"] = _boolean(check, "check-hostname")
    return ClientSettings(**settings)


# -- command line ----------------------------------------------------------------

def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """The ``-C`` and TLS options (see the module docstring)."""
    group = parser.add_argument_group("TLS and client configuration")
    group.add_argument("-C", "--config", metavar="FILE",
                       help="read server, storage and <ssl> from the first"
                            " <clientstorage> section of FILE")
    group.add_argument("--ssl", action="store_true", help="connect with TLS")
    group.add_argument("--ssl-certificate", metavar="PEM",
                       help="client certificate (may also hold the key)")
    group.add_argument("--ssl-key", metavar="PEM", help="client certificate's key")
    group.add_argument("--ssl-ca", "--ssl-authenticate", dest="ssl_ca", metavar="PATH",
                       help="CA file or directory that signed the server's certificate"
                            " (default: the system's)")
    group.add_argument("--ssl-server-hostname", metavar="NAME",
                       help="the name in the server's certificate"
                            " (default: the host connected to)")
    group.add_argument("--ssl-no-check-hostname", action="store_true",
                       help="verify the server's certificate but not its name")


def settings_from_options(options: argparse.Namespace) -> ClientSettings:
    """The configuration file's settings overridden by the command line's."""
    base = read_client_config(options.config) if options.config else ClientSettings()
    given = {"certificate": options.ssl_certificate, "key": options.ssl_key,
             "authenticate": options.ssl_ca,
             "server_hostname": options.ssl_server_hostname}
    values = {name: value for name, value in given.items() if value is not None}
    tls = base.tls or options.ssl or bool(values) or options.ssl_no_check_hostname
    check = base.check_hostname and not options.ssl_no_check_hostname
    return ClientSettings(**{**base.__dict__, **values, "tls": tls, "check_hostname": check})


def _password(dotted: str | None) -> Callable[[], Any]:
    if dotted is None:
        def refuse() -> Any:
            raise ToolConfigError("the client key is encrypted: give password-function"
                                  " in the <ssl> section of a -C configuration")
        return refuse
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ToolConfigError(f"<ssl> password-function {dotted!r:.200} cannot be"
                              f" imported") from None


def ssl_context(settings: ClientSettings) -> ssl.SSLContext | None:
    """A client TLS context for *settings*, or None without TLS. The server's
    certificate is always verified; its name unless ``check_hostname`` is off."""
    if not settings.tls:
        return None
    if settings.key and not settings.certificate:
        raise ToolConfigError("a TLS key needs its certificate (--ssl-certificate)")
    cafile = capath = None
    if settings.authenticate:
        if os.path.isdir(settings.authenticate):
            capath = settings.authenticate
        else:
            cafile = settings.authenticate
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile,
                                             capath=capath)
    except (ssl.SSLError, OSError) as error:
        raise ToolConfigError(f"cannot load the CA certificates {settings.authenticate!r}:"
                              f" {error}") from None
    context.check_hostname = settings.check_hostname
    if settings.certificate:
        try:
            context.load_cert_chain(settings.certificate, settings.key,
                                    _password(settings.password_function))
        except (ssl.SSLError, OSError) as error:
            raise ToolConfigError(f"cannot load the client certificate"
                                  f" {settings.certificate!r}: {error}") from None
    return context
