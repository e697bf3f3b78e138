"""A zc.buildout recipe for a zeo server: ``recipe = zeo.server``.

::

    [zeo]
    recipe = zeo.server
    address = 127.0.0.1:8100
    # optional, with their defaults:
    # path = ${buildout:directory}/var/zeo/Data.fs
    # blob-dir = ${buildout:directory}/var/zeo/blobs   (empty: no blobs)
    # transaction-timeout = 30
    # invalidation-queue-size = 100
    # log-file = ${buildout:directory}/var/zeo/zeo.log
    # pid-file = ${buildout:directory}/var/zeo/zeo.pid
    # ssl-certificate, ssl-key, ssl-authenticate = (TLS; all or none)

It writes ``parts/NAME/zeo.conf`` (the runzeo configuration, with a
``<runner>`` section for zdaemon) and the scripts ``bin/NAME`` (zeoctl for
this server: ``bin/NAME start|stop|restart|status|fg``) and
``parts/NAME/runzeo``. Uninstalling removes those and keeps the data
directory. zc.buildout is needed only while buildout runs the recipe, so
the server does not depend on it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import zc.buildout
import zc.buildout.easy_install

#: Keys that go into the configuration file's ``<zeo>`` section as they are.
ZEO_KEYS = ("address", "transaction-timeout", "invalidation-queue-size")


class Recipe:
    def __init__(self, buildout: Any, name: str, options: Any) -> None:
        self.buildout = buildout
        self.name = name
        self.options = options
        top = buildout["buildout"]["directory"]
        var = options.setdefault("var", os.path.join(top, "var", name))
        options.setdefault("address", "127.0.0.1:8100")
        options.setdefault("path", os.path.join(var, "Data.fs"))
        options.setdefault("blob-dir", os.path.join(var, "blobs"))
        options.setdefault("transaction-timeout", "30")
        options.setdefault("invalidation-queue-size", "100")
        options.setdefault("log-file", os.path.join(var, f"{name}.log"))
        options.setdefault("pid-file", os.path.join(var, f"{name}.pid"))
        options.setdefault("eggs", "zeo.server")
        part = os.path.join(buildout["buildout"]["parts-directory"], name)
        options["part-directory"] = part
        options["config"] = os.path.join(part, "zeo.conf")
        tls = [options.get(key, "") for key in
               ("ssl-certificate", "ssl-key", "ssl-authenticate")]
        if any(tls) and not (tls[0] and tls[2]):
            raise zc.buildout.UserError(
                f"[{name}]: TLS needs ssl-certificate and ssl-authenticate"
                " (and ssl-key unless the certificate file holds the key)")

    def config_text(self) -> str:
        options = self.options
        lines = ["<zeo>"]
        lines += [f"  {key} {options[key]}" for key in ZEO_KEYS]
        lines.append(f"  pid-filename {options['pid-file']}")
        if options.get("ssl-certificate"):
            lines += ["  <ssl>", f"    certificate {options['ssl-certificate']}"]
            if options.get("ssl-key"):
                lines.append(f"    key {options['ssl-key']}")
            lines += [f"    authenticate {options['ssl-authenticate']}", "  </ssl>"]
        lines += ["</zeo>", "", "<filestorage 1>", f"  path {options['path']}"]
        if options["blob-dir"]:
            lines.append(f"  blob-dir {options['blob-dir']}")
        runzeo = os.path.join(options["part-directory"], "runzeo")
        lines += [
            "</filestorage>", "",
            "<eventlog>", "  <logfile>", f"    path {options['log-file']}",
            "  </logfile>", "</eventlog>", "",
            "<runner>", f"  program {runzeo} -C {options['config']}",
            f"  socket-name {os.path.join(options['var'], self.name + '.zdsock')}",
            f"  transcript {options['log-file']}",
            "</runner>", ""]
        return "\n".join(lines)

    def working_set(self) -> Any:
        buildout = self.buildout["buildout"]
        eggs = [egg.strip() for egg in self.options["eggs"].split() if egg.strip()]
        return zc.buildout.easy_install.install(
            eggs, buildout["eggs-directory"],
            links=buildout.get("find-links", "").split(),
            index=buildout.get("index"),
            path=[buildout["develop-eggs-directory"]],
            newest=buildout.get("newest") == "true")

    def install(self) -> list[str]:
        options = self.options
        part = options["part-directory"]
        os.makedirs(part, exist_ok=True)
        os.makedirs(options["var"], exist_ok=True)
        for key in ("path", "log-file", "pid-file"):
            os.makedirs(os.path.dirname(options[key]), exist_ok=True)
        with open(options["config"], "w") as config:
            config.write(self.config_text())
        working_set = self.working_set()
        arguments = f"['-C', {options['config']!r}] + sys.argv[1:]"
        zc.buildout.easy_install.scripts(
            [(self.name, "zeo.server.zeoctl", "main")], working_set, sys.executable,
            self.buildout["buildout"]["bin-directory"], arguments=arguments)
        zc.buildout.easy_install.scripts(
            [("runzeo", "zeo.server.runzeo", "main")], working_set, sys.executable,
            part)
        # Only the part and the control script: the data in var/ stays.
        return [part, os.path.join(self.buildout["buildout"]["bin-directory"], self.name)]

    update = install
