"""Operator commands: ``zeo-status`` and ``zeopack``.

``zeo-status ADDRESS`` asks a server ``ruok`` and reports like the
reference ``zeo-nagios`` plugin (`zeo.server.statuscheck`): same options
(``-m``, ``-s FILE``, ``-u UNIT``), output and exit codes (0 OK, 1 WARNING,
2 CRITICAL, and 3 UNKNOWN when its own options cannot work), plus
thresholds and ``--json`` (the whole status).

``zeopack`` packs storages like the reference's ``zeopack``: any number of
``HOST:PORT[:STORAGE]`` arguments and ``-u SOCKET[:STORAGE]`` options, or
the legacy ``-h HOST -p PORT [-S STORAGE]`` and ``-U SOCKET [-S STORAGE]``;
``-d DAYS`` and ``-t HH[:MM[:SS]]`` (that time of day today, local time)
say what to keep. It packs every storage named, going on after a failure,
and exits 1 if any of them could not be packed, 2 on a usage error.

Both take the TLS and ``-C`` options of `zeo.server.toolconfig`.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import time
from typing import Any, Sequence

from zeo.server.admin import (
    GREETING_TIMEOUT, AdminClient, ServerError, ServerUnreachable, describe_address, status)
from zeo.server.runzeo import UsageError, parse_address
from zeo.server.statuscheck import (
    CRITICAL, OK, TIME_UNITS, UNKNOWN, WARNING, Thresholds, assess, level_metrics,
    rate_metrics, render)
from zeo.server.toolconfig import (
    ClientSettings, ToolConfigError, add_connection_options, settings_from_options,
    ssl_context)

__all__ = ["OK", "WARNING", "CRITICAL", "UNKNOWN", "status_main", "pack_main",
           "parse_target", "pack_time"]

#: Seconds zeopack waits for a connection (the reference retries for 60).
CONNECT_TIMEOUT = 60.0
_BRACKETED = re.compile(r"\[([^\]]+)\]:(\d+)(?::(.*))?\Z")


def _address(text: str) -> Any:
    """``parse_address`` for tools: an empty host is 127.0.0.1, and a
    name that is not ``HOST:PORT`` is a Unix socket path (as in zeo-nagios)."""
    try:
        address = parse_address(text)
    except UsageError:
        if ":" in text:
            raise
        return text
    if isinstance(address, tuple) and not address[0]:
        address = ("127.0.0.1", address[1])
    return address


def _hostname(address: Any, settings: ClientSettings) -> str | None:
    if settings.server_hostname:
        return settings.server_hostname
    if isinstance(address, tuple):
        return str(address[0])
    if settings.check_hostname:
        raise ToolConfigError("TLS over a Unix socket needs --ssl-server-hostname (the name"
                              " in the server's certificate) or --ssl-no-check-hostname")
    return None


# -- zeo-status ------------------------------------------------------------------

def _status_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zeo-status", description="Report a ZEO server's status, Nagios-style.")
    parser.add_argument("address", nargs="?",
                        help="HOST:PORT, [IPv6]:PORT, PORT or a Unix socket path"
                             " (default: the server of -C's configuration)")
    parser.add_argument("-m", "--output-metrics", action="store_true",
                        help="print performance data")
    parser.add_argument("-s", "--status-path", metavar="FILE",
                        help="keep the counters here between runs, to print rates with -m")
    parser.add_argument("-u", "--time-units", choices=sorted(TIME_UNITS), default="minutes",
                        help="time unit of the rates (default minutes)")
    for name, what in (("lock", "SECONDS the commit lock has been held"),
                       ("clients", "connections to a storage"),
                       ("waiting", "transactions waiting for the commit lock")):
        for level in ("warning", "critical"):
            parser.add_argument(f"--{name}-{level}", type=float, metavar="N",
                                help=f"{level.upper()} when more than N {what}")
    parser.add_argument("--json", action="store_true", help="print the full status as JSON")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the server (default 10)")
    add_connection_options(parser)
    return parser


def status_main(argv: Sequence[str] | None = None) -> int:
    options = _status_parser().parse_args(argv)
    try:
        settings = settings_from_options(options)
        target = options.address or settings.server
        if not target:
            raise ToolConfigError("no server address: give one, or -C a configuration")
        address = _address(target)
        context = ssl_context(settings)
        hostname = _hostname(address, settings) if context is not None else None
    except (ToolConfigError, UsageError) as error:
        print(f"UNKNOWN: {error}")
        return UNKNOWN
    try:
        answer = status(address, timeout=options.timeout, ssl_context=context,
                        server_hostname=hostname)
    except ServerUnreachable as error:
        print(f"CRITICAL: no status from {error.where}: {error.reason}")
        return CRITICAL
    now = time.time()
    thresholds = Thresholds(**{f"{name}_{level}": getattr(options, f"{name}_{level}")
                               for name in ("lock", "clients", "waiting")
                               for level in ("warning", "critical")})
    level, messages, details = assess(answer, thresholds, now)
    metrics: list[str] = []
    if options.output_metrics and answer:
        metrics = level_metrics(answer, thresholds)
        if options.status_path:
            try:
                metrics += rate_metrics(answer, options.status_path, options.time_units, now)
            except OSError as error:
                print(f"UNKNOWN: cannot write the status file {options.status_path!r}:"
                      f" {error.strerror or error}")
                return UNKNOWN
    print(render(messages, details, metrics))
    if options.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    return level


# -- zeopack ---------------------------------------------------------------------

def parse_target(text: str) -> tuple[Any, str]:
    """``(address, storage)`` of ``HOST:PORT[:STORAGE]``, ``[IPv6]:PORT[:STORAGE]``,
    ``PORT`` or ``PATH[:STORAGE]`` (a path has a slash); storage defaults to '1'."""
    match = _BRACKETED.match(text)
    if match:
        return (match.group(1), int(match.group(2))), match.group(3) or "1"
    if "/" in text:
        path, _, storage = text.partition(":")
        return path, storage or "1"
    parts = text.split(":")
    if len(parts) > 3:
        raise UsageError(f"invalid server specification {text!r:.200}")
    storage = parts[2] if len(parts) == 3 else "1"
    return _address(":".join(parts[:2])), storage


def pack_time(now: float, days: float, time_of_day: str | None) -> float:
    """The pack time: *now*, or today at *time_of_day* (``HH[:MM[:SS]]``,
    local time), less *days* days."""
    when = now
    if time_of_day:
        try:
            fields = [int(part) for part in time_of_day.split(":")]
        except ValueError:
            fields = []
        if not 1 <= len(fields) <= 3:
            raise UsageError(f"invalid time {time_of_day!r:.60}: expected HH[:MM[:SS]]")
        fields += [0] * (3 - len(fields))
        today = time.localtime(now)
        when = time.mktime(time.struct_time(today[:3] + tuple(fields) + today[6:8] + (-1,)))
    return when - days * 86400


def _pack_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zeopack", add_help=False,
        description="Pack storages of ZEO servers.",
        epilog="Several servers may be given; each is packed in turn. The exit"
               " status is 1 if any of them could not be packed.")
    parser.add_argument("--help", action="help", help="show this help and exit")
    parser.add_argument("servers", nargs="*", metavar="HOST:PORT[:STORAGE]",
                        help="a server (also [IPv6]:PORT[:STORAGE] or SOCKET_PATH[:STORAGE])")
    parser.add_argument("-d", "--days", type=float, default=0.0,
                        help="keep history of the last DAYS days (default 0)")
    parser.add_argument("-t", "--time", metavar="HH[:MM[:SS]]",
                        help="pack to that time of day today (local time), less -d days")
    parser.add_argument("-u", "--unix", action="append", default=[], metavar="PATH[:STORAGE]",
                        help="a server's Unix socket (repeatable)")
    legacy = parser.add_argument_group("legacy options of the reference zeopack")
    legacy.add_argument("-h", dest="host", help="host, with -p")
    legacy.add_argument("-p", dest="port", type=int, help="port, with -h (default host:"
                                                          " this machine's name)")
    legacy.add_argument("-S", dest="name", help="storage for -h/-p and -U (default 1)")
    legacy.add_argument("-U", dest="unix_socket", help="a Unix socket, with -S")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds to wait for each pack (default 3600)")
    parser.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT,
                        help=f"seconds to wait for a connection (default {CONNECT_TIMEOUT:g})")
    add_connection_options(parser)
    return parser


def _servers(options: argparse.Namespace, settings: ClientSettings) -> list[tuple[Any, str]]:
    name = options.name or settings.storage or "1"
    servers: list[tuple[Any, str]] = []
    if options.host is not None:
        if options.port is None:
            raise UsageError("-h HOST needs -p PORT")
        servers.append(((options.host, options.port), name))
    elif options.port is not None:
        servers.append(((socket.gethostname(), options.port), name))
    if options.unix_socket:
        servers.append((options.unix_socket, name))
    servers += [parse_target(text) for text in options.servers]
    for text in options.unix:
        path, _, storage = text.partition(":")
        if ":" in storage:
            raise UsageError(f"invalid server specification {text!r:.200}")
        servers.append((path, storage or "1"))
    if not servers and settings.server:
        address = _address(settings.server)
        servers.append((address, options.name or settings.storage or "1"))
    return servers


def _pack_one(address: Any, storage: str, when: float, options: argparse.Namespace,
              settings: ClientSettings, context: Any) -> bool:
    hostname = _hostname(address, settings) if context is not None else None
    try:
        client = AdminClient(address, register=storage, timeout=options.connect_timeout,
                             ssl_context=context, server_hostname=hostname,
                             greeting_timeout=GREETING_TIMEOUT)
    except ServerError as error:
        print(f"zeopack: cannot use storage {storage!r:.200} at {describe_address(address)}:"
              f" {error.class_name}: {error.payload!s:.200}", file=sys.stderr)
        return False
    except ServerUnreachable as error:
        print(f"zeopack: cannot connect to storage {storage!r:.200} at {error}",
              file=sys.stderr)
        return False
    try:
        client.sock.settimeout(options.timeout)
        client.call("pack", when, 1)
    except ServerError as error:
        print(f"zeopack: packing storage {storage!r:.200} at {describe_address(address)} failed:"
              f" {error.class_name}: {error.payload!s:.200}", file=sys.stderr)
        return False
    except ServerUnreachable as error:
        print(f"zeopack: packing storage {storage!r:.200} at {error.where} failed:"
              f" {error.reason}", file=sys.stderr)
        return False
    finally:
        client.close()
    return True


def pack_main(argv: Sequence[str] | None = None) -> int:
    parser = _pack_parser()
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        parser.print_help(sys.stderr)
        return 2
    options = parser.parse_args(args)
    try:
        settings = settings_from_options(options)
        servers = _servers(options, settings)
        if not servers:
            raise UsageError("no server given")
        when = pack_time(time.time(), options.days, options.time)
        context = ssl_context(settings)
    except (ToolConfigError, UsageError) as error:
        print(f"zeopack: {error}", file=sys.stderr)
        return 2
    failed = 0
    for address, storage in servers:
        try:
            packed = _pack_one(address, storage, when, options, settings, context)
        except ToolConfigError as error:
            print(f"zeopack: {error}", file=sys.stderr)
            packed = False
        failed += not packed
    if failed and len(servers) > 1:
        print(f"zeopack: {failed} of {len(servers)} storages not packed", file=sys.stderr)
    return 1 if failed else 0
