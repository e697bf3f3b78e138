"""The ``zeoctl`` command: control a storage server daemon (zdaemon)."""

from zeo.server.runzeo import NOT_YET
import sys


def main(argv: list[str] | None = None) -> int:
    print(NOT_YET.replace("runzeo:", "zeoctl:"), file=sys.stderr)
    return 2
