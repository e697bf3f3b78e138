"""``zeoctl``: run a storage server as a daemon under zdaemon.

    zeoctl -C zeo.conf start | stop | restart | status | fg | logtail …

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

__all__ = ["HELP", "SOCKET_SUFFIX", "ZeoctlOptions", "arguments", "main", "runzeo_command"]

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
    if _option_value(argv, "-l", "--logfile") is None and not getattr(runner, "logfile", None):
        logfile = _eventlog_path(settings.eventlog)
        if logfile is not None:
            extra += ["-l", logfile]
    return extra + argv


def _eventlog_path(eventlog: object) -> str | None:
    """The first file the ``<eventlog>`` section writes to, if any."""
    for handler in getattr(eventlog, "handler_factories", ()):
        path = getattr(getattr(handler, "section", None), "path", None)
        if isinstance(path, str) and path not in ("STDOUT", "STDERR"):
            return path
    return None


#: ``zeoctl --help`` (and ``bin/zeo --help``): our actions and options, with
#: the defaults zeoctl gives zdaemon's settings. ``%s`` is the program name.
HELP = """\
%s -- run a zeo storage server as a daemon, under zdaemon.

Usage: %s -C FILE [OPTIONS] ACTION [ARGUMENTS]

FILE is runzeo's configuration file (one written for the reference ZEO
works). A buildout's bin/zeo is zeoctl with its part's file
(parts/NAME/zeo.conf) already given.

Actions:
  start             start the server in the background and wait until it
                    runs (at most --start-timeout); nothing if it runs
  stop              stop it cleanly (SIGTERM: open transactions are aborted,
                    nothing half-written) and the daemon manager too
  restart           stop, then start
  status [-l]       whether the server runs, and its process id (-l: all
                    that zdaemon knows)
  fg, foreground    run the server in the foreground, its output on the
                    terminal, until Ctrl-C
  logtail [FILE]    follow the event log (tail -f) until Ctrl-C; default
                    FILE: --logfile
  logreopen         make the server reopen its log files (SIGUSR2), after a
                    rotation
  reopen_transcript reopen the transcript file
  kill [SIGNAL]     send the server a signal (default SIGTERM)
  wait              wait until the server exits
  show [options|python|all]
                    print zeoctl's settings or Python's
  help [ACTION]     list the actions, or describe one
Without an action, %s reads actions from the terminal.

Options (the long name, without --, is also a key of the file's optional
<runner> section; an option wins over the file):
  -C/--configure FILE      the configuration file (required)
  -p/--program COMMAND     the server command
                           (default: runzeo -C FILE, beside this script)
  -s/--socket-name PATH    zdaemon's control socket (default: FILE.zdsock)
  -t/--transcript PATH     where the server's standard output and error go
                           (default: /dev/null)
  -l/--logfile PATH        the file logtail follows (default: the first
                           <logfile> path of the file's <eventlog>)
  -T/--start-timeout SECONDS
                           how long start waits for the server to run
                           (default: 300 seconds)
  -b/--backoff-limit SECONDS
                           a server that dies within SECONDS of its start is
                           restarted after 1, 2, 3 ... seconds; after SECONDS
                           such restarts in a row zdaemon gives up
                           (default: 10 seconds)
  -f/--forever             never give up restarting (default: off)
  -x/--exit-codes LIST     exit statuses after which the server is not
                           restarted (default: 0,2 -- a clean stop, a
                           configuration error; SIGHUP's 1 restarts it)
  -u/--user USER           run the server as USER, a name or uid (default:
                           the caller; needs root)
  -m/--umask UMASK         the server's umask, in octal (default: 022)
  -z/--directory DIR       the server's working directory (default: the
                           caller's)
  -X runner/KEY=VALUE      override a <runner> key for this command
  -h/--help                print this help and exit
  --version                print zeo.server's version and exit
"""


class ZeoctlOptions(zdaemon.zdctl.ZDCtlOptions):
    """zdctl's options with our schema, help text and version."""

    def __init__(self) -> None:
        super().__init__()
        self.schemadir = os.path.dirname(os.path.abspath(zconfig.__file__))
        self.schemafile = "schema.xml"

    def realize(self, *args: object, **kw: object) -> None:
        # zdaemon would fill in %s only past the first character: do it here.
        progname = str(kw.get("progname") or os.path.basename(sys.argv[0]) or "zeoctl")
        progname = progname[:-3] if progname.endswith(".py") else progname
        kw["progname"] = progname
        kw.setdefault("doc", HELP.replace("%s", progname))
        super().realize(*args, **kw)

    def print_version(self, dummy: object) -> None:
        from zeo.server.runzeo import version
        print(f"zeo.server {version()}")
        sys.exit(0)


def main(argv: Sequence[str] | None = None) -> None:
    options = ZeoctlOptions()
    zdaemon.zdctl.main(arguments(sys.argv[1:] if argv is None else argv), options)


if __name__ == "__main__":
    main()
