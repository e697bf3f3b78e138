"""A zc.buildout recipe for a zeo server: ``recipe = zeo.server``.

::

    [zeo]
    recipe = zeo.server
    address = 127.0.0.1:8100
    # optional, with their defaults:
    # var = ${buildout:directory}/var/zeo
    # path = Data.fs                  (relative paths are relative to var)
    # blob-dir = blobs                (empty: no blobs)
    # log-file = zeo.log
    # pid-file = zeo.pid
    # socket-name = zeo.zdsock        (zdaemon's control socket)
    # transaction-timeout = 30
    # invalidation-queue-size = 100
    # pack-days = 1                   (the zeopack script's default)
    # zeopack-script-name = zeo-zeopack, status-script-name = zeo-status,
    # repozo-script-name = zeo-repozo  (empty: no such script)
    # ssl-certificate, ssl-key, ssl-authenticate = (TLS; all or none)
    # client-ssl-certificate, client-ssl-key, client-ssl-ca,
    # client-ssl-server-hostname = (how the zeopack and status scripts
    #                                 connect to a TLS server; see below)
    # and any other key of the <zeo> section (read-only, max-connections ...)

It writes ``parts/NAME/zeo.conf`` (the runzeo configuration, with a
``<runner>`` section for zdaemon) and the scripts ``bin/NAME`` (zeoctl for
this server: ``bin/NAME start|stop|restart|status|fg``), ``bin/NAME-zeopack``
(packs the part's storage), ``bin/NAME-status`` (zeo-status for its
address), ``bin/NAME-repozo`` (ZODB's backup script) and
``parts/NAME/runzeo``. Uninstalling removes those and keeps the data
directory. zc.buildout is needed only while buildout runs the recipe, so
the server does not depend on it.

The option names of plone.recipe.zeoserver work too (`ALIASES`,
`PLONE_OPTIONS`), with that recipe's meanings, so a part written for it runs
by changing its ``recipe`` line. A part that names its address, Data.fs,
blob directory or log file that recipe's way (``zeo-address``,
``file-storage``, ``blob-storage``, ``zeo-log``) also gets its layout
(`PLONE_LAYOUT`: ``var/filestorage/Data.fs`` …, scripts ``bin/zeopack`` and
``bin/repozo``), and its ``zeo-address = PORT`` means 127.0.0.1:PORT. A part
that names none of them gets ours; it refuses to start a new database when
that recipe's default Data.fs exists. Its options we cannot honour
(`UNSUPPORTED`: authentication, ZRS, the monitor server) and options the
recipe does not know are errors naming them, never ignored.

A TLS server (``ssl-certificate``, ``ssl-authenticate``) takes only clients
with a certificate that ``ssl-authenticate`` signed, so its zeopack and
status scripts need one: ``client-ssl-certificate`` (and ``client-ssl-key``
unless that file holds the key). ``client-ssl-ca`` is the authority that
signed the *server's* certificate (without it, the system's);
``client-ssl-server-hostname`` the name that certificate must carry (without
it, the address's host). Relative file names (of these and the ``ssl-*``
options) are relative to the buildout directory. The scripts pass them to
zeopack/zeo-status as ``--ssl-…`` options, before the command line's own,
which may override them. A TLS part without
``client-ssl-certificate`` gets neither script, and a warning naming the
options to set. Any ``client-ssl-*`` option makes the scripts speak TLS
(for a ``zeo-conf`` file of one's own that sets up TLS); without
``zeo-conf`` it needs ``ssl-certificate``.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
import xml.etree.ElementTree as ElementTree
from typing import Any

import zc.buildout
import zc.buildout.easy_install

__all__ = ["Recipe", "ALIASES", "PLONE_OPTIONS", "UNSUPPORTED", "known_options",
           "check_options"]

HERE = os.path.dirname(os.path.abspath(__file__))


def zeo_section_keys() -> tuple[str, ...]:
    """The keys of the ``<zeo>`` section (server.xml), so every server
    setting is also a recipe option of the same name."""
    tree = ElementTree.parse(os.path.join(HERE, "server.xml"))
    for sectiontype in tree.getroot().iter("sectiontype"):
        if sectiontype.get("name") == "zeo":
            return tuple(key.get("name", "") for key in sectiontype.iter("key"))
    raise AssertionError("server.xml has no <zeo> section type")


#: ``<zeo>`` keys the recipe writes from other options (or never).
_ZEO_KEYS_OF_OUR_OWN = ("address", "pid-filename")
#: ``<zeo>`` keys written as the option says; with a default, always.
ZEO_KEYS = tuple(key for key in zeo_section_keys() if key not in _ZEO_KEYS_OF_OUR_OWN)
ZEO_DEFAULTS = {"transaction-timeout": "30", "invalidation-queue-size": "100"}

#: plone.recipe.zeoserver's name -> ours, for options both recipes have.
ALIASES = {
    "zeo-address": "address",
    "file-storage": "path",
    "blob-storage": "blob-dir",
    "zeo-log": "log-file",
}

#: The scripts' TLS options: recipe option -> zeopack/zeo-status flag.
CLIENT_TLS = {
    "client-ssl-certificate": "--ssl-certificate",
    "client-ssl-key": "--ssl-key",
    "client-ssl-ca": "--ssl-ca",
    "client-ssl-server-hostname": "--ssl-server-hostname",
}
#: The files among them (made absolute against the buildout directory).
_CLIENT_TLS_FILES = ("client-ssl-certificate", "client-ssl-key", "client-ssl-ca")

#: Our own options (besides the <zeo> keys).
OUR_OPTIONS = (
    "var", "address", "path", "blob-dir", "log-file", "pid-file", "eggs",
    "status-script-name",
    "ssl-certificate", "ssl-key", "ssl-authenticate",
) + tuple(CLIENT_TLS)

#: Options with plone.recipe.zeoserver's names and meanings (the aliases aside).
PLONE_OPTIONS = (
    "effective-user", "socket-name", "storage-number",
    "zeo-log-level", "zeo-log-format", "zeo-log-custom", "zeo-log-max-size",
    "zeo-log-old-files", "pack-days", "pack-gc", "pack-keep-old",
    "zeo-conf", "zeo-conf-additional", "extra-paths", "initialization",
    "relative-paths", "zeopack", "zeopack-script-name", "repozo",
    "repozo-script-name",
)

#: plone.recipe.zeoserver options we refuse, and what to do instead.
UNSUPPORTED = {
    "authentication-database": "ZEO 5 removed authentication; use TLS client"
                               " certificates (ssl-certificate, ssl-authenticate)",
    "authentication-realm": "ZEO 5 removed authentication; use TLS client"
                            " certificates (ssl-certificate, ssl-authenticate)",
    "pack-user": "ZEO 5 removed authentication; the zeopack script needs none",
    "pack-password": "ZEO 5 removed authentication; the zeopack script needs none",
    "monitor-address": "there is no monitor server; bin/NAME-status (zeo-status)"
                       " prints the server's status",
    "replicate-from": "ZRS replication is not supported",
    "replicate-to": "ZRS replication is not supported",
    "keep-alive-delay": "ZRS replication is not supported",
}

#: Options that only affect the generated zeo.conf, so ``zeo-conf`` (a
#: whole configuration file of the user's) excludes them.
_CONF_ONLY = (
    "path", "blob-dir", "log-file", "pid-file", "socket-name", "effective-user",
    "storage-number", "zeo-log-level", "zeo-log-format", "zeo-log-custom",
    "zeo-log-max-size", "zeo-log-old-files", "pack-gc", "pack-keep-old",
    "zeo-conf-additional", "ssl-certificate", "ssl-key", "ssl-authenticate",
) + tuple(key for key in ZEO_KEYS)

#: Defaults by layout: ours (var/NAME/Data.fs ...) or plone.recipe.zeoserver's.
OUR_LAYOUT = {
    "var": os.path.join("var", "{name}"), "path": "Data.fs", "blob-dir": "blobs",
    "log-file": "{name}.log", "socket-name": "{name}.zdsock",
    "zeopack-script-name": "{name}-zeopack", "repozo-script-name": "{name}-repozo",
}
PLONE_LAYOUT = {
    "var": "var", "path": os.path.join("filestorage", "Data.fs"),
    "blob-dir": "blobstorage", "log-file": os.path.join("log", "{name}.log"),
    "socket-name": "zeo.zdsock", "zeopack-script-name": "zeopack",
    "repozo-script-name": "repozo",
}

logger = logging.getLogger("zeo.server.recipe")


def known_options() -> set[str]:
    return (set(OUR_OPTIONS) | set(ZEO_KEYS) | set(ALIASES) | set(PLONE_OPTIONS)
            | set(UNSUPPORTED))


def _user_given(key: str) -> bool:
    """Whether *key* came from the user, not from buildout itself (``recipe``,
    ``<part-dependencies>``, ``__buildout_signature__``, ``_b`` …)."""
    return key != "recipe" and not key.startswith(("_", "<"))


def check_options(name: str, options: Any) -> None:
    """Refuse unknown options (suggesting the closest known name), options we
    do not support (saying what to do instead), and an option given under
    both its names."""
    known = known_options()
    given = [key for key in options.keys() if _user_given(key)]
    for key in sorted(given):
        if key in UNSUPPORTED:
            raise zc.buildout.UserError(
                f"[{name}]: option {key!r} is not supported by zeo.server:"
                f" {UNSUPPORTED[key].replace('NAME', name)}")
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise zc.buildout.UserError(
                f"[{name}]: unknown option {key!r:.100}{hint}")
    for plone, ours in ALIASES.items():
        if plone in given and ours in given:
            raise zc.buildout.UserError(
                f"[{name}]: {plone!r} and {ours!r} are the same option (the first"
                " is plone.recipe.zeoserver's name); give only one")
    if "zeo-conf" in given:
        ignored = sorted(key for key in given
                         if key in _CONF_ONLY or ALIASES.get(key) in _CONF_ONLY)
        if ignored:
            raise zc.buildout.UserError(
                f"[{name}]: zeo-conf names a whole configuration file, so these"
                f" options would be ignored: {', '.join(ignored)}; put them in"
                " that file, or drop zeo-conf")


def _address(text: str, plone: bool, var: str) -> str:
    """plone.recipe.zeoserver's address forms: PORT is 127.0.0.1:PORT (not
    all interfaces, as in a zeo.conf), a name without a colon is a Unix
    socket path (relative to var)."""
    if not plone:
        return text
    if text.isdigit():
        return f"127.0.0.1:{text}"
    if ":" not in text:
        return os.path.join(var, text)
    return text


def _client_address(address: str) -> str:
    """Where the part's scripts connect: HOST:PORT or a socket path."""
    if "/" in address:
        return address
    host, _, port = address.rpartition(":")
    return f"{host or '127.0.0.1'}:{port}"


class Recipe:
    def __init__(self, buildout: Any, name: str, options: Any) -> None:
        self.buildout = buildout
        self.name = name
        self.options = options
        check_options(name, options)
        for plone, ours in ALIASES.items():
            if plone in options:
                options[ours] = options[plone]
        self.plone = any(plone in options for plone in ALIASES)
        layout = {key: value.format(name=name) for key, value in
                  (PLONE_LAYOUT if self.plone else OUR_LAYOUT).items()}
        top = buildout["buildout"]["directory"]
        var = options.setdefault("var", os.path.join(top, layout["var"]))
        var = options["var"] = os.path.join(top, var)
        if "path" not in options:
            self.check_not_leaving_plone_data(top, os.path.join(var, layout["path"]))
        for key in ("path", "blob-dir", "log-file", "socket-name"):
            options.setdefault(key, layout[key])
        options.setdefault("pid-file", f"{name}.pid")
        for key in ("path", "blob-dir", "log-file", "socket-name", "pid-file"):
            if options[key]:
                options[key] = os.path.join(var, options[key])
        options["address"] = _address(options.get("address", "127.0.0.1:8100"),
                                      self.plone and "zeo-address" in options, var)
        for key, value in ZEO_DEFAULTS.items():
            options.setdefault(key, value)
        options.setdefault("pack-days", "1")
        try:
            float(options["pack-days"])
        except ValueError:
            raise zc.buildout.UserError(
                f"[{name}]: pack-days must be a number of days,"
                f" not {options['pack-days']!r:.100}") from None
        options.setdefault("storage-number", "1")
        for key in ("zeopack-script-name", "repozo-script-name"):
            options.setdefault(key, layout[key])
        options.setdefault("status-script-name", f"{name}-status")
        part = os.path.join(buildout["buildout"]["parts-directory"], name)
        options["part-directory"] = part
        options["config"] = os.path.join(part, "zeo.conf")
        tls = [options.get(key, "") for key in
               ("ssl-certificate", "ssl-key", "ssl-authenticate")]
        if any(tls) and not (tls[0] and tls[2]):
            raise zc.buildout.UserError(
                f"[{name}]: TLS needs ssl-certificate and ssl-authenticate"
                " (and ssl-key unless the certificate file holds the key)")
        self.check_client_tls(top)
        for key in ("zeopack", "repozo"):
            if options.get(key):
                raise zc.buildout.UserError(
                    f"[{name}]: {key} = {options[key]!r:.200}: a script of your own is"
                    f" not supported; leave {key} out for zeo.server's, or set it"
                    " empty for none")
        relative = options.get("relative-paths",
                               buildout["buildout"].get("relative-paths", "false"))
        if relative not in ("true", "false"):
            raise zc.buildout.UserError(
                f"[{name}]: relative-paths must be true or false, not {relative!r:.100}")
        self.relative_paths = top if relative == "true" else ""

    def check_client_tls(self, top: str) -> None:
        """TLS file names made absolute (the server and the scripts run
        from any directory); the scripts' TLS options: a key needs
        its certificate; without ``zeo-conf`` they need a TLS server."""
        options, name = self.options, self.name
        for key in ("ssl-certificate", "ssl-key", "ssl-authenticate") + _CLIENT_TLS_FILES:
            if options.get(key):
                options[key] = os.path.join(top, options[key])
        given = [key for key in CLIENT_TLS if options.get(key)]
        if options.get("client-ssl-key") and not options.get("client-ssl-certificate"):
            raise zc.buildout.UserError(
                f"[{name}]: client-ssl-key needs client-ssl-certificate")
        if given and not (options.get("ssl-certificate") or options.get("zeo-conf")):
            raise zc.buildout.UserError(
                f"[{name}]: {', '.join(given)}: the scripts would speak TLS to a"
                " server that does not (set ssl-certificate and ssl-authenticate,"
                " or leave them out)")

    def client_tls_arguments(self) -> list[str] | None:
        """The zeopack/zeo-status TLS options of the part's scripts ([] for
        plain TCP), or None when the server wants a client certificate the
        part names none of."""
        options = self.options
        if options.get("ssl-certificate") and not options.get("client-ssl-certificate"):
            return None
        arguments: list[str] = []
        for key, flag in CLIENT_TLS.items():
            if options.get(key):
                arguments += [flag, options[key]]
        return arguments

    def check_not_leaving_plone_data(self, top: str, ours: str) -> None:
        """A part that names nothing plone.recipe.zeoserver's way gets our
        layout, so a part that was that recipe's with its defaults would
        serve a new, empty database (*ours*): refuse that."""
        plone_data = os.path.join(top, "var", PLONE_LAYOUT["path"])
        if not self.plone and os.path.exists(plone_data) and not os.path.exists(ours):
            raise zc.buildout.UserError(
                f"[{self.name}]: {plone_data} exists (plone.recipe.zeoserver's"
                f" default Data.fs) but this part would serve a new {ours};"
                " add 'file-storage = filestorage/Data.fs' for that recipe's"
                " layout, or set 'path'")

    def zeo_lines(self) -> list[str]:
        options = self.options
        lines = ["<zeo>", f"  address {options['address']}"]
        lines += [f"  {key} {options[key]}" for key in ZEO_KEYS if options.get(key)]
        lines.append(f"  pid-filename {options['pid-file']}")
        if options.get("ssl-certificate"):
            lines += ["  <ssl>", f"    certificate {options['ssl-certificate']}"]
            if options.get("ssl-key"):
                lines.append(f"    key {options['ssl-key']}")
            lines += [f"    authenticate {options['ssl-authenticate']}", "  </ssl>"]
        return lines + ["</zeo>", ""]

    def storage_lines(self) -> list[str]:
        options = self.options
        lines = [f"<filestorage {options['storage-number']}>", f"  path {options['path']}"]
        if options["blob-dir"]:
            lines.append(f"  blob-dir {options['blob-dir']}")
        for key in ("pack-gc", "pack-keep-old"):
            if options.get(key):
                lines.append(f"  {key} {options[key]}")
        return lines + ["</filestorage>", ""]

    def eventlog_lines(self) -> list[str]:
        options = self.options
        lines = ["<eventlog>", f"  level {options.get('zeo-log-level') or 'info'}"]
        if options.get("zeo-log-custom"):
            lines.append(options["zeo-log-custom"])
        else:
            lines += ["  <logfile>", f"    path {options['log-file']}"]
            if options.get("zeo-log-format"):
                lines.append(f"    format {options['zeo-log-format']}")
            if options.get("zeo-log-max-size"):
                lines += [f"    max-size {options['zeo-log-max-size']}",
                          f"    old-files {options.get('zeo-log-old-files') or 1}"]
            lines.append("  </logfile>")
        return lines + ["</eventlog>", ""]

    def runner_lines(self) -> list[str]:
        options = self.options
        runzeo = os.path.join(options["part-directory"], "runzeo")
        lines = ["<runner>", f"  program {runzeo} -C {options['config']}",
                 f"  socket-name {options['socket-name']}",
                 f"  transcript {options['log-file']}"]
        if options.get("effective-user"):
            lines.append(f"  user {options['effective-user']}")
        return lines + ["</runner>", ""]

    def config_text(self) -> str:
        options = self.options
        if options.get("zeo-conf"):
            top = self.buildout["buildout"]["directory"]
            return f"%include {os.path.join(top, options['zeo-conf'])}\n"
        lines = (self.zeo_lines() + self.storage_lines() + self.eventlog_lines()
                 + self.runner_lines())
        if options.get("zeo-conf-additional"):
            lines += [options["zeo-conf-additional"], ""]
        return "\n".join(lines)

    def working_set(self) -> Any:
        buildout = self.buildout["buildout"]
        eggs = ["zeo.server"]
        eggs += [egg.strip() for egg in self.options.get("eggs", "").split()
                 if egg.strip() and egg.strip() != "zeo.server"]
        return zc.buildout.easy_install.install(
            eggs, buildout["eggs-directory"],
            links=buildout.get("find-links", "").split(),
            index=buildout.get("index"),
            path=[buildout["develop-eggs-directory"]],
            newest=buildout.get("newest") == "true")

    def scripts(self, working_set: Any) -> list[str]:
        """bin/NAME, the zeopack, status and repozo scripts; their paths."""
        options = self.options
        bin_directory = self.buildout["buildout"]["bin-directory"]
        extra_paths = [path.strip() for path in options.get("extra-paths", "").split("\n")
                       if path.strip()]

        def script(name: str, module: str, function: str, arguments: str = "",
                   initialization: str = "") -> str:
            zc.buildout.easy_install.scripts(
                [(name, module, function)], working_set, sys.executable, bin_directory,
                arguments=arguments, initialization=initialization,
                extra_paths=extra_paths, relative_paths=self.relative_paths)
            return os.path.join(bin_directory, name)

        written = [script(self.name, "zeo.server.zeoctl", "main",
                          f"['-C', {options['config']!r}] + sys.argv[1:]",
                          options.get("initialization", ""))]
        address = _client_address(options["address"])
        tls = self.client_tls_arguments()
        wanted = ((options["zeopack-script-name"] and options.get("zeopack") != "")
                  or options["status-script-name"])
        if tls is None and wanted:
            logger.warning(
                "[%s]: no zeopack or status script: the TLS server takes only clients"
                " with a certificate; set client-ssl-certificate (and client-ssl-key"
                " unless that file holds the key) to a certificate ssl-authenticate"
                " signed, and client-ssl-ca to the authority that signed"
                " ssl-certificate", self.name)
        if options["zeopack-script-name"] and options.get("zeopack") != "" \
                and tls is not None:
            written.append(script(
                options["zeopack-script-name"], "zeo.server.partscripts", "zeopack",
                f"{address!r}, {options['storage-number']!r}, {options['pack-days']!r},"
                f" tls={tls!r}"))
        if options["status-script-name"] and tls is not None:
            written.append(script(options["status-script-name"],
                                  "zeo.server.partscripts", "status",
                                  f"{address!r}, tls={tls!r}"))
        if options["repozo-script-name"] and options.get("repozo") != "":
            written.append(script(options["repozo-script-name"],
                                  "ZODB.scripts.repozo", "main"))
        return written

    def install(self) -> list[str]:
        options = self.options
        part = options["part-directory"]
        os.makedirs(part, exist_ok=True)
        os.makedirs(options["var"], exist_ok=True)
        if not options.get("zeo-conf"):
            for key in ("path", "log-file", "pid-file", "socket-name"):
                os.makedirs(os.path.dirname(options[key]), exist_ok=True)
        with open(options["config"], "w") as config:
            config.write(self.config_text())
        working_set = self.working_set()
        zc.buildout.easy_install.scripts(
            [("runzeo", "zeo.server.runzeo", "main")], working_set, sys.executable,
            part)
        # Only the part and the scripts: the data in var/ stays.
        return [part] + self.scripts(working_set)

    update = install
