"""The ``runzeo`` command: run a storage server in the foreground."""

import sys

NOT_YET = (
    "runzeo: the zeo storage server is not implemented yet in this "
    "development snapshot; see CHANGES.txt for progress."
)


def main(argv: list[str] | None = None) -> int:
    print(NOT_YET, file=sys.stderr)
    return 2
