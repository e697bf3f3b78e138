"""The ``zeoctl`` command: control a storage server daemon (zdaemon)."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("zeoctl: not implemented yet in this development snapshot;"
          " run bin/runzeo in the foreground (see README).", file=sys.stderr)
    return 2
