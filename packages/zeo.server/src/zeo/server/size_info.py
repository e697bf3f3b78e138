"""The figures ``info`` gives clients after each commit: length and size.

A ZEO server tells every client the storage's object count and size in
bytes after each commit (clients show them as ``len(db)`` and
``db.getSize()``). For a FileStorage both are attributes, read at once.
A storage on a database counts them with queries -- RelStorage opens a
new database connection for each of the two -- and reading them at every
commit made a commit through a front over RelStorage three times as slow
as RelStorage used directly (``bin/benchmark --scaleout``), on the event
loop. For such storages (MVCC storages: ``IMVCCStorage``) the figures are
read in a worker thread, at most once every `REFRESH_INTERVAL` seconds,
and clients get the latest figures read: approximate, as the storage's
own figures already are.

Thread rules: everything here runs on the loop except the function
handed to *run_in_thread*, which only calls the storage's ``len`` and
``getSize``; its outcome comes back through the returned `Delayed`,
settled on the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ZODB.interfaces import IMVCCStorage

from zeo.server.results import Delayed

__all__ = ["REFRESH_INTERVAL", "SizeInfo"]

logger = logging.getLogger("zeo.server")

#: How often, at most, a storage that counts with queries is asked (s).
REFRESH_INTERVAL = 10.0

#: ``run_in_thread(function) -> Delayed`` settled on the loop.
RunInThread = Callable[[Callable[[], Any]], Delayed]


class SizeInfo:
    """A storage's ``{"length": ..., "size": ...}``, read as the module
    docstring says. *clock* is the loop's (seconds, monotonic)."""

    def __init__(self, storage: Any, clock: Callable[[], float],
                 interval: float = REFRESH_INTERVAL) -> None:
        self.storage = storage
        self.clock = clock
        self.interval = interval
        #: Whether the figures cost queries (then they are read in threads).
        self.costly = IMVCCStorage.providedBy(storage)
        self._latest: dict[str, int] = {"length": 0, "size": 0}
        self._read_at: float | None = None
        self._reading = False

    def read(self) -> dict[str, int]:
        """The storage's figures, read now (any thread)."""
        return {"length": len(self.storage), "size": self.storage.getSize()}

    def __call__(self, run_in_thread: RunInThread | None = None) -> dict[str, int]:
        """The figures to send now; with *run_in_thread*, a costly storage
        is asked again in a thread if the latest figures are old enough."""
        if not self.costly:
            return self.read()
        if run_in_thread is not None and not self._reading and (
                self._read_at is None or not 0 <= self.clock() - self._read_at < self.interval):
            self._reading = True
            try:
                done = run_in_thread(self.read)
            except Exception:   # e.g. the server is closing: keep the last figures
                self._reading = False
            else:
                done.add_callback(self._done)
        return self._latest

    def _done(self, error: BaseException | None, figures: Any) -> None:
        self._reading = False
        self._read_at = self.clock()
        if error is not None:
            logger.warning("reading the size of the storage failed: %.200s", error)
            return
        self._latest = figures
