"""``zeoctl``: run a storage server as a daemon under zdaemon.

    zeoctl -C zeo.conf start | stop | restart | status | fg | logtail

The configuration file is runzeo's (the reference ZEO's works). Its
optional ``<runner>`` section holds zdaemon's settings (``socket-name``,
``transcript``, ``program`` …). When it names no program, zeoctl runs
``runzeo -C <the same file>``: the reference requires you to spell that out
and breaks when you don't (its issue #84).
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Sequence

import zdaemon.zdctl

from zeo.server import zconfig

#: The zdaemon control socket when the configuration names none: beside
#: the configuration file, so two servers on one host do not collide.
SOCKET_SUFFIX = ".zdsock"


def _option_value(argv: Sequence[str], short: str, long: str) -> str | None:
    for index, arg in enumerate(argv):
        if arg == short or arg == long:
            return argv[index + 1] if index + 1 < len(argv) else None
        if arg.startswith(long + "="):
            return arg.split("=", 1)[1]
        if arg.startswith(short) and len(arg) > len(short):
            return arg[len(short):]
    return None


def runzeo_command(config: str) -> list[str]:
    """How to run the server for *config*: the ``runzeo`` script beside
    this one (a buildout or a virtualenv), else this Python's module."""
    script = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), "runzeo")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return [script, "-C", config]
    return [sys.executable, "-m", "zeo.server.runzeo", "-C", config]


def arguments(argv: Sequence[str]) -> list[str]:
    """zdctl's arguments: ours plus the defaults a config file leaves out."""
    argv = list(argv)
    config = _option_value(argv, "-C", "--configure")
    if config is None or os.environ.get("DAEMON_MANAGER_MODE"):
        return argv
    config = os.path.abspath(config)
    settings = zconfig.load(config)
    runner = settings.runner
    extra: list[str] = []
    if _option_value(argv, "-p", "--program") is None and not getattr(runner, "program", None):
        extra += ["-p", shlex.join(runzeo_command(config))]
    if _option_value(argv, "-s", "--socket-name") is None \
            and not getattr(runner, "socket_name", None):
        extra += ["-s", config + SOCKET_SUFFIX]
    return extra + argv


def main(argv: Sequence[str] | None = None) -> None:
    options = zdaemon.zdctl.ZDCtlOptions()
    options.schemadir = os.path.dirname(os.path.abspath(zconfig.__file__))
    options.schemafile = "schema.xml"
    zdaemon.zdctl.main(arguments(sys.argv[1:] if argv is None else argv), options)


if __name__ == "__main__":
    main()
