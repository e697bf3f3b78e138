"""``runzeo``: run a storage server in the foreground.

    runzeo -a 127.0.0.1:8100 -f var/Data.fs [-f other.fs] [-t 30]
           [--blob-dir var/blobs] [--pid-file var/zeo.pid] [--read-only]
           [--msgpack]

Each ``-f`` FileStorage is served under the names ``'1'``, ``'2'``, …
    runzeo -C zeo.conf        (a ZConfig file, as for the reference ZEO)

At start runzeo raises the soft limit on open files toward the hard one
as far as ``max-connections`` plus ``max-server-iterators`` need, and
warns in the log when the hard limit is too low (see `make_room_for_descriptors`).

The server announces pickle (``Z5``), as ZEO's does, unless ``--msgpack``
(or ``msgpack true`` in ``<zeo>``) asks for msgpack (``M5``); ``--pickle``
is still accepted.

Signals: SIGTERM and SIGINT stop the server cleanly (exit 0: open
transactions are aborted, nothing half-written); SIGHUP stops it with exit
status 1 so a supervisor restarts it; SIGUSR2 reopens the log files.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import signal
import socket
import sys
from typing import Any, Sequence

from zeo.server.config import Address, ServerConfig
from zeo.server.loops import new_event_loop

__all__ = ["EPILOG", "Plan", "RESTART_STATUS", "UsageError", "build", "commit_sources", "main",
           "parse_address",
           "parser", "serve", "version"]

logger = logging.getLogger("zeo.server")

#: Exit status asking a supervisor to restart us (SIGHUP), as the reference.
RESTART_STATUS = 1
#: Descriptors the server needs besides connections and iterators: the
#: storages' files and indexes, blobs being sent, spools, logs, listening
#: sockets, a pack's files.
DESCRIPTOR_RESERVE = 64


class UsageError(Exception):
    """The command line or configuration cannot work; the message says why."""


def parse_address(text: str) -> Address:
    """``PORT``, ``HOST:PORT``, ``[IPv6]:PORT``, ``HOST`` or a path with a ``/``.

    As for the reference ZEO, a ``HOST`` without a port (``localhost``,
    ``[::1]``, a bare IPv6 address, ``host:``) binds a free port the system
    chooses (port 0); the server logs the address it bound. An empty HOST
    (``8100`` or ``:8100``) means every interface.
    """
    if "/" in text:
        return text
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise UsageError(f"bad address {text!r:.200}: expected [IPv6]:PORT")
        port = rest[1:]
    elif text.isdigit():
        host, port = "", text
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""   # a host name, or a bare IPv6 address
    if not host and not port:
        raise UsageError("empty address: expected PORT, HOST:PORT, HOST or a socket path")
    if not port:
        return (host, 0)
    try:
        number = int(port)
    except ValueError:
        raise UsageError(f"bad address {text!r:.200}: expected PORT, HOST:PORT, HOST"
                         " or a socket path")
    if not 0 <= number <= 65535:
        raise UsageError(f"bad port in {text!r:.200}")
    return (host, number)


def version() -> str:
    """The installed zeo.server's version (``unknown`` without metadata)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version
    try:
        return installed_version("zeo.server")
    except PackageNotFoundError:
        return "unknown"


#: The end of ``runzeo --help``.
EPILOG = """\
Either -C, or -a with at least one -f. With -C, -a, -t, --read-only,
--msgpack, --pickle and --pid-file override the file.

Signals: SIGTERM and SIGINT stop the server cleanly (open transactions are
aborted) with exit status 0; SIGHUP stops it with status 1, so that a
supervisor restarts it; SIGUSR2 reopens the log files. Exit status 2: a
bad command line or configuration, or the address is taken.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="runzeo", description="Run a zeo storage server in the foreground.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-C", "--configure", metavar="FILE",
                   help="a configuration file: <zeo>, storage sections, <eventlog>"
                        " (one written for the reference ZEO works)")
    p.add_argument("-a", "--address", metavar="ADDRESS",
                   help="PORT (every interface), HOST:PORT, [IPv6]:PORT, HOST (a free"
                        " port, logged) or a Unix socket path (containing a /);"
                        " no default without -C")
    p.add_argument("-f", "--filename", metavar="FILE", action="append", default=[],
                   help="a FileStorage file to serve, created if missing; repeat for"
                        " more (served as '1', '2', ...)")
    p.add_argument("--blob-dir", metavar="DIR",
                   help="the blob directory of the first FileStorage (default: none,"
                        " no blobs)")
    p.add_argument("-t", "--timeout", metavar="SECONDS", type=float, default=None,
                   help="transaction timeout: a transaction that holds the commit lock"
                        " longer is aborted (default: 30 seconds)")
    p.add_argument("--pid-file", metavar="FILE",
                   help="write the process id to FILE, removed at exit (default: the"
                        " file's pid-filename, else none)")
    p.add_argument("--read-only", action="store_true",
                   help="serve read-only (default: read-write)")
    encoding = p.add_mutually_exclusive_group()
    encoding.add_argument("--msgpack", action="store_true", default=None,
                          help="announce msgpack (M5) instead of pickle (Z5, the"
                               " default, as in ZEO: every ZEO client speaks it);"
                               " overrides the file's msgpack key")
    encoding.add_argument("--pickle", action="store_false", dest="msgpack",
                          help="announce pickle (Z5): the default")
    p.add_argument("--version", action="version", version=f"zeo.server {version()}",
                   help="print zeo.server's version and exit")
    return p


def refuse_taken_address(address: Address) -> None:
    """Fail early and clearly when another server already listens there."""
    if isinstance(address, str):
        return  # the server checks Unix sockets itself (stale or live)
    host, port = address
    if port == 0:
        return
    try:
        with socket.create_connection((host or "127.0.0.1", port), timeout=1):
            pass
    except OSError:
        return
    raise UsageError(f"address {host}:{port} is already in use by another server")


class Plan:
    """What to run: storages, configuration, address, pid file, event log."""

    def __init__(self, storages: dict[str, Any], config: ServerConfig, address: Address,
                 pid_file: str | None = None, eventlog: Any = None,
                 sources: dict[str, Any] | None = None) -> None:
        self.storages = storages
        self.sources = sources or {}
        self.config = config
        self.address = address
        self.pid_file = pid_file
        self.eventlog = eventlog


def build(options: argparse.Namespace) -> Plan:
    """Turn the command line (and the -C file) into a `Plan`; open storages."""
    if options.configure:
        return _build_from_file(options)
    if not options.address or not options.filename:
        raise UsageError("give a configuration file (-C), or an address (-a) and"
                         " at least one storage file (-f)")
    address = parse_address(options.address)
    refuse_taken_address(address)
    from ZODB.FileStorage import FileStorage
    storages = {}
    for number, path in enumerate(options.filename, 1):
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        blob_dir = options.blob_dir if number == 1 else None
        storages[str(number)] = FileStorage(path, read_only=options.read_only,
                                            blob_dir=blob_dir)
    fields: dict[str, Any] = {"read_only": options.read_only}
    if options.msgpack is not None:
        fields["msgpack"] = options.msgpack
    if options.timeout is not None:
        fields["transaction_timeout"] = options.timeout
    return Plan(storages, ServerConfig(**fields), address, options.pid_file)


def _build_from_file(options: argparse.Namespace) -> Plan:
    import dataclasses

    import ZConfig

    from zeo.server import zconfig
    if options.filename:
        raise UsageError("-f cannot be combined with -C: name storages in the file")
    try:
        settings = zconfig.load(options.configure)
    except (ZConfig.ConfigurationError, ValueError, OSError) as error:
        raise UsageError(f"bad configuration file {options.configure}: {error}")
    address = parse_address(options.address) if options.address else settings.address
    config = settings.config
    changes: dict[str, Any] = {}
    if options.timeout is not None:
        changes["transaction_timeout"] = options.timeout
    if options.read_only:
        changes["read_only"] = True
    if options.msgpack is not None:
        changes["msgpack"] = options.msgpack
    if changes:
        config = dataclasses.replace(config, **changes)
    refuse_taken_address(address)
    storages = settings.open_storages()
    try:
        sources = commit_sources(storages, config)
    except UsageError:
        for storage in storages.values():
            storage.close()
        raise
    return Plan(storages, config, address, options.pid_file or settings.pid_filename,
                settings.eventlog, sources)


def commit_sources(storages: dict[str, Any], config: ServerConfig) -> dict[str, Any]:
    """The `ICommitSource` of every storage, as ``commit-source`` asks
    (imported by name: the core never imports relstorage or psycopg2)."""
    if config.commit_source is None:
        return {}
    import importlib
    try:
        module = importlib.import_module("zeo.server.relstorage_source")
    except ImportError as error:
        raise UsageError(f"commit-source {config.commit_source} needs zeo.server[relstorage]"
                         f" (RelStorage and psycopg2): {error}")
    try:
        return {name: module.source_for_storage(
                    storage, notify=config.commit_source_notify,
                    poll_interval=config.commit_source_poll_interval,
                    primary_dsn=config.commit_source_primary_dsn,
                    catch_up_timeout=config.commit_source_catch_up_timeout)
                for name, storage in storages.items()}
    except ValueError as error:
        raise UsageError(str(error))


async def serve(plan: Plan) -> int:
    from zeo.server.storage_server import StorageServer

    loop = asyncio.get_running_loop()
    logger.info("running on the %s event loop", plan.config.event_loop)
    stopping = asyncio.Event()
    exit_status = 0

    def stop(status: int, name: str) -> None:
        nonlocal exit_status
        logger.info("received %s: stopping", name)
        exit_status = status
        stopping.set()

    for signum, status in ((signal.SIGTERM, 0), (signal.SIGINT, 0),
                           (signal.SIGHUP, RESTART_STATUS)):
        loop.add_signal_handler(signum, stop, status, signal.Signals(signum).name)
    loop.add_signal_handler(signal.SIGUSR2, reopen_logs)
    server = StorageServer(plan.storages, plan.config, sources=plan.sources)
    try:
        addresses = await server.start([plan.address])
        _announce(addresses)
        await stopping.wait()
    finally:
        await server.close()
    return exit_status


def run(main: Any, event_loop: str) -> int:
    """``asyncio.run`` on the configured kind of loop."""
    loop = new_event_loop(event_loop)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def reopen_logs() -> None:
    """SIGUSR2: reopen log files, after a rotation moved them away."""
    from ZConfig.components.logger.loghandler import reopenFiles
    reopenFiles()
    logger.info("log files reopened")


def descriptors_needed(config: ServerConfig) -> int:
    """Open files the server may need at once under *config*."""
    return config.max_connections + config.max_server_iterators + DESCRIPTOR_RESERVE


def make_room_for_descriptors(config: ServerConfig) -> int:
    """Raise the soft RLIMIT_NOFILE toward the hard limit as far as
    `descriptors_needed`; warn in the log if that does not fit. Return the
    soft limit now in force."""
    needed = descriptors_needed(config)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as error:
            logger.warning("could not raise the open-file limit from %d to %d: %s",
                           soft, target, error)
        else:
            logger.info("raised the soft open-file limit from %d to %d", soft, target)
            soft = target
    if soft < needed:
        logger.warning(
            "the open-file limit is %d (hard limit %s), below the %d that"
            " max-connections (%d) plus max-server-iterators (%d) plus %d may"
            " need: clients beyond it will be refused. Raise the hard limit"
            " (ulimit -Hn, LimitNOFILE= for systemd) to at least %d, or lower"
            " max-connections", soft,
            "unlimited" if hard == resource.RLIM_INFINITY else hard, needed,
            config.max_connections, config.max_server_iterators,
            DESCRIPTOR_RESERVE, needed)
    return soft

def _announce(addresses: list[Any]) -> None:
    """The startup line: where the server serves and where it logs."""
    from zeo.server.eventlog import log_destinations
    from zeo.server.peers import format_address
    logger.info("ready: serving on %s (pid %d); logging to %s",
                ", ".join(map(format_address, addresses)), os.getpid(),
                ", ".join(log_destinations()) or "nowhere")


def setup_logging(eventlog: Any) -> None:
    """The ``<eventlog>``, else standard error; on a terminal (``zeoctl
    fg``) the log is shown there too (see zeo.server.eventlog)."""
    from zeo.server.eventlog import TEXT_FORMAT, echo_to_terminal
    if eventlog is not None:
        eventlog()   # ZConfig's factory configures the root logger
        echo_to_terminal()
        return
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=TEXT_FORMAT)


def main(argv: Sequence[str] | None = None) -> int:
    options = parser().parse_args(argv)
    try:
        plan = build(options)
    except UsageError as error:
        print(f"runzeo: {error}", file=sys.stderr)
        return 2
    setup_logging(plan.eventlog)
    make_room_for_descriptors(plan.config)
    if plan.pid_file:
        with open(plan.pid_file, "w") as pid_file:
            pid_file.write(f"{os.getpid()}\n")
    try:
        return run(serve(plan), plan.config.event_loop)
    except OSError as error:
        print(f"runzeo: {error}", file=sys.stderr)
        return 2
    finally:
        if plan.pid_file:
            try:
                os.remove(plan.pid_file)
            except FileNotFoundError:
                pass


if __name__ == "__main__":
    sys.exit(main())
