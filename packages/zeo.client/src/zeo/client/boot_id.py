"""This machine's boot id: what tells a process crash from a machine crash.

Both caches ask: after an unclean close, what the kernel already had when
a *process* died is safe, while a *machine* crash may have lost anything
not flushed. Linux gives every boot a new UUID; elsewhere there is none
and the caches are conservative.
"""
from __future__ import annotations

import re

__all__ = ['BOOT_ID_PATH', 'BOOT_ID_PATTERN', 'system_boot_id']

#: Where Linux tells which boot this is (a UUID, new at every boot).
BOOT_ID_PATH = '/proc/sys/kernel/random/boot_id'
#: What a boot id looks like (it is also written into file names).
BOOT_ID_PATTERN = re.compile(r'[0-9A-Za-z-]{1,64}\Z')


def system_boot_id() -> str | None:
    """This boot's id, or None where the system does not say."""
    try:
        with open(BOOT_ID_PATH) as f:
            text = f.read().strip()
    except (OSError, ValueError):
        return None
    return text if BOOT_ID_PATTERN.match(text) else None
