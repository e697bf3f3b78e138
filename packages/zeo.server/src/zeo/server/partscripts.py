"""The operator scripts the buildout recipe writes for a part.

``bin/zeopack`` (or the part's ``zeopack-script-name``) packs the part's
storage at its address, keeping ``pack-days`` days of history unless told
otherwise; ``bin/NAME-status`` runs ``zeo-status`` against the address.
Both call `zeo.server.tools`. For a part whose server speaks TLS, the
recipe gives both the part's client TLS options (*tls*: ``--ssl-certificate``
… as `zeo.server.toolconfig` spells them); the command line comes after
them, so it can override them. The pack script also understands the options
of the script plone.recipe.zeoserver writes (``-D DAYS``, ``-S STORAGE``,
``-B BLOB_DIR``), so cron jobs written for that recipe keep working.
"""

from __future__ import annotations

import sys
from typing import Sequence

from zeo.server import tools

__all__ = ["zeopack", "status"]

#: plone.recipe.zeoserver's zeopack flags, all of which take a value.
_PLONE_FLAGS = ("-D", "-S", "-B")


def zeopack(address: str, storage: str, days: str,
            argv: Sequence[str] | None = None, tls: Sequence[str] = ()) -> int:
    """Pack *storage* at *address*, keeping *days* days unless the command
    line says ``-d``/``--days``/``-D``; ``-S`` names another storage.
    ``-B`` is accepted and unused: the server packs its own blobs."""
    rest: list[str] = []
    args = list(sys.argv[1:] if argv is None else argv)
    while args:
        arg = args.pop(0)
        flag, value = arg[:2], arg[2:]
        if flag not in _PLONE_FLAGS:
            rest.append(arg)
            continue
        if not value:
            if not args:
                print(f"zeopack: {flag} needs a value", file=sys.stderr)
                return 2
            value = args.pop(0)
        if flag == "-D":
            days = value
        elif flag == "-S":
            storage = value
        else:
            print("zeopack: -B is not needed: the server packs its own blobs",
                  file=sys.stderr)
    return tools.pack_main([f"{address}:{storage}", "--days", days, *tls, *rest])


def status(address: str, argv: Sequence[str] | None = None,
           tls: Sequence[str] = ()) -> int:
    """``zeo-status`` for *address*, with the command line's other options."""
    return tools.status_main([address, *tls,
                              *(sys.argv[1:] if argv is None else argv)])
