"""Operator commands: ``zeo-status`` and ``zeopack``.

``zeo-status HOST:PORT`` asks a server ``ruok`` and prints one line per
storage, exiting with Nagios codes: 0 OK, 1 WARNING (no storages, or an
empty storage), 2 CRITICAL (no answer). ``--json`` prints the whole status.

``zeopack HOST:PORT[:STORAGE] [-d DAYS]`` packs a storage, waiting for the
pack to finish; it exits 1 when it cannot connect or the pack fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Sequence

from zeo.server.admin import AdminClient, ServerError, status
from zeo.server.runzeo import UsageError, parse_address

OK, WARNING, CRITICAL = 0, 1, 2
EMPTY_TID = "0" * 16


def _address(text: str) -> Any:
    address = parse_address(text)
    if isinstance(address, tuple) and not address[0]:
        address = ("127.0.0.1", address[1])
    return address


def status_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zeo-status", description=__doc__.split("\n\n")[1])
    parser.add_argument("address", help="HOST:PORT, PORT or a Unix socket path")
    parser.add_argument("--json", action="store_true", help="print the full status as JSON")
    parser.add_argument("--timeout", type=float, default=10.0)
    options = parser.parse_args(argv)
    try:
        answer = status(_address(options.address), timeout=options.timeout)
    except (OSError, ValueError, UsageError) as error:
        print(f"CRITICAL: no status from {options.address}: {error}")
        return CRITICAL
    if options.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    if not answer:
        print("WARNING: the server serves no storage")
        return WARNING
    level = OK
    for name, storage in sorted(answer.items()):
        empty = storage.get("last-transaction") == EMPTY_TID
        if empty:
            level = WARNING
        print(f"{'WARNING' if empty else 'OK'}: storage {name}:"
              f" {storage.get('connections')} connections,"
              f" {storage.get('active_txns')} active transactions,"
              f" {storage.get('waiting')} waiting for the lock,"
              f" last transaction {storage.get('last-transaction')}"
              f"{' (empty storage)' if empty else ''}")
    return level


def pack_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zeopack", description="Pack a zeo storage.")
    parser.add_argument("target", help="HOST:PORT[:STORAGE] or SOCKET_PATH[:STORAGE]")
    parser.add_argument("-d", "--days", type=float, default=0.0,
                        help="keep history of the last DAYS days (default 0)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds to wait for the pack (default 3600)")
    options = parser.parse_args(argv)
    target, storage = options.target, "1"
    if target.count(":") >= 2 or ("/" in target and ":" in target):
        target, storage = target.rsplit(":", 1)
    try:
        client = AdminClient(_address(target), register=storage, timeout=options.timeout)
    except (OSError, UsageError, ServerError) as error:
        print(f"zeopack: cannot connect to {target} storage {storage!r}: {error}",
              file=sys.stderr)
        return 1
    try:
        client.call("pack", time.time() - options.days * 86400, 1)
    except (OSError, ServerError) as error:
        print(f"zeopack: packing storage {storage!r} failed: {error}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0
